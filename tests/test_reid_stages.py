"""train_reid + evaluate stages end to end on a tiny synthetic dataset (tiny backbone, CPU).

Covers the reliability cases of the foundation issue at stage level: corrupt image files are
skipped and counted, an empty split and a missing dataset folder fail with one clear line,
and an interrupted training resumes to the same final epoch with the same weights.
"""
import json
import shutil

import numpy as np
import pytest

from keras_reid import runner, testing
from keras_reid.errors import DatasetError, UserError

STAGES = {
    "train": {"type": "train_reid", "dataset": "synth", "image_size": [64, 32],
              "backbone": {"type": "tiny", "width": 8, "blocks": 3, "embedding_dim": 32},
              "loss": {"type": "softmax_triplet"}, "optimizer": {"type": "adam", "lr": 0.001},
              "schedule": {"type": "cosine", "warmup_epochs": 1}, "batch_size": 12,
              "instances_per_id": 2, "epochs": 3, "log_every": 1, "verbose": 0},
    "evaluate": {"type": "evaluate", "dataset": "synth", "models": ["train"], "flip": True,
                 "ranked_lists": 3, "projector_samples": 20},
}
DATA = {"images_per_id_camera": 3}  # ids 12, cameras 3, 64x32, seed 1 (testing.SYNTHETIC_DEFAULTS)


@pytest.fixture(scope="module")
def synth_root(synthetic_data):
    """The dataset, shared with every test module asking for the same parameters."""
    return synthetic_data(**DATA).root


def _recipe(tmp_path, root, *overrides, strategy="one_device"):
    dataset = testing.SyntheticData(root, dict(testing.SYNTHETIC_DEFAULTS, **DATA)).spec
    return testing.build_recipe(tmp_path, name="stages", seed=3, strategy={"type": strategy},
                                datasets={"synth": dataset}, stages=STAGES, overrides=overrides)


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    """The recipe run once (train 3 epochs, evaluate): (output, run folder)."""
    tmp = tmp_path_factory.mktemp("trained")
    run_dir = tmp / "run"
    return runner.run(_recipe(tmp, synth_root), run_dir, echo=lambda s: None), run_dir


