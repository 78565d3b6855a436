"""The strategy-aware training loop, strategies and checkpoint/resume (keras_reid.training, distribute).

Equality tests train the same toy classifier (tests/workers/toy_training.py) from the same
initial weights on the same global batches under different strategies: weights agree only if
gradients are summed across replicas and losses divided by the GLOBAL batch.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

WORKERS = Path(__file__).parent / "workers"
sys.path.insert(0, str(WORKERS))

from toy_training import ToyClassifier, dataset_fn, initial_weights, make_model  # noqa: E402

from keras_reid import testing  # noqa: E402
from keras_reid.distribute import (  # noqa: E402
    StrategyConfig, is_chief, make_strategy, num_workers, read_tf_config, worker_index)
from keras_reid.errors import UserError  # noqa: E402
from keras_reid.training import (  # noqa: E402
    EpochCheckpoint, latest_checkpoint, learning_rates, restore_latest, train)

STEPS = 4


@pytest.fixture(scope="module")
def one_device():
    return make_strategy(StrategyConfig(type="one_device"))


@pytest.fixture(scope="module")
def mirrored():
    strategy = make_strategy(StrategyConfig(type="mirrored"))
    assert strategy.num_replicas_in_sync == 2, "tests/conftest.py must configure 2 logical CPUs"
    return strategy


def run(strategy, epochs=2, **kwargs) -> tuple[keras.Model, dict]:
    model_kwargs = {k: kwargs.pop(k) for k in ("optimizer", "lr", "seed", "loss_over_local_batch")
                    if k in kwargs}
    model = make_model(strategy, **model_kwargs)
    history = train(model, dataset_fn, strategy=strategy, epochs=epochs, steps_per_epoch=STEPS,
                    verbose=0, **kwargs)
    return model, history


def assert_weights_close(a, b, atol=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def max_diff(a, b) -> float:
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(a, b))


# ------------------------------------------------------------------------------- strategies


def test_make_strategy_one_device_and_mirrored(one_device, mirrored):
    # no device named: TensorFlow's default strategy (faster than OneDeviceStrategy on CPU)
    assert one_device is tf.distribute.get_strategy() and one_device.num_replicas_in_sync == 1
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert [d[-5:] for d in mirrored.extended.worker_devices] == ["CPU:0", "CPU:1"]
    chosen = make_strategy({"type": "one_device", "devices": ["/cpu:1"]})
    assert isinstance(chosen, tf.distribute.OneDeviceStrategy)
    assert chosen.extended.worker_devices[0].endswith("CPU:1")
    assert is_chief(mirrored) and worker_index(mirrored) == 0 and num_workers(mirrored) == 1


def test_make_strategy_rejects_unknown_device():
    with pytest.raises(UserError, match="unknown device '/gpu:7'"):
        make_strategy(StrategyConfig(type="mirrored", devices=["/cpu:0", "/gpu:7"]))
    with pytest.raises(UserError, match="nccl"):
        make_strategy(StrategyConfig(type="mirrored", communication="nccl"))


@pytest.mark.parametrize("tf_config, message", [
    (None, "not set"),
    ("{not json", "not valid JSON"),
    (json.dumps({"task": {"type": "worker", "index": 0}}), "no 'cluster'"),
    (json.dumps({"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}),
     "host:port"),
    (json.dumps({"cluster": {"worker": ["localhost:1"]}}), "no 'task'"),
    (json.dumps({"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}}),
     "out of range"),
    (json.dumps({"cluster": {"worker": ["localhost:1"]}, "task": {"type": "ps", "index": 0}}),
     "not a job"),
])
def test_multi_worker_needs_valid_tf_config(monkeypatch, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(UserError, match=message):
        make_strategy(StrategyConfig(type="multi_worker"))


def test_read_tf_config_accepts_a_cluster(monkeypatch):
    cfg = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cfg))
    assert read_tf_config() == cfg
    with pytest.raises(UserError, match="devices cannot be used"):
        make_strategy(StrategyConfig(type="multi_worker", devices=["/cpu:0"]))


# ------------------------------------------------------------------------------- equality


def test_mirrored_matches_one_device(one_device, mirrored):
    single, h1 = run(one_device)
    multi, h2 = run(mirrored)
    assert_weights_close(single.get_weights(), multi.get_weights())
    np.testing.assert_allclose(h1["loss"], h2["loss"], atol=1e-5)
    np.testing.assert_allclose(h1["accuracy"], h2["accuracy"], atol=1e-6)
    assert int(multi.optimizer.iterations.numpy()) == 2 * STEPS
    # negative control: a loss averaged over each replica's batch gives other weights
    wrong, _ = run(mirrored, loss_over_local_batch=True)
    assert max_diff(single.get_weights(), wrong.get_weights()) > 1e-2


class SummedLogsClassifier(ToyClassifier):
    """Returns each replica's share of the global-batch loss: the loop must SUM it."""

    step_logs_reduction = "sum"

    def train_step(self, data):
        logs = super().train_step(data)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return {name: value / replicas for name, value in logs.items()}


