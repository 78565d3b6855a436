"""keras-reid evaluate: Market-protocol metrics (and re-ranking) of a saved distance matrix."""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import click
import numpy as np

from keras_reid import io
from keras_reid.cli.app import handle_user_errors, main
from keras_reid.cli.data import _parse_options
from keras_reid.cli.inference import load_extractor
from keras_reid.data.layout import load_dataset
from keras_reid.data.records import JUNK_PID
from keras_reid.errors import InputError, UserError
from keras_reid.inference import extract_features
from keras_reid.metrics import (chance_level, evaluate_retrieval, pairwise_distance,
                                rerank as rerank_dist, rerank_features)
from keras_reid.metrics.retrieval import fuse_features, single_shot_cmc

REQUIRED = ("distmat", "q_pids", "g_pids", "q_camids", "g_camids")
RANKS = (1, 5, 10, 20)


def load_npz(path: str, rerank: bool) -> dict:
    """The arrays of an evaluation npz; raises UserError naming missing keys or a bad file."""
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not an .npz file; save the arrays with numpy.savez(path, distmat=..., "
                        "q_pids=..., g_pids=..., q_camids=..., g_camids=...)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path} as an .npz file ({exc}); save it with numpy.savez") from exc
    keys = set(arrays)
    has_features = {"qf", "gf"} <= keys
    need = [k for k in REQUIRED if k not in keys and not (k == "distmat" and has_features)]
    if rerank and not has_features:
        need += [k for k in ("q_q_dist", "g_g_dist") if k not in keys]
    if need:
        extra = " (or the features qf and gf)" if rerank and not has_features else ""
        raise UserError(f"{path} lacks the arrays {', '.join(need)}{extra}; "
                        f"it needs {', '.join(REQUIRED)}" + (" and, for --rerank, q_q_dist and g_g_dist "
                                                             "or qf and gf" if rerank else ""))
    check_arrays(path, arrays)
    return arrays


def check_arrays(path: str, arrays: dict) -> None:
    """Raise UserError when an array cannot be evaluated: ids that are not 1-D integers, distances
    or features that are not real numbers, contain NaN or infinity, or have the wrong shape."""
    for key in ("q_pids", "g_pids", "q_camids", "g_camids"):
        a = arrays.get(key)
        if a is None:
            continue
        if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or
                               (np.issubdtype(a.dtype, np.floating) and np.all(np.mod(a, 1) == 0))):
            raise UserError(f"{path}: {key} must be a 1-D array of integer ids, got dtype {a.dtype} "
                            f"and shape {a.shape}")
    for key in ("distmat", "qf", "gf", "q_q_dist", "g_g_dist"):
        a = arrays.get(key)
        if a is None:
            continue
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)) \
                or a.dtype == np.bool_:
            raise UserError(f"{path}: {key} must hold real numbers, got dtype {a.dtype}")
        if a.ndim != 2:
            raise UserError(f"{path}: {key} must be a 2-D matrix, got shape {a.shape}")
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
            raise UserError(f"{path}: {key} has {bad} NaN or infinite values; every distance must be "
                            "a finite number")
    if "qf" in arrays and "gf" in arrays and arrays["qf"].shape[1] != arrays["gf"].shape[1]:
        raise UserError(f"{path}: qf and gf must have the same feature width, got "
                        f"{arrays['qf'].shape[1]} and {arrays['gf'].shape[1]}")


SINGLE_SHOT_REPEATS = 10
"""Draws of ``--single-shot`` (torchreid's ``eval_cuhk03`` and the evaluate stage's default)."""


def retrieval(dist, ids, max_rank: int, single_shot: bool = False) -> dict:
    """``evaluate_retrieval`` of ``dist`` summarised (:func:`summarise`); with ``single_shot`` the
    CMC is the single-shot CMC of :data:`SINGLE_SHOT_REPEATS` draws seeded as the evaluate stage
    seeds them (mAP and mINP stay those of the whole gallery)."""
    from keras_reid.stages.evaluate.common import SINGLE_SHOT_SEED  # deferred: TensorFlow, keeps CLI startup light

    res = evaluate_retrieval(dist, *ids, max_rank=max_rank)
    if single_shot:
        ss = single_shot_cmc(dist, *ids, max_rank=max_rank, repeats=SINGLE_SHOT_REPEATS,
                             seed=SINGLE_SHOT_SEED)
        res = {**res, "cmc": ss["cmc"], "cmc_protocol": "single_shot", "single_shot_repeats": ss["repeats"]}
    return summarise(res)


