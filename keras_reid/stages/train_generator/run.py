"""The body of the ``train_generator`` stage (imported when it runs; it imports TensorFlow)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from keras_reid import io
from keras_reid.data.gan_input import GANInput
from keras_reid.data.gan_pairs import make_pairs
from keras_reid.data.images import load_images
from keras_reid.data.masks import cached_masks, cached_scores
from keras_reid.data.poses import cached_keypoints, pose_found
from keras_reid.errors import DatasetError, UserError
from keras_reid.interfaces import MASK_KEYS, generator_factory
from keras_reid.stages.base import StageContext
from keras_reid.stages.outputs import GeneratorOutput
from keras_reid.training import loop  # loop.train looked up per call (tests spy on it)
from keras_reid.training.callbacks import GeneratorSamples, ScalarLogger
from keras_reid.training.checkpoint import EpochCheckpoint, restore_latest

GENERATOR_FILE = "generator.keras"


@dataclass
class _Data:
    """What the generator trains on: the pairs, the decoded images (uint8, at the stage's size)
    and what the generator needs beside them."""

    pairs: Any
    images: np.ndarray
    masks: np.ndarray | None = None
    mask_info: dict | None = None
    poses: np.ndarray | None = None
    pose_info: dict | None = None
    extras: dict = field(default_factory=dict)
    semantic_info: dict | None = None


def train(cfg, ctx: StageContext) -> dict:
    """Pair, mask, train and save the generator the stage config describes; returns the summary."""
    factory = generator_factory(cfg.generator, ctx.registry)
    t0 = time.time()
    data = _pairs_and_images(cfg, ctx, factory)
    if set(factory.needs) & set(MASK_KEYS):
        data.masks, data.mask_info = _masks(cfg, ctx, data)
    if "target_pose" in set(factory.needs):
        data.pairs, data.poses, data.pose_info = _poses(cfg, ctx, data.pairs, _paths(data), data.images)
    scorer = ctx.registry.create("filter", cfg.semantic_filter) if cfg.semantic_filter is not None else None
    try:
        if scorer is not None:
            _apply_semantic_filter(cfg, ctx, data, scorer)
        load_seconds = time.time() - t0
        keras.utils.set_random_seed(ctx.seed)
        init_weights = _init_weights(cfg, ctx, factory)
        if cfg.per_identity:
            generators, fit = _fit_per_identity(cfg, ctx, factory, data, scorer, init_weights)
        else:
            generators = None
            fit = _fit(cfg, ctx, factory, data.pairs, data.images, data.masks, data.extras, scorer,
                       init_weights, ctx.stage_dir / "checkpoints", ctx.stage_dir / GENERATOR_FILE,
                       ctx.tensorboard_dir, poses=data.poses)
    finally:
        if scorer is not None and callable(getattr(scorer, "close", None)):
            scorer.close()
    return _summary(cfg, ctx, factory, data, generators, fit, load_seconds)


def _paths(data: _Data) -> list[str]:
    return [str(r.path) for r in data.pairs.records]


def _pairs_and_images(cfg, ctx: StageContext, factory) -> _Data:
    """The decodable images of the split, paired as the generator needs, decoded at its size."""
    splits = ctx.dataset(cfg.dataset)
    records = ctx.decodable(splits[cfg.split], f"images of split '{cfg.split}'")
    pairs = make_pairs(factory.pairing, records, source_camera=cfg.source_camera,
                       target_camera=cfg.target_camera, targets_per_source=cfg.targets_per_source,
                       max_pairs_per_identity=cfg.max_pairs_per_identity, seed=ctx.seed,
                       source=f"split '{cfg.split}' of dataset '{cfg.dataset}'",
                       closed_set=splits.kind == "closed_set")
    info = pairs.summary()
    cams = (f"camera {cfg.source_camera} -> {cfg.target_camera}, "
            if cfg.source_camera is not None else "")
    ctx.echo(f"generator '{cfg.generator['type']}': {cams}{info['pairs']:,} {factory.pairing} pairs over "
             f"{info['images']:,} images")
    images = load_images([str(r.path) for r in pairs.records], tuple(cfg.image_size),
                         progress=cfg.verbose > 0)
    return _Data(pairs, images)


def _masks(cfg, ctx: StageContext, data: _Data) -> tuple[np.ndarray, dict]:
    """Person masks of every image (computed once, cached in the stage folder)."""
    paths = _paths(data)
    with ctx.registry.using("masker", cfg.masker) as masker:
        masks, cached = cached_masks(ctx.stage_dir, cfg.masker, masker, paths, tuple(cfg.image_size),
                                     images=data.images, progress=cfg.verbose > 0)
    coverage = float((masks > 127).mean())
    ctx.echo(f"person masks ({cfg.masker['type']}{', from cache' if cached else ''}): "
             f"{100 * coverage:.1f}% of pixels are person")
    if coverage == 0.0:
        raise DatasetError(f"the masker '{cfg.masker['type']}' found no person pixels in "
                           f"{len(paths)} images; check the masker and its threshold")
    return masks, {"masker": cfg.masker, "cached": cached, "person_fraction": round(coverage, 4)}


def _apply_semantic_filter(cfg, ctx: StageContext, data: _Data, scorer) -> None:
    """Score the real images with the semantic filter (cached): with ``semantic_control`` the
    generator trains on the accepted ones only; ``real_no_face`` (1 = rejected) is passed to
    the training batches either way (guided losses read it)."""
    h, w = cfg.image_size
    paths = _paths(data)
    native = cfg.filter_resolution == "native"
    scores, cached = cached_scores(ctx.stage_dir, cfg.semantic_filter, scorer, paths,
                                   None if native else data.images)
    accepted = scores >= cfg.min_score
    data.semantic_info = {"filter": cfg.semantic_filter, "min_score": cfg.min_score, "cached": cached,
                          "resolution": cfg.filter_resolution,
                          "real_images": len(paths), "accepted": int(accepted.sum())}
    ctx.echo(f"semantic filter '{cfg.semantic_filter['type']}': accepts {int(accepted.sum()):,} of "
             f"{len(paths):,} real images ({'at their native sizes' if native else f'at {h}x{w}'})"
             f"{' (cached)' if cached else ''}")
    if cfg.semantic_control:
        if not accepted.any():
            raise DatasetError(
                f"the semantic filter '{cfg.semantic_filter['type']}' accepted none of the "
                f"{len(paths):,} real images (min_score {cfg.min_score}); lower min_score or the "
                "filter's threshold, or turn semantic_control off")
        data.pairs = data.pairs.keep_sources(accepted)
        ctx.echo(f"semantic control: the generator trains on the {int(accepted.sum()):,} accepted "
                 f"images ({data.pairs.summary()['pairs']:,} pairs)")
    data.extras["real_no_face"] = (~accepted).astype(np.float32)


def _fit_per_identity(cfg, ctx: StageContext, factory, data: _Data, scorer,
                      init_weights) -> tuple[dict[str, str], dict[str, dict]]:
    """One generator per wanted identity (``generators/<pid>.keras``; a finished one is kept).
    Returns ``({pid: file relative to the run folder}, {pid: training figures})``."""
    pids = sorted({r.pid for r in data.pairs.records})
    if cfg.identities == "people":
        wanted, missing = [p for p in pids if p != 0], []
    else:
        wanted = [p for p in pids if cfg.identities is None or p in set(cfg.identities)]
        missing = sorted(set(cfg.identities or []) - set(pids))
    if missing:
        raise DatasetError(f"identities {missing} have no training images in split "
                           f"'{cfg.split}' of dataset '{cfg.dataset}'")
    generators, fit = {}, {}
    pid_of = np.array([r.pid for r in data.pairs.records])
    for n, pid in enumerate(wanted, 1):
        sub = data.pairs.keep_sources(pid_of == pid)
        out = ctx.stage_dir / "generators" / f"{pid:04d}.keras"
        generators[str(pid)] = str(out.relative_to(ctx.run_dir))
        if out.exists():
            ctx.echo(f"[{n}/{len(wanted)}] identity {pid}: done before")
            continue
        ctx.echo(f"[{n}/{len(wanted)}] identity {pid}: {len(sub)} images")
        keras.utils.set_random_seed(ctx.seed + pid)
        fit[str(pid)] = _fit(cfg, ctx, factory, sub, data.images, data.masks, data.extras, scorer,
                             init_weights, ctx.stage_dir / "checkpoints" / f"{pid:04d}", out,
                             ctx.tensorboard_dir / f"identity_{pid:04d}")
    return generators, fit


def _summary(cfg, ctx: StageContext, factory, data: _Data, generators: dict | None, fit: dict,
             load_seconds: float) -> dict:
    """The stage summary: a :class:`GeneratorOutput` (what augment and evaluate read) plus the
    training figures the report shows."""
    single = str((ctx.stage_dir / GENERATOR_FILE).relative_to(ctx.run_dir))
    summary = GeneratorOutput(
        model=single if generators is None else None, generators=generators, generator=cfg.generator,
        pairing=factory.pairing, generation_needs=sorted(factory.generation_needs),
        image_size=tuple(cfg.image_size), source_camera=cfg.source_camera,
        target_camera=cfg.target_camera, dataset=cfg.dataset, split=cfg.split,
        masker=cfg.masker).dump()
    summary.update({
        "pairs": data.pairs.summary(),
        "masks": data.mask_info,
        "semantic_filter": data.semantic_info,
        "poses": data.pose_info,
        "epochs": cfg.epochs,
        "init_from": cfg.init_from,
        "load_seconds": round(load_seconds, 2),
    })
    if generators is not None:  # one generator per identity: their files and training figures
        summary.update(per_identity={
            pid: {k: v for k, v in f.items() if k != "history"} for pid, f in fit.items()})
    else:
        summary.update({k: v for k, v in fit.items() if k != "history"})
    return summary


def _init_weights(cfg, ctx: StageContext, factory) -> list | None:
    """The weights of the ``init_from`` stage's generator (G pre-trained on all images), or None."""
    if not cfg.init_from:
        return None
    out = ctx.output_of(cfg.init_from, GeneratorOutput)
    if not out.model:
        raise UserError(f"stage '{cfg.init_from}' has no single generator to start from; init_from "
                        "needs a train_generator stage without per_identity")
    return factory.load(str(ctx.run_dir / out.model)).get_weights()


def _fit(cfg, ctx: StageContext, factory, pairs, images, masks, extras, scorer, init_weights,
         ckpt_dir, out_path, tb_dir, poses=None) -> dict:
    """Train one generator on ``pairs`` (checkpoints in ``ckpt_dir``, resumed), save it to
    ``out_path``; returns ``{"history", "final", "steps_per_epoch", "resumed_from_epoch",
    "steps_per_second"}``."""
    strategy = ctx.strategy
    data, batch, steps = _gan_input(cfg, ctx, factory, pairs, images, masks, extras, poses)
    gan = _build_gan(cfg, ctx, factory, steps, init_weights, scorer)
    initial_epoch = restore_latest(gan, ckpt_dir, strategy)
    if initial_epoch:
        ctx.echo(f"resuming from the checkpoint of epoch {initial_epoch}")
    h, w = cfg.image_size
    ctx.echo(f"training {steps} steps/epoch x {cfg.epochs} epochs, global batch {batch} on "
             f"{strategy.num_replicas_in_sync} replica(s), {h}x{w}")
    callbacks = _callbacks(cfg, ctx, data, gan, ckpt_dir, tb_dir)

    def dataset_fn(input_context, epoch):
        ds = data.dataset_fn(input_context, epoch)
        return ds.repeat() if steps > data.steps_per_epoch else ds

    t1 = time.time()
    history = loop.train(gan, dataset_fn, strategy=strategy, epochs=cfg.epochs,
                         steps_per_epoch=steps, initial_epoch=initial_epoch, callbacks=callbacks,
                         verbose=cfg.verbose if ctx.is_chief else 0,
                         jit_compile=ctx.jit_compile and scorer is None)
    seconds = time.time() - t1
    done_steps = max(cfg.epochs - initial_epoch, 0) * steps
    if ctx.is_chief:
        with io.atomic_path(out_path) as tmp:
            gan.save(tmp)
    return {"history": history, "steps_per_epoch": steps, "resumed_from_epoch": initial_epoch,
            "steps_per_second": round(done_steps / seconds, 3) if done_steps and seconds > 0 else None,
            "final": {k: float(v[-1]) for k, v in (history or {}).items() if v}}


def _gan_input(cfg, ctx: StageContext, factory, pairs, images, masks, extras,
               poses) -> tuple[GANInput, int, int]:
    """The training stream of ``pairs``; returns ``(input, global batch, steps per epoch)``. One
    identity with fewer pairs than a batch gets a smaller batch (a multiple of the replicas)."""
    replicas = ctx.strategy.num_replicas_in_sync
    batch = cfg.batch_size
    if cfg.per_identity and len(pairs) < batch:  # few images of one identity: a smaller batch
        batch = max(replicas, len(pairs) // replicas * replicas)
    data = GANInput(pairs, images, masks, needs=factory.needs, global_batch_size=batch,
                    seed=ctx.seed, flip=cfg.flip, num_replicas=replicas, extras=extras, poses=poses)
    steps = cfg.steps_per_epoch or data.steps_per_epoch
    if steps > data.steps_per_epoch:
        ctx.echo(f"note: steps_per_epoch {steps} is more than one pass over the pairs "
                 f"({data.steps_per_epoch}); batches repeat within an epoch")
    return data, batch, steps


def _build_gan(cfg, ctx: StageContext, factory, steps: int, init_weights, scorer):
    """The GAN built and compiled in the strategy's scope (from ``init_weights`` if given), with
    the semantic filter of guided training when it takes one."""
    with ctx.strategy.scope():
        gan = factory.build(tuple(cfg.image_size))
        if init_weights is not None:
            gan.set_weights(init_weights)
        gan.compile(**factory.optimizers(steps_per_epoch=steps, epochs=cfg.epochs))
    if scorer is not None and callable(getattr(gan, "set_semantic_filter", None)):
        gan.set_semantic_filter(scorer, cfg.min_score)  # Delta(G(z)) of guided training
    return gan


def _callbacks(cfg, ctx: StageContext, data: GANInput, gan, ckpt_dir, tb_dir) -> list:
    """Checkpoints, scalars and the sample grid."""
    return [
        EpochCheckpoint(ckpt_dir, max_to_keep=cfg.keep_checkpoints, label=ctx.stage_name),
        ScalarLogger(tb_dir, every=cfg.log_every, is_chief=ctx.is_chief, prefix="gan"),
        GeneratorSamples(tb_dir, _sample_examples(data, gan, cfg.samples, ctx.seed), every=cfg.sample_every,
                         name="gan/samples", is_chief=ctx.is_chief),
    ]


def _sample_examples(data, gan, n: int, seed: int) -> dict:
    """Fixed examples for the sample grid; unconditional generators also get fixed noise."""
    examples = {k: v for k, v in data.fixed_examples(n, seed=seed).items() if np.ndim(v) == 4}
    z_dim = getattr(gan, "z_dim", None)
    if z_dim:
        examples["noise"] = np.random.default_rng(seed).uniform(
            -1, 1, (len(examples["source"]), int(z_dim))).astype(np.float32)
    return examples


def _poses(cfg, ctx: StageContext, pairs, paths: list[str], images: np.ndarray):
    """Keypoints of every image (estimated once, cached in the stage folder); pairs whose target
    has no pose are dropped. Returns ``(pairs, keypoints [N, 18, 3], summary)``."""

    with ctx.registry.using("pose", cfg.pose) as estimator:
        kp, cached = cached_keypoints(ctx.stage_dir, cfg.pose, estimator, paths, tuple(cfg.image_size),
                                      images=images)
    found = pose_found(kp, cfg.min_keypoints)
    keep = found[pairs.pairs[:, 1]]
    before = len(pairs)
    pairs = type(pairs)(pairs.pairing, pairs.records, pairs.pairs[keep])
    ctx.echo(f"poses ({cfg.pose['type']}{', from cache' if cached else ''}): found in {int(found.sum()):,} "
             f"of {len(paths):,} images (at least {cfg.min_keypoints} keypoints); {before - len(pairs):,} "
             f"of {before:,} pairs dropped for a target without a pose")
    if not len(pairs):
        raise DatasetError(f"the pose estimator '{cfg.pose['type']}' found a pose in {int(found.sum())} of "
                           f"{len(paths)} images, which leaves no training pair; lower min_keypoints "
                           f"({cfg.min_keypoints}) or check the estimator")
    info = {"estimator": cfg.pose, "cached": cached, "images": len(paths), "found": int(found.sum()),
            "pairs_dropped": before - len(pairs), "min_keypoints": cfg.min_keypoints}
    return pairs, kp, info
