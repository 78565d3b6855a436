"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) without dense (q+g)^2 matrices.

The reference algorithm, on the N = q + g items (queries first):

1. ``O = fl32(D**2)`` of the full Euclidean distance matrix; row ``i`` of ``R`` is column ``i`` of
   ``O`` divided by that column's maximum (float32 arithmetic, as the reference casts);
2. neighbour lists: ``R``'s rows sorted ascending. Here the sort is *stable* (ties by item
   index); only the first ``max(k1 + 1, k2)`` entries of each row are ever used;
3. k-reciprocal set of i: the forward top ``k1 + 1`` that have i in their own top ``k1 + 1``;
   expanded by the ``round(k1 / 2)`` reciprocal set of each member c (``np.around``) when more
   than 2/3 of that set lies in i's set; V[i, set] = exp(-R[i, set]) / sum;
4. local query expansion: V[i] = mean of V over i's top ``k2`` neighbours (when ``k2 != 1``);
5. Jaccard distance 1 - m / (2 - m), m = sum_c min(V[i, c], V[j, c]) over shared columns;
6. result ``(1 - lambda) * jaccard + lambda * R`` on the query x gallery block.

Only the neighbour lists, the row maxima and sparse V are kept, so memory is O(N * k1) besides
the q x g output. ``rerank`` takes the three distance matrices (read one block of columns at a
time). ``rerank_features`` computes the distances from features in ``chunk`` x ``chunk`` tiles of
one float32 matrix product over the upper triangle of the symmetric N x N matrix (each tile
serves its rows and its columns; ``workers`` threads screen tiles at once, each tile one
single-threaded BLAS product). Per row it keeps the neighbour candidates whose float32 value is
within a rigorous rounding-error margin (twice the worst-case bound of the float32 product) of the
k-th smallest, and recomputes in float64 every candidate whose float32 value is within that
margin of another candidate: only those can change order, so the neighbour lists (and with them
every k-reciprocal set) are the ones float64 distances give. Values that only enter as weights
are float32-accurate: the row maxima and the ``lambda * R`` term of the q x g block come from the
float32 tiles (about 1e-6 relative on L2-normalised features).

Differences to the reference, all at float32-rounding level: sums in steps 3-5 are accumulated in
float64 and rounded to float32 (the reference accumulates in float32), plus the float32 values
just mentioned for ``rerank_features``. Ties in the neighbour order are broken by item index (the
reference uses numpy's default, unstable, argsort).
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
from threadpoolctl import threadpool_limits

__all__ = ["rerank", "rerank_features"]

_U = 2.0 ** -24  # float32 unit roundoff


@dataclass
class _Neighbours:
    """What the core needs from the N x N distances: sorted neighbour lists and lookups."""

    nbr: np.ndarray                     # [N, K] int64 neighbours of each item, ascending R, stable
    key: np.ndarray                     # [N, K] float32 R values of those neighbours
    pair_key: Callable                  # (rows, cols) -> float32 R[rows, cols]
    qg_block: Callable                  # (start, stop) -> float32 R[start:stop, q:]
    num_query: int
    out: np.ndarray | None = None       # float32 [q, g] buffer for the result: qg_block(s, e)
                                        # may read rows s:e of it, which the core then overwrites


# ---------------------------------------------------------------------------------------------
# threads and phase timings


def _cpu_workers(workers: int | None) -> int:
    """``workers`` checked, or the number of CPUs this process may run on when None."""
    if workers is None:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)
    if int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return int(workers)


def _run(pool: ThreadPoolExecutor | None, fn: Callable, items: Iterable) -> None:
    """``fn(item)`` for every item, on ``pool``'s threads when given (errors are re-raised)."""
    if pool is None:
        for item in items:
            fn(item)
    else:
        for _ in pool.map(fn, items):
            pass


@contextmanager
def _blas_threads(limit: int | None) -> Iterator[None]:
    """BLAS limited to ``limit`` threads (process-wide) inside the block; no change when None."""
    if limit is None:
        yield
        return
    with threadpool_limits(limits=limit, user_api="blas"):
        yield


class _Phases:
    """Adds each phase's wall and process CPU seconds to a caller's dict (nothing when None)."""

    def __init__(self, out: dict | None):
        self.out = out

    @contextmanager
    def __call__(self, name: str, workers: int = 1) -> Iterator[None]:
        if self.out is None:
            yield
            return
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            rec = self.out.setdefault(name, {"seconds": 0.0, "cpu_seconds": 0.0, "workers": workers})
            rec["seconds"] += time.perf_counter() - wall
            rec["cpu_seconds"] += time.process_time() - cpu


# ---------------------------------------------------------------------------------------------
# core (steps 3-6)


