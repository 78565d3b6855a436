"""PCK of the ``mediapipe_pose`` estimator against the synthetic dataset's exact keypoints.

    python tools/pose_pck.py [--ids 40] [--sizes 128x64 256x128] [--settings]

Synthesises a small synthetic dataset per size into a temporary folder and runs
``mediapipe_pose`` on its training images (all whole persons, some occluded). PCK is
torso-normalised: a ground-truth keypoint counts as found when the estimate is present and
within ``alpha`` x the torso length (ground-truth neck to hip centre) of it; images whose
torso is not visible are left out of PCK. Prints JSON per size: PCK@0.5 per keypoint and
overall, PCK@0.2 overall, PCK@0.5 per view (front, back, side), the fraction of images where a
pose was found, and the fraction of estimated points that are missing in the ground truth.
Both ways of finding the person are measured (``roi: crop``, the default, and ``roi: detector``,
MediaPipe Tasks' PoseLandmarker); ``--settings`` also measures black padding, no margin and no
padding. Needs the MediaPipe pose bundle (`keras-reid models fetch`).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def torso_length(kp: np.ndarray) -> np.ndarray:
    """Returns float [N]: distance from the neck to the hip centre (both hips, else the one
    present) of keypoints [N, 18, 2+]; NaN where the neck or both hips are missing."""
    from keras_reid.keypoints import KP

    present = (kp[..., 0] >= 0) & (kp[..., 1] >= 0)
    hips = np.stack([kp[:, KP["Rhip"], :2], kp[:, KP["Lhip"], :2]], 1)
    hip_ok = present[:, [KP["Rhip"], KP["Lhip"]]]
    n_hips = hip_ok.sum(1)
    centre = (hips * hip_ok[..., None]).sum(1) / np.maximum(n_hips, 1)[:, None]
    length = np.linalg.norm(kp[:, KP["neck"], :2] - centre, axis=-1)
    return np.where(present[:, KP["neck"]] & (n_hips > 0), length, np.nan)


def pck(pred: np.ndarray, truth: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Returns (hits bool [N, 18], counted bool [N, 18]): ground-truth points (of images with a
    visible torso) and whether the estimate lies within ``alpha`` x torso length of them."""
    length = torso_length(truth)
    gt = (truth[..., 0] >= 0) & (truth[..., 1] >= 0) & np.isfinite(length)[:, None]
    est = (pred[..., 0] >= 0) & (pred[..., 1] >= 0)
    dist = np.linalg.norm(pred[..., :2] - truth[..., :2], axis=-1)
    hits = gt & est & (dist <= alpha * np.nan_to_num(length, nan=0.0)[:, None])
    return hits, gt


def measure(root: Path, size: tuple[int, int], **config) -> dict:
    """Returns the PCK figures of mediapipe_pose on the training images of the synthetic dataset
    at ``root`` (images of ``size``), built with ``config`` (MediaPipePoseConfig keys)."""
    from keras_reid.keypoints import COCO18
    from keras_reid_plugins.poses.files import SyntheticPose
    from keras_reid_plugins.poses.mediapipe_pose import MediaPipePose, MediaPipePoseConfig

    paths = sorted(str(p) for p in (root / "bounding_box_train").glob("*.jpg"))
    with open(root / "annotations" / "attributes-bounding_box_train.csv") as fh:
        views = {row["name"]: row["view"] for row in csv.DictReader(fh)}
    truth = SyntheticPose().keypoints_for(paths, size)
    cfg = MediaPipePoseConfig(**config)
    estimator = MediaPipePose(cfg)
    with estimator:
        pred = estimator.keypoints_for(paths, size)
    hits, counted = pck(pred, truth, 0.5)
    hits02, _ = pck(pred, truth, 0.2)
    est = (pred[..., 0] >= 0)
    gt = (truth[..., 0] >= 0)
    view = np.array([views[Path(p).name] for p in paths])

    def ratio(h, c):
        return round(float(h.sum() / max(c.sum(), 1)), 4)

    return {
        "size": f"{size[0]}x{size[1]}", "roi": cfg.roi, "pad_to_square": estimator.pad_to_square,
        "pad_fill": cfg.pad_fill, "margin": cfg.margin,
        "images": len(paths), "normalisation": "torso (neck to hip centre)",
        "pose_found": round(float(est.any(axis=1).mean()), 4),
        "pck@0.5": ratio(hits, counted), "pck@0.2": ratio(hits02, counted),
        "pck@0.5_per_view": {v: ratio(hits[view == v], counted[view == v])
                             for v in ("front", "back", "side") if (view == v).any()},
        "pck@0.5_per_keypoint": {name: ratio(hits[:, i], counted[:, i]) for i, name in enumerate(COCO18)},
        "estimated_but_not_in_truth": ratio(est & ~gt, est),
    }


def main(argv: list[str] | None = None) -> int:
    """Prints the figures as JSON; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=40, help="identities of the synthetic dataset")
    ap.add_argument("--sizes", nargs="+", default=["128x64", "256x128"], help="image sizes HxW")
    ap.add_argument("--settings", action="store_true", help="also black padding, no margin and no padding")
    args = ap.parse_args(argv)
    from keras_reid.data.synthetic import parse_size, synthesize

    rows = []
    settings = [{"roi": "crop"}, {"roi": "detector"}]
    if args.settings:
        settings += [dict(roi=roi, **extra) for roi in ("crop", "detector")
                     for extra in ({"pad_fill": "black"}, {"margin": 0.0},
                                   {"pad_to_square": roi == "detector"})]
    with tempfile.TemporaryDirectory() as tmp:
        for text in args.sizes:
            size = parse_size(text)
            root = Path(tmp) / f"s{size[0]}x{size[1]}"
            synthesize(root, ids=args.ids, cameras=6, size=size, seed=0)
            for config in settings:
                rows.append(measure(root, size, **config))
                print(json.dumps({k: v for k, v in rows[-1].items() if "per_keypoint" not in k}),
                      file=sys.stderr, flush=True)
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
