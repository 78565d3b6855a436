"""The evaluate stage's preflight: a gallery that holds none of the query people (from another
camera) fails before any stage trains, not after."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from keras_reid import runner, testing
from keras_reid.errors import DatasetError

STAGES = {
    "train": {"type": "train_reid", "dataset": "market", "image_size": [32, 16], "backbone": {"type": "tiny"},
              "loss": {"type": "softmax"}, "sampler": "random", "batch_size": 4, "epochs": 1},
    "evaluate": {"type": "evaluate", "dataset": "market", "models": ["train"]},
}


def _recipe(tmp_path, root):
    return testing.build_recipe(tmp_path / "r.yaml", name="pf", stages=STAGES,
                                datasets={"market": {"type": "market1501", "root": root}})


def _market(root: Path, query: list[str], gallery: list[str]) -> Path:
    files = {"bounding_box_train": [f"{p:04d}_c{c}s1_000{i}01_00.jpg" for p in (1, 2)
                                    for c in (1, 2) for i in (1, 2)],
             "query": query, "bounding_box_test": gallery}
    for folder, names in files.items():
        (root / folder).mkdir(parents=True)
        for name in names:
            cv2.imwrite(str(root / folder / name), np.full((64, 32, 3), 128, np.uint8))
    return root


def _run(tmp_path, root):
    return runner.run(_recipe(tmp_path, root), tmp_path / "run", echo=lambda s: None)


def test_gallery_without_the_query_people_fails_before_training(tmp_path):
    # person 3 is in the gallery only from the query's own camera; person 5 only in the query
    root = _market(tmp_path / "m", ["0003_c1s1_000101_00.jpg", "0005_c2s1_000101_00.jpg"],
                   ["0003_c1s1_000201_00.jpg", "0004_c2s1_000101_00.jpg"])
    with pytest.raises(DatasetError, match=r"none of the 2 query people of dataset 'market' appears "
                                           r"in split 'gallery' from another camera \(1 appear at all\)"):
        _run(tmp_path, root)
    assert not (tmp_path / "run" / "train").exists()


def test_one_query_person_in_the_gallery_from_another_camera_is_enough(tmp_path):
    from keras_reid.registry import REGISTRY
    from keras_reid.stages.evaluate import Evaluate

    root = _market(tmp_path / "m", ["0003_c1s1_000101_00.jpg", "0005_c2s1_000101_00.jpg"],
                   ["0003_c2s1_000201_00.jpg", "0004_c2s1_000101_00.jpg"])
    rec = _recipe(tmp_path, root)
    splits = REGISTRY.create("dataset", rec.data["datasets"]["market"]).load()
    Evaluate._check_query_gallery(splits, rec.stage_configs["evaluate"], "evaluate")  # no error
