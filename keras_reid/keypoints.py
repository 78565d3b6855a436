"""Body keypoints: the COCO-18 layout, flipping, scaling, skeleton images, heatmaps, pose vectors
and the Pose-Transfer CSV format (numpy and OpenCV only; no TensorFlow).

Keypoints are float arrays ``[..., 18, 2]`` of (y, x) or ``[..., 18, 3]`` of (y, x, score) in
pixels of an image of a given ``(height, width)``, in COCO-18 order (:data:`COCO18`); a point is
missing when its y or x is negative (the convention writes -1 in every column). The Pose-Transfer
CSV files (``name:keypoints_y:keypoints_x``, JSON lists of 18 ints, -1 missing) hold coordinates
for 128x64 crops (:data:`CSV_SIZE`).
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Collection, Mapping

import cv2
import numpy as np

from keras_reid.data.synthetic_render import COCO18 as _RENDER_COCO18
from keras_reid.errors import DatasetError

COCO18: tuple[str, ...] = tuple(_RENDER_COCO18)
"""Keypoint names in COCO-18 order (the synthetic renderer's tuple: one source of truth):
nose, neck, Rsho, Relb, Rwri, Lsho, Lelb, Lwri, Rhip, Rkne, Rank, Lhip, Lkne, Lank, Leye, Reye,
Lear, Rear. R/L are the person's own right and left."""
KP = {name: i for i, name in enumerate(COCO18)}
"""Keypoint index by name."""

LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
    (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
"""The 17 limbs OpenPose draws (pairs of keypoint indices): neck-shoulders, arms, neck-hips,
legs, neck-nose, nose-eyes, eyes-ears."""

_PALETTE = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))

LIMB_COLOURS: tuple[tuple[int, int, int], ...] = _PALETTE[:len(LIMBS)]
"""RGB colour of each limb of :data:`LIMBS` (OpenPose palette); joint ``i`` is drawn in the
palette's colour ``i``."""

JOINT_COLOURS: tuple[tuple[int, int, int], ...] = _PALETTE
"""RGB colour of each joint (OpenPose palette, 18 colours)."""

FLIP_INDEX: tuple[int, ...] = tuple(
    KP[{"R": "L", "L": "R"}[n[0]] + n[1:]] if n[0] in "RL" else i for i, n in enumerate(COCO18))
"""Permutation swapping the left and right keypoints (nose and neck stay): the keypoints of a
mirrored image are ``flipped[..., i, :] = mirrored[..., FLIP_INDEX[i], :]``."""

CSV_SIZE = (128, 64)
"""Pose-Transfer keypoint CSV files give coordinates for 128x64 (height, width) crops."""

CSV_HEADER = "name:keypoints_y:keypoints_x"
"""Header line of a Pose-Transfer keypoint CSV."""

CSV_HINT = ("format: header 'name:keypoints_y:keypoints_x', then 'image.jpg:[y0, ..., y17]:"
            "[x0, ..., x17]' with 18 ints per list, -1 = missing")


def _present(kp: np.ndarray) -> np.ndarray:
    """bool [..., 18]: which keypoints are present (y and x non-negative)."""
    return (kp[..., 0] >= 0) & (kp[..., 1] >= 0)


def _check(kp: np.ndarray, what: str) -> np.ndarray:
    kp = np.asarray(kp)
    if kp.ndim < 2 or kp.shape[-2] != 18 or kp.shape[-1] not in (2, 3):
        raise ValueError(f"{what} expects keypoints [..., 18, 2 or 3], got shape {kp.shape}")
    return kp


def flip_keypoints(kp: np.ndarray, width: int) -> np.ndarray:
    """Returns the keypoints of the horizontally mirrored image (float32, same shape): x becomes
    ``width - 1 - x`` and left and right keypoints swap places; missing points stay -1."""
    kp = _check(kp, "flip_keypoints").astype(np.float32)
    out = kp.copy()
    present = _present(kp)
    out[..., 1] = np.where(present, width - 1 - kp[..., 1], kp[..., 1])
    return out[..., list(FLIP_INDEX), :]


