"""The built-in synthetic person re-ID dataset, written in the Market-1501 layout.

``synthesize(out, ids=50, cameras=6, size=(128, 64), seed=0)`` writes::

    OUT/bounding_box_train/0002_c1s3_000451_01.jpg   training identities (half of the ids)
    OUT/query/...                                     one image per test identity and camera
                                                      (for a random subset of its cameras)
    OUT/bounding_box_test/...                         the other test images, plus distractors
                                                      (pid 0000) and junk boxes (pid -1)
    OUT/masks/<split folder>/<stem>.png               exact person mask, uint8 0/255
    OUT/annotations/keypoints-<split folder>.csv      COCO-18 keypoints, Pose-Transfer format
    OUT/annotations/attributes-<split folder>.csv     name, pid, camera, sequence, frame, view,
                                                      occluded, kind
    OUT/synthetic.json                                parameters (a re-run with the same ones
                                                      is skipped) and counts

File names follow ``^(-?\\d+)_c(\\d)s(\\d)_(\\d{6})_(\\d{2})\\.jpg$``. Every identity is seen
by 2..6 cameras, mostly in one 'visit' sequence shared by its cameras (so camera-pair
splits have train pairs, test images and new-id images); frames advance along a walking
cycle. Pictures are rendered by :mod:`keras_reid.data.synthetic_render`. The output is a
pure function of the parameters: the same parameters give byte-identical files.
The tree is written to a temporary folder next to OUT and renamed when complete.
"""
from __future__ import annotations

import csv
import glob
import json
import math
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm

from keras_reid.errors import DatasetError
from keras_reid.progress import live_bar

FORMAT_VERSION = 2
"""Bumped whenever the rendering changes, so an old dataset is not mistaken for a new one
(2: the cameras recalibrated for a realistic camera gap)."""

SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
"""Split -> folder, as in Market-1501."""

KEYPOINT_SIZE = (128, 64)
"""Keypoints in the CSV files are given for a 128x64 crop (Pose-Transfer convention)."""

MAX_CAMERAS = 9
"""File names have one digit for the camera."""


@dataclass(frozen=True)
class SynthParams:
    """Everything the synthetic dataset depends on (stored in ``synthetic.json``)."""

    ids: int = 50
    cameras: int = 6
    size: tuple = (128, 64)
    seed: int = 0
    images_per_id_camera: int = 4
    distractors: int = 50
    junk: int = 25
    version: int = FORMAT_VERSION

    def to_json(self) -> dict:
        """The parameters as a JSON-able dict (size as a list)."""
        d = asdict(self)
        d["size"] = list(self.size)
        return d


@dataclass
class Job:
    """One picture to render and where it goes."""

    folder: str
    name: str
    kind: str            # person / distractor / junk
    pid: int
    camera: int
    sequence: int
    frame: int
    phase: float = 0.0
    query: bool = False


def parse_size(size: str | Iterable[int]) -> tuple[int, int]:
    """``"128x64"`` or ``[128, 64]`` -> ``(128, 64)`` (height, width); raises ValueError."""
    if isinstance(size, str):
        parts = size.lower().replace(" ", "").split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"size must look like 128x64 (height x width), got {size!r}")
        h, w = int(parts[0]), int(parts[1])
    else:
        vals = list(size)
        if len(vals) != 2:
            raise ValueError(f"size must be [height, width], got {size!r}")
        h, w = int(vals[0]), int(vals[1])
    if h < 32 or w < 16 or h > 1024 or w > 1024:
        raise ValueError(f"size {h}x{w} is out of range (32x16 .. 1024x1024)")
    return h, w


