"""Market-protocol retrieval metrics (CMC, mAP, mINP) and chunked pairwise distances.

``evaluate_retrieval`` gives the numbers torchreid's ``eval_market1501`` gives (with the gallery
ranked by a *stable* sort, so ties are broken by gallery index) without sorting the distance
matrix. For each query only the ranks of its true matches matter: the rank of a match is one plus
the number of kept gallery items that come before it (smaller distance, or equal distance and a
smaller gallery index). Those counts come from sorting only the gallery distances that are not
larger than the query's hardest match (``np.sort`` of values, no ``argsort``) and a binary search;
ties are resolved exactly by an explicit count. CMC, AP and mINP follow from the match ranks.
"""
from __future__ import annotations

from typing import Iterator, Literal

import numpy as np

__all__ = ["evaluate_retrieval", "single_shot_cmc", "pairwise_distance", "fuse_features"]

FUSION_METHODS = ("max", "mean", "concat")


def _group_by_pid(g_pids: np.ndarray) -> dict:
    """Gallery indices per pid: ``{pid: ascending int64 indices}``."""
    order = np.argsort(g_pids, kind="stable")
    sorted_pids = g_pids[order]
    cuts = np.flatnonzero(sorted_pids[1:] != sorted_pids[:-1]) + 1
    starts = np.concatenate(([0], cuts))
    ends = np.concatenate((cuts, [len(order)]))
    return {sorted_pids[s].item(): order[s:e] for s, e in zip(starts, ends)} if len(order) else {}


