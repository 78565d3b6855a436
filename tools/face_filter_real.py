"""Measure the ``face`` filter on real pedestrian crops: face-visible front views vs back views.

The labelled crops are listed in ``tools/face_filter_data/labels.csv`` (one row per crop: file,
source, commit, path in the source, video frame, crop box ``x y w h`` in the source image or
empty for a whole file, view ``front``/``side``/``back``, ``face_visible`` ``yes``/``no`` as
judged by eye, native ``width``/``height`` and a note). The 81 crops of PETS 2009 footage
(OpenCV's ``vtest.avi`` from the Debian package ``opencv-doc``) are committed in
``tools/face_filter_data/images/`` (see its README.md). The others are Market-1501,
DukeMTMC-reID and MSMT17 crops and Market-1501 raw frames from public GitHub repositories, not
part of this repository: ``build`` cuts every crop out of the sources, laid out as
``SOURCES/<owner>+<name>/<path>`` for ``github:owner/name`` rows and
``SOURCES/debian+<package>/<path>`` for ``debian:<package>=<version>`` rows.

    python tools/face_filter_real.py build --sources DIR [--data DIR]
    python tools/face_filter_real.py [measure] [--data DIR] [--source PREFIX] [--json]
                                     [--models full_range,short_range]

The image folder is ``--data``, else ``$KERAS_REID_FACE_DATA``, else ``shared/face_filter_data``
beside the repository, else ``~/.cache/keras_reid/face_filter_real`` (its ``images/`` holds the
files); a crop not found there is taken from the committed ``tools/face_filter_data/images/``.
``measure`` uses every labelled crop whose image is found (``--source debian:`` or
``--source github:NVlabs/DG-Net``: only the rows whose source starts so) and says how many of
each label it found. For every setting (model x crop x input size x upscale) every crop is
scored once with a low detector threshold and the threshold is then swept: TPR is the share of
face-visible front views scored >= t, FPR the share of back views, balanced accuracy
(TPR + 1 - FPR) / 2. A second table shows how the detection rate of face-visible crops depends
on the crop height (crops >= 192 px tall resized down), which tells the size at which the
detector starts to find real faces.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LABELS = HERE / "face_filter_data" / "labels.csv"
COMMITTED = HERE / "face_filter_data"          # images/: the committed PETS 2009 crops
CROPS = ("top", "top_third", "full")
SIZES = ("native", "128x64", "256x128")
UPSCALES = (1, 2, 4)
THRESHOLDS = tuple(round(0.30 + 0.05 * i, 2) for i in range(11))   # 0.30 .. 0.80
HEIGHTS = (64, 96, 128, 192)


def default_data_dir() -> Path:
    """The image folder: $KERAS_REID_FACE_DATA, shared/face_filter_data, or the user cache."""
    env = os.environ.get("KERAS_REID_FACE_DATA")
    if env:
        return Path(env)
    shared = HERE.parent.parent / "shared" / "face_filter_data"
    if (shared / "images").is_dir():
        return shared
    return Path.home() / ".cache" / "keras_reid" / "face_filter_real"


def load_labels(path: Path = LABELS) -> list[dict]:
    """Rows of labels.csv as dicts."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def image_path(data: Path | None, row: dict) -> Path | None:
    """Where the image of one labels.csv row is: ``data/images``, else the committed folder;
    None when neither has it."""
    for folder in ((data,) if data is not None else ()) + (COMMITTED,):
        p = Path(folder) / "images" / row["file"]
        if p.is_file():
            return p
    return None


def present(data: Path | None, rows: list[dict]) -> list[dict]:
    """The rows whose image is found (see :func:`image_path`)."""
    return [r for r in rows if image_path(data, r) is not None]


