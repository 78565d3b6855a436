"""The heavy half of the ``evaluate`` stage (imports TensorFlow; loaded only when it runs)."""
from __future__ import annotations

import os
from pathlib import Path

import click
import numpy as np

from keras_reid import io
from keras_reid.data.records import JUNK_PID, Record
from keras_reid.errors import DatasetError, UserError
from keras_reid.progress import progbar
from keras_reid.stages.base import StageContext

RANKS = (1, 5, 10, 20)


def extract_features(model, records: list[Record], image_size, batch_size: int, flip: bool,
                     desc: str = "features") -> np.ndarray:
    """L2-normalised float32 features [N, D] of ``records`` (mean of image and mirror if ``flip``).

    The forward pass runs as one compiled ``tf.function`` per batch shape (eager calls of a
    ResNet50 are several times slower on CPU).
    """
    import tensorflow as tf

    from keras_reid.data.pipeline import eval_dataset

    @tf.function(reduce_retracing=True)
    def forward(images):
        f = model(images, training=False)
        if flip:
            f = f + model(tf.reverse(images, axis=[2]), training=False)
        return tf.math.l2_normalize(tf.cast(f, tf.float32), axis=1, epsilon=1e-12)

    ds = eval_dataset(records, image_size=tuple(image_size), batch_size=batch_size)
    bar = progbar(len(records), unit_name="image")
    feats = []
    for images in ds:
        if isinstance(images, (tuple, list)):
            images = images[0]
        feats.append(forward(images).numpy())
        bar.add(int(images.shape[0]))
    return np.concatenate(feats, 0) if feats else np.zeros((0, 1), np.float32)


def _usable(ctx: StageContext, split: str, cfg, dataset: str | None = None) -> list[Record]:
    from keras_reid.data.pipeline import scan_images

    splits = ctx.dataset(dataset or cfg.dataset)
    records = [r for r in splits[split] if r.pid != JUNK_PID]
    if not records:
        raise DatasetError(f"stage '{ctx.stage_name}': split '{split}' of dataset '{dataset or cfg.dataset}' is "
                           "empty; check the dataset root and the split names")
    good, bad = scan_images(records)
    if bad:
        ctx.echo(f"warning: skipped {len(bad)} of {len(records)} {split} images that could not be "
                 f"decoded (first: {bad[0]})")
    return good


def _load_model(ctx: StageContext, stage: str):
    import keras_reid.layers  # noqa: F401  (registers custom layers such as GeM pooling for loading)

    out = ctx.output_of(stage)
    path = ctx.run_dir / out["model"]
    if not path.exists():
        raise UserError(f"model file {path} of stage '{stage}' is missing; re-run that stage "
                        f"(delete {ctx.stage_dir_of(stage)}/.complete.json)")
    return load_saved(ctx, stage, path), out


def load_saved(ctx: StageContext, stage: str, path):
    """Returns the keras.Model a train stage saved at ``path``; a backbone component with
    ``load(path)`` loads it itself (its custom layers are registered in modules imported only
    when needed)."""
    import keras

    spec = getattr(ctx.recipe.stage_configs.get(stage), "backbone", None)
    if spec:
        factory = ctx.registry.create("backbone", spec)
        if callable(getattr(factory, "load", None)):
            return factory.load(str(path))
    return keras.saving.load_model(path, compile=False)