def test_sum_reduction_of_step_logs(one_device, mirrored):
    losses = []
    for strategy in (one_device, mirrored):
        with strategy.scope():
            model = SummedLogsClassifier()
            model(np.zeros((1, 4, 4, 1), np.float32))
            model.set_weights(initial_weights())
            model.compile(optimizer=keras.optimizers.SGD(0.1))
        losses.append(train(model, dataset_fn, strategy=strategy, epochs=1, steps_per_epoch=STEPS,
                            verbose=0)["loss"])
    np.testing.assert_allclose(losses[0], losses[1], atol=1e-5)


def test_jit_compile_one_device_matches_and_is_turned_off_on_cpu_replicas(one_device, mirrored, caplog):
    plain, _ = run(one_device, epochs=1)
    jitted, _ = run(one_device, epochs=1, jit_compile=True)
    assert_weights_close(plain.get_weights(), jitted.get_weights())
    with caplog.at_level(logging.WARNING, logger="keras_reid"):
        mirrored_jit, _ = run(mirrored, epochs=1, jit_compile=True)
    assert "jit_compile turned off" in caplog.text
    assert_weights_close(plain.get_weights(), mirrored_jit.get_weights())


def _run_workers(out: Path, ckpt: Path, epochs: int) -> dict[int, list[dict]]:
    """Run the two local workers to ``epochs`` (one phase per epoch, each after the first a
    resume); returns ``{epoch: [worker 0 results, worker 1 results]}``."""
    out.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, str(WORKERS / "multi_worker_train.py"), str(out), str(ckpt), str(epochs), str(STEPS)]
    codes = [code for code, _ in testing.run_workers(argv, out, timeout=150)]
    if codes != [0, 0]:
        text = "\n".join((out / f"worker{i}.log").read_text()[-3000:] for i in range(2))
        pytest.fail(f"workers exited with {codes}:\n{text}")
    results: dict[int, list[dict]] = {}
    for epoch in range(1, epochs + 1):
        for index in range(2):
            data = np.load(out / f"worker{index}-epoch{epoch}.npz")
            n = len([k for k in data.files if k.startswith("arr_")])
            results.setdefault(epoch, []).append({
                "weights": [data[f"arr_{i}"] for i in range(n)],
                "iterations": int(data["iterations"]), "initial_epoch": int(data["initial_epoch"]),
                "chief": bool(data["chief"]), "replicas": int(data["replicas"]),
                "history": json.loads(str(data["history"]))})
    return results


@pytest.mark.slow
def test_multi_worker_matches_one_device_and_resumes(tmp_path, one_device):
    """Two worker processes on loopback, one CPU each: one epoch, then a resumed second epoch."""
    ckpt = tmp_path / "ckpt"
    results = _run_workers(tmp_path / "out", ckpt, epochs=2)

    single1, h1 = run(one_device, epochs=1)
    single2, _ = run(one_device, epochs=2)
    for w in results[1]:
        assert w["replicas"] == 2 and w["initial_epoch"] == 0 and w["iterations"] == STEPS
        assert_weights_close(w["weights"], single1.get_weights())
    np.testing.assert_allclose(results[1][0]["history"]["loss"], h1["loss"], atol=1e-5)
    assert [w["chief"] for w in results[1]] == [True, False]
    for w in results[2]:
        assert w["initial_epoch"] == 1 and w["iterations"] == 2 * STEPS
        assert_weights_close(w["weights"], single2.get_weights())
    # only the chief's checkpoints are kept; the other worker's temporary folder is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]
    assert latest_checkpoint(ckpt).endswith("ckpt-2")
    assert not [p for p in ckpt.iterdir() if p.is_dir()]