def evaluate_arrays(arrays: dict, rerank: bool, k1: int, k2: int, lambda_value: float,
                    max_rank: int, single_shot: bool = False) -> dict:
    """Metrics of the arrays (``load_npz``): ``{"plain": {...}, "rerank": {...}?}`` as JSON-ready dicts
    (single-shot CMC with ``single_shot``).

    With features (qf, gf) present, every distance is computed from them (Euclidean).
    """
    ids = [arrays[k] for k in ("q_pids", "g_pids", "q_camids", "g_camids")]
    features = "qf" in arrays and "gf" in arrays
    dist = pairwise_distance(arrays["qf"], arrays["gf"]) if features else arrays["distmat"]
    try:
        out = {"plain": retrieval(dist, ids, max_rank, single_shot)}
        if rerank:
            if features:
                rr = rerank_features(arrays["qf"], arrays["gf"], k1=k1, k2=k2, lambda_value=lambda_value)
            else:
                rr = rerank_dist(arrays["distmat"], arrays["q_q_dist"], arrays["g_g_dist"], k1=k1, k2=k2,
                                 lambda_value=lambda_value)
            out["rerank"] = retrieval(rr, ids, max_rank, single_shot)
            out["rerank"]["params"] = {"k1": k1, "k2": k2, "lambda": lambda_value}
    except ValueError as exc:
        raise UserError(f"cannot evaluate: {exc}") from exc
    out["source"] = "features" if features else "distmat"
    return out


def summarise(res: dict) -> dict:
    """JSON-ready metrics: mAP, mINP, rank-k for k in 1/5/10/20, the CMC curve, query counts
    (and ``cmc_protocol``/``single_shot_repeats`` for a single-shot CMC)."""
    cmc = [float(x) for x in res["cmc"]]
    out = {"mAP": float(res["mAP"]), "mINP": float(res["mINP"])}
    out.update({f"rank{r}": cmc[r - 1] for r in RANKS if r <= len(cmc)})
    out.update({"num_valid_queries": int(res["num_valid_queries"]),
                "num_invalid_queries": int(res["num_invalid_queries"]), "cmc": cmc})
    if res.get("cmc_protocol"):
        out["cmc_protocol"] = res["cmc_protocol"]
        out["single_shot_repeats"] = int(res["single_shot_repeats"])
    return out


def _table(results: dict) -> list[str]:
    cols = ["mAP", "mINP"] + [f"rank{r}" for r in RANKS]
    head = f"{'':<12}" + "".join(f"{c:>9}" for c in cols) + f"{'valid queries':>16}"
    lines = [click.style(head, bold=True)]
    for name in ("plain", "rerank", "multi_query"):
        if name in results:
            e = results[name]
            total = e["num_valid_queries"] + e["num_invalid_queries"]
            label = "multi-query" if name == "multi_query" else name
            lines.append(f"{label:<12}" + "".join(f"{100 * e[c]:>8.2f}%" if c in e else f"{'-':>9}"
                                                  for c in cols)
                         + f"{e['num_valid_queries']:>9} / {total}")
    if "chance" in results:   # a model on a dataset: what a random ranking of its gallery scores
        e = results["chance"]
        lines.append(click.style(f"{'chance':<12}" + "".join(
            f"{100 * e[c]:>8.2f}%" if c in e else f"{'':>9}" for c in cols) + "   (a random ranking)",
            dim=True))
    if "multi_query" in results:
        m = results["multi_query"]
        lines.append(f"multi-query: each query's feature pooled ({m['pooling']}) with those of the "
                     f"{m['pooled_images']} '{MULTI_QUERY_SPLIT}' images of its person in its camera")
    if results.get("plain", {}).get("cmc_protocol") == "single_shot":
        lines.append(f"rank-k: single-shot CMC (one random gallery image per identity and query, "
                     f"averaged over {SINGLE_SHOT_REPEATS} seeded draws); mAP and mINP over the whole gallery")
    return lines


