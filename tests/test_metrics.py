"""Metrics: retrieval (CMC/mAP/mINP), k-reciprocal re-ranking, closed-set, `keras-reid evaluate`.

The references below are deliberately plain: a per-query loop over a stable argsort for the
torchreid-style evaluation, and a dense N x N transcription of Zhong et al.'s re-ranking.
"""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from keras_reid.cli import main
from keras_reid.metrics import (closed_set_metrics, evaluate_retrieval, pairwise_distance, rerank,
                                rerank_features)

# ---------------------------------------------------------------------------------------------
# references


def ref_retrieval(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """torchreid's eval_market1501 with a stable argsort (+ fast-reid's mINP)."""
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    for qi in range(len(q_pids)):
        order = indices[qi]
        keep = ~((g_pids[order] == q_pids[qi]) & (g_camids[order] == q_camids[qi]))
        raw = matches[qi][keep]
        if not raw.any():
            continue
        cmc = raw.cumsum()
        last = np.max(np.where(raw == 1))
        all_inp.append(cmc[last] / (last + 1.0))
        cmc[cmc > 1] = 1
        padded = np.ones(max_rank)
        padded[:min(max_rank, len(cmc))] = cmc[:max_rank]
        all_cmc.append(padded)
        precision = raw.cumsum() / (np.arange(len(raw)) + 1.0)
        all_ap.append((precision * raw).sum() / raw.sum())
    return np.mean(all_cmc, axis=0), np.mean(all_ap), np.mean(all_inp), len(all_ap)


def ref_rerank(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3):
    """Dense k-reciprocal re-ranking, step by step as the published algorithm (stable sorts)."""
    q = q_g.shape[0]
    full = np.block([[q_q, q_g], [q_g.T, g_g]])
    o = np.power(full, 2).astype(np.float32)
    o = np.transpose(1.0 * o / np.max(o, axis=0))
    n = o.shape[0]
    rank = np.argsort(o, axis=1, kind="stable")
    half = int(np.around(k1 / 2.0))

    def reciprocal(i, k):
        fwd = rank[i, :k + 1]
        return fwd[np.where(rank[fwd, :k + 1] == i)[0]]

    v = np.zeros_like(o)
    for i in range(n):
        r = reciprocal(i, k1)
        expansion = r
        for c in r:
            rc = reciprocal(c, half)
            if len(np.intersect1d(rc, r)) > 2.0 / 3 * len(rc):
                expansion = np.append(expansion, rc)
        expansion = np.unique(expansion)
        w = np.exp(-o[i, expansion])
        v[i, expansion] = w / np.sum(w)
    if k2 != 1:
        v = np.stack([np.mean(v[rank[i, :k2]], axis=0) for i in range(n)])
    jaccard = np.zeros((q, n), np.float32)
    for i in range(q):
        shared = np.minimum(v[i][None, :], v).sum(axis=1)
        jaccard[i] = 1 - shared / (2 - shared)
    return (jaccard * (1 - lambda_value) + o[:q] * lambda_value)[:, q:]


def random_problem(rng, q, g, ids=8, cams=3, integer=False, dtype=np.float32):
    q_pids, g_pids = rng.integers(0, ids, q), rng.integers(0, ids + 2, g)  # ids+: distractor pids
    q_cams, g_cams = rng.integers(0, cams, q), rng.integers(0, cams, g)
    dist = rng.integers(0, 4, (q, g)) if integer else rng.random((q, g))
    return dist.astype(dtype), q_pids, g_pids, q_cams, g_cams


def features(rng, q, g, dim, ids=6, scale=1.0):
    centres = rng.standard_normal((ids, dim))
    qf = centres[rng.integers(0, ids, q)] + 0.8 * rng.standard_normal((q, dim))
    gf = centres[rng.integers(0, ids, g)] + 0.8 * rng.standard_normal((g, dim))
    return (scale * qf).astype(np.float32), (scale * gf).astype(np.float32)


def euclidean64(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(d2, 0))


# ---------------------------------------------------------------------------------------------
# retrieval


@pytest.mark.parametrize("integer,dtype", [(False, np.float32), (False, np.float64), (True, np.float32),
                                           (True, np.float64), (True, np.int64)])
def test_retrieval_matches_reference(integer, dtype):
    rng = np.random.default_rng(7)
    for _ in range(25):
        q, g = int(rng.integers(1, 30)), int(rng.integers(1, 70))
        prob = random_problem(rng, q, g, integer=integer, dtype=dtype)
        ref = ref_retrieval(*prob, max_rank=10) if _any_valid(*prob[1:]) else None
        if ref is None:
            with pytest.raises(ValueError, match="no query"):
                evaluate_retrieval(*prob, max_rank=10)
            continue
        res = evaluate_retrieval(*prob, max_rank=10)
        cmc, m_ap, m_inp, valid = ref
        assert res["num_valid_queries"] == valid and res["num_invalid_queries"] == q - valid
        assert res["cmc"].shape == (10,)
        np.testing.assert_allclose(res["cmc"], cmc, rtol=0, atol=1e-12)
        assert res["mAP"] == pytest.approx(m_ap, abs=1e-12)
        assert res["mINP"] == pytest.approx(m_inp, abs=1e-12)


def _any_valid(q_pids, g_pids, q_cams, g_cams):
    return any(((g_pids == p) & (g_cams != c)).any() for p, c in zip(q_pids, q_cams))


def test_retrieval_hand_computed_ties_and_junk():
    # query pid 1 cam 0; gallery: 0 same pid+cam (junk), 1 match, 2 other, 3 match, 4 distractor
    dist = np.array([[0.0, 0.5, 0.5, 0.5, 0.1]], np.float32)
    res = evaluate_retrieval(dist, np.array([1]), np.array([1, 1, 2, 1, 0]), np.array([0]),
                             np.array([0, 1, 1, 2, 1]), max_rank=5)
    # stable order without junk: 4 (0.1), 1, 2, 3 (0.5 tie by index) -> matches at ranks 2 and 4
    np.testing.assert_allclose(res["cmc"], [0, 1, 1, 1, 1])
    assert res["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert res["mINP"] == pytest.approx(2 / 4)


def test_retrieval_invalid_queries_counted_and_cmc_past_gallery():
    dist = np.array([[0.2, 0.1], [0.3, 0.4], [0.5, 0.6]], np.float32)
    q_pids, g_pids = np.array([1, 2, 3]), np.array([1, 2])
    q_cams, g_cams = np.array([0, 0, 0]), np.array([1, 0])  # query 2: only same camera; query 3: absent
    res = evaluate_retrieval(dist, q_pids, g_pids, q_cams, g_cams, max_rank=4)
    assert res["num_valid_queries"] == 1 and res["num_invalid_queries"] == 2
    np.testing.assert_allclose(res["cmc"], [0, 1, 1, 1])  # ranks past the gallery keep the last value
    with pytest.raises(ValueError, match="shape"):
        evaluate_retrieval(dist[:, :1], q_pids, g_pids, q_cams, g_cams)


def test_retrieval_rejects_nan_match_distance():
    with pytest.raises(ValueError, match="NaN"):
        evaluate_retrieval(np.array([[np.nan, 0.1]]), np.array([1]), np.array([1, 2]), np.array([0]),
                           np.array([1, 1]))


def test_pairwise_distance():
    rng = np.random.default_rng(0)
    qf, gf = features(rng, 7, 11, 5)
    np.testing.assert_allclose(pairwise_distance(qf, gf, chunk=3), euclidean64(qf, gf), atol=1e-5)
    np.testing.assert_allclose(pairwise_distance(qf, gf, squared=True), euclidean64(qf, gf) ** 2,
                               rtol=1e-5, atol=1e-4)
    cos = 1 - (qf / np.linalg.norm(qf, axis=1, keepdims=True)) @ (gf / np.linalg.norm(gf, axis=1,
                                                                                       keepdims=True)).T
    np.testing.assert_allclose(pairwise_distance(qf, gf, metric="cosine", chunk=2), cos, atol=1e-6)
    assert pairwise_distance(qf, gf).dtype == np.float32
    assert pairwise_distance(qf.astype(np.float64), gf).dtype == np.float64
    with pytest.raises(ValueError):
        pairwise_distance(qf, gf, metric="manhattan")


# ---------------------------------------------------------------------------------------------
# re-ranking


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 3, 0.5), (3, 1, 0.0), (7, 2, 1.0), (4, 4, 0.3)])
def test_rerank_matches_dense_reference(k1, k2, lam):
    rng = np.random.default_rng(k1 * 10 + k2)
    qf, gf = features(rng, 14, 60, 8, scale=3.0)  # unnormalised features
    d = euclidean64(np.concatenate([qf, gf]), np.concatenate([qf, gf]))
    q_g, q_q, g_g = d[:14, 14:], d[:14, :14], d[14:, 14:]
    ref = ref_rerank(q_g, q_q, g_g, k1, k2, lam)
    out = rerank(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam)
    assert out.shape == (14, 60) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6)
    out_f = rerank_features(qf, gf, k1=k1, k2=k2, lambda_value=lam, chunk=16)  # many tiles
    np.testing.assert_allclose(out_f, ref, rtol=0, atol=2e-6)


