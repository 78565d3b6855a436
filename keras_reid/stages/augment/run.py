"""The body of the ``augment`` stage: work list, generation, filtering, atomic writing.

The work list (every source image x copy, with its output name and seed) is a pure function
of the recipe, so any process computes the same list; ``--shard i/N`` takes items i, i+N, ...
Finished items are those named in any ``manifest-*.jsonl`` of the stage folder, so a resumed
or re-sharded run skips them. Each image is written to a temporary name and renamed, then its
manifest line is appended and flushed: a kill leaves at most an image without a line, which
the next run regenerates (same name, same pixels) and overwrites.
"""
from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import tensorflow as tf

from keras_reid import io
from keras_reid.data import generated
from keras_reid.data.camera_split import camera_pair_split
from keras_reid.data.images import read_image
from keras_reid.data.poses import cached_keypoints, pose_found
from keras_reid.data.records import DISTRACTOR_PID, JUNK_PID, Record, subset
from keras_reid.errors import DatasetError, UserError
from keras_reid.metrics.quality import pixel_diversity
from keras_reid.model_files import sha256_file
from keras_reid.progress import progbar
from keras_reid.stages.augment.worker import Worker
from keras_reid.stages.base import StageContext, StageIncomplete
from keras_reid.stages.outputs import CanonicalPosesOutput, GeneratorOutput
from keras_reid.tb_events import clear_events
from keras_reid.training.callbacks import image_grid, label_rows

_BOX = re.compile(r"_(\d{2})$")


@dataclass(frozen=True)
class WorkItem:
    """One image to generate: source record, copy number, output file name, seed."""

    index: int
    source: Record
    copy: int
    name: str
    seed: int


def _gen_cfg(cfg, ctx: StageContext):
    return ctx.recipe.stage_configs[cfg.generator]


def source_records(cfg, ctx: StageContext,
                   gen_out: GeneratorOutput | None = None) -> tuple[list[Record], int, int]:
    """Return ``(source records, source camera, target camera)`` the config selects (noise
    generators: one pseudo-record per sample, per identity for per-identity generators, whose
    list comes from the generator stage's summary ``gen_out``).

    Raises DatasetError naming the cameras present when the source camera has no images."""
    gen = _gen_cfg(cfg, ctx)
    if cfg.samples is not None:  # an unconditional generator: one pseudo-record per noise sample
        if not gen.per_identity:
            return [Record("", 0, 0, 0, i) for i in range(cfg.samples)], 0, 0
        if gen_out is None:  # before the generators exist (preflight): nothing to check yet
            return [], 0, 0
        pids = sorted(int(p) for p in gen_out.generators or {})
        return [Record("", pid, 0, 0, i) for pid in pids for i in range(cfg.samples)], 0, 0
    dataset = cfg.dataset or gen.dataset
    if cfg.poses is not None:  # a pose generator: every image of the split, in its own camera
        chosen = sorted((r for r in ctx.dataset(dataset)[cfg.split] if r.pid != JUNK_PID),
                        key=lambda r: (r.pid, r.camid, r.sequence, r.frame, r.path))
        if not chosen:
            raise DatasetError(f"stage '{ctx.stage_name}': split '{cfg.split}' of dataset '{dataset}' "
                               "has no images")
        return subset(chosen, cfg.max_images, ctx.seed), None, None
    cam_a = cfg.source_camera if cfg.source_camera is not None else gen.source_camera
    cam_b = gen.target_camera
    if cam_a is None or cam_b is None:
        raise UserError(f"stage '{ctx.stage_name}': the generator of stage '{cfg.generator}' has no "
                        "source/target camera; set source_camera here and target_camera there")
    where = f"split '{cfg.split}' of dataset '{dataset}'"
    records = [r for r in ctx.dataset(dataset)[cfg.split] if r.pid not in (JUNK_PID, DISTRACTOR_PID)]
    cams = sorted({r.camid for r in records})
    if cam_a not in cams:
        raise DatasetError(f"stage '{ctx.stage_name}': camera {cam_a} does not occur in {where}; "
                           f"cameras present: {', '.join(map(str, cams)) or '(none)'}")
    if cfg.images == "all":
        chosen = [r for r in records if r.camid == cam_a]
    else:
        split = camera_pair_split(records, cam_a, cam_b, source=where)
        chosen = {"test": split.test_images, "new_ids": split.new_id_images,
                  "train_pairs": list({a.path: a for a, _ in split.train_pairs}.values())}[cfg.images]
    chosen = sorted(chosen, key=lambda r: (r.pid, r.sequence, r.frame, r.path))
    if not chosen:
        raise DatasetError(f"stage '{ctx.stage_name}': no '{cfg.images}' images of camera {cam_a} -> "
                           f"{cam_b} in {where}; choose images: all")
    return subset(chosen, cfg.max_images, ctx.seed), cam_a, cam_b


