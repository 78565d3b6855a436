"""Benchmark: time and peak memory of retrieval evaluation and re-ranking at Market size.

Builds a seeded Market-like problem (3,368 queries x 15,913 gallery images, 2,048-d L2-normalised
features with identity and camera structure, 6 cameras, ~14 true matches per query, distractors)
and measures, each in its own subprocess so that every figure is the whole process:

- ``argsort``: one plain ``np.argsort(distmat, axis=1)`` of the float32 distance matrix;
- ``evaluate_retrieval``: keras_reid.metrics.evaluate_retrieval on that matrix;
- ``rerank_features``: keras_reid.metrics.rerank_features (k1=20, k2=6, lambda=0.3) from features,
  with its per-phase wall and CPU times (neighbour lists: factors, tiles, maxima, lists; core:
  reciprocal_sets, query_expansion, jaccard);
- with ``--compare FILE``: ``rerank_features`` of another rerank.py (an earlier version), its
  figures and the largest difference of its result from the current one.

Each child loads its inputs from .npy files first; the table shows the wall time of the measured
call, its CPU time (user + system, all threads: on a shared machine wall time includes waiting),
the peak RSS of the whole child process (VmHWM) and the peak RSS before the call. The load
average before and after is printed (and in the JSON): on a loaded machine compare CPU times.

    python tools/bench_eval.py                         # full Market size
    python tools/bench_eval.py --queries 500 --gallery 2000 --dim 256 --json out.json
    git show 0db0d5a:keras_reid/metrics/rerank.py > /tmp/rerank_old.py
    python tools/bench_eval.py --skip argsort evaluate_retrieval --compare /tmp/rerank_old.py
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOP = 20  # ranks compared between two re-ranking implementations


def make_problem(queries: int, gallery: int, dim: int, seed: int = 0, cameras: int = 6,
                 distractor_frac: float = 0.24, subspace: int = 64, noise: float = 1.0) -> dict:
    """A Market-like problem: pids/camera ids and L2-normalised float32 features [N, dim].

    Identities live in a ``subspace``-dimensional space embedded in ``dim`` dimensions; every image
    is its identity centre plus a camera offset plus per-image noise (so rankings are imperfect and
    re-ranking has work to do). About 24% of the gallery are distractors (pid 0). Returns a dict
    with qf, gf, q_pids, g_pids, q_camids, g_camids.
    """
    rng = np.random.default_rng(seed)
    n_ids = max(2, round(queries / 4.5))
    n_distr = int(gallery * distractor_frac)
    n_real = gallery - n_distr
    # query: ~4.5 images per id, each on a different camera when possible
    q_pids = np.repeat(np.arange(1, n_ids + 1), int(np.ceil(queries / n_ids)))[:queries]
    q_cams = np.array([rng.integers(1, cameras + 1) for _ in range(queries)])
    g_pids = np.concatenate([rng.integers(1, n_ids + 1, n_real), np.zeros(n_distr, int)])
    g_cams = rng.integers(1, cameras + 1, gallery)
    k = min(subspace, dim)
    centres = rng.standard_normal((n_ids + 1, k))
    cam_off = 0.45 * rng.standard_normal((cameras + 1, k))
    proj = np.linalg.qr(rng.standard_normal((dim, k)))[0]  # dim x k orthonormal columns

    def feats(pids, cams):
        n = len(pids)
        c = centres[pids].copy()
        distr = pids == 0
        c[distr] = rng.standard_normal((int(distr.sum()), k))  # each distractor its own person
        low = c + cam_off[cams] + noise * rng.standard_normal((n, k))
        f = low @ proj.T + 0.02 * rng.standard_normal((n, dim))
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        return f.astype(np.float32)

    return {"qf": feats(q_pids, q_cams), "gf": feats(g_pids, g_cams), "q_pids": q_pids,
            "g_pids": g_pids, "q_camids": q_cams, "g_camids": g_cams}


_CHILD = r"""
import json, resource, sys, time
import numpy as np
cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])


