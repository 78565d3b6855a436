"""Parameters, FLOPs and CPU latency (Keras and TFLite, batch 1 and 32) of backbones: resnet50,
condensenet (trained/masked form) and condensenet converted (inference form).

    python tools/bench_backbones.py [--size 256x128] [--classes 751] [--batches 1,32] [--runs 10]
                                    [--groups 4] [--condense-factor 4] [--imagenet] [--jit]
                                    [--threads N] [--no-tflite] [--json]

* ``params``: all weights of the re-ID model (trainable and not; the condensenet masks and step
  counters included in the trained form, as saved); ``nonzero_params`` those that are not zero
  (the converted model's dense-layout blocks store block-sparse kernels, see
  ``keras_reid_plugins.backbones._condensenet_model``).
* ``flops``: multiply-adds (MACs) per image of the convolution and dense layers as they run,
  counted analytically from the layer shapes: a conv (plain, grouped, learned group conv or the
  converted layers) costs ``H_out x W_out x kernel size`` (kernel size = kh x kw x in/groups x
  out), a dense layer its kernel size; BatchNorm, activations, pooling, gathers and shuffles are
  not counted (the convention of the CondenseNet paper's "FLOPs"). Zeros in a kernel cost the
  same (the trained form's masked 1x1 convs, the converted form's dense-layout blocks);
  ``flops_masked`` counts only the unmasked / nonzero weights.
* ``ms_per_image``: CPU wall time per image, ``{runtime: {batch: {median, min}}}``: ``keras`` =
  ``model(x, training=False)`` in a ``tf.function`` (XLA only with ``--jit``), ``tflite`` = the
  model converted by ``tf.lite.TFLiteConverter.from_keras_model`` run by the TFLite interpreter
  with ``num_threads=2`` (default delegates: XNNPACK; ``--threads N``: N threads for TFLite and
  TensorFlow's intra-op pool, one inter-op thread; ``--threads 1`` shows what each model gets
  from the second core). ``--runs`` timed calls at batch 1 (half
  as many, at least 3, at larger batches) after 2 warm-up calls, the models timed round-robin
  (one call of each per round) so that a changing load on a shared machine hits all of them
  alike; ``resnet50_over_this`` is resnet50's median over the model's, same setting, same run.
  ``machine`` records the load average before and after (on a shared machine compare within a
  run, not across runs).

The condensenet rows use the paper's CondenseNet-74 (stages 4-6-8-10-8, growth 8-16-32-64-128,
C = G = 4 unless given), fully condensed (C - 1 condensations of random weights, classifier
halved) before conversion; the converted model uses the default layout (``convert(model)``;
``tools/bench_condensenet_layout.py`` measures the alternatives). ``--imagenet`` adds the two
condensenet rows at 224x224 with 1000 classes (the paper's setting: 4.8M parameters, 529M FLOPs;
Keras, batch 1). resnet50 has weights None and last stride 1 (the re-ID default).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings

import numpy as np


def count_macs(model, input_shape) -> tuple[int, int]:
    """Returns (MACs as run, MACs of unmasked weights) per image of ``model`` on ``input_shape``."""
    import keras

    from keras_reid_plugins.backbones._condensenet_model import (CondensedPointwise, CondensingDense,
                                                                 LearnedGroupConv, SplitGroupConv)

    conv_types = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, LearnedGroupConv,
                  CondensedPointwise, SplitGroupConv)
    dense_types = (keras.layers.Dense, CondensingDense)
    counted = [l for l in model.layers if isinstance(l, conv_types + dense_types)]
    nested = [l for l in model.layers if isinstance(l, keras.Model)]
    total = masked = 0
    probes = counted + nested
    if probes:
        # the real output (and nested-model input) shapes, from one forward pass at batch 1
        # a nested model's input in this graph: the input of its last call (node) here
        outer = [l._inbound_nodes[-1].input_tensors[0] for l in nested]
        probe = keras.Model(model.inputs, [l.output for l in counted] + outer)
        with warnings.catch_warnings():  # Keras warns about the input structure of nested models
            warnings.simplefilter("ignore", UserWarning)
            outs = probe(np.zeros((1, *input_shape), np.float32), training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for layer, out in zip(counted, outs[:len(counted)]):
            size = int(np.prod(layer.kernel.shape))
            if isinstance(layer, conv_types):
                hw = int(np.prod(out.shape[1:3]))
                macs = hw * size
                if isinstance(layer, LearnedGroupConv):
                    kept = hw * int(np.asarray(layer.mask).sum())
                else:  # the dense layout's block-sparse kernels: their zeros cost, but are not kept
                    kept = hw * int(np.count_nonzero(np.asarray(layer.kernel)))
            else:
                macs = size
                kept = int(np.asarray(layer.mask).sum()) * layer.units \
                    if isinstance(layer, CondensingDense) else macs
            total += macs
            masked += kept
        for layer, inp in zip(nested, outs[len(counted):]):
            a, b = count_macs(layer, tuple(inp.shape[1:]))
            total += a
            masked += b
    return total, masked


def keras_runner(model, x: np.ndarray, jit: bool = False):
    """A call running ``model(x, training=False)`` in a ``tf.function`` (XLA with ``jit``)."""
    import tensorflow as tf

    xt = tf.constant(x)
    fn = tf.function(lambda v: model(v, training=False)["features"], jit_compile=jit)
    return lambda: np.asarray(fn(xt))


def tflite_blob(model) -> bytes:
    """The model converted by ``tf.lite.TFLiteConverter.from_keras_model`` (float32, default
    options)."""
    import tensorflow as tf

    # the converter prints its saved-artifact signature to stdout: keep --json's stdout clean
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def tflite_runner(blob: bytes, x: np.ndarray, threads: int = 2):
    """A call invoking a TFLite interpreter (``num_threads`` threads, default delegates: XNNPACK)
    on ``x``; returns the features output."""
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's move-to-LiteRT notice
        it = tf.lite.Interpreter(model_content=blob, num_threads=threads)
    inp = it.get_input_details()[0]["index"]
    it.resize_tensor_input(inp, x.shape)
    it.allocate_tensors()
    out = [d["index"] for d in it.get_output_details()]
    feat = next((d["index"] for d in it.get_output_details() if "features" in d["name"]), out[0])

    def run():
        it.set_tensor(inp, x)
        it.invoke()
        return it.get_tensor(feat)
    return run


def interleaved_ms(calls: dict, batch: int, runs: int, warmup: int = 2) -> dict:
    """Median (and minimum) ms per image of each call, timed round-robin (one call of each per
    round) so that a changing machine load affects every candidate alike."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - t0) * 1000.0 / batch)
    return {name: {"median": round(float(np.median(t)), 3), "min": round(float(np.min(t)), 3)}
            for name, t in times.items()}