def _copy(root, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(root, dst)
    return dst


def _features(run_dir, images):
    import keras

    import keras_reid.layers  # noqa: F401

    model = keras.saving.load_model(run_dir / "train" / "model.keras", compile=False)
    return np.asarray(model(images, training=False))


@pytest.fixture
def probe(synth_root):
    from keras_reid.data.pipeline import eval_dataset
    from keras_reid_plugins.datasets.market import read_market_layout

    recs = read_market_layout(synth_root, "synthetic")["query"][:8]
    return next(iter(eval_dataset(recs, image_size=(64, 32), batch_size=8)))


def test_train_and_evaluate_write_model_metrics_and_tensorboard(trained):
    out, run_dir = trained
    train = out["train"]
    assert train["epochs"] == 3 and train["resumed_from_epoch"] == 0 and train["skipped_images"] == 0
    assert train["num_classes"] == 6 and train["final"]["loss"] > 0
    assert (run_dir / "train" / "model.keras").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())["models"]["train"]
    for key in ("mAP", "rank1", "rank5", "rank10", "mINP"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["rank1"] <= metrics["rank5"] <= metrics["rank10"]
    assert metrics["valid_queries"] > 0
    tags = _tags(run_dir / "tensorboard")
    assert {"eval/mAP", "eval/rank1", "eval/cmc", "eval/ranked_lists"} <= tags
    assert any(t.startswith("reid/input_batch") for t in tags)
    assert any("loss" in t for t in tags) and any("lr" in t for t in tags)
    assert list((run_dir / "tensorboard").rglob("projector_config.pbtxt"))


def _tags(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for event_file in logdir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(event_file.parent), size_guidance={"tensors": 0, "images": 0})
        acc.Reload()
        for kind in ("scalars", "images", "tensors"):
            tags |= set(acc.Tags().get(kind, []))
    return tags


def test_interrupted_training_resumes_to_the_same_final_weights(tmp_path, synth_root, probe, trained,
                                                                 monkeypatch):
    straight = trained[1]  # the same recipe trained without interruption

    from keras_reid.training import checkpoint

    original = checkpoint.EpochCheckpoint.on_epoch_end

    def interrupt_after_first_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt("simulated Ctrl-C after epoch 1")

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(checkpoint.EpochCheckpoint, "on_epoch_end", interrupt_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        runner.run(_recipe(tmp_path, synth_root), resumed, echo=lambda s: None, only=["train"])
    monkeypatch.setattr(checkpoint.EpochCheckpoint, "on_epoch_end", original)
    assert not (resumed / "train" / ".complete.json").exists()
    steps = {s.name: s.status for s in runner.plan(_recipe(tmp_path, synth_root), resumed)}
    assert steps["train"] == "resume"

    out = runner.run(_recipe(tmp_path, synth_root), resumed, echo=lambda s: None, only=["train"])
    assert out["train"]["resumed_from_epoch"] == 1 and out["train"]["epochs"] == 3
    np.testing.assert_allclose(_features(resumed, probe), _features(straight, probe),
                               rtol=1e-4, atol=1e-4)


def test_mirrored_two_replicas_trains_and_evaluates(tmp_path, synth_root):
    out = runner.run(_recipe(tmp_path, synth_root, "stages.train.epochs=1", strategy="mirrored"),
                       tmp_path / "run", echo=lambda s: None)
    assert out["train"]["epochs"] == 1
    assert "rank1" in out["evaluate"]["models"]["train"]


def test_corrupt_image_is_skipped_and_counted(tmp_path, synth_root):
    root = _copy(synth_root, tmp_path)
    victim = sorted((root / "bounding_box_train").glob("*.jpg"))[0]
    victim.write_bytes(b"this is not a jpeg")
    query_victim = sorted((root / "query").glob("*.jpg"))[0]
    query_victim.write_bytes(b"nor is this")
    lines = []
    out = runner.run(_recipe(tmp_path, root, "stages.train.epochs=1"), tmp_path / "run",
                       echo=lines.append)
    assert out["train"]["skipped_images"] == 1
    assert any("skipped 1 of" in line and victim.name in line for line in lines), lines
    # evaluate: the same one-line warning (StageContext.decodable), the query evaluated without it
    assert any(line.startswith("warning: skipped 1 of") and "query images" in line
               and query_victim.name in line for line in lines), lines
    n_query = len(list((root / "query").glob("*.jpg")))
    assert out["evaluate"]["models"]["train"]["valid_queries"] + \
        out["evaluate"]["models"]["train"].get("invalid_queries", 0) == n_query - 1


def test_empty_split_is_one_clear_error(tmp_path, synth_root):
    rec = _recipe(tmp_path, synth_root, "stages.train.cameras=[7]")
    with pytest.raises(DatasetError, match=r"no usable images for cameras \[7\].*cameras present"):
        runner.run(rec, tmp_path / "run", echo=lambda s: None, only=["train"])


def test_missing_dataset_folder_fails_before_any_stage_runs(tmp_path):
    from click.testing import CliRunner

    from keras_reid.cli import main

    path = testing.write_recipe(tmp_path, name="stages", seed=3, stages=STAGES,
                                datasets={"synth": {"type": "market1501", "root": tmp_path / "nowhere"}})
    result = CliRunner().invoke(main, ["run", str(path), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code != 0
    assert "nowhere" in result.output and "Traceback" not in result.output
    assert len([l for l in result.output.splitlines() if l.startswith("error")]) == 1
    assert not (tmp_path / "run" / "train" / "checkpoints").exists()


def test_closed_set_train_and_evaluate(tmp_path, synth_root):
    """LIMA-style data: <session>/<class>/*.jpg made from synthetic identities (camera =
    session); train on sessions 1-2, classify session 3; metrics and confusion matrix."""
    import re

    root = tmp_path / "closed"
    pattern = re.compile(r"^(\d{4})_c(\d)")
    pids = {}
    for img in sorted((synth_root / "bounding_box_train").glob("*.jpg")):
        pid, cam = (int(v) for v in pattern.match(img.name).groups())
        cls = pids.setdefault(pid, len(pids) + 1)
        dst = root / f"s{cam}" / str(cls)
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy(img, dst / img.name)
    rec = testing.build_recipe(
        tmp_path / "closed.yaml", name="closed",
        datasets={"lima": {"type": "closed_set", "root": root, "test_session": 3}},
        stages={"train": {"type": "train_reid", "dataset": "lima", "image_size": [64, 32],
                          "backbone": {"type": "tiny", "width": 8, "blocks": 3, "embedding_dim": 32},
                          "batch_size": 12, "instances_per_id": 2, "epochs": 2, "verbose": 0},
                "evaluate": {"type": "evaluate", "dataset": "lima", "models": ["train"]}})
    run_dir = tmp_path / "run"
    out = runner.run(rec, run_dir, echo=lambda s: None)
    assert (run_dir / "train" / "classifier.keras").is_file()
    entry = json.loads((run_dir / "metrics.json").read_text())["models"]["train"]
    for key in ("prec1_all", "prec1_pid", "mAP_all", "mAP_pid"):
        assert 0.0 <= entry[key] <= 1.0
    assert entry["num_test_images"] > 0
    confusion = json.loads((run_dir / "evaluate" / "confusion_train.json").read_text())
    assert np.asarray(confusion["matrix"]).sum() == entry["num_test_images"]
    assert {"eval/confusion_matrix", "eval/prec1_all"} <= _tags(run_dir / "tensorboard")
    assert out["evaluate"]["models"]["train"] == entry


def test_features_are_compiled_once_per_model_whatever_the_batch_sizes(tmp_path):
    """extract_features keeps one traced forward pass per model (and flip, image size): the
    query, gallery and pose-normalised sets of a fused evaluation do not retrace it."""
    import cv2
    import keras

    from keras_reid.data.records import Record
    from keras_reid.forward_pass import _FORWARD
    from keras_reid.inference import extract_features

    records = []
    for i in range(13):
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), np.random.default_rng(i).integers(0, 255, (32, 16, 3), np.uint8))
        records.append(Record(str(path), 1, 1))
    model = keras.Sequential([keras.Input((32, 16, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.GlobalAveragePooling2D()])
    full = extract_features(model, records, (32, 16), 5, flip=True)        # batches 5, 5, 3
    part = extract_features(model, records[:4], (32, 16), 5, flip=True)    # one batch of 4
    np.testing.assert_allclose(part, full[:4], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)
    extract_features(model, records, (32, 16), 5, flip=False)
    counts = sorted(f.experimental_get_tracing_count() for f in _FORWARD[model].values())
    assert counts == [1, 1]  # flip and no flip, each traced once


def test_freeze_backbone_epochs_keeps_the_trunk_fixed_then_trains_it(tmp_path, synth_root, monkeypatch):
    """Two-step fine-tuning: during the first N epochs only the head's layers change (the trunk's
    weights, BatchNorm statistics included, stay as they were), afterwards the trunk trains too."""
    import keras_reid.training.loop as loop

    calls = []
    real_train = loop.train

    def spy(model, *args, **kwargs):
        trunk = [model.backbone.get_layer(n) for n in ("block1_conv", "block2_bn")]
        head = model.backbone.get_layer("classifier")
        before = ([w.copy() for l in trunk for w in l.get_weights()], head.get_weights()[0].copy())
        history = real_train(model, *args, **kwargs)
        after = ([w for l in trunk for w in l.get_weights()], head.get_weights()[0])
        calls.append((kwargs["initial_epoch"], kwargs["epochs"], before, after))
        return history

    monkeypatch.setattr(loop, "train", spy)
    rec = _recipe(tmp_path, synth_root, "stages.train.freeze_backbone_epochs=1",
                  "stages.train.epochs=2", "stages.train.backbone.batch_norm=true",
                  "stages.train.bn_recalibration_batches=0")
    out = runner.run(rec, tmp_path / "run", echo=lambda s: None, only=["train"])
    assert out["train"]["frozen_backbone_epochs"] == 1
    assert [(c[0], c[1]) for c in calls] == [(0, 1), (1, 2)]
    (trunk0, head0), (trunk1, head1) = calls[0][2], calls[0][3]
    for a, b in zip(trunk0, trunk1):
        np.testing.assert_array_equal(a, b)  # frozen epoch: the trunk is untouched
    assert not np.allclose(head0, head1)  # ... while the classifier learns
    (trunk1b, _), (trunk2, _) = calls[1][2], calls[1][3]
    assert any(not np.allclose(a, b) for a, b in zip(trunk1b, trunk2))  # then the trunk trains


def test_freeze_backbone_epochs_must_leave_epochs_to_train_everything(tmp_path, synth_root):
    with pytest.raises(UserError, match="freeze_backbone_epochs"):
        _recipe(tmp_path, synth_root, "stages.train.freeze_backbone_epochs=3")
