"""The heavy half of the ``train_reid`` stage (imports TensorFlow; loaded only when it runs)."""
from __future__ import annotations

import logging
import time

import numpy as np

from keras_reid import io
from keras_reid.data.records import Record, relabel
from keras_reid.errors import DatasetError
from keras_reid.stages.base import StageContext

log = logging.getLogger("keras_reid")


def select_records(records: list[Record], cameras: list[int] | None, closed_set: bool) -> list[Record]:
    """Training records: junk and (for retrieval data) distractors dropped, optional camera subset."""
    out = [r for r in records if r.pid >= (0 if closed_set else 1)]
    if cameras:
        wanted = set(cameras)
        out = [r for r in out if r.camid in wanted]
    return out


def train(cfg, ctx: StageContext) -> dict:
    """Train the model the stage config describes; returns the stage summary."""
    import keras

    from keras_reid.data.pipeline import ReIDInput, scan_images
    from keras_reid.training.callbacks import BatchImageLogger, ScalarLogger
    from keras_reid.training.checkpoint import EpochCheckpoint, restore_latest
    from keras_reid.training.loop import train as train_loop
    from keras_reid.training.optim import make_optimizer, make_schedule
    from keras_reid.training.reid_model import ReIDModel

    splits = ctx.dataset(cfg.dataset)
    closed = splits.kind == "closed_set"
    records = select_records(splits[cfg.split], cfg.cameras, closed)
    if not records:
        cams = sorted({r.camid for r in splits[cfg.split]})
        raise DatasetError(
            f"stage '{ctx.stage_name}': split '{cfg.split}' of dataset '{cfg.dataset}' has no usable "
            f"images{' for cameras ' + str(cfg.cameras) if cfg.cameras else ''} (cameras present: "
            f"{cams}); check the split name, the cameras and the dataset root")
    good, bad = scan_images(records)
    if bad:
        ctx.echo(f"warning: skipped {len(bad)} of {len(records)} images that could not be decoded "
                 f"(first: {bad[0]})")
    if not good:
        raise DatasetError(f"stage '{ctx.stage_name}': none of the {len(records)} images of split "
                           f"'{cfg.split}' could be decoded; check the dataset files")
    labels, mapping = relabel(good)
    num_classes = len(mapping)
    keras.utils.set_random_seed(ctx.seed)

    strategy = ctx.strategy
    replicas = strategy.num_replicas_in_sync
    k = cfg.instances_per_id
    h, w = cfg.image_size
    inp = ReIDInput(
        good, labels, image_size=(h, w), global_batch_size=cfg.batch_size, sampler=cfg.sampler,
        p=cfg.batch_size // k if cfg.sampler == "pk" else None, k=k if cfg.sampler == "pk" else None,
        transforms=list(cfg.augment), seed=ctx.seed, num_replicas=replicas)
    steps = inp.steps_per_epoch
    ctx.echo(f"training on {len(good)} images of {num_classes} identities "
             f"({len({r.camid for r in good})} cameras), {steps} steps/epoch x {cfg.epochs} epochs, "
             f"global batch {cfg.batch_size} on {replicas} replica(s)")

    with strategy.scope():
        backbone = ctx.registry.create("backbone", cfg.backbone)
        net = backbone.build((h, w, 3), num_classes)
        loss = ctx.registry.create("loss", cfg.loss)
        model = ReIDModel(net, loss)
        schedule = make_schedule(cfg.schedule, steps_per_epoch=steps, base_lr=cfg.optimizer.lr,
                                 epochs=cfg.epochs)
        model.compile(optimizer=make_optimizer(cfg.optimizer, schedule))
        model(np.zeros((1, h, w, 3), np.float32), training=False)

    ckpt_dir = ctx.stage_dir / "checkpoints"
    initial_epoch = restore_latest(model, ckpt_dir, strategy)
    if initial_epoch:
        ctx.echo(f"resuming from the checkpoint of epoch {initial_epoch}")

    def sample_batch():
        images, _ = next(iter(inp.dataset(0).take(1)))
        return np.asarray(images).astype(np.uint8)

    tb = ctx.tensorboard_dir
    callbacks = [
        EpochCheckpoint(ckpt_dir, max_to_keep=cfg.keep_checkpoints),
        ScalarLogger(tb, every=cfg.log_every, is_chief=ctx.is_chief),
    ]
    if initial_epoch == 0:
        callbacks.append(BatchImageLogger(tb, sample_batch, name="train/input_batch",
                                          is_chief=ctx.is_chief))
    t0 = time.time()
    history = train_loop(model, inp.dataset_fn, strategy=strategy, epochs=cfg.epochs,
                         steps_per_epoch=steps, initial_epoch=initial_epoch, callbacks=callbacks,
                         verbose=cfg.verbose if ctx.is_chief else 0, jit_compile=ctx.jit_compile)
    seconds = time.time() - t0
    recalibrated = 0
    if cfg.bn_recalibration_batches:
        from keras_reid.training.batchnorm import recalibrate_batchnorm

        # the augmented training stream: the statistics the features were trained under
        # (clean images give other statistics and worse retrieval; see training/batchnorm.py)
        recalibrated = recalibrate_batchnorm(
            model, inp.dataset(cfg.epochs).repeat().take(cfg.bn_recalibration_batches))
        ctx.echo(f"BatchNorm statistics re-estimated over {recalibrated} training batches")
    trained = max(cfg.epochs - initial_epoch, 0) * steps * cfg.batch_size
    model_path = ctx.stage_dir / "model.keras"
    if ctx.is_chief:
        model.export_inference_model(model_path)
        io.write_json(ctx.stage_dir / "labels.json", {str(pid): label for pid, label in mapping.items()})
        if closed:
            model.export_inference_model(ctx.stage_dir / "classifier.keras", output="logits")
    final = {k: float(v[-1]) for k, v in (history or {}).items() if v}
    summary = {
        "model": str(model_path.relative_to(ctx.run_dir)),
        "image_size": [h, w],
        "num_classes": num_classes,
        "num_images": len(good),
        "skipped_images": len(bad),
        "epochs": cfg.epochs,
        "resumed_from_epoch": initial_epoch,
        "bn_recalibration_batches": recalibrated,
        "images_per_second": round(trained / seconds, 2) if seconds > 0 and trained else None,
        "final": final,
    }
    if closed:
        summary["classifier"] = str((ctx.stage_dir / "classifier.keras").relative_to(ctx.run_dir))
    return summary

