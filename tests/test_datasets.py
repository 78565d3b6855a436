"""Dataset readers, layout detection and `keras-reid data info`, on tiny fake trees of empty files.

The image files are empty: a reader that tried to decode them would fail.
"""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from keras_reid.cli import main
from keras_reid.data.layout import detect_layout, load_dataset
from keras_reid.errors import DatasetError, UserError
from keras_reid.registry import REGISTRY


def touch(root: Path, *names: str) -> None:
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def load(kind: str, **params):
    return REGISTRY.get("dataset", kind).create(params).load()


MARKET_FILES = (
    "bounding_box_train/0002_c1s1_000451_03.jpg",
    "bounding_box_train/0002_c2s1_000551_01.jpg",
    "bounding_box_train/0007_c5s3_012345_00.jpg",
    "bounding_box_train/Thumbs.db",
    "query/0003_c1s2_000101_00.jpg",
    "query/0004_c6s1_000201_00.jpg",
    "bounding_box_test/0003_c2s1_000301_01.jpg",
    "bounding_box_test/0004_c3s1_000401_02.jpg",
    "bounding_box_test/0000_c1s1_000151_01.jpg",
    "bounding_box_test/0000_c4s2_000161_01.jpg",
    "bounding_box_test/-1_c1s1_000401_03.jpg",
    "bounding_box_test/Thumbs.db",
)


@pytest.fixture
def market(tmp_path):
    root = tmp_path / "Market-1501-v15.09.15"
    touch(root, *MARKET_FILES)
    return root


# ---------------------------------------------------------------- Market-1501
def test_market_reads_splits_fields_junk_and_distractors(market):
    ds = load("market1501", root=str(market))
    assert list(ds.splits) == ["train", "query", "gallery"] and ds.kind == "retrieval"
    train = ds["train"]
    assert [(r.pid, r.camid, r.sequence, r.frame) for r in train] == [
        (2, 1, 1, 451), (2, 2, 1, 551), (7, 5, 3, 12345)]
    assert all(Path(r.path).is_absolute() and Path(r.path).exists() for r in train)
    gallery = ds["gallery"]
    assert len(gallery) == 4                              # junk dropped, Thumbs.db ignored
    assert ds.num_ignored == 2                            # ... and counted (both Thumbs.db)
    assert not any(r.is_junk for r in gallery)
    assert sum(r.is_distractor for r in gallery) == 2     # distractors kept as negatives
    rows = {row["split"]: row for row in ds.summary()}
    assert rows["gallery"] == {"split": "gallery", "identities": 2, "images": 4, "cameras": 4,
                               "distractors": 2}
    assert rows["query"]["cameras"] == 2


def test_market_include_junk(market):
    ds = load("market1501", root=str(market), include_junk=True)
    assert sum(r.is_junk for r in ds["gallery"]) == 1 and len(ds["gallery"]) == 5


def test_read_market_layout_function_and_parent_folder(market):
    from keras_reid_plugins.datasets.market import parse_market_name, read_market_layout

    ds = read_market_layout(market, name="synthetic")
    assert ds.name == "synthetic" and len(ds["train"]) == 3
    # the folder holding the extracted archive works too
    ds2 = read_market_layout(market.parent)
    assert ds2.root == str(market) and len(ds2["query"]) == 2
    assert parse_market_name("0002_c1s1_000451_03.jpg") == (2, 1, 1, 451)
    assert parse_market_name("-1_c3s2_000001_00.jpg") == (-1, 3, 2, 1)
    assert parse_market_name("Thumbs.db") is None
    assert parse_market_name("0002_c1s1_000451_03.png") is None


def test_market_missing_root_and_folder_messages(tmp_path, market):
    with pytest.raises(DatasetError, match=r"market1501 root .*nowhere does not exist") as e:
        load("market1501", root=str(tmp_path / "nowhere"))
    assert "\n" not in str(e.value) and "KERAS_REID_DATA" in str(e.value)
    for sub in ("query", "bounding_box_test"):
        (market / sub).rename(market / f"{sub}.bak")
        with pytest.raises(DatasetError) as e:
            load("market1501", root=str(market))
        msg = str(e.value)
        assert f"has no folder '{sub}'" in msg and "bounding_box_train/, query/, bounding_box_test/" in msg
        assert "datasets.<name>.root" in msg and "\n" not in msg
        (market / f"{sub}.bak").rename(market / sub)
    assert len(load("market1501", root=str(market))["query"]) == 2