def _unique(x: np.ndarray, return_inverse: bool = False):
    """``np.unique(x)`` (sorted unique values, and the inverse when asked) by one sort: numpy 2's
    hash-based unique is many times slower on these million-element integer codes."""
    if not return_inverse:
        x = np.sort(x)
        return x[np.concatenate(([True], x[1:] != x[:-1]))]
    order = np.argsort(x, kind="stable")
    xs = x[order]
    first = np.concatenate(([True], xs[1:] != xs[:-1]))
    inverse = np.empty(len(x), np.int64)
    inverse[order] = np.cumsum(first) - 1
    return xs[first], inverse


def _reciprocal(nbr: np.ndarray, k: int, pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """Mask [N, k + 1]: forward neighbour j of i (within top k + 1) has i in its own top k + 1."""
    fwd = nbr[:, :k + 1]
    n = fwd.shape[0]
    mask = np.zeros(fwd.shape, bool)
    step = max(1, 500_000 // max(1, (k + 1) ** 2))

    def rows(s: int) -> None:
        f = fwd[s:s + step]
        back = nbr[f, :k + 1]  # [b, k+1, k+1]
        mask[s:s + step] = (back == np.arange(s, s + len(f))[:, None, None]).any(axis=2)

    _run(pool, rows, range(0, n, step))
    return mask


def _v_matrix(nb: _Neighbours, k1: int, pool: ThreadPoolExecutor | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse V as CSR (indptr, indices, float32 data) over the N items (steps 3 of the module doc)."""
    nbr = nb.nbr
    n = nbr.shape[0]
    k1 = min(k1, nbr.shape[1] - 1)
    half = min(int(np.around(k1 / 2.0)), nbr.shape[1] - 1)
    rmask = _reciprocal(nbr, k1, pool)
    hmask = _reciprocal(nbr, half, pool)
    r_pad = np.where(rmask, nbr[:, :k1 + 1], -1)       # R(i, k1), -1 = absent
    h_pad = np.where(hmask, nbr[:, :half + 1], -2)     # R(c, k1/2), -2 = absent
    h_len = hmask.sum(axis=1)
    pi, pj = np.nonzero(rmask)                         # pairs (i, candidate c = nbr[i, pj])
    cand = nbr[pi, pj]
    accept = np.zeros(len(pi), bool)
    step = 50_000

    def pairs(s: int) -> None:
        hs = h_pad[cand[s:s + step]]                   # [p, half+1]
        rs = r_pad[pi[s:s + step]]                     # [p, k1+1]
        inter = (hs[:, :, None] == rs[:, None, :]).any(axis=2).sum(axis=1)
        accept[s:s + step] = inter > 2.0 / 3 * h_len[cand[s:s + step]]

    _run(pool, pairs, range(0, len(pi), step))
    rows = [pi, np.repeat(pi[accept], h_len[cand[accept]])]
    cols = [cand, h_pad[cand[accept]][hmask[cand[accept]]]]
    code = _unique(np.concatenate(rows) * n + np.concatenate(cols))  # sorted by (i, x), unique
    vi, vx = code // n, code % n
    # R[i, x]: from the neighbour lists where possible, else computed
    flat = (np.arange(n)[:, None] * n + nbr).ravel()
    order = np.argsort(flat, kind="stable")
    pos = np.searchsorted(flat[order], code)
    pos = np.minimum(pos, len(flat) - 1)
    found = flat[order][pos] == code
    keys = np.empty(len(code), np.float32)
    keys[found] = nb.key.ravel()[order][pos[found]]
    if (~found).any():
        keys[~found] = nb.pair_key(vi[~found], vx[~found])
    weight = np.exp(-keys)
    indptr = np.concatenate(([0], np.cumsum(np.bincount(vi, minlength=n))))
    # each row normalised by its sum (float64 sum rounded to float32; the reference sums in float32)
    row_sum = np.bincount(vi, weights=weight.astype(np.float64), minlength=n).astype(np.float32)
    data = (weight / row_sum[vi]).astype(np.float32)
    return indptr, vx, data


def _query_expansion(indptr, indices, data, nbr: np.ndarray, k2: int,
                     pool: ThreadPoolExecutor | None = None, step: int = 2048):
    """V_qe[i] = mean of V over i's top-k2 neighbours (float64 sums, float32 result), as CSR.

    Blocks of ``step`` rows are independent (on ``pool``'s threads when given); each row's sums
    add its terms in the same order whatever the blocks.
    """
    n = len(indptr) - 1
    lens = np.diff(indptr)
    parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def rows(s: int) -> None:
        e = min(n, s + step)
        srcf = nbr[s:e, :k2].ravel()                   # [rows * k2] sources
        cnt = lens[srcf]
        out_rows = np.repeat(np.repeat(np.arange(s, e), k2), cnt)
        starts = np.repeat(indptr[srcf], cnt)
        offs = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        take = starts + offs
        code = out_rows.astype(np.int64) * n + indices[take]
        uniq, inv = _unique(code, return_inverse=True)
        sums = np.bincount(inv, weights=data[take].astype(np.float64), minlength=len(uniq))
        parts[s] = uniq, (sums.astype(np.float32) / np.float32(k2)).astype(np.float32)

    _run(pool, rows, range(0, n, step))
    uniq = np.concatenate([parts[s][0] for s in sorted(parts)])
    vals = np.concatenate([parts[s][1] for s in sorted(parts)])
    new_ptr = np.concatenate(([0], np.cumsum(np.bincount(uniq // n, minlength=n))))
    return new_ptr, uniq % n, vals


def _core(nb: _Neighbours, k1: int, k2: int, lambda_value: float, chunk: int = 128,
          pool: ThreadPoolExecutor | None = None, workers: int = 1,
          phases: _Phases | None = None) -> np.ndarray:
    """Steps 3-6 of the module docstring on precomputed neighbour lists; returns float32 [q, g]."""
    phases = phases or _Phases(None)
    n, q = nb.nbr.shape[0], nb.num_query
    g = n - q
    with phases("reciprocal_sets", workers):
        indptr, indices, data = _v_matrix(nb, k1, pool)
    if k2 != 1:
        with phases("query_expansion", workers):
            indptr, indices, data = _query_expansion(indptr, indices, data, nb.nbr, k2, pool)
    with phases("jaccard", workers):
        return _jaccard(nb, indptr, indices, data, lambda_value, chunk, pool)


def _jaccard(nb: _Neighbours, indptr, indices, data, lambda_value: float, chunk: int,
             pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """Step 5-6: ``(1 - lambda) * jaccard + lambda * R`` on the q x g block from CSR V."""
    n, q = nb.nbr.shape[0], nb.num_query
    g = n - q
    # inverted index over gallery rows: for each column c, the gallery rows j with V[j, c] != 0
    rows_of = np.repeat(np.arange(n), np.diff(indptr))
    gal = rows_of >= q
    g_rows, g_cols, g_vals = rows_of[gal] - q, indices[gal], data[gal]
    order = np.argsort(g_cols, kind="stable")
    g_rows, g_cols, g_vals = g_rows[order], g_cols[order], g_vals[order]
    colptr = np.concatenate(([0], np.cumsum(np.bincount(g_cols, minlength=n))))
    out = nb.out if nb.out is not None else np.empty((q, g), np.float32)
    lam = np.float32(lambda_value)

    def rows(s: int) -> None:
        e = min(q, s + chunk)
        a, b = indptr[s], indptr[e]
        qi = rows_of[a:b] - s
        qc, qv = indices[a:b], data[a:b]
        cnt = colptr[qc + 1] - colptr[qc]
        total = int(cnt.sum())
        take = np.repeat(colptr[qc], cnt) + (np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt))
        mins = np.minimum(np.repeat(qv, cnt), g_vals[take]).astype(np.float64)
        target = np.repeat(qi, cnt).astype(np.int64) * g + g_rows[take]
        jac = np.bincount(target, weights=mins, minlength=(e - s) * g).astype(np.float32)
        jac = jac.reshape(e - s, g)                      # shared mass m, then in place:
        jac /= np.float32(2) - jac                       # m / (2 - m)
        np.subtract(np.float32(1), jac, out=jac)         # Jaccard distance 1 - m / (2 - m)
        jac *= np.float32(1) - lam
        jac += nb.qg_block(s, e) * lam
        out[s:e] = jac

    _run(pool, rows, range(0, q, chunk))  # chunks write disjoint rows of out
    return out


# ---------------------------------------------------------------------------------------------
# neighbour lists from distance matrices


def _topk_rows(r: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """First ``k`` columns of each row of ``r`` in stable ascending order, and their values."""
    kth = np.partition(r, k - 1, axis=1)[:, k - 1]
    rr, cc = np.nonzero(r <= kth[:, None])
    vv = r[rr, cc]
    order = np.lexsort((cc, vv, rr))
    rr, cc, vv = rr[order], cc[order], vv[order]
    start = np.concatenate(([0], np.cumsum(np.bincount(rr, minlength=r.shape[0]))[:-1]))
    take = (start[:, None] + np.arange(k)[None, :]).ravel()
    return cc[take].reshape(-1, k), vv[take].reshape(-1, k)


def _matrix_neighbours(q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, k: int,
                       chunk: int = 1024) -> _Neighbours:
    """Neighbour lists and lookups from the three distance matrices, a block of rows at a time."""
    q, g = q_g.shape
    n = q + g
    k = min(k, n)

    def column(a: int, b: int) -> np.ndarray:
        """Rows a:b of O.T, i.e. columns a:b of the full squared matrix as float32 rows."""
        parts = []
        if a < q:
            qb = min(b, q)
            parts.append(np.concatenate([q_q[:, a:qb].T, q_g[a:qb, :]], axis=1))
        if b > q:
            ga = max(a, q) - q
            parts.append(np.concatenate([q_g[:, ga:b - q].T, g_g[:, ga:b - q].T], axis=1))
        full = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        return np.power(full, 2).astype(np.float32)

    nbr = np.empty((n, k), np.int64)
    key = np.empty((n, k), np.float32)
    colmax = np.empty(n, np.float32)
    for s in range(0, n, chunk):
        o = column(s, min(n, s + chunk))
        colmax[s:s + len(o)] = o.max(axis=1)
        r = o / colmax[s:s + len(o), None]
        nbr[s:s + len(o)], key[s:s + len(o)] = _topk_rows(r, k)

    def full_at(x: np.ndarray, i: np.ndarray) -> np.ndarray:
        out = np.empty(len(x), np.result_type(q_g.dtype, q_q.dtype, g_g.dtype))
        m = (x < q) & (i < q); out[m] = q_q[x[m], i[m]]
        m = (x < q) & (i >= q); out[m] = q_g[x[m], i[m] - q]
        m = (x >= q) & (i < q); out[m] = q_g[i[m], x[m] - q]
        m = (x >= q) & (i >= q); out[m] = g_g[x[m] - q, i[m] - q]
        return out

    def pair_key(rows, cols):
        return np.power(full_at(cols, rows), 2).astype(np.float32) / colmax[rows]

    def qg_block(a, b):
        return np.power(q_g[a:b], 2).astype(np.float32) / colmax[a:b, None]

    return _Neighbours(nbr, key, pair_key, qg_block, q)


def rerank(q_g_dist: np.ndarray, q_q_dist: np.ndarray, g_g_dist: np.ndarray, k1: int = 20,
           k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """k-reciprocal re-ranked query x gallery distances (float32 [q, g]) from Euclidean distances.

    Takes plain (not squared) distances, as the reference ``re_ranking`` does, and squares them
    itself. Equal to the reference algorithm with stable sorts (ties by item index, queries first)
    within float32 rounding; see the module docstring. Never builds an N x N matrix itself.
    """
    q_g, q_q, g_g = (np.asarray(m) for m in (q_g_dist, q_q_dist, g_g_dist))
    q, g = q_g.shape
    if q_q.shape != (q, q) or g_g.shape != (g, g):
        raise ValueError(f"expected q_q_dist {(q, q)} and g_g_dist {(g, g)} for q_g_dist {(q, g)}, "
                         f"got {q_q.shape} and {g_g.shape}")
    _check_params(k1, k2, lambda_value)
    nb = _matrix_neighbours(q_g, q_q, g_g, max(k1 + 1, k2))
    return _core(nb, k1, k2, lambda_value)


def _check_params(k1: int, k2: int, lambda_value: float) -> None:
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")


# ---------------------------------------------------------------------------------------------
# neighbour lists from features


class _Stacked:
    """The rows of [qf; gf] (float32) read from the two arrays: no (q + g) x D copy is made.

    ``f[a:b]`` and ``f[int array]`` give float32 rows as indexing the stacked array would.
    """

    def __init__(self, qf: np.ndarray, gf: np.ndarray):
        self.qf, self.gf = qf, gf
        self.q = len(qf)
        self.shape = (len(qf) + len(gf), qf.shape[1])

    def __getitem__(self, index) -> np.ndarray:
        q = self.q
        if isinstance(index, slice):
            a, b, _ = index.indices(self.shape[0])
            if b <= q:
                return self.qf[a:b]
            if a >= q:
                return self.gf[a - q:b - q]
            return np.concatenate([self.qf[a:], self.gf[:b - q]])
        index = np.asarray(index)
        if len(index) and index.max() < q:
            return self.qf[index]
        if len(index) and index.min() >= q:
            return self.gf[index - q]
        out = np.empty((len(index), self.shape[1]), np.float32)
        inq = index < q
        out[inq] = self.qf[index[inq]]
        out[~inq] = self.gf[index[~inq] - q]
        return out

    def mean64(self, step: int = 1024) -> np.ndarray:
        """Float64 column means, the bits of the stacked array's ``mean(axis=0, dtype=float64)``
        (numpy adds the rows one after another; so does this, a block at a time)."""
        total = np.zeros(self.shape[1], np.float64)
        for part in (self.qf, self.gf):
            for s in range(0, len(part), step):
                block = np.concatenate([total[None], part[s:s + step].astype(np.float64)])
                total = np.add.reduce(block, axis=0)
        return total / self.shape[0]


def _d2_pairs(f: _Stacked, rows: np.ndarray, cols: np.ndarray, pool: ThreadPoolExecutor | None = None,
              step: int = 64) -> np.ndarray:
    """Float64 squared distances sum((f[r] - f[c])**2) of the item pairs (rows[i], cols[i]).

    The differences of float32 values are exact in float64, so there is no cancellation. Blocks
    of ``step`` pairs run on ``pool``'s threads when given (numpy releases the GIL here).
    """
    out = np.empty(len(rows), np.float64)

    def block(s: int) -> None:
        diff = np.subtract(f[rows[s:s + step]], f[cols[s:s + step]], dtype=np.float64)
        out[s:s + step] = np.einsum("ij,ij->i", diff, diff)

    _run(pool, block, range(0, len(rows), step))
    return out


def _o_of_d2(d2: np.ndarray) -> np.ndarray:
    """The reference's fl32(D**2) for D = sqrt(max(d2, 0)), D the Euclidean distance in float64."""
    return np.power(np.sqrt(np.maximum(d2, 0.0)), 2).astype(np.float32)


class _Candidates:
    """Growing (row, col, float32 value) candidate lists; ``add`` may be called from any thread."""

    def __init__(self):
        self.parts: list[tuple] = []

    def add(self, r, c, v):
        self.parts.append((r.astype(np.int64), c.astype(np.int64), v.astype(np.float32)))

    def arrays(self):
        if not self.parts:
            return (np.zeros(0, np.int64),) * 2 + (np.zeros(0, np.float32),)
        return tuple(np.concatenate(x) for x in zip(*self.parts))


def _tile_factors(f: _Stacked, pool: ThreadPoolExecutor | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augmented float32 factors ``left``, ``right`` [N, D + 2] and the per-row error margin [N].

    Tiles hold d2 = [c_i, |c_i|^2, 1] . [-2 c_j, 1, |c_j|^2] from one float32 product, where
    c = fl32(f - mean): centring keeps |c| at the scale of the distances (no cancellation for
    features far from the origin). The product's error is at most
    gamma_(D+2) * (2 |c_i| |c_j| + |c_i|^2 + |c_j|^2) in any summation order and the centring
    rounding moves d2 by at most 4u (|c_i| + |c_j|)^2; err doubles the sum of both, and
    candidates are kept within 2 err plus two float32 ulps (the margin).
    """
    n, dim = f.shape
    mean = f.mean64()
    left = np.empty((n, dim + 2), np.float32)
    right = np.empty((n, dim + 2), np.float32)
    n64 = np.empty(n, np.float64)

    def rows(s: int) -> None:
        c = left[s:s + 1024, :dim]
        np.subtract(f[s:s + 1024], mean, out=c, casting="same_kind")  # float64, rounded once
        n64[s:s + 1024] = np.einsum("ij,ij->i", c, c, dtype=np.float64)
        np.multiply(c, -2, out=right[s:s + 1024, :dim])

    _run(pool, rows, range(0, n, 1024))
    n32 = n64.astype(np.float32)
    amax = float(np.sqrt(n64.max())) if n else 0.0
    a = np.sqrt(n64)
    err = 2 * ((dim + 8) * _U * (2 * a * amax + n64 + amax ** 2) + 4 * _U * (a + amax) ** 2)
    margin = (2 * err + 8 * _U * (n64 + amax ** 2)).astype(np.float32)
    left[:, dim], left[:, dim + 1] = n32, 1
    right[:, dim], right[:, dim + 1] = 1, n32
    return left, right, margin


class _TileScreen:
    """Screens float32 tiles of the N x N squared distances for each item's candidates.

    Keeps, per item, ``mu`` (its largest float32 d2 so far) and ``tau`` (an upper bound of its
    k-th smallest), and pools every entry within the margin of either: ``maxima`` (candidates for
    the row maximum) and ``near`` (candidates for the k nearest). Also copies the query x gallery
    block into ``d2qg``. Tiles may be screened concurrently from several threads: the running
    bounds are read and tightened under a lock, and a bound read before another thread tightened
    it is only looser, so the pools are then supersets of what a sequential scan pools (the
    final selection from them is the same).
    """

    def __init__(self, n: int, q: int, k: int, margin: np.ndarray, tile: int):
        self.k, self.q, self.margin = k, q, margin
        self.tau = np.full(n, np.inf, np.float32)
        self.mu = np.full(n, -np.inf, np.float32)
        self.near, self.maxima = _Candidates(), _Candidates()
        self.d2qg = np.empty((q, n - q), np.float32)
        self.groups = max(k, min(4 * k, tile))
        self.lock = threading.Lock()

    def tile(self, block: np.ndarray, i0: int, j0: int) -> None:
        """Screen ``block`` = d2 of rows i0.. x columns j0.. (j0 >= i0: the upper triangle)."""
        i1, j1 = i0 + block.shape[0], j0 + block.shape[1]
        q = self.q
        if i0 < q and j1 > q:  # query rows x gallery columns of this tile
            ra, rb, ca = i0, min(i1, q), max(j0, q)
            self.d2qg[ra:rb, ca - q:j1 - q] = block[:rb - i0, ca - j0:]
        self.screen(block, 1, np.arange(i0, i1), j0)
        if j0 != i0:
            self.screen(block, 0, np.arange(j0, j1), i0)

    def screen(self, block: np.ndarray, axis: int, items: np.ndarray, other0: int) -> None:
        """Update maxima, tau and the candidate pools of ``items`` along ``axis`` of ``block``.

        ``axis=1``: block rows are ``items`` (columns are items other0, other0+1, ...);
        ``axis=0``: block columns are ``items``. No transposed copy is made.
        """
        along = (lambda x: x[:, None]) if axis == 1 else (lambda x: x[None, :])
        bmax = block.max(axis=axis)
        with self.lock:
            mx = np.maximum(self.mu[items], bmax)
            self.mu[items] = mx
            t = self.tau[items]
        margin = self.margin[items]
        low = mx - margin
        some = np.flatnonzero(bmax >= low)  # only these items have maximum candidates here
        if 4 * len(some) > len(items):
            r, c, v = self._hits(block, block >= along(low), axis)
        elif len(some):  # after the first tiles: compare only their rows (columns)
            part = block[some] if axis == 1 else block[:, some]
            r, c, v = self._hits(part, part >= along(low[some]), axis)
            r = some[r]
        else:
            r = c = v = np.zeros(0, np.int64)
        self.maxima.add(items[r], c + other0, v)
        if block.shape[axis] >= self.k and np.isinf(t).any():
            np.minimum(t, self._first_bound(block, axis), out=t)
        r, c, v = self._hits(block, block <= along(t + margin), axis)
        t = self._tightened(t, r, v, len(items))
        keep = v <= t[r] + margin[r]  # t only fell: the rest can never be selected
        self.near.add(items[r[keep]], c[keep] + other0, v[keep])
        with self.lock:
            np.minimum(self.tau[items], t, out=t)
            self.tau[items] = t

    @staticmethod
    def _hits(block: np.ndarray, mask: np.ndarray, axis: int):
        """Entries of ``block`` under ``mask``: (item index, other index, value) along ``axis``."""
        hit = np.flatnonzero(mask)
        r, c = np.divmod(hit, block.shape[1])
        v = block.ravel()[hit]
        if axis == 0:
            r, c = c, r
        return r, c, v

    def _first_bound(self, block: np.ndarray, axis: int) -> np.ndarray:
        """A cheap upper bound of each item's k-th smallest d2 in ``block``: the k-th smallest of
        the minima of ``groups`` disjoint column groups (group gg = other items j with j % ng == gg)."""
        m, width, k = block.shape[1 - axis], block.shape[axis], self.k
        ng = min(self.groups, width)
        length = width // ng
        if axis == 1:
            gmin = block[:, :ng * length].reshape(m, length, ng).min(axis=1)
            return np.partition(gmin, k - 1, axis=1)[:, k - 1]
        gmin = block[:ng * length].reshape(length, ng, m).min(axis=0)
        return np.partition(gmin, k - 1, axis=0)[k - 1]

    def _tightened(self, t: np.ndarray, r: np.ndarray, v: np.ndarray, m: int) -> np.ndarray:
        """``t`` lowered to (an upper bound within 1e-9 of) each item's k-th smallest pooled value
        ``v`` of this tile (``r``: item index of each value): one sort of row * span + value."""
        counts = np.bincount(r, minlength=m)
        ok = counts >= self.k
        if ok.any() and v.size:
            lo = float(v.min())
            span = float(v.max()) - lo + 1.0
            keys = np.sort(r * span + (v.astype(np.float64) - lo))
            start = np.cumsum(counts) - counts
            kth = keys[start[ok] + self.k - 1] - np.flatnonzero(ok) * span + lo
            t[ok] = np.minimum(t[ok], (kth + 1e-9 * (1.0 + np.abs(kth))).astype(np.float32))
        return t


def _scan_tiles(left: np.ndarray, right: np.ndarray, screen: _TileScreen, tile: int,
                pool: ThreadPoolExecutor | None) -> None:
    """All ``tile`` x ``tile`` tiles of the upper triangle of left @ right.T, each screened.

    Each thread reuses one tile buffer (fresh 16 MB arrays cost page faults); with a pool the
    tiles run on its threads, BLAS limited to one thread each by the caller.
    """
    n = left.shape[0]
    local = threading.local()

    def one(ij: tuple[int, int]) -> None:
        i0, j0 = ij
        i1, j1 = min(n, i0 + tile), min(n, j0 + tile)
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = np.empty(tile * tile, np.float32)
        block = buf[:(i1 - i0) * (j1 - j0)].reshape(i1 - i0, j1 - j0)
        np.matmul(left[i0:i1], right[j0:j1].T, out=block)
        screen.tile(block, i0, j0)

    _run(pool, one, [(i0, j0) for i0 in range(0, n, tile) for j0 in range(i0, n, tile)])


def _row_maxima(f: _Stacked, screen: _TileScreen, pool: ThreadPoolExecutor | None) -> np.ndarray:
    """M_i = max over all items of fl32(D^2): every pooled item within the margin of the float32
    maximum, recomputed in float64 (usually one or two per row)."""
    r, col, v = screen.maxima.arrays()
    keep = v >= screen.mu[r] - screen.margin[r]
    colmax = np.zeros(len(screen.mu), np.float32)
    np.maximum.at(colmax, r[keep], _o_of_d2(_d2_pairs(f, r[keep], col[keep], pool)))
    return colmax


def _kth_smallest(r: np.ndarray, v: np.ndarray, n: int, k: int) -> np.ndarray:
    """The k-th smallest float32 ``v`` of each row 0..n-1 (``r``: row of each value; every row
    has at least k): one sort of uint64 keys row << 32 | order-preserving bits of v."""
    bits = v.astype(np.float32).view(np.uint32)
    bits = np.where(bits & 0x80000000, ~bits, bits | 0x80000000).astype(np.uint64)
    keys = np.sort((r.astype(np.uint64) << np.uint64(32)) | bits)
    counts = np.bincount(r, minlength=n)
    low = (keys[np.cumsum(counts) - counts + k - 1] & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return np.where(low & 0x80000000, low ^ 0x80000000, ~low).view(np.float32)


def _neighbour_lists(f: _Stacked, screen: _TileScreen, colmax: np.ndarray, k: int,
                     pool: ThreadPoolExecutor | None, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Each item's first ``k`` neighbours [N, k] (ascending R, ties by index) and their R values.

    Candidates sorted by float32 d2; a candidate is kept if it is within the margin of the row's
    k-th smallest, and recomputed in float64 only when its float32 value is within the margin of
    a neighbouring candidate (only there can rounding change the order). Rows are handled in
    blocks of ``block`` items, independently (on ``pool``'s threads when given).
    """
    n = len(colmax)
    r, c, v = screen.near.arrays()
    # tau only fell while the tiles were screened: drop what the final bounds exclude before sorting
    pre = v <= screen.tau[r] + screen.margin[r]
    r, c, v = r[pre], c[pre], v[pre]
    starts = np.arange(0, n, block)
    which = (r // block).astype(np.min_scalar_type(len(starts)))  # small ints: a counting sort
    order = np.argsort(which, kind="stable")
    bounds = np.searchsorted(which[order], np.arange(len(starts) + 1))
    nbr = np.empty((n, k), np.int64)
    key = np.empty((n, k), np.float32)

    def rows(b: int) -> None:
        s = int(starts[b])
        take = order[bounds[b]:bounds[b + 1]]
        e = min(n, s + block)
        nbr[s:e], key[s:e] = _block_lists(f, r[take] - s, c[take], v[take], s, e - s,
                                          screen.margin[s:e], colmax[s:e], k)

    _run(pool, rows, range(len(starts)))
    return nbr, key


def _block_lists(f: _Stacked, r: np.ndarray, c: np.ndarray, v: np.ndarray, s: int, m: int,
                 margin: np.ndarray, colmax: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``_neighbour_lists`` for the ``m`` items s, s + 1, ... (``r``: their index minus s;
    ``margin`` and ``colmax`` theirs)."""
    keep = v <= _kth_smallest(r, v, m, k)[r] + margin[r]
    r, c, v = r[keep], c[keep], v[keep]
    order = np.lexsort((c, v, r))
    r, c, v = r[order], c[order], v[order]
    close = (np.diff(v) <= margin[r[1:]]) & (r[1:] == r[:-1])
    amb = np.zeros(len(r), bool)
    amb[1:] |= close
    amb[:-1] |= close
    key = np.maximum(v, 0) / colmax[r]
    if amb.any():
        key[amb] = _o_of_d2(_d2_pairs(f, r[amb] + s, c[amb])) / colmax[r[amb]]
    order = np.lexsort((c, key, r))
    r, c, key = r[order], c[order], key[order]
    counts = np.bincount(r, minlength=m)
    start = np.cumsum(counts) - counts
    take = (start[:, None] + np.arange(k)[None, :]).ravel()
    return c[take].reshape(m, k), key[take].reshape(m, k)


def _feature_neighbours(f: _Stacked, q: int, k: int, tile: int, pool: ThreadPoolExecutor | None = None,
                        workers: int = 1, phases: _Phases | None = None) -> _Neighbours:
    """Neighbour lists from features (rows of ``f``) via tiled float32 products + float64 refinement.

    The float32 squared distances of the q x g block (for the lambda term) are kept in the
    result's ``out`` buffer, which the core overwrites with the re-ranked distances (one q x g
    array instead of two).
    """
    phases = phases or _Phases(None)
    n = f.shape[0]
    k = min(k, n)
    with phases("factors", workers):
        left, right, margin = _tile_factors(f, pool)
        screen = _TileScreen(n, q, k, margin, tile)
    with phases("tiles", workers), _blas_threads(1):  # the same float32 tiles for any workers
        _scan_tiles(left, right, screen, tile, pool)
    del left, right
    with phases("maxima", workers):
        colmax = _row_maxima(f, screen, pool)
    with phases("lists", workers):
        nbr, nkey = _neighbour_lists(f, screen, colmax, k, pool, block=tile)
    d2qg = screen.d2qg
    del screen

    def pair_key(rows, cols):
        return _o_of_d2(_d2_pairs(f, rows, cols, pool)) / colmax[rows]

    def qg_block(s, e):
        return np.maximum(d2qg[s:e], 0) / colmax[s:e, None]

    return _Neighbours(nbr, nkey, pair_key, qg_block, q, out=d2qg)


def rerank_features(qf: np.ndarray, gf: np.ndarray, k1: int = 20, k2: int = 6,
                    lambda_value: float = 0.3, chunk: int = 2048, workers: int | None = None,
                    timings: dict | None = None) -> np.ndarray:
    """k-reciprocal re-ranked query x gallery distances (float32 [q, g]) from features.

    The same as ``rerank`` on the Euclidean distances of the features computed in float64
    (within float32 rounding, see the module docstring), without any (q+g)^2 matrix: the N x N
    distances are produced in ``chunk`` x ``chunk`` float32 tiles of mean-centred features
    (upper triangle only); neighbour candidates near a float32 tie are recomputed in float64, so
    the neighbour lists (hence the k-reciprocal sets) are those of float64 distances. Features
    are used as float32 (float64 input is rounded to float32 first). Memory besides the inputs:
    two augmented float32 copies of the features for the product (plus a float32 copy of input
    that is not float32), the q x g output (which holds the float32 q x g distances until it is
    overwritten), one tile per worker, and O((q + g) * k1) for the neighbour lists and V.

    ``workers`` threads (default: the CPUs this process may use) share the tiles, each tile one
    single-threaded BLAS product (BLAS is held at one thread process-wide while the tiles run),
    the float64 refinements, the neighbour lists (blocks of ``chunk`` rows) and the Jaccard
    rows; the result does not depend on ``workers`` (a multi-threaded BLAS may round some float32
    tile entries differently, by about 1e-7). ``timings``, when a dict, receives per phase
    ``{"seconds", "cpu_seconds", "workers"}`` (wall time, process CPU time of all threads,
    threads used).
    """
    qf, gf = np.asarray(qf), np.asarray(gf)
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"features must be [q, D] and [g, D] with the same D, got {qf.shape} and {gf.shape}")
    _check_params(k1, k2, lambda_value)
    workers = _cpu_workers(workers)
    phases = _Phases(timings)
    f = _Stacked(*(np.ascontiguousarray(x, dtype=np.float32) for x in (qf, gf)))
    with (ThreadPoolExecutor(workers, thread_name_prefix="rerank") if workers > 1
          else nullcontext()) as pool:
        nb = _feature_neighbours(f, qf.shape[0], max(k1 + 1, k2), chunk, pool, workers, phases)
        return _core(nb, k1, k2, lambda_value, pool=pool, workers=workers, phases=phases)
