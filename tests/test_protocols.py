"""The protocols PN-GAN Tables 1-3 and the semantic-selective DCGAN paper's Duke table need:
the CUHK03 (classic, 20 test splits) and CUHK01 readers, single-shot CMC, Market-1501
multi-query, and the classification of withheld training images (prec@1, prec@5, mAP).

The real datasets cannot be downloaded here: the readers are tested on fabricated folders with
the real names and layout (CUHK03: an HDF5 cuhk-03.mat built with h5py in the structure of the
MATLAB v7.3 release). Expected numbers are computed by hand or by code written here."""
import itertools
import json
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from pydantic import ValidationError

from keras_reid.data.layout import detect_layout
from keras_reid.data.records import Record
from keras_reid.errors import DatasetError
from keras_reid.metrics import evaluate_retrieval, pairwise_distance
from keras_reid.metrics.closed_set import top_k_accuracy
from keras_reid.metrics.retrieval import fuse_features, single_shot_cmc
from keras_reid.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]


def load(kind: str, **params):
    return REGISTRY.get("dataset", kind).create(params).load()


# ---------------------------------------------------------------- CUHK03 (classic protocol)
def write_cuhk03_mat(path: Path, pairs: list, testsets: list) -> None:
    """A cuhk-03.mat as MATLAB v7.3 stores it (HDF5, arrays transposed): ``detected`` and
    ``labeled`` hold one reference per camera pair to a [10 x persons] array of references to
    [3 x W x H] uint8 images (an empty cell is a 2-element uint64 array); ``testsets`` holds
    references to [2 x n] float arrays of 1-based (pair, person) rows."""
    counter = itertools.count()
    with h5py.File(path, "w") as f:
        def put(arr):
            name = f"#refs#/{next(counter)}"
            f.create_dataset(name, data=arr)
            return f[name].ref

        for variant, shift in (("detected", 0), ("labeled", 100)):
            pair_refs = np.empty((1, len(pairs)), dtype=h5py.ref_dtype)
            for p, persons in enumerate(pairs):
                cells = np.empty((10, len(persons)), dtype=h5py.ref_dtype)
                for i, images in enumerate(persons):
                    for c in range(10):
                        img = images[c]
                        cells[c, i] = put(np.zeros(2, np.uint64) if img is None
                                          else ((img.astype(np.int64) + shift) % 256).astype(np.uint8).T)
                pair_refs[0, p] = put(cells)
            f.create_dataset(variant, data=pair_refs, dtype=h5py.ref_dtype)
        ts = np.empty((1, len(testsets)), dtype=h5py.ref_dtype)
        for k, rows in enumerate(testsets):
            ts[0, k] = put(np.asarray(rows, np.float64).T)
        f.create_dataset("testsets", data=ts, dtype=h5py.ref_dtype)


@pytest.fixture
def cuhk03(tmp_path):
    rng = np.random.default_rng(0)

    def person(a: int, b: int):   # a images in view 1 (columns 1-5), b in view 2 (6-10)
        cells = [None] * 10
        for c in list(range(a)) + list(range(5, 5 + b)):
            cells[c] = rng.integers(0, 256, (8, 4, 3), dtype=np.uint8)
        return cells

    pairs = [[person(2, 2), person(3, 0), person(1, 1)], [person(2, 3), person(5, 5)]]
    tests = [[(1, 1), (2, 2)], [(1, 3), (2, 1)]] + [[(1, 1)]] * 18
    root = tmp_path / "cuhk03"
    (root / "cuhk03_release").mkdir(parents=True)
    write_cuhk03_mat(root / "cuhk03_release" / "cuhk-03.mat", pairs, tests)
    return root, pairs


