"""What every part of the ``evaluate`` stage shares: the usable records of a split, loading the
models, the real images' features, ranking and retrieval metrics (multi-query included),
publishing a model's result (ranked lists, TensorBoard) and the printed table. The parts
(``closed_set``, ``deploy``, ``fusion``, ``generated``)
import from here; ``evaluate.run`` runs them."""
from __future__ import annotations

import os
from pathlib import Path

import click
import cv2
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf
from tensorboard.plugins import projector

from keras_reid import io
from keras_reid.data.records import JUNK_PID, Record
from keras_reid.deploy import deploy_lines
from keras_reid.errors import DatasetError, UserError
from keras_reid.inference import extract_features, load_keras_model
from keras_reid.metrics import chance_level, evaluate_retrieval, pairwise_distance, rerank_features
from keras_reid.metrics.retrieval import fuse_features, single_shot_cmc
from keras_reid.stages.base import StageContext
from keras_reid.stages.outputs import ReIDOutput
from keras_reid.tb_events import clear_events
from keras_reid.training.callbacks import figure_to_image, image_grid, label_rows

RANKS = (1, 5, 10, 20)


def usable_records(ctx: StageContext, split: str, cfg, dataset: str | None = None) -> list[Record]:
    splits = ctx.dataset(dataset or cfg.dataset)
    records = [r for r in splits[split] if r.pid != JUNK_PID]
    if not records:
        raise DatasetError(f"stage '{ctx.stage_name}': split '{split}' of dataset '{dataset or cfg.dataset}' is "
                           "empty; check the dataset root and the split names")
    return ctx.decodable(records, f"{split} images", allow_empty=True)


def _load_model(ctx: StageContext, stage: str):
    out = ctx.output_of(stage, ReIDOutput)
    path = ctx.run_dir / out.model
    if not path.exists():
        raise UserError(f"model file {path} of stage '{stage}' is missing; re-run that stage "
                        f"(delete {ctx.stage_dir_of(stage)}/.complete.json)")
    return load_saved(ctx, stage, path), out


def load_saved(ctx: StageContext, stage: str, path):
    """Returns the keras.Model a train stage saved at ``path`` (see
    ``keras_reid.inference.load_keras_model``: the stage's backbone may load it itself)."""
    spec = getattr(ctx.recipe.stage_configs.get(stage), "backbone", None)
    return load_keras_model(path, spec, ctx.registry)


def chance_of(query: list[Record], gallery: list[Record]) -> dict:
    """rank-1 and mAP of a random ranking of ``gallery`` for ``query`` (Market protocol)."""

    return chance_level([r.pid for r in query], [r.pid for r in gallery],
                        [r.camid for r in query], [r.camid for r in gallery])


