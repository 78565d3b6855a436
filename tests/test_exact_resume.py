"""A resumed run is the uninterrupted run (issue 15, item 2).

The GAN stage is SIGKILLed after the checkpoint of epoch 2, the re-ID stage in the middle of an
epoch (the ``KERAS_REID_TEST_KILL_AT`` hook in ``keras_reid.training.checkpoint``, no sleeps);
each rerun resumes, and the generated images, models and metrics.json equal a clean run's byte
for byte / exactly. Augment draws pix2pix's dropout noise (``noise: true``) from each file's own
seed, so augment-only reruns (a fresh process, another batch size, a process that did other
work first) write the same files as a run where the GAN trained in the same process.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_reid import runner, testing
from keras_reid.recipe import load_recipe
from keras_reid.training.checkpoint import KILL_ENV

STAGES = {
    "gan": {"type": "train_generator", "dataset": "synth", "source_camera": 1, "target_camera": 2,
            "generator": {"type": "pix2pix", "variant": "model4", "filters": 4, "max_filters": 16},
            "masker": {"type": "synthetic"}, "image_size": [32, 16], "targets_per_source": 2,
            "batch_size": 4, "epochs": 3, "steps_per_epoch": 2, "verbose": 0},
    "augment": {"type": "augment", "generator": "gan", "images": "all", "batch_size": 5, "noise": True},
    "augmented": {"type": "train_reid", "dataset": "synth", "cameras": [1], "image_size": [32, 16],
                  "backbone": {"type": "tiny", "width": 8, "blocks": 2, "embedding_dim": 16},
                  "optimizer": {"type": "adam", "lr": 0.001}, "batch_size": 8, "instances_per_id": 2,
                  "epochs": 2, "bn_recalibration_batches": 2, "verbose": 0,
                  "generated": [{"stage": "augment", "labels": "lsro"}], "generated_ratio": 0.5},
    "evaluate": {"type": "evaluate", "dataset": "synth", "models": ["augmented"], "ranked_lists": 0,
                 "projector_samples": 0},
}


@pytest.fixture(scope="module")
def clean(tmp_path_factory, synthetic_data):
    """An uninterrupted run in this (pytest's) process: the GAN trains and generates here."""
    base = tmp_path_factory.mktemp("exact")
    recipe = testing.build_recipe(base / "r.yaml", name="exact_resume", seed=3,
                                  datasets={"synth": synthetic_data().spec}, stages=STAGES)
    run_dir = base / "clean"
    runner.run(recipe, run_dir, echo=lambda *_: None)
    return Path(recipe.source), run_dir


def _cli(recipe: Path, run_dir: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    if kill_at:
        env[KILL_ENV] = kill_at
    return subprocess.run([sys.executable, "-m", "keras_reid.cli", "run", str(recipe), "--run-dir",
                           str(run_dir), *args], env=env, capture_output=True, text=True, timeout=900)


def _files(run_dir: Path) -> dict:
    folder = run_dir / "augment" / "data" / "bounding_box_train"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.jpg"))}


def _weights(path: Path) -> list:
    from keras_reid.registry import REGISTRY

    if path.name == "generator.keras":
        model = REGISTRY.create("generator", {"type": "pix2pix", "variant": "model4", "filters": 4,
                                              "max_filters": 16}).load(str(path))
        return [np.asarray(v) for v in model.generator.trainable_variables]
    import keras

    return [np.asarray(v) for v in keras.saving.load_model(path, compile=False).weights]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb))


@pytest.mark.slow
def test_killed_gan_and_reid_training_resume_to_the_uninterrupted_result(clean, tmp_path):
    recipe, ref = clean
    run = tmp_path / "killed"
    first = _cli(recipe, run, kill_at="gan:2")                    # after the checkpoint of epoch 2
    assert first.returncode == -9, first.stderr[-2000:]
    assert (run / "gan" / "checkpoints" / "ckpt-2.index").exists()
    assert not (run / "gan" / ".complete.json").exists()
    second = _cli(recipe, run, kill_at="augmented:2:1")           # mid-epoch: 1 step into epoch 2
    assert second.returncode == -9, second.stderr[-2000:]
    assert "resuming from the checkpoint of epoch 2" in second.stdout
    assert (run / "augment" / ".complete.json").exists()
    assert not (run / "augmented" / "checkpoints" / "ckpt-2.index").exists()
    third = _cli(recipe, run)
    assert third.returncode == 0, third.stdout[-2000:] + third.stderr[-2000:]
    assert "resuming from the checkpoint of epoch 1" in third.stdout

    files = _files(ref)
    assert len(files) == 10 and _files(run) == files               # byte for byte
    assert _same_weights(ref / "gan" / "generator.keras", run / "gan" / "generator.keras")
    assert _same_weights(ref / "augmented" / "model.keras", run / "augmented" / "model.keras")
    clean_metrics = json.loads((ref / "metrics.json").read_text())
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["models"] == clean_metrics["models"] and resumed["chance"] == clean_metrics["chance"]