def evaluate(cfg, ctx: StageContext) -> dict:
    """Evaluate every model the config names (and the fused PN-GAN result when ``fusion`` is
    set); writes metrics.json and TensorBoard; returns a summary."""
    splits = ctx.dataset(cfg.dataset)
    if splits.kind == "closed_set":
        if cfg.fusion is not None:
            raise UserError(f"stage '{ctx.stage_name}': fusion ranks query and gallery images; dataset "
                            f"'{cfg.dataset}' is closed-set data: remove the fusion block")
        return _evaluate_closed_set(cfg, ctx)
    query = _usable(ctx, cfg.query_split, cfg)
    gallery = _usable(ctx, cfg.gallery_split, cfg)
    features = _RealFeatures(ctx, cfg, query, gallery,
                             keep=[cfg.fusion.real, cfg.fusion.normalised] if cfg.fusion else [])
    # fusion inputs are checked before anything is embedded: a bad view fails in seconds
    versions = _prepare_fusion(ctx, cfg, features, query + gallery) if cfg.fusion else None
    results: dict[str, dict] = {}
    for stage in cfg.models:
        name = cfg.names.get(stage, stage)
        model, out = loaded = features.model(stage)
        size = out["image_size"]
        ctx.echo(f"evaluating '{name}': {len(query)} queries x {len(gallery)} gallery images")
        qf, gf = features.get(stage, loaded)
        entry, res, dist = _score(qf, gf, query, gallery, cfg)
        for stage_name in cfg.generated:
            entry.setdefault("identity_preservation", {})[stage_name] = _identity_preservation(
                ctx, cfg, stage_name, model, size)
        results[name] = entry
        if ctx.is_chief:
            _publish(ctx, cfg, name, res, dist, query, gallery, gf, size)
    if cfg.fusion is not None:
        results.update(_evaluate_fusion(ctx, cfg, features, query, gallery, versions))
    features.release()
    quality = {stage_name: _image_quality(ctx, cfg, stage_name) for stage_name in cfg.generated}
    if ctx.is_chief:
        path = ctx.record_metrics(results, {"generated_quality": quality} if quality else None)
        io.write_json(ctx.stage_dir / "metrics.json", {"models": results, "generated_quality": quality})
        _print_table(ctx, results)
        _print_quality(ctx, results, quality)
        ctx.echo(f"metrics written to {path}")
    return {"models": results, "generated_quality": quality}


class _RealFeatures:
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
        """L2-normalised ``(query features, gallery features)`` of ``stage``'s model (``loaded``:
        its ``model(stage)`` result when the caller has it)."""
        if stage in self._features:
            return self._features[stage]
        model, out = loaded or self.model(stage)
        size, cfg = out["image_size"], self.cfg
        qf = extract_features(model, self.query, size, cfg.batch_size, cfg.flip)
        gf = extract_features(model, self.gallery, size, cfg.batch_size, cfg.flip)
        if stage in self.keep:
            self._features[stage] = (qf, gf)
        return qf, gf

    def release(self) -> None:
        self._models.clear()
        self._features.clear()


def _score(qf: np.ndarray, gf: np.ndarray, query: list[Record], gallery: list[Record],
           cfg) -> tuple[dict, dict, np.ndarray]:
    """Rank the gallery for every query; returns ``(metrics.json entry, evaluate_retrieval
    result, distance matrix)`` (the entry has a ``rerank`` part when the config asks for it)."""
    from keras_reid.metrics import evaluate_retrieval, pairwise_distance, rerank_features

    q_pids = np.array([r.pid for r in query]); g_pids = np.array([r.pid for r in gallery])
    q_cams = np.array([r.camid for r in query]); g_cams = np.array([r.camid for r in gallery])
    dist = pairwise_distance(qf, gf, metric=cfg.metric)
    res = evaluate_retrieval(dist, q_pids, g_pids, q_cams, g_cams, max_rank=cfg.max_rank)
    entry = _entry(res)
    if cfg.rerank:
        rr = rerank_features(qf, gf, k1=cfg.k1, k2=cfg.k2, lambda_value=cfg.lambda_value)
        entry["rerank"] = _entry(evaluate_retrieval(rr, q_pids, g_pids, q_cams, g_cams,
                                                    max_rank=cfg.max_rank))
    return entry, res, dist


def _publish(ctx: StageContext, cfg, name: str, res: dict, dist: np.ndarray, query: list[Record],
             gallery: list[Record], gf: np.ndarray, size) -> None:
    """TensorBoard (scalars, CMC, ranked lists, projector) and ``cmc_<name>.npy`` of one result."""
    _write_tensorboard(ctx, name, res, dist, query, gallery, gf, size, cfg)
    np.save(ctx.stage_dir / f"cmc_{name}.npy", np.asarray(res["cmc"]))


# ------------------------------------------------------------------------------ PN-GAN fusion
def _source_key(path) -> str:
    return os.path.normcase(os.path.realpath(str(path)))


