"""Rank a gallery of images for query images and draw the ranked lists (``keras-reid search``).

Distances are Euclidean between L2-normalised features (the evaluate stage's default metric),
ties broken by gallery order. Unlike the evaluation protocol nothing is left out: a query that is
also in the gallery finds itself first, at distance 0. Where file names carry a person id and a
camera (Market-style names, :func:`keras_reid.inference.parse_identity`) they are shown, and a
gallery image is a match when its person is the query's.
"""
from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keras_reid import io
from keras_reid.inference import parse_identity
from keras_reid.metrics import pairwise_distance

MATCH, MISMATCH, UNKNOWN, QUERY = (0, 170, 0), (210, 0, 0), (150, 150, 150), (40, 40, 40)
"""Border colours (RGB): same person, another person, identity unknown, the query."""


@dataclass(frozen=True)
class Hit:
    """One ranked gallery image."""

    rank: int
    path: str
    distance: float
    pid: int
    camid: int
    match: bool | None
    """Same person as the query; None when either name carries no identity."""


@dataclass(frozen=True)
class RankedList:
    """A query image and its closest gallery images."""

    path: str
    pid: int
    camid: int
    hits: list[Hit]


def rank(query_paths: list[str], qf: np.ndarray, gallery_paths: list[str], gf: np.ndarray,
         top: int = 10) -> list[RankedList]:
    """The ``top`` closest gallery images of each query (Euclidean distance of the features)."""
    # float64: a query that is also in the gallery is at distance ~1e-7, not sqrt(float32 rounding)
    dist = pairwise_distance(np.asarray(qf, np.float64), np.asarray(gf, np.float64))
    g_ids = [parse_identity(p) for p in gallery_paths]
    out = []
    for qi, qpath in enumerate(query_paths):
        qpid, qcam = parse_identity(qpath)
        order = np.argsort(dist[qi], kind="stable")[:top]
        hits = []
        for r, gi in enumerate(order, 1):
            gpid, gcam = g_ids[gi]
            match = None if qpid < 0 or gpid < 0 else gpid == qpid
            hits.append(Hit(r, gallery_paths[gi], float(dist[qi, gi]), gpid, gcam, match))
        out.append(RankedList(qpath, qpid, qcam, hits))
    return out


def _who(pid: int, camid: int) -> str:
    return "" if pid < 0 else f"person {pid}, camera {camid}"


def text_lines(lists: list[RankedList]) -> list[str]:
    """The ranked lists as text: per query a header and a table (rank, distance, person, camera,
    same person, image)."""
    lines = []
    for n, rl in enumerate(lists, 1):
        who = _who(rl.pid, rl.camid)
        lines.append(f"query {n}: {rl.path}" + (f" ({who})" if who else ""))
        lines.append(f"  {'rank':>4}  {'distance':>8}  {'person':>6}  {'camera':>6}  {'same':>4}  image")
        for h in rl.hits:
            same = {True: "yes", False: "no", None: "-"}[h.match]
            pid = str(h.pid) if h.pid >= 0 else "-"
            cam = str(h.camid) if h.camid >= 0 else "-"
            lines.append(f"  {h.rank:>4}  {h.distance:>8.4f}  {pid:>6}  {cam:>6}  {same:>4}  {h.path}")
    return lines


def _colour(match: bool | None) -> tuple[int, int, int]:
    return UNKNOWN if match is None else (MATCH if match else MISMATCH)


def _thumb(path: str, size: tuple[int, int]) -> np.ndarray:
    import cv2  # deferred: OpenCV, keeps CLI startup light

    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        return np.full((size[0], size[1], 3), 255, np.uint8)
    img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img[..., ::-1])


