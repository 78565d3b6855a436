#!/usr/bin/env python
"""Benchmark: images/s of the re-ID input pipeline alone and of a training step.

Prints, for one image size and batch size:
  pipeline (no transforms)   images/s of ReIDInput.dataset() with decode + resize only
  pipeline (transforms)      the same with flip, pad_crop, color_jitter, random_erasing
  train step (model)         a custom training step (forward, softmax loss, backward, Adam)
                             on batches already in memory, i.e. without the input pipeline
  train + pipeline           the same step fed by the transformed pipeline
The smaller of "pipeline (transforms)" and "train step" is the bound.

Data: ``--root`` a Market-1501-layout folder (its bounding_box_train/ is used). Without it,
a throwaway dataset is made in a temporary folder with ``keras_reid.data.synthetic`` when
that is installed, else random JPEGs named in the Market format.

    python tools/bench_pipeline.py --size 128x64 --batch 32 --steps 50 [--model tiny] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

AUGMENT = [{"type": "flip", "p": 0.5}, {"type": "pad_crop", "pad": 10},
           {"type": "color_jitter", "brightness": 0.2, "contrast": 0.15, "saturation": 0.1, "p": 0.5},
           {"type": "random_erasing", "p": 0.5}]
MARKET_NAME = re.compile(r"^(-?\d+)_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")


def parse_size(text: str) -> tuple[int, int]:
    """Return (height, width) from 'HxW'."""
    h, w = text.lower().split("x")
    return int(h), int(w)


def random_market_folder(out: Path, ids: int, per_id: int, size: tuple[int, int], seed: int) -> None:
    """Write random JPEGs named in the Market-1501 format into out/bounding_box_train."""
    import cv2

    rng = np.random.default_rng(seed)
    folder = out / "bounding_box_train"
    folder.mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for pid in range(1, ids + 1):
        for n in range(per_id):
            small = np.clip(base.astype(int) + rng.integers(-60, 60, (8, 8, 3)), 0, 255).astype(np.uint8)
            img = cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            cam = n % 6 + 1
            cv2.imwrite(str(folder / f"{pid:04d}_c{cam}s1_{n:06d}_00.jpg"), img)


def make_dataset(tmp: Path, ids: int, size: tuple[int, int], seed: int) -> tuple[Path, str]:
    """Create a throwaway dataset under ``tmp``; returns (root, how it was made)."""
    try:
        from keras_reid.data.synthetic import synthesize
    except ImportError:
        random_market_folder(tmp, ids, 16, size, seed)
        return tmp, "random JPEGs"
    synthesize(tmp, ids=ids, cameras=6, size=size, seed=seed)
    return tmp, "keras_reid.data.synthetic"


def read_train(root: Path):
    """Return the Record list of root/bounding_box_train (pid > 0 only)."""
    from keras_reid.data.records import Record

    folder = root / "bounding_box_train"
    if not folder.is_dir():
        sys.exit(f"error: {folder} does not exist; --root must be a Market-1501-layout folder")
    recs = []
    for name in sorted(os.listdir(folder)):
        m = MARKET_NAME.match(name)
        if m and int(m.group(1)) > 0:
            recs.append(Record(str(folder / name), int(m.group(1)), int(m.group(2)),
                               int(m.group(3)), int(m.group(4))))
    if not recs:
        sys.exit(f"error: no Market-named images in {folder}")
    return recs


def build_model(name: str, size: tuple[int, int], classes: int):
    """Return a keras Model image -> logits (ResNet50 without weights, or a small CNN)."""
    import keras

    inputs = keras.Input((*size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    if name == "resnet50":
        trunk = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(*size, 3))
        x = keras.layers.GlobalAveragePooling2D()(trunk(x))
    else:
        for ch in (32, 64, 128):
            x = keras.layers.Conv2D(ch, 3, strides=2, padding="same", activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes)(x)
    return keras.Model(inputs, outputs)


def make_step(model):
    """Return a compiled training step (images, labels) -> loss."""
    import keras
    import tensorflow as tf

    optimizer = keras.optimizers.Adam(3e-4)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def time_iter(iterable, steps: int, batch: int, warmup: int, fn=None) -> float:
    """Return images/s over ``steps`` batches after ``warmup`` batches."""
    it = iter(iterable)
    for _ in range(warmup):
        out = fn(*next(it)) if fn else next(it)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = fn(*next(it)) if fn else next(it)
    if fn is not None:
        float(out)  # wait for the last step
    return steps * batch / (time.perf_counter() - t0)


def repeat_epochs(inp):
    """Yield batches of successive epochs forever."""
    epoch = 0
    while True:
        yield from inp.dataset(epoch)
        epoch += 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, help="Market-1501-layout folder (default: throwaway data)")
    ap.add_argument("--ids", type=int, default=200, help="identities of the throwaway dataset")
    ap.add_argument("--size", default="128x64", help="input HxW (default 128x64)")
    ap.add_argument("--batch", type=int, default=32, help="global batch size (default 32)")
    ap.add_argument("--k", type=int, default=4, help="K of the PK sampler (default 4)")
    ap.add_argument("--steps", type=int, default=50, help="timed batches of the pipeline alone")
    ap.add_argument("--train-steps", type=int, default=10, help="timed training steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    ap.add_argument("--model", choices=["resnet50", "tiny"], default="resnet50")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)
    size = parse_size(args.size)

    import tensorflow as tf

    from keras_reid.data.pipeline import ReIDInput, scan_images
    from keras_reid.data.records import relabel

    with tempfile.TemporaryDirectory() as tmp:
        source = str(args.root)
        root = args.root
        if root is None:
            t0 = time.perf_counter()
            root, source = make_dataset(Path(tmp), args.ids, size, args.seed)
            if not args.json:
                print(f"made a throwaway dataset ({source}) in {time.perf_counter() - t0:.1f} s")
        records, bad = scan_images(read_train(root))
        labels, mapping = relabel(records)

        def make_input(transforms):
            return ReIDInput(records, labels, image_size=size, global_batch_size=args.batch,
                             sampler="pk", k=args.k, transforms=transforms, seed=args.seed)

        plain, aug = make_input(None), make_input(AUGMENT)
        results = {
            "size": list(size), "batch": args.batch, "model": args.model, "data": source,
            "images": len(records), "identities": len(mapping), "cpus": os.cpu_count(),
            "tensorflow": tf.__version__,
        }
        results["pipeline_plain"] = time_iter(repeat_epochs(plain), args.steps, args.batch, args.warmup)
        results["pipeline_transforms"] = time_iter(repeat_epochs(aug), args.steps, args.batch,
                                                   args.warmup)
        model = build_model(args.model, size, len(mapping))
        step = make_step(model)
        cached = [(tf.constant(x), tf.constant(y)) for x, y in aug.dataset(0).take(2)]

        def cycle():
            while True:
                yield from cached

        train_steps = args.train_steps
        results["train_step"] = time_iter(cycle(), train_steps, args.batch, 2, fn=step)
        results["train_with_pipeline"] = time_iter(repeat_epochs(aug), train_steps, args.batch, 2,
                                                   fn=step)
    results["bound"] = ("input pipeline" if results["pipeline_transforms"] < results["train_step"]
                        else "training step")
    if args.json:
        print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in results.items()}))
    else:
        print(f"{results['images']} images, {results['identities']} ids, size {size[0]}x{size[1]}, "
              f"batch {args.batch}, model {args.model}, {results['cpus']} CPUs")
        for key, label in [("pipeline_plain", "pipeline (no transforms)"),
                           ("pipeline_transforms", "pipeline (transforms)"),
                           ("train_step", f"train step ({args.model}, data in memory)"),
                           ("train_with_pipeline", "train step fed by the pipeline")]:
            print(f"  {label:<40} {results[key]:10.1f} images/s")
        print(f"  bound: {results['bound']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
