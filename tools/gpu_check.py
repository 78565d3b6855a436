#!/usr/bin/env python
"""GPU readiness check: a few training steps of ResNet50 re-ID and pix2pix under every setting
a recipe can choose, on whatever devices this machine has.

For each model, strategy (``one_device``, ``mirrored``), precision (``float32``,
``mixed_float16``, ``mixed_bfloat16``) and XLA (``jit_compile`` off / on) it trains a few steps
on synthetic in-memory batches through the core training loop (the one the stages use) and
prints images/s, the last step's loss and whether every loss was finite (re-ID on several
replicas with global-batch BatchNorm statistics, ``train_reid``'s default). Then it checks that
``mirrored`` and ``one_device`` agree: per precision and model, both train the same steps from
the same initial weights on the same global batches (plain SGD, softmax loss, dropout off,
BatchNorm statistics synchronised across replicas as ``train_reid`` does, since per-replica
statistics legitimately differ from the global batch's). The per-step losses and the weight
updates must agree within twice float32's own noise floor (one_device again from the initial
weights moved by 1e-7, i.e. at rounding level), at least 1e-3, and in mixed precision within
twice that precision's own error (its one_device run against the float32 one: float16/bfloat16
runs that sum in another order differ by about that much); a wrong gradient reduction (e.g.
per-replica means) differs by 50-100%.

On GPUs it runs at 256x128 (ResNet50 as the recipes use it, pix2pix Model 4 at full width).
Without a GPU it runs the same at tiny sizes (64x32, batch 4 per replica, pix2pix 8-32 filters)
and splits the CPU into 2 logical devices for ``mirrored``, as the tests do. XLA with several
replicas on CPU devices does not work in TensorFlow (the loop turns it off), so those settings
are listed as skipped.

    python tools/gpu_check.py [--json] [--steps 5] [--warmup 2] [--models reid,pix2pix]
                              [--precisions float32,mixed_float16,mixed_bfloat16] [--xla off,on]

Exit code 0 when every loss is finite and every agreement check passes, 1 otherwise.

Known (measured on the 2-core CPU at 64x32): an untrained ResNet50 there is ill-conditioned.
On ONE device, moving its weights by 1e-7 (relative) changes the first gradient by 2.1% (and by
3.8% at 1e-6), so ``mirrored`` (convolutions on half batches, sums in another order) cannot be
closer than that. With a fixed 1e-3 tolerance its float32 check failed: with Keras' one-pass
synchronised BatchNorm by 3% of the update after one step and 130% after three (chaotic), and
with the two-pass one ``train_reid`` now uses by the same 130% after three (losses 3.2% apart at
step 3; ``--sync-bn keras`` selects Keras' for comparison). Hence the measured floor, and one
agreement step on CPU. pix2pix and the ``tiny`` backbone agree to
5e-6. Expect a GPU run at 256x128 to be far better conditioned.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def configure_devices() -> dict:
    """Before TensorFlow's runtime starts: split the CPU into 2 logical devices when there is no
    GPU (so ``mirrored`` has 2 replicas). Returns ``{"gpus": [...], "cpu_replicas": n}``."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    cpu_replicas = 1
    if not gpus:
        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
            cpu_replicas = 2
        except RuntimeError:  # runtime already started
            cpu_replicas = len(tf.config.list_logical_devices("CPU"))
    return {"gpus": [g.name for g in gpus], "cpu_replicas": cpu_replicas}


def sizes(on_gpu: bool, args) -> dict:
    """Image size, per-replica batches and network widths for this machine."""
    if on_gpu:
        out = {"image_size": (256, 128), "reid_batch": 32, "gan_batch": 16,
               "pix2pix": {"filters": 64, "max_filters": 512}, "classes": 751}
    else:
        out = {"image_size": (64, 32), "reid_batch": 4, "gan_batch": 4,
               "pix2pix": {"filters": 8, "max_filters": 32}, "classes": 16}
    if args.size:
        h, w = args.size.lower().split("x")
        out["image_size"] = (int(h), int(w))
    if args.reid_batch:
        out["reid_batch"] = args.reid_batch
    if args.gan_batch:
        out["gan_batch"] = args.gan_batch
    return out


# ---------------------------------------------------------------------------- models and data


