"""Is the synthetic dataset hard across cameras? Train on one camera vs on all cameras.

Trains the same re-ID model twice on the synthetic dataset: once on the training images of a
single camera, once on those of every camera, for the same number of training steps (the
one-camera run gets proportionally more epochs), and evaluates both with the Market-1501 protocol
(queries are matched only against other cameras). On real data the one-camera model is
clearly worse; the synthetic data should show the same gap.

    python tools/synthetic_camera_gap.py --ids 200 --epochs 15 [--backbone tiny] [--json]

Takes about 5 minutes on a 2-core CPU with the defaults (tiny backbone, 64x32 input).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

RECIPE = {
    "name": "camera_gap",
    "seed": 0,
    "strategy": {"type": "one_device"},
    "jit_compile": False,
    "datasets": {"synth": {"type": "synthetic", "root": None, "ids": 200, "cameras": 6,
                           "size": "128x64", "seed": 0, "images_per_id_camera": 2}},
    "stages": {
        "train": {"type": "train_reid", "dataset": "synth", "image_size": [64, 32],
                  "backbone": {"type": "tiny", "width": 32, "blocks": 4, "embedding_dim": 128},
                  "loss": {"type": "softmax_triplet"},
                  "optimizer": {"type": "adam", "lr": 0.001},
                  "schedule": {"type": "cosine", "warmup_epochs": 1},
                  "batch_size": 32, "instances_per_id": 4, "epochs": 15, "verbose": 0},
        "evaluate": {"type": "evaluate", "dataset": "synth", "models": ["train"], "flip": True,
                     "ranked_lists": 0, "projector_samples": 0},
    },
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", help="synthetic dataset folder (default: a temporary folder)")
    ap.add_argument("--ids", type=int, default=200)
    ap.add_argument("--camera", type=int, default=1, help="the single training camera")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--backbone", default="tiny", help="tiny or resnet50 (slow)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from keras_reid import pipeline
    from keras_reid.recipe import load_recipe

    work = Path(tempfile.mkdtemp(prefix="camera_gap-"))
    recipe = json.loads(json.dumps(RECIPE))
    recipe["datasets"]["synth"].update(root=str(Path(args.root or work / "data").absolute()),
                                       ids=args.ids)
    train = recipe["stages"]["train"]
    train["epochs"] = args.epochs
    if args.backbone != "tiny":
        train["backbone"] = {"type": args.backbone, "weights": None}
    results = {}
    steps_all = None
    for label, cameras in (("all cameras", None), ("one camera", [args.camera])):
        train["cameras"] = cameras
        if steps_all is not None:  # same number of steps as the all-camera run
            steps_one = _steps_per_epoch(recipe, [args.camera])
            train["epochs"] = max(1, round(steps_all / steps_one))
        path = work / f"{label.replace(' ', '_')}.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        run_dir = work / path.stem
        out = pipeline.run(load_recipe(path), run_dir, echo=lambda s: None)
        metrics = out["evaluate"]["models"]["train"]
        if steps_all is None:
            steps_all = args.epochs * _steps_per_epoch(recipe, None)
        results[label] = {"train_images": out["train"]["num_images"], "epochs": train["epochs"],
                          "train_ids": out["train"]["num_classes"],
                          **{k: metrics[k] for k in ("mAP", "rank1", "rank5", "rank10")}}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'trained on':<14}{'images':>8}{'epochs':>8}{'ids':>6}{'mAP':>9}{'rank1':>9}{'rank5':>9}{'rank10':>9}")
        for label, r in results.items():
            print(f"{label:<14}{r['train_images']:>8}{r['epochs']:>8}{r['train_ids']:>6}" + "".join(
                f"{100 * r[k]:>8.1f}%" for k in ("mAP", "rank1", "rank5", "rank10")))
        print(f"(folder: {work})")
    return 0


def _steps_per_epoch(recipe: dict, cameras: list[int] | None) -> int:
    """Steps per epoch of the train stage's PK sampler for these cameras (no training)."""
    from keras_reid.data.pipeline import ReIDInput
    from keras_reid.data.records import relabel
    from keras_reid.registry import REGISTRY
    from keras_reid.stages._train_reid_impl import select_records

    train = recipe["stages"]["train"]
    splits = REGISTRY.create("dataset", recipe["datasets"]["synth"]).load()
    records = select_records(splits["train"], cameras, closed_set=False)
    labels, _ = relabel(records)
    return ReIDInput(records, labels, image_size=tuple(train["image_size"]),
                     global_batch_size=train["batch_size"], k=train["instances_per_id"]).steps_per_epoch


if __name__ == "__main__":
    sys.exit(main())