def test_rerank_ties_are_stable_by_index():
    # integer distances: many exact ties in the neighbour lists
    rng = np.random.default_rng(3)
    pts = rng.integers(0, 3, (40, 2)).astype(np.float64)  # duplicates and equal distances
    d = euclidean64(pts, pts)
    q = 10
    ref = ref_rerank(d[:q, q:], d[:q, :q], d[q:, q:], 6, 3, 0.3)
    np.testing.assert_allclose(rerank(d[:q, q:], d[:q, :q], d[q:, q:], k1=6, k2=3), ref, atol=2e-6)
    np.testing.assert_allclose(rerank_features(pts[:q], pts[q:], k1=6, k2=3, chunk=8), ref, atol=2e-6)


def test_rerank_features_l2_normalised_and_changes_ranking():
    rng = np.random.default_rng(11)
    qf, gf = features(rng, 20, 90, 32)
    qf /= np.linalg.norm(qf, axis=1, keepdims=True)
    gf /= np.linalg.norm(gf, axis=1, keepdims=True)
    d = euclidean64(np.concatenate([qf, gf]), np.concatenate([qf, gf]))
    ref = ref_rerank(d[:20, 20:], d[:20, :20], d[20:, 20:])
    out = rerank_features(qf, gf, chunk=32)
    np.testing.assert_allclose(out, ref, atol=2e-6)
    assert not np.allclose(out, d[:20, 20:] ** 2 / (d[:20] ** 2).max(1, keepdims=True), atol=1e-3)