# ------------------------------------------------------------------------------- resume


def _adam_model(strategy, seed=0):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=3, decay_rate=0.5)
    return make_model(strategy, optimizer="adam", lr=schedule, seed=seed)


def test_resume_matches_straight_run(tmp_path, mirrored):
    straight = _adam_model(mirrored)
    train(straight, dataset_fn, strategy=mirrored, epochs=4, steps_per_epoch=STEPS, verbose=0)

    ckpt = tmp_path / "ckpt"
    first = _adam_model(mirrored)
    assert restore_latest(first, ckpt) == 0
    train(first, dataset_fn, strategy=mirrored, epochs=2, steps_per_epoch=STEPS, verbose=0,
          callbacks=[EpochCheckpoint(ckpt, max_to_keep=1)])
    state_after_2 = [np.asarray(v) for v in first.optimizer.variables]
    del first  # "killed" after epoch 2

    resumed = _adam_model(mirrored, seed=1)  # other initial weights: all must come from the checkpoint
    assert restore_latest(resumed, ckpt) == 2
    assert int(resumed.optimizer.iterations.numpy()) == 2 * STEPS
    assert_weights_close([np.asarray(v) for v in resumed.optimizer.variables], state_after_2, atol=0)
    history = train(resumed, dataset_fn, strategy=mirrored, epochs=4, steps_per_epoch=STEPS,
                    initial_epoch=2, verbose=0, callbacks=[EpochCheckpoint(ckpt, max_to_keep=1)])
    assert len(history["loss"]) == 2
    assert_weights_close(resumed.get_weights(), straight.get_weights(), atol=1e-6)
    assert_weights_close([np.asarray(v) for v in resumed.optimizer.variables],
                         [np.asarray(v) for v in straight.optimizer.variables], atol=1e-6)
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "checkpoint", "ckpt-4.data-00000-of-00001", "ckpt-4.index"]  # max_to_keep=1


def test_interrupted_save_is_not_taken_as_latest(tmp_path, one_device, monkeypatch):
    from tensorflow.python.checkpoint import checkpoint_management

    ckpt = tmp_path / "ckpt"
    model = make_model(one_device)
    train(model, dataset_fn, strategy=one_device, epochs=2, steps_per_epoch=STEPS, verbose=0,
          callbacks=[EpochCheckpoint(ckpt)])
    seen = []

    def killed(save_dir, *args, **kwargs):  # the process dies just before the state file update
        seen.append(sorted(os.listdir(save_dir)))
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_management, "update_checkpoint_state_internal", killed)
    with pytest.raises(KeyboardInterrupt):
        train(model, dataset_fn, strategy=one_device, epochs=3, steps_per_epoch=STEPS,
              initial_epoch=2, verbose=0, callbacks=[EpochCheckpoint(ckpt)])
    monkeypatch.undo()
    assert "ckpt-3.index" in seen[0]  # the data was complete before the state file was touched
    assert latest_checkpoint(ckpt).endswith("ckpt-2")
    assert restore_latest(make_model(one_device), ckpt) == 2

    # a state file naming a checkpoint whose files are gone falls back to an older one
    for name in os.listdir(ckpt):
        if name.startswith("ckpt-2."):
            os.remove(ckpt / name)
    assert latest_checkpoint(ckpt).endswith("ckpt-1")
    assert latest_checkpoint(tmp_path / "missing") is None
    # a run folder given relative to the working directory (`--run-dir runs/x`) resumes too
    monkeypatch.chdir(tmp_path)
    assert latest_checkpoint("ckpt") == os.path.join("ckpt", "ckpt-1")
    assert restore_latest(make_model(one_device), "ckpt") == 1