class RealFeatures:
    """Models of train stages and their query/gallery features; the models and features of the
    stages in ``keep`` (those the fusion needs again) are loaded and computed once and kept."""

    def __init__(self, ctx: StageContext, cfg, query: list[Record], gallery: list[Record],
                 keep: list[str]) -> None:
        self.ctx, self.cfg, self.query, self.gallery = ctx, cfg, query, gallery
        self.keep = set(keep)
        self._models: dict[str, tuple] = {}
        self._features: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def model(self, stage: str) -> tuple:
        """``(keras model, train stage summary)``."""
        if stage in self._models:
            return self._models[stage]
        loaded = _load_model(self.ctx, stage)
        if stage in self.keep:
            self._models[stage] = loaded
        return loaded

    def get(self, stage: str, loaded: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(query features, gallery features)`` of ``stage``'s model, L2-normalised unless the
        stage says ``normalise: false`` (``loaded``:
        its ``model(stage)`` result when the caller has it)."""
        if stage in self._features:
            return self._features[stage]
        model, out = loaded or self.model(stage)
        size, cfg = out.image_size, self.cfg
        qf = extract_features(model, self.query, size, cfg.batch_size, cfg.flip, normalise=cfg.normalise)
        gf = extract_features(model, self.gallery, size, cfg.batch_size, cfg.flip, normalise=cfg.normalise)
        if stage in self.keep:
            self._features[stage] = (qf, gf)
        return qf, gf

    def release(self) -> None:
        self._models.clear()
        self._features.clear()


def score(qf: np.ndarray, gf: np.ndarray, query: list[Record], gallery: list[Record],
           cfg) -> tuple[dict, dict, np.ndarray]:
    """Rank the gallery for every query; returns ``(metrics.json entry, evaluate_retrieval
    result, distance matrix)`` (the entry has a ``rerank`` part when the config asks for it)."""

    ids = (np.array([r.pid for r in query]), np.array([r.pid for r in gallery]),
           np.array([r.camid for r in query]), np.array([r.camid for r in gallery]))
    dist = pairwise_distance(qf, gf, metric=cfg.metric)
    res = _retrieval(dist, ids, cfg)
    entry = metrics_entry(res)
    if cfg.rerank:
        rr = rerank_features(qf, gf, k1=cfg.k1, k2=cfg.k2, lambda_value=cfg.lambda_value)
        entry["rerank"] = metrics_entry(_retrieval(rr, ids, cfg))
    return entry, res, dist


SINGLE_SHOT_SEED = 0
"""Seed of the single-shot draws: the same draws for every model of a stage (and every repeat),
so differences between models are not differences between draws."""


def _retrieval(dist: np.ndarray, ids: tuple, cfg) -> dict:
    """``evaluate_retrieval`` of ``dist``; with ``cfg.single_shot`` its CMC is the single-shot CMC
    (mAP and mINP stay those of the whole gallery) and the result says so (``cmc_protocol``)."""

    res = evaluate_retrieval(dist, *ids, max_rank=cfg.max_rank)
    if getattr(cfg, "single_shot", False):
        ss = single_shot_cmc(dist, *ids, max_rank=cfg.max_rank, repeats=cfg.single_shot_repeats,
                             seed=SINGLE_SHOT_SEED)
        res = {**res, "cmc": ss["cmc"], "cmc_protocol": "single_shot",
               "single_shot_repeats": ss["repeats"]}
    return res


def multi_query_set(ctx: StageContext, cfg, query: list[Record]) -> tuple[list[Record], np.ndarray, np.ndarray]:
    """The images ``multi_query`` pools: ``(records, query index, record index)``: every image of
    split ``cfg.multi_query_split`` showing a query's person in the query's camera, paired with
    that query (the query's own file, which Market's gt_bbox/ also holds, is not counted twice).
    Raises DatasetError when the dataset has no such split."""
    splits = ctx.dataset(cfg.dataset)
    if cfg.multi_query_split not in splits:
        raise DatasetError(
            f"stage '{ctx.stage_name}': multi_query pools images of split '{cfg.multi_query_split}', "
            f"which dataset '{cfg.dataset}' does not have (splits: {', '.join(splits.splits)}); "
            "extract Market-1501's gt_bbox/ beside query/, or set multi_query_split or multi_query: null")

    wanted = {(q.pid, q.camid) for q in query}
    records = ctx.decodable([r for r in splits[cfg.multi_query_split] if (r.pid, r.camid) in wanted],
                            f"{cfg.multi_query_split} images", allow_empty=True)
    q_idx, m_idx = multi_query_pairs(query, records)
    ctx.echo(f"multi-query ({cfg.multi_query}): {len(set(m_idx.tolist()))} images of split "
             f"'{cfg.multi_query_split}' pooled into {len(set(q_idx.tolist()))} of {len(query)} queries")
    return records, q_idx, m_idx


def multi_query_pairs(query: list[Record], records: list[Record]) -> tuple[np.ndarray, np.ndarray]:
    """``(query indices, record indices)``: every pair of a query and a record with the query's pid
    and camera, except a record whose file name is the query's own (Market's gt_bbox/ holds the
    query images too; the query counts once)."""
    by_key: dict[tuple[int, int], list[int]] = {}
    for i, q in enumerate(query):
        by_key.setdefault((q.pid, q.camid), []).append(i)
    q_idx, m_idx = [], []
    for j, r in enumerate(records):
        for i in by_key.get((r.pid, r.camid), ()):
            if os.path.basename(r.path) != os.path.basename(query[i].path):
                q_idx.append(i); m_idx.append(j)
    return np.asarray(q_idx, np.int64), np.asarray(m_idx, np.int64)


def multi_query_entry(model, size, cfg, qf: np.ndarray, gf: np.ndarray, query: list[Record],
                      gallery: list[Record], pooled: tuple) -> dict:
    """Metrics of the multi-query protocol: each query's L2-normalised feature pooled (mean or
    max) with those of its ``pooled`` images and L2-normalised again, then ranked against the
    gallery like a single query (Market protocol; single-shot CMC if the stage asks for it)."""

    records, q_idx, m_idx = pooled
    mf = (extract_features(model, records, size, cfg.batch_size, cfg.flip) if records
          else np.zeros((0, qf.shape[1]), np.float32))
    fused = fuse_features(qf, mf[m_idx], q_idx, n=len(query), method=cfg.multi_query)
    ids = (np.array([r.pid for r in query]), np.array([r.pid for r in gallery]),
           np.array([r.camid for r in query]), np.array([r.camid for r in gallery]))
    entry = metrics_entry(_retrieval(pairwise_distance(fused, gf, metric=cfg.metric), ids, cfg))
    entry["pooling"] = cfg.multi_query
    entry["pooled_images"] = int(len(m_idx))
    return entry


def publish(ctx: StageContext, cfg, name: str, res: dict, dist: np.ndarray, query: list[Record],
             gallery: list[Record], gf: np.ndarray, size, entry: dict | None = None) -> None:
    """TensorBoard (scalars, the re-ranked ones of ``entry["rerank"]``, CMC, ranked lists,
    projector), ``cmc_<name>.npy`` and ``ranked_<name>.json`` (the ranked lists, for
    ``keras-reid report``) of one result."""
    _write_tensorboard(ctx, name, res, dist, query, gallery, gf, size, cfg,
                       rerank=(entry or {}).get("rerank"))
    np.save(ctx.stage_dir / f"cmc_{name}.npy", np.asarray(res["cmc"]))
    if cfg.ranked_lists:
        io.write_json(ctx.stage_dir / f"{RANKED_PREFIX}{name}.json",
                      ranked_lists_record(dist, query, gallery, cfg.ranked_lists))


RANKED_PREFIX = "ranked_"
"""``<evaluate stage>/ranked_<model>.json``: a few queries and their top gallery images."""


def ranked_lists_record(dist: np.ndarray, query: list[Record], gallery: list[Record], n: int,
                        top: int = 10) -> dict:
    """The ranked lists of ``n`` queries (a fixed choice, the ones TensorBoard shows): per query
    its path, pid and camera and its ``top`` gallery images (path, pid, camera, distance, whether
    it is the same person), gallery images of the same person and camera left out (protocol)."""
    queries = []
    for qi, order in _ranked_rows(dist, query, gallery, n, top):
        q = query[qi]
        queries.append({"path": str(q.path), "pid": int(q.pid), "camid": int(q.camid), "top": [
            {"path": str(gallery[gi].path), "pid": int(gallery[gi].pid),
             "camid": int(gallery[gi].camid), "distance": round(float(dist[qi, gi]), 5),
             "match": bool(gallery[gi].pid == q.pid)} for gi in order]})
    return {"top": top, "note": "gallery images of the query's person from the query's camera "
            "are left out (Market-1501 protocol)", "queries": queries}


def _ranked_rows(dist: np.ndarray, query: list[Record], gallery: list[Record], n: int, top: int):
    """Yields ``(query index, gallery indices of its top ``top``)`` for ``n`` queries drawn with a
    fixed seed, in query order, same-person same-camera gallery images left out."""
    rng = np.random.default_rng(0)
    picks = rng.choice(len(query), size=min(n, len(query)), replace=False)
    for qi in sorted(picks):
        q = query[qi]
        keep = np.array([not (g.pid == q.pid and g.camid == q.camid) for g in gallery])
        order = np.argsort(dist[qi], kind="stable")
        yield int(qi), order[keep[order]][:top]


def metrics_entry(res: dict) -> dict:
    cmc = np.asarray(res["cmc"])
    e = {"mAP": float(res["mAP"]), "mINP": float(res["mINP"])}
    for r in RANKS:
        if r <= len(cmc):
            e[f"rank{r}"] = float(cmc[r - 1])
    e["valid_queries"] = int(res["num_valid_queries"])
    e["invalid_queries"] = int(res["num_invalid_queries"])
    if res.get("cmc_protocol"):
        e["cmc_protocol"] = res["cmc_protocol"]
    return e


def _print_table(ctx: StageContext, results: dict, chance: dict | None = None) -> None:
    cols = ["mAP"] + [f"rank{r}" for r in RANKS] + ["mINP"]
    label = "chance (random ranking)"
    width = max([len("model"), len(label)] + [len(n) + 9 for n in results])
    ctx.echo(click.style(f"{'model':<{width}}" + "".join(f"{c:>9}" for c in cols), bold=True))
    for name, e in results.items():
        rows = [(name, e)] + ([(name + " +rerank", e["rerank"])] if "rerank" in e else []) + (
            [(name + " multi-query", e["multi_query"])] if "multi_query" in e else [])
        for row, values in rows:
            ctx.echo(f"{row:<{width}}" + "".join(
                f"{100 * values[c]:>8.2f}%" if c in values else f"{'-':>9}" for c in cols))
    if chance:
        ctx.echo(click.style(f"{label:<{width}}" + "".join(
            f"{100 * chance[c]:>8.2f}%" if c in chance else f"{'':>9}" for c in cols), dim=True))
    if any(e.get("cmc_protocol") == "single_shot" for e in results.values()):
        ctx.echo("rank-k: single-shot CMC (one random gallery image per identity and query, "
                 "averaged over draws); mAP and mINP over the whole gallery")

    for line in deploy_lines(results):
        ctx.echo(line)
    for name, e in results.items():
        c = e.get("classification")
        if c:
            ctx.echo(f"{name}: classification of the {c['images']} withheld training images "
                     f"({c['classes']} classes): prec@1 {100 * c['prec1']:.2f}%  prec@5 "
                     f"{100 * c['prec5']:.2f}%  mAP {100 * c['mAP']:.2f}%")


def _write_tensorboard(ctx, name, res, dist, query, gallery, gf, size, cfg,
                       rerank: dict | None = None) -> None:
    matplotlib.use("Agg")   # the backend is chosen when drawing, not when the module is imported
    logdir = ctx.tensorboard_dir / name
    clear_events(logdir)   # an interrupted attempt's pictures and scalars: written again below
    writer = tf.summary.create_file_writer(str(logdir))
    cmc = np.asarray(res["cmc"])
    with writer.as_default(step=0):
        tf.summary.scalar("eval/mAP", float(res["mAP"]))
        tf.summary.scalar("eval/mINP", float(res["mINP"]))
        for r in RANKS:
            if r <= len(cmc):
                tf.summary.scalar(f"eval/rank{r}", float(cmc[r - 1]))
        for key, value in (rerank or {}).items():   # k-reciprocal re-ranking (rerank: true)
            if key in ("mAP", "mINP") or key.startswith("rank"):
                tf.summary.scalar(f"eval/rerank/{key}", float(value))
        for i, v in enumerate(cmc):
            tf.summary.scalar("eval/cmc_curve", float(v), step=i + 1)
        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
        ax.plot(np.arange(1, len(cmc) + 1), 100 * cmc, marker=".")
        ax.set_xlabel("rank"); ax.set_ylabel("matching rate (%)"); ax.grid(alpha=0.3)
        ax.set_title(f"CMC: {name} (mAP {100 * res['mAP']:.1f}%)")
        tf.summary.image("eval/cmc", figure_to_image(fig)[None])
        if cfg.ranked_lists:
            tf.summary.image("eval/ranked_lists", _ranked_lists(dist, query, gallery, size, cfg)[None])
    writer.flush()
    if cfg.projector_samples:
        _projector(ctx.tensorboard_dir / name, gf, gallery, size, cfg.projector_samples, ctx.seed)


def _read_rgb(path: str, size) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        return np.zeros((size[0], size[1], 3), np.uint8)
    img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return img[..., ::-1]


def _ranked_lists(dist, query, gallery, size, cfg, top: int = 10) -> np.ndarray:
    """One picture: per row a query (dark border; its person and camera named on the left) and
    its top-10 gallery images (green = the same person, red = not)."""

    h, w = min(size[0], 128), min(size[1], 64)
    tiles, colors, labels = [], [], []
    for qi, order in _ranked_rows(dist, query, gallery, cfg.ranked_lists, top):
        q = query[qi]
        labels.append(f"id {q.pid} cam {q.camid}")
        tiles.append(_read_rgb(q.path, (h, w))); colors.append((40, 40, 40))
        for gi in order:
            tiles.append(_read_rgb(gallery[gi].path, (h, w)))
            colors.append((0, 200, 0) if gallery[gi].pid == q.pid else (220, 0, 0))
        for _ in range(top - len(order)):
            tiles.append(np.full((h, w, 3), 255, np.uint8)); colors.append((255, 255, 255))
    return label_rows(image_grid(np.stack(tiles), cols=top + 1, border=3, border_colors=colors), labels)


def _projector(logdir: Path, features: np.ndarray, records: list[Record], size, n: int, seed: int) -> None:
    """Export a subset of gallery embeddings (with thumbnails and pid/camera labels) for the projector."""
    logdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(records), size=min(n, len(records)), replace=False))
    with open(logdir / "metadata.tsv", "w", encoding="utf-8") as fh:
        fh.write("pid\tcamera\tfile\n")
        for i in idx:
            fh.write(f"{records[i].pid}\t{records[i].camid}\t{Path(records[i].path).name}\n")
    th, tw = 32, 16
    thumbs = np.stack([_read_rgb(records[i].path, (th, tw)) for i in idx])
    side = int(np.ceil(np.sqrt(len(idx))))
    square = np.zeros((len(idx), th, th, 3), np.uint8)
    square[:, :, (th - tw) // 2:(th - tw) // 2 + tw] = thumbs
    sprite = image_grid(square, cols=side, border=0)
    full = np.zeros((side * th, side * th, 3), np.uint8)
    full[:sprite.shape[0], :sprite.shape[1]] = sprite
    tf.io.write_file(str(logdir / "sprite.png"), tf.image.encode_png(full))
    var = tf.Variable(features[idx], name="embedding")
    ckpt = tf.train.Checkpoint(embedding=var)
    ckpt.save(str(logdir / "embedding.ckpt"))
    config = projector.ProjectorConfig()
    emb = config.embeddings.add()
    emb.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    emb.metadata_path = "metadata.tsv"
    emb.sprite.image_path = "sprite.png"
    emb.sprite.single_image_dim.extend([th, th])
    projector.visualize_embeddings(str(logdir), config)