def parse_dataset(spec: str) -> tuple[str | None, str]:
    """``"market1501:data/Market"`` -> ``("market1501", "data/Market")``; a bare folder -> ``(None,
    folder)`` (the layout is detected)."""
    m = re.match(r"^([A-Za-z_][A-Za-z0-9_-]*):(.+)$", spec)
    return (m.group(1), m.group(2)) if m else (None, spec)


MULTI_QUERY_SPLIT = "gt_bbox"
"""The split ``--multi-query`` pools from (Market-1501's hand-drawn boxes, gt_bbox/)."""


def check_multi_query_split(splits, where: str) -> None:
    """InputError (one line, exit code 2) when the dataset ``splits`` (read from ``where``) has no
    :data:`MULTI_QUERY_SPLIT` for ``--multi-query`` to pool from."""
    if MULTI_QUERY_SPLIT not in splits:
        raise InputError(f"--multi-query pools the images of split '{MULTI_QUERY_SPLIT}', which {where} "
                         f"does not have (splits: {', '.join(splits.splits)}); extract Market-1501's "
                         "gt_bbox/ beside query/, or drop --multi-query")


def multi_query_results(extractor, query: list, query_features, gallery_features, ids, splits,
                        where: str, pooling: str, max_rank: int, batch_size: int,
                        single_shot: bool) -> dict:
    """Market-1501 multi-query metrics, as the evaluate stage computes them: each query's
    feature pooled (``pooling``: mean or max) with those of the :data:`MULTI_QUERY_SPLIT` images
    of its person in its camera (the query's own file counted once), L2-normalised, ranked like
    a single query. Raises InputError when the dataset has no such split."""
    from keras_reid.data.pipeline import scan_images, skipped_message  # deferred: TensorFlow, keeps CLI startup light
    from keras_reid.stages.evaluate.common import multi_query_pairs  # deferred: TensorFlow, keeps CLI startup light

    check_multi_query_split(splits, where)
    wanted = {(q.pid, q.camid) for q in query}
    records, bad = scan_images([r for r in splits[MULTI_QUERY_SPLIT] if (r.pid, r.camid) in wanted])
    if bad:
        click.secho(f"warning: {MULTI_QUERY_SPLIT}: {skipped_message(bad, len(records) + len(bad))}",
                    fg="yellow", err=True)
    q_idx, m_idx = multi_query_pairs(query, records)
    mf = (extract_features(extractor.model, records, extractor.image_size, batch_size,
                           extractor.preprocessing.flip) if records
          else np.zeros((0, query_features.shape[1]), np.float32))
    pooled = fuse_features(query_features, mf[m_idx], q_idx, n=len(query), method=pooling)
    out = retrieval(pairwise_distance(pooled, gallery_features), ids, max_rank, single_shot)
    out["pooling"] = pooling
    out["pooled_images"] = int(len(m_idx))
    return out


def evaluate_model(model: str, stage: str | None, dataset: str, options: dict, rerank: bool, k1: int,
                   k2: int, lambda_value: float, max_rank: int, batch_size: int,
                   single_shot: bool = False, multi_query: str | None = None) -> dict:
    """Test-only evaluation of a trained model on a dataset's query and gallery splits (Market
    protocol; the evaluate stage's features and metrics; single-shot CMC with ``single_shot``,
    Market-1501 multi-query with ``multi_query`` mean|max). Returns ``evaluate_arrays``' result
    plus ``multi_query`` (when asked), ``chance``, ``model`` and ``dataset``."""
    loaded, root = _retrieval_dataset(dataset, options)
    splits = loaded.splits
    where = f"{loaded.type} at {root}"
    if multi_query:   # before any image is embedded
        check_multi_query_split(splits, where)
    query, gallery = (_readable_split(splits, split, dataset) for split in ("query", "gallery"))
    extractor = load_extractor(model, stage)
    click.echo(f"dataset: {loaded.type}{' (detected)' if loaded.detected else ''} at {root}: "
               f"{len(query)} queries x {len(gallery)} gallery images")
    feats = [extract_features(extractor.model, recs, extractor.image_size, batch_size,
                              extractor.preprocessing.flip) for recs in (query, gallery)]
    arrays = {"qf": feats[0], "gf": feats[1],
              "q_pids": np.array([r.pid for r in query]), "g_pids": np.array([r.pid for r in gallery]),
              "q_camids": np.array([r.camid for r in query]), "g_camids": np.array([r.camid for r in gallery])}
    results = evaluate_arrays(arrays, rerank, k1, k2, lambda_value, max_rank, single_shot)
    if multi_query:
        ids = [arrays[k] for k in ("q_pids", "g_pids", "q_camids", "g_camids")]
        try:
            results["multi_query"] = multi_query_results(extractor, query, feats[0], feats[1], ids,
                                                         splits, where, multi_query, max_rank,
                                                         batch_size, single_shot)
        except ValueError as exc:
            raise UserError(f"cannot evaluate multi-query: {exc}") from exc
    results["chance"] = chance_level(arrays["q_pids"], arrays["g_pids"], arrays["q_camids"], arrays["g_camids"])
    results["model"] = str(extractor.path)
    results["dataset"] = {"type": loaded.type, "root": str(splits.root or root)}
    return results