def scale_keypoints(kp: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Returns the keypoints (float32, same shape) rescaled from an image of ``from_size`` (height,
    width) to one of ``to_size``: y * to_h / from_h, x * to_w / from_w; scores unchanged, missing
    points stay -1."""
    kp = _check(kp, "scale_keypoints").astype(np.float32)
    out = kp.copy()
    present = _present(kp)
    for axis in (0, 1):
        factor = float(to_size[axis]) / float(from_size[axis])
        out[..., axis] = np.where(present, kp[..., axis] * factor, -1.0)
    return out


def default_thickness(size: tuple[int, int]) -> int:
    """Returns the limb thickness in pixels used for an image of ``size``: 2 at 128x64, 4 at
    256x128 (one pixel per 64 rows of the shorter-scaled side, at least 1)."""
    h, w = size
    return max(1, int(round(min(h / 64.0, w / 32.0))))


def render_skeleton(kp: np.ndarray, size: tuple[int, int], thickness: int | None = None) -> np.ndarray:
    """Returns uint8 [h, w, 3] RGB: the pose ``kp`` ([18, 2|3] in pixels of ``size``) drawn as
    OpenPose-coloured sticks (:data:`LIMB_COLOURS`) on black, joints as dots of
    :data:`JOINT_COLOURS` on top. Limbs with a missing end are not drawn. ``thickness`` defaults
    to :func:`default_thickness` (scales with the image); dots have radius ``thickness``."""
    kp = _check(kp, "render_skeleton")
    if kp.ndim != 2:
        raise ValueError(f"render_skeleton draws one pose [18, 2|3], got shape {kp.shape}")
    h, w = int(size[0]), int(size[1])
    t = default_thickness((h, w)) if thickness is None else max(1, int(thickness))
    canvas = np.zeros((h, w, 3), np.uint8)
    present = _present(kp)
    pts = [(int(round(float(x))), int(round(float(y)))) for y, x in kp[:, :2]]
    for (a, b), colour in zip(LIMBS, LIMB_COLOURS):
        if present[a] and present[b]:
            cv2.line(canvas, pts[a], pts[b], colour, t, cv2.LINE_AA)
    for i, colour in enumerate(JOINT_COLOURS):
        if present[i]:
            cv2.circle(canvas, pts[i], t, colour, -1, cv2.LINE_AA)
    return canvas


def heatmaps(kp: np.ndarray, size: tuple[int, int], sigma: float = 6.0) -> np.ndarray:
    """Returns float32 [h, w, 18]: one Gaussian bump per keypoint (peak 1 at the point), zeros for
    missing points. ``sigma`` is in pixels of a 128x64 image and scales with ``size`` per axis
    (sigma_y = sigma * h / 128, sigma_x = sigma * w / 64), so the maps of a resized image are the
    resized maps."""
    kp = _check(kp, "heatmaps").astype(np.float32)
    if kp.ndim != 2:
        raise ValueError(f"heatmaps takes one pose [18, 2|3], got shape {kp.shape}")
    h, w = int(size[0]), int(size[1])
    sy = sigma * h / CSV_SIZE[0]
    sx = sigma * w / CSV_SIZE[1]
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    out = np.zeros((h, w, 18), np.float32)
    present = _present(kp)
    for i in range(18):
        if present[i]:
            gy = np.exp(-0.5 * ((ys - kp[i, 0]) / sy) ** 2)
            gx = np.exp(-0.5 * ((xs - kp[i, 1]) / sx) ** 2)
            out[..., i] = gy * gx
    return out


def normalised_pose_vector(kp: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Returns float32 [36]: (y, x) of each keypoint, centred on the torso centre (midpoint of the
    neck and the hip centre) and divided by the torso length (neck to hip centre), flattened in
    COCO-18 order; missing points are 0. The neck falls back to the shoulder midpoint and the
    hip centre to the one hip present; without both a neck and a hip the centre is the mean of
    the present points and the scale a third of the image height (``size``). For clustering
    poses (e.g. PN-GAN's canonical poses)."""
    kp = _check(kp, "normalised_pose_vector").astype(np.float32)
    if kp.ndim != 2:
        raise ValueError(f"normalised_pose_vector takes one pose [18, 2|3], got shape {kp.shape}")
    present = _present(kp)
    out = np.zeros((18, 2), np.float32)
    if not present.any():
        return out.reshape(-1)
    yx = kp[:, :2]

    def mean_of(indices):
        idx = [i for i in indices if present[i]]
        return yx[idx].mean(axis=0) if idx else None

    neck = yx[KP["neck"]] if present[KP["neck"]] else (
        mean_of((KP["Rsho"], KP["Lsho"])) if present[KP["Rsho"]] and present[KP["Lsho"]] else None)
    hips = mean_of((KP["Rhip"], KP["Lhip"]))
    length = float(np.linalg.norm(neck - hips)) if neck is not None and hips is not None else 0.0
    if length > 1e-6:
        centre, scale = (neck + hips) / 2.0, length
    else:
        centre, scale = yx[present].mean(axis=0), max(float(size[0]) / 3.0, 1e-6)
    out[present] = (yx[present] - centre) / scale
    return out.reshape(-1)


# ---------------------------------------------------------------------------- Pose-Transfer CSV
def _parse_list(text: str) -> list[int] | str:
    """The 18 ints of a JSON list, or a reason why ``text`` is not one."""
    try:
        values = json.loads(text)
    except ValueError:
        return "not a JSON list"
    if not isinstance(values, list):
        return "not a JSON list"
    if len(values) != 18:
        return f"{len(values)} values instead of 18"
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "values that are not integers"
    if any(v < -1 for v in values):
        return "negative values other than -1"
    return values


def _lines(numbers: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(n) for n in numbers[:limit])
    more = f" and {len(numbers) - limit} more" if len(numbers) > limit else ""
    return f"line{'s' if len(numbers) > 1 else ''} {shown}{more}"


def read_pose_csv(path: str | os.PathLike, names: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """Returns {image name: int64 [18, 2] (y, x) for a 128x64 crop, -1 missing} from the
    Pose-Transfer keypoint CSV at ``path`` (blank lines skipped; spaces around fields allowed).

    Raises one DatasetError naming the line numbers (first few and a count) of every bad row:
    a wrong number of fields, lists that are not 18 ints (-1 or more), repeated names and, when
    ``names`` (the dataset's image names) is given, names that are not in the dataset.
    """
    path = Path(path)
    lines = _csv_lines(path)
    known = None if names is None else set(names)
    out: dict[str, np.ndarray] = {}
    first_line: dict[str, int] = {}
    problems = _BadRows()
    for number, line in enumerate(lines[1:], start=2):
        row = _pose_row(line, number, first_line, known, problems)
        if row is not None:
            out[row[0]] = row[1]
    problems.raise_if_any(path)
    return out


def _csv_lines(path: Path) -> list[str]:
    """The lines of the keypoint CSV at ``path``; DatasetError when unreadable or its header is wrong."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise DatasetError(f"cannot read keypoint file {path} ({exc.strerror or exc}); check the "
                           "path") from None
    lines = text.splitlines()
    header = lines[0].replace(" ", "").strip() if lines else ""
    if header != CSV_HEADER:
        raise DatasetError(f"{path}: expected header {CSV_HEADER!r}, got {lines[0] if lines else ''!r}; "
                           f"{CSV_HINT}")
    return lines


class _BadRows:
    """The bad rows of a keypoint CSV: per reason its line numbers (in order of appearance) and
    an example to quote."""

    def __init__(self) -> None:
        self.problems: dict[str, list[int]] = {}
        self.examples: dict[str, str] = {}

    def add(self, reason: str, number: int, example: str = "") -> None:
        self.problems.setdefault(reason, []).append(number)
        if example and reason not in self.examples:
            self.examples[reason] = example

    def raise_if_any(self, path: Path) -> None:
        """One DatasetError listing every reason with its lines, if there is any bad row."""
        if not self.problems:
            return
        count = sum(len(n) for n in self.problems.values())
        parts = [f"{_lines(numbers)}: {reason}" + (f", e.g. {self.examples[reason]}"
                                                   if reason in self.examples else "")
                 for reason, numbers in self.problems.items()]
        raise DatasetError(f"{path}: {count} bad row{'s' if count > 1 else ''} ({'; '.join(parts)}); "
                           f"fix or delete those rows ({CSV_HINT})")


def _pose_row(line: str, number: int, first_line: dict[str, int], known: set[str] | None,
              bad: _BadRows) -> tuple[str, np.ndarray] | None:
    """``(name, int64 [18, 2] (y, x))`` of CSV line ``number``; None for a blank line or a bad
    row (recorded in ``bad``). Records the name's line in ``first_line``."""
    if not line.strip():
        return None
    fields = [f.strip() for f in line.split(":")]
    if len(fields) != 3:
        bad.add(f"{len(fields)} fields instead of 3", number)
        return None
    name, ys, xs = fields
    if not name:
        bad.add("an empty name", number)
        return None
    parsed_y, parsed_x = _parse_list(ys), _parse_list(xs)
    if isinstance(parsed_y, str) or isinstance(parsed_x, str):
        reason = parsed_y if isinstance(parsed_y, str) else parsed_x
        bad.add(f"keypoint lists with {reason}", number)
        return None
    if name in first_line:
        bad.add("names given on an earlier line", number, f"{name!r}, first on line {first_line[name]}")
        return None
    first_line[name] = number
    if known is not None and name not in known:
        bad.add("names not in the dataset (the file belongs to another dataset or split)", number,
                repr(name))
        return None
    return name, np.stack([np.asarray(parsed_y), np.asarray(parsed_x)], axis=1).astype(np.int64)


def write_pose_csv(path: str | os.PathLike, mapping: Mapping[str, np.ndarray]) -> Path:
    """Writes ``mapping`` {image name: keypoints [18, 2|3] (y, x[, score]) for a 128x64 crop} as a
    Pose-Transfer CSV at ``path`` (rounded to ints, missing -> -1; rows in mapping order),
    atomically: a temporary file renamed when complete. Returns the path."""
    path = Path(path)
    rows = [CSV_HEADER]
    for name, kp in mapping.items():
        if not name or any(c in name for c in ":\n\r"):
            raise ValueError(f"image name {name!r} cannot be written to a keypoint CSV (empty, or "
                             "contains ':' or a line break)")
        kp = _check(kp, "write_pose_csv").astype(np.float64)
        if kp.ndim != 2:
            raise ValueError(f"keypoints of {name!r} must be [18, 2|3], got shape {kp.shape}")
        present = _present(kp)
        ys = [int(round(v)) if p else -1 for v, p in zip(kp[:, 0], present)]
        xs = [int(round(v)) if p else -1 for v, p in zip(kp[:, 1], present)]
        rows.append(f"{name}:{json.dumps(ys)}:{json.dumps(xs)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.part"
    try:
        with open(tmp, "w", newline="") as fh:
            fh.write("\n".join(rows) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


__all__ = [
    "COCO18", "KP", "LIMBS", "LIMB_COLOURS", "JOINT_COLOURS", "FLIP_INDEX", "CSV_SIZE", "CSV_HEADER",
    "flip_keypoints", "scale_keypoints", "default_thickness", "render_skeleton", "heatmaps",
    "normalised_pose_vector", "read_pose_csv", "write_pose_csv",
]
