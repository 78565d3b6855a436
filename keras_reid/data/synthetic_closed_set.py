"""A synthetic closed-set dataset in the LIMA style: few people, many sessions, clothing changes.

``synthesize_closed_set(out, ids=6, sessions=4, ...)`` writes::

    OUT/labels.csv                         path, identity, session, camera, frame, view, kind
                                           (read by the ``closed_set`` dataset reader)
    OUT/<session>/<class>/<name>.jpg       class 0 = 'unknown' (background, several people,
                                           badly framed strangers); classes 1..ids = people
    OUT/masks/<session>/<class>/<stem>.png exact person masks, uint8 0/255 (the ``synthetic``
                                           masker finds them)
    OUT/synthetic_closed_set.json          parameters and counts (a re-run with the same
                                           parameters is skipped)

Each identity keeps body, skin, hair and face in every session but wears other clothes and
bags from session 2 on (session 1 shows the identity's base outfit), so a re-ID model that
learned the clothes of the training sessions meets new clothes in the left-out session; the
face is the cue that survives. Views are drawn per image (front 0.45, back 0.4, side 0.15,
whatever the camera), so about half the images show a face the face filter can find.
Names are ``<class:03d>_s<session>_c<camera>_<frame:06d>.jpg``. The output is a pure function
of the parameters; the tree is written to a temporary folder next to OUT and renamed when
complete.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from keras_reid.data.synthetic import STRANGERS, parse_size, read_params, write_tree
from keras_reid.errors import DatasetError
from keras_reid.progress import live_bar

FORMAT_VERSION = 1
META_NAME = "synthetic_closed_set.json"
VIEW_PROBS = {"front": 0.45, "back": 0.4, "side": 0.15}
"""Per-image view distribution (front views show the face)."""
UNKNOWN_KINDS = ("background", "group", "misframed")


@dataclass(frozen=True)
class ClosedSetParams:
    """Everything the synthetic closed-set dataset depends on (stored in its JSON file)."""

    ids: int = 6
    sessions: int = 4
    size: tuple = (128, 64)
    seed: int = 0
    images_per_session: int = 20
    unknown_per_session: int = 16
    cameras: int = 2
    version: int = FORMAT_VERSION

    def to_json(self) -> dict:
        """The parameters as a JSON-able dict (size as a list)."""
        d = asdict(self)
        d["size"] = list(self.size)
        return d


def make_closed_set_params(*, ids: int = 6, sessions: int = 4, size=(128, 64), seed: int = 0,
                           images_per_session: int = 20, unknown_per_session: int = 16,
                           cameras: int = 2) -> ClosedSetParams:
    """Validated parameters; raises DatasetError naming the bad value."""
    try:
        h, w = parse_size(size)
    except ValueError as exc:
        raise DatasetError(f"synthetic closed-set dataset: {exc}") from None
    checks = (("ids", ids, 2, 999), ("sessions", sessions, 2, 9),
              ("images_per_session", images_per_session, 2, 10_000),
              ("unknown_per_session", unknown_per_session, 0, 10_000), ("cameras", cameras, 1, 9))
    for name, value, lo, hi in checks:
        if not lo <= int(value) <= hi:
            raise DatasetError(f"synthetic closed-set dataset: {name} must be {lo}..{hi}, got {value}"
                               + (" (leave-one-session-out needs two sessions)" if name == "sessions" else ""))
    return ClosedSetParams(ids=int(ids), sessions=int(sessions), size=(h, w), seed=int(seed),
                           images_per_session=int(images_per_session),
                           unknown_per_session=int(unknown_per_session), cameras=int(cameras))


def outfits(identities: list, sessions: int, seed: int) -> dict:
    """``{(pid, session): Identity}``: session 1 is each identity's base outfit; later sessions
    redraw clothes, pattern, sleeves, shoes and bag (body, skin, hair and face stay), with
    pairwise different clothing within a session."""
    from keras_reid.data import synthetic_render as sr  # deferred: OpenCV, importing this module stays light (CLI)

    out = {}
    for s in range(1, sessions + 1):
        seen: set = set()
        for ident in identities:
            if s == 1:
                new = ident
            else:
                rng = np.random.default_rng([seed, 11, ident.pid, s])
                for _ in range(200):
                    upper = str(rng.choice(sr.UPPER_COLOURS))
                    new = dataclasses.replace(
                        ident, upper=upper,
                        upper2=str(rng.choice([c for c in sr.UPPER_COLOURS if c != upper])),
                        pattern=str(rng.choice(sr.UPPER_PATTERNS)),
                        long_sleeves=bool(rng.random() < 0.5),
                        lower=str(rng.choice(sr.LOWER_COLOURS)),
                        lower_style=str(rng.choice(sr.LOWER_STYLES)),
                        shoes=sr.SHOE_COLOURS[rng.integers(len(sr.SHOE_COLOURS))],
                        bag=str(rng.choice(sr.BAGS)),
                        bag_colour=str(rng.choice(("black", "brown", "navy", "red", "grey"))))
                    if new.signature() not in seen and new.signature() != ident.signature():
                        break
            seen.add(new.signature())
            out[(ident.pid, s)] = new
    return out


def _render_unknown(renderer, strangers, camera: int, rng: np.random.Generator):
    """Class 0: empty scene, two strangers side by side, or a stranger cut by the box."""
    kind = UNKNOWN_KINDS[int(rng.choice(3, p=[0.35, 0.4, 0.25]))]
    if kind == "background":
        return kind, renderer.render(None, camera, rng)
    a = strangers[int(rng.integers(len(strangers)))]
    if kind == "misframed":
        return kind, renderer.render(a, camera, rng, scale=rng.uniform(1.8, 2.6),
                                     shift=(rng.choice((-1, 1)) * rng.uniform(0.15, 0.35), rng.uniform(0.1, 0.4)))
    b = strangers[int(rng.integers(len(strangers)))]
    dx = rng.uniform(0.18, 0.3)
    left = renderer.render(a, camera, rng, scale=rng.uniform(0.8, 0.95), shift=(-dx, 0.0))
    right = renderer.render(b, camera, rng, scale=rng.uniform(0.8, 0.95), shift=(dx, rng.uniform(-0.05, 0.05)))
    on = right.mask > 0
    image = left.image.copy()
    image[on] = right.image[on]
    left.image, left.mask = image, np.maximum(left.mask, right.mask)
    return kind, left


def plan(p: ClosedSetParams) -> list[dict]:
    """Every picture: class, session, camera, frame, view (people) and its file name."""
    rng = np.random.default_rng([p.seed, 21])
    views = list(VIEW_PROBS)
    probs = np.asarray(list(VIEW_PROBS.values()))
    jobs, used = [], set()
    for s in range(1, p.sessions + 1):
        frame = int(rng.integers(100, 1000))
        entries = [(pid, p.images_per_session) for pid in range(1, p.ids + 1)]
        entries.append((0, p.unknown_per_session))
        for cls, n in entries:
            for _ in range(n):
                frame += int(rng.integers(3, 15))
                cam = int(rng.integers(1, p.cameras + 1))
                name = f"{cls:03d}_s{s}_c{cam}_{frame:06d}.jpg"
                assert name not in used
                used.add(name)
                jobs.append({"cls": cls, "session": s, "camera": cam, "frame": frame, "name": name,
                             "view": views[int(rng.choice(len(views), p=probs / probs.sum()))] if cls else ""})
    return jobs


def read_closed_set_params(root: str | os.PathLike) -> dict | None:
    """The parameters stored in ``root/synthetic_closed_set.json``, or None."""
    return read_params(root, META_NAME)


def synthesize_closed_set(out: str | os.PathLike, *, ids: int = 6, sessions: int = 4,
                          size=(128, 64), seed: int = 0, images_per_session: int = 20,
                          unknown_per_session: int = 16, cameras: int = 2, force: bool = False,
                          progress: bool = False) -> dict:
    """Write the synthetic closed-set dataset to ``out`` (layout in the module docstring).

    ``ids`` people (classes 1..ids) seen in each of ``sessions`` sessions, ``images_per_session``
    images each per session, plus ``unknown_per_session`` class-0 images per session, from
    ``cameras`` camera styles. Same parameters: nothing is written (``skipped``). Other
    parameters or other files in ``out`` raise DatasetError unless ``force``.
    Returns a summary: root, skipped, seconds, params, images, per-class counts.
    """
    p = make_closed_set_params(ids=ids, sessions=sessions, size=size, seed=seed,
                               images_per_session=images_per_session,
                               unknown_per_session=unknown_per_session, cameras=cameras)
    return write_tree(out, p.to_json(), lambda tmp: _write(tmp, p, progress), meta_name=META_NAME,
                      what="synthetic closed-set dataset", generator="keras-reid synthetic closed set",
                      force=force)


def _write(root: Path, p: ClosedSetParams, progress: bool) -> dict:
    import cv2  # deferred: OpenCV, importing this module stays light (CLI)

    from keras_reid.data.synthetic_render import (  # deferred: OpenCV (the renderer), as above
        Renderer, make_cameras, make_identities)

    cams = make_cameras(p.cameras, np.random.default_rng([p.seed, 3]))
    people = make_identities(range(1, p.ids + 1), np.random.default_rng([p.seed, 4]))
    dressed = outfits(people, p.sessions, p.seed)
    strangers = make_identities([0] * STRANGERS, np.random.default_rng([p.seed, 5]))
    renderer = Renderer(p.size, cams, p.seed)
    quality = {c.index: c.jpeg_quality for c in cams}
    rows, counts = [], {"people": 0, **{k: 0 for k in UNKNOWN_KINDS}, "front": 0, "back": 0, "side": 0}
    for job in tqdm(plan(p), desc="synthesising", unit="img", disable=not live_bar(progress), leave=False):
        rng = np.random.default_rng([p.seed, 22, job["cls"], job["session"], job["frame"]])
        if job["cls"]:
            ident = dressed[(job["cls"], job["session"])]
            pic = renderer.render(ident, job["camera"], rng, view=job["view"],
                                  phase=job["frame"] * 2 * math.pi / 24.0 + ident.walk_offset)
            kind = "person"
            counts["people"] += 1
            counts[job["view"]] += 1
        else:
            kind, pic = _render_unknown(renderer, strangers, job["camera"], rng)
            counts[kind] += 1
        rel = Path(str(job["session"])) / str(job["cls"]) / job["name"]
        (root / rel.parent).mkdir(parents=True, exist_ok=True)
        (root / "masks" / rel.parent).mkdir(parents=True, exist_ok=True)
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(pic.image, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, quality[job["camera"]]])
        ok2, mdata = cv2.imencode(".png", pic.mask)
        if not (ok and ok2):  # pragma: no cover - OpenCV failure
            raise RuntimeError(f"OpenCV could not encode {job['name']}")
        (root / rel).write_bytes(data.tobytes())
        (root / "masks" / rel.parent / (rel.stem + ".png")).write_bytes(mdata.tobytes())
        rows.append((rel.as_posix(), job["cls"], job["session"], job["camera"], job["frame"],
                     job["view"], kind))
    with open(root / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(("path", "identity", "session", "camera", "frame", "view", "kind"))
        w.writerows(rows)
    return {"images": len(rows), "classes": p.ids + 1, **counts}
