"""The camera-pair split (SPECS.md, thesis DataSplit) and `keras-reid data pairs`."""
import json
import random
from itertools import product

import pytest
from click.testing import CliRunner

from keras_reid.cli import main
from keras_reid.data.camera_split import camera_pair_split
from keras_reid.data.records import Record
from keras_reid.errors import DatasetError

# pid, camera, sequence, frame  (cameras A=1, B=2)
EXAMPLE = [
    # pid 1, sequence 1: 2 images in A x 3 in B -> 6 pairs
    (1, 1, 1, 10), (1, 1, 1, 11), (1, 2, 1, 20), (1, 2, 1, 21), (1, 2, 1, 22),
    # pid 1, sequence 2 only in A -> a test image (pid 1 is in B, so not a new id)
    (1, 1, 2, 30),
    # pid 2: sequence 1 in A and B -> 1 pair; sequence 3 in B only -> nothing for A -> B
    (2, 1, 1, 40), (2, 2, 1, 41), (2, 2, 3, 42),
    # pid 3: only in A (and camera 3) -> 2 test images, both new ids
    (3, 1, 1, 50), (3, 1, 2, 51), (3, 3, 1, 52),
    # pid 4: only in B
    (4, 2, 1, 60),
    # distractors and junk take no part even when (pid, sequence) matches across cameras
    (0, 1, 1, 70), (0, 2, 1, 71), (-1, 1, 1, 72), (-1, 2, 1, 73),
]


def records(rows=EXAMPLE):
    return [Record(f"/x/{pid:04d}_c{cam}s{seq}_{frame:06d}_00.jpg", pid, cam, seq, frame)
            for pid, cam, seq, frame in rows]


def test_hand_made_example_counts_and_contents():
    split = camera_pair_split(records(), 1, 2)
    assert split.counts() == {"train_pairs": 7, "test_images": 3, "new_id_images": 2}
    for a, b in split.train_pairs:
        assert (a.camid, b.camid) == (1, 2) and (a.pid, a.sequence) == (b.pid, b.sequence)
    assert len({(a.path, b.path) for a, b in split.train_pairs}) == 7
    assert [(r.pid, r.sequence) for r in split.test_images] == [(1, 2), (3, 1), (3, 2)]
    assert [r.pid for r in split.new_id_images] == [3, 3]
    assert set(split.new_id_images) <= set(split.test_images)


def test_reverse_direction():
    split = camera_pair_split(records(), 2, 1)
    # pid 1 seq 1: 3 x 2; pid 2 seq 1: 1 x 1; pid 2 seq 3 -> test (pid 2 in A); pid 4 -> test, new id
    assert split.counts() == {"train_pairs": 7, "test_images": 2, "new_id_images": 1}
    assert [(r.pid, r.sequence) for r in split.test_images] == [(2, 3), (4, 1)]


def test_matches_the_literal_definition_on_random_data():
    rng = random.Random(0)
    rows = [(rng.randint(1, 12), rng.randint(1, 4), rng.randint(1, 3), i) for i in range(300)]
    recs = records(rows)
    for a_cam, b_cam in product(range(1, 5), repeat=2):
        if a_cam == b_cam:
            continue
        split = camera_pair_split(recs, a_cam, b_cam)
        A = [r for r in recs if r.camid == a_cam]
        B = [r for r in recs if r.camid == b_cam]
        pairs = [(a, b) for a in A for b in B if (a.pid, a.sequence) == (b.pid, b.sequence)]
        test = [a for a in A if not any((a.pid, a.sequence) == (b.pid, b.sequence) for b in B)]
        new = [a for a in A if not any(a.pid == b.pid for b in B)]
        assert set(split.train_pairs) == set(pairs) and len(split.train_pairs) == len(pairs)
        assert sorted(split.test_images, key=id) == sorted(test, key=id)
        assert sorted(split.new_id_images, key=id) == sorted(new, key=id)


def test_deterministic_order():
    recs = records()
    shuffled = recs[:]
    random.Random(1).shuffle(shuffled)
    a, b = camera_pair_split(recs, 1, 2), camera_pair_split(shuffled, 1, 2)
    assert a.train_pairs == b.train_pairs and a.test_images == b.test_images


def test_unknown_or_equal_camera():
    with pytest.raises(DatasetError, match=r"camera 9 does not occur in the records; cameras present: 1, 2, 3"):
        camera_pair_split(records(), 1, 9)
    with pytest.raises(DatasetError, match="two different cameras"):
        camera_pair_split(records(), 2, 2)


# ---------------------------------------------------------------- CLI on a Market-style tree
@pytest.fixture
def market(tmp_path):
    root = tmp_path / "market"
    names = [f"{pid:04d}_c{cam}s{seq}_{frame:06d}_00.jpg" for pid, cam, seq, frame in EXAMPLE]
    for name in names:
        (root / "bounding_box_train").mkdir(parents=True, exist_ok=True)
        (root / "bounding_box_train" / name).write_bytes(b"")
    for sub, name in (("query", "0009_c1s1_000001_00.jpg"), ("bounding_box_test", "0009_c2s1_000002_00.jpg")):
        (root / sub).mkdir()
        (root / sub / name).write_bytes(b"")
    return root


def run(*args):
    return CliRunner().invoke(main, ["data", "pairs", *map(str, args)])


def test_cli_pairs_json_and_text(market):
    res = run(market, "--a", 1, "--b", 2, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"train_pairs": 7, "test_images": 3, "new_id_images": 2}
    assert list(json.loads(res.output)) == ["train_pairs", "test_images", "new_id_images"]
    res = run(market, "--a", 2, "--b", 1, "--type", "market1501")
    assert res.exit_code == 0, res.output
    assert "camera 2 -> 1" in res.output
    assert [line.split()[-1] for line in res.output.splitlines()[1:]] == ["7", "2", "1"]


def test_cli_pairs_errors(tmp_path, market):
    res = run(market, "--a", 1, "--b", 7)
    assert res.exit_code == 1 and "camera 7 does not occur in split 'train'" in res.output
    assert "cameras present: 1, 2, 3" in res.output
    res = run(market, "--a", 1, "--b", 2, "--split", "val")
    assert res.exit_code == 1 and "no split 'val'" in res.output and "train, query, gallery" in res.output
    res = run(tmp_path / "missing", "--a", 1, "--b", 2, "--json")
    assert res.exit_code == 1 and "does not exist" in res.output and "Traceback" not in res.output
    res = run(market, "--a", 1)
    assert res.exit_code == 2 and "--b" in res.output


def test_cli_pairs_query_split(market):
    res = run(market, "--a", 1, "--b", 2, "--split", "query", "--json")
    assert res.exit_code == 1 and "camera 2 does not occur in split 'query'" in res.output
