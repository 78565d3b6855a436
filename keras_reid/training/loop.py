"""The core's one strategy-aware training loop (re-ID and GAN stages alike).

Keras 3's ``fit()`` fails under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585), so
every training stage runs :func:`train`, which calls the model's own ``train_step`` through
``strategy.run`` inside a ``tf.function`` and dispatches Keras callbacks itself.

Contract for the model (a ``keras.Model`` subclass):

* it is built (its variables exist) and compiled inside ``strategy.scope()``; its optimizer(s)
  are constructed in that scope too (a Keras optimizer remembers the strategy it was made in);
* if it trains with several optimizers (GANs), it defines ``build_optimizers()`` that builds
  each of them on its variables; otherwise ``model.optimizer`` is built on
  ``model.trainable_variables`` (:func:`build_optimizers` does this before the first step:
  optimizer slots created lazily inside ``strategy.run`` fail with two replicas);
* ``train_step(data)`` receives one replica's batch, averages per-example losses with
  ``tf.nn.compute_average_loss`` (divides by the GLOBAL batch), applies the gradients with
  ``optimizer.apply`` / ``apply_gradients``, and returns a dict of scalar tensors (this
  replica's values, not Keras metric results). Keras 3's TensorFlow optimizer all-reduces
  (sums) the gradients across replicas inside ``apply`` under ``MirroredStrategy`` and
  ``MultiWorkerMirroredStrategy`` (``_all_reduce_sum_gradients``), so the step must not
  reduce them itself. Gradient clipping (``clipnorm``/``global_clipnorm``) acts on each
  replica's gradients before that all-reduce;
* the returned values are reduced across replicas with the model's ``step_logs_reduction``:
  ``"mean"`` (the default: each replica returns its local mean, e.g. ``ops.mean(per_example)``)
  or ``"sum"`` (each replica returns its share of the global-batch value, e.g. the
  ``compute_average_loss`` result itself).

Data: ``dataset_fn(input_context, epoch)`` returns one input pipeline's ``tf.data.Dataset`` of
PER-REPLICA batches (global batch // replicas) for that epoch; it must yield at least
``steps_per_epoch`` batches (every worker the same number). See ``keras_reid.data.pipeline``.

XLA: ``jit_compile=True`` compiles the model's ``train_step`` (not the cross-replica part).
XLA with the collective all-reduce of a strategy with several replicas on CPU devices fails in
TensorFlow, so there it is turned off with a warning.

Epoch ends: a finished epoch's input iterator is released on a background thread
(:func:`release_in_background`). Destroying a tf.data iterator joins its autotuning thread
(``tf_data_model``), and in TensorFlow 2.21 that thread often sleeps out its current
optimisation period (which doubles while the pipeline runs, up to a minute) before it notices
the cancellation: measured here (``tools/bench_overhead.py``), the next epoch's first step waited
2-40 s of wall time for next to no CPU when the old iterator was dropped on the training thread.
The wait releases the GIL, so on another thread it costs the loop nothing.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterable, Mapping

import keras
import numpy as np
import tensorflow as tf

from keras_reid.distribute import is_chief
from keras_reid.progress import progbar as progbar_

log = logging.getLogger("keras_reid")

DatasetFn = Callable[[tf.distribute.InputContext, int], tf.data.Dataset]


def model_optimizers(model: keras.Model, built_only: bool = False) -> dict[str, keras.optimizers.Optimizer]:
    """Return the optimizers attached to ``model`` as ``{attribute name: optimizer}``.

    Finds every attribute holding a Keras optimizer (``optimizer`` from ``compile``,
    ``d_optimizer``/``g_optimizer`` of a GAN, ...), leading underscores stripped, each
    optimizer once. ``built_only`` keeps only optimizers whose variables exist (a GAN's unused
    default ``optimizer`` from ``Model.compile`` is then left out).
    """
    found: dict[str, keras.optimizers.Optimizer] = {}
    seen: set[int] = set()
    for name, value in sorted(vars(model).items()):
        if not isinstance(value, keras.optimizers.Optimizer) or id(value) in seen:
            continue
        if built_only and not value.built:
            continue
        seen.add(id(value))
        found[name.lstrip("_")] = value
    return found


def build_optimizers(model: keras.Model, strategy: tf.distribute.Strategy | None = None) -> None:
    """Build every optimizer of ``model`` on its variables inside ``strategy.scope()``; returns None.

    Calls ``model.build_optimizers()`` if the model defines it (GANs: one call per optimizer),
    else ``model.optimizer.build(model.trainable_variables)`` unless already built.
    ``strategy`` defaults to the one the model was created under.
    """
    strategy = strategy or model.distribute_strategy
    with strategy.scope():
        if callable(getattr(model, "build_optimizers", None)):
            model.build_optimizers()
            return
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            raise ValueError(f"model '{model.name}' has no optimizer: compile it inside "
                             "strategy.scope() before training (or define build_optimizers())")
        if not model.trainable_variables:
            raise ValueError(f"model '{model.name}' has no trainable variables yet: build it (call it "
                             "on a batch) inside strategy.scope() before training")
        if not optimizer.built:
            optimizer.build(model.trainable_variables)


def learning_rates(model: keras.Model) -> dict[str, float]:
    """Return the current learning rate of each built optimizer of ``model``.

    One optimizer: ``{"lr": value}``; several: ``{"<attribute>_lr": value}`` (e.g.
    ``d_optimizer_lr``). A schedule is evaluated at the optimizer's current iteration.
    """
    optimizers = model_optimizers(model, built_only=True)
    out = {}
    for name, opt in optimizers.items():
        try:
            value = float(keras.ops.convert_to_numpy(opt.learning_rate))
        except (TypeError, ValueError, AttributeError):  # pragma: no cover - exotic optimizer
            continue
        out["lr" if len(optimizers) == 1 else f"{name}_lr"] = value
    return out


def _jit_supported(strategy: tf.distribute.Strategy) -> bool:
    """False when XLA cannot work: several replicas whose devices are all CPUs."""
    if strategy.num_replicas_in_sync <= 1:
        return True
    devices = getattr(strategy.extended, "worker_devices", ()) or ()
    return not all("CPU" in str(d).upper() for d in devices)


def _make_step(model: keras.Model, strategy: tf.distribute.Strategy, jit_compile: bool):
    """A ``tf.function(distributed batch) -> {name: reduced scalar}`` running one step on every replica."""
    reduction = str(getattr(model, "step_logs_reduction", "mean")).lower()
    if reduction not in ("mean", "sum"):
        raise ValueError(f"{type(model).__name__}.step_logs_reduction must be 'mean' or 'sum', "
                         f"got {reduction!r}")
    op = tf.distribute.ReduceOp.SUM if reduction == "sum" else tf.distribute.ReduceOp.MEAN
    replica_step = model.train_step
    if jit_compile:
        replica_step = tf.function(model.train_step, jit_compile=True, reduce_retracing=True)

    @tf.function
    def step(data):
        outputs = strategy.run(replica_step, args=(data,))
        if not isinstance(outputs, Mapping):
            raise TypeError(f"{type(model).__name__}.train_step must return a dict of scalar "
                            f"tensors, got {type(outputs).__name__}")
        return {name: strategy.reduce(op, value, axis=None) for name, value in outputs.items()}

    return step


def release_in_background(holder: list) -> threading.Thread:
    """Empty ``holder`` on a new thread, so whatever it alone refers to is destroyed there;
    returns the (started, non-daemon) thread.

    For tf.data iterators (see the module docstring): put the iterator in a list that nothing
    else refers to, use ``holder[0]``, and hand the list over when done. Non-daemon: the
    interpreter waits for it at exit rather than stopping it inside TensorFlow's destructor.
    """
    thread = threading.Thread(target=holder.clear, name="keras_reid-release-input", daemon=False)
    thread.start()
    return thread


def _as_float(value: Any) -> float:
    """A step log value as a Python float (mean of a non-scalar)."""
    arr = np.asarray(value)
    return float(arr) if arr.ndim == 0 else float(arr.mean())


def train(model: keras.Model, dataset_fn: DatasetFn, *, strategy: tf.distribute.Strategy,
          epochs: int, steps_per_epoch: int, initial_epoch: int = 0,
          callbacks: Iterable[keras.callbacks.Callback] = (), verbose: int = 1,
          jit_compile: bool = False,
          on_epoch_end: Callable[[int, dict], Mapping[str, float] | None] | None = None,
          ) -> dict[str, list[float]]:
    """Train ``model`` from ``initial_epoch`` to ``epochs`` under ``strategy``; returns the history.

    Each epoch distributes ``dataset_fn(ctx, epoch)`` with
    ``strategy.distribute_datasets_from_function`` and runs ``steps_per_epoch`` steps of
    ``model.train_step`` (see the module docstring for the contract). Callbacks get
    ``on_train_begin/end``, ``on_epoch_begin/end`` (logs: epoch means of the step values plus
    ``lr``) and ``on_train_batch_begin/end`` (logs: the step values as floats).
    ``on_epoch_end(epoch, logs)``, if given, runs after each epoch's steps and before the
    callbacks' ``on_epoch_end``; a mapping it returns is merged into the epoch logs (e.g.
    validation metrics). Setting ``model.stop_training = True`` (``EarlyStopping`` does) ends
    training after the current step. A Keras progress bar is shown when ``verbose`` and this
    process is the chief. Returns ``{name: [epoch means]}`` for the epochs run.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    jit_compile = _jit_setting(strategy, jit_compile)
    verbose = int(verbose) if is_chief(strategy) else 0

    build_optimizers(model, strategy)
    step = _make_step(model, strategy, jit_compile)
    cbs = _callback_list(model, callbacks, {"epochs": epochs, "steps": steps_per_epoch,
                                            "verbose": verbose, "initial_epoch": initial_epoch})

    history: dict[str, list[float]] = {}
    model.stop_training = False
    cbs.on_train_begin()
    final_logs: dict[str, float] = {}
    for epoch in range(initial_epoch, epochs):
        final_logs = _run_epoch(model, step, strategy, dataset_fn, epoch, epochs, steps_per_epoch,
                                cbs, verbose, on_epoch_end)
        for name, value in final_logs.items():
            if np.ndim(value) == 0:
                history.setdefault(name, []).append(float(value))
        if model.stop_training:
            break
    cbs.on_train_end(final_logs)
    return history