def make_params(*, ids: int = 50, cameras: int = 6, size=(128, 64), seed: int = 0,
                images_per_id_camera: int = 4, distractors: int | None = None,
                junk: int | None = None) -> SynthParams:
    """Validated parameters; ``distractors`` defaults to ``ids``, ``junk`` to ``ids // 2``.

    Raises DatasetError for values that cannot make a Market-style dataset.
    """
    try:
        h, w = parse_size(size)
    except ValueError as exc:
        raise DatasetError(f"synthetic dataset: {exc}") from None
    if not 2 <= cameras <= MAX_CAMERAS:
        raise DatasetError(f"synthetic dataset: cameras must be 2..{MAX_CAMERAS} (one digit in "
                           f"Market names), got {cameras}")
    if not 2 <= ids <= 9999:
        raise DatasetError(f"synthetic dataset: ids must be 2..9999 (half train, half test), got {ids}")
    if images_per_id_camera < 2:
        raise DatasetError("synthetic dataset: images_per_id_camera must be at least 2 "
                           f"(a query and a same-camera gallery image), got {images_per_id_camera}")
    distractors = ids if distractors is None else int(distractors)
    junk = ids // 2 if junk is None else int(junk)
    if distractors < 0 or junk < 0:
        raise DatasetError("synthetic dataset: distractors and junk must be >= 0")
    return SynthParams(ids=int(ids), cameras=int(cameras), size=(h, w), seed=int(seed),
                       images_per_id_camera=int(images_per_id_camera), distractors=distractors,
                       junk=junk)


def market_name(pid: int, camera: int, sequence: int, frame: int, box: int = 1) -> str:
    """``market_name(2, 1, 3, 451) -> "0002_c1s3_000451_01.jpg"`` (pid -1 -> ``-1_...``)."""
    head = "-1" if pid < 0 else f"{pid:04d}"
    return f"{head}_c{camera}s{sequence}_{frame:06d}_{box:02d}.jpg"


def plan_dataset(p: SynthParams) -> tuple[list[Job], dict]:
    """Decide every picture (split, name, identity, camera, sequence, frame, phase).

    Returns (jobs, info) where info holds the train and test pids.
    """
    rng = np.random.default_rng([p.seed, 1])
    pids = np.arange(1, p.ids + 1)
    shuffled = rng.permutation(pids)
    n_train = p.ids // 2
    train = set(int(x) for x in shuffled[:n_train])
    frames = _Frames(rng)
    jobs: list[Job] = []
    for pid in (int(x) for x in pids):
        jobs += _person_jobs(p, rng, frames, pid, pid in train)
    for kind, count, pid in (("distractor", p.distractors, 0), ("junk", p.junk, -1)):
        for _ in range(count):
            cam = int(rng.integers(1, p.cameras + 1))
            seq = int(rng.integers(1, 7))
            frame = int(rng.integers(1, 999_999))
            name, frame = frames.unique(pid, cam, seq, frame, int(rng.integers(1, 5)))
            jobs.append(Job(SPLIT_FOLDERS["gallery"], name, kind, pid, cam, seq, frame,
                            phase=frame * 2 * math.pi / 24.0))
    return jobs, {"train_pids": sorted(train), "test_pids": sorted(set(pids.tolist()) - train)}


