#!/usr/bin/env python
"""Benchmark: what the framework adds to a training step, against the plain Keras a user would write.

In one process, for each model:

* ``tiny`` / ``resnet50`` re-ID (batch 32, 128x64, no pretrained weights): the ``train_reid``
  stage's way - ``keras_reid.training.loop.train`` over ``ReIDModel`` with the stage's default
  loss (softmax+triplet), optimizer and schedule, fed by ``ReIDInput`` (PK sampler, the stage's
  default augmentation, JPEG decoding) with the stage's callbacks (epoch checkpoints,
  TensorBoard scalars every ``log_every`` steps, the input grid) and the progress bar - against
  a bare ``keras.Model`` with a five-line ``train_step`` (same network and weights, same loss
  function, same optimizer and schedule) run by ``Model.fit`` on the same batches, already in
  memory;
* ``pix2pix`` Model 4 (the ``train_generator`` stage's default generator, batch ``--gan-batch``,
  128x64): ``loop.train`` over the plugin's ``Pix2PixGAN`` fed by ``GANInput`` (pairs, exact
  person masks of the synthetic data) with the stage's callbacks (checkpoints, scalars, the
  sample grid) - against a bare Keras GAN ``train_step`` (the same two networks and updates:
  D on real and fake, then G on GAN + masked L1) run by ``fit`` on the same batches in memory.

The two arms alternate in one process (the machine's load hits both alike): one ``train`` call
runs ``--rounds`` epochs of ``--steps`` steps; at the end of every epoch (after the framework's
own epoch-end work: checkpoint, TensorBoard flush) a last callback runs the bare arm's ``fit`` for
the same number of steps, and reads ``--steps`` batches of the input pipeline alone. Round 0 is
warm-up (tracing) for both. Every figure is given in wall time and in the process's CPU time
(all threads; on a loaded machine the steadier of the two). Per model:

* ``framework_s`` / ``bare_s``: seconds for the timed rounds' steps (framework: its time minus
  the bare arm's; its per-epoch work included), and their ``ratio`` (goal: at most 1.10);
* ``framework_step_ms`` (median step inside an epoch) against ``bare_step_ms``, and
  ``epoch_overhead_s`` (an epoch's time beyond its steps; ``epoch_start_s``: iterator and
  pipeline fill, ``epoch_end_s``: checkpoint and TensorBoard), and ``ratio_per_epoch``: the
  ratio projected to an epoch of ``--epoch-steps`` steps (Market-1501 at batch 32: 404);
* ``pipeline_images_per_s`` (the input pipeline alone) against ``step_images_per_s`` (the bare
  step's): the pipeline must never be the bound.

    python tools/bench_overhead.py [--json] [--models tiny,resnet50,pix2pix] [--steps 20]
                                   [--rounds 3] [--batch 32] [--gan-batch 8] [--size 128x64]
                                   [--data-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# ---------------------------------------------------------------------------- timing callbacks


def now() -> np.ndarray:
    """(wall seconds, this process's CPU seconds over all threads)."""
    return np.array([time.perf_counter(), time.process_time()])


def clock_callback():
    """A Keras callback recording step and epoch times of the loop it is given to."""
    import keras

    class Clock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs: list[dict] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append({"begin": now(), "batch_ends": []})

        def on_train_batch_end(self, batch, logs=None):
            self.epochs[-1]["batch_ends"].append(now())

        def on_epoch_end(self, epoch, logs=None):
            self.epochs[-1]["end"] = now()

    return Clock()


def bare_runner(run_bare, read_pipeline):
    """A Keras callback (put it last) that, at every epoch end of the framework's loop, runs the
    bare arm (``run_bare()``, timed) and reads the pipeline alone (``read_pipeline()``, which
    returns its own timing)."""
    import keras

    class Runner(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.bare: list[np.ndarray] = []
            self.pipeline: list[np.ndarray] = []
            self.spans: list[tuple] = []   # time taken from the framework

        def on_epoch_end(self, epoch, logs=None):
            t0 = now()
            run_bare()
            t1 = now()
            self.pipeline.append(read_pipeline())
            t2 = now()
            self.bare.append(t1 - t0)
            self.spans.append((t0, t2))

    return Runner()


def summarise(name: str, clock, runner, t_start, t_end, steps: int, batch: int,
              epoch_steps: int) -> dict:
    """The figures of one model from the timings (round 0 is warm-up), in wall seconds and in
    CPU seconds of the process (all threads: on a loaded machine the steadier measure)."""
    rounds = len(runner.bare)
    timed = range(1, rounds)
    out = {"model": name, "batch": batch, "steps_per_round": steps, "timed_rounds": len(timed),
           "epoch_steps": epoch_steps}
    for i, unit in enumerate(("wall", "cpu")):
        # the framework's time for the timed rounds: from the end of round 0's bare run to the
        # end of training, minus the bare runs and pipeline reads in between
        t0 = runner.spans[0][1][i]
        inside = sum(b[i] - a[i] for a, b in runner.spans[1:])
        framework = (t_end[i] - t0) - inside
        bare = sum(runner.bare[r][i] for r in timed)
        pipeline = sum(runner.pipeline[r][i] for r in timed)
        diffs = []
        for r in timed:
            ends = [e[i] for e in clock.epochs[r]["batch_ends"]]
            diffs.extend(np.diff(ends).tolist())
        step = statistics.median(diffs)
        # an epoch's time (from the end of the previous round's bare run to the start of its
        # own, i.e. with the framework's epoch-end callbacks) beyond its steps
        overhead = statistics.median(
            runner.spans[r][0][i] - runner.spans[r - 1][1][i] - steps * step for r in timed)
        # where it goes: an epoch's start (iterator, pipeline fill: first step beyond a step)
        # and its end (the callbacks' epoch-end work: checkpoint, TensorBoard)
        start = statistics.median(clock.epochs[r]["batch_ends"][0][i] - clock.epochs[r]["begin"][i]
                                  - step for r in timed)
        end = statistics.median(runner.spans[r][0][i] - clock.epochs[r]["end"][i] for r in timed)
        bare_step = bare / (len(timed) * steps)
        out[unit] = {
            "framework_s": round(framework, 2), "bare_s": round(bare, 2),
            "ratio": round(framework / bare, 3),
            "framework_step_ms": round(1e3 * step, 1), "bare_step_ms": round(1e3 * bare_step, 1),
            "step_ratio": round(step / bare_step, 3),
            "epoch_overhead_s": round(overhead, 2),
            "epoch_start_s": round(start, 2), "epoch_end_s": round(end, 2),
            "ratio_per_epoch": round((epoch_steps * step + overhead) / (epoch_steps * bare_step), 3),
            "pipeline_images_per_s": round(len(timed) * steps * batch / pipeline, 1),
            "step_images_per_s": round(batch / bare_step, 1),
        }
    out["run_start_s"] = round(float(clock.epochs[0]["begin"][0] - t_start[0]), 2)
    return out


# ---------------------------------------------------------------------------- data


def synthetic_root(tmp: Path, size: tuple[int, int], ids: int, data_dir: str | None = None) -> dict:
    """The registry's ``synthetic`` dataset (Market layout, exact masks) written under ``tmp``
    (or kept in ``data_dir``: a second run with the same parameters reuses it)."""
    root = Path(data_dir) if data_dir else tmp / "synthetic"
    return {"type": "synthetic", "root": str(root), "ids": ids, "size": list(size)}


def cycle(batches: list):
    """A ``tf.data.Dataset`` repeating ``batches`` (tensors in memory) forever, without tf.data's
    autotuning (nothing to tune): each ``fit`` call makes and drops an iterator of it, and dropping
    an autotuned iterator on the training thread can wait out TensorFlow's autotuning period (see
    ``keras_reid.training.loop``), which would inflate the bare arm's wall time."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensors(batches[0])
    for b in batches[1:]:
        ds = ds.concatenate(tf.data.Dataset.from_tensors(b))
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.repeat().with_options(options)


def in_memory(dataset, n: int) -> list:
    """The first ``n`` batches of ``dataset`` as tensors."""
    import tensorflow as tf

    return [tf.nest.map_structure(tf.constant, b) for b in dataset.take(n)]


def read_batches(dataset_fn, steps: int):
    """``() -> seconds`` reading ``steps`` batches of a fresh epoch's pipeline (after its first);
    returns (wall, CPU) of the reading alone. The iterator is dropped on another thread, as the
    loop does (``keras_reid.training.loop.release_in_background``)."""
    from keras_reid.training.loop import release_in_background

    epoch = [100]

    def read():
        epoch[0] += 1
        held = [iter(dataset_fn(epoch[0]).take(steps + 1))]
        next(held[0])
        t0 = now()
        for _ in range(steps):
            next(held[0])
        spent = now() - t0
        release_in_background(held)
        return spent

    return read


# ---------------------------------------------------------------------------- re-ID


def bare_reid_model(net, loss_fn):
    """What a user writes: a Keras model with a five-line ``train_step`` (no strategy, no trackers)."""
    import keras
    import tensorflow as tf

    class BareReID(keras.Model):
        def __init__(self):
            super().__init__()
            self.net = net

        def call(self, images, training=None):
            return self.net(images, training=training)

        def train_step(self, data):
            images, labels = data
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(loss_fn(labels, self.net(images, training=True)))
                if self.net.losses:
                    loss = loss + tf.add_n(self.net.losses)
            grads = tape.gradient(loss, self.net.trainable_variables)
            self.optimizer.apply(grads, self.net.trainable_variables)
            return {"loss": loss}

    return BareReID()


def bench_reid(backbone: str, args, tmp: Path) -> dict:
    """Both arms for a re-ID backbone; returns the figures."""
    import keras

    from keras_reid.data.pipeline import ReIDInput, scan_images
    from keras_reid.data.records import relabel
    from keras_reid.distribute import make_strategy
    from keras_reid.registry import REGISTRY
    from keras_reid.stages.train_reid import TrainReIDConfig
    from keras_reid.training.callbacks import BatchImageLogger, ScalarLogger
    from keras_reid.training.checkpoint import EpochCheckpoint
    from keras_reid.training.loop import train
    from keras_reid.training.optim import make_optimizer, make_schedule
    from keras_reid.training.reid_model import ReIDModel

    h, w = args.size
    spec = {"type": backbone} if backbone == "tiny" else {"type": backbone, "weights": None}
    cfg = TrainReIDConfig(dataset="bench", backbone=spec, image_size=(h, w), batch_size=args.batch)
    splits = REGISTRY.create("dataset", synthetic_root(tmp, args.size, args.ids, args.data_dir)).load()
    good, _ = scan_images([r for r in splits["train"] if r.pid > 0])
    labels, mapping = relabel(good)
    keras.utils.set_random_seed(0)
    strategy = make_strategy(None)  # the stage's default (one device)
    k = cfg.instances_per_id
    inp = ReIDInput(good, labels, global_batch_size=cfg.batch_size, sampler=cfg.sampler,
                    p=cfg.batch_size // k, k=k, image_size=(h, w), transforms=list(cfg.augment),
                    seed=0, num_replicas=1, num_classes=len(mapping))
    epochs = args.rounds
    factory = REGISTRY.create("backbone", cfg.backbone)

    def compiled(net, model):
        schedule = make_schedule(cfg.schedule, steps_per_epoch=inp.steps_per_epoch,
                                 base_lr=cfg.optimizer.lr, epochs=cfg.epochs)
        model.compile(optimizer=make_optimizer(cfg.optimizer, schedule), **(
            {"jit_compile": False} if not isinstance(model, ReIDModel) else {}))
        model(np.zeros((1, h, w, 3), np.float32), training=False)
        return model

    with strategy.scope():
        net = factory.build((h, w, 3), len(mapping))
        loss = REGISTRY.create("loss", cfg.loss)
        model = compiled(net, ReIDModel(net, loss))
    bare_net = factory.build((h, w, 3), len(mapping))
    bare_net.set_weights(net.get_weights())
    bare = compiled(bare_net, bare_reid_model(bare_net, loss))

    batches = in_memory(inp.dataset(0), 4)
    bare_data = cycle([(x, y) for x, y in batches])

    def run_bare():
        bare.fit(bare_data, epochs=1, steps_per_epoch=args.steps, verbose=0)

    def sample_batch():
        images, _ = next(iter(inp.dataset(0).take(1)))
        return np.asarray(images).astype(np.uint8)

    clock = clock_callback()
    runner = bare_runner(run_bare, read_batches(inp.dataset, args.steps))
    tb = tmp / f"tb_{backbone}"
    callbacks = [clock,
                 EpochCheckpoint(tmp / f"ckpt_{backbone}", max_to_keep=cfg.keep_checkpoints, label="bench"),
                 ScalarLogger(tb, every=cfg.log_every, prefix="reid"),
                 BatchImageLogger(tb, sample_batch, name="reid/input_batch"),
                 runner]
    t_start = now()
    def dataset_fn(ctx, epoch):  # an epoch of --steps batches: its pipeline ends with it, as a
        return inp.dataset_fn(ctx, epoch).take(args.steps)  # stage's full epoch does

    train(model, dataset_fn, strategy=strategy, epochs=epochs, steps_per_epoch=args.steps,
          callbacks=callbacks, verbose=args.verbose, jit_compile=False)
    t_end = now()
    if args.verbose:
        print()
    return summarise(f"{backbone} re-ID", clock, runner, t_start, t_end, args.steps, cfg.batch_size,
                     args.epoch_steps)


# ---------------------------------------------------------------------------- pix2pix


def bare_gan_model(generator, discriminator, lambda_fg: float, lambda_bg: float):
    """What a user writes for pix2pix Model 4: D on (condition, real) and (condition, fake), then
    G on the GAN loss plus the masked L1 terms (the condition: the source's background)."""
    import keras
    import tensorflow as tf

    bce = keras.losses.BinaryCrossentropy(from_logits=True)

    class BareGAN(keras.Model):
        def __init__(self):
            super().__init__()
            self.g = generator
            self.d = discriminator

        def compile(self, d_optimizer, g_optimizer):
            super().compile(jit_compile=False)
            self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer

        def call(self, batch, training=None):
            return self.g(batch["source"], training=training)

        def train_step(self, batch):
            x, y = batch["source"], batch["target"]
            m_in, m_out = batch["source_mask"], batch["target_mask"]
            keep = (1.0 - m_in) * (1.0 - m_out)
            cond = x * keep
            with tf.GradientTape() as g_tape:
                fake = self.g(x, training=True)
                with g_tape.stop_recording():
                    with tf.GradientTape() as d_tape:
                        real_logits = self.d(tf.concat([cond, y], -1), training=True)
                        fake_logits = self.d(tf.concat([cond, tf.stop_gradient(fake)], -1), training=True)
                        d_loss = 0.5 * (bce(tf.ones_like(real_logits), real_logits)
                                        + bce(tf.zeros_like(fake_logits), fake_logits))
                    d_vars = self.d.trainable_variables
                    self.d_optimizer.apply(d_tape.gradient(d_loss, d_vars), d_vars)
                fake_logits = self.d(tf.concat([cond, fake], -1), training=True)
                g_loss = (bce(tf.ones_like(fake_logits), fake_logits)
                          + lambda_fg * tf.reduce_mean(tf.abs(fake - x) * m_in)
                          + lambda_bg * tf.reduce_mean(tf.abs(fake - y) * keep))
            g_vars = self.g.trainable_variables
            self.g_optimizer.apply(g_tape.gradient(g_loss, g_vars), g_vars)
            return {"d_loss": d_loss, "g_loss": g_loss}

    return BareGAN()


def bench_pix2pix(args, tmp: Path) -> dict:
    """Both arms for pix2pix Model 4; returns the figures."""
    import keras

    from keras_reid.data.gan_input import GANInput
    from keras_reid.data.gan_pairs import make_pairs
    from keras_reid.data.images import load_images
    from keras_reid.data.masks import cached_masks
    from keras_reid.data.pipeline import scan_images
    from keras_reid.distribute import make_strategy
    from keras_reid.interfaces import generator_factory
    from keras_reid.registry import REGISTRY
    from keras_reid.stages.train_generator import TrainGeneratorConfig
    from keras_reid.training.callbacks import GeneratorSamples, ScalarLogger
    from keras_reid.training.checkpoint import EpochCheckpoint
    from keras_reid.training.loop import train

    h, w = args.size
    cfg = TrainGeneratorConfig(dataset="bench", image_size=(h, w), batch_size=args.gan_batch,
                               masker={"type": "synthetic"}, source_camera=1, target_camera=2)
    factory = generator_factory(cfg.generator, REGISTRY)
    splits = REGISTRY.create("dataset", synthetic_root(tmp, args.size, args.ids, args.data_dir)).load()
    records, _ = scan_images(splits[cfg.split])
    pairs = make_pairs(factory.pairing, records, source_camera=cfg.source_camera,
                       target_camera=cfg.target_camera, targets_per_source=cfg.targets_per_source,
                       max_pairs_per_identity=cfg.max_pairs_per_identity, seed=0)
    paths = [str(r.path) for r in pairs.records]
    images = load_images(paths, (h, w))
    with REGISTRY.using("masker", cfg.masker) as masker:
        masks, _ = cached_masks(tmp / "gan_masks", cfg.masker, masker, paths, (h, w), images=images)
    keras.utils.set_random_seed(0)
    strategy = make_strategy(None)
    data = GANInput(pairs, images, masks, needs=factory.needs, global_batch_size=cfg.batch_size,
                    seed=0, flip=cfg.flip, num_replicas=1)
    steps_per_epoch = data.steps_per_epoch
    with strategy.scope():
        gan = factory.build((h, w))
        gan.compile(**factory.optimizers(steps_per_epoch=steps_per_epoch, epochs=cfg.epochs))
    twin = factory.build((h, w))
    twin.set_weights(gan.get_weights())
    c = factory.config
    bare = bare_gan_model(twin.generator, twin.discriminator, c.lambda_fg, c.lambda_bg)
    bare.compile(**factory.optimizers(steps_per_epoch=steps_per_epoch, epochs=cfg.epochs))
    batches = in_memory(data.dataset(0), 4)
    bare(batches[0])
    bare_data = cycle(batches)

    def run_bare():
        bare.fit(bare_data, epochs=1, steps_per_epoch=args.steps, verbose=0)

    def dataset_fn(ctx, epoch):
        ds = data.dataset_fn(ctx, epoch)  # an epoch of --steps batches (see bench_reid)
        return (ds.repeat() if args.steps > steps_per_epoch else ds).take(args.steps)

    examples = {k: v for k, v in data.fixed_examples(cfg.samples, seed=0).items() if np.ndim(v) == 4}
    clock = clock_callback()
    runner = bare_runner(run_bare, read_batches(lambda e: data.dataset(e).repeat(), args.steps))
    tb = tmp / "tb_gan"
    callbacks = [clock,
                 EpochCheckpoint(tmp / "ckpt_gan", max_to_keep=cfg.keep_checkpoints, label="bench"),
                 ScalarLogger(tb, every=cfg.log_every, prefix="gan"),
                 GeneratorSamples(tb, examples, every=cfg.sample_every, name="gan/samples"),
                 runner]
    t_start = now()
    train(gan, dataset_fn, strategy=strategy, epochs=args.rounds, steps_per_epoch=args.steps,
          callbacks=callbacks, verbose=args.verbose, jit_compile=False)
    t_end = now()
    if args.verbose:
        print()
    return summarise("pix2pix model4", clock, runner, t_start, t_end, args.steps, cfg.batch_size,
                     args.epoch_steps_gan or max(steps_per_epoch, args.steps))


# ---------------------------------------------------------------------------- main


def _table(rows: list[dict]) -> str:
    lines = []
    for unit in ("wall", "cpu"):
        lines.append(f"{unit} time:")
        lines.append(f"  {'model':16} {'framework s':>11} {'bare s':>7} {'ratio':>6} {'step ms fw/bare':>16} "
                     f"{'epoch +s':>8} {'ratio/epoch':>11} {'pipeline img/s':>14} {'step img/s':>10}")
        for row in rows:
            r = row[unit]
            lines.append(f"  {row['model']:16} {r['framework_s']:11.1f} {r['bare_s']:7.1f} {r['ratio']:6.3f} "
                         f"{r['framework_step_ms']:7.0f}/{r['bare_step_ms']:<8.0f} {r['epoch_overhead_s']:8.2f} "
                         f"{r['ratio_per_epoch']:11.3f} {r['pipeline_images_per_s']:14.1f} "
                         f"{r['step_images_per_s']:10.1f}")
    lines.append("ratio: framework / bare over the timed rounds; ratio/epoch: projected to an epoch of "
                 "epoch_steps steps (goal: <= 1.10)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--models", default="tiny,resnet50,pix2pix")
    ap.add_argument("--steps", type=int, default=20, help="steps per round and arm")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (the first is warm-up)")
    ap.add_argument("--batch", type=int, default=32, help="re-ID global batch")
    ap.add_argument("--gan-batch", type=int, default=8, help="pix2pix global batch")
    ap.add_argument("--size", default="128x64", help="HxW")
    ap.add_argument("--ids", type=int, default=200, help="identities of the synthetic dataset")
    ap.add_argument("--data-dir", default=None,
                    help="keep the synthetic dataset here and reuse it (default: a temporary folder)")
    ap.add_argument("--epoch-steps", type=int, default=404,
                    help="re-ID steps per epoch for the projected ratio (Market-1501 at batch 32: 404)")
    ap.add_argument("--epoch-steps-gan", type=int, default=0,
                    help="pix2pix steps per epoch for the projected ratio (default: the synthetic pairs')")
    ap.add_argument("--verbose", type=int, default=1, help="the framework's progress bar (as the stages)")
    args = ap.parse_args(argv)
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        print(f"error: --size: expected HxW, got '{args.size}'", file=sys.stderr)
        return 2
    args.size = (h, w)
    models = [m for m in args.models.split(",") if m]
    for m in models:
        if m not in ("tiny", "resnet50", "pix2pix"):
            print(f"error: --models: unknown '{m}'; expected tiny, resnet50, pix2pix", file=sys.stderr)
            return 2
    if args.rounds < 2 or args.steps < 2:
        print("error: --rounds and --steps must be at least 2 (round 0 is warm-up)", file=sys.stderr)
        return 2
    if args.json:
        args.verbose = 0
    import tensorflow as tf

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in models:
            row = bench_pix2pix(args, Path(tmp)) if m == "pix2pix" else bench_reid(m, args, Path(tmp))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)  # progress
    report = {"tensorflow": tf.__version__, "cpus": os.cpu_count(), "size": list(args.size),
              "load_average": [round(x, 1) for x in os.getloadavg()], "models": rows}
    print(json.dumps(report, indent=1) if args.json else _table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