def _run_epoch(model: keras.Model, step, strategy: tf.distribute.Strategy, dataset_fn: DatasetFn,
               epoch: int, epochs: int, steps_per_epoch: int, cbs: keras.callbacks.CallbackList,
               verbose: int, on_epoch_end) -> dict:
    """One epoch: its steps between the epoch callbacks, with the progress bar; returns the
    epoch logs."""
    cbs.on_epoch_begin(epoch)
    progbar = _epoch_progbar(epoch, epochs, steps_per_epoch, verbose)
    sums, done = _run_steps(model, step, strategy, dataset_fn, epoch, steps_per_epoch, cbs, progbar)
    epoch_logs = _epoch_logs(model, epoch, sums, done, on_epoch_end)
    if progbar is not None:
        progbar.stateful_metrics.update(epoch_logs)
        progbar.update(done, list(epoch_logs.items()), finalize=True)
    cbs.on_epoch_end(epoch, epoch_logs)
    return epoch_logs


def _jit_setting(strategy: tf.distribute.Strategy, jit_compile: bool) -> bool:
    """``jit_compile``, turned off with a warning where XLA cannot work (see the module docstring)."""
    if jit_compile and not _jit_supported(strategy):
        log.warning("jit_compile turned off: XLA does not work with %d replicas on CPU devices",
                    strategy.num_replicas_in_sync)
        return False
    return jit_compile


