"""Checkpoint every epoch and resume: model, optimizer state(s) and the epoch counter.

A checkpoint is a ``tf.train.Checkpoint(model=..., <optimizer attribute>=..., epoch=...)``
written by a ``tf.train.CheckpointManager`` into ``ckpt_dir`` as ``ckpt-<epochs done>``.

Atomicity: the manager writes the checkpoint's data (TensorFlow writes the shards to a
temporary folder and merges them into ``ckpt-N.index``/``ckpt-N.data-*``) and only then, in a
write callback, rewrites the ``checkpoint`` state file, itself atomically (temporary file and
rename). A run killed during a save therefore leaves the state file naming the previous
complete checkpoint, and :func:`latest_checkpoint` reads only that file (skipping entries
whose index file is gone).

Multi-worker: every worker must save at the same time (saving may all-reduce variables that
are synchronised on read, such as Keras metric state), but only the chief's files are kept:
the others write to a temporary per-worker folder next to ``ckpt_dir`` that is deleted right
after. Resuming needs ``ckpt_dir`` on storage every worker sees (the run folder); the workers
check that they agree on the epoch to resume from.

Test hook: with ``KERAS_REID_TEST_KILL_AT=<label>:<epoch>`` in the environment, the
:class:`EpochCheckpoint` whose ``label`` (the stage name) matches SIGKILLs its own process
right after the checkpoint of that epoch (1-based) is written; ``<label>:<epoch>:<step>`` kills
it after that step (1-based) of that epoch, mid-epoch. The resume tests use it to kill a stage
at chosen points without sleeps.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
from pathlib import Path

import keras
import tensorflow as tf

try:
    from tensorflow.python.framework.config import is_op_determinism_enabled
except ImportError:  # pragma: no cover - another TensorFlow layout
    is_op_determinism_enabled = None

from keras_reid.distribute import is_chief, num_workers, worker_index
from keras_reid.errors import UserError
from keras_reid.training.loop import build_optimizers, model_optimizers

log = logging.getLogger("keras_reid")

CHECKPOINT_PREFIX = "ckpt"

KILL_ENV = "KERAS_REID_TEST_KILL_AT"
"""Environment variable of the test hook (see the module docstring)."""


def _kill_point(label: str | None) -> tuple[int, int | None] | None:
    """``(epoch, step or None)`` at which ``KERAS_REID_TEST_KILL_AT`` asks to kill the process
    training ``label``; None when it names another label or is unset."""
    spec = os.environ.get(KILL_ENV, "")
    parts = spec.split(":")
    if label is None or len(parts) not in (2, 3) or parts[0] != label:
        return None
    return int(parts[1]), int(parts[2]) if len(parts) == 3 else None


def _kill_self(where: str) -> None:
    log.warning("%s: killing this process (%s test hook)", where, KILL_ENV)
    logging.shutdown()
    os.kill(os.getpid(), signal.SIGKILL)


def rng_states(model: keras.Model) -> list:
    """The state variables of every ``keras.random.SeedGenerator`` in ``model`` (dropout layers,
    a GAN's noise generator, ...), in the model's variable order. ``tf.train.Checkpoint`` does
    not track them by itself, and a resume that restarts them draws other dropout masks and noise
    than the uninterrupted run."""
    return [v for v in model.variables if v.name == "seed_generator_state"]


def make_checkpoint(model: keras.Model, rng: bool = True) -> tuple[tf.train.Checkpoint, tf.Variable]:
    """Return ``(checkpoint, epoch variable)`` over the model, its built optimizers, the epoch and
    (``rng``) the states of the model's random generators.

    The optimizers are keyed by their attribute names (``optimizer``, ``d_optimizer``, ...).
    """
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    objects = {name: opt for name, opt in model_optimizers(model, built_only=True).items()
               if name not in ("model", "epoch", "rng")}
    states = rng_states(model) if rng else []
    if states:
        objects["rng"] = states
    return tf.train.Checkpoint(model=model, epoch=epoch, **objects), epoch


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> str | None:
    """Return the prefix of the newest complete checkpoint in ``ckpt_dir``, or None if there is none.

    Reads the manager's ``checkpoint`` state file (written only after a checkpoint's data is
    complete) and skips entries whose ``.index`` file is missing.
    """
    ckpt_dir = str(ckpt_dir)
    if not tf.io.gfile.isdir(ckpt_dir):
        return None
    state = tf.train.get_checkpoint_state(ckpt_dir)
    if state is None:
        return None
    candidates = [state.model_checkpoint_path, *reversed(list(state.all_model_checkpoint_paths))]
    # get_checkpoint_state has already joined relative entries to ckpt_dir (relative itself when
    # the run folder was given relative to the working directory: joining again doubled it)
    for path in candidates:
        if not path:
            continue
        if tf.io.gfile.exists(path + ".index"):
            return path
        log.warning("checkpoint %s is listed but its files are missing; trying an older one", path)
    return None


def restore_latest(model: keras.Model, ckpt_dir: str | os.PathLike,
                   strategy: tf.distribute.Strategy | None = None) -> int:
    """Restore ``model`` and its optimizers from the newest checkpoint in ``ckpt_dir``.

    Builds the optimizers first (inside the strategy's scope) so their state is restored
    right away. Returns the number of epochs already done, i.e. the epoch to resume from
    (0 when there is no checkpoint). Raises ``UserError`` if the checkpoint does not fit the
    model, or if multi-worker processes disagree on the epoch (``ckpt_dir`` not shared).
    """
    strategy = strategy or model.distribute_strategy
    build_optimizers(model, strategy)
    path = latest_checkpoint(ckpt_dir)
    epoch = 0
    if path is not None:
        with_rng = bool(rng_states(model)) and _has_rng(path)
        if rng_states(model) and not with_rng:
            log.warning("checkpoint %s was written before random-generator states were saved: the "
                        "resumed run draws other dropout masks / noise than an uninterrupted one "
                        "would (its results are not those of an uninterrupted run)", path)
        checkpoint, epoch_var = make_checkpoint(model, rng=with_rng)
        status = None
        try:
            with strategy.scope():
                status = checkpoint.restore(path)
                status.assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as exc:
            if status is not None:  # no warnings at exit about the values left unrestored
                status.expect_partial()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"checkpoint {path} does not match this model ({first[:300]}); delete "
                            f"{ckpt_dir} to train from scratch") from None
        epoch = int(epoch_var.numpy())
        reason = inexact_resume_reason()
        if reason:
            log.warning("resumed from epoch %d of %s; %s", epoch, ckpt_dir, reason)
    _check_workers_agree(strategy, epoch, ckpt_dir)
    return epoch


def inexact_resume_reason() -> str | None:
    """Why a resumed run may not reproduce the uninterrupted run's numbers bit for bit here, or
    None. On CPU the restored state (weights, optimizer slots, random-generator states, epoch;
    data order is a function of seed and epoch) makes it exact; on a GPU cuDNN's convolution
    gradients are not bit-reproducible unless TensorFlow's op determinism is on."""
    if not tf.config.list_physical_devices("GPU"):
        return None
    deterministic = os.environ.get("TF_DETERMINISTIC_OPS", "").lower() in ("1", "true")
    if is_op_determinism_enabled is not None:
        deterministic = deterministic or is_op_determinism_enabled()
    if deterministic:
        return None
    return ("the resumed run is not bit-identical to an uninterrupted one: a GPU is in use and "
            "TensorFlow's op determinism is off (cuDNN's convolution gradients are not "
            "reproducible); set TF_DETERMINISTIC_OPS=1 for exact resumes (slower)")


def _has_rng(path: str) -> bool:
    """Does the checkpoint at ``path`` hold random-generator states (written since they are)?"""
    try:
        names = tf.train.load_checkpoint(path).get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError):
        return False
    return any(name.startswith("rng/") for name in names)