@pytest.mark.slow
def test_augment_only_reruns_with_noise_write_the_same_files(clean, tmp_path):
    """Augment alone, twice, in this process (which trained and evaluated the clean run before, so
    its random generators are elsewhere; the generator's .keras file restarts its dropout
    generators at random): the files of the run where the GAN trained and generated in one
    process. (The kill test's second process is a fresh process generating after a resume.)"""
    recipe, ref = clean
    files = _files(ref)
    for name in ("again", "once_more"):
        run = tmp_path / name
        shutil.copytree(ref / "gan", run / "gan")
        runner.run(load_recipe(recipe), run, only=["augment"], echo=lambda *_: None)
        assert _files(run) == files


def test_pix2pix_noise_comes_from_each_images_seed():
    """generate(noise=True, seeds=...): an image's output depends on its seed only (not on the
    batch or the layers' random-generator state); other seeds give other noise."""
    import keras

    from keras_reid.registry import REGISTRY

    keras.utils.set_random_seed(0)
    factory = REGISTRY.create("generator", {"type": "pix2pix", "variant": "model1", "filters": 4,
                                            "max_filters": 16})
    gan = factory.build((32, 16))
    x = np.random.default_rng(0).uniform(-1, 1, (4, 32, 16, 3)).astype(np.float32)
    seeds = [11, 12, 13, 14]
    together = np.asarray(gan.generate({"source": x}, noise=True, seeds=seeds))
    gan.generate({"source": x}, noise=True)                      # advances the layers' generators
    assert np.array_equal(np.asarray(gan.generate({"source": x}, noise=True, seeds=seeds)), together)
    alone = np.concatenate([np.asarray(gan.generate({"source": x[i:i + 1]}, noise=True,
                                                    seeds=[seeds[i]])) for i in (2, 0, 3, 1)])
    # the same masks; the convolutions of a batch of 1 and of 4 round differently (~1e-9)
    np.testing.assert_allclose(alone[[1, 3, 0, 2]], together, atol=1e-6)
    other = np.asarray(gan.generate({"source": x}, noise=True, seeds=[21, 22, 23, 24]))
    quiet = np.asarray(gan.generate({"source": x}, noise=False, seeds=seeds))
    assert not np.allclose(other, together) and not np.allclose(quiet, together)


def test_a_checkpoint_restores_the_models_random_generator_states(tmp_path):
    """tf.train.Checkpoint does not track keras.random.SeedGenerator states by itself: restored,
    the next dropout masks are the ones the saved model would have drawn."""
    import keras

    from keras_reid.training.checkpoint import EpochCheckpoint, restore_latest, rng_states

    def model():
        m = keras.Sequential([keras.Input((64,)), keras.layers.Dropout(0.5), keras.layers.Dense(2)])
        m.compile(optimizer="adam")
        m.optimizer.build(m.trainable_variables)
        return m

    x = np.ones((4, 64), np.float32)
    saved = model()
    for _ in range(3):
        saved.layers[0](x, training=True)                      # the generator moves on
    callback = EpochCheckpoint(tmp_path / "ckpt")
    callback.set_model(saved)
    callback.on_train_begin()
    callback.on_epoch_end(0)
    resumed = model()
    assert not np.array_equal(np.asarray(rng_states(resumed)[0]), np.asarray(rng_states(saved)[0]))
    assert restore_latest(resumed, tmp_path / "ckpt") == 1
    assert np.array_equal(np.asarray(rng_states(resumed)[0]), np.asarray(rng_states(saved)[0]))
    assert np.array_equal(np.asarray(resumed.layers[0](x, training=True)),
                          np.asarray(saved.layers[0](x, training=True)))


def test_a_checkpoint_without_random_generator_states_resumes_and_says_it_is_not_exact(tmp_path, caplog):
    """A checkpoint written before RNG states were saved still restores (weights, optimizer,
    epoch), with a warning that the resumed run is not the uninterrupted one."""
    import keras
    import tensorflow as tf

    from keras_reid.training.checkpoint import make_checkpoint, restore_latest

    def model():
        m = keras.Sequential([keras.Input((8,)), keras.layers.Dropout(0.5), keras.layers.Dense(2)])
        m.compile(optimizer="adam")
        m.optimizer.build(m.trainable_variables)
        return m

    old = model()
    checkpoint, epoch = make_checkpoint(old, rng=False)
    epoch.assign(2)
    tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=1, checkpoint_name="ckpt").save(2)
    resumed = model()
    with caplog.at_level("WARNING", logger="keras_reid"):
        assert restore_latest(resumed, tmp_path) == 2
    assert "before random-generator states were saved" in caplog.text
    assert all(np.array_equal(a, b) for a, b in zip(old.get_weights(), resumed.get_weights()))