def _retrieval_dataset(dataset: str, options: dict):
    """``(loaded, root)``: the dataset ``--dataset TYPE:ROOT`` names, read with its reader;
    InputError when the folder does not exist or the data is closed-set."""
    type_, root = parse_dataset(dataset)
    if not Path(root).expanduser().is_dir():
        raise InputError(f"--dataset {dataset}: the folder {root} does not exist; give TYPE:ROOT with the "
                         "folder that holds the dataset, e.g. market1501:data/Market-1501-v15.09.15")
    if type_ == "synthetic" and not options:
        # the synthetic reader writes a dataset (and refuses one made with other parameters); one
        # that exists is read by the Market-1501 reader, like the synthetic reader does itself
        type_ = "market1501"
    loaded = load_dataset(root, type_, options)
    if loaded.splits.kind != "retrieval":
        raise InputError(f"--dataset {dataset}: {loaded.type} is closed-set data (classes, not query and "
                         "gallery); evaluate it with a recipe's evaluate stage")
    return loaded, root


def _readable_split(splits, split: str, dataset: str) -> list:
    """The records of ``split`` without junk whose images decode; warns about the others,
    InputError when none is left."""
    from keras_reid.data.pipeline import scan_images, skipped_message  # deferred: TensorFlow, keeps CLI startup light

    records = [r for r in splits[split] if r.pid != JUNK_PID]
    good, bad = scan_images(records)
    if bad:
        click.secho(f"warning: {split}: {skipped_message(bad, len(records))}", fg="yellow", err=True)
    if not good:
        raise InputError(f"--dataset {dataset}: the {split} split has no readable images")
    return good


@main.command("evaluate")
@click.argument("model", required=False)
@click.option("--dataset", metavar="TYPE:ROOT",
              help="with MODEL: the dataset whose query and gallery splits to rank, e.g. "
                   "market1501:data/Market-1501-v15.09.15 (any registered dataset reader; a bare ROOT "
                   "is detected)")
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE",
              help="with --dataset: a reader parameter (YAML-typed; repeatable), e.g. variant=labeled")
@click.option("--model", "stage", metavar="NAME",
              help="the train stage whose model to use when MODEL is a run folder")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="images per forward pass")
@click.option("--distmat", "distmat_path", type=click.Path(exists=True, dir_okay=False),
              metavar="FILE.npz",
              help="instead of MODEL: an npz with distmat [q, g], q_pids, g_pids, q_camids, g_camids; "
                   "for --rerank also q_q_dist and g_g_dist, or the features qf and gf (if qf/gf are "
                   "present, every distance is computed from them)")
@click.option("--rerank", is_flag=True, help="also report k-reciprocal re-ranking (Zhong et al. 2017)")
@click.option("--k1", type=click.IntRange(min=1), default=20, show_default=True, help="re-ranking k1")
@click.option("--k2", type=click.IntRange(min=1), default=6, show_default=True, help="re-ranking k2")
@click.option("--lambda", "lambda_value", type=click.FloatRange(0, 1), default=0.3, show_default=True,
              help="re-ranking weight of the original distance")
