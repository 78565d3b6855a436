"""What the LIMA twin's generated samples show: the face filter's rate on them against real and
degraded images, and the views (front / back / side) a classifier trained on real views sees.

    python tools/lima_samples.py [--root DIR] [--test-session 4] [--samples NAME=GLOB ...] \
        [--threshold 0.5] [--crop auto] [--views] [--view-epochs 60] [--json]

Face rows: the training sessions' real images by view (front, back, side) and class 0; the
people images downsampled by 2 and 4 and resized back (bilinear), Gaussian-blurred (sigma 1 and
2), and with their pixels shuffled (the same colours without any structure: the rate a detector
gives to person-coloured noise); then each ``--samples`` set (e.g. an augment stage's
``samples_g/data/*/*.jpg``), scored as the files are (the augment stage's own ``measure`` scores
the images before JPEG encoding). The filter is the recipe's (``{type: face, threshold: 0.5,
crop: auto}``); needs the MediaPipe models (``keras-reid models fetch``).

``--views`` also trains a small CNN (seeded, 128x64) on the real people images' view labels of the
training sessions, reports its accuracy on the left-out session (new clothes), and gives each
sample set's share of front, back and side views as it classifies them: whether face control
moved the samples towards views that show a face, even where the detector cannot see the
generated faces (its accuracy is also given on blurred and downsampled copies of the test
session's people: a classifier that only works on sharp images would say little). Without ``--root`` the recipe's synthetic closed set
(``recipes/synthetic_lima_dcgan.yaml``: 6 people, 4 sessions, 128x64) is written to a temporary
folder first (a few seconds).
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
VIEWS = ("front", "back", "side")


def read_labels(root: Path) -> list[dict]:
    """Rows of ``root/labels.csv`` with absolute paths."""
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
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


def sample_sets(specs: list[str]) -> dict[str, np.ndarray]:
    """``NAME=GLOB`` specs -> {name: uint8 images [N, 128, 64, 3]}."""
    sets = {}
    for spec in specs:
        name, _, pattern = spec.partition("=")
        paths = sorted(glob.glob(pattern))
        if not name or not paths:
            raise SystemExit(f"error: --samples {spec!r} must be NAME=GLOB matching images")
        sets[name] = load_images(paths, SIZE)
    return sets


def image_sets(rows: list[dict], test_session: int) -> dict[str, np.ndarray]:
    """The real and degraded rows' images (training sessions only), uint8 [N, 128, 64, 3]."""
    rows = [r for r in rows if int(r["session"]) != test_session]
    if not rows:
        raise SystemExit(f"error: no images outside session {test_session}")
    sets = {}
    for view in VIEWS:
        paths = [r["path"] for r in rows if r["kind"] == "person" and r["view"] == view]
        sets[f"real, {view} views"] = load_images(paths, SIZE)
    sets["real, class 0 (no single person)"] = load_images(
        [r["path"] for r in rows if r["identity"] == "0"], SIZE)
    sets.update(_degraded(load_images([r["path"] for r in rows if r["kind"] == "person"], SIZE)))
    return sets


def face_rates(sets: dict[str, np.ndarray], threshold: float, crop: str) -> dict:
    """``{row: {"images", "face_rate", "mean_score"}}`` of the face filter on every set."""
    out = {}
    with registry.create("filter", {"type": "face", "threshold": threshold, "crop": crop}) as face:
        for name, images in sets.items():
            scores = np.asarray(face(images), np.float64)
            out[name] = {"images": int(len(images)), "face_rate": float((scores >= threshold).mean()),
                         "mean_score": float(scores.mean())}
    return out


def view_classifier(rows: list[dict], test_session: int, epochs: int = 60, seed: int = 0):
    """A small CNN trained on the people images' views outside ``test_session``; returns
    ``(predict, accuracy)``: predict(uint8 images) -> view index [N] (VIEWS order); accuracy:
    {"real": share right on the test session's people, and the same on their degraded copies}
    (empty without a test session)."""
    import keras  # deferred: TensorFlow, only with --views

    people = [r for r in rows if r["kind"] == "person" and r["view"] in VIEWS]

    train = [r for r in people if int(r["session"]) != test_session]
    x = load_images([r["path"] for r in train], SIZE).astype(np.float32) / 127.5 - 1.0
    y = np.array([VIEWS.index(r["view"]) for r in train])
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    model = keras.Sequential([keras.Input((*SIZE, 3)), layers.RandomTranslation(0.1, 0.1)]
                             + [layer for width in (16, 32, 64) for layer in (
                                 layers.Conv2D(width, 3, activation="relu", padding="same"),
                                 layers.MaxPooling2D())]
                             + [layers.Conv2D(64, 3, activation="relu", padding="same"),
                                layers.GlobalMaxPooling2D(), layers.Dropout(0.3),
                                layers.Dense(len(VIEWS), activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)

    def predict(images: np.ndarray) -> np.ndarray:
        return model.predict(images.astype(np.float32) / 127.5 - 1.0, verbose=0).argmax(1)

    test = [r for r in people if int(r["session"]) == test_session]
    accuracy = {}
    if test:  # also on degraded copies: does it still tell views apart in blurrier images?
        images = load_images([r["path"] for r in test], SIZE)
        truth = np.array([VIEWS.index(r["view"]) for r in test])
        for name, x in {"real": images, **_degraded(images)}.items():
            if "shuffled" not in name:
                accuracy[name] = float((predict(x) == truth).mean())
    return predict, accuracy


def view_shares(predict, sets: dict[str, np.ndarray]) -> dict:
    """``{name: {"front", "back", "side"}}``: each set's share of images classified as each view."""
    out = {}
    for name, images in sets.items():
        counts = np.bincount(predict(images), minlength=len(VIEWS)) / max(1, len(images))
        out[name] = {v: float(c) for v, c in zip(VIEWS, counts)}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, help="a synthetic closed set (default: write the recipe's)")
    ap.add_argument("--test-session", type=int, default=4, help="session left out (default 4)")
    ap.add_argument("--samples", action="append", default=[], metavar="NAME=GLOB",
                    help="generated images to score (repeatable)")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--crop", default="auto", choices=["auto", "full", "top"])
    ap.add_argument("--views", action="store_true", help="also classify views (trains a small CNN)")
    ap.add_argument("--view-epochs", type=int, default=60)
    ap.add_argument("--json", action="store_true", help="print one JSON object last")
    args = ap.parse_args(argv)
    samples = sample_sets(args.samples)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = Path(tmp) / "synthetic-lima"
            synthesize_closed_set(root)
        rows = read_labels(root)
        result = {"faces": face_rates({**image_sets(rows, args.test_session), **samples},
                                      args.threshold, args.crop)}
        if args.views:
            predict, accuracy = view_classifier(rows, args.test_session, args.view_epochs)
            result["view_classifier_accuracy"] = accuracy
            result["views"] = view_shares(predict, samples)
    for name, r in result["faces"].items():
        print(f"{name:<40} {r['images']:>5} images  face {100 * r['face_rate']:5.1f}%  "
              f"mean score {r['mean_score']:.3f}")
    if args.views:
        print(f"view classifier, right on session {args.test_session}'s people: " + ", ".join(
            f"{name} {100 * a:.1f}%" for name, a in result["view_classifier_accuracy"].items()))
        for name, shares in result["views"].items():
            print(f"{name:<40} " + "  ".join(f"{v} {100 * s:5.1f}%" for v, s in shares.items()))
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