def test_rerank_features_far_from_origin_near_ties():
    # features with a large common offset and tiny spread: a plain float32 |a|^2 + |b|^2 - 2ab
    # would lose every digit of the distances; neighbour lists must still be the float64 ones
    rng = np.random.default_rng(4)
    base = 10 * rng.standard_normal(64)
    pts = (base + 1e-3 * rng.standard_normal((70, 64))).astype(np.float32)
    d = euclidean64(pts, pts)
    ref = ref_rerank(d[:15, 15:], d[:15, :15], d[15:, 15:])
    np.testing.assert_allclose(rerank_features(pts[:15], pts[15:], chunk=32), ref, atol=2e-6)


def test_rerank_fewer_items_than_k1():
    rng = np.random.default_rng(2)
    qf, gf = features(rng, 2, 4, 3)
    d = euclidean64(np.concatenate([qf, gf]), np.concatenate([qf, gf]))
    ref = ref_rerank(d[:2, 2:], d[:2, :2], d[2:, 2:])  # k1=20, k2=6 > 6 items
    np.testing.assert_allclose(rerank(d[:2, 2:], d[:2, :2], d[2:, 2:]), ref, atol=2e-6)
    np.testing.assert_allclose(rerank_features(qf, gf), ref, atol=2e-6)


def test_rerank_features_threads_and_timings():
    # many 16 x 16 tiles screened by two threads at once: the same result as one thread and as
    # the dense reference, and every phase timed
    rng = np.random.default_rng(21)
    qf, gf = features(rng, 30, 170, 12, ids=10)
    d = euclidean64(np.concatenate([qf, gf]), np.concatenate([qf, gf]))
    ref = ref_rerank(d[:30, 30:], d[:30, :30], d[30:, 30:])
    timings = {}
    two = rerank_features(qf, gf, chunk=16, workers=2, timings=timings)
    one = rerank_features(qf, gf, chunk=16, workers=1)
    np.testing.assert_array_equal(two, one)
    np.testing.assert_allclose(two, ref, atol=2e-6)
    assert set(timings) == {"factors", "tiles", "maxima", "lists", "reciprocal_sets",
                            "query_expansion", "jaccard"}
    assert all(t["workers"] == 2 for t in timings.values())
    assert all(t["seconds"] >= 0 and t["cpu_seconds"] >= 0 for t in timings.values())
    with pytest.raises(ValueError, match="workers"):
        rerank_features(qf, gf, workers=0)