def target_pool(cfg, ctx: StageContext, cam_b: int) -> list[Record]:
    """Target-camera images whose masks serve as output masks (pose) for generators that take one."""
    gen = _gen_cfg(cfg, ctx)
    records = ctx.dataset(gen.dataset)[gen.split]
    return sorted((r for r in records if r.camid == cam_b and r.pid not in (JUNK_PID, DISTRACTOR_PID)),
                  key=lambda r: r.path)


def output_name(source: Record, cam_a: int, cam_b: int, copy: int) -> str:
    """``<pid>_c<B>s<seq>_<frame>_<box>_g<A>k<copy>.jpg`` (box from the source name, else 01)."""
    m = _BOX.search(Path(source.path).stem)
    box = int(m.group(1)) if m else 1
    return (f"{max(source.pid, 0):04d}_c{cam_b}s{source.sequence % 10}_{source.frame % 1_000_000:06d}_"
            f"{box:02d}_g{cam_a}k{copy}.jpg")


def work_items(sources: list[Record], cam_a: int | None, cam_b: int | None, copies: int | list[int],
               seed: int) -> list[WorkItem]:
    """The full, ordered work list (output names made unique deterministically). ``copies`` is a
    count or the list of copy numbers (canonical pose indices); cameras None = each record's own."""
    items: list[WorkItem] = []
    seen: dict[str, int] = {}
    copy_ids = list(range(copies)) if isinstance(copies, int) else list(copies)
    for i, r in enumerate(sources):
        for k in copy_ids:
            name = output_name(r, r.camid if cam_a is None else cam_a, r.camid if cam_b is None else cam_b, k)
            if name in seen:  # two sources with the same pid/camera/sequence/frame/box
                seen[name] += 1
                name = name[:-4] + f"x{seen[name]}.jpg"
            else:
                seen[name] = 0
            key = r.path or f"noise-{i}"  # noise samples have no source file
            item_seed = int.from_bytes(hashlib.sha256(f"{seed}:{key}:{k}".encode()).digest()[:4], "little")
            items.append(WorkItem(len(items), r, k, name, item_seed))
    return items


def _item_dict(it: WorkItem, cam_a: int | None, cam_b: int | None) -> dict:
    return {"name": it.name, "source_path": str(it.source.path), "pid": it.source.pid,
            "camera": it.source.camid if cam_b is None else cam_b,
            "source_camera": it.source.camid if cam_a is None else cam_a, "sequence": it.source.sequence, "frame": it.source.frame,
            "copy": it.copy, "seed": it.seed, "index": it.index}


@dataclass
class _Plan:
    """What an augment run generates: the sources, the cameras (None = each source's own), the
    full work list, and for pose generators the canonical poses and their summary."""

    sources: list[Record]
    cam_a: int | None
    cam_b: int | None
    items: list[WorkItem]
    copies: int | list[int]
    canonical: list | None = None
    pose_summary: dict | None = None


def augment(cfg, ctx: StageContext) -> dict:
    """Run the augment stage (this process's shard, or every item on Ray); returns the summary."""
    gen_out = ctx.output_of(cfg.generator, GeneratorOutput)
    files = _generator_files(cfg, ctx, gen_out)
    plan = _plan(cfg, ctx, gen_out)
    shard_i, shard_n = ctx.shard or (0, 1)
    if cfg.engine == "ray" and ctx.shard:
        raise UserError("--shard splits the local engine's work; with engine: ray the stage runs every "
                        "shard on the cluster itself: drop --shard")
    out_dir = generated.images_dir(ctx.stage_dir)
    _remove_leftovers(out_dir)
    done = {row["file"] for row in generated.read_manifest(ctx.stage_dir)}
    mine = plan.items[shard_i::shard_n]
    todo = [it for it in mine if it.name not in done]
    _echo_plan(cfg, ctx, plan, done=len(mine) - len(todo), todo=len(todo))
    t0 = time.time()
    if todo:
        worker_kwargs = _worker_kwargs(cfg, ctx, gen_out, files, plan, out_dir)
        _generate_items(cfg, ctx, [_item_dict(it, plan.cam_a, plan.cam_b) for it in todo], worker_kwargs)
    seconds = time.time() - t0
    rows = _all_rows(ctx, plan.items, shard_n)
    summary = _summarise(cfg, ctx, plan, rows, out_dir)
    summary["images_per_second"] = round(len(todo) / seconds, 2) if todo and seconds > 0 else None
    return summary