class _Frames:
    """Frame numbers and file names of the planned dataset: per (camera, sequence) the frames
    go on increasing; a name is never used twice."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.counters: dict = {}
        self.used: set = set()

    def next_frames(self, cam: int, seq: int, n: int) -> list[int]:
        """The next ``n`` frame numbers of (``cam``, ``seq``), in random steps."""
        start = self.counters.get((cam, seq), 0) + int(self.rng.integers(20, 200))
        frames = (start + np.cumsum(self.rng.integers(4, 20, n))).tolist()
        self.counters[(cam, seq)] = frames[-1]
        return [int(f) for f in frames]

    def unique(self, pid, cam, seq, frame, box=1) -> tuple[str, int]:
        """``(name, frame)``: the frame moved on until its Market-1501 name is new."""
        name = market_name(pid, cam, seq, frame, box)
        while name in self.used:
            frame += 1
            name = market_name(pid, cam, seq, frame, box)
        self.used.add(name)
        return name, frame


def _person_jobs(p: SynthParams, rng: np.random.Generator, frames: _Frames, pid: int,
                 is_train: bool) -> list[Job]:
    """The pictures of identity ``pid``: a few visits of 2..6 cameras (mostly in its home
    sequence); a test identity gives one query picture in most of its cameras."""
    n0 = p.images_per_id_camera
    jobs = []
    home = int(rng.integers(1, 7))
    k = int(rng.integers(2, min(p.cameras, 6) + 1))
    cams = sorted(int(c) + 1 for c in rng.choice(p.cameras, size=k, replace=False))
    query_cams = [c for c in cams if rng.random() < 0.7] or [cams[int(rng.integers(k))]]
    for cam in cams:
        seq = home if rng.random() < 0.75 else int(rng.integers(1, 7))
        n = int(rng.integers(max(2, math.ceil(n0 / 2)), n0 + n0 // 2 + 1))
        q_index = int(rng.integers(n)) if (not is_train and cam in query_cams) else -1
        for j, frame in enumerate(frames.next_frames(cam, seq, n)):
            name, frame = frames.unique(pid, cam, seq, frame)
            folder = SPLIT_FOLDERS["train"] if is_train else (
                SPLIT_FOLDERS["query"] if j == q_index else SPLIT_FOLDERS["gallery"])
            jobs.append(Job(folder, name, "person", pid, cam, seq, frame,
                            phase=frame * 2 * math.pi / 24.0, query=j == q_index))
    return jobs


STRANGERS = 32
"""Distractor and junk boxes show people from a pool of this many non-dataset identities."""


def _render_job(renderer, identities: dict, strangers: list, job: Job, p: SynthParams):
    """Render one job with its own seeded generator; returns the Rendered picture."""
    rng = np.random.default_rng([p.seed, 2, job.pid + 1, job.camera, job.sequence, job.frame])
    if job.kind == "person":
        return renderer.render(identities[job.pid], job.camera, rng, phase=job.phase)
    stranger = strangers[int(rng.integers(len(strangers)))]
    if job.kind == "distractor":   # a badly framed detection of someone else
        mode = int(rng.integers(3))
        if mode == 0:
            scale, shift = rng.uniform(1.4, 2.2), (rng.uniform(-0.15, 0.15), rng.uniform(0.1, 0.5))
        elif mode == 1:
            scale, shift = rng.uniform(0.4, 0.65), (rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.2))
        else:
            scale, shift = rng.uniform(0.9, 1.1), (rng.choice((-1, 1)) * rng.uniform(0.3, 0.45), 0.0)
        return renderer.render(stranger, job.camera, rng, phase=job.phase, scale=scale, shift=shift)
    if rng.random() < 0.5:             # junk: background only, or a sliver of a person
        return renderer.render(None, job.camera, rng)
    return renderer.render(stranger, job.camera, rng, phase=job.phase, scale=rng.uniform(2.5, 3.5),
                           shift=(rng.choice((-1, 1)) * rng.uniform(0.3, 0.5), rng.uniform(-0.3, 0.3)))


def read_params(root: str | os.PathLike, meta_name: str = "synthetic.json") -> dict | None:
    """The parameters stored in ``root/<meta_name>``, or None when there is none."""
    path = Path(root) / meta_name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["params"]
    except (ValueError, KeyError, OSError) as exc:
        raise DatasetError(f"{path} is not a valid synthetic.json ({exc}); delete the folder "
                           "and synthesise it again") from None


def load_keypoints(csv_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a Pose-Transfer keypoint CSV: {image name: int array [18, 2] of (y, x), -1 missing}
    (:func:`keras_reid.keypoints.read_pose_csv`; raises DatasetError naming bad lines)."""
    from keras_reid.keypoints import read_pose_csv  # deferred: OpenCV (keypoints draws with it)

    return read_pose_csv(csv_path)


def mask_path(root: str | os.PathLike, image_path: str | os.PathLike) -> Path:
    """Where the person mask of ``image_path`` (an image of the dataset at ``root``) is."""
    image_path = Path(image_path)
    return Path(root) / "masks" / image_path.parent.name / (image_path.stem + ".png")