def peak_mb():
    # VmHWM: peak RSS of this process's own address space (ru_maxrss would include the RSS of
    # the parent at fork time, which a forked-and-exec'd child inherits)
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def threads():
    # OS threads of this process (BLAS and worker pools included)
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("Threads:"))
what, folder = sys.argv[1], sys.argv[2]
extra = {}
load = lambda n: np.load(f"{folder}/{n}.npy")
if what == "argsort":
    d = load("distmat")
    rss0 = peak_mb()
    c0 = cpu(); t = time.perf_counter(); np.argsort(d, axis=1); dt = time.perf_counter() - t; c1 = cpu()
elif what == "evaluate_retrieval":
    from keras_reid.metrics import evaluate_retrieval
    d = load("distmat"); ids = [load(n) for n in ("q_pids", "g_pids", "q_camids", "g_camids")]
    rss0 = peak_mb()
    c0 = cpu(); t = time.perf_counter(); r = evaluate_retrieval(d, *ids)
    dt = time.perf_counter() - t; c1 = cpu()
    extra = {"mAP": r["mAP"], "rank1": float(r["cmc"][0]), "mINP": r["mINP"]}
elif what.startswith("rerank_features"):
    import importlib.util, inspect
    from keras_reid.metrics import evaluate_retrieval, rerank_features
    if what == "rerank_features_compare":  # another version of rerank.py, from a file
        spec = importlib.util.spec_from_file_location("rerank_compare", sys.argv[3])
        module = sys.modules["rerank_compare"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        rerank_features = module.rerank_features
    kwargs = {}
    if "timings" in inspect.signature(rerank_features).parameters:
        kwargs["timings"] = extra["phases"] = {}
    qf, gf = load("qf"), load("gf")
    rss0 = peak_mb()
    c0 = cpu(); t = time.perf_counter()
    rr = rerank_features(qf, gf, k1=20, k2=6, lambda_value=0.3, **kwargs)
    dt = time.perf_counter() - t; c1 = cpu()
    peak = peak_mb()
    extra["threads_after"] = threads()
    del qf, gf
    np.save(f"{folder}/{what}.npy", rr)
    ids = [load(n) for n in ("q_pids", "g_pids", "q_camids", "g_camids")]
    r = evaluate_retrieval(rr, *ids)
    extra.update({"mAP": r["mAP"], "rank1": float(r["cmc"][0]), "mINP": r["mINP"]})
print(json.dumps({"seconds": dt, "cpu_seconds": c1 - c0, "rss_before_mb": rss0,
                  "peak_rss_mb": peak if what.startswith("rerank_features") else peak_mb(), **extra}))
"""


def _measure(what: str, folder: str, *args: str) -> dict:
    """Run one measurement in a fresh Python process; returns its JSON figures."""
    out = subprocess.run([sys.executable, "-c", _CHILD, what, folder, *args],
                         capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no error output"])[-1]
        raise SystemExit(f"bench_eval: measuring {what} failed (exit {out.returncode}): {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    """Build the problem, measure every step in a subprocess, print a table; returns the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=3368)
    ap.add_argument("--gallery", type=int, default=15913)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", nargs="*", default=[], choices=["argsort", "evaluate_retrieval",
                                                              "rerank_features"],
                    help="measurements to leave out")
    ap.add_argument("--compare", metavar="RERANK_PY",
                    help="also measure rerank_features from this file (e.g. an earlier rerank.py: "
                         "git show REV:keras_reid/metrics/rerank.py > /tmp/rerank_old.py) and report "
                         "how far its result is from the current one")
    ap.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT ('-' = stdout)")
    args = ap.parse_args(argv)
    if args.compare and not Path(args.compare).is_file():
        ap.error(f"--compare: no such file {args.compare}; write one with "
                 f"git show REV:keras_reid/metrics/rerank.py > FILE")

    from keras_reid.io import write_json
    from keras_reid.metrics import pairwise_distance

    t = time.perf_counter()
    load_before = os.getloadavg()
    prob = make_problem(args.queries, args.gallery, args.dim, args.seed)
    steps = [w for w in ("argsort", "evaluate_retrieval", "rerank_features") if w not in args.skip]
    if args.compare:
        steps.append("rerank_features_compare")
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as folder:
        for name, arr in prob.items():
            np.save(Path(folder) / f"{name}.npy", arr)
        dist = pairwise_distance(prob["qf"], prob["gf"])
        np.save(Path(folder) / "distmat.npy", dist)
        del dist, prob
        print(f"problem: {args.queries} queries x {args.gallery} gallery, {args.dim}-d features, "
              f"float32 distmat {args.queries * args.gallery * 4 / 2**20:.0f} MB "
              f"(built in {time.perf_counter() - t:.1f} s); load average {load_before[0]:.1f}",
              flush=True)
        results = {}
        for what in steps:
            results[what] = _measure(what, folder, *([args.compare] if what.endswith("_compare") else []))
            print(f"  measured {what}: {results[what]['seconds']:.2f} s", flush=True)
        if "rerank_features" in results and "rerank_features_compare" in results:
            new, old = (np.load(Path(folder) / f"{w}.npy") for w in ("rerank_features",
                                                                      "rerank_features_compare"))
            results["rerank_features_compare"]["max_abs_difference"] = float(np.abs(new - old).max())
            order_new, order_old = (np.argsort(x, axis=1, kind="stable") for x in (new, old))
            # deep in a list near-ties swap under any rounding change; the top is what is used
            results["rerank_features_compare"]["queries_top_differently"] = int(
                (order_new[:, :TOP] != order_old[:, :TOP]).any(1).sum())
            results["rerank_features_compare"]["queries_ranked_differently"] = int(
                (order_new != order_old).any(1).sum())
            del order_new, order_old
            for key in ("mAP", "rank1", "mINP"):
                results["rerank_features_compare"][f"{key}_difference"] = abs(
                    results["rerank_features"][key] - results["rerank_features_compare"][key])
            del new, old
    load_after = os.getloadavg()
    print(f"{'step':<24}{'time (s)':>10}{'CPU (s)':>9}{'peak RSS (MB)':>15}{'RSS before (MB)':>17}  result")
    for what, r in results.items():
        res = (f"mAP {100 * r['mAP']:.2f}%  rank-1 {100 * r['rank1']:.2f}%  mINP {100 * r['mINP']:.2f}%"
               if "mAP" in r else "")
        print(f"{what:<24}{r['seconds']:>10.2f}{r['cpu_seconds']:>9.2f}{r['peak_rss_mb']:>15.0f}"
              f"{r['rss_before_mb']:>17.0f}  {res}")
    for what in ("rerank_features", "rerank_features_compare"):
        if results.get(what, {}).get("phases"):
            print(f"{what} phases (wall s / CPU s of all threads / worker threads):")
            for name, ph in results[what]["phases"].items():
                print(f"  {name:<18}{ph['seconds']:>8.2f}{ph['cpu_seconds']:>8.2f}{ph['workers']:>4}")
    if "rerank_features_compare" in results and "max_abs_difference" in results["rerank_features_compare"]:
        c = results["rerank_features_compare"]
        print(f"rerank_features vs {args.compare}: max |difference| {c['max_abs_difference']:.3g}, "
              f"queries whose top {TOP} differ {c['queries_top_differently']} of {args.queries} "
              f"(whole ranking: {c['queries_ranked_differently']}, near-ties deep in the lists); "
              f"|difference| of mAP {c['mAP_difference']:.2g}, rank-1 {c['rank1_difference']:.2g}, "
              f"mINP {c['mINP_difference']:.2g}")
    if "argsort" in results and "evaluate_retrieval" in results:
        print(f"evaluate_retrieval / argsort time: "
              f"{results['evaluate_retrieval']['seconds'] / results['argsort']['seconds']:.2f}")
    if "argsort" in results and "rerank_features" in results:
        print(f"rerank_features / argsort time: "
              f"{results['rerank_features']['seconds'] / results['argsort']['seconds']:.2f}")
    print(f"load average before / after: {load_before[0]:.1f} / {load_after[0]:.1f} "
          f"({os.cpu_count()} CPUs; on a shared machine compare CPU times)")
    figures = {"queries": args.queries, "gallery": args.gallery, "dim": args.dim, "seed": args.seed,
               "cpus": os.cpu_count(), "load_average_before": load_before[0],
               "load_average_after": load_after[0], "compare": args.compare, "results": results}
    if args.json == "-":
        print(json.dumps(figures, indent=2))
    elif args.json:
        write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