def _generator_files(cfg, ctx: StageContext, gen_out: GeneratorOutput) -> dict[str, str]:
    """``{"": file}`` (one generator) or ``{pid: file}`` (one per identity), relative to the run
    folder; raises UserError naming the stage to re-run when one is missing."""
    files = gen_out.files()
    for rel in files.values():
        if not (ctx.run_dir / rel).exists():
            raise UserError(f"generator file {ctx.run_dir / rel} of stage '{cfg.generator}' is missing; "
                            f"re-run that stage (delete {ctx.stage_dir_of(cfg.generator)}/.complete.json)")
    return files


def _plan(cfg, ctx: StageContext, gen_out: GeneratorOutput) -> _Plan:
    """The sources and the full, ordered work list (the same in every process)."""
    sources, cam_a, cam_b = source_records(cfg, ctx, gen_out)
    canonical, pose_summary = None, None
    copies: int | list[int] = cfg.copies
    if cfg.poses is not None:
        sources, canonical, copies, pose_summary = _pose_sources(cfg, ctx, sources, gen_out)
    items = work_items(sources, cam_a, cam_b, copies, ctx.seed)
    return _Plan(sources, cam_a, cam_b, items, copies, canonical, pose_summary)


def _remove_leftovers(out_dir: Path) -> None:
    """Temporary files of a killed run: never complete, never listed."""
    if out_dir.is_dir():
        for leftover in out_dir.glob(".tmp-*"):
            leftover.unlink(missing_ok=True)


def _echo_plan(cfg, ctx: StageContext, plan: _Plan, *, done: int, todo: int) -> None:
    shard_i, shard_n = ctx.shard or (0, 1)
    part = f"shard {shard_i}/{shard_n}: " if shard_n > 1 else ""
    what = ("from noise" if cfg.samples is not None else
            f"from {len(plan.sources):,} images of split '{cfg.split}' in {len(plan.copies)} canonical poses"
            if plan.canonical is not None else
            f"from {len(plan.sources):,} camera-{plan.cam_a} images ({cfg.images}) into camera "
            f"{plan.cam_b}'s style")
    ctx.echo(f"{part}{len(plan.items):,} images to generate {what}; {done:,} done before, {todo:,} to do"
             + (f"; filters: {', '.join(f['type'] for f in cfg.filters)}" if cfg.filters else ""))


def _worker_kwargs(cfg, ctx: StageContext, gen_out: GeneratorOutput, files: dict[str, str], plan: _Plan,
                   out_dir: Path) -> dict:
    """The :class:`Worker`'s arguments (plain values: a Ray actor gets them pickled)."""
    generators = {key: {"path": str(ctx.run_dir / rel), "checkpoint": rel,
                        "checkpoint_sha256": sha256_file(ctx.run_dir / rel)[:16]}
                  for key, rel in files.items()}
    targets = ([str(r.path) for r in target_pool(cfg, ctx, plan.cam_b)]
               if "target_mask" in gen_out.generation_needs else [])
    provenance = {"generator_stage": cfg.generator, "generator": gen_out.generator,
                  "recipe_seed": ctx.seed}
    return dict(generators=generators, gen_summary=gen_out.dump(), filters=cfg.filters, measure=cfg.measure,
                min_score=cfg.min_score, noise=cfg.noise, out_dir=str(out_dir), target_paths=targets,
                jpeg_quality=cfg.jpeg_quality, jpeg_chroma=cfg.jpeg_chroma, provenance=provenance,
                canonical=plan.canonical)