def _valid_queries(q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray,
                   g_camids: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yields ``(query index, gallery indices of its true matches, gallery indices the protocol
    removes)`` for every query with at least one match (same pid, another camera); the removed
    items are the query's pid seen by the query's camera."""
    groups = _group_by_pid(g_pids)
    for i in range(len(q_pids)):
        same = groups.get(q_pids[i].item())
        if same is None:
            continue
        same_cam = g_camids[same] == q_camids[i]
        matches = same[~same_cam]
        if matches.size:
            yield i, matches, same[same_cam]


def _match_ranks(row: np.ndarray, matches: np.ndarray, junk: np.ndarray) -> np.ndarray:
    """1-based ranks of ``matches`` in ``row``'s stable ascending order with ``junk`` removed.

    ``matches`` and ``junk`` are ascending gallery indices. Returned ranks are ascending (the
    matches in ranked order). Comparisons are made in ``row``'s dtype.
    """
    t = row[matches]
    if np.isnan(t).any():
        raise ValueError("distmat has NaN distances between a query and its true matches")
    order = np.argsort(t, kind="stable")  # matches ascending, so this is (distance, index) order
    t = t[order]
    m_idx = matches[order]
    cand = row[row <= t[-1]]  # every item that can precede a match (NaN never does)
    cand.sort()
    less = np.searchsorted(cand, t, side="left")  # items strictly closer than each match
    equal = np.searchsorted(cand, t, side="right") - less  # items at the same distance (>= 1)
    before = less
    tied = np.flatnonzero(equal > 1)
    if tied.size:  # exact tie-break by gallery index: count equal items with a smaller index
        before = before.copy()
        for j in tied:
            before[j] += np.count_nonzero(row[: m_idx[j]] == t[j])
    if junk.size:
        tj = row[junk]
        jb = (tj[None, :] < t[:, None]) | ((tj[None, :] == t[:, None]) & (junk[None, :] < m_idx[:, None]))
        before = before - jb.sum(axis=1)
    return before + 1


def evaluate_retrieval(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids,
                       max_rank: int = 50) -> dict:
    """Market-1501-protocol metrics of a query x gallery distance matrix, as torchreid computes them.

    For each query the gallery is ranked by ascending distance, ties broken by gallery index
    (a stable sort); gallery items with the query's pid AND camera are removed; a query with no
    remaining true match is invalid and skipped. Over the valid queries:

    - ``cmc``: float64 array [max_rank], fraction of queries whose first match is at rank <= k
      (k = 1..max_rank; ranks past the gallery size repeat the final value, 1.0);
    - ``mAP``: mean AP, AP = mean over the true matches of precision at the match's rank;
    - ``mINP``: mean of (number of matches / rank of the hardest match) (fast-reid's mINP).

    Returns ``{"cmc", "mAP", "mINP", "num_valid_queries", "num_invalid_queries"}``. Raises
    ``ValueError`` on mismatched shapes or when no query is valid. ``distmat`` is read row by row
    (a ``np.memmap`` works) in its own dtype; nothing of its size is allocated.
    """
    distmat = np.asarray(distmat) if not isinstance(distmat, np.ndarray) else distmat
    q_pids, g_pids = np.asarray(q_pids).ravel(), np.asarray(g_pids).ravel()
    q_camids, g_camids = np.asarray(q_camids).ravel(), np.asarray(g_camids).ravel()
    if distmat.ndim != 2 or distmat.shape != (len(q_pids), len(g_pids)):
        raise ValueError(f"distmat has shape {distmat.shape}, expected ({len(q_pids)}, {len(g_pids)}) "
                         "from the query and gallery pids")
    if len(q_camids) != len(q_pids) or len(g_camids) != len(g_pids):
        raise ValueError("camera ids must have one entry per query / gallery item")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    first_hits = np.zeros(max_rank + 1, np.int64)  # histogram of first-match ranks (last bin: > max_rank)
    ap_sum = inp_sum = 0.0
    valid = 0
    for i, matches, junk in _valid_queries(q_pids, g_pids, q_camids, g_camids):
        ranks = _match_ranks(distmat[i], matches, junk)
        valid += 1
        first_hits[min(int(ranks[0]), max_rank + 1) - 1] += 1
        ap_sum += float(np.mean(np.arange(1, ranks.size + 1) / ranks))
        inp_sum += ranks.size / float(ranks[-1])
    if valid == 0:
        raise ValueError("no query has a true match in the gallery (same pid on another camera): "
                         "check the pids and camera ids")
    cmc = np.cumsum(first_hits[:max_rank]) / valid
    return {"cmc": cmc.astype(np.float64), "mAP": ap_sum / valid, "mINP": inp_sum / valid,
            "num_valid_queries": valid, "num_invalid_queries": len(q_pids) - valid}


def single_shot_cmc(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
                    repeats: int = 10, seed: int = 0) -> dict:
    """Single-shot CMC (CUHK03/CUHK01 classic protocol, torchreid's ``eval_cuhk03``).

    For each query the gallery items the Market protocol keeps (not the query's pid in the
    query's camera) are grouped by pid; each of ``repeats`` draws keeps one random item per pid,
    and the query's CMC of that draw is 1 from the rank of its sampled true match on (ranks by
    ascending distance, ties broken by gallery index). A query's CMC is the mean over its draws;
    the result is the mean over valid queries (those with a true match). The draws come from
    ``numpy.random.default_rng(seed)``, so the result is reproducible.

    Returns ``{"cmc": float64 [max_rank], "num_valid_queries", "num_invalid_queries",
    "repeats"}``; raises ValueError when no query is valid.
    """
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids).ravel(), np.asarray(g_pids).ravel()
    q_camids, g_camids = np.asarray(q_camids).ravel(), np.asarray(g_camids).ravel()
    if distmat.shape != (len(q_pids), len(g_pids)):
        raise ValueError(f"distmat has shape {distmat.shape}, expected ({len(q_pids)}, {len(g_pids)})")
    if repeats < 1 or max_rank < 1:
        raise ValueError("repeats and max_rank must be >= 1")
    rng = np.random.default_rng(seed)
    _, g_codes = np.unique(g_pids, return_inverse=True)
    hist = np.zeros(max_rank + 1, np.int64)   # ranks of the sampled match over all draws
    valid = 0
    for i, matches, junk in _valid_queries(q_pids, g_pids, q_camids, g_camids):
        keep = np.ones(len(g_pids), bool)
        keep[junk] = False
        kept = np.flatnonzero(keep)
        for before in _sampled_match_ranks(distmat[i, kept], kept, g_codes[kept], g_codes[matches[0]],
                                           repeats, rng):
            hist[min(before, max_rank)] += 1
        valid += 1
    if valid == 0:
        raise ValueError("no query has a true match in the gallery (same pid on another camera): "
                         "check the pids and camera ids")
    cmc = np.cumsum(hist[:max_rank]) / (valid * repeats)
    return {"cmc": cmc.astype(np.float64), "num_valid_queries": valid, "num_invalid_queries": len(q_pids) - valid,
            "repeats": repeats}


def _sampled_match_ranks(row: np.ndarray, kept: np.ndarray, codes: np.ndarray, match_code: int,
                         repeats: int, rng: np.random.Generator) -> list[int]:
    """One query's 0-based rank of its sampled true match in each of ``repeats`` draws of one
    gallery item per pid (``row``: its distances to the ``kept`` gallery items, ``codes``: their
    pid codes; ties broken by gallery index)."""
    out = []
    for _ in range(repeats):
        # one item per pid: the one with the largest random key within its pid
        order = np.lexsort((rng.random(len(kept)), codes))
        last = np.r_[codes[order][1:] != codes[order][:-1], True]
        pick = order[last]                       # positions in ``kept``, one per pid
        d = row[pick]
        m = pick[codes[pick] == match_code][0]
        dm = row[m]
        out.append(int(np.count_nonzero((d < dm) | ((d == dm) & (kept[pick] < kept[m])))))
    return out


def chance_level(q_pids, g_pids, q_camids, g_camids) -> dict:
    """Expected metrics of a random ranking under the Market protocol (the chance level).

    For each valid query (as in :func:`evaluate_retrieval`) with ``n`` true matches among the
    ``N`` gallery items left after removing same-pid-same-camera items, a uniformly random
    order gives rank-1 with probability ``n / N`` and an expected average precision of
    ``(H_N + (n - 1) / (N - 1) * (N - H_N)) / N`` (``H_N`` the N-th harmonic number). Returns
    ``{"rank1", "mAP"}``, each the mean over valid queries; raises ValueError when no query is
    valid.
    """
    q_pids, g_pids = np.asarray(q_pids).ravel(), np.asarray(g_pids).ravel()
    q_camids, g_camids = np.asarray(q_camids).ravel(), np.asarray(g_camids).ravel()
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, len(g_pids) + 1))])
    r1 = ap = 0.0
    valid = 0
    for _, matches, junk in _valid_queries(q_pids, g_pids, q_camids, g_camids):
        n = matches.size
        total = len(g_pids) - junk.size
        h = harmonic[total]
        r1 += n / total
        ap += (h + ((n - 1) / (total - 1) * (total - h) if total > 1 else 0.0)) / total
        valid += 1
    if valid == 0:
        raise ValueError("no query has a true match in the gallery (same pid on another camera): "
                         "check the pids and camera ids")
    return {"rank1": float(r1 / valid), "mAP": float(ap / valid)}


def pairwise_distance(qf: np.ndarray, gf: np.ndarray,
                      metric: Literal["euclidean", "cosine"] = "euclidean",
                      squared: bool = False, chunk: int = 1024) -> np.ndarray:
    """Query x gallery distances [Q, G], computed ``chunk`` query rows at a time.

    ``euclidean``: ``sqrt(max(|q|^2 + |g|^2 - 2 q.g, 0))`` (the square if ``squared``);
    ``cosine``: ``1 - cos(q, g)`` (rows normalised here; ``squared`` is not allowed).
    The result is float32 for float32 (or lower) inputs, float64 otherwise; arithmetic is done in
    that dtype, so for float32 the usual matrix-product rounding (about 1e-6 relative) applies.
    """
    qf, gf = np.asarray(qf), np.asarray(gf)
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"features must be [Q, D] and [G, D] with the same D, got {qf.shape} and {gf.shape}")
    dtype = np.result_type(qf.dtype, gf.dtype, np.float32)
    qf, gf = qf.astype(dtype, copy=False), gf.astype(dtype, copy=False)
    out = np.empty((qf.shape[0], gf.shape[0]), dtype)
    if metric == "cosine":
        if squared:
            raise ValueError("squared=True only applies to the euclidean metric")
        gn = gf / np.maximum(np.linalg.norm(gf, axis=1, keepdims=True), np.finfo(dtype).tiny)
        for s in range(0, qf.shape[0], chunk):
            q = qf[s:s + chunk]
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), np.finfo(dtype).tiny)
            np.matmul(q, gn.T, out=out[s:s + chunk])
            np.subtract(1, out[s:s + chunk], out=out[s:s + chunk])
        return out
    if metric != "euclidean":
        raise ValueError(f"unknown metric {metric!r}: expected 'euclidean' or 'cosine'")
    g2 = np.einsum("ij,ij->i", gf, gf)
    for s in range(0, qf.shape[0], chunk):
        q = qf[s:s + chunk]
        block = out[s:s + chunk]
        np.matmul(q, gf.T, out=block)
        block *= -2
        block += g2[None, :]
        block += np.einsum("ij,ij->i", q, q)[:, None]
        np.maximum(block, 0, out=block)
        if not squared:
            np.sqrt(block, out=block)
    return out


def _l2_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.finfo(x.dtype).tiny)


def fuse_features(real: np.ndarray | None, versions: np.ndarray, owners, n: int | None = None,
                  method: Literal["max", "mean", "concat"] = "max", normalise: bool = True) -> np.ndarray:
    """One L2-normalised vector per image from its real vector and its versions' vectors.

    ``real``: [N, D] (one vector per image, e.g. model A on the image) or None; ``versions``:
    [M, D'] (e.g. model B on pose-normalised versions), ``owners``: [M] the image index in
    0..N-1 each version belongs to (any number per image, none included). Input rows are
    L2-normalised here (as extracted features already are). Per image:

    - ``max``: element-wise maximum of its real vector and its versions (PN-GAN);
    - ``mean``: mean of the same vectors (real and versions weigh one each);
    - ``concat``: ``[real, mean of versions normalised]`` (zeros for a missing part); without
      ``real`` only the second part, so it equals ``mean``.

    ``max``/``mean`` need D == D'. With ``normalise`` the fused vector is L2-normalised again,
    so images fused from different numbers of vectors stay comparable; without it the fused
    vector is returned as computed (PN-GAN ranks the element-wise maximum itself by Euclidean
    distance). Returns float32 [N, D] (concat: [N, D + D']). Raises ValueError on bad shapes or
    an image with no vector at all.
    """
    if method not in FUSION_METHODS:
        raise ValueError(f"unknown fusion method {method!r}: expected one of {', '.join(FUSION_METHODS)}")
    real, versions, owners, n = _fusion_inputs(real, versions, owners, n)
    counts = np.bincount(owners, minlength=n)
    if real is None and (counts == 0).any():
        raise ValueError(f"image {int(np.flatnonzero(counts == 0)[0])} has neither a real vector nor a "
                         "version to describe it")
    if real is not None and method != "concat" and versions.shape[0] and versions.shape[1] != real.shape[1]:
        raise ValueError(f"'{method}' fuses vectors of one size; real vectors have {real.shape[1]} "
                         f"dimensions, versions {versions.shape[1]} (use concat)")
    return _fuse(real, versions, owners, counts, n, method, normalise)


def _fusion_inputs(real, versions, owners, n: int | None
                   ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, int]:
    """``fuse_features``' inputs as arrays, checked, their rows L2-normalised: ``(real or None,
    versions [M, D'], owners [M], n)``. Raises ValueError on bad shapes or owners."""
    versions = np.asarray(versions, np.float32)
    owners = np.asarray(owners, np.int64).ravel()
    if real is not None:
        real = _l2_rows(np.asarray(real, np.float32))
        if real.ndim != 2:
            raise ValueError(f"real features must be [N, D], got shape {real.shape}")
        n = real.shape[0] if n is None else n
        if real.shape[0] != n:
            raise ValueError(f"{real.shape[0]} real vectors for {n} images")
    if n is None:
        raise ValueError("give n (the number of images) when there are no real vectors")
    if versions.size == 0:
        versions = versions.reshape(0, real.shape[1] if real is not None else 1)
    if versions.ndim != 2 or len(owners) != versions.shape[0]:
        raise ValueError(f"versions must be [M, D] with one owner each, got {versions.shape} and "
                         f"{len(owners)} owners")
    if owners.size and (owners.min() < 0 or owners.max() >= n):
        raise ValueError(f"owner indices must lie in 0..{n - 1}")
    versions = _l2_rows(versions) if versions.shape[0] else versions
    return real, versions, owners, n


def _fuse(real: np.ndarray | None, versions: np.ndarray, owners: np.ndarray, counts: np.ndarray, n: int,
          method: str, normalise: bool) -> np.ndarray:
    """The fused vectors of checked inputs (see :func:`fuse_features`)."""
    d = versions.shape[1] if versions.shape[0] or real is None else real.shape[1]
    final = _l2_rows if normalise else (lambda x: x)
    if method == "max":
        out = np.full((n, d), -np.inf, np.float32) if real is None else real.copy()
        np.maximum.at(out, owners, versions)
        return final(out)
    sums = np.zeros((n, d), np.float32)
    np.add.at(sums, owners, versions)
    if method == "mean":
        if real is None:
            return final(sums / np.maximum(counts, 1)[:, None])
        return final((sums + real) / (counts + 1)[:, None].astype(np.float32))
    if not normalise:  # [real, mean of the versions] (zeros for a missing part)
        part = sums / np.maximum(counts, 1)[:, None].astype(np.float32)
        return part if real is None else np.concatenate([real, part], axis=1)
    part = _l2_rows(sums)  # the mean's direction; rows without versions stay zero
    if real is None:
        return part
    return _l2_rows(np.concatenate([real, part], axis=1))
