"""The ``face`` filter's defaults on real pedestrian crops labelled by eye.

The labels are committed (tools/face_filter_data/labels.csv: source, commit, path, crop box,
view, face_visible); the images are public re-ID and surveillance material that is not, so the
image tests skip unless the image folder of tools/face_filter_real.py is present
($KERAS_REID_FACE_DATA, shared/face_filter_data beside the repository, or
~/.cache/keras_reid/face_filter_real; ``python tools/face_filter_real.py build --sources DIR``).
"""
import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from keras_reid.registry import REGISTRY

TOOL = Path(__file__).resolve().parents[1] / "tools" / "face_filter_real.py"

# Chosen from the measurement: the defaults score these faces >= 0.72 at native size and at
# 128x64 (the former default, the top square at 0.6, scored the four Market crops 0.0-0.22),
# and no back view here reaches 0.41 at any threshold.
FRONT = ["dg_010.png", "dg_061.png", "dg_084.png", "dg_092.png"]
BACK = ["dg_056.png", "dg_086.png", "mk_q0.png", "mk_10.png"]


@pytest.fixture(scope="module")
def tool():
    """tools/face_filter_real.py as a module."""
    spec = importlib.util.spec_from_file_location("face_filter_real", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def real(tool):
    """(data folder, labels) or skip when the images are not on this machine."""
    data = tool.default_data_dir()
    rows = tool.load_labels()
    if not all((data / "images" / r["file"]).exists() for r in rows):
        pytest.skip(f"real crops not found in {data / 'images'} (see tools/face_filter_real.py)")
    return data, {r["file"]: r for r in rows}


def test_labels_are_complete(tool):
    rows = tool.load_labels()
    assert len(rows) >= 200 and len({r["file"] for r in rows}) == len(rows)
    for r in rows:
        assert r["view"] in ("front", "side", "back") and r["face_visible"] in ("yes", "no"), r
        assert r["source"].startswith(("github:", "debian:")) and r["path"], r
        assert not r["source"].startswith("github:") or len(r["commit"]) == 40, r
        assert int(r["width"]) > 0 and int(r["height"]) > 0, r
        assert r["view"] != "back" or r["face_visible"] == "no", r
    n = Counter((r["view"], r["face_visible"]) for r in rows)
    assert n["front", "yes"] >= 60 and n["back", "no"] >= 60
    assert {f for f in FRONT + BACK} <= {r["file"] for r in rows}


@pytest.mark.usefixtures("face_models")
@pytest.mark.parametrize("size", ["native", "128x64"])
def test_defaults_find_real_faces_not_backs(tool, real, size):
    data, rows = real
    assert all(rows[f]["view"] == "front" and rows[f]["face_visible"] == "yes" for f in FRONT)
    assert all(rows[f]["view"] == "back" for f in BACK)
    with REGISTRY.create("filter", {"type": "face"}) as face:
        front = [face(tool.resize(tool.load_image(data, rows[f]), size))[0] for f in FRONT]
        back = [face(tool.resize(tool.load_image(data, rows[f]), size))[0] for f in BACK]
    assert min(front) >= 0.55, front
    assert max(back) == 0.0, back


@pytest.mark.usefixtures("face_models")
def test_defaults_rates_on_all_labelled_crops_at_128x64(tool, real):
    # Measured (tools/face_filter_real.py): TPR 0.79 on 98 face-visible fronts, FPR 0.20 on
    # 66 backs; the former default (top square, 0.6) had TPR 0.33.
    data, rows = real
    rows = list(rows.values())
    with REGISTRY.create("filter", {"type": "face"}) as face:
        s = np.array([face(tool.resize(tool.load_image(data, r), "128x64"))[0] for r in rows])
    pos = np.array([r["view"] == "front" and r["face_visible"] == "yes" for r in rows])
    neg = np.array([r["view"] == "back" for r in rows])
    tpr, fpr = float(np.mean(s[pos] > 0)), float(np.mean(s[neg] > 0))
    assert tpr >= 0.7 and fpr <= 0.3, (tpr, fpr)