def build_reid(strategy, size: dict, *, agree: bool):
    """A compiled ReIDModel (ResNet50, no pretrained weights) built in ``strategy.scope()``.
    ``agree``: softmax loss and SGD (the agreement check), else softmax+triplet and Adam."""
    import keras

    from keras_reid.registry import REGISTRY
    from keras_reid.training.reid_model import ReIDModel

    h, w = size["image_size"]
    with strategy.scope():
        net = REGISTRY.create("backbone", {"type": "resnet50", "weights": None}).build(
            (h, w, 3), size["classes"])
        if strategy.num_replicas_in_sync > 1:  # train_reid's default sync_batchnorm: true
            synchronise(net)
        loss = {"type": "softmax", "label_smoothing": 0.1} if agree else {"type": "softmax_triplet"}
        model = ReIDModel(net, REGISTRY.create("loss", loss))
        model.compile(keras.optimizers.SGD(0.01) if agree else keras.optimizers.Adam(3.5e-4))
        model(np.zeros((1, h, w, 3), np.float32), training=False)
    return model


def build_pix2pix(strategy, size: dict, *, agree: bool):
    """A compiled pix2pix Model 4 GAN built in ``strategy.scope()`` (agreement: no dropout, SGD)."""
    import keras

    from keras_reid.registry import REGISTRY

    spec = {"type": "pix2pix", "variant": "model4", **size["pix2pix"]}
    if agree:
        spec["dropout"] = 0.0
    factory = REGISTRY.create("generator", spec)
    with strategy.scope():
        gan = factory.build(size["image_size"])
        if agree:
            gan.compile(d_optimizer=keras.optimizers.SGD(0.01), g_optimizer=keras.optimizers.SGD(0.01))
        else:
            gan.compile(**factory.optimizers(steps_per_epoch=100, epochs=1))
    return gan


SYNC_BN = "two_pass"  # --sync-bn


def synchronise(model) -> None:
    """Global-batch BatchNorm statistics on every replica, as ``train_reid`` does
    (``--sync-bn keras``: Keras' own one-pass ``synchronized=True`` instead, for comparison)."""
    from keras_reid.training.batchnorm import batchnorm_layers, synchronise_batchnorm

    if SYNC_BN == "keras":
        for layer in batchnorm_layers(model):
            layer.synchronized = True
    else:
        synchronise_batchnorm(model)


