"""The built-in synthetic dataset: Market layout and names, splits, masks, keypoints,
determinism, re-runs and atomic writes, the dataset plugin and the CLI."""
import hashlib
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from keras_reid.cli import main
from keras_reid.data.synthetic import (SPLIT_FOLDERS, load_keypoints, mask_path, plan_dataset,
                                       make_params, synthesize)
from keras_reid.errors import DatasetError

NAME = re.compile(r"^(-?\d+)_c(\d)s(\d)_(\d{6})_(\d{2})\.jpg$")
SMALL = dict(ids=6, cameras=3, images_per_id_camera=2, distractors=3, junk=2)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "ds"
    summary = synthesize(root, **SMALL)
    return root, summary


def parse(folder):
    return [(f, *map(int, NAME.match(f.name).groups())) for f in sorted(folder.iterdir())]


def test_layout_and_market_names(small):
    root, summary = small
    assert not summary["skipped"]
    for split, folder in SPLIT_FOLDERS.items():
        files = sorted((root / folder).iterdir())
        assert files and len(files) == summary["images"][split]
        for f in files:
            m = NAME.match(f.name)
            assert m, f.name
            pid = int(m.group(1))
            assert 1 <= int(m.group(2)) <= SMALL["cameras"] and 1 <= int(m.group(3)) <= 6
            assert m.group(1) == ("-1" if pid < 0 else f"{pid:04d}")
    gallery = parse(root / "bounding_box_test")
    assert sum(p == -1 for _, p, *_ in gallery) == SMALL["junk"]
    assert sum(p == 0 for _, p, *_ in gallery) == SMALL["distractors"]
    for folder in ("bounding_box_train", "query"):
        assert all(p > 0 for _, p, *_ in parse(root / folder))
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["params"]["ids"] == SMALL["ids"] and meta["params"]["size"] == [128, 64]


def test_splits_follow_the_market_protocol(small):
    root, _ = small
    train = {p for _, p, *_ in parse(root / "bounding_box_train")}
    query = parse(root / "query")
    gallery = [g for g in parse(root / "bounding_box_test") if g[1] > 0]
    test = {p for _, p, *_ in gallery}
    assert len(train) == SMALL["ids"] // 2 and not train & test
    assert {p for _, p, *_ in query} <= test
    gal_cams = {}
    for _, p, c, *_ in gallery:
        gal_cams.setdefault(p, set()).add(c)
    for _, p, c, *_ in query:
        assert gal_cams[p] - {c}, "every query has a gallery match in another camera"
        assert c in gal_cams[p], "and a same-camera gallery image (ignored by the protocol)"
    # the same (pid, sequence) is seen by several cameras: camera-pair train pairs exist
    seen = {}
    for _, p, c, s, *_ in parse(root / "bounding_box_train"):
        seen.setdefault((p, s), set()).add(c)
    assert any(len(cams) > 1 for cams in seen.values())


