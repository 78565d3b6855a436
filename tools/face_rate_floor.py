"""How often the face filter fires on the LIMA twin's real images, on degraded copies of them and
on generated samples: what a "face in samples" rate can be compared with.

    python tools/face_rate_floor.py [--root DIR] [--test-session 4] \
        [--samples NAME=GLOB ...] [--threshold 0.5] [--crop auto] [--json]

Rows: the training sessions' real images by view (front, back, side) and class 0; the people
images downsampled by 2 and 4 and resized back (bilinear), Gaussian-blurred (sigma 1 and 2), and
with their pixels shuffled (the same colours without any structure: the rate a detector gives
to person-coloured noise); then each ``--samples`` set (e.g. an augment stage's
``samples_g/data/*/*.jpg``). Without ``--root`` the recipe's synthetic closed set
(``recipes/synthetic_lima_dcgan.yaml``: 6 people, 4 sessions, 128x64) is written to a
temporary folder first (a few seconds). The filter is the recipe's (``{type: face, threshold:
0.5, crop: auto}``); needs the MediaPipe models (``keras-reid models fetch``).
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from keras_reid import registry
from keras_reid.data.images import load_images
from keras_reid.data.synthetic_closed_set import synthesize_closed_set

SIZE = (128, 64)


def _read_labels(root: Path, test_session: int) -> list[dict]:
    """Rows of ``root/labels.csv`` outside the test session (path made absolute)."""
    with open(root / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["session"]) != test_session]
    for r in rows:
        r["path"] = str(root / r["path"])
    return rows


def _degraded(images: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """The degraded copies of uint8 images [N, H, W, 3] named as in the module docstring."""
    import cv2  # deferred: OpenCV, --help stays light

    h, w = images.shape[1:3]
    out = {}
    for f in (2, 4):
        out[f"people, down x{f} and up"] = np.stack([
            cv2.resize(cv2.resize(i, (w // f, h // f), interpolation=cv2.INTER_LINEAR), (w, h),
                       interpolation=cv2.INTER_LINEAR) for i in images])
    for s in (1.0, 2.0):
        out[f"people, gaussian blur sigma {s:g}"] = np.stack(
            [cv2.GaussianBlur(i, (0, 0), s) for i in images])
    rng = np.random.default_rng(seed)
    out["people, pixels shuffled"] = np.stack(
        [i.reshape(-1, 3)[rng.permutation(h * w)].reshape(h, w, 3) for i in images])
    return out


def image_sets(root: Path, test_session: int, samples: list[str]) -> dict[str, np.ndarray]:
    """Every row's images, uint8 [N, 128, 64, 3], in print order."""
    rows = _read_labels(root, test_session)
    if not rows:
        raise SystemExit(f"error: no images outside session {test_session} in {root}/labels.csv")
    sets = {}
    for view in ("front", "back", "side"):
        paths = [r["path"] for r in rows if r["kind"] == "person" and r["view"] == view]
        sets[f"real, {view} views"] = load_images(paths, SIZE)
    sets["real, class 0 (no single person)"] = load_images(
        [r["path"] for r in rows if r["identity"] == "0"], SIZE)
    sets.update(_degraded(load_images([r["path"] for r in rows if r["kind"] == "person"], SIZE)))
    for spec in samples:
        name, _, pattern = spec.partition("=")
        paths = sorted(glob.glob(pattern))
        if not name or not paths:
            raise SystemExit(f"error: --samples {spec!r} must be NAME=GLOB matching images")
        sets[name] = load_images(paths, SIZE)
    return sets


def measure(sets: dict[str, np.ndarray], threshold: float, crop: str) -> dict:
    """``{row: {"images", "face_rate", "mean_score"}}`` of the face filter on every set."""
    out = {}
    with registry.create("filter", {"type": "face", "threshold": threshold, "crop": crop}) as face:
        for name, images in sets.items():
            scores = np.asarray(face(images), np.float64)
            out[name] = {"images": int(len(images)), "face_rate": float((scores >= threshold).mean()),
                         "mean_score": float(scores.mean())}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, help="a synthetic closed set (default: write the recipe's)")
    ap.add_argument("--test-session", type=int, default=4, help="session left out (default 4)")
    ap.add_argument("--samples", action="append", default=[], metavar="NAME=GLOB",
                    help="generated images to score (repeatable)")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--crop", default="auto", choices=["auto", "full", "top"])
    ap.add_argument("--json", action="store_true", help="print one JSON object last")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = Path(tmp) / "synthetic-lima"
            synthesize_closed_set(root)
        result = measure(image_sets(root, args.test_session, args.samples), args.threshold, args.crop)
    for name, r in result.items():
        print(f"{name:<40} {r['images']:>5} images  face {100 * r['face_rate']:5.1f}%  "
              f"mean score {r['mean_score']:.3f}")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