def pose_versions(ctx: StageContext, cfg, images: list[Record]) -> tuple[list[Record], np.ndarray, dict]:
    """The pose-normalised versions of ``images`` written by the augment stages ``cfg.fusion.views``.

    A kept manifest row belongs to the image whose path equals its ``source``; rows of other
    sources are ignored (counted), and with ``fusion.poses`` only rows whose ``pose_index`` is
    listed are used. Returns ``(version records, owners [M] = index into images, counts)``,
    version records carrying their owner's pid and camera, ordered by owner, pose, file.
    Raises UserError when a view has not completed, when no row belongs to any of the images,
    or when a requested pose occurs in no row."""
    from keras_reid.data.pipeline import scan_images
    from keras_reid.stages._augment_impl import DATA_DIR, TRAIN_FOLDER, read_manifest

    fusion = cfg.fusion
    index: dict[str, list[int]] = {}
    for i, r in enumerate(images):
        index.setdefault(_source_key(r.path), []).append(i)
    where = f"stage '{ctx.stage_name}': fusion.views"
    found: list[tuple[int, int, str, str]] = []  # (owner, pose, file, path)
    other = rows_seen = 0
    poses_present: set[int] = set()
    for view in fusion.views:
        ctx.output_of(view)  # clear error when the augment stage has not completed
        folder = ctx.stage_dir_of(view) / DATA_DIR / TRAIN_FOLDER
        for row in sorted(read_manifest(ctx.stage_dir_of(view), kept_only=True), key=lambda r: r["file"]):
            rows_seen += 1
            owners = index.get(_source_key(row["source"])) if row.get("source") else None
            if owners is None:
                other += 1
                continue
            pose = row.get("pose_index")
            if fusion.poses is not None:
                if pose is None:
                    raise UserError(f"{where}: manifest rows of '{view}' have no pose_index, so "
                                    f"fusion.poses {fusion.poses} cannot choose among them; set "
                                    "poses: null or use a PN-GAN augment stage")
                poses_present.add(int(pose))
                if int(pose) not in fusion.poses:
                    continue
            found += [(i, -1 if pose is None else int(pose), row["file"], str(folder / row["file"]))
                      for i in owners]
    if other == rows_seen:
        raise UserError(f"{where}: none of the {rows_seen} kept images of {fusion.views} was generated "
                        f"from the '{cfg.query_split}'/'{cfg.gallery_split}' images of "
                        f"dataset '{cfg.dataset}' (matched by their source path); run those "
                        "augment stages over the query and gallery images")
    if fusion.poses is not None and not set(fusion.poses) <= poses_present:
        missing = sorted(set(fusion.poses) - poses_present)
        raise UserError(f"{where}: pose {missing[0]} of fusion.poses occurs in no manifest row; poses "
                        f"present: {sorted(poses_present)}")
    found.sort()
    records = [Record(path, images[i].pid, images[i].camid) for i, _, _, path in found]
    good, bad = scan_images(records)
    if bad:
        ctx.echo(f"warning: skipped {len(bad)} of {len(records)} pose-normalised images that could "
                 f"not be decoded (first: {bad[0]})")
        bad_set = set(bad)
        found = [f for f in found if f[3] not in bad_set]
        records = good
    owners = np.array([i for i, _, _, _ in found], np.int64)
    return records, owners, {"rows": rows_seen, "other_sources": other, "used": len(records),
                             "skipped": len(bad)}


def _prepare_fusion(ctx: StageContext, cfg, features: _RealFeatures,
                    images: list[Record]) -> tuple[list[Record], np.ndarray]:
    """The versions of ``images`` (see :func:`pose_versions`), after checking that A and B give
    vectors the fusion method can combine (when the models declare their output size)."""
    fusion = cfg.fusion
    records, owners, counts = pose_versions(ctx, cfg, images)
    if counts["other_sources"]:
        ctx.echo(f"fusion: {counts['other_sources']} of {counts['rows']} generated images are versions "
                 "of no query/gallery image; ignored")
    _check_sizes(ctx, fusion, _embedding_size(features.model(fusion.real)[0]),
                 _embedding_size(features.model(fusion.normalised)[0]))
    return records, owners