def synthesize(out: str | os.PathLike, *, ids: int = 50, cameras: int = 6,
               size: tuple[int, int] | str = (128, 64), seed: int = 0,
               images_per_id_camera: int = 4, distractors: int | None = None,
               junk: int | None = None, force: bool = False, progress: bool = False) -> dict:
    """Write the synthetic dataset to ``out`` (see the module docstring for the layout).

    ``ids`` identities (half train, half test), ``cameras`` cameras (2..9), crops of
    ``size`` (height, width or "HxW"); each identity-camera visit has between half and
    1.5 times ``images_per_id_camera`` images; ``distractors`` (default ``ids``) and
    ``junk`` (default ``ids // 2``) boxes go to the gallery. If ``out`` already holds a
    synthetic dataset with the same parameters nothing is written (``skipped`` is True);
    a different dataset or other files in ``out`` raise DatasetError unless ``force``.

    Returns a summary: root, skipped, seconds, params, images per split, identities per
    split, distractors, junk.
    """
    p = make_params(ids=ids, cameras=cameras, size=size, seed=seed,
                    images_per_id_camera=images_per_id_camera, distractors=distractors, junk=junk)
    return write_tree(out, p.to_json(), lambda tmp: _write(tmp, p, progress), meta_name="synthetic.json",
                      what="synthetic dataset", generator="keras-reid synthetic", force=force)


def write_tree(out: str | os.PathLike, params: dict, write, *, meta_name: str, what: str,
               generator: str, force: bool = False) -> dict:
    """Write a synthetic dataset tree to ``out`` once: ``write(tmp) -> counts`` fills a temporary
    folder next to ``out``, then ``<meta_name>`` (params and counts) is added and the folder is
    renamed to ``out``. If ``out`` holds the same ``params`` nothing is written (``skipped``);
    other parameters or other files raise DatasetError unless ``force``.

    Unfinished folders that killed writers on this host left beside ``out`` are deleted first.

    Returns ``{"root", "skipped", "seconds", "params", **counts}`` (and ``leftovers_removed``
    when something was written)."""
    out = Path(os.path.expanduser(str(out))).absolute()
    existing = read_params(out, meta_name) if out.is_dir() else None
    if existing is not None and existing == params and not force:
        meta = json.loads((out / meta_name).read_text())
        return {"root": str(out), "skipped": True, "seconds": 0.0, "params": params, **meta["counts"]}
    if out.exists() and not force:
        if not out.is_dir():
            raise DatasetError(f"{out} is a file; give a folder for the {what}")
        if existing is not None and existing.get("version") != params.get("version"):
            raise DatasetError(f"{out} holds a {what} written by another keras-reid version (format "
                               f"{existing.get('version')}, this one writes {params.get('version')}); "
                               "pass --force to write it again or choose another folder")
        if existing is not None:
            raise DatasetError(f"{out} holds a {what} with other parameters "
                               f"({_diff(existing, params)}); pass --force to replace it "
                               "or choose another folder")
        if any(out.iterdir()):
            raise DatasetError(f"{out} exists and is not empty; choose an empty or new folder "
                               "(or pass --force to replace its contents)")
    t0 = time.perf_counter()
    removed = remove_dead_leftovers(out)
    tmp = out.parent / f".{out.name}.tmp-{_process_tag()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        counts = write(tmp)
        meta = {"generator": generator, "params": params, "counts": counts}
        (tmp / meta_name).write_text(json.dumps(meta, indent=2) + "\n")
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"root": str(out), "skipped": False, "seconds": round(time.perf_counter() - t0, 3),
            "params": params, "leftovers_removed": removed, **counts}


def _process_tag(pid: int | None = None) -> str:
    """``<host>-<pid>``: names the temporary folders of this process (the host, so that a
    shared file system's leftovers are judged only by the machine that made them)."""
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname()) or "host"
    return f"{host}-{os.getpid() if pid is None else pid}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # another user's live process
        return True
    return True


def remove_dead_leftovers(out: Path) -> int:
    """Delete the ``.<name>.tmp-<host>-<pid>`` / ``.old-`` folders beside ``out`` that a killed
    synthesis on this host left (its pid no longer runs); a live writer's folder is kept.
    Returns how many were removed."""
    removed = 0
    if not out.parent.is_dir():
        return 0
    host = _process_tag(0).rsplit("-", 1)[0]
    for kind in ("tmp", "old"):
        for path in out.parent.glob(f".{glob.escape(out.name)}.{kind}-{glob.escape(host)}-*"):
            pid = path.name.rsplit("-", 1)[1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                removed += 1
    return removed


def _diff(a: dict, b: dict) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} asked" for k in keys)


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished tree ``tmp`` to ``out``, replacing an old ``out`` (empty or forced)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        old = out.parent / f".{out.name}.old-{_process_tag()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        os.replace(tmp, out)