def test_rerank_sort_helpers_match_numpy():
    from keras_reid.metrics.rerank import _kth_smallest, _unique
    rng = np.random.default_rng(5)
    rows = rng.integers(0, 7, 400)
    vals = rng.choice(np.array([-2.5, -0.0, 0.0, 1e-30, 0.5, 3.0, 7.25], np.float32), 400)
    for k in (1, 3, 20):
        want = [np.sort(vals[rows == r])[k - 1] for r in range(7)]
        np.testing.assert_array_equal(_kth_smallest(rows, vals, 7, k), np.array(want, np.float32))
    codes = rng.integers(0, 50, 1000)
    np.testing.assert_array_equal(_unique(codes), np.unique(codes))
    uniq, inv = _unique(codes, return_inverse=True)
    np.testing.assert_array_equal(uniq[inv], codes)


def test_rerank_query_expansion_blocks_and_threads_agree():
    from concurrent.futures import ThreadPoolExecutor

    from keras_reid.metrics.rerank import _query_expansion
    rng = np.random.default_rng(6)
    n = 40
    lens = rng.integers(1, 6, n)
    indptr = np.concatenate(([0], np.cumsum(lens)))
    indices = np.concatenate([np.sort(rng.choice(n, k, replace=False)) for k in lens])
    data = rng.random(len(indices)).astype(np.float32)
    nbr = np.stack([rng.permutation(n) for _ in range(n)])
    whole = _query_expansion(indptr, indices, data, nbr, 4)
    with ThreadPoolExecutor(2) as pool:
        blocks = _query_expansion(indptr, indices, data, nbr, 4, pool, step=3)
    for a, b in zip(whole, blocks):
        np.testing.assert_array_equal(a, b)
    dense = np.zeros((n, n))
    dense[np.repeat(np.arange(n), lens), indices] = data
    want = dense[nbr[:, :4]].mean(axis=1)
    got = np.zeros((n, n))
    got[np.repeat(np.arange(n), np.diff(whole[0])), whole[1]] = whole[2]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_rerank_stacked_rows_match_concatenation():
    from keras_reid.metrics.rerank import _Stacked
    rng = np.random.default_rng(8)
    qf, gf = (rng.standard_normal((n, 5)).astype(np.float32) for n in (7, 30))
    f, full = _Stacked(qf, gf), np.concatenate([qf, gf])
    for a, b in ((0, 4), (3, 12), (7, 37), (20, 25), (30, 99)):
        np.testing.assert_array_equal(f[a:b], full[a:b])
    for idx in ([1, 2], [8, 36], [36, 0, 7, 6, 6], []):
        np.testing.assert_array_equal(f[np.array(idx, int)], full[np.array(idx, int)])
    np.testing.assert_array_equal(f.mean64(step=4), full.mean(axis=0, dtype=np.float64))


def test_rerank_rejects_bad_input():
    with pytest.raises(ValueError, match="g_g_dist"):
        rerank(np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="lambda"):
        rerank_features(np.zeros((2, 4)), np.ones((3, 4)), lambda_value=2)


# ---------------------------------------------------------------------------------------------
# closed set


