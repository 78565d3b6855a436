"""Generated-set checks of the ``evaluate`` stage: identity preservation (generated images as
queries against real images) and SSIM image quality against source and target images."""
from __future__ import annotations

import numpy as np

from keras_reid.data import generated
from keras_reid.data.images import read_image
from keras_reid.data.masks import masks_for
from keras_reid.data.records import Record, subset
from keras_reid.inference import extract_features
from keras_reid.metrics.quality import identity_preservation, ssim
from keras_reid.stages.base import StageContext
from keras_reid.stages.evaluate.common import usable_records
from keras_reid.stages.outputs import GeneratorOutput


def _generated_subset(ctx: StageContext, cfg, stage_name: str) -> list[dict]:
    """The kept manifest rows of an augment stage (a deterministic subset of quality_images)."""
    ctx.output_of(stage_name)  # clear error when the augment stage has not completed
    rows = generated.kept_rows(ctx.stage_dir_of(stage_name))
    return subset(rows, cfg.quality_images, ctx.seed)


def identity_preservation_of(ctx: StageContext, cfg, stage_name: str, model, size) -> dict:
    """Generated images as queries against the real images of their source split.

    Each query keeps its source camera as its camera id, so every real image of its identity in
    that camera (the source image included) is left out, as for a real cross-camera query."""

    rows = _generated_subset(ctx, cfg, stage_name)
    if not rows or not rows[0]["source"]:
        return {"rank1": None, "rank5": None, "rank10": None, "mAP": None, "valid_queries": 0,
                "num_queries": len(rows), "note": "sampled from noise: no identity to find"}
    aug_cfg = ctx.recipe.stage_configs[stage_name]
    gen_cfg = ctx.recipe.stage_configs[aug_cfg.generator]
    dataset = aug_cfg.dataset or gen_cfg.dataset
    gallery = usable_records(ctx, aug_cfg.split, cfg, dataset=dataset)
    gdir = ctx.stage_dir_of(stage_name)
    queries = [Record(str(generated.image_path(gdir, r)), int(r["pid"]), int(r["source_camera"])) for r in rows]
    ctx.echo(f"identity preservation of '{stage_name}': {len(queries)} generated queries x "
             f"{len(gallery)} real '{aug_cfg.split}' images")
    qf = extract_features(model, queries, size, cfg.batch_size, cfg.flip)
    gf = extract_features(model, gallery, size, cfg.batch_size, cfg.flip)
    res = identity_preservation(qf, np.array([q.pid for q in queries]), gf,
                                np.array([g.pid for g in gallery]),
                                gen_cams=np.array([q.camid for q in queries]),
                                gallery_cams=np.array([g.camid for g in gallery]))
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in res.items()}


def image_quality(ctx: StageContext, cfg, stage_name: str) -> dict:
    """SSIM of generated images against their source image (whole image and, with a masker,
    the person only) and against a target-camera image of the same identity and sequence."""

    rows = _generated_subset(ctx, cfg, stage_name)
    if not rows or not rows[0]["source"]:
        return {"images": len(rows), "note": "sampled from noise: no source or target to compare"}
    aug_cfg = ctx.recipe.stage_configs[stage_name]
    gen_out = ctx.output_of(aug_cfg.generator, GeneratorOutput)
    size = gen_out.image_size
    gdir = ctx.stage_dir_of(stage_name)
    images = np.stack([read_image(str(generated.image_path(gdir, r)), size) for r in rows])
    sources = np.stack([read_image(r["source"], size) for r in rows])
    masks = None
    if gen_out.masker:
        with ctx.registry.using("masker", gen_out.masker) as masker:
            masks = masks_for(masker, [r["source"] for r in rows], size, images=sources) > 127
    out = {"images": len(rows)}
    vs_source = ssim(images, sources, masks=masks)
    out["ssim_vs_source"] = float(vs_source["ssim"])
    if vs_source.get("masked_ssim") is not None:
        out["person_ssim_vs_source"] = float(vs_source["masked_ssim"])
    # a target exists where the same identity and sequence was filmed by the target camera
    gen_cfg = ctx.recipe.stage_configs[aug_cfg.generator]
    split = ctx.dataset(aug_cfg.dataset or gen_cfg.dataset)[aug_cfg.split]
    targets: dict[tuple[int, int], str] = {}
    for r in sorted(split, key=lambda r: (r.frame, r.path)):
        if r.camid == gen_out.target_camera:
            targets.setdefault((r.pid, r.sequence), str(r.path))
    paired = [(i, targets[(int(r["pid"]), int(r["sequence"]))]) for i, r in enumerate(rows)
              if (int(r["pid"]), int(r["sequence"])) in targets]
    out["with_target"] = len(paired)
    if paired:
        idx = [i for i, _ in paired]
        tgt = np.stack([read_image(p, size) for _, p in paired])
        out["ssim_vs_target"] = float(ssim(images[idx], tgt)["ssim"])
        out["ssim_source_vs_target"] = float(ssim(sources[idx], tgt)["ssim"])
    return out


def print_quality(ctx: StageContext, results: dict, quality: dict) -> None:
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

