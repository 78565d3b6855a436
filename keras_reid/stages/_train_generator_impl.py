"""The heavy half of the ``train_generator`` stage (imports TensorFlow; loaded only when it runs)."""
from __future__ import annotations

import time

import numpy as np

from keras_reid import io
from keras_reid.errors import DatasetError
from keras_reid.stages.base import StageContext
from keras_reid.stages.train_generator import MASK_KEYS, generator_factory

GENERATOR_FILE = "generator.keras"


def train(cfg, ctx: StageContext) -> dict:
    """Pair, mask, train and save the generator the stage config describes; returns the summary."""
    import keras

    from keras_reid.data.gan_input import GANInput, load_images
    from keras_reid.data.gan_pairs import make_pairs
    from keras_reid.data.masks import cached_masks
    from keras_reid.data.pipeline import scan_images
    from keras_reid.training.callbacks import GeneratorSamples, ScalarLogger
    from keras_reid.training.checkpoint import EpochCheckpoint, restore_latest
    from keras_reid.training.loop import train as train_loop

    factory = generator_factory(cfg.generator, ctx.registry)
    splits = ctx.dataset(cfg.dataset)
    records, bad = scan_images(splits[cfg.split])
    if bad:
        ctx.echo(f"warning: skipped {len(bad)} images of split '{cfg.split}' that could not be decoded "
                 f"(first: {bad[0]})")
    pairs = make_pairs(factory.pairing, records, source_camera=cfg.source_camera,
                       target_camera=cfg.target_camera, targets_per_source=cfg.targets_per_source,
                       max_pairs_per_identity=cfg.max_pairs_per_identity, seed=ctx.seed,
                       source=f"split '{cfg.split}' of dataset '{cfg.dataset}'")
    info = pairs.summary()
    cams = (f"camera {cfg.source_camera} -> {cfg.target_camera}, "
            if cfg.source_camera is not None else "")
    ctx.echo(f"generator '{cfg.generator['type']}': {cams}{info['pairs']:,} {factory.pairing} pairs over "
             f"{info['images']:,} images")
    h, w = cfg.image_size
    paths = [str(r.path) for r in pairs.records]
    t0 = time.time()
    images = load_images(paths, (h, w), progress=cfg.verbose > 0)
    masks = None
    mask_source = None
    if set(factory.needs) & set(MASK_KEYS):
        masker = ctx.registry.create("masker", cfg.masker)
        try:
            masks, cached = cached_masks(ctx.stage_dir, cfg.masker, masker, paths, (h, w),
                                         images=images, progress=cfg.verbose > 0)
        finally:
            close = getattr(masker, "close", None)
            if callable(close):
                close()
        coverage = float((masks > 127).mean())
        mask_source = {"masker": cfg.masker, "cached": cached, "person_fraction": round(coverage, 4)}
        ctx.echo(f"person masks ({cfg.masker['type']}{', from cache' if cached else ''}): "
                 f"{100 * coverage:.1f}% of pixels are person")
        if coverage == 0.0:
            raise DatasetError(f"the masker '{cfg.masker['type']}' found no person pixels in "
                               f"{len(paths)} images; check the masker and its threshold")
    extras: dict = {}
    semantic = None
    scorer = None
    if cfg.semantic_filter is not None:
        scorer = ctx.registry.create("filter", cfg.semantic_filter)
        scores, cached = cached_scores(ctx.stage_dir, cfg.semantic_filter, scorer, paths, images)
        accepted = scores >= cfg.min_score
        semantic = {"filter": cfg.semantic_filter, "min_score": cfg.min_score, "cached": cached,
                    "real_images": len(paths), "accepted": int(accepted.sum())}
        ctx.echo(f"semantic filter '{cfg.semantic_filter['type']}': accepts {int(accepted.sum()):,} of "
                 f"{len(paths):,} real images{' (cached)' if cached else ''}")
        if cfg.semantic_control:
            if not accepted.any():
                raise DatasetError(
                    f"the semantic filter '{cfg.semantic_filter['type']}' accepted none of the "
                    f"{len(paths):,} real images (min_score {cfg.min_score}); lower min_score or the "
                    "filter's threshold, or turn semantic_control off")
            pairs = pairs.keep_sources(accepted)
            info = pairs.summary()
            ctx.echo(f"semantic control: the generator trains on the {int(accepted.sum()):,} accepted "
                     f"images ({info['pairs']:,} pairs)")
        extras["real_no_face"] = (~accepted).astype(np.float32)
    load_seconds = time.time() - t0

    keras.utils.set_random_seed(ctx.seed)
    strategy = ctx.strategy
    replicas = strategy.num_replicas_in_sync
    data = GANInput(pairs, images, masks, needs=factory.needs, global_batch_size=cfg.batch_size,
                    seed=ctx.seed, flip=cfg.flip, num_replicas=replicas, extras=extras)
    steps = cfg.steps_per_epoch or data.steps_per_epoch
    if steps > data.steps_per_epoch:
        ctx.echo(f"note: steps_per_epoch {steps} is more than one pass over the pairs "
                 f"({data.steps_per_epoch}); batches repeat within an epoch")
    with strategy.scope():
        gan = factory.build((h, w))
        optimizers = factory.optimizers(steps_per_epoch=steps, epochs=cfg.epochs)
        gan.compile(**optimizers)

    if scorer is not None and callable(getattr(gan, "set_semantic_filter", None)):
        gan.set_semantic_filter(scorer, cfg.min_score)  # Delta(G(z)) of guided training
    ckpt_dir = ctx.stage_dir / "checkpoints"
    initial_epoch = restore_latest(gan, ckpt_dir, strategy)
    if initial_epoch:
        ctx.echo(f"resuming from the checkpoint of epoch {initial_epoch}")
    ctx.echo(f"training {steps} steps/epoch x {cfg.epochs} epochs, global batch {cfg.batch_size} on "
             f"{replicas} replica(s), {h}x{w}")
    tb = ctx.tensorboard_dir
    callbacks = [
        EpochCheckpoint(ckpt_dir, max_to_keep=cfg.keep_checkpoints),
        ScalarLogger(tb, every=cfg.log_every, is_chief=ctx.is_chief),
        GeneratorSamples(tb, _sample_examples(data, gan, cfg.samples, ctx.seed), every=cfg.sample_every,
                         name="generator/samples", is_chief=ctx.is_chief),
    ]

    def dataset_fn(input_context, epoch):
        ds = data.dataset_fn(input_context, epoch)
        return ds.repeat() if steps > data.steps_per_epoch else ds

    t1 = time.time()
    try:
        history = train_loop(gan, dataset_fn, strategy=strategy, epochs=cfg.epochs,
                             steps_per_epoch=steps, initial_epoch=initial_epoch, callbacks=callbacks,
                             verbose=cfg.verbose if ctx.is_chief else 0,
                             jit_compile=ctx.jit_compile and scorer is None)
    finally:
        if scorer is not None and callable(getattr(scorer, "close", None)):
            scorer.close()
    seconds = time.time() - t1
    done_steps = max(cfg.epochs - initial_epoch, 0) * steps
    path = ctx.stage_dir / GENERATOR_FILE
    if ctx.is_chief:
        with io.atomic_path(path) as tmp:
            gan.save(tmp)
    summary = {
        "model": str(path.relative_to(ctx.run_dir)),
        "generator": cfg.generator,
        "pairing": factory.pairing,
        "generation_needs": sorted(factory.generation_needs),
        "image_size": [h, w],
        "source_camera": cfg.source_camera,
        "target_camera": cfg.target_camera,
        "dataset": cfg.dataset,
        "split": cfg.split,
        "masker": cfg.masker,
        "pairs": info,
        "masks": mask_source,
        "semantic_filter": semantic,
        "epochs": cfg.epochs,
        "steps_per_epoch": steps,
        "resumed_from_epoch": initial_epoch,
        "load_seconds": round(load_seconds, 2),
        "steps_per_second": round(done_steps / seconds, 3) if done_steps and seconds > 0 else None,
        "final": {k: float(v[-1]) for k, v in (history or {}).items() if v},
    }
    return summary