def test_market_empty_split_is_an_error(market):
    for f in (market / "query").iterdir():
        f.unlink()
    touch(market, "query/readme.txt")
    with pytest.raises(DatasetError, match=r"split 'query' is empty: .*query has no images named like "
                                           r"0002_c1s1_000451_03.jpg \(1 files whose names do not match\)"):
        load("market1501", root=str(market))


def test_market_config_is_strict(market):
    with pytest.raises(ValidationError):
        REGISTRY.get("dataset", "market1501").create({"root": str(market), "inclde_junk": True})


# ---------------------------------------------------------------- DukeMTMC-reID
def test_dukemtmc(tmp_path):
    touch(tmp_path, "bounding_box_train/0001_c2_f0046182.jpg", "bounding_box_train/0001_c8_f0100000.jpg",
          "query/0005_c1_f0000001.jpg", "bounding_box_test/0005_c3_f0000002.jpg",
          "bounding_box_test/0000_c4_f0000003.jpg")
    ds = load("dukemtmc", root=str(tmp_path))
    assert [(r.pid, r.camid, r.sequence, r.frame) for r in ds["train"]] == [
        (1, 2, 1, 46182), (1, 8, 1, 100000)]
    assert sum(r.is_distractor for r in ds["gallery"]) == 1
    assert detect_layout(tmp_path) == "dukemtmc"
    with pytest.raises(DatasetError, match="has no folder 'bounding_box_train'.*DukeMTMC-reID layout"):
        load("dukemtmc", root=str(tmp_path / "query"))


# ---------------------------------------------------------------- MSMT17
MSMT_TRAIN = ["0000/0000_000_01_0303morning_0015_0.jpg 0", "0000/0000_001_07_0303noon_0100_1.jpg 0",
              "0001/0001_000_15_0304afternoon_0200_0.jpg 1"]
MSMT_VAL = ["0002/0002_000_03_0303morning_0300_0.jpg 2"]
MSMT_QUERY = ["0000/0000_000_02_0113morning_0011_0.jpg 0"]
MSMT_GALLERY = ["0000/0000_003_05_0113noon_0500_0.jpg 0", "0001/0001_000_11_0113noon_0600_1.jpg 1"]


def make_msmt(root: Path, train_dir="train", test_dir="test"):
    for fname, lines, sub in (("list_train.txt", MSMT_TRAIN, train_dir), ("list_val.txt", MSMT_VAL, train_dir),
                              ("list_query.txt", MSMT_QUERY, test_dir),
                              ("list_gallery.txt", MSMT_GALLERY, test_dir)):
        (root / fname).parent.mkdir(parents=True, exist_ok=True)
        (root / fname).write_text("\n".join(lines) + "\n")
        touch(root, *(f"{sub}/{line.split()[0]}" for line in lines))


@pytest.mark.parametrize("dirs", [("train", "test"), ("mask_train_v2", "mask_test_v2")])
def test_msmt17_v1_and_v2(tmp_path, dirs):
    make_msmt(tmp_path, *dirs)
    ds = load("msmt17", root=str(tmp_path))
    assert list(ds.splits) == ["train", "query", "gallery"]
    assert [(r.pid, r.camid, r.frame) for r in ds["train"]] == [(0, 1, 15), (0, 7, 100), (1, 15, 200),
                                                               (2, 3, 300)]
    assert ds["gallery"][1].camid == 11 and Path(ds["gallery"][1].path).exists()
    assert Path(ds["train"][0].path).parent.parent.name == dirs[0]
    separate = load("msmt17", root=str(tmp_path), merge_val=False)
    assert len(separate["train"]) == 3 and len(separate["val"]) == 1
    assert detect_layout(tmp_path) == "msmt17"


def test_msmt17_errors(tmp_path):
    make_msmt(tmp_path)
    (tmp_path / "list_query.txt").write_text("0000/0000_000_02_0113morning_0011_0.jpg\n")
    with pytest.raises(DatasetError, match=r"list_query.txt:1: expected 'RELATIVE/PATH.jpg LABEL'"):
        load("msmt17", root=str(tmp_path))
    (tmp_path / "list_query.txt").write_text("\n".join(MSMT_QUERY))
    (tmp_path / "test").rename(tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match=r"has no folder 'test' or 'mask_test_v2'"):
        load("msmt17", root=str(tmp_path))
    (tmp_path / "elsewhere").rename(tmp_path / "test")
    (tmp_path / "list_gallery.txt").unlink()
    with pytest.raises(DatasetError, match=r"has no file 'list_gallery.txt'.*MSMT17 layout"):
        load("msmt17", root=str(tmp_path))