@click.option("--max-rank", type=click.IntRange(min=1), default=50, show_default=True,
              help="length of the CMC curve")
@click.option("--single-shot", is_flag=True,
              help="rank-k as single-shot CMC (CUHK03/CUHK01 classic protocol): per query one random "
                   f"gallery image of each identity, averaged over {SINGLE_SHOT_REPEATS} seeded draws "
                   "(the evaluate stage's); mAP and mINP stay on the whole gallery")
@click.option("--multi-query", type=click.Choice(["mean", "max"]), default=None,
              help="with MODEL: also report Market-1501 multi-query, each query's feature pooled (mean "
                   "or max) with those of the gt_bbox/ images of its person in its camera")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, writable=True), metavar="OUT",
              help="also write the metrics (incl. the CMC curve) as JSON to OUT")
@handle_user_errors
def evaluate(model: str | None, dataset: str | None, options: tuple[str, ...], stage: str | None,
             batch_size: int, distmat_path: str | None, rerank: bool, k1: int, k2: int,
             lambda_value: float, max_rank: int, single_shot: bool, multi_query: str | None,
             json_out: str | None) -> None:
    """Market-protocol CMC, mAP and mINP of a trained MODEL on a dataset, or of a saved
    query x gallery distance matrix (--distmat).

    Ranks the gallery by ascending distance (ties by gallery index), drops gallery images with the
    query's pid and camera, skips queries without a true match, as torchreid does. MODEL is a
    .keras file or a trained stage's folder (e.g. runs/quickstart/baseline); its features are
    the evaluate stage's (recorded image size, flip averaging, L2 normalisation), so a model
    evaluated on its recipe's dataset gets the run's metrics.

    \b
    Examples:
      keras-reid evaluate runs/quickstart/augmented --dataset market1501:data/synthetic-quickstart --rerank
      keras-reid evaluate model.keras --dataset ~/data/Market-1501-v15.09.15 --json metrics.json
      keras-reid evaluate model.keras --dataset market1501:~/data/Market-1501-v15.09.15 --multi-query max
      keras-reid evaluate model.keras --dataset cuhk03:~/data/cuhk03 -o split=0 --single-shot
      python -c "import numpy as np; np.savez('d.npz', distmat=D, q_pids=qp, g_pids=gp,
                 q_camids=qc, g_camids=gc)"
      keras-reid evaluate --distmat d.npz --rerank --json metrics.json
    """
    _check_sources(model, dataset, options, stage, distmat_path, multi_query)
    if model is not None:
        results = evaluate_model(model, stage, dataset, _parse_options(options), rerank, k1, k2,
                                 lambda_value, max_rank, batch_size, single_shot, multi_query)
    else:
        arrays = load_npz(distmat_path, rerank)
        results = evaluate_arrays(arrays, rerank, k1, k2, lambda_value, max_rank, single_shot)
    for line in _table(results):
        click.echo(line)
    if json_out:
        io.write_json(json_out, results)
        click.echo(f"metrics written to {json_out}")


def _check_sources(model: str | None, dataset: str | None, options: tuple[str, ...],
                   stage: str | None, distmat_path: str | None, multi_query: str | None) -> None:
    """Refuse a command line that gives both or neither of MODEL and --distmat, or options that
    go with the other one (InputError; UsageError, exit code 2, when nothing is given)."""
    if model is not None and distmat_path is not None:
        raise InputError("give MODEL --dataset TYPE:ROOT or --distmat FILE.npz, not both")
    if model is None and distmat_path is None:  # an argument error (exit code 2)
        raise click.UsageError("nothing to evaluate: give MODEL --dataset TYPE:ROOT or --distmat FILE.npz")
    if model is not None:
        if not dataset:
            raise InputError(f"evaluating {model} needs --dataset TYPE:ROOT, e.g. --dataset "
                             "market1501:data/synthetic-quickstart")
        return
    if dataset or options or stage:
        raise InputError("--dataset, --option and --model go with MODEL, not with --distmat")
    if multi_query:
        raise InputError("--multi-query pools the features of each query person's gt_bbox images, "
                         "which a distance matrix does not have; give MODEL --dataset TYPE:ROOT "
                         "or drop --multi-query")