def global_batches(kind: str, size: dict, replicas: int, n: int, seed: int = 0) -> list:
    """``n`` deterministic global batches (a tuple for re-ID, a dict for pix2pix)."""
    rng = np.random.default_rng(seed)
    h, w = size["image_size"]
    out = []
    if kind == "reid":
        b = size["reid_batch"] * replicas
        for _ in range(n):
            images = rng.uniform(0, 255, (b, h, w, 3)).astype(np.float32)
            labels = (np.arange(b) // 2 % size["classes"]).astype(np.int64)  # pairs: triplets exist
            out.append((images, labels))
    else:
        b = size["gan_batch"] * replicas
        for _ in range(n):
            batch = {k: rng.uniform(-1, 1, (b, h, w, 3)).astype(np.float32) for k in ("source", "target")}
            for k in ("source_mask", "target_mask"):
                batch[k] = (rng.uniform(0, 1, (b, h, w, 1)) > 0.6).astype(np.float32)
            out.append(batch)
    return out


def dataset_fn_for(batches: list, repeat: bool):
    """The loop's ``dataset_fn`` over fixed global batches: each global batch is cut into the
    replicas' consecutive shares, so every strategy sees the same global batches."""
    import tensorflow as tf

    def fn(ctx, epoch):
        per = ctx.num_replicas_in_sync
        pieces = []
        for batch in batches:
            leaves = batch if isinstance(batch, dict) else dict(enumerate(batch))
            n = len(next(iter(leaves.values())))
            share = n // per
            for r in range(per):
                part = {k: v[r * share:(r + 1) * share] for k, v in leaves.items()}
                pieces.append(part if isinstance(batch, dict) else (part[0], part[1]))
        stacked = (tuple(np.stack([p[i] for p in pieces]) for i in range(2))
                   if isinstance(pieces[0], tuple) else
                   {k: np.stack([p[k] for p in pieces]) for k in pieces[0]})
        ds = tf.data.Dataset.from_tensor_slices(stacked)
        if ctx.num_input_pipelines > 1:
            ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        return ds.repeat() if repeat else ds

    return fn


# ---------------------------------------------------------------------------- runs


def step_times():
    """Returns a Keras callback recording the time and the loss at the end of every step
    (``.start``, ``.ends``, ``.losses``; a GAN's loss is its ``g_loss``)."""
    import keras

    class StepTimes(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.start = time.perf_counter()
            self.ends: list[float] = []
            self.losses: list[float] = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())
            logs = logs or {}
            self.losses.append(float(logs.get("loss", logs.get("g_loss", np.nan))))

    return StepTimes()


def make_strategy(kind: str):
    from keras_reid.distribute import make_strategy as make

    return make({"type": kind})


def timed_run(model_kind: str, strategy_kind: str, precision: str, xla: bool, size: dict,
              steps: int, warmup: int) -> dict:
    """Train ``warmup + steps`` steps (the real stage settings); returns the setting's figures."""
    import keras

    from keras_reid.training.loop import _jit_supported, model_optimizers, train
    from keras_reid.training.precision import precision_policy

    strategy = make_strategy(strategy_kind)
    replicas = strategy.num_replicas_in_sync
    row = {"model": "resnet50 re-ID" if model_kind == "reid" else "pix2pix model4",
           "strategy": strategy_kind, "replicas": replicas, "precision": precision, "xla": xla,
           "image_size": "x".join(map(str, size["image_size"])),
           "global_batch": size[f"{'reid' if model_kind == 'reid' else 'gan'}_batch"] * replicas}
    if xla and not _jit_supported(strategy):
        return {**row, "skipped": "XLA does not work with several replicas on CPU devices"}
    keras.utils.set_random_seed(0)
    with precision_policy(precision):
        build = build_reid if model_kind == "reid" else build_pix2pix
        model = build(strategy, size, agree=False)
        batches = global_batches(model_kind, size, replicas, 2)
        times = step_times()
        t0 = time.perf_counter()
        train(model, dataset_fn_for(batches, repeat=True), strategy=strategy, epochs=1,
              steps_per_epoch=warmup + steps, callbacks=[times], verbose=0, jit_compile=xla)
    ends = times.ends
    seconds = ends[-1] - ends[warmup - 1] if warmup else ends[-1] - times.start
    optimizers = sorted({type(o).__name__ for o in model_optimizers(model, built_only=True).values()})
    return {**row, "images_per_s": round(steps * row["global_batch"] / seconds, 2),
            "first_steps_s": round(ends[warmup - 1] - t0, 1) if warmup else None,
            "loss": round(times.losses[-1], 4), "finite": bool(np.isfinite(times.losses).all()),
            "optimizers": optimizers}


def _agree_run(model_kind: str, strategy_kind: str, precision: str, size: dict, steps: int,
               initial: list | None) -> dict:
    """One run of the agreement check from ``initial`` weights (None: keep the fresh ones);
    returns ``{"losses", "initial", "update" (trainable weights' change, flat), "loss_scales",
    "replicas"}``."""
    import keras

    from keras_reid.training.loop import model_optimizers, train
    from keras_reid.training.precision import precision_policy

    strategy = make_strategy(strategy_kind)
    keras.utils.set_random_seed(0)
    with precision_policy(precision):
        model = (build_reid if model_kind == "reid" else build_pix2pix)(strategy, size, agree=True)
        synchronise(model)  # global-batch statistics on every replica
        if initial is None:
            initial = [np.asarray(w) for w in model.get_weights()]
        else:
            model.set_weights(initial)
        replicas = make_strategy("mirrored").num_replicas_in_sync  # the same global batches for both
        batches = global_batches(model_kind, size, replicas, steps, seed=1)
        times = step_times()
        train(model, dataset_fn_for(batches, repeat=False), strategy=strategy, epochs=1,
              steps_per_epoch=steps, callbacks=[times], verbose=0)
        trainable = {id(v) for v in model.trainable_variables}
        update = np.concatenate([(np.asarray(v.numpy()) - w0).ravel()
                                 for v, w0 in zip(model.weights, initial) if id(v) in trainable])
        scales = [float(o.dynamic_scale.numpy()) for o in model_optimizers(model, built_only=True).values()
                  if isinstance(o, keras.optimizers.LossScaleOptimizer)]
    return {"losses": np.array(times.losses), "initial": initial, "update": update,
            "loss_scales": scales, "replicas": strategy.num_replicas_in_sync}


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b||."""
    return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-12))


def _perturbed(weights: list, scale: float = 1e-7, seed: int = 7) -> list:
    """``weights`` with every float value moved by a relative ``scale`` (float32 rounding level)."""
    rng = np.random.default_rng(seed)
    return [(w * (1 + scale * rng.standard_normal(w.shape))).astype(w.dtype)
            if np.issubdtype(w.dtype, np.floating) else w for w in weights]


def agreement(model_kind: str, precisions: list[str], size: dict, steps: int) -> list[dict]:
    """Per precision, train ``steps`` identical steps under one_device and mirrored from the same
    initial weights on the same global batches; returns one row per precision.

    Float32's own noise floor is measured first: one_device from the initial weights moved by
    1e-7 (relative; float32 rounding level). Two replicas add only rounding-level differences
    (convolutions on half batches, sums in another order), so they can differ by that much and
    no more; an ill-conditioned model (an untrained ResNet50 at 64x32: 2% after one step) has a
    large floor, a wrong gradient reduction (e.g. per-replica means) differs by 50-100% anyway.
    The weight updates must agree within ``max(1e-3, 2 x floor, 2 x the precision's own error)``,
    where the precision's own error is how far its one_device update is from the float32 one
    (float16/bfloat16 runs that sum in different orders differ by about that much). The per-step
    losses must agree alike."""
    ref = _agree_run(model_kind, "one_device", "float32", size, steps, None)
    noise = _agree_run(model_kind, "one_device", "float32", size, steps, _perturbed(ref["initial"]))
    floor_update = _rel(noise["update"], ref["update"])
    floor_loss = float(np.max(np.abs(noise["losses"] - ref["losses"]) / np.abs(ref["losses"])))
    rows = []
    for precision in precisions:
        one = ref if precision == "float32" else _agree_run(model_kind, "one_device", precision, size,
                                                             steps, ref["initial"])
        mir = _agree_run(model_kind, "mirrored", precision, size, steps, ref["initial"])
        own_update = _rel(one["update"], ref["update"])
        own_loss = float(np.max(np.abs(one["losses"] - ref["losses"]) / np.abs(ref["losses"])))
        update_diff = _rel(mir["update"], one["update"])
        loss_diff = float(np.max(np.abs(mir["losses"] - one["losses"]) / np.abs(one["losses"])))
        tol_update = max(1e-3, 2 * floor_update, 2 * own_update)
        tol_loss = max(1e-3, 2 * floor_loss, 2 * own_loss)
        finite = bool(np.isfinite(one["losses"]).all() and np.isfinite(mir["losses"]).all())
        rows.append({
            "model": "resnet50 re-ID" if model_kind == "reid" else "pix2pix model4",
            "precision": precision, "steps": steps, "mirrored_replicas": mir["replicas"],
            "losses_one_device": [round(float(v), 5) for v in one["losses"]],
            "losses_mirrored": [round(float(v), 5) for v in mir["losses"]],
            "rel_loss_diff": loss_diff, "rel_weight_update_diff": update_diff,
            "float32_floor_loss": floor_loss, "float32_floor_update": floor_update,
            "precision_error_loss": own_loss, "precision_error_update": own_update,
            "tolerance_loss": tol_loss, "tolerance_update": tol_update,
            "loss_scales": {"one_device": one["loss_scales"], "mirrored": mir["loss_scales"]}
            if one["loss_scales"] else None,
            "ok": finite and loss_diff <= tol_loss and update_diff <= tol_update})
    return rows


# ---------------------------------------------------------------------------- main


def _table(report: dict) -> str:
    lines = [f"devices: {report['devices']}", "",
             f"{'model':16} {'strategy':11} {'precision':15} {'xla':4} {'images/s':>9}  loss"]
    for r in report["settings"]:
        if "skipped" in r:
            lines.append(f"{r['model']:16} {r['strategy']:11} {r['precision']:15} "
                         f"{'on' if r['xla'] else 'off':4} {'skipped':>9}  ({r['skipped']})")
            continue
        flag = "" if r["finite"] else "  NOT FINITE"
        lines.append(f"{r['model']:16} {r['strategy']:11} {r['precision']:15} "
                     f"{'on' if r['xla'] else 'off':4} {r['images_per_s']:9.1f}  {r['loss']:.4f}"
                     f" [{', '.join(r['optimizers'])}]{flag}")
    lines += ["", "mirrored vs one_device (same steps, same global batches):"]
    for a in report["agreement"]:
        lines.append(f"  {a['model']:16} {a['precision']:15} {a['steps']} step(s): losses {a['rel_loss_diff']:.1e} "
                     f"(tolerance {a['tolerance_loss']:.1e}), weight updates "
                     f"{a['rel_weight_update_diff']:.1e} (tolerance {a['tolerance_update']:.1e}): "
                     f"{'ok' if a['ok'] else 'DISAGREE'}")
    lines.append("")
    lines.append("all checks passed" if report["ok"] else "SOME CHECKS FAILED")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    ap.add_argument("--warmup", type=int, default=2, help="untimed first steps (tracing, XLA compile)")
    ap.add_argument("--agree-steps", type=int, help="steps of the agreement check (default 3 on GPUs; "
                    "1 on CPU: an untrained ResNet50 at 64x32 is chaotic, rounding-level changes of its weights move "
                    "its first gradient by 2%%)")
    ap.add_argument("--models", default="reid,pix2pix")
    ap.add_argument("--strategies", default="one_device,mirrored")
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--xla", default="off,on")
    ap.add_argument("--size", help="HxW (default 256x128 on GPUs, 64x32 on CPU)")
    ap.add_argument("--reid-batch", type=int, help="per-replica batch of re-ID (GPU 32, CPU 4)")
    ap.add_argument("--gan-batch", type=int, help="per-replica batch of pix2pix (GPU 16, CPU 4)")
    ap.add_argument("--no-agreement", action="store_true", help="skip the mirrored/one_device check")
    ap.add_argument("--agreement-only", action="store_true", help="only the mirrored/one_device check")
    ap.add_argument("--sync-bn", choices=("two_pass", "keras"), default="two_pass",
                    help="synchronised BatchNorm: train_reid's two-pass moments (default) or Keras' "
                    "one-pass synchronized=True")
    args = ap.parse_args(argv)
    global SYNC_BN
    SYNC_BN = args.sync_bn

    devices = configure_devices()
    models = [m for m in args.models.split(",") if m]
    precisions = [p for p in args.precisions.split(",") if p]
    for p in precisions:
        if p not in PRECISIONS:
            print(f"error: --precisions: unknown '{p}'; expected {', '.join(PRECISIONS)}", file=sys.stderr)
            return 2
    for m in models:
        if m not in ("reid", "pix2pix"):
            print(f"error: --models: unknown '{m}'; expected reid, pix2pix", file=sys.stderr)
            return 2
    xlas = [{"off": False, "on": True}[x] for x in args.xla.split(",") if x]
    strategies = [s for s in args.strategies.split(",") if s]
    size = sizes(bool(devices["gpus"]), args)

    import tensorflow as tf

    report = {"devices": {"gpus": devices["gpus"],
                          "cpu_logical": len(tf.config.list_logical_devices("CPU")),
                          "tensorflow": tf.__version__},
              "sizes": {k: (list(v) if isinstance(v, tuple) else v) for k, v in size.items()},
              "steps": args.steps, "warmup": args.warmup, "sync_bn": args.sync_bn, "settings": [],
              "agreement": []}
    for model in models:
        for strategy in ([] if args.agreement_only else strategies):
            for precision in precisions:
                for xla in xlas:
                    row = timed_run(model, strategy, precision, xla, size, args.steps, args.warmup)
                    report["settings"].append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)  # progress
        if not args.no_agreement and "mirrored" in strategies:
            agree_steps = args.agree_steps or (3 if devices["gpus"] else 1)
            for row in agreement(model, precisions, size, agree_steps):
                report["agreement"].append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)  # progress
    report["ok"] = (all(r.get("finite", True) for r in report["settings"])
                    and all(a["ok"] for a in report["agreement"]))
    print(json.dumps(report, indent=1) if args.json else _table(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