def test_checkpoint_of_another_model_is_a_user_error(tmp_path, one_device):
    ckpt = tmp_path / "ckpt"
    model = make_model(one_device)
    train(model, dataset_fn, strategy=one_device, epochs=1, steps_per_epoch=1, verbose=0,
          callbacks=[EpochCheckpoint(ckpt)])
    with one_device.scope():
        other = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(5)])
        other.compile(optimizer="sgd")
    with pytest.raises(UserError, match="does not match this model"):
        restore_latest(other, ckpt)


# ------------------------------------------------------------------------------- callbacks


class Recorder(keras.callbacks.Callback):
    def __init__(self, stop_at=None):
        super().__init__()
        self.events, self.epoch_logs, self.batch_logs = [], [], []
        self.stop_at = stop_at

    def on_train_begin(self, logs=None):
        self.events.append("train_begin")

    def on_train_end(self, logs=None):
        self.events.append("train_end")

    def on_epoch_begin(self, epoch, logs=None):
        self.events.append(f"epoch_begin {epoch}")

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(f"epoch_end {epoch}")
        self.epoch_logs.append(dict(logs))

    def on_train_batch_end(self, batch, logs=None):
        self.batch_logs.append(dict(logs))
        if self.stop_at == (len(self.epoch_logs), batch):
            self.model.stop_training = True


def test_callbacks_get_epoch_logs_with_lr_and_extra_logs(one_device):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=STEPS, decay_rate=0.5)
    model = make_model(one_device, lr=schedule)
    recorder = Recorder()
    history = train(model, dataset_fn, strategy=one_device, epochs=2, steps_per_epoch=STEPS,
                    verbose=0, callbacks=[recorder], on_epoch_end=lambda e, logs: {"val_score": e + 0.5})
    assert recorder.events == ["train_begin", "epoch_begin 0", "epoch_end 0", "epoch_begin 1",
                               "epoch_end 1", "train_end"]
    assert len(recorder.batch_logs) == 2 * STEPS
    assert all(isinstance(v, float) for logs in recorder.batch_logs for v in logs.values())
    first = recorder.epoch_logs[0]
    assert first["lr"] == pytest.approx(0.05)  # the schedule at iteration 4
    assert recorder.epoch_logs[1]["lr"] == pytest.approx(0.025)
    assert first["loss"] == pytest.approx(np.mean([b["loss"] for b in recorder.batch_logs[:STEPS]]))
    assert history["val_score"] == [0.5, 1.5] and history["lr"] == pytest.approx([0.05, 0.025])
    assert learning_rates(model) == {"lr": pytest.approx(0.025)}


def test_stop_training_ends_early(one_device):
    model = make_model(one_device)
    recorder = Recorder(stop_at=(0, 1))  # epoch 0, second step
    history = train(model, dataset_fn, strategy=one_device, epochs=3, steps_per_epoch=STEPS,
                    verbose=0, callbacks=[recorder])
    assert len(history["loss"]) == 1 and len(recorder.batch_logs) == 2
    assert int(model.optimizer.iterations.numpy()) == 2
    assert recorder.events[-1] == "train_end"


def test_progress_bar_prints_epochs(one_device, capsys):
    model = make_model(one_device)
    train(model, dataset_fn, strategy=one_device, epochs=1, steps_per_epoch=2, verbose=1)
    out = capsys.readouterr().out
    assert "Epoch 1/1" in out and "loss" in out and "lr" in out


# ------------------------------------------------------------------------------- two optimizers


