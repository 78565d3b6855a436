"""Mean IoU of the ``mediapipe_selfie`` masker against the synthetic dataset's exact masks.

    python tools/masker_iou.py [--ids 40] [--json]

Synthesises small synthetic datasets at 128x64 and 256x128 into a temporary folder and
compares the masker with the ground-truth masks of the training images, three ways: padded to a
centred square with edge pixels replicated (the default), padded with black, and not padded
(Tasks stretches the crop to its square input). Needs the MediaPipe models
(`keras-reid models fetch`).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def iou(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Returns the per-image IoU of boolean masks [N, H, W, 1] (1.0 where both are empty)."""
    inter = np.logical_and(pred, truth).sum(axis=(1, 2, 3))
    union = np.logical_or(pred, truth).sum(axis=(1, 2, 3))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def measure(root: Path, size: tuple[int, int], pad: bool, fill: str = "edge") -> dict:
    """Returns the IoU figures (mean, median, share above 0.5) of mediapipe_selfie on the
    training images of the synthetic dataset at ``root``, read at ``size``."""
    from keras_reid.data.images import load_images
    from keras_reid_plugins.maskers.files import SyntheticMasker
    from keras_reid_plugins.maskers.mediapipe_selfie import SelfieMasker, SelfieMaskerConfig

    paths = sorted(str(p) for p in (root / "bounding_box_train").glob("*.jpg"))
    truth = SyntheticMasker().masks_for(paths, size) > 0.5
    with SelfieMasker(SelfieMaskerConfig(pad_to_square=pad, pad_fill=fill)) as masker:
        pred = masker(load_images(paths, size)) > 0.5
    v = iou(pred, truth)
    return {"size": f"{size[0]}x{size[1]}", "pad_to_square": pad,
            "pad_fill": fill if pad else None, "images": len(paths),
            "mean_iou": round(float(v.mean()), 4), "median_iou": round(float(np.median(v)), 4),
            "fraction_iou_above_0.5": round(float((v > 0.5).mean()), 4)}


def main(argv: list[str] | None = None) -> int:
    """Prints the figures (one line per setting, or JSON with ``--json``); returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=40)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from keras_reid.data.synthetic import synthesize

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in ((128, 64), (256, 128)):
            root = Path(tmp) / f"s{size[0]}"
            synthesize(root, ids=args.ids, cameras=6, size=size, seed=0)
            for pad, fill in ((True, "edge"), (True, "black"), (False, "edge")):
                rows.append(measure(root, size, pad, fill))
                if not args.json:
                    print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