def load_image(data: Path | None, row: dict) -> np.ndarray:
    """The RGB uint8 crop of one labels.csv row (data folder, else the committed crops)."""
    import cv2

    p = image_path(data, row)
    img = None if p is None else cv2.imread(str(p))
    if img is None:
        raise FileNotFoundError(f"missing image {row['file']} (looked in {data} and {COMMITTED}): "
                                f"run `python tools/face_filter_real.py build --sources DIR`")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def label_counts(rows: list[dict]) -> dict[str, int]:
    """Number of crops per view / face label, e.g. ``front/face``, ``back/no face``."""
    return {f"{v}/{'face' if f else 'no face'}":
            sum(r["view"] == v and (r["face_visible"] == "yes") == f for r in rows)
            for v in ("front", "side", "back") for f in (True, False)}


def _source_file(sources: Path, row: dict) -> Path:
    kind, _, name = row["source"].partition(":")
    if kind == "github":
        return sources / name.replace("/", "+") / row["path"]
    if kind == "debian":
        return sources / ("debian+" + name.split("=")[0]) / row["path"]
    raise ValueError(f"unknown source {row['source']!r}")


def build(sources: Path, data: Path, labels: Path = LABELS) -> int:
    """Cut every labelled crop out of its source file into ``data/images``; fill in the native
    width/height columns of labels.csv if they are empty. A crop whose source is not under
    ``sources`` but which is committed (the PETS crops) is left to the committed copy. Returns
    the number of crops cut."""
    import cv2

    rows = load_labels(labels)
    (data / "images").mkdir(parents=True, exist_ok=True)
    videos: dict[Path, dict[int, np.ndarray]] = {}
    cut = 0
    for row in rows:
        src = _source_file(sources, row)
        if not src.exists():
            if (COMMITTED / "images" / row["file"]).exists():
                continue
            at = f" at commit {row['commit']}" if row["commit"] else ""
            raise FileNotFoundError(f"source file not found: {src} (put {row['source']}{at} "
                                    f"there, or pass the --sources folder that holds it)")
        if row["frame"]:
            frames = videos.setdefault(src, {})
            idx = int(row["frame"])
            if idx not in frames:
                cap = cv2.VideoCapture(str(src))
                cap.set(cv2.CAP_PROP_POS_FRAMES, idx)
                ok, frames[idx] = cap.read()
                cap.release()
                if not ok:
                    raise ValueError(f"cannot read frame {idx} of {src}")
            img = frames[idx]
        else:
            img = cv2.imread(str(src))
            if img is None:
                raise ValueError(f"cannot read image {src}")
        if row["box"]:
            x, y, w, h = (int(v) for v in row["box"].split())
            img = img[max(0, y):y + h, max(0, x):x + w]
        cv2.imwrite(str(data / "images" / row["file"]), img)
        row["width"], row["height"] = str(img.shape[1]), str(img.shape[0])
        cut += 1
    with open(labels, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return cut


def region(shape, crop: str) -> tuple[int, int]:
    """Rows (y0, y1) of an image of ``shape`` given to the detector for ``crop``."""
    h, w = int(shape[0]), int(shape[1])
    if crop == "top":
        return 0, min(h, w)
    if crop == "top_third":
        return 0, max(1, -(-h // 3))
    return 0, h


def resize(img: np.ndarray, size: str) -> np.ndarray:
    """The crop as the filter would see it: native, or resized to HxW (area when shrinking)."""
    import cv2

    if size == "native":
        return img
    h, w = (int(v) for v in size.split("x"))
    interp = cv2.INTER_AREA if h < img.shape[0] else cv2.INTER_CUBIC
    return cv2.resize(img, (w, h), interpolation=interp)


def score_all(images: list[np.ndarray], model: str, crop: str, size: str, upscale: int) -> np.ndarray:
    """Best face score of every image under one setting (detector threshold 0.05)."""
    from keras_reid_plugins.filters.face import FaceConfig, FaceFilter

    cfg = FaceConfig(model=model, threshold=0.05, crop="full", upscale=upscale)
    out = np.zeros(len(images), np.float32)
    with FaceFilter(cfg) as f:
        for i, img in enumerate(images):
            img = resize(img, size)
            y0, y1 = region(img.shape, crop)
            out[i] = f(np.ascontiguousarray(img[y0:y1]))[0]
    return out


def rates(scores: np.ndarray, pos: np.ndarray, neg: np.ndarray, side: np.ndarray) -> list[dict]:
    """TPR / FPR / side rate / balanced accuracy for every threshold of THRESHOLDS."""
    rows = []
    for t in THRESHOLDS:
        tpr = float(np.mean(scores[pos] >= t)) if pos.any() else float("nan")
        fpr = float(np.mean(scores[neg] >= t)) if neg.any() else float("nan")
        sr = float(np.mean(scores[side] >= t)) if side.any() else float("nan")
        rows.append({"threshold": t, "tpr": tpr, "fpr": fpr, "side": sr, "bal_acc": (tpr + 1 - fpr) / 2})
    return rows


def measure(data: Path | None, models=("full_range", "short_range"), source: str = "",
            crops=CROPS, sizes=SIZES, upscales=UPSCALES) -> dict:
    """Every setting's threshold sweep, plus detection rate against crop height, on the labelled
    crops (whose source starts with ``source``) whose images are found."""
    wanted = [r for r in load_labels() if r["source"].startswith(source)]
    if not wanted:
        raise ValueError(f"no labelled crop has a source starting with {source!r}")
    labels = present(data, wanted)
    total, found = label_counts(wanted), label_counts(labels)
    print(f"found {len(labels)} of {len(wanted)} labelled crops"
          f"{f' from {source}' if source else ''}: "
          + ", ".join(f"{k} {found[k]} of {v}" for k, v in total.items() if v), file=sys.stderr)
    if not labels:
        raise FileNotFoundError(f"no crop image found in {data} or {COMMITTED}: "
                                f"run `python tools/face_filter_real.py build --sources DIR`")
    images = [load_image(data, r) for r in labels]
    view = np.array([r["view"] for r in labels])
    face = np.array([r["face_visible"] == "yes" for r in labels])
    pos, neg, side = (view == "front") & face, view == "back", view == "side"
    heights = np.array([img.shape[0] for img in images])
    settings = []
    for model in models:
        for crop in crops:
            for size in sizes:
                for k in upscales:
                    s = score_all(images, model, crop, size, k)
                    sweep = rates(s, pos, neg, side)
                    best = max(sweep, key=lambda r: (_num(r["bal_acc"]), r["threshold"]))
                    settings.append({"model": model, "crop": crop, "size": size, "upscale": k,
                                     "sweep": sweep, "best": best})
                    print(f"  scored {model} {crop} {size} x{k}: best t={best['threshold']:.2f} "
                          f"TPR {best['tpr']:.2f} FPR {best['fpr']:.2f}", file=sys.stderr, flush=True)
    top = max(settings, key=lambda r: _num(r["best"]["bal_acc"]))
    # detection rate vs crop height, with the best setting's model / crop / upscale and threshold
    by_height = []
    t = top["best"]["threshold"]
    big = heights >= 192
    for h in HEIGHTS if big.any() else ():
        size = f"{h}x{h // 2}"
        s = score_all([images[i] for i in np.flatnonzero(big)], top["model"], top["crop"], size,
                      top["upscale"])
        p, n = pos[big], neg[big]
        by_height.append({"height": h, "tpr": float(np.mean(s[p] >= t)) if p.any() else None,
                          "fpr": float(np.mean(s[n] >= t)) if n.any() else None,
                          "n_pos": int(p.sum()), "n_neg": int(n.sum())})
    native_bins = []
    s_native = score_all(images, top["model"], top["crop"], "native", top["upscale"])
    for lo, hi in ((0, 128), (128, 200), (200, 300), (300, 10_000)):
        m = (heights >= lo) & (heights < hi)
        native_bins.append({"heights": f"{lo}-{hi if hi < 10_000 else ''}",
                            "tpr": float(np.mean(s_native[m & pos] >= t)) if (m & pos).any() else None,
                            "fpr": float(np.mean(s_native[m & neg] >= t)) if (m & neg).any() else None,
                            "n_pos": int((m & pos).sum()), "n_neg": int((m & neg).sum())})
    return {"source": source, "counts": found, "labelled": total, "settings": settings, "best": top,
            "by_height": by_height, "native_by_height": native_bins}


def _num(x: float) -> float:
    """``x`` rounded for ties, NaN (no positive or no negative crop) ranked last."""
    return -1.0 if x != x else round(x, 6)


def print_report(res: dict) -> None:
    """Human-readable tables of :func:`measure`'s result."""
    print(f"crops{' from ' + res['source'] if res.get('source') else ''}: "
          + ", ".join(f"{k} {v}" for k, v in res["counts"].items() if v)
          + f" ({sum(res['counts'].values())} of {sum(res['labelled'].values())} labelled)")
    print("\nbest threshold per setting (TPR: face-visible front views, FPR: back views)")
    print(f"{'model':<12}{'crop':<11}{'size':<9}{'up':>3} {'t':>5} {'TPR':>5} {'FPR':>5} {'side':>5} {'bal':>5}"
          f"   TPR/FPR @0.5   @0.6")
    for r in sorted(res["settings"], key=lambda r: -r["best"]["bal_acc"]):
        b = r["best"]
        at = {s["threshold"]: s for s in r["sweep"]}
        print(f"{r['model']:<12}{r['crop']:<11}{r['size']:<9}{r['upscale']:>3} {b['threshold']:>5.2f} "
              f"{b['tpr']:>5.2f} {b['fpr']:>5.2f} {b['side']:>5.2f} {b['bal_acc']:>5.2f}"
              f"   {at[0.5]['tpr']:.2f}/{at[0.5]['fpr']:.2f}    {at[0.6]['tpr']:.2f}/{at[0.6]['fpr']:.2f}")
    top = res["best"]
    print(f"\nbest: {top['model']} crop={top['crop']} size={top['size']} upscale={top['upscale']} "
          f"threshold={top['best']['threshold']:.2f}; sweep:")
    for s in top["sweep"]:
        print(f"  t={s['threshold']:.2f} TPR {s['tpr']:.2f} FPR {s['fpr']:.2f} side {s['side']:.2f} "
              f"bal {s['bal_acc']:.2f}")
    print("\ncrops >= 192 px tall resized to HxH/2 (best setting):"
          + ("" if res["by_height"] else " none"))
    for r in res["by_height"]:
        tpr = "  -  " if r["tpr"] is None else f"{r['tpr']:.2f}"
        fpr = "  -  " if r["fpr"] is None else f"{r['fpr']:.2f}"
        print(f"  {r['height']:>4}x{r['height'] // 2:<4} TPR {tpr} (n={r['n_pos']})  "
              f"FPR {fpr} (n={r['n_neg']})")
    print("\nnative crops by height (best setting):")
    for r in res["native_by_height"]:
        tpr = "  -  " if r["tpr"] is None else f"{r['tpr']:.2f}"
        fpr = "  -  " if r["fpr"] is None else f"{r['fpr']:.2f}"
        print(f"  {r['heights']:<9} TPR {tpr} (n={r['n_pos']})  FPR {fpr} (n={r['n_neg']})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", nargs="?", default="measure", choices=("measure", "build"))
    ap.add_argument("--data", type=Path, default=None, help="image folder (see the module doc)")
    ap.add_argument("--sources", type=Path, help="build: folder holding the source files")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--models", default="full_range,short_range")
    ap.add_argument("--source", default="", help="measure: only the labels.csv rows whose source "
                                                 "starts with this, e.g. debian: (the PETS crops)")
    a = ap.parse_args(argv)
    data = a.data or default_data_dir()
    try:
        if a.command == "build":
            if a.sources is None:
                ap.error("build needs --sources DIR")
            n = build(a.sources, data)
            print(f"wrote {n} crops to {data / 'images'}")
            return 0
        res = measure(data, tuple(m for m in a.models.split(",") if m), a.source)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        print_report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