class TwoOptimizerModel(keras.Model):
    """A GAN-shaped model: two sub-networks, each with its own optimizer, ``build_optimizers``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.a = keras.layers.Dense(3)
        self.b = keras.layers.Dense(3)

    def call(self, x, training=None):
        flat = keras.ops.reshape(x, (-1, 16))
        return self.a(flat), self.b(flat)

    def compile(self, a_optimizer, b_optimizer):
        super().compile()  # Keras' default optimizer stays unused (and unbuilt)
        self.a_optimizer, self.b_optimizer = a_optimizer, b_optimizer

    def build_optimizers(self):
        self.a_optimizer.build(self.a.trainable_variables)
        self.b_optimizer.build(self.b.trainable_variables)

    def train_step(self, data):
        x, y = data
        logs = {}
        for name, layer, opt, index in (("a", self.a, self.a_optimizer, 0),
                                        ("b", self.b, self.b_optimizer, 1)):
            with tf.GradientTape() as tape:
                logits = self(x, training=True)[index]
                per_example = keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
                loss = tf.nn.compute_average_loss(per_example)
            opt.apply(tape.gradient(loss, layer.trainable_variables), layer.trainable_variables)
            logs[f"{name}_loss"] = tf.reduce_mean(per_example)
        return logs


def test_two_optimizers_train_and_resume_under_mirrored(tmp_path, mirrored):
    def build(seed):
        keras.utils.set_random_seed(seed)
        with mirrored.scope():
            model = TwoOptimizerModel()
            model(np.zeros((1, 4, 4, 1), np.float32))
            model.compile(keras.optimizers.Adam(1e-2), keras.optimizers.SGD(1e-1, momentum=0.9))
        return model

    ckpt = tmp_path / "ckpt"
    model = build(0)
    recorder = Recorder()
    train(model, dataset_fn, strategy=mirrored, epochs=1, steps_per_epoch=STEPS, verbose=0,
          callbacks=[recorder, EpochCheckpoint(ckpt)])
    assert set(recorder.epoch_logs[0]) == {"a_loss", "b_loss", "a_optimizer_lr", "b_optimizer_lr"}
    assert not model.optimizer.built
    resumed = build(1)
    assert restore_latest(resumed, ckpt) == 1
    assert_weights_close(resumed.get_weights(), model.get_weights(), atol=0)
    for name in ("a_optimizer", "b_optimizer"):
        assert_weights_close([np.asarray(v) for v in getattr(resumed, name).variables],
                             [np.asarray(v) for v in getattr(model, name).variables], atol=0)


def test_dataset_running_out_ends_the_epoch_with_a_warning(one_device, caplog):
    model = make_model(one_device)
    with caplog.at_level(logging.WARNING, logger="keras_reid"):
        history = train(model, dataset_fn, strategy=one_device, epochs=1, steps_per_epoch=20, verbose=0)
    assert "ran out after 8 of 20 steps" in caplog.text  # 64 examples / global batch 8
    assert int(model.optimizer.iterations.numpy()) == 8 and len(history["loss"]) == 1


def test_finished_epoch_input_is_released_off_the_training_thread(one_device):
    """Destroying a tf.data iterator can wait out TensorFlow's autotuning period (up to a minute
    of wall time, next to no CPU): the loop drops an epoch's iterator on another thread, so the
    next epoch trains meanwhile. Here each epoch's pipeline ends in an endless generator whose
    ``finally`` (run when its iterator is destroyed) waits for a step of the NEXT epoch: on the
    training thread it would wait in vain (and record False after the timeout)."""
    next_epoch_stepped = [threading.Event() for _ in range(3)]
    closed: dict[int, bool] = {}

    def endless(epoch):
        def gen():
            try:
                while True:
                    yield 0.0
            finally:
                closed[epoch] = next_epoch_stepped[epoch + 1].wait(timeout=20)
        return tf.data.Dataset.from_generator(gen, output_signature=tf.TensorSpec([], tf.float32))

    def held_open(ctx, epoch):  # the toy batches, with a pipeline that never ends by itself
        return tf.data.Dataset.zip((dataset_fn(ctx, epoch), endless(epoch))).map(lambda a, _: a)

    class Stepped(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            next_epoch_stepped[self.epoch].set()

    model = make_model(one_device)
    train(model, held_open, strategy=one_device, epochs=2, steps_per_epoch=STEPS, verbose=0,
          callbacks=[Stepped()])
    next_epoch_stepped[2].set()  # nothing follows the last epoch
    for thread in threading.enumerate():
        if thread.name == "keras_reid-release-input":
            thread.join(timeout=60)
    assert closed == {0: True, 1: True}