def _write(root: Path, p: SynthParams, progress: bool) -> dict:
    """Render and write every picture, mask and annotation under ``root``; return counts."""
    import cv2  # deferred: OpenCV, importing this module stays light (CLI, plugin discovery)

    from keras_reid.data.synthetic_render import (  # deferred: OpenCV (the renderer), as above
        Renderer, make_cameras, make_identities)

    jobs, info = plan_dataset(p)
    cams = make_cameras(p.cameras, np.random.default_rng([p.seed, 3]))
    identities = {ident.pid: ident for ident in
                  make_identities(range(1, p.ids + 1), np.random.default_rng([p.seed, 4]))}
    strangers = make_identities([0] * STRANGERS, np.random.default_rng([p.seed, 5]))
    renderer = Renderer(p.size, cams, p.seed)
    quality = {c.index: c.jpeg_quality for c in cams}
    for folder in SPLIT_FOLDERS.values():
        (root / folder).mkdir(parents=True)
        (root / "masks" / folder).mkdir(parents=True)
    (root / "annotations").mkdir()
    kp_rows: dict = {f: [] for f in SPLIT_FOLDERS.values()}
    attr_rows: dict = {f: [] for f in SPLIT_FOLDERS.values()}
    sy, sx = KEYPOINT_SIZE[0] / p.size[0], KEYPOINT_SIZE[1] / p.size[1]
    for job in tqdm(jobs, desc="synthesising", unit="img", disable=not live_bar(progress), leave=False):
        pic = _render_job(renderer, identities, strangers, job, p)
        bgr = cv2.cvtColor(pic.image, cv2.COLOR_RGB2BGR)
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality[job.camera]])
        ok2, mdata = cv2.imencode(".png", pic.mask, [cv2.IMWRITE_PNG_COMPRESSION, 3])
        if not (ok and ok2):
            raise RuntimeError(f"OpenCV could not encode {job.name}")
        (root / job.folder / job.name).write_bytes(data.tobytes())
        (root / "masks" / job.folder / (job.name[:-4] + ".png")).write_bytes(mdata.tobytes())
        kp = pic.keypoints
        ys = [int(round(y * sy)) if y >= 0 else -1 for y in kp[:, 0]]
        xs = [int(round(x * sx)) if x >= 0 else -1 for x in kp[:, 1]]
        kp_rows[job.folder].append((job.name, ys, xs))
        attr_rows[job.folder].append((job.name, job.pid, job.camera, job.sequence, job.frame,
                                      pic.view, int(pic.occluded), job.kind))
    _write_annotations(root, kp_rows, attr_rows)
    images = {split: len(attr_rows[folder]) for split, folder in SPLIT_FOLDERS.items()}
    return {"images": images,
            "identities": {"train": len(info["train_pids"]), "test": len(info["test_pids"])},
            "distractors": p.distractors, "junk": p.junk}


def _write_annotations(root: Path, kp_rows: dict, attr_rows: dict) -> None:
    """Per split folder ``annotations/keypoints-<folder>.csv`` (Pose-Transfer format) and
    ``attributes-<folder>.csv``, rows sorted by name."""
    for folder in SPLIT_FOLDERS.values():
        with open(root / "annotations" / f"keypoints-{folder}.csv", "w", newline="") as fh:
            fh.write("name:keypoints_y:keypoints_x\n")
            for name, ys, xs in sorted(kp_rows[folder]):
                fh.write(f"{name}:{json.dumps(ys)}:{json.dumps(xs)}\n")
        with open(root / "annotations" / f"attributes-{folder}.csv", "w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(("name", "pid", "camera", "sequence", "frame", "view", "occluded", "kind"))
            w.writerows(sorted(attr_rows[folder]))