def _generate_items(cfg, ctx: StageContext, items: list[dict], worker_kwargs: dict) -> None:
    """Generate ``items`` here or on Ray and append their rows to this process's manifest part."""
    if cfg.engine == "ray":
        from keras_reid.stages.augment import ray as augment_ray  # deferred: imports Ray

        rows_iter = augment_ray.run(items, worker_kwargs, cfg)
        manifest = generated.manifest_part(ctx.stage_dir, ray=True)
    else:
        rows_iter = _local(items, worker_kwargs, cfg.batch_size)
        manifest = generated.manifest_part(ctx.stage_dir, ctx.shard)
    _write_rows(manifest, rows_iter, len(items), ctx)


def _all_rows(ctx: StageContext, items: list[WorkItem], shard_n: int) -> list[generated.ManifestRow]:
    """The rows of every item of the work list; raises StageIncomplete while other shards'
    items are missing."""
    rows = generated.read_manifest(ctx.stage_dir)
    finished = {r["file"] for r in rows}
    missing = [it for it in items if it.name not in finished]
    if missing:
        raise StageIncomplete(
            f"{len(items) - len(missing):,} of {len(items):,} images done; the other shards' "
            f"{len(missing):,} remain: run them (--shard j/{shard_n}) over this run folder, or run "
            "again without --shard to do them here")
    wanted = {it.name for it in items}
    return [r for r in rows if r["file"] in wanted]


def _summarise(cfg, ctx: StageContext, plan: _Plan, rows: list[generated.ManifestRow], out_dir: Path) -> dict:
    """Counts per filter, measured fractions, sample diversity and the TensorBoard picture."""
    kept = [r for r in rows if r["kept"]]
    per_filter = {f["type"]: sum(1 for r in rows if r["scores"].get(f["type"], 1.0) < cfg.min_score)
                  for f in cfg.filters}
    accepted = {name: round(1.0 - n / max(len(rows), 1), 4) for name, n in per_filter.items()}
    measured = {f["type"]: round(sum(r.get("measured", {}).get(f["type"], 0.0) >= cfg.min_score
                                     for r in rows) / max(len(rows), 1), 4) for f in cfg.measure}
    ctx.echo(f"kept {len(kept):,} of {len(rows):,} generated images"
             + (f" (dropped by filter: {', '.join(f'{k} {v}' for k, v in per_filter.items())})"
                if cfg.filters else "") + f" -> {out_dir}")
    for name, frac in measured.items():
        ctx.echo(f"{name}: {frac:.1%} of the generated images score at least {cfg.min_score}")
    diversity = _sample_diversity(kept, ctx.stage_dir, ctx) if cfg.samples is not None else None
    summary = {
        "data": str((ctx.stage_dir / generated.DATA_DIR).relative_to(ctx.run_dir)),
        "generator_stage": cfg.generator,
        "source_camera": plan.cam_a, "target_camera": plan.cam_b, "images_from": cfg.images,
        "source_images": len(plan.sources), "generated": len(rows), "kept": len(kept),
        "dropped": len(rows) - len(kept), "dropped_by_filter": per_filter,
        "accepted_fraction_by_filter": accepted,
        "measured_fraction": measured,
        "identities": len({r["pid"] for r in kept}),
        "images_per_second": None,
        "engine": cfg.engine,
    }
    if plan.pose_summary is not None:
        summary["poses"] = plan.pose_summary
    if diversity is not None:
        summary["sample_diversity"] = diversity
    if kept and ctx.is_chief:
        _log_samples(ctx, kept, ctx.stage_dir)
    return summary


DIVERSITY_IMAGES = 500
"""Samples (a fixed subset) over which an augment stage from noise measures pixel diversity."""


def _sample_diversity(kept: list[dict], stage_dir: Path, ctx: StageContext) -> dict | None:
    """Pixel diversity of the kept samples of a noise-driven generator (a collapsed generator
    shows as a low figure; see ``metrics.quality.pixel_diversity``), per generator and overall."""

    rows = subset(sorted(kept, key=lambda r: r["file"]), DIVERSITY_IMAGES, seed=0)
    if len(rows) < 2:
        return None
    images = np.stack([read_image(str(generated.image_path(stage_dir, r)), None) for r in rows])
    out = {"pixel_std": round(pixel_diversity(images), 2), "images": len(rows)}
    by_generator: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_generator.setdefault(str(r.get("checkpoint", "")), []).append(i)
    if len(by_generator) > 1:
        out["pixel_std_by_generator"] = {k: round(pixel_diversity(images[idx]), 2)
                                         for k, idx in sorted(by_generator.items()) if len(idx) > 1}
    ctx.echo(f"sample diversity: per-pixel std {out['pixel_std']:.1f} across {len(rows)} samples "
             "(0 = all alike; a collapsed generator scores far below its real images)")
    return out


