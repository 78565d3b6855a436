"""The synthetic LIMA-style closed-set dataset and the closed-set parts of the DCGAN runner."""
import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from keras_reid import runner, testing
from keras_reid.cli import main
from keras_reid.data.synthetic_closed_set import outfits, synthesize_closed_set
from keras_reid.errors import DatasetError
from keras_reid.registry import REGISTRY

SMALL = dict(ids=3, sessions=3, size=(64, 32), images_per_session=6, unknown_per_session=6, seed=2)


@pytest.fixture(scope="module")
def lima(tmp_path_factory):
    root = tmp_path_factory.mktemp("lima") / "data"
    synthesize_closed_set(root, **SMALL)
    return root


def _rows(root: Path) -> list[dict]:
    with open(root / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_layout_classes_sessions_views_and_unknown_kinds(lima):
    rows = _rows(lima)
    assert len(rows) == 3 * (3 * 6 + 6)
    for r in rows:
        path = lima / r["path"]
        assert path.is_file() and path.parts[-3:-1] == (r["session"], r["identity"])
        assert (lima / "masks" / r["session"] / r["identity"] / (path.stem + ".png")).is_file()
    people = [r for r in rows if r["identity"] != "0"]
    unknown = [r for r in rows if r["identity"] == "0"]
    assert {r["kind"] for r in people} == {"person"}
    assert {r["view"] for r in people} == {"front", "back", "side"}
    assert set(Counter(r["kind"] for r in unknown)) <= {"background", "group", "misframed"}
    assert len({r["kind"] for r in unknown}) >= 2
    assert Counter((r["identity"], r["session"]) for r in people) == {
        (str(c), str(s)): 6 for c in (1, 2, 3) for s in (1, 2, 3)}


def test_clothes_change_between_sessions_but_body_and_face_stay():
    from keras_reid.data.synthetic_render import make_identities

    people = make_identities([1, 2, 3, 4], np.random.default_rng(0))
    dressed = outfits(people, 3, seed=0)
    for p in people:
        looks = [dressed[(p.pid, s)] for s in (1, 2, 3)]
        assert looks[0] == p
        assert len({x.signature() for x in looks}) == 3  # a new outfit every session
        assert {(x.skin, x.hair_colour, x.hair_style, x.height, x.build) for x in looks} == {
            (p.skin, p.hair_colour, p.hair_style, p.height, p.build)}
    for s in (1, 2, 3):  # people stay distinguishable by clothes within a session
        assert len({dressed[(p.pid, s)].signature() for p in people}) == 4


def test_deterministic_and_rerun_is_skipped(lima, tmp_path):
    other = tmp_path / "again"
    synthesize_closed_set(other, **SMALL)
    for r in _rows(lima)[::7]:
        a, b = (lima / r["path"]).read_bytes(), (other / r["path"]).read_bytes()
        assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()
    assert synthesize_closed_set(lima, **SMALL)["skipped"]
    with pytest.raises(DatasetError, match="other parameters"):
        synthesize_closed_set(lima, **{**SMALL, "seed": 3})


def test_dataset_plugin_leaves_one_session_out_and_masker_finds_masks(lima):
    ds = REGISTRY.create("dataset", {"type": "synthetic_closed_set", "root": str(lima),
                                     **{k: v for k, v in SMALL.items() if k != "size"},
                                     "size": "64x32", "test_session": 2}).load()
    assert ds.kind == "closed_set"
    assert {r.session for r in ds["test"]} == {2} and {r.session for r in ds["train"]} == {1, 3}
    assert {r.pid for r in ds["test"]} == {0, 1, 2, 3}
    masker = REGISTRY.create("masker", {"type": "synthetic"})
    masks = masker.masks_for([r.path for r in ds["test"][:4]], (64, 32))
    assert masks.shape == (4, 64, 32, 1) and set(np.unique(masks)) <= {0.0, 1.0}
    with pytest.raises(DatasetError, match="other parameters"):
        REGISTRY.create("dataset", {"type": "synthetic_closed_set", "root": str(lima), "ids": 4}).load()


def test_unknown_class_outside_the_classes_is_rejected(lima):
    with pytest.raises(DatasetError, match="unknown_class 7 is not one of the classes"):
        REGISTRY.create("dataset", {"type": "closed_set", "root": str(lima), "unknown_class": 7}).load()


def test_cli_synth_closed_set(tmp_path):
    res = CliRunner().invoke(main, ["data", "synth-closed-set", str(tmp_path / "d"), "--ids", "2",
                                    "--sessions", "2", "--size", "64x32", "--images-per-session", "2",
                                    "--unknown-per-session", "2"])
    assert res.exit_code == 0, res.output
    assert "2 people x 2 sessions: 8 images" in res.output
    res = CliRunner().invoke(main, ["data", "synth-closed-set", str(tmp_path / "e"), "--sessions", "1"])
    assert res.exit_code != 0


@pytest.mark.usefixtures("face_models")
def test_face_filter_finds_front_faces_not_backs_at_128x64(tmp_path):
    root = tmp_path / "d"
    synthesize_closed_set(root, ids=2, sessions=2, size=(128, 64), images_per_session=12,
                          unknown_per_session=0, seed=0)
    from keras_reid.data.images import load_images

    rows = _rows(root)
    face = REGISTRY.create("filter", {"type": "face", "crop": "auto"})  # the synthetic setting
    try:
        rate = {}
        for view in ("front", "back"):
            paths = [str(root / r["path"]) for r in rows if r["view"] == view]
            rate[view] = float(np.mean(face(load_images(paths, (128, 64))) >= 0.5))
    finally:
        face.close()
    assert rate["front"] >= 0.6 and rate["back"] <= 0.2, rate


DCGAN = {"type": "dcgan", "z_dim": 8, "filters": 4, "max_filters": 16}
REID = {"type": "train_reid", "dataset": "lima", "image_size": [32, 16],
        "backbone": {"type": "tiny", "width": 8, "blocks": 2, "embedding_dim": 16}, "loss": {"type": "softmax"},
        "sampler": "random", "batch_size": 8, "epochs": 1, "bn_recalibration_batches": 0, "verbose": 0}


def _recipe(tmp_path, root, name, stages):
    """A recipe over the closed-set dataset at ``root`` (test session 3)."""
    lima = {"type": "synthetic_closed_set", "root": root, "test_session": 3,
            **dict(SMALL, size=f"{SMALL['size'][0]}x{SMALL['size'][1]}")}
    return testing.build_recipe(tmp_path / "r.yaml", name=name, datasets={"lima": lima}, stages=stages)


def _pipeline_recipe(tmp_path, root, fixed):
    g = {"type": "train_generator", "dataset": "lima", "generator": DCGAN, "image_size": [32, 16],
         "batch_size": 4, "epochs": 1, "steps_per_epoch": 2, "verbose": 0}
    return _recipe(tmp_path, root, "lima_small", {
        "g": g,
        "gj": dict(g, per_identity=True, identities="people", init_from="g", steps_per_epoch=1),
        "samples": {"type": "augment", "generator": "g", "samples": 6,
                    "measure": [{"type": "face", "threshold": 0.5}]},
        "r": dict(REID, generated=[{"stage": "samples", "labels": "fixed", "fixed_pid": fixed}])})


@pytest.mark.usefixtures("face_models")
def test_closed_set_dcgan_pipeline(lima, tmp_path):
    """Generic G trains on every class (class 0 included: it is no distractor here), per-person
    generators skip class 0 with identities: people, augment measures faces without dropping
    and samples train as class 0."""
    run_dir = tmp_path / "run"
    out = runner.run(_pipeline_recipe(tmp_path, lima, 0), run_dir, echo=lambda *_: None)
    n_train = 2 * (3 * 6 + 6)  # sessions 1 and 2
    assert out["g"]["pairs"]["images"] == n_train
    assert sorted(out["gj"]["generators"]) == ["1", "2", "3"]
    aug = out["samples"]
    assert aug["kept"] == aug["generated"] == 6 and set(aug["measured_fraction"]) == {"face"}
    rows = [json.loads(x) for x in (run_dir / "samples" / "manifest-0-of-1.jsonl").read_text().splitlines()]
    assert all(set(r["measured"]) == {"face"} and 0.0 <= r["measured"]["face"] <= 1.0 for r in rows)
    assert aug["measured_fraction"]["face"] == pytest.approx(np.mean([r["measured"]["face"] >= 0.5 for r in rows]))
    labels = json.loads((run_dir / "r" / "labels.json").read_text())
    assert sorted(labels) == ["0", "1", "2", "3"]


def test_fixed_pid_outside_the_classes_stops_before_any_stage(lima, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(DatasetError, match=r"fixed_pid 9 is not a class .*classes: 0, 1, 2, 3"):
        runner.run(_pipeline_recipe(tmp_path, lima, 9), run_dir, echo=lambda *_: None)
    assert not (run_dir / "g" / ".complete.json").exists()


def _probe_recipe(tmp_path, root, resolution):
    return _recipe(tmp_path, root, "probe", {
        "g": {"type": "train_generator", "dataset": "lima", "generator": DCGAN, "image_size": [32, 16],
              "semantic_filter": {"type": "shape_probe"}, "filter_resolution": resolution,
              "semantic_control": True, "batch_size": 4, "epochs": 1, "steps_per_epoch": 1, "verbose": 0},
        "r": dict(REID, batch_size=4, real_filter={"type": "shape_probe"})})


def _probe_score(image) -> float:
    """The probe filter's score of one image: its mean's integer part is odd (about half)."""
    return float(int(image.mean()) % 2)


@pytest.fixture
def shape_probe():
    """A semantic filter ``shape_probe`` that records the shapes it is given and scores images by
    :func:`_probe_score`; unregistered afterwards."""
    seen: list[tuple] = []

    class ShapeProbe:
        def __init__(self, config=None):
            pass

        def __call__(self, images):
            images = np.asarray(images)
            seen.extend(tuple(im.shape) for im in images)
            return np.array([_probe_score(im) for im in images], np.float32)

    REGISTRY.register("filter", "shape_probe")(ShapeProbe)
    try:
        yield seen
    finally:
        REGISTRY.unregister("filter", "shape_probe")


def test_filters_score_real_images_at_native_size(lima, tmp_path, shape_probe):
    """filter_resolution: native gives the generator's semantic filter each real image at its stored
    size (64x32 here), not resized to the generator's 32x16; train_reid's real_filter (LIMA's 'FR')
    likewise, and trains on exactly the images it accepts, over the classes of the whole split."""
    from keras_reid.data.images import read_image

    out = runner.run(_probe_recipe(tmp_path, lima, "native"), tmp_path / "run", echo=lambda *_: None)
    n_train = 2 * (3 * 6 + 6)
    assert shape_probe[:n_train] == [(64, 32, 3)] * n_train          # g: native size
    assert shape_probe[n_train:] == [(64, 32, 3)] * n_train          # r: native size
    train = [r for r in REGISTRY.create("dataset", {"type": "closed_set", "root": str(lima),
                                                     "test_session": 3}).load()["train"]]
    wanted = sum(_probe_score(read_image(r.path, None)) for r in train)
    assert 0 < wanted < n_train
    g = out["g"]["semantic_filter"]
    assert (g["resolution"], g["accepted"]) == ("native", wanted)
    assert out["g"]["pairs"]["pairs"] == wanted                       # semantic control
    r = out["r"]
    assert r["real_filter"]["accepted"] == r["num_images"] == wanted
    assert r["num_classes"] == 4                                      # classes 0..3 all kept
    # the generator's default: the images as it trains on them (resized)
    shape_probe.clear()
    runner.run(_probe_recipe(tmp_path, lima, "image_size"), tmp_path / "run2", echo=lambda *_: None, only=["g"])
    assert shape_probe[:n_train] == [(32, 16, 3)] * n_train