def condensenet_models(shape, classes, args) -> tuple:
    """(trained model, converted model) of a fully condensed CondenseNet-74 of random weights."""
    from keras_reid.registry import REGISTRY

    bb = REGISTRY.create("backbone", {"type": "condensenet", "groups": args.groups,
                                      "condense_factor": args.condense_factor})
    model = bb.build(shape, classes)
    for _ in range(max(args.condense_factor - 1, 1)):
        bb.condense(model)
    bb.condense(model, classifier=True)  # the classifier's single condensation (no-op if done)
    return model, bb.convert(model)


def nonzero_params(model) -> int:
    """Weights of ``model`` that are not exactly zero (the dense layout stores its block-sparse
    kernels' zeros)."""
    return int(sum(np.count_nonzero(np.asarray(w)) for w in model.weights))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="256x128", help="HxW")
    parser.add_argument("--classes", type=int, default=751, help="identities (Market-1501: 751)")
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--runs", type=int, default=10, help="timed calls per model and setting")
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--condense-factor", type=int, default=4)
    parser.add_argument("--imagenet", action="store_true",
                        help="add condensenet rows at 224x224 with 1000 classes (Keras batch 1)")
    parser.add_argument("--jit", action="store_true", help="time XLA-compiled Keras calls (jit_compile)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for TFLite and TensorFlow's intra-op pool (one inter-op thread); "
                             "default: TensorFlow's default and 2 for TFLite")
    parser.add_argument("--no-tflite", action="store_true", help="leave out the TFLite export")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    shape = (h, w, 3)
    batches = [int(b) for b in args.batches.split(",")]
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)

    from keras_reid.registry import REGISTRY

    load_before = os.getloadavg()
    models = {"resnet50": REGISTRY.create("backbone", {"type": "resnet50", "weights": None}).build(
        shape, args.classes)}
    models["condensenet"], models["condensenet_converted"] = condensenet_models(shape, args.classes, args)
    rows = []
    for name, model in models.items():
        macs, masked = count_macs(model, shape)
        r = {"name": name, "params": int(model.count_params()), "nonzero_params": nonzero_params(model),
             "flops": macs, "input": f"{h}x{w}", "classes": args.classes, "jit_compile": args.jit,
             "ms_per_image": {}}
        if masked != macs:
            r["flops_masked"] = masked
        rows.append(r)
    blobs = {}
    if not args.no_tflite:
        blobs = {name: tflite_blob(model) for name, model in models.items()}
    rng = np.random.default_rng(0)
    for batch in batches:
        x = rng.uniform(0, 255, (batch, *shape)).astype(np.float32)
        runs = args.runs if batch == 1 else max(3, args.runs // 2)
        settings = {"keras": {n: keras_runner(m, x, args.jit) for n, m in models.items()}}
        if blobs:
            settings["tflite"] = {n: tflite_runner(b, x, args.threads or 2) for n, b in blobs.items()}
        for runtime, calls in settings.items():
            ms = interleaved_ms(calls, batch, runs)
            for r in rows:
                r["ms_per_image"].setdefault(runtime, {})[str(batch)] = ms[r["name"]]
            del calls
    for r in rows:  # ResNet50's median time / this model's, same run, same setting
        r["resnet50_over_this"] = {rt: {b: round(rows[0]["ms_per_image"][rt][b]["median"] / v["median"], 2)
                                        for b, v in per.items()}
                                   for rt, per in r["ms_per_image"].items()}
    if args.imagenet:
        trained, converted = condensenet_models((224, 224, 3), 1000, args)
        x = rng.uniform(0, 255, (1, 224, 224, 3)).astype(np.float32)
        ms = interleaved_ms({"condensenet_imagenet": keras_runner(trained, x, args.jit),
                             "condensenet_converted_imagenet": keras_runner(converted, x, args.jit)},
                            1, args.runs)
        for name, model in (("condensenet_imagenet", trained), ("condensenet_converted_imagenet", converted)):
            macs, masked = count_macs(model, (224, 224, 3))
            rows.append({"name": name, "params": int(model.count_params()),
                         "nonzero_params": nonzero_params(model), "flops": macs,
                         "flops_masked": masked, "input": "224x224", "classes": 1000,
                         "jit_compile": args.jit, "ms_per_image": {"keras": {"1": ms[name]}}})
    load = {"loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count(),
            "threads": args.threads}
    if args.json:
        print(json.dumps({"machine": load, "rows": rows}, indent=1))
    else:
        print(f"load average (1, 5, 15 min) before {load['loadavg_before']}, after "
              f"{load['loadavg_after']} on {load['cpus']} CPUs; median (min) ms per image")
        for r in rows:
            lat = "  ".join(f"{rt} b{b} {v['median']:.1f} ({v['min']:.1f})"
                            for rt, per in r["ms_per_image"].items() for b, v in per.items())
            print(f"{r['name']:32s} {r['params'] / 1e6:6.2f}M params ({r['nonzero_params'] / 1e6:.2f}M "
                  f"nonzero) {r['flops'] / 1e6:7.1f}M MACs  {lat}")
            if "resnet50_over_this" in r and r["name"] != "resnet50":
                print(f"{'':32s} resnet50 / this: " + "  ".join(
                    f"{rt} b{b} {v:.2f}x" for rt, per in r["resnet50_over_this"].items() for b, v in per.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