def test_cuhk03_classic_splits_extraction_and_names(cuhk03):
    root, pairs = cuhk03
    ds = load("cuhk03", root=str(root))                       # split 0, detected
    assert ds.name == "cuhk03/detected/split0"
    assert {r.pid for r in ds["train"]} == {1002, 1003, 2001}
    assert {r.pid for r in ds["query"]} == {1001, 2002} and ds["gallery"] == ds["query"]
    # every non-empty cell is one image; pair 2, person 2, view 2 is camera 2 * (2 - 1) + 2 = 4
    assert len(ds["train"]) + len(ds["query"]) == 4 + 3 + 2 + 5 + 10
    by_name = {Path(r.path).name: r for r in ds["query"]}
    r = by_name["2_002_2_07.png"]
    assert (r.pid, r.camid, r.frame) == (2002, 4, 7)
    assert {x.camid for x in ds["query"] if x.pid == 1001} == {1, 2}
    # the extracted PNG holds the cell's pixels (RGB; MATLAB's H x W x 3)
    img = cv2.imread(r.path, cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(img, pairs[1][1][6])
    assert (root / "images_detected").is_dir() and not (root / "images_labeled").exists()
    # split 1: other test identities; labeled: the other images, extracted on their first use
    one = load("cuhk03", root=str(root), split=1, variant="labeled")
    assert {r.pid for r in one["query"]} == {1003, 2001}
    assert {r.pid for r in one["train"]} == {1001, 1002, 2002}
    lab = cv2.imread(str(root / "images_labeled" / "2_002_2_07.png"))[..., ::-1]
    np.testing.assert_array_equal(lab, (pairs[1][1][6].astype(int) + 100) % 256)
    # a second load reads the extracted folder (here: the release is gone, the images stay)
    stamp = (root / "images_detected" / "1_001_1_01.png").stat().st_mtime_ns
    again = load("cuhk03", root=str(root), split=2)
    assert {r.pid for r in again["query"]} == {1001}
    assert (root / "images_detected" / "1_001_1_01.png").stat().st_mtime_ns == stamp
    assert detect_layout(root) == "cuhk03"


def test_cuhk03_errors(cuhk03, tmp_path):
    root, _ = cuhk03
    with pytest.raises(ValidationError):
        load("cuhk03", root=str(root), split=20)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"has no file 'cuhk-03.mat'.*cuhk03_release.zip"):
        load("cuhk03", root=str(tmp_path / "empty"))
    # a release with 2 test splits: split 5 does not exist
    other = tmp_path / "two"
    other.mkdir()
    write_cuhk03_mat(other / "cuhk-03.mat", [[[np.zeros((8, 4, 3), np.uint8)] * 10] * 2],
                     [[(1, 1)], [(1, 2)]])
    with pytest.raises(DatasetError, match=r"split 5 does not exist: .* has 2 test splits \(0\.\.1\)"):
        load("cuhk03", root=str(other), split=5)
    (other / "bad").mkdir()
    (other / "bad" / "cuhk-03.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    with pytest.raises(DatasetError, match="cannot be read as a MATLAB v7.3"):
        load("cuhk03", root=str(other / "bad"))


# ---------------------------------------------------------------- CUHK01
@pytest.fixture
def cuhk01(tmp_path):
    root = tmp_path / "cuhk01"
    (root / "campus").mkdir(parents=True)
    for pid in range(1, 11):
        for image in range(1, 5):
            (root / "campus" / f"{pid:04d}{image:03d}.png").write_bytes(b"")
    (root / "campus" / "Thumbs.db").write_bytes(b"")
    return root


def test_cuhk01_random_splits_camera_a_queries_camera_b_gallery(cuhk01):
    a = load("cuhk01", root=str(cuhk01))
    test = {r.pid for r in a["query"]}
    assert len(test) == 5 and {r.pid for r in a["gallery"]} == test     # 10 - 10 // 2
    assert {r.pid for r in a["train"]} == set(range(1, 11)) - test
    assert len(a["train"]) == 20 and len(a["query"]) == len(a["gallery"]) == 10
    assert {r.camid for r in a["query"]} == {1} and {r.camid for r in a["gallery"]} == {2}
    assert {(r.frame, r.camid) for r in a["train"]} == {(1, 1), (2, 1), (3, 2), (4, 2)}
    assert a.num_ignored == 1
    assert {r.pid for r in load("cuhk01", root=str(cuhk01))["query"]} == test   # seeded
    others = [{r.pid for r in load("cuhk01", root=str(cuhk01), split=s)["query"]} for s in range(1, 6)]
    assert any(o != test for o in others)
    assert len({r.pid for r in load("cuhk01", root=str(cuhk01), test_ids=3)["query"]}) == 3
    assert detect_layout(cuhk01) == "cuhk01"
    with pytest.raises(DatasetError, match="too few for 10 test identities"):
        load("cuhk01", root=str(cuhk01), test_ids=10)
    shutil.rmtree(cuhk01 / "campus")
    with pytest.raises(DatasetError, match=r"has no folder 'campus'.*CUHK01 layout"):
        load("cuhk01", root=str(cuhk01))


# ---------------------------------------------------------------- single-shot CMC
def test_single_shot_cmc_equals_the_market_cmc_with_one_image_per_identity():
    # one gallery image per identity: every draw is the whole gallery
    dist = np.array([[0.3, 0.1, 0.2, 0.9],
                     [0.5, 0.4, 0.1, 0.2]])
    q_pids, g_pids = [1, 2], [1, 3, 4, 2]
    q_cams, g_cams = [1, 1], [2, 2, 2, 2]
    res = single_shot_cmc(dist, q_pids, g_pids, q_cams, g_cams, max_rank=4, repeats=3)
    # query 1: its match (0.3) comes after 0.1 and 0.2 -> rank 3; query 2: its match (0.2)
    # comes after 0.1 -> rank 2
    np.testing.assert_allclose(res["cmc"], [0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(res["cmc"], evaluate_retrieval(dist, q_pids, g_pids, q_cams, g_cams,
                                                              max_rank=4)["cmc"])


def _expected_single_shot(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    """The exact expectation over all draws (each kept identity's image equally likely),
    enumerated."""
    cmcs = []
    for i in range(len(q_pids)):
        kept = [j for j in range(len(g_pids)) if not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])]
        groups = {}
        for j in kept:
            groups.setdefault(g_pids[j], []).append(j)
        if q_pids[i] not in groups:
            continue
        total = np.zeros(max_rank)
        draws = list(itertools.product(*groups.values()))
        for draw in draws:
            order = sorted(draw, key=lambda j: (dist[i, j], j))
            rank = next(k for k, j in enumerate(order) if g_pids[j] == q_pids[i])
            total[rank:] += 1
        cmcs.append(total / len(draws))
    return np.mean(cmcs, axis=0)


def test_single_shot_cmc_converges_to_the_enumerated_expectation():
    rng = np.random.default_rng(3)
    q_pids = np.array([1, 2, 3])
    g_pids = np.array([1, 1, 1, 2, 2, 3, 4, 4, 5])
    q_cams = np.array([1, 1, 2])
    g_cams = np.array([1, 2, 2, 1, 2, 1, 1, 2, 1])
    dist = rng.random((3, 9))
    dist[0, 4] = dist[0, 6]               # a tie, broken by gallery index
    expected = _expected_single_shot(dist, q_pids, g_pids, q_cams, g_cams, 5)
    res = single_shot_cmc(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5, repeats=4000, seed=1)
    np.testing.assert_allclose(res["cmc"], expected, atol=0.02)
    assert res["num_valid_queries"] == 3
    # seeded: the same draws again; another seed draws others
    np.testing.assert_array_equal(
        single_shot_cmc(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5, repeats=7, seed=2)["cmc"],
        single_shot_cmc(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5, repeats=7, seed=2)["cmc"])
    # the half-and-half case by hand: pid 2's images straddle both matches of query 1
    d = np.array([[0.5, 0.6, 0.1, 0.9]])
    half = single_shot_cmc(d, [1], [1, 1, 2, 2], [1], [2, 2, 2, 2], max_rank=2, repeats=4000)
    assert abs(half["cmc"][0] - 0.5) < 0.03 and half["cmc"][1] == 1.0


# ---------------------------------------------------------------- multi-query (Market-1501)
def test_multi_query_pools_the_same_person_in_the_same_camera_by_hand():
    from keras_reid.stages.evaluate.common import multi_query_pairs

    query = [Record("q/0001_c1s1_000100_00.jpg", 1, 1)]
    gt = [Record("gt_bbox/0001_c1s1_000100_00.jpg", 1, 1),    # the query itself (counted once)
          Record("gt_bbox/0001_c1s1_000120_00.jpg", 1, 1),    # the same person, same camera
          Record("gt_bbox/0001_c2s1_000300_00.jpg", 1, 2),    # another camera: not pooled
          Record("gt_bbox/0002_c1s1_000100_00.jpg", 2, 1)]    # another person: not pooled
    q_idx, m_idx = multi_query_pairs(query, gt)
    assert q_idx.tolist() == [0] and m_idx.tolist() == [1]
    qf = np.array([[1.0, 0.0]], np.float32)
    mf = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.3, 0.3]], np.float32)
    gf = np.array([[1.0, 0.0],       # person 2, camera 2: the single query's nearest
                   [0.6, 0.8],       # person 1, camera 2
                   [0.0, 1.0],       # person 3
                   [-0.6, 0.8]],     # person 1, camera 3
                  np.float32)
    ids = ([1], [2, 1, 3, 1], [1], [2, 2, 3, 3])
    single = evaluate_retrieval(pairwise_distance(qf, gf), *ids, max_rank=4)
    # ranked: g0 (no), g1 (yes), g2 (no), g3 (yes): matches at ranks 2 and 4
    assert single["cmc"][0] == 0 and single["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    for method in ("mean", "max"):
        pooled = fuse_features(qf, mf[m_idx], q_idx, n=1, method=method)
        # mean and max of [1, 0] and [0, 1] both point along [1, 1]: g1 (dot 0.99) first, g0 and
        # g2 tie (0.71), g3 (0.14) last: matches at ranks 1 and 4
        np.testing.assert_allclose(pooled, [[2 ** -0.5, 2 ** -0.5]], rtol=1e-6)
        multi = evaluate_retrieval(pairwise_distance(pooled, gf), *ids, max_rank=4)
        assert multi["cmc"][0] == 1 and multi["mAP"] == pytest.approx((1 / 1 + 2 / 4) / 2)


# ---------------------------------------------------------------- withheld-class classification
def test_top_k_accuracy_and_withhold_per_class_by_hand():
    from keras_reid.stages.train_reid.run import withhold_per_class

    scores = np.array([[0.1, 0.5, 0.4],      # label 2: second -> top-2, not top-1
                       [0.3, 0.3, 0.4],      # label 1 ties class 0, which comes first: third
                       [0.9, 0.05, 0.05]])   # label 0: first
    labels = [2, 1, 0]
    assert top_k_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert top_k_accuracy(scores, labels, 2) == pytest.approx(2 / 3)
    assert top_k_accuracy(scores, labels, 3) == 1.0
    counts = {1: 10, 2: 3, 3: 1, 4: 7, 5: 4}
    records = [Record(f"{pid}_{i}.jpg", pid, 1) for pid, n in counts.items() for i in range(n)]
    kept, withheld = withhold_per_class(records, 0.15, seed=0)
    per = {pid: sum(r.pid == pid for r in withheld) for pid in counts}
    # floor(0.15 n + 0.5), at most n - 1: 10 -> 2, 3 -> 0, 1 -> 0, 7 -> 1, 4 -> 1
    assert per == {1: 2, 2: 0, 3: 0, 4: 1, 5: 1}
    assert sorted(kept + withheld, key=records.index) == records and not set(kept) & set(withheld)
    assert withhold_per_class(records, 0.15, seed=0) == (kept, withheld)
    assert withhold_per_class(records, 0.15, seed=1)[1] != withheld


# ---------------------------------------------------------------- the LSRO twin, end to end
def _ap_and_first(dist_row, match, keep):
    order = [j for j in np.argsort(dist_row, kind="stable") if keep[j]]
    hits = np.array([match[j] for j in order])
    ranks = np.flatnonzero(hits) + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks)), int(ranks[0])


