"""The body of the ``evaluate`` stage (imported when it runs): the
stage's order of work. Retrieval scoring and publishing live in ``common``, PN-GAN
fusion in ``fusion``, generated-set checks (identity preservation, SSIM) in
``generated``, closed-set classification in ``closed_set``, the converted
(deploy) models in ``deploy``."""
from __future__ import annotations

from keras_reid import io
from keras_reid.errors import UserError
from keras_reid.stages.evaluate.closed_set import classify_holdout, evaluate_closed_set
from keras_reid.stages.evaluate.common import (RealFeatures, _print_table, chance_of, multi_query_entry,
                                                multi_query_set, publish, score, usable_records)
from keras_reid.stages.evaluate.deploy import evaluate_converted
from keras_reid.stages.evaluate.fusion import evaluate_fusion, prepare_fusion
from keras_reid.stages.evaluate.generated import identity_preservation_of, image_quality, print_quality
from keras_reid.stages.base import StageContext


def evaluate(cfg, ctx: StageContext) -> dict:
    """Evaluate every model the config names (and the fused PN-GAN result when ``fusion`` is
    set); writes metrics.json and TensorBoard; returns a summary."""
    splits = ctx.dataset(cfg.dataset)
    if splits.kind == "closed_set":
        if cfg.fusion is not None:
            raise UserError(f"stage '{ctx.stage_name}': fusion ranks query and gallery images; dataset "
                            f"'{cfg.dataset}' is closed-set data: remove the fusion block")
        return evaluate_closed_set(cfg, ctx)
    query = usable_records(ctx, cfg.query_split, cfg)
    gallery = usable_records(ctx, cfg.gallery_split, cfg)
    features = RealFeatures(ctx, cfg, query, gallery,
                             keep=[cfg.fusion.real, cfg.fusion.normalised] if cfg.fusion else [])
    pooled = multi_query_set(ctx, cfg, query) if cfg.multi_query else None
    # fusion inputs are checked before anything is embedded: a bad view fails in seconds
    versions = (prepare_fusion(ctx, cfg, features, query + gallery + (pooled[0] if pooled else []))
                if cfg.fusion else None)
    results: dict[str, dict] = {}
    for stage in cfg.models:
        results.update(_evaluate_model(ctx, cfg, features, stage, query, gallery, pooled))
    if cfg.fusion is not None:
        results.update(evaluate_fusion(ctx, cfg, features, query, gallery, versions, pooled))
    features.release()
    quality = {stage_name: image_quality(ctx, cfg, stage_name) for stage_name in cfg.generated}
    chance = chance_of(query, gallery)
    if ctx.is_chief:
        _record(ctx, results, quality, chance)
    return {"models": results, "generated_quality": quality, "chance": chance}


def _evaluate_model(ctx: StageContext, cfg, features: RealFeatures, stage: str, query, gallery,
                    pooled) -> dict[str, dict]:
    """Retrieval metrics of train stage ``stage``'s model (multi-query, holdout classification
    and identity preservation of the generated sets where asked), published to TensorBoard;
    with its deploy form beside it. Returns ``{model name: entry}``."""
    name = cfg.names.get(stage, stage)
    model, out = loaded = features.model(stage)
    size = out.image_size
    ctx.echo(f"evaluating '{name}': {len(query)} queries x {len(gallery)} gallery images")
    qf, gf = features.get(stage, loaded)
    entry, res, dist = score(qf, gf, query, gallery, cfg)
    if pooled is not None:
        entry["multi_query"] = multi_query_entry(model, size, cfg, qf, gf, query, gallery, pooled)
    if out.holdout:
        entry["classification"] = classify_holdout(ctx, cfg, stage)
    for stage_name in cfg.generated:
        entry.setdefault("identity_preservation", {})[stage_name] = identity_preservation_of(
            ctx, cfg, stage_name, model, size)
    results = {name: entry}
    if ctx.is_chief:
        publish(ctx, cfg, name, res, dist, query, gallery, gf, size, entry)
    if cfg.converted and out.converted:   # the backbone's deploy form, beside it
        results.update(evaluate_converted(ctx, cfg, stage, name, loaded, (qf, gf), entry, query,
                                          gallery, pooled))
    return results


def _record(ctx: StageContext, results: dict, quality: dict, chance: dict) -> None:
    """metrics.json (the run's and the stage's) and the printed tables."""
    path = ctx.record_metrics(results, {"generated_quality": quality} if quality else None,
                              chance=chance)
    io.write_json(ctx.stage_dir / "metrics.json", {"models": results, "generated_quality": quality,
                                                   "chance": chance})
    _print_table(ctx, results, chance)
    print_quality(ctx, results, quality)
    ctx.echo(f"metrics written to {path}")