def _sample_examples(data, gan, n: int, seed: int) -> dict:
    """Fixed examples for the sample grid; unconditional generators also get fixed noise."""
    examples = {k: v for k, v in data.fixed_examples(n, seed=seed).items() if np.ndim(v) == 4}
    z_dim = getattr(gan, "z_dim", None)
    if z_dim:
        examples["noise"] = np.random.default_rng(seed).uniform(
            -1, 1, (len(examples["source"]), int(z_dim))).astype(np.float32)
    return examples


def cached_scores(cache_dir, spec: dict, scorer, paths: list[str], images: np.ndarray) -> tuple[np.ndarray, bool]:
    """Return ``(scores float32 [N], from_cache)`` of a semantic filter over the images, stored as
    ``scores-<hash>.json`` in ``cache_dir`` keyed by the filter spec and the paths."""
    import hashlib
    import json

    key = hashlib.sha256(json.dumps([spec, paths, list(images.shape[1:3])], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    path = cache_dir / f"scores-{key}.json"
    cached = io.read_json(path)
    if cached is not None and len(cached) == len(paths):
        return np.asarray(cached, np.float32), True
    scores = np.concatenate([np.asarray(scorer(images[i:i + 64]), np.float32)
                             for i in range(0, len(images), 64)]) if len(images) else np.zeros(0, np.float32)
    io.write_json(path, [round(float(v), 5) for v in scores])
    return scores, False