def test_closed_set_hand_computed():
    # 3 classes (0 = unknown), 5 frames
    scores = np.array([[0.6, 0.3, 0.1],   # label 0 -> pred 0
                       [0.2, 0.7, 0.1],   # label 1 -> pred 1
                       [0.5, 0.4, 0.1],   # label 1 -> pred 0
                       [0.1, 0.2, 0.7],   # label 2 -> pred 2
                       [0.3, 0.3, 0.4]])  # label 2 -> pred 2
    labels = np.array([0, 1, 1, 2, 2])
    res = closed_set_metrics(scores, labels, unknown_class=0)
    assert res["prec1_all"] == pytest.approx(4 / 5)
    assert res["prec1_pid"] == pytest.approx(3 / 4)
    # class 0 column: order 0 (0.6), 2 (0.5), 4 (0.3), 1, 3 -> positive frame 0 at rank 1: AP 1
    # class 1 column: order 1 (0.7), 2 (0.4), 4 (0.3), 0, 3 -> positives at ranks 1, 2: AP 1
    # class 2 column: order 3 (0.7), 4 (0.4), 0/1/2 -> positives at ranks 1, 2: AP 1
    assert res["mAP_all"] == pytest.approx(1.0) and res["mAP_pid"] == pytest.approx(1.0)
    np.testing.assert_array_equal(res["confusion"], [[1, 0, 0], [1, 1, 0], [0, 0, 2]])
    # class 1 column becomes 1 (0.7), 0 (0.3), 4 (0.3), 2 (0.25), 3: positives at ranks 1 and 4
    scores2 = scores.copy()
    scores2[2, 1] = 0.25
    res2 = closed_set_metrics(scores2, labels)
    assert res2["ap_per_class"][1] == pytest.approx((1 + 2 / 4) / 2)
    assert res2["mAP_pid"] == pytest.approx(((1 + 2 / 4) / 2 + 1) / 2)
    assert res2["mAP_all"] == pytest.approx(((1 + 2 / 4) / 2 + 2) / 3)
    assert res2["prec1_all"] == res["prec1_all"]  # frame 2 was already misclassified


def test_closed_set_skips_classes_without_positives_and_no_unknown():
    rng = np.random.default_rng(0)
    scores = rng.random((30, 5))
    labels = rng.integers(0, 4, 30)  # class 4 never occurs
    res = closed_set_metrics(scores, labels, unknown_class=None)
    assert res["classes_without_positives"] == 1 and np.isnan(res["ap_per_class"][4])
    assert res["prec1_pid"] == res["prec1_all"] and res["mAP_pid"] == res["mAP_all"]
    # brute-force AP: mean over positives of (#positives scored >= it) / (#frames scored >= it)
    for c in range(4):
        s, pos = scores[:, c], labels == c
        ap = np.mean([(pos & (s >= s[i])).sum() / (s >= s[i]).sum() for i in np.flatnonzero(pos)])
        assert res["ap_per_class"][c] == pytest.approx(ap)
    assert res["confusion"].sum() == 30
    np.testing.assert_array_equal(res["confusion"].sum(axis=1), np.bincount(labels, minlength=5))
    with pytest.raises(ValueError):
        closed_set_metrics(scores, np.full(30, 7))


# ---------------------------------------------------------------------------------------------
# CLI