def _tile(path: str, colour, caption: list[str], size: tuple[int, int], border: int = 3) -> np.ndarray:
    """An image framed in ``colour`` above a white strip with the caption lines (RGB uint8)."""
    import cv2  # deferred: OpenCV, keeps CLI startup light

    h, w = size
    framed = np.empty((h + 2 * border, w + 2 * border, 3), np.uint8)
    framed[:] = colour
    framed[border:border + h, border:border + w] = _thumb(path, size)
    line_h = 12
    strip = np.full((line_h * 2 + 4, framed.shape[1], 3), 255, np.uint8)
    for i, text in enumerate(caption[:2]):
        cv2.putText(strip, text, (2, line_h * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (30, 30, 30),
                    1, cv2.LINE_AA)
    return np.concatenate([framed, strip], 0)


def render_png(lists: list[RankedList], out: str | os.PathLike, size: tuple[int, int] = (128, 64)) -> Path:
    """One row per query: the query (dark frame) and its ranked images, each framed green (same
    person), red (another person) or grey (unknown), captioned with rank, distance, person and
    camera. Written atomically; returns the path."""
    import cv2  # deferred: OpenCV, keeps CLI startup light

    top = max((len(rl.hits) for rl in lists), default=0)
    rows = []
    for rl in lists:
        tiles = [_tile(rl.path, QUERY, ["query", f"id {rl.pid} c{rl.camid}" if rl.pid >= 0 else ""], size)]
        for h in rl.hits:
            who = f"id {h.pid} c{h.camid}" if h.pid >= 0 else ""
            tiles.append(_tile(h.path, _colour(h.match), [f"{h.rank}: {h.distance:.3f}", who], size))
        while len(tiles) < top + 1:
            tiles.append(np.full_like(tiles[0], 255))
        gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([t for tile in tiles for t in (tile, gap)], 1))
    picture = np.concatenate(rows, 0) if rows else np.full((8, 8, 3), 255, np.uint8)
    with io.atomic_path(out, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), picture[..., ::-1]):
            raise OSError(f"could not write {out}")
    return Path(out)


def _data_uri(path: str, size: tuple[int, int]) -> str:
    import cv2  # deferred: OpenCV, keeps CLI startup light

    ok, png = cv2.imencode(".png", _thumb(path, size)[..., ::-1])
    return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode("ascii") if ok else ""


def render_html(lists: list[RankedList], out: str | os.PathLike, model: str = "",
                size: tuple[int, int] = (128, 64)) -> Path:
    """A self-contained HTML page (images embedded, nothing fetched at view time): per query a
    row of framed images with rank, distance, person and camera. Written atomically."""
    esc = html.escape
    css = ("body{font-family:sans-serif;margin:1em}.row{display:flex;gap:6px;margin:0 0 14px;"
           "align-items:flex-start}.t{text-align:center;font-size:11px;width:%dpx}"
           ".t img{border:3px solid #999;display:block;width:%dpx;height:%dpx}"
           ".q img{border-color:#282828}.m img{border-color:#00aa00}.x img{border-color:#d20000}"
           "p.s{color:#555;font-size:12px}" % (size[1] + 6, size[1], size[0]))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>keras-reid search</title>"
             f"<style>{css}</style></head><body><h1>Ranked lists</h1>",
             f"<p class='s'>model: {esc(model)}; Euclidean distance of L2-normalised features; "
             "frame: green = same person, red = another person, grey = identity unknown "
             "(from Market-style file names)</p>"]
    for n, rl in enumerate(lists, 1):
        who = _who(rl.pid, rl.camid)
        parts.append(f"<h3>query {n}: {esc(Path(rl.path).name)}{' (' + esc(who) + ')' if who else ''}</h3>"
                     "<div class='row'>")
        parts.append(f"<div class='t q'><img src='{_data_uri(rl.path, size)}' title='{esc(rl.path)}'>query</div>")
        for h in rl.hits:
            cls = {True: "m", False: "x", None: ""}[h.match]
            ident = f"<br>id {h.pid} c{h.camid}" if h.pid >= 0 else ""
            parts.append(f"<div class='t {cls}'><img src='{_data_uri(h.path, size)}' title='{esc(h.path)}'>"
                         f"{h.rank}: {h.distance:.3f}{ident}</div>")
        parts.append("</div>")
    parts.append("</body></html>\n")
    return io.write_text(out, "".join(parts))