def test_masks_are_exact_binary_and_cover_the_person(small):
    root, _ = small
    kps = load_keypoints(root / "annotations" / "keypoints-bounding_box_train.csv")
    for img_path in sorted((root / "bounding_box_train").iterdir())[:20]:
        img = cv2.imread(str(img_path))
        mask = cv2.imread(str(mask_path(root, img_path)), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.shape == img.shape[:2] == (128, 64)
        assert set(np.unique(mask)) <= {0, 255}
        area = (mask > 0).mean()
        assert 0.08 < area < 0.6, (img_path.name, area)
        pts = kps[img_path.name]
        body = [i for i in range(1, 14) if pts[i, 0] >= 0]   # neck .. ankles
        inside = [mask[min(127, y), min(63, x)] > 0 or
                  mask[max(0, y - 2):y + 3, max(0, x - 2):x + 3].any() for y, x in pts[body]]
        assert np.mean(inside) >= 0.9, img_path.name


def test_keypoint_and_attribute_files(small):
    root, summary = small
    for split, folder in SPLIT_FOLDERS.items():
        text = (root / "annotations" / f"keypoints-{folder}.csv").read_text().splitlines()
        assert text[0] == "name:keypoints_y:keypoints_x"
        assert len(text) - 1 == summary["images"][split]
        name, ys, xs = text[1].split(":")
        assert NAME.match(name) and len(json.loads(ys)) == len(json.loads(xs)) == 18
        kps = load_keypoints(root / "annotations" / f"keypoints-{folder}.csv")
        allk = np.stack(list(kps.values()))
        assert ((allk[..., 0] == -1) | ((allk[..., 0] >= 0) & (allk[..., 0] < 128))).all()
        assert ((allk[..., 1] == -1) | ((allk[..., 1] >= 0) & (allk[..., 1] < 64))).all()
        rows = (root / "annotations" / f"attributes-{folder}.csv").read_text().splitlines()
        assert rows[0] == "name,pid,camera,sequence,frame,view,occluded,kind"
        assert len(rows) - 1 == summary["images"][split]
    attrs = [r.split(",") for r in
             (root / "annotations" / "attributes-bounding_box_train.csv").read_text().splitlines()[1:]]
    kps = load_keypoints(root / "annotations" / "keypoints-bounding_box_train.csv")
    views = {a[5] for a in attrs}
    assert views <= {"front", "back", "side"} and len(views) >= 2
    for a in attrs:   # eyes are annotated on front views and never on back views
        eyes = kps[a[0]][14:16, 0]
        if a[5] == "back":
            assert (eyes == -1).all()
        elif a[5] == "front" and a[6] == "0":
            assert (eyes >= 0).all()


def test_front_view_keypoints_are_mirrored(small):
    root, _ = small
    attrs = [r.split(",") for r in
             (root / "annotations" / "attributes-bounding_box_train.csv").read_text().splitlines()[1:]]
    kps = load_keypoints(root / "annotations" / "keypoints-bounding_box_train.csv")
    for a in attrs:
        rsho, lsho = kps[a[0]][2], kps[a[0]][5]
        if a[6] == "0" and rsho[1] >= 0 and lsho[1] >= 0:
            if a[5] == "front":      # the person's right shoulder is on the image's left
                assert rsho[1] < lsho[1]
            elif a[5] == "back":
                assert rsho[1] > lsho[1]


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(small, tmp_path):
    root, _ = small
    again = tmp_path / "again"
    synthesize(again, **SMALL)
    assert _digest(again) == _digest(root)
    other = tmp_path / "other"
    synthesize(other, **{**SMALL, "seed": 1})
    assert _digest(other) != _digest(root)


def test_other_size_scales_keypoints_to_128x64(tmp_path):
    root = tmp_path / "big"
    synthesize(root, ids=2, cameras=2, size="256x128", images_per_id_camera=2, distractors=0, junk=0)
    img = next((root / "bounding_box_train").iterdir())
    assert cv2.imread(str(img)).shape == (256, 128, 3)
    assert cv2.imread(str(mask_path(root, img)), cv2.IMREAD_UNCHANGED).shape == (256, 128)
    kps = np.stack(list(load_keypoints(root / "annotations/keypoints-bounding_box_train.csv").values()))
    assert kps[..., 0].max() < 128 and kps[..., 1].max() < 64 and kps[..., 0].max() > 100


def test_rerun_is_skipped_and_conflicts_are_errors(small, tmp_path):
    root, _ = small
    assert synthesize(root, **SMALL)["skipped"]
    with pytest.raises(DatasetError, match="other parameters.*--force"):
        synthesize(root, **{**SMALL, "ids": 8})
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty"):
        synthesize(busy, ids=2, cameras=2)
    summary = synthesize(busy, ids=2, cameras=2, force=True)
    assert not summary["skipped"] and not (busy / "notes.txt").exists()
    assert (busy / "synthetic.json").is_file()


def test_killed_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    from keras_reid.data import synthetic_render

    calls = {"n": 0}
    real = synthetic_render.Renderer.render

    def dying(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(synthetic_render.Renderer, "render", dying)
    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path / "ds", ids=4, cameras=2)
    assert list(tmp_path.iterdir()) == []


def test_folders_a_killed_synthesis_left_are_removed_by_the_next(tmp_path):
    """SIGKILL mid-synthesis leaves `.ds.tmp-<host>-<pid>` (no except clause runs); the next
    synthesis on this host deletes it once that pid is gone, and keeps a live writer's folder."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from keras_reid.data.synthetic import _process_tag

    code = ("import sys; from keras_reid.data.synthetic import synthesize; "
            "synthesize(sys.argv[1], ids=60, cameras=6)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "ds")])
    leftover = tmp_path / f".ds.tmp-{_process_tag(proc.pid)}"
    deadline = time.monotonic() + 120
    while not (leftover / "bounding_box_train").is_dir() or not any((leftover / "bounding_box_train").iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "synthesis ended before the kill"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert leftover.is_dir()
    live = tmp_path / f".ds.tmp-{_process_tag(os.getppid())}"    # a live process's folder
    live.mkdir()
    summary = synthesize(tmp_path / "ds", ids=4, cameras=2)
    assert summary["leftovers_removed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ds", live.name])


def test_bad_parameters_are_user_errors():
    for kwargs in ({"cameras": 10}, {"cameras": 1}, {"ids": 1}, {"size": "128by64"},
                   {"images_per_id_camera": 1}):
        with pytest.raises(DatasetError):
            make_params(**kwargs)


def test_plan_is_balanced_and_names_unique():
    jobs, info = plan_dataset(make_params(ids=40))
    names = [j.name for j in jobs]
    assert len(names) == len(set(names))
    assert len(info["train_pids"]) == len(info["test_pids"]) == 20
    cams = {j.camera for j in jobs}
    assert cams == set(range(1, 7))


def test_dataset_plugin_creates_then_reads(tmp_path):
    from keras_reid.registry import REGISTRY

    root = tmp_path / "syn"
    cfg = {"type": "synthetic", "root": str(root), "ids": 4, "cameras": 2, "size": "128x64"}
    ds = REGISTRY.create("dataset", cfg).load()
    assert (root / "synthetic.json").is_file()
    assert set(ds.splits) == {"train", "query", "gallery"} and ds.name == "synthetic"
    assert all(r.pid > 0 for r in ds["train"]) and all(r.pid >= 0 for r in ds["gallery"])
    assert len(REGISTRY.create("dataset", cfg).load()["train"]) == len(ds["train"])  # reused
    with pytest.raises(DatasetError, match="other parameters"):
        REGISTRY.create("dataset", {**cfg, "seed": 3}).load()
    with pytest.raises(DatasetError, match="keras-reid data synth"):
        REGISTRY.create("dataset", {**cfg, "root": str(tmp_path / "none"),
                                    "create_if_missing": False}).load()


def test_cli_synth(tmp_path):
    out = tmp_path / "cli"
    res = CliRunner().invoke(main, ["data", "synth", str(out), "--ids", "4", "--cameras", "2",
                                    "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert "train" in res.output and "gallery" in res.output and "images/s" in res.output
    res = CliRunner().invoke(main, ["data", "synth", str(out), "--ids", "4", "--cameras", "2",
                                    "--seed", "2"])
    assert res.exit_code == 0 and "nothing to do" in res.output
    res = CliRunner().invoke(main, ["data", "synth", str(out), "--ids", "4", "--seed", "3"])
    assert res.exit_code == 1 and "--force" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["data", "synth", str(tmp_path / "x"), "--size", "big"])
    assert res.exit_code != 0 and "128x64" in res.output
    assert "Market-1501" in CliRunner().invoke(main, ["data", "synth", "--help"]).output


def test_a_dataset_of_another_format_version_is_refused_not_mixed(tmp_path):
    """A folder written by an older keras-reid (other look) is refused with its own message, by
    the dataset plugin (nothing overwritten) and by `data synth` (which --force rewrites)."""
    from keras_reid.data.synthetic import FORMAT_VERSION
    from keras_reid.registry import REGISTRY

    root = tmp_path / "syn"
    cfg = {"type": "synthetic", "root": str(root), "ids": 4, "cameras": 2, "size": "128x64"}
    REGISTRY.create("dataset", cfg).load()
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["params"]["version"] == FORMAT_VERSION
    meta["params"]["version"] = FORMAT_VERSION - 1
    (root / "synthetic.json").write_text(json.dumps(meta))
    before = sorted(p.name for p in (root / "bounding_box_train").iterdir())
    with pytest.raises(DatasetError, match=f"another keras-reid version \\(format {FORMAT_VERSION - 1}, "
                                           f"this one writes {FORMAT_VERSION}.*delete that folder"):
        REGISTRY.create("dataset", cfg).load()
    assert sorted(p.name for p in (root / "bounding_box_train").iterdir()) == before
    with pytest.raises(DatasetError, match="another keras-reid version.*--force"):
        synthesize(root, ids=4, cameras=2)
    assert not synthesize(root, ids=4, cameras=2, force=True)["skipped"]
    REGISTRY.create("dataset", cfg).load()   # the rewritten folder is the current version


class _Stream:
    """A stderr stand-in that records writes and claims to be (or not to be) a terminal."""

    def __init__(self, tty: bool):
        self.tty, self.text = tty, []

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text.append(s)

    def flush(self):
        pass


@pytest.mark.parametrize("tty", [False, True])
def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch, tty):
    # in a log file tqdm's carriage-return updates would pile up into one long line
    stream = _Stream(tty)
    monkeypatch.setattr("sys.stderr", stream)
    synthesize(tmp_path / "ds", ids=2, cameras=2, images_per_id_camera=2, distractors=0, junk=0,
               progress=True)
    assert ("synthesising" in "".join(stream.text)) == tty