def test_synthetic_lsro_recipe_runs_with_holdout_multi_query_and_single_shot(tmp_path):
    """recipes/synthetic_dcgan_lsro.yaml shrunk with --set only, on a synthetic Market-1501 tree
    with a gt_bbox/ folder (the query images plus every test image of the query's person in the
    query's camera, as Market's hand-drawn boxes hold); the evaluate stage also pools multi-query
    (mean) and reports single-shot CMC. The classification and multi-query figures are
    recomputed here from the saved models."""
    import keras_reid
    from keras_reid import runner
    from keras_reid.data.pipeline import eval_dataset
    from keras_reid.data.synthetic import synthesize
    from keras_reid.inference import load_keras_model
    from keras_reid.recipe import load_recipe
    from keras_reid_plugins.datasets.market import read_market_layout

    data = tmp_path / "market"
    synthesize(data, ids=12, cameras=3, size=(64, 32), seed=0, images_per_id_camera=3,
               distractors=2, junk=1)
    (data / "gt_bbox").mkdir()
    plain = read_market_layout(data)
    keys = {(q.pid, q.camid) for q in plain["query"]}
    for r in plain["query"] + [g for g in plain["gallery"] if (g.pid, g.camid) in keys]:
        shutil.copy(r.path, data / "gt_bbox" / Path(r.path).name)
    overrides = [
        f"datasets.synth={{type: market1501, root: '{data}'}}",
        "stages.g.generator={type: dcgan, z_dim: 8, filters: 4, max_filters: 8}",
        "stages.g.image_size=[64,32]", "stages.g.batch_size=4", "stages.g.epochs=1",
        "stages.g.steps_per_epoch=2", "stages.g.sample_every=2", "stages.g.verbose=0",
        "stages.samples_g.samples=8", "stages.samples_g.measure=[]",
        "stages.evaluate.ranked_lists=0", "stages.evaluate.projector_samples=0",
        "stages.evaluate.multi_query=mean", "stages.evaluate.single_shot=true",
    ]
    for stage in ("r", "r_g"):
        overrides += [f"stages.{stage}.image_size=[32,16]",
                      f"stages.{stage}.backbone={{type: tiny, width: 8, blocks: 2, embedding_dim: 16}}",
                      f"stages.{stage}.epochs=2", f"stages.{stage}.batch_size=8",
                      f"stages.{stage}.verbose=0", f"stages.{stage}.bn_recalibration_batches=0"]
    rec = load_recipe(ROOT / "recipes" / "synthetic_dcgan_lsro.yaml", overrides, env={})
    run = tmp_path / "run"
    results = runner.run(rec, run, echo=lambda *_: None)
    metrics = json.loads((run / "metrics.json").read_text())["models"]
    splits = read_market_layout(data)
    train = [r for r in splits["train"] if r.pid > 0]
    query, gallery, gt = splits["query"], splits["gallery"], splits["gt_bbox"]
    for stage in ("r", "r_g"):
        summary = results[stage]
        hold = json.loads((run / stage / "holdout.json").read_text())
        withheld = [Record(p, pid, cam) for p, pid, cam in hold["records"]]
        counts = {pid: sum(r.pid == pid for r in train) for pid in {r.pid for r in train}}
        assert {pid: sum(r.pid == pid for r in withheld) for pid in counts} == {
            pid: min(int(np.floor(0.15 * n + 0.5)), n - 1) for pid, n in counts.items()}
        assert summary["num_images"] == len(train) - len(withheld)
        # classification, recomputed: softmax scores of the saved classifier
        clf = load_keras_model(run / stage / "classifier.keras", rec.stage_configs[stage].backbone)
        logits = np.concatenate([np.asarray(clf(b, training=False)) for b in
                                 eval_dataset(withheld, image_size=(32, 16), batch_size=16)])
        col = {int(k): v for k, v in json.loads((run / stage / "labels.json").read_text()).items()}
        y = np.array([col[r.pid] for r in withheld])
        rank = np.array([(np.argsort(-row, kind="stable") == t).nonzero()[0][0]
                         for row, t in zip(logits, y)])
        aps = []
        for c in sorted(set(y)):
            order = np.argsort(-logits[:, c], kind="stable")
            hits = np.flatnonzero(y[order] == c) + 1
            aps.append(np.mean(np.arange(1, len(hits) + 1) / hits))
        got = metrics[stage]["classification"]
        assert got["images"] == len(withheld) and got["fraction"] == 0.15
        assert got["prec1"] == pytest.approx(np.mean(rank < 1))
        assert got["prec5"] == pytest.approx(np.mean(rank < 5))
        assert got["mAP"] == pytest.approx(np.mean(aps), abs=1e-6)
        # multi-query (mean), recomputed from the extractor's features of the three splits
        extract = keras_reid.load_model(run / stage)
        qf, gf, mf = (extract([r.path for r in recs]) for recs in (query, gallery, gt))
        names = {Path(r.path).name for r in query}
        pooled = []
        for i, q in enumerate(query):
            same = [j for j, m in enumerate(gt) if (m.pid, m.camid) == (q.pid, q.camid)
                    and Path(m.path).name != Path(q.path).name]
            v = np.mean(np.vstack([qf[i:i + 1], mf[same]]), axis=0)
            pooled.append(v / np.linalg.norm(v))
        assert all(Path(m.path).name in names or (m.pid, m.camid) in keys for m in gt)
        d = np.linalg.norm(np.array(pooled)[:, None, :] - gf[None, :, :], axis=2)
        aps = []
        for i, q in enumerate(query):
            keep = [not (g.pid == q.pid and g.camid == q.camid) for g in gallery]
            match = [g.pid == q.pid for g in gallery]
            if any(k and m for k, m in zip(keep, match)):
                aps.append(_ap_and_first(d[i], match, keep)[0])
        mq = metrics[stage]["multi_query"]
        assert mq["pooling"] == "mean" and mq["pooled_images"] > 0
        assert mq["mAP"] == pytest.approx(np.mean(aps), abs=1e-4)
        assert metrics[stage]["cmc_protocol"] == mq["cmc_protocol"] == "single_shot"
        assert 0.0 <= metrics[stage]["rank1"] <= 1.0
    # the report shows the multi-query rows
    import re

    from click.testing import CliRunner

    from keras_reid.cli import main

    assert CliRunner().invoke(main, ["report", str(run)]).exit_code == 0
    page = (run / "report.html").read_text()
    for stage in ("r", "r_g"):
        got = re.search(rf"data-model='{stage}' data-metric='mAP' data-variant='multi_query' "
                        r"data-value='([^']+)'", page)
        assert got and float(got.group(1)) == metrics[stage]["multi_query"]["mAP"]