def _evaluate_fusion(ctx: StageContext, cfg, features: _RealFeatures, query: list[Record],
                     gallery: list[Record], versions: tuple[list[Record], np.ndarray]) -> dict[str, dict]:
    """The fused entry (and, with ``normalised_name``, model B alone on the fused versions)."""
    from keras_reid.metrics.retrieval import fuse_features

    fusion = cfg.fusion
    images = query + gallery
    model_b, out_b = features.model(fusion.normalised)
    records, owners = versions
    real = np.concatenate(features.get(fusion.real), 0)
    ctx.echo(f"evaluating '{fusion.name}': '{fusion.real}' on the real images + '{fusion.normalised}' "
             f"on {len(records)} pose-normalised versions, fused by {fusion.method}")
    vf = extract_features(model_b, records, out_b["image_size"], cfg.batch_size, cfg.flip)
    _check_sizes(ctx, fusion, real.shape[1], vf.shape[1])
    have = np.bincount(owners, minlength=len(images)) > 0
    without = int((~have).sum())
    info = {"images_without_versions": without, "versions": int(len(records)),
            "vectors": int(len(images) + len(records)),
            "fusion": {"real": fusion.real, "normalised": fusion.normalised, "views": list(fusion.views),
                       "method": fusion.method, "poses": fusion.poses}}
    nq = len(query)
    out: dict[str, dict] = {}
    size = features.model(fusion.real)[1]["image_size"]
    fused = fuse_features(real, vf, owners, len(images), fusion.method)
    out[fusion.name] = _fused_entry(ctx, cfg, fusion.name, fused[:nq], fused[nq:], query, gallery,
                                    size, info)
    if fusion.normalised_name:
        # images without versions fall back to model B on the real image
        fallback = np.flatnonzero(~have)
        vb, owners_b = vf, owners
        if fallback.size:
            real_b = np.concatenate(features.get(fusion.normalised), 0)
            vb = np.concatenate([vf, real_b[fallback]], 0)
            owners_b = np.concatenate([owners, fallback])
        only = fuse_features(None, vb, owners_b, len(images), fusion.method)
        info_b = {**info, "vectors": int(len(records) + fallback.size),
                  "fusion": {**info["fusion"], "real": None}}
        out[fusion.normalised_name] = _fused_entry(ctx, cfg, fusion.normalised_name, only[:nq], only[nq:],
                                                   query, gallery, out_b["image_size"], info_b)
    if without:
        ctx.echo(f"fusion: {without} of {len(images)} query/gallery images have no pose-normalised "
                 "version; they use the vectors they have")
    return out


def _embedding_size(model) -> int | None:
    """The last dimension of the model's (first) output, when the model declares it."""
    try:
        return int(model.outputs[0].shape[-1])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


def _check_sizes(ctx: StageContext, fusion, real: int | None, normalised: int | None) -> None:
    if fusion.method != "concat" and None not in (real, normalised) and real != normalised:
        raise UserError(f"stage '{ctx.stage_name}': fusion.method {fusion.method} needs vectors of one "
                        f"size, but '{fusion.real}' gives {real} and '{fusion.normalised}' "
                        f"{normalised}; use method: concat or models with one embedding size")


def _fused_entry(ctx: StageContext, cfg, name: str, qf: np.ndarray, gf: np.ndarray,
                 query: list[Record], gallery: list[Record], size, info: dict) -> dict:
    entry, res, dist = _score(qf, gf, query, gallery, cfg)
    entry.update(info)
    if ctx.is_chief:
        _publish(ctx, cfg, name, res, dist, query, gallery, gf, size)
    return entry


def _generated_subset(ctx: StageContext, cfg, stage_name: str) -> list[dict]:
    """The kept manifest rows of an augment stage (a deterministic subset of quality_images)."""
    from keras_reid.stages._augment_impl import read_manifest

    ctx.output_of(stage_name)  # clear error when the augment stage has not completed
    rows = sorted(read_manifest(ctx.stage_dir_of(stage_name), kept_only=True), key=lambda r: r["file"])
    if len(rows) > cfg.quality_images:
        keep = np.random.default_rng(ctx.seed).choice(len(rows), cfg.quality_images, replace=False)
        rows = [rows[i] for i in sorted(keep)]
    return rows


