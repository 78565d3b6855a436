"""GAN training steps/s and generation (augment) images/s of the pix2pix variants, PN-GAN and DCGAN on this machine.

    python tools/bench_generators.py [--generators pix2pix,pngan,dcgan] [--sizes 128x64,256x128]
                                     [--variants model1,...] [--batch 8] [--filters 64]
                                     [--res-blocks 9] [--steps 3] [--json]

Training: one compiled ``train_step`` (discriminator + generator update) on random data of the
given global batch, timed over ``--steps`` steps after one warm-up step. Generation: the
augment stage's work per batch of 32 (``generate`` with noise off, conversion to uint8 and
JPEG encoding), without disk I/O, compiled (``generate``'s ``tf.function``, what the stage
runs) and eager (the same function run op by op, as before it was compiled), alternated. Prints one line (or JSON object) per generator, variant and
size. ``--variants`` applies to pix2pix; ``--filters`` is pix2pix's and DCGAN's ``filters`` and PN-GAN's
``width`` (the base width, 64 in both papers); ``--res-blocks`` is PN-GAN's ``res_blocks``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def generator_spec(generator: str, variant: str, filters: int, res_blocks: int) -> dict:
    """Returns the registry spec of ``generator`` at base width ``filters``."""
    if generator == "pix2pix":
        return {"type": "pix2pix", "variant": variant, "filters": filters}
    if generator == "pngan":
        return {"type": "pngan", "width": filters, "res_blocks": res_blocks}
    if generator == "dcgan":
        return {"type": "dcgan", "filters": filters}
    raise ValueError(f"unknown generator {generator!r}: use pix2pix, pngan or dcgan")


def bench(generator: str, variant: str, size: tuple[int, int], batch: int, filters: int, steps: int,
          res_blocks: int = 9) -> dict:
    """Returns ``{"generator", "variant", "size", "batch", "filters", "train_steps_per_s",
    "train_images_per_s", "generate_images_per_s", "generate_eager_images_per_s",
    "generator_params"}`` (``variant`` "-" for
    PN-GAN, which has one)."""
    import cv2
    import tensorflow as tf

    from keras_reid.data.images import to_uint8
    from keras_reid.registry import REGISTRY
    from keras_reid.training.loop import build_optimizers

    factory = REGISTRY.create("generator", generator_spec(generator, variant, filters, res_blocks))
    gan = factory.build(size)
    gan.compile(**factory.optimizers(steps_per_epoch=100, epochs=1))
    build_optimizers(gan, tf.distribute.get_strategy())
    h, w = size
    rng = np.random.default_rng(0)

    def example(n):
        out = {}
        for key in sorted(set(factory.needs) | set(factory.generation_needs)):
            if key == "noise":  # DCGAN's z
                out[key] = tf.constant(rng.uniform(-1, 1, (n, int(gan.z_dim))), tf.float32)
            elif key.endswith("_mask"):
                out[key] = tf.constant(rng.random((n, h, w, 1)) > 0.5, tf.float32)
            else:  # images and skeleton images, in [-1, 1]
                out[key] = tf.constant(rng.uniform(-1, 1, (n, h, w, 3)), tf.float32)
        return out

    data = {k: v for k, v in example(batch).items() if k in factory.needs}
    step = tf.function(gan.train_step)
    step(data)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(data)
    train_s = (time.perf_counter() - t0) / steps
    gen_batch = {k: v for k, v in example(32).items() if k in factory.generation_needs}

    def generation_seconds(eager: bool) -> float:
        """Seconds per batch of 32: generate, uint8, JPEG (``eager``: the generator's graph
        function run op by op, as before generation was compiled)."""
        tf.config.run_functions_eagerly(eager)
        try:
            t0 = time.perf_counter()
            for img in to_uint8(gan.generate(gen_batch)):
                cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            return time.perf_counter() - t0
        finally:
            tf.config.run_functions_eagerly(False)

    generation_seconds(False), generation_seconds(True)  # warm-up (tracing)
    timed = {False: [], True: []}
    for _ in range(2):  # alternate, so that a busy machine slows both alike
        for eager in (False, True):
            timed[eager].append(generation_seconds(eager))
    gen_s, eager_s = (float(np.median(timed[e])) for e in (False, True))
    return {"generator": generator, "variant": variant if generator == "pix2pix" else "-",
            "size": f"{h}x{w}", "batch": batch, "filters": filters,
            "train_steps_per_s": round(1.0 / train_s, 3), "train_images_per_s": round(batch / train_s, 2),
            "generate_images_per_s": round(32 / gen_s, 1),
            "generate_eager_images_per_s": round(32 / eager_s, 1),
            "generator_params": int(gan.generator.count_params())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generators", default="pix2pix", help="comma-separated: pix2pix, pngan, dcgan")
    ap.add_argument("--sizes", default="128x64,256x128")
    ap.add_argument("--variants", default="model1,model2,model3,model4,variable")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--filters", type=int, default=64)
    ap.add_argument("--res-blocks", type=int, default=9)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.lower().split("x"))
        for generator in args.generators.split(","):
            variants = args.variants.split(",") if generator == "pix2pix" else ["-"]
            for variant in variants:
                rows.append(bench(generator, variant, (h, w), args.batch, args.filters, args.steps,
                                  args.res_blocks))
                if not args.json:
                    print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