# ---------------------------------------------------------------- CUHK03-NP
def test_cuhk03_np_variants(tmp_path):
    for variant, n in (("detected", 2), ("labeled", 1)):
        touch(tmp_path, *(f"{variant}/bounding_box_train/{i + 1:04d}_c1_{i + 1}.png" for i in range(n)),
              f"{variant}/query/0100_c1_1.png", f"{variant}/bounding_box_test/0100_c2_6.png")
    det = load("cuhk03_np", root=str(tmp_path))
    lab = load("cuhk03_np", root=str(tmp_path), variant="labeled")
    assert len(det["train"]) == 2 and len(lab["train"]) == 1
    assert "detected" in det["train"][0].path and "labeled" in lab["train"][0].path
    assert (det["gallery"][0].pid, det["gallery"][0].camid, det["gallery"][0].frame) == (100, 2, 6)
    assert det.name == "cuhk03_np/detected"
    assert detect_layout(tmp_path) == "cuhk03_np"
    with pytest.raises(ValidationError):
        load("cuhk03_np", root=str(tmp_path), variant="both")
    import shutil
    shutil.rmtree(tmp_path / "labeled" / "query")
    with pytest.raises(DatasetError, match=r"has no folder 'labeled/query'.*CUHK03-NP layout"):
        load("cuhk03_np", root=str(tmp_path), variant="labeled")


# ---------------------------------------------------------------- closed set
def test_closed_set_session_folders_leave_one_out(tmp_path):
    touch(tmp_path, "session_1/0/a.jpg", "session_1/1/b.jpg", "session_1/2/c.png",
          "session_2/1/d.jpg", "session_2/2/e.jpg", "session_2/2/notes.txt",
          "session_3/0/f.jpg")
    ds = load("closed_set", root=str(tmp_path), test_session=2)
    assert ds.kind == "closed_set"
    assert sorted(ds.splits) == ["session_1", "session_2", "session_3", "test", "train"]
    assert sorted(Path(r.path).name for r in ds["test"]) == ["d.jpg", "e.jpg"]
    assert sorted(Path(r.path).name for r in ds["train"]) == ["a.jpg", "b.jpg", "c.png", "f.jpg"]
    assert {r.session for r in ds["train"]} == {1, 3}
    assert sum(r.pid == 0 for r in ds["session_1"]) == 1
    everything = load("closed_set", root=str(tmp_path))
    assert "test" not in everything and len(everything["train"]) == 6
    with pytest.raises(DatasetError, match=r"test_session 7 does not exist .*sessions: 1, 2, 3"):
        load("closed_set", root=str(tmp_path), test_session=7)
    assert detect_layout(tmp_path) == "closed_set"


def test_closed_set_flat_class_folders_and_unknown_class(tmp_path):
    touch(tmp_path, "1/a.jpg", "2/b.jpg", "9/c.jpg", "9/d.jpg")
    ds = load("closed_set", root=str(tmp_path), unknown_class=9)
    assert list(ds.splits) == ["train", "session_1"]
    assert sorted(r.pid for r in ds["train"]) == [0, 0, 1, 2]
    touch(tmp_path, "0/e.jpg")
    with pytest.raises(DatasetError, match="unknown_class is 9 but .* also has a class 0"):
        load("closed_set", root=str(tmp_path), unknown_class=9)
    touch(tmp_path, "person_x/f.jpg")
    with pytest.raises(DatasetError, match="cannot read a session number"):
        load("closed_set", root=str(tmp_path))