def _identity_preservation(ctx: StageContext, cfg, stage_name: str, model, size) -> dict:
    """Generated images as queries against the real images of their source split.

    Each query keeps its source camera as its camera id, so every real image of its identity in
    that camera (the source image included) is left out, as for a real cross-camera query."""
    from keras_reid.metrics.quality import identity_preservation
    from keras_reid.stages._augment_impl import DATA_DIR, TRAIN_FOLDER

    rows = _generated_subset(ctx, cfg, stage_name)
    if not rows or not rows[0]["source"]:
        return {"rank1": None, "rank5": None, "rank10": None, "mAP": None, "valid_queries": 0,
                "num_queries": len(rows), "note": "sampled from noise: no identity to find"}
    aug_cfg = ctx.recipe.stage_configs[stage_name]
    gen_cfg = ctx.recipe.stage_configs[aug_cfg.generator]
    dataset = aug_cfg.dataset or gen_cfg.dataset
    gallery = _usable(ctx, aug_cfg.split, cfg, dataset=dataset)
    gdir = ctx.stage_dir_of(stage_name) / DATA_DIR / TRAIN_FOLDER
    queries = [Record(str(gdir / r["file"]), int(r["pid"]), int(r["source_camera"])) for r in rows]
    ctx.echo(f"identity preservation of '{stage_name}': {len(queries)} generated queries x "
             f"{len(gallery)} real '{aug_cfg.split}' images")
    qf = extract_features(model, queries, size, cfg.batch_size, cfg.flip)
    gf = extract_features(model, gallery, size, cfg.batch_size, cfg.flip)
    res = identity_preservation(qf, np.array([q.pid for q in queries]), gf,
                                np.array([g.pid for g in gallery]),
                                gen_cams=np.array([q.camid for q in queries]),
                                gallery_cams=np.array([g.camid for g in gallery]))
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in res.items()}


def _image_quality(ctx: StageContext, cfg, stage_name: str) -> dict:
    """SSIM of generated images against their source image (whole image and, with a masker,
    the person only) and against a target-camera image of the same identity and sequence."""
    from keras_reid.data.images import read_image
    from keras_reid.metrics.quality import ssim

    rows = _generated_subset(ctx, cfg, stage_name)
    if not rows or not rows[0]["source"]:
        return {"images": len(rows), "note": "sampled from noise: no source or target to compare"}
    aug_cfg = ctx.recipe.stage_configs[stage_name]
    gen_out = ctx.output_of(aug_cfg.generator)
    size = tuple(gen_out["image_size"])
    from keras_reid.stages._augment_impl import DATA_DIR, TRAIN_FOLDER

    gdir = ctx.stage_dir_of(stage_name) / DATA_DIR / TRAIN_FOLDER
    generated = np.stack([read_image(str(gdir / r["file"]), size) for r in rows])
    sources = np.stack([read_image(r["source"], size) for r in rows])
    masks = None
    if gen_out.get("masker"):
        from keras_reid.data.masks import masks_for

        masker = ctx.registry.create("masker", gen_out["masker"])
        try:
            masks = masks_for(masker, [r["source"] for r in rows], size, images=sources) > 127
        finally:
            if callable(getattr(masker, "close", None)):
                masker.close()
    out = {"images": len(rows)}
    vs_source = ssim(generated, sources, masks=masks)
    out["ssim_vs_source"] = float(vs_source["ssim"])
    if vs_source.get("masked_ssim") is not None:
        out["person_ssim_vs_source"] = float(vs_source["masked_ssim"])
    # a target exists where the same identity and sequence was filmed by the target camera
    gen_cfg = ctx.recipe.stage_configs[aug_cfg.generator]
    split = ctx.dataset(aug_cfg.dataset or gen_cfg.dataset)[aug_cfg.split]
    targets: dict[tuple[int, int], str] = {}
    for r in sorted(split, key=lambda r: (r.frame, r.path)):
        if r.camid == gen_out["target_camera"]:
            targets.setdefault((r.pid, r.sequence), str(r.path))
    paired = [(i, targets[(int(r["pid"]), int(r["sequence"]))]) for i, r in enumerate(rows)
              if (int(r["pid"]), int(r["sequence"])) in targets]
    out["with_target"] = len(paired)
    if paired:
        idx = [i for i, _ in paired]
        tgt = np.stack([read_image(p, size) for _, p in paired])
        out["ssim_vs_target"] = float(ssim(generated[idx], tgt)["ssim"])
        out["ssim_source_vs_target"] = float(ssim(sources[idx], tgt)["ssim"])
    return out