def test_multi_query_without_its_split_fails_before_training_and_holdout_needs_real(tmp_path):
    from keras_reid import runner, testing
    from keras_reid.errors import RecipeError
    from keras_reid.recipe import load_recipe

    market = tmp_path / "market"
    for name in ("bounding_box_train/0002_c1s1_000451_03.jpg", "bounding_box_train/0002_c2s1_000551_01.jpg",
                 "query/0003_c1s2_000101_00.jpg", "bounding_box_test/0003_c2s1_000301_01.jpg"):
        (market / name).parent.mkdir(parents=True, exist_ok=True)
        (market / name).write_bytes(b"")
    recipe = testing.write_recipe(
        tmp_path / "r.yaml", name="mq", datasets={"m": {"type": "market1501", "root": market}},
        stages={"r": {"type": "train_reid", "dataset": "m", "epochs": 1, "backbone": {"type": "tiny"},
                      "holdout_per_class": 0.15},
                "evaluate": {"type": "evaluate", "dataset": "m", "models": ["r"], "multi_query": "max"}})
    with pytest.raises(DatasetError, match=r"split 'gt_bbox', which dataset 'm' does not have "
                                           r"\(splits: train, query, gallery\); extract Market-1501's gt_bbox/"):
        runner.run(load_recipe(recipe), tmp_path / "run", echo=lambda *_: None)
    assert not (tmp_path / "run" / "r" / "model.keras").exists()
    with pytest.raises(RecipeError, match="holdout_per_class: withholds real training images, but real is false"):
        load_recipe(recipe, ["stages.r.real=false", "stages.r.generated=[{dataset: m}]"])