def _callback_list(model: keras.Model, callbacks: Iterable[keras.callbacks.Callback],
                   params: dict) -> keras.callbacks.CallbackList:
    """``callbacks`` as one CallbackList set to ``model`` and the run's ``params``."""
    cbs = callbacks if isinstance(callbacks, keras.callbacks.CallbackList) else \
        keras.callbacks.CallbackList(list(callbacks), model=model)
    cbs.set_model(model)
    cbs.set_params(params)
    return cbs


def _epoch_progbar(epoch: int, epochs: int, steps_per_epoch: int, verbose: int):
    """Prints the epoch's header and returns its progress bar; None when not ``verbose``."""
    if not verbose:
        return None
    print(f"Epoch {epoch + 1}/{epochs}")
    # values shown are running means computed here, so every name is "stateful" to Progbar
    return progbar_(steps_per_epoch, verbose=verbose, stateful_metrics=set())


def _run_steps(model: keras.Model, step, strategy: tf.distribute.Strategy, dataset_fn: DatasetFn,
               epoch: int, steps_per_epoch: int, cbs: keras.callbacks.CallbackList,
               progbar) -> tuple[dict[str, float], int]:
    """Runs epoch ``epoch``'s steps (fewer when its dataset runs out or ``model.stop_training``
    is set), with the batch callbacks and the progress bar; returns ``(sums of the step values,
    steps done)``. The epoch's input iterator is released on another thread afterwards."""
    dist = strategy.distribute_datasets_from_function(lambda ctx: dataset_fn(ctx, epoch))
    # the only reference to the epoch's iterator, so it can be released on another thread
    held = [iter(dist)]
    sums: dict[str, float] = {}
    done = 0
    for batch in range(steps_per_epoch):
        # the batch is fetched outside the step: a dataset running out inside the compiled
        # step would still run its stateful ops (e.g. the optimizer's iteration counter)
        try:
            data = next(held[0])
        except (StopIteration, tf.errors.OutOfRangeError):
            log.warning("epoch %d: the dataset ran out after %d of %d steps", epoch + 1, batch,
                        steps_per_epoch)
            break
        cbs.on_train_batch_begin(batch)
        outputs = step(data)
        logs = {name: _as_float(value) for name, value in outputs.items()}
        done += 1
        for name, value in logs.items():
            sums[name] = sums.get(name, 0.0) + value
        cbs.on_train_batch_end(batch, logs)
        if progbar is not None:
            progbar.stateful_metrics.update(sums)
            progbar.update(batch + 1, [(k, v / done) for k, v in sums.items()], finalize=False)
        if model.stop_training:
            break
    release_in_background(held)
    return sums, done


def _epoch_logs(model: keras.Model, epoch: int, sums: dict[str, float], done: int,
                on_epoch_end: Callable[[int, dict], Mapping[str, float] | None] | None) -> dict:
    """The epoch's means of the step values, the learning rates and what ``on_epoch_end`` adds."""
    epoch_logs = {name: total / max(done, 1) for name, total in sums.items()}
    epoch_logs.update(learning_rates(model))
    if on_epoch_end is not None:
        extra = on_epoch_end(epoch, epoch_logs)
        if extra:
            epoch_logs.update({k: float(v) for k, v in extra.items()})
    return epoch_logs
