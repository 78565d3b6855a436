"""Options for running the converted CondenseNet on CPU, each measured in isolation.

    python tools/bench_condensenet_layout.py [--size 256x128] [--batches 1,32] [--runs 15] [--json]
                                             [--train small@64x32,condensenet74@128x64]

Part 1, single operations at one representative layer per dense block of CondenseNet-74 at
``--size`` (C = G = 4, fully condensed: each group keeps in / 4 inputs), per batch:

* learned group conv (1x1, ``in -> 4k``), input after BN-ReLU:
  ``grouped_xla`` gather + ``Conv2D(groups=4)`` (Keras runs it through one XLA call) + shuffle
  (the first converted form); ``dense`` one plain 1x1 conv with the block-sparse kernel (gather and
  shuffle folded into the weights, 4x the MACs); ``split`` per group a gather + plain 1x1 conv,
  concat, one channel gather for the shuffle (what the ``split`` layouts ran before ``rows``);
  ``einsum`` one gather + ``einsum('xgn,gnp->xpg')`` (shuffle folded into the output order);
  ``matmul_split`` as ``split`` with reshaped 2-D matmuls; ``rows`` (what ``CondensedPointwise``,
  the ``split`` layouts' 1x1, runs): channels as rows (one transpose), one gather of whole rows,
  one batched matmul, the transpose back putting the outputs in shuffled order;
* the pieces alone: ``gather`` (one channel gather of all kept inputs), ``shuffle`` (reshape +
  transpose), ``concat`` (the dense connectivity's copy of the block input plus k channels);
* 3x3 group conv (``4k -> k``, 4 groups): ``grouped_xla`` (Keras), ``dense`` block-diagonal kernel
  (4x the MACs), ``split`` (4 plain convs on channel slices + concat), ``native`` (TensorFlow's own
  grouped convolution, ``tf.nn.conv2d`` with the grouped kernel; what ``NativeGroupConv2D`` runs).

Part 2, the whole converted model in each layout (``convert(model, layout=...)``: all ``dense``,
all ``split``, all ``grouped``, all ``native``, the default: dense for blocks 1-2, native for 3,
split_native for 4-5, three neighbours of it and the two previous defaults),
Keras with XLA (``jit_compile``) off and on and the TFLite export (XNNPACK, 2 threads;
``--no-tflite`` leaves it out), per batch.

Part 3, training: one SGD step (batch 32, softmax on the logits) of the trained form for each
``preset@HxW`` of ``--train``, with its 3x3 group convs as ``GroupConv2D`` (G plain convs on
channel slices, what ``build`` uses) against Keras's ``Conv2D(groups=4)`` (one XLA call per
layer on CPU; what ``build`` used before), same weights, XLA off.

Times are ms per call (part 1), per image (part 2) or per step (part 3), median and minimum over ``--runs`` calls
timed round-robin (one call of every option per round, after 2 warm-up calls) so that a changing
load on a shared machine hits every option alike; compare options within one run. The machine's
load average is printed before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import numpy as np

# tools/ is sys.path[0] when this runs as a script
from bench_backbones import interleaved_ms, tflite_blob, tflite_runner

STAGES, GROWTH, G = (4, 6, 8, 10, 8), (8, 16, 32, 64, 128), 4


def layer_options(h: int, w: int, batch: int, runs: int, seed: int = 0) -> list[dict]:
    """Part 1 (module docstring): one dict per block with the options' times."""
    import tensorflow as tf

    from keras_reid_plugins.backbones._condensenet_model import rows_pointwise

    rng = np.random.default_rng(seed)
    rows = []
    ch = 2 * GROWTH[0]
    hh, ww = (h + 1) // 2, (w + 1) // 2
    for b, (layers, k) in enumerate(zip(STAGES, GROWTH)):
        cin = ch + (layers // 2) * k  # the block's middle layer
        out, n, per = 4 * k, cin // 4, k
        x = tf.constant(np.maximum(rng.normal(size=(batch, hh, ww, cin)), 0).astype(np.float32))
        kept = [np.sort(rng.choice(cin, n, replace=False)).astype(np.int32) for _ in range(G)]
        idx = np.concatenate(kept)
        perm = np.array([(o % G) * per + o // G for o in range(out)], np.int32)
        kg = rng.normal(size=(1, 1, n, out)).astype(np.float32)
        dense = np.zeros((1, 1, cin, out), np.float32)
        for g in range(G):
            dense[0, 0, kept[g], g::G] = kg[0, 0][:, g * per:(g + 1) * per]
        kgs = [kg[..., g * per:(g + 1) * per] for g in range(G)]
        kb = np.stack([kg[0, 0][:, g * per:(g + 1) * per] for g in range(G)])  # [G, n, per]
        y = tf.constant(rng.normal(size=(batch, hh, ww, out)).astype(np.float32))
        k3 = rng.normal(size=(3, 3, out // G, k)).astype(np.float32)
        k3d = np.zeros((3, 3, out, k), np.float32)
        for g in range(G):
            k3d[:, :, g * (out // G):(g + 1) * (out // G), g * (k // G):(g + 1) * (k // G)] = \
                k3[..., g * (k // G):(g + 1) * (k // G)]
        k3s = [k3[..., g * (k // G):(g + 1) * (k // G)] for g in range(G)]

        def shuffle(v, c=out):
            s = tf.shape(v)
            return tf.reshape(tf.transpose(tf.reshape(v, (s[0], s[1], s[2], G, c // G)),
                                           (0, 1, 2, 4, 3)), s)

        xla_conv = tf.function(lambda v, kk: tf.nn.conv2d(v, kk, 1, "SAME"), jit_compile=True)
        ops = {
            "lgc_grouped_xla": lambda v: shuffle(xla_conv(tf.gather(v, idx, axis=-1), kg)),
            "lgc_dense": lambda v: tf.nn.conv2d(v, dense, 1, "VALID"),
            "lgc_split": lambda v: tf.gather(tf.concat(
                [tf.nn.conv2d(tf.gather(v, kept[g], axis=-1), kgs[g], 1, "VALID") for g in range(G)],
                -1), perm, axis=-1),
            "lgc_einsum": lambda v: tf.reshape(tf.einsum(
                "xgn,gnp->xpg", tf.reshape(tf.gather(v, idx, axis=-1), (-1, G, n)), kb), (*v.shape[:3], out)),
            "lgc_matmul_split": lambda v: tf.gather(tf.reshape(tf.concat(
                [tf.matmul(tf.reshape(tf.gather(v, kept[g], axis=-1), (-1, n)), kb[g]) for g in range(G)],
                -1), (*v.shape[:3], out)), perm, axis=-1),
            "lgc_rows": lambda v: rows_pointwise(v, idx, kb),
            "gather": lambda v: tf.gather(v, idx, axis=-1),
            "concat": lambda v: tf.concat([v, v[..., :k]], -1),
        }
        ops_y = {
            "shuffle": shuffle,
            "conv3_grouped_xla": lambda v: xla_conv(v, k3),
            "conv3_dense": lambda v: tf.nn.conv2d(v, k3d, 1, "SAME"),
            "conv3_native": lambda v: tf.nn.conv2d(v, k3, 1, "SAME"),  # TF's own grouped conv
            "conv3_split": lambda v: tf.concat([tf.nn.conv2d(v[..., g * (out // G):(g + 1) * (out // G)],
                                                             k3s[g], 1, "SAME") for g in range(G)], -1),
        }
        calls = {}
        for name, f in ops.items():
            fn = tf.function(f)
            calls[name] = (lambda fn=fn: fn(x).numpy())
        for name, f in ops_y.items():
            fn = tf.function(f)
            calls[name] = (lambda fn=fn: fn(y).numpy())
        ref = calls["lgc_dense"]()
        for name in ("lgc_grouped_xla", "lgc_split", "lgc_einsum", "lgc_matmul_split", "lgc_rows"):
            assert np.allclose(calls[name](), ref, atol=1e-3), name  # the options compute the same
        ref3 = calls["conv3_dense"]()
        for name in ("conv3_grouped_xla", "conv3_split", "conv3_native"):
            assert np.allclose(calls[name](), ref3, atol=1e-3), name
        rows.append({"block": b + 1, "map": f"{hh}x{ww}", "in": cin, "out": out, "k": k,
                     "batch": batch, "ms_per_call": interleaved_ms(calls, 1, runs)})
        ch = cin + (layers - layers // 2) * k
        if b < len(STAGES) - 1:
            hh, ww = (hh + 1) // 2, (ww + 1) // 2
    return rows


LAYOUT_CHOICES = {
    "grouped": "grouped",
    "dense": "dense",
    "split": "split",
    "native": "native",
    "default (dense 1-2, native 3, split_native 4-5)": None,
    "dense 1-2, native 3-5": ["dense"] * 2 + ["native"] * 3,
    "dense 1, native 2-3, split_native 4-5": ["dense"] + ["native"] * 2 + ["split_native"] * 2,
    "dense 1-2, split_native 3-5": ["dense"] * 2 + ["split_native"] * 3,
    "dense 1-2, native 3-4, split_native 5 (the default before)": ["dense"] * 2 + ["native"] * 2
    + ["split_native"],
    "dense 1-3, split 4-5 (the default before native)": ["dense"] * 3 + ["split"] * 2,
}


def model_layouts(h: int, w: int, batches: list[int], runs: int, tflite: bool = True) -> list[dict]:
    """Part 2 (module docstring): ms per image of the converted model in each layout, Keras with
    XLA off/on and (``tflite``) its TFLite export with XNNPACK, 2 threads."""
    import tensorflow as tf

    from keras_reid.registry import REGISTRY

    bb = REGISTRY.create("backbone", {"type": "condensenet"})
    trained = bb.build((h, w, 3), 751)
    for _ in range(3):
        bb.condense(trained)
    bb.condense(trained, classifier=True)
    models = {name: bb.convert(trained, layout=layout) for name, layout in LAYOUT_CHOICES.items()}
    blobs = {name: tflite_blob(model) for name, model in models.items()} if tflite else {}
    rows = []
    rng = np.random.default_rng(0)
    for batch in batches:
        x = tf.constant(rng.uniform(0, 255, (batch, h, w, 3)).astype(np.float32))
        ref = np.asarray(trained(x[:1], training=False)["features"])
        calls = {}
        for name, model in models.items():
            for jit in (False, True):
                fn = tf.function(lambda v, m=model: m(v, training=False)["features"], jit_compile=jit)
                err = float(np.abs(np.asarray(fn(x[:1])) - ref).max())
                assert err < 1e-4, (name, jit, err)  # every layout computes the trained outputs
                calls[(name, "keras", jit)] = (lambda fn=fn: np.asarray(fn(x)))
            if name in blobs:
                calls[(name, "tflite", None)] = tflite_runner(blobs[name], np.asarray(x))
        r = max(3, runs if batch == 1 else runs // 3)
        ms = interleaved_ms(calls, batch, r)
        for (name, runtime, jit), v in ms.items():
            rows.append({"layout": name, "runtime": runtime, "jit_compile": jit, "batch": batch,
                         "ms_per_image": v, "params": int(models[name].count_params())})
    return rows


def train_steps(specs: list[str], batch: int, runs: int) -> list[dict]:
    """Part 3 (module docstring): ms per training step, GroupConv2D against Conv2D(groups)."""
    import keras
    import tensorflow as tf

    from keras_reid.registry import REGISTRY
    from keras_reid_plugins.backbones._condensenet_model import GroupConv2D

    def keras_grouped(layer):
        cls = keras.layers.Conv2D if isinstance(layer, GroupConv2D) else layer.__class__
        return cls.from_config(layer.get_config())

    rows = []
    rng = np.random.default_rng(0)
    for spec in specs:
        preset, size = spec.split("@")
        h, w = (int(v) for v in size.lower().split("x"))
        net = REGISTRY.create("backbone", {"type": "condensenet", "preset": preset}).build((h, w, 3), 8)
        x = tf.constant(rng.uniform(0, 255, (batch, h, w, 3)).astype(np.float32))
        y = tf.constant(rng.integers(0, 8, batch).astype(np.int32))
        calls = {}
        for name, model in (("group_conv2d", net),
                            ("keras_grouped_xla", keras.models.clone_model(net, clone_function=keras_grouped))):
            if model is not net:
                model.set_weights(net.get_weights())
            head = keras.Model(model.inputs, model.outputs[-1])  # the logits
            head.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=False,
                         loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            calls[name] = (lambda m=head: m.train_on_batch(x, y))
        ms = interleaved_ms(calls, 1, runs)
        rows.append({"preset": preset, "size": f"{h}x{w}", "batch": batch, "ms_per_step": ms,
                     "speedup": round(ms["keras_grouped_xla"]["median"] / ms["group_conv2d"]["median"], 2)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="256x128", help="HxW")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--skip-layers", action="store_true", help="leave out part 1")
    parser.add_argument("--skip-models", action="store_true", help="leave out part 2")
    parser.add_argument("--no-tflite", action="store_true", help="part 2 without the TFLite export")
    parser.add_argument("--train", default="small@64x32,condensenet74@128x64",
                        help="part 3: comma-separated preset@HxW ('' leaves it out)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    batches = [int(b) for b in args.batches.split(",")]
    warnings.simplefilter("ignore")
    before = os.getloadavg()
    layers = [] if args.skip_layers else [row for b in batches for row in layer_options(h, w, b, args.runs)]
    models = [] if args.skip_models else model_layouts(h, w, batches, args.runs,
                                                       tflite=not args.no_tflite)
    train = train_steps([v for v in args.train.split(",") if v], 32, max(3, args.runs // 3))
    machine = {"loadavg_before": [round(v, 2) for v in before],
               "loadavg_after": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps({"machine": machine, "layers": layers, "models": models,
                          "train": train}, indent=1))
        return 0
    print(f"load average before {machine['loadavg_before']}, after {machine['loadavg_after']}; "
          "median (min) ms")
    for row in layers:
        print(f"block {row['block']} {row['map']} in {row['in']} -> {row['out']} -> {row['k']}, "
              f"batch {row['batch']}: " + "  ".join(
                  f"{k} {v['median']:.2f} ({v['min']:.2f})" for k, v in row["ms_per_call"].items()))
    for row in models:
        v = row["ms_per_image"]
        rt = "tflite" if row["runtime"] == "tflite" else f"keras jit={row['jit_compile']!s:5s}"
        print(f"model {row['layout']:50s} {rt:16s} batch {row['batch']:3d}: "
              f"{v['median']:8.2f} ({v['min']:.2f}) ms/image  {row['params'] / 1e6:.2f}M params")
    for row in train:
        print(f"train step {row['preset']} {row['size']} batch {row['batch']}: " + "  ".join(
            f"{k} {v['median']:.1f} ({v['min']:.1f}) ms" for k, v in row["ms_per_step"].items())
            + f"  speed-up {row['speedup']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