def _check_workers_agree(strategy: tf.distribute.Strategy, epoch: int, ckpt_dir) -> None:
    """Multi-worker only: raise UserError on every worker unless all resume from the same epoch."""
    if num_workers(strategy) <= 1:
        return
    value = tf.constant([float(epoch), float(epoch) ** 2], tf.float64)
    total = strategy.reduce(tf.distribute.ReduceOp.MEAN,
                            strategy.run(lambda: tf.identity(value)), axis=None).numpy()
    if abs(total[1] - total[0] ** 2) > 1e-6:  # a variance over the replicas
        raise UserError(f"the workers found different checkpoints in {ckpt_dir} (this one: epoch "
                        f"{epoch}); put the run folder on storage that every worker shares")


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves model, optimizer state(s) and the epoch to ``ckpt_dir`` at the end of every epoch.

    Keeps the newest ``max_to_keep`` checkpoints. Use :func:`restore_latest` to resume.
    Multi-worker aware (see the module docstring). ``label`` (the stage name) is what the
    ``KERAS_REID_TEST_KILL_AT`` test hook matches.
    """

    def __init__(self, ckpt_dir: str | os.PathLike, max_to_keep: int = 3,
                 label: str | None = None) -> None:
        super().__init__()
        self.ckpt_dir = Path(ckpt_dir)
        self.max_to_keep = max(1, int(max_to_keep))
        self._kill_at = _kill_point(label)
        self._current_epoch = 0
        self._checkpoint: tf.train.Checkpoint | None = None
        self._epoch: tf.Variable | None = None
        self._manager: tf.train.CheckpointManager | None = None
        self._chief = True
        self._write_dir: Path = self.ckpt_dir

    def _setup(self) -> None:
        strategy = self.model.distribute_strategy
        self._chief = is_chief(strategy)
        self._write_dir = self.ckpt_dir if self._chief else self.ckpt_dir.with_name(
            f".{self.ckpt_dir.name}.worker{worker_index(strategy)}.tmp")
        self._checkpoint, self._epoch = make_checkpoint(self.model)
        self._manager = tf.train.CheckpointManager(
            self._checkpoint, str(self._write_dir), max_to_keep=self.max_to_keep,
            checkpoint_name=CHECKPOINT_PREFIX)

    def on_train_begin(self, logs=None):
        self._setup()

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._kill_at is not None and self._kill_at == (self._current_epoch + 1, batch + 1):
            _kill_self(f"epoch {self._current_epoch + 1}, step {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        if self._manager is None:
            self._setup()
        self._epoch.assign(epoch + 1)
        path = self._manager.save(checkpoint_number=epoch + 1)
        if not self._chief:
            shutil.rmtree(self._write_dir, ignore_errors=True)
        else:
            log.debug("saved checkpoint %s", path)
        if self._kill_at is not None and self._kill_at == (epoch + 1, None):
            _kill_self(f"after the checkpoint of epoch {epoch + 1}")

    @property
    def latest(self) -> str | None:
        """The prefix of the newest checkpoint this callback's directory holds, or None."""
        return latest_checkpoint(self.ckpt_dir)