def _npz(tmp_path, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return str(path)


def test_cli_evaluate_json_and_rerank(tmp_path):
    rng = np.random.default_rng(5)
    qf, gf = features(rng, 12, 50, 8)
    q_pids, g_pids = rng.integers(0, 6, 12), rng.integers(0, 6, 50)
    q_cams, g_cams = rng.integers(0, 3, 12), rng.integers(0, 3, 50)
    d = euclidean64(np.concatenate([qf, gf]), np.concatenate([qf, gf]))
    path = _npz(tmp_path, distmat=d[:12, 12:], q_q_dist=d[:12, :12], g_g_dist=d[12:, 12:],
                q_pids=q_pids, g_pids=g_pids, q_camids=q_cams, g_camids=g_cams)
    out = tmp_path / "m.json"
    res = CliRunner().invoke(main, ["evaluate", "--distmat", path, "--rerank", "--k1", "5", "--k2", "3",
                                    "--max-rank", "10", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "mAP" in res.output and "rerank" in res.output
    got = json.loads(out.read_text())
    plain = evaluate_retrieval(d[:12, 12:], q_pids, g_pids, q_cams, g_cams, max_rank=10)
    assert got["plain"]["mAP"] == pytest.approx(plain["mAP"])
    assert got["plain"]["rank1"] == pytest.approx(plain["cmc"][0]) and len(got["plain"]["cmc"]) == 10
    rr = evaluate_retrieval(ref_rerank(d[:12, 12:], d[:12, :12], d[12:, 12:], 5, 3, 0.3),
                            q_pids, g_pids, q_cams, g_cams, max_rank=10)
    assert got["rerank"]["mAP"] == pytest.approx(rr["mAP"], abs=1e-9)
    # features instead of q_q/g_g: same numbers
    path2 = _npz(tmp_path, qf=qf, gf=gf, q_pids=q_pids, g_pids=g_pids, q_camids=q_cams, g_camids=g_cams)
    res2 = CliRunner().invoke(main, ["evaluate", "--distmat", path2, "--rerank", "--k1", "5", "--k2", "3",
                                     "--json", str(out)])
    assert res2.exit_code == 0, res2.output
    assert json.loads(out.read_text())["rerank"]["mAP"] == pytest.approx(rr["mAP"], abs=1e-6)


def test_cli_evaluate_missing_keys_one_line(tmp_path):
    path = _npz(tmp_path, distmat=np.zeros((2, 3)), q_pids=np.zeros(2))
    res = CliRunner().invoke(main, ["evaluate", "--distmat", path])
    assert res.exit_code == 1
    assert "g_pids, q_camids, g_camids" in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    full = _npz(tmp_path, distmat=np.zeros((2, 3)), q_pids=np.zeros(2), g_pids=np.zeros(3),
                q_camids=np.zeros(2), g_camids=np.zeros(3))
    res = CliRunner().invoke(main, ["evaluate", "--distmat", full, "--rerank"])
    assert res.exit_code == 1 and "q_q_dist, g_g_dist" in res.output
    res = CliRunner().invoke(main, ["evaluate", "--distmat", full])  # every query is invalid
    assert res.exit_code == 1 and "no query" in res.output
    res = CliRunner().invoke(main, ["evaluate"])
    assert res.exit_code == 2 and "--distmat" in res.output   # an argument error, like the others
    not_npz = tmp_path / "m.json"
    not_npz.write_text("{}")
    res = CliRunner().invoke(main, ["evaluate", "--distmat", str(not_npz)])
    assert res.exit_code == 1 and "not an .npz file" in res.output and "Traceback" not in res.output


def test_cli_evaluate_refuses_arrays_it_cannot_rank(tmp_path):
    """NaN at every non-matching pair once gave mAP 100%; such inputs are now one-line errors."""
    ids = dict(q_pids=np.array([1, 2]), g_pids=np.array([1, 2, 3]), q_camids=np.array([1, 1]),
               g_camids=np.array([2, 2, 2]))
    nan = np.full((2, 3), np.nan)
    nan[0, 0] = nan[1, 1] = 0.0
    cases = {
        "NaN or infinite": dict(distmat=nan, **ids),
        "real numbers": dict(distmat=np.zeros((2, 3), np.complex128), **ids),
        "1-D array of integer ids": dict(distmat=np.zeros((2, 3)), **{**ids, "q_pids": np.ones((2, 1))}),
        "must hold real numbers, got dtype <U": dict(distmat=np.array([["a"] * 3] * 2), **ids),
        "same feature width": dict(qf=np.ones((2, 4)), gf=np.ones((3, 5)), **ids),
    }
    for i, (message, arrays) in enumerate(cases.items()):
        path = str(tmp_path / f"bad{i}.npz")
        np.savez(path, **arrays)
        res = CliRunner().invoke(main, ["evaluate", "--distmat", path])
        assert res.exit_code != 0 and message in res.output, (message, res.output)
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_chance_level_is_the_expectation_over_every_ranking():
    """chance_level equals the mean of rank-1 and mAP over all orderings of a small gallery
    (same-pid-same-camera items are removed by the protocol, so they do not count)."""
    import itertools

    from keras_reid.metrics import chance_level

    q_pids, q_cams = np.array([1, 2]), np.array([1, 1])
    g_pids = np.array([1, 1, 2, 3, 1])
    g_cams = np.array([2, 3, 2, 2, 1])   # the last item: query 1's own camera, removed
    r1, ap = [], []
    for perm in itertools.permutations(range(len(g_pids))):
        dist = np.tile(np.argsort(perm).astype(np.float64), (2, 1))
        res = evaluate_retrieval(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5)
        r1.append(res["cmc"][0])
        ap.append(res["mAP"])
    chance = chance_level(q_pids, g_pids, q_cams, g_cams)
    assert chance["rank1"] == pytest.approx(np.mean(r1), abs=1e-12)
    assert chance["mAP"] == pytest.approx(np.mean(ap), abs=1e-12)
    with pytest.raises(ValueError, match="no query"):
        chance_level([9], g_pids, [1], g_cams)