def _print_quality(ctx: StageContext, results: dict, quality: dict) -> None:
    for stage_name, q in quality.items():
        if "ssim_vs_source" not in q:
            ctx.echo(f"generated '{stage_name}' ({q['images']} images): {q.get('note', '')}")
            continue
        parts = [f"SSIM vs source {q['ssim_vs_source']:.3f}"]
        if "person_ssim_vs_source" in q:
            parts.append(f"person {q['person_ssim_vs_source']:.3f}")
        if "ssim_vs_target" in q:
            parts.append(f"vs target {q['ssim_vs_target']:.3f} (source vs target "
                         f"{q['ssim_source_vs_target']:.3f}, {q['with_target']} images)")
        ctx.echo(f"generated '{stage_name}' ({q['images']} images): " + ", ".join(parts))
        for name, e in results.items():
            ip = e.get("identity_preservation", {}).get(stage_name)
            if ip and ip["rank1"] is not None:
                ctx.echo(f"  identity preservation with '{name}': rank-1 {100 * ip['rank1']:.2f}%  "
                         f"mAP {100 * ip['mAP']:.2f}% ({ip['valid_queries']} queries)")


def _entry(res: dict) -> dict:
    cmc = np.asarray(res["cmc"])
    e = {"mAP": float(res["mAP"]), "mINP": float(res["mINP"])}
    for r in RANKS:
        if r <= len(cmc):
            e[f"rank{r}"] = float(cmc[r - 1])
    e["valid_queries"] = int(res["num_valid_queries"])
    e["invalid_queries"] = int(res["num_invalid_queries"])
    return e


def _print_table(ctx: StageContext, results: dict) -> None:
    cols = ["mAP"] + [f"rank{r}" for r in RANKS] + ["mINP"]
    width = max([len("model")] + [len(n) + 9 for n in results])
    ctx.echo(click.style(f"{'model':<{width}}" + "".join(f"{c:>9}" for c in cols), bold=True))
    for name, e in results.items():
        rows = [(name, e)] + ([(name + " +rerank", e["rerank"])] if "rerank" in e else [])
        for label, values in rows:
            ctx.echo(f"{label:<{width}}" + "".join(
                f"{100 * values[c]:>8.2f}%" if c in values else f"{'-':>9}" for c in cols))


def _write_tensorboard(ctx, name, res, dist, query, gallery, gf, size, cfg) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tensorflow as tf

    from keras_reid.training.callbacks import figure_to_image

    writer = tf.summary.create_file_writer(str(ctx.tensorboard_dir / name))
    cmc = np.asarray(res["cmc"])
    with writer.as_default(step=0):
        tf.summary.scalar("eval/mAP", float(res["mAP"]))
        tf.summary.scalar("eval/mINP", float(res["mINP"]))
        for r in RANKS:
            if r <= len(cmc):
                tf.summary.scalar(f"eval/rank{r}", float(cmc[r - 1]))
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
    import cv2

    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        return np.zeros((size[0], size[1], 3), np.uint8)
    img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return img[..., ::-1]


def _ranked_lists(dist, query, gallery, size, cfg, top: int = 10) -> np.ndarray:
    """One picture: per row a query and its top-10 gallery images (green = match, red = not)."""
    from keras_reid.training.callbacks import image_grid

    h, w = min(size[0], 128), min(size[1], 64)
    rng = np.random.default_rng(0)
    picks = rng.choice(len(query), size=min(cfg.ranked_lists, len(query)), replace=False)
    tiles, colors = [], []
    for qi in sorted(picks):
        q = query[qi]
        keep = np.array([not (g.pid == q.pid and g.camid == q.camid) for g in gallery])
        order = np.argsort(dist[qi], kind="stable")
        order = order[keep[order]][:top]
        tiles.append(_read_rgb(q.path, (h, w))); colors.append((40, 40, 40))
        for gi in order:
            tiles.append(_read_rgb(gallery[gi].path, (h, w)))
            colors.append((0, 200, 0) if gallery[gi].pid == q.pid else (220, 0, 0))
        for _ in range(top - len(order)):
            tiles.append(np.full((h, w, 3), 255, np.uint8)); colors.append((255, 255, 255))
    return image_grid(np.stack(tiles), cols=top + 1, border=3, border_colors=colors)


def _projector(logdir: Path, features: np.ndarray, records: list[Record], size, n: int, seed: int) -> None:
    """Export a subset of gallery embeddings (with thumbnails and pid/camera labels) for the projector."""
    import tensorflow as tf
    from tensorboard.plugins import projector

    from keras_reid.training.callbacks import image_grid

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