def test_closed_set_csv(tmp_path):
    touch(tmp_path, "img/a.jpg", "img/b.jpg", "img/c.jpg")
    (tmp_path / "labels.csv").write_text(
        "path,identity,session,camera\nimg/a.jpg,0,1,2\nimg/b.jpg,3,1,2\nimg/c.jpg,3,2,1\nimg/gone.jpg,4,2,1\n")
    with pytest.warns(UserWarning, match="skipped 1 rows"):
        ds = load("closed_set", root=str(tmp_path), test_session=1)
    assert ds.num_skipped == 1
    assert [(r.pid, r.session, r.camid) for r in ds["test"]] == [(0, 1, 2), (3, 1, 2)]
    assert [(r.pid, r.session) for r in ds["train"]] == [(3, 2)]
    assert detect_layout(tmp_path) == "closed_set"
    (tmp_path / "labels.csv").write_text("file,identity\nimg/a.jpg,1\n")
    with pytest.raises(DatasetError, match=r"labels.csv: missing column\(s\) path, session"):
        load("closed_set", root=str(tmp_path))
    (tmp_path / "labels.csv").write_text("path,identity,session\nimg/a.jpg,bob,1\n")
    with pytest.raises(DatasetError, match=r"labels.csv:2: identity, session"):
        load("closed_set", root=str(tmp_path))


def test_closed_set_empty_root(tmp_path):
    with pytest.raises(DatasetError, match="has no file 'labels.csv' and no class or session folders"):
        load("closed_set", root=str(tmp_path))


# ---------------------------------------------------------------- detection and loading
def test_detect_layout(tmp_path, market):
    assert detect_layout(market) == "market1501"
    assert detect_layout(market.parent) == "market1501"        # parent of the extracted archive
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="cannot tell which dataset layout .*pass --type"):
        detect_layout(empty)
    with pytest.raises(DatasetError, match="does not exist"):
        detect_layout(tmp_path / "missing")


def test_load_dataset_options(market):
    loaded = load_dataset(market, None, {"include_junk": True})
    assert loaded.type == "market1501" and loaded.detected and len(loaded.splits["gallery"]) == 5
    with pytest.raises(UserError, match="invalid option for dataset 'market1501': bogus"):
        load_dataset(market, "market1501", {"bogus": 1})


# ---------------------------------------------------------------- CLI
def run(*args):
    return CliRunner().invoke(main, ["data", *map(str, args)])


def test_cli_info_table_and_json(market):
    res = run("info", market)
    assert res.exit_code == 0, res.output
    assert "market1501 (detected)" in res.output
    lines = res.output.splitlines()
    assert lines[1].split() == ["SPLIT", "IDENTITIES", "IMAGES", "CAMERAS", "DISTRACTORS"]
    assert lines[2].split() == ["train", "2", "3", "3", "0"]
    assert lines[4].split() == ["gallery", "2", "4", "4", "2"]
    assert "ignored 2 files whose names are not like the market1501 layout's" in res.output
    res = run("info", market, "--json", "--type", "market1501", "-o", "include_junk=true")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["type"] == "market1501" and out["detected"] is False and out["num_ignored"] == 2
    assert out["splits"][2] == {"split": "gallery", "identities": 2, "images": 5, "cameras": 4,
                                "distractors": 2}


def test_cli_info_errors(tmp_path, market):
    res = run("info", tmp_path / "nope")
    assert res.exit_code == 1 and "does not exist" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    (market / "query").rename(market / "q")
    res = run("info", market, "--type", "market1501")
    assert res.exit_code == 1 and "has no folder 'query'" in res.output
    res = run("info", market, "--type", "markt1501")
    assert res.exit_code == 2 and "did you mean 'market1501'" in res.output
    res = run("info", market, "--option", "novalue")
    assert res.exit_code == 1 and "KEY=VALUE" in res.output


def test_cli_help_is_useful():
    for cmd in ("info", "pairs"):
        res = run(cmd, "--help")
        assert res.exit_code == 0 and "Usage:" in res.output and "--type" in res.output


def test_cli_info_closed_set_counts_unknown(tmp_path):
    touch(tmp_path, "s1/0/a.jpg", "s1/1/b.jpg", "s2/1/c.jpg", "s2/2/d.jpg")
    res = run("info", tmp_path, "-o", "test_session=2", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["type"] == "closed_set" and out["kind"] == "closed_set"
    rows = {r["split"]: r for r in out["splits"]}
    assert rows["train"] == {"split": "train", "identities": 1, "images": 2, "cameras": 1, "unknown": 1}
    assert rows["test"]["identities"] == 2 and set(rows) == {"train", "test", "session_1", "session_2"}
    res = run("info", tmp_path)
    assert res.exit_code == 0 and res.output.splitlines()[1].split()[-1] == "UNKNOWN"
