"""Parameters, FLOPs and CPU latency of backbones: resnet50, condensenet (trained/masked form) and
condensenet converted (compact form).

    python tools/bench_backbones.py [--size 256x128] [--classes 751] [--batch 1] [--runs 20]
                                    [--groups 4] [--condense-factor 4] [--imagenet] [--jit] [--json]

* ``params``: all weights of the re-ID model (trainable and not; the condensenet masks and step
  counters included in the trained form, as saved).
* ``flops``: multiply-adds (MACs) per image of the convolution and dense layers, counted
  analytically from the layer shapes: a conv (plain, grouped or learned group conv) costs
  ``H_out x W_out x kernel size`` (kernel size = kh x kw x in/groups x out), a dense layer its
  kernel size; BatchNorm, activations, pooling, gathers and shuffles are not counted (the
  convention of the CondenseNet paper's "FLOPs"). The trained condensenet is counted as it
  runs (its masked 1x1 convs are dense convolutions: mask zeros cost the same);
  ``flops_masked`` counts only its unmasked weights.
* ``ms_per_image``: CPU wall time of ``model(x, training=False)`` in a ``tf.function``
  (XLA only with ``--jit``) at batch ``--batch`` (default 1), median of ``--runs`` calls after
  3 warm-up calls, divided by the batch size. On a shared 2-core CPU the converted model was not
  reliably faster than the masked one (without XLA: 129-139 vs 155-191 ms; with XLA: 84-153 vs
  106-108 ms, run to run): the per-layer channel gathers and shuffles and TensorFlow's CPU
  grouped convolutions cost about what the saved multiply-adds save; its sure gains are
  parameters and FLOPs.

The condensenet rows use the paper's CondenseNet-74 (stages 4-6-8-10-8, growth 8-16-32-64-128,
C = G = 4 unless given), fully condensed (C - 1 condensations of random weights, classifier
halved) before conversion. ``--imagenet`` adds the two condensenet rows at 224x224 with 1000
classes (the paper's setting: 4.8M parameters, 529M FLOPs) for comparison. resnet50 has weights
None and last stride 1 (the re-ID default).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import numpy as np


def count_macs(model, input_shape) -> tuple[int, int]:
    """Returns (MACs as run, MACs of unmasked weights) per image of ``model`` on ``input_shape``."""
    import keras

    from keras_reid_plugins.backbones._condensenet_model import CondensingDense, LearnedGroupConv

    conv_types = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, LearnedGroupConv)
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
                else:
                    kept = macs
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


def latency_ms(model, input_shape, batch: int, runs: int, jit: bool = False) -> float:
    """Median ms per image of a compiled inference call at ``batch`` (XLA with ``jit``)."""
    import tensorflow as tf

    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, *input_shape)), tf.float32)
    fn = tf.function(lambda v: model(v, training=False), jit_compile=jit)
    for _ in range(3):
        fn(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn(x)
        np.asarray(out["features"])
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000.0 / batch


def row(name: str, model, input_shape, classes: int, batch: int, runs: int,
        jit: bool = False) -> dict:
    macs, masked = count_macs(model, input_shape)
    out = {"name": name, "params": int(model.count_params()), "flops": macs,
           "ms_per_image": round(latency_ms(model, input_shape, batch, runs, jit), 3),
           "input": f"{input_shape[0]}x{input_shape[1]}", "classes": classes, "batch": batch, "jit_compile": jit}
    if masked != macs:
        out["flops_masked"] = masked
    return out


def condensenet_rows(shape, classes, args, suffix="") -> list[dict]:
    from keras_reid.registry import REGISTRY

    bb = REGISTRY.create("backbone", {"type": "condensenet", "groups": args.groups,
                                      "condense_factor": args.condense_factor})
    model = bb.build(shape, classes)
    for _ in range(max(args.condense_factor - 1, 1)):
        bb.condense(model)
    bb.condense(model, classifier=True)  # the classifier's single condensation (no-op if done)
    converted = bb.convert(model)
    return [row("condensenet" + suffix, model, shape, classes, args.batch, args.runs, args.jit),
            row("condensenet_converted" + suffix, converted, shape, classes, args.batch, args.runs,
                args.jit)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="256x128", help="HxW")
    parser.add_argument("--classes", type=int, default=751, help="identities (Market-1501: 751)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--condense-factor", type=int, default=4)
    parser.add_argument("--imagenet", action="store_true",
                        help="add condensenet rows at 224x224 with 1000 classes")
    parser.add_argument("--jit", action="store_true", help="time XLA-compiled calls (jit_compile)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    shape = (h, w, 3)

    from keras_reid.registry import REGISTRY

    rows = []
    resnet = REGISTRY.create("backbone", {"type": "resnet50", "weights": None}).build(shape, args.classes)
    rows.append(row("resnet50", resnet, shape, args.classes, args.batch, args.runs, args.jit))
    del resnet
    rows.extend(condensenet_rows(shape, args.classes, args))
    if args.imagenet:
        rows.extend(condensenet_rows((224, 224, 3), 1000, args, suffix="_imagenet"))
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            print(f"{r['name']:32s} {r['params'] / 1e6:7.2f}M params {r['flops'] / 1e6:8.1f}M MACs "
                  f"{r['ms_per_image']:8.2f} ms/image ({r['input']}, batch {r['batch']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