def _evaluate_closed_set(cfg, ctx: StageContext) -> dict:
    """Closed-set identity classification (LIMA-style): prec@1 and mAP, ALL and p-ID."""
    import keras

    from keras_reid.data.pipeline import eval_dataset, scan_images
    from keras_reid.metrics import closed_set_metrics

    splits = ctx.dataset(cfg.dataset)
    test, bad = scan_images(splits[cfg.test_split])
    if bad:
        ctx.echo(f"warning: skipped {len(bad)} test images that could not be decoded")
    results = {}
    for stage in cfg.models:
        name = cfg.names.get(stage, stage)
        out = ctx.output_of(stage)
        path = ctx.run_dir / out.get("classifier", "")
        if not out.get("classifier") or not path.exists():
            raise UserError(f"stage '{stage}' saved no classifier model; closed-set evaluation needs "
                            "a train_reid stage trained on closed-set data")
        clf = load_saved(ctx, stage, path)
        labels_map = io.read_json(ctx.stage_dir_of(stage) / "labels.json")  # pid -> class index
        pid_of = {int(v): int(k) for k, v in labels_map.items()}
        num = len(pid_of)
        scores = []
        for images in eval_dataset(test, image_size=tuple(out["image_size"]), batch_size=cfg.batch_size):
            if isinstance(images, (tuple, list)):
                images = images[0]
            scores.append(np.asarray(keras.ops.softmax(clf(images, training=False)), np.float32))
        s = np.concatenate(scores, 0)
        pids = sorted(pid_of.values())
        # columns ordered by class id (pid), classes unseen in training get score 0
        col = {pid: i for i, pid in enumerate(pids)}
        y = np.array([col.get(r.pid, -1) for r in test])
        known = y >= 0
        res = closed_set_metrics(s[known], y[known], unknown_class=col.get(0, -1))
        entry = {k: float(res[k]) for k in ("prec1_all", "prec1_pid", "mAP_all", "mAP_pid")}
        entry["num_test_images"] = int(known.sum())
        entry["num_classes"] = num
        results[name] = entry
        io.write_json(ctx.stage_dir / f"confusion_{name}.json",
                      {"classes": pids, "matrix": np.asarray(res["confusion"]).tolist()})
        if ctx.is_chief:
            _write_closed_set_tensorboard(ctx, name, entry, np.asarray(res["confusion"]), pids)
    if ctx.is_chief:
        ctx.record_metrics(results)
        for name, e in results.items():
            ctx.echo(f"{name}: prec@1 ALL {100 * e['prec1_all']:.2f}%  p-ID {100 * e['prec1_pid']:.2f}%  "
                     f"mAP ALL {100 * e['mAP_all']:.2f}%  p-ID {100 * e['mAP_pid']:.2f}%")
    return {"models": results}


def _write_closed_set_tensorboard(ctx: StageContext, name: str, entry: dict, confusion: np.ndarray,
                                  classes: list[int]) -> None:
    """Closed-set scalars and the row-normalised confusion matrix as a picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tensorflow as tf

    from keras_reid.training.callbacks import figure_to_image

    writer = tf.summary.create_file_writer(str(ctx.tensorboard_dir / name))
    rows = confusion.sum(axis=1, keepdims=True)
    norm = np.divide(confusion, rows, out=np.zeros(confusion.shape, np.float64), where=rows > 0)
    n = len(classes)
    side = min(12.0, 3.0 + 0.25 * n)
    fig, ax = plt.subplots(figsize=(side, side * 0.85), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if n <= 40:
        ax.set_xticks(range(n), [str(c) for c in classes], rotation=90, fontsize=7)
        ax.set_yticks(range(n), [str(c) for c in classes], fontsize=7)
    ax.set_xlabel("predicted class"); ax.set_ylabel("true class")
    ax.set_title(f"{name}: prec@1 {100 * entry['prec1_all']:.1f}% (rows sum to 1)")
    with writer.as_default(step=0):
        for key in ("prec1_all", "prec1_pid", "mAP_all", "mAP_pid"):
            tf.summary.scalar(f"eval/{key}", entry[key])
        tf.summary.image("eval/confusion_matrix", figure_to_image(fig)[None])
    writer.flush()