def _local(items: list[dict], worker_kwargs: dict, batch_size: int) -> Iterable[list[dict]]:
    worker = Worker(**worker_kwargs)
    try:
        for start in range(0, len(items), batch_size):
            yield worker.process(items[start:start + batch_size])
    finally:
        worker.close()


def _write_rows(manifest: Path, batches: Iterable[list[dict]], total: int, ctx: StageContext) -> None:
    """Append manifest rows as batches arrive (flushed and synced per batch), with a progress bar."""
    generated.repair(manifest)
    bar = progbar(total, unit_name="image", stateful_metrics={"images/s", "kept"})
    n = kept = 0
    t0 = time.time()
    with open(manifest, "a", encoding="utf-8") as fh:
        for rows in batches:
            generated.append_rows(fh, rows)
            n += len(rows)
            kept += sum(r["kept"] for r in rows)
            bar.update(n, [("images/s", n / max(time.time() - t0, 1e-9)), ("kept", kept)])


def _log_samples(ctx: StageContext, kept: list[dict], stage_dir: Path, n: int = 16) -> None:
    """Source / generated pairs of the first ``n`` kept images as one TensorBoard picture (rows
    named on the left; the picture of an earlier, unfinished attempt is replaced)."""
    rows = sorted(kept, key=lambda r: r["file"])[:n]
    first = read_image(str(generated.image_path(stage_dir, rows[0])), (128, 64))
    size = first.shape[:2]
    src = [read_image(r["source"], size) for r in rows if r["source"]]  # none for noise samples
    gen = [read_image(str(generated.image_path(stage_dir, r)), size) for r in rows]
    grid = label_rows(image_grid(np.stack(src + gen), cols=len(rows)),
                      (["source"] if src else []) + ["generated"])
    clear_events(ctx.tensorboard_dir)
    writer = tf.summary.create_file_writer(str(ctx.tensorboard_dir))
    with writer.as_default(step=0):
        tf.summary.image("augment/source_vs_generated", grid[None], step=0)
    writer.flush()


def _pose_sources(cfg, ctx: StageContext, sources: list[Record], gen_out: GeneratorOutput):
    """Pose generators: the canonical poses (scaled to the generator's size by the worker), the
    pose indices to generate, and the sources left after the no-pose policy. Returns
    ``(sources, canonical, pose_indices, summary)``."""
    poses_out = ctx.output_of(cfg.poses, CanonicalPosesOutput)
    data = io.read_json(ctx.run_dir / poses_out.poses)
    if data is None:
        raise UserError(f"the canonical poses of stage '{cfg.poses}' are missing; re-run that stage")
    canonical = [{"keypoints": p["keypoints"], "size": data["image_size"]} for p in data["poses"]]
    indices = list(cfg.pose_indices) if cfg.pose_indices is not None else list(range(len(canonical)))
    summary = {"stage": cfg.poses, "pose_indices": indices, "source_images": len(sources),
               "without_pose": None, "policy": cfg.no_pose}
    if cfg.source_pose is not None:
        size = gen_out.image_size
        paths = [str(r.path) for r in sources]
        with ctx.registry.using("pose", cfg.source_pose) as estimator:
            kp, _ = cached_keypoints(ctx.stage_dir, cfg.source_pose, estimator, paths, size)
        found = pose_found(kp, cfg.min_keypoints)
        summary["without_pose"] = int((~found).sum())
        ctx.echo(f"source poses ({cfg.source_pose['type']}): none found in {int((~found).sum()):,} of "
                 f"{len(sources):,} images; " + ("they are skipped" if cfg.no_pose == "skip" else
                                                  "their canonical-pose versions are generated anyway"))
        if cfg.no_pose == "skip":
            sources = [r for r, ok in zip(sources, found) if ok]
    return sources, canonical, indices, summary
