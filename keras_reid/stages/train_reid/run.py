"""The body of the ``train_reid`` stage (imported when it runs; it imports TensorFlow)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_reid import io
from keras_reid.data import pipeline  # ReIDInput through the module: tests record what it gets
from keras_reid.data.generated import generated_records
from keras_reid.data.masks import cached_scores
from keras_reid.data.records import Record, relabel, select_records, subset
from keras_reid.deploy import CONVERTED_FILE, check_parity, converter
from keras_reid.errors import DatasetError, UserError
from keras_reid.inference import Preprocessing, load_keras_model, write_preprocessing
from keras_reid.stages.base import StageContext
from keras_reid.stages.evaluate.common import usable_records
from keras_reid.stages.outputs import ConvertedOutput, HoldoutOutput, ReIDOutput
from keras_reid.stages.train_reid.retrieval_curve import RetrievalCurve
from keras_reid.training import loop  # loop.train through the module: tests spy on it
from keras_reid.training.batchnorm import batchnorm_layers, recalibrate_batchnorm
from keras_reid.training.callbacks import BatchImageLogger, ScalarLogger
from keras_reid.training.checkpoint import EpochCheckpoint, restore_latest
from keras_reid.training.optim import make_optimizer, make_schedule
from keras_reid.training.reid_model import ReIDModel

log = logging.getLogger("keras_reid")


def withhold_per_class(records: list[Record], fraction: float, seed: int
                       ) -> tuple[list[Record], list[Record]]:
    """Split ``records`` into ``(kept, withheld)``: of each pid's n images, ``floor(fraction * n +
    0.5)`` (at most n - 1, so every class keeps a training image) drawn at random with ``seed``
    are withheld; both lists keep the input order."""
    by_pid: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        by_pid.setdefault(r.pid, []).append(i)
    rng = np.random.default_rng(seed)
    out: set[int] = set()
    for pid in sorted(by_pid):
        idx = by_pid[pid]
        k = min(int(np.floor(fraction * len(idx) + 0.5)), len(idx) - 1)
        if k > 0:
            out.update(idx[j] for j in rng.permutation(len(idx))[:k])
    return ([r for i, r in enumerate(records) if i not in out],
            [r for i, r in enumerate(records) if i in out])


HOLDOUT_FILE = "holdout.json"
"""``<train stage>/holdout.json``: the training images ``holdout_per_class`` withheld (path, pid,
camera), which the evaluate stage classifies."""


UNKNOWN_CLASS_PID = -100
"""Key of the extra class of a generated set with ``labels: unknown`` in ``labels.json``."""


@dataclass
class GeneratedImages:
    """A generated set ready for training: records, int labels and label-policy epsilons."""

    name: str
    policy: str
    records: list
    labels: np.ndarray
    epsilons: np.ndarray

    def describe(self) -> str:
        return f"{len(self.records)} from '{self.name}', labels {self.policy}"


def load_generated(g, ctx: StageContext, mapping: dict[int, int]) -> GeneratedImages:
    """Read one generated set and label it by its policy; identities the real images do not
    have get new classes (appended to ``mapping``, in place) unless the policy is lsro."""
    if g.stage is not None:
        ctx.output_of(g.stage)  # raises a clear error if the augment stage has not completed
        records, name = generated_records(ctx.stage_dir_of(g.stage)), g.stage
    else:
        records, name = [r for r in ctx.dataset(g.dataset)["train"] if r.pid > 0], g.dataset
    if not records:
        raise DatasetError(f"stage '{ctx.stage_name}': the generated set '{name}' has no images "
                           "(did a filter drop them all? see its augment summary)")
    records = ctx.decodable(records, f"generated images of '{name}'")
    records = subset(records, g.max_images, ctx.seed)
    if g.labels == "lsro":
        labels = np.zeros(len(records), np.int64)
        eps = np.ones(len(records), np.float32)
    elif g.labels in ("unknown", "fixed"):
        if g.labels == "unknown":
            mapping.setdefault(UNKNOWN_CLASS_PID, len(mapping))
            pid = UNKNOWN_CLASS_PID
        else:
            pid = g.fixed_pid
            if pid not in mapping:
                raise DatasetError(f"stage '{ctx.stage_name}': fixed_pid {pid} of the generated set "
                                   f"'{name}' is not an identity of the real training images")
        labels = np.full(len(records), mapping[pid], np.int64)
        eps = np.zeros(len(records), np.float32)
    else:
        for pid in sorted({r.pid for r in records} - set(mapping)):
            mapping[pid] = len(mapping)
        labels = np.array([mapping[r.pid] for r in records], np.int64)
        eps = np.full(len(records), g.epsilon if g.labels == "smooth" else 0.0, np.float32)
    return GeneratedImages(name, g.labels, records, labels, eps)


class MixedInput:
    """Real and generated training input in fixed shares of every batch: each replica's batch is
    its real part (PK or random sampler) followed by its generated part (random sampler; the
    generated stream restarts with a new order whenever it runs out)."""

    def __init__(self, real, generated) -> None:
        self.real = real
        self.generated = generated

    @property
    def steps_per_epoch(self) -> int:
        return self.real.steps_per_epoch

    def dataset_fn(self, input_context, epoch: int):
        real = self.real.dataset_fn(input_context, epoch)
        rounds = -(-self.real.steps_per_epoch // max(1, self.generated.steps_per_epoch))
        fake = self.generated.dataset_fn(input_context, epoch * 1000)
        for j in range(1, rounds):
            fake = fake.concatenate(self.generated.dataset_fn(input_context, epoch * 1000 + j))
        return tf.data.Dataset.zip((real, fake)).map(
            lambda a, b: (tf.concat([a[0], b[0]], 0), tf.concat([a[1], b[1]], 0)))

    def dataset(self, epoch: int):
        ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=1)
        return self.dataset_fn(ctx, epoch)


def train_phases(run_loop, trunk: list, freeze_epochs: int, initial_epoch: int, epochs: int,
                 callbacks: list, echo=print) -> dict[str, list[float]]:
    """Two-step fine-tuning: ``run_loop(start, end, callbacks)`` trains epochs [start, end) with
    the ``trunk`` layers frozen (``trainable = False``: no updates, BatchNorm in inference mode)
    up to ``freeze_epochs``, then with everything trainable up to ``epochs``. A resumed run
    (``initial_epoch``) skips what it has done. Callbacks that only act at the start of training
    (``BatchImageLogger``) take part in the first phase only. Returns the joined history
    ``{name: [epoch means]}``; the trunk is trainable again afterwards."""
    phases = []
    if trunk and initial_epoch < freeze_epochs:
        phases.append((initial_epoch, freeze_epochs, True))
    phases.append((max(initial_epoch, freeze_epochs if trunk else 0), epochs, False))
    history: dict[str, list[float]] = {}
    cbs = list(callbacks)
    try:
        for start, end, frozen in phases:
            if start >= end:
                continue
            for layer in trunk:
                layer.trainable = not frozen
            if trunk:
                echo(f"epochs {start + 1}-{end}: " + ("the backbone's trunk frozen, the new layers train"
                                                      if frozen else "every layer trains"))
            for k, v in (run_loop(start, end, cbs) or {}).items():
                history.setdefault(k, []).extend(v)
            cbs = [c for c in cbs if not isinstance(c, BatchImageLogger)]
    finally:
        for layer in trunk:
            layer.trainable = True
    return history


def _filter_real(cfg, ctx: StageContext, records: list[Record], labels: np.ndarray):
    """The real training images ``cfg.real_filter`` accepts, each scored at its native size (cached
    in the stage folder). Returns ``(records, labels, summary)``; the labels keep the class indices
    of the whole split. Raises DatasetError when the filter accepts none."""
    spec = cfg.real_filter
    with ctx.registry.using("filter", spec) as scorer:
        scores, cached = cached_scores(ctx.stage_dir, spec, scorer, [str(r.path) for r in records], None)
    keep = scores >= cfg.real_min_score
    if not keep.any():
        raise DatasetError(f"stage '{ctx.stage_name}': the real_filter '{spec['type']}' accepted none of "
                           f"the {len(records):,} real training images (real_min_score "
                           f"{cfg.real_min_score}); lower real_min_score or the filter's threshold, or "
                           "remove real_filter")
    pids = {r.pid for r in records}
    kept = [r for r, k in zip(records, keep) if k]
    emptied = sorted(pids - {r.pid for r in kept})
    ctx.echo(f"real_filter '{spec['type']}': keeps {int(keep.sum()):,} of {len(records):,} real images "
             f"(scored at their native sizes{', cached' if cached else ''})"
             + (f"; no image left of classes {emptied}" if emptied else ""))
    summary = {"filter": spec, "min_score": cfg.real_min_score, "real_images": len(records),
               "accepted": int(keep.sum()), "emptied_classes": emptied}
    return kept, np.asarray(labels)[keep], summary


def write_converted(cfg, ctx: StageContext, backbone, model, records: list[Record],
                    classifier: bool) -> dict | None:
    """The backbone's deploy form (its ``convert``) of the trained ``model``'s inference model
    (and of its classifier, ``classifier``: closed-set data or withheld images), each checked on
    up to 16 training images to give the trained model's outputs (``keras_reid.deploy.
    check_parity``, again after reloading the saved file) and saved as ``model_converted.keras``
    (``classifier_converted.keras``) with its preprocessing record. Returns the summary part
    ``{"model", "classifier"?, "max_abs_diff", "params", "params_trained", "parity_images"}``,
    None when the backbone has no deploy form. Raises ConversionError when outputs differ."""
    convert = converter(backbone)
    if convert is None:
        return None
    h, w = cfg.image_size
    images = np.asarray(next(iter(pipeline.eval_dataset(records[:16], image_size=(h, w), batch_size=16))),
                        np.float32)
    kind = cfg.backbone.get("type")
    out: dict = {}
    diffs = []
    for output, file in (("features", CONVERTED_FILE),) + ((("logits", "classifier_converted.keras"),)
                                                            if classifier else ()):
        trained = model.inference_model(output)
        what = f"stage '{ctx.stage_name}' ({kind}, {output})"
        compact = convert(trained)
        check_parity(trained, compact, images, what)
        path = ctx.stage_dir / file
        with io.atomic_path(path, suffix=".keras") as tmp:
            compact.save(tmp)
            diffs.append(check_parity(trained, load_keras_model(tmp, dict(cfg.backbone), ctx.registry),
                                      images, what + ", saved and loaded again"))
        write_preprocessing(path, Preprocessing(
            image_size=(h, w), feature_dim=int(compact.outputs[0].shape[-1]),
            backbone=dict(cfg.backbone), stage=ctx.stage_name, converted=True))
        out["model" if output == "features" else "classifier"] = str(path.relative_to(ctx.run_dir))
        if output == "features":
            out["params"], out["params_trained"] = int(compact.count_params()), int(trained.count_params())
    out.update(max_abs_diff=max(diffs), parity_images=int(len(images)))
    files = ", ".join(Path(out[k]).name for k in ("model", "classifier") if k in out)
    ctx.echo(f"converted to the deploy form of {kind}: {files} "
             f"({out['params']:,} parameters, trained form {out['params_trained']:,}; largest output "
             f"difference {out['max_abs_diff']:.2g} on {len(images)} training images)")
    return out


@dataclass
class _TrainingSet:
    """What train_reid trains on: the real records and labels (after the holdout and the real
    filter), the generated sets, the identity -> class mapping and what was set aside."""

    good: list[Record]
    labels: np.ndarray
    mapping: dict[int, int]
    real_classes: int
    generated: list
    closed: bool
    skipped: int
    withheld: list[Record]
    real_filter: dict | None


@dataclass
class _Fitted:
    """What training did: the epoch it resumed from, the history, the seconds it took, the
    BatchNorm recalibration batches, the retrieval curve and the converted deploy form."""

    initial_epoch: int
    history: dict[str, list[float]]
    seconds: float
    recalibrated: int = 0
    curve: Any = None
    converted: dict | None = None


def train(cfg, ctx: StageContext) -> dict:
    """Train the model the stage config describes; returns the stage summary."""
    data = _training_set(cfg, ctx)
    keras.utils.set_random_seed(ctx.seed)
    inp = _training_input(cfg, ctx, data)
    _echo_training_set(cfg, ctx, data, inp.steps_per_epoch)
    backbone, net, model = _build_model(cfg, ctx, inp.steps_per_epoch, len(data.mapping))
    initial_epoch = _resume(ctx, model)
    callbacks, curve = _callbacks(cfg, ctx, inp, initial_epoch)
    fitted = _fit(cfg, ctx, backbone, net, model, inp, callbacks, initial_epoch)
    fitted.curve = curve
    fitted.recalibrated = _recalibrate(cfg, ctx, model, inp)
    model_path = ctx.stage_dir / "model.keras"
    if ctx.is_chief:
        _save(cfg, ctx, model, model_path, data)
    if ctx.is_chief and cfg.convert is not False:
        fitted.converted = write_converted(cfg, ctx, backbone, model, data.good,
                                           classifier=bool(data.closed or data.withheld))
    return _summary(cfg, ctx, data, model_path, inp.steps_per_epoch, fitted)


def _resume(ctx: StageContext, model) -> int:
    """Restores the latest checkpoint into ``model``; returns its epoch (0: a fresh start)."""
    initial_epoch = restore_latest(model, ctx.stage_dir / "checkpoints", ctx.strategy)
    if initial_epoch:
        ctx.echo(f"resuming from the checkpoint of epoch {initial_epoch}")
    return initial_epoch


def _fit(cfg, ctx: StageContext, backbone, net, model, inp, callbacks: list,
         initial_epoch: int) -> _Fitted:
    """The core loop over the remaining epochs, in two phases with ``freeze_backbone_epochs``
    (the trunk frozen first). Raises UserError when the backbone names no trunk to freeze."""
    trunk = list(backbone.trunk_layers(net)) if cfg.freeze_backbone_epochs else []
    if cfg.freeze_backbone_epochs and not trunk:
        raise UserError(f"stage '{ctx.stage_name}': freeze_backbone_epochs: backbone "
                        f"'{cfg.backbone['type']}' names no trunk layers to freeze; remove the option")
    t0 = time.time()
    history = train_phases(
        lambda start, end, cbs: loop.train(
            model, inp.dataset_fn, strategy=ctx.strategy, epochs=end,
            steps_per_epoch=inp.steps_per_epoch, initial_epoch=start, callbacks=cbs,
            verbose=cfg.verbose if ctx.is_chief else 0, jit_compile=ctx.jit_compile),
        trunk, cfg.freeze_backbone_epochs, initial_epoch, cfg.epochs, callbacks, echo=ctx.echo)
    return _Fitted(initial_epoch, history, time.time() - t0)


def _summary(cfg, ctx: StageContext, data: _TrainingSet, model_path: Path, steps: int,
             fitted: _Fitted) -> dict:
    """The stage summary: a :class:`ReIDOutput` (what evaluate and model loading read) plus the
    training figures the report shows; optional parts appear only when they exist."""
    trained = max(cfg.epochs - fitted.initial_epoch, 0) * steps * cfg.batch_size
    seconds = fitted.seconds
    optional: dict[str, Any] = {}
    if fitted.converted is not None:
        optional["converted"] = ConvertedOutput(**fitted.converted)
    if data.real_filter is not None:
        optional["real_filter"] = data.real_filter
    if fitted.curve is not None:
        optional["eval_history"] = fitted.curve.history or []
    if data.closed or data.withheld:
        optional["classifier"] = str((ctx.stage_dir / "classifier.keras").relative_to(ctx.run_dir))
    if data.withheld:
        optional["holdout"] = HoldoutOutput(
            fraction=cfg.holdout_per_class, images=len(data.withheld),
            file=str((ctx.stage_dir / HOLDOUT_FILE).relative_to(ctx.run_dir)))
    out = ReIDOutput(
        model=str(model_path.relative_to(ctx.run_dir)),
        image_size=tuple(cfg.image_size),
        num_classes=len(data.mapping),
        num_images=len(data.good) if cfg.real else 0,
        generated_images={g.name: len(g.records) for g in data.generated},
        skipped_images=data.skipped,
        epochs=cfg.epochs,
        frozen_backbone_epochs=cfg.freeze_backbone_epochs,
        resumed_from_epoch=fitted.initial_epoch,
        bn_recalibration_batches=fitted.recalibrated,
        images_per_second=round(trained / seconds, 2) if seconds > 0 and trained else None,
        final={k: float(v[-1]) for k, v in (fitted.history or {}).items() if v},
        **optional)
    return out.dump(only_set=True)


def _training_set(cfg, ctx: StageContext) -> _TrainingSet:
    """The usable real images (decodable, minus the holdout, through the real filter), their
    labels, and the generated sets labelled by their policies."""
    splits = ctx.dataset(cfg.dataset)
    closed = splits.kind == "closed_set"
    records = select_records(splits[cfg.split], cfg.cameras, closed)
    if not records:
        cams = sorted({r.camid for r in splits[cfg.split]})
        raise DatasetError(
            f"stage '{ctx.stage_name}': split '{cfg.split}' of dataset '{cfg.dataset}' has no usable "
            f"images{' for cameras ' + str(cfg.cameras) if cfg.cameras else ''} (cameras present: "
            f"{cams}); check the split name, the cameras and the dataset root")
    good = ctx.decodable(records, f"images of split '{cfg.split}'")
    withheld: list[Record] = []
    if cfg.holdout_per_class:
        good, withheld = withhold_per_class(good, cfg.holdout_per_class, ctx.seed)
        ctx.echo(f"withheld {len(withheld)} of {len(good) + len(withheld)} training images "
                 f"({cfg.holdout_per_class:.0%} of each identity) for the classification test")
    labels, mapping = relabel(good)
    mapping = dict(mapping)
    real_classes = len(mapping)
    real_filter = None
    if cfg.real_filter is not None:
        good, labels, real_filter = _filter_real(cfg, ctx, good, labels)
    generated = [load_generated(g, ctx, mapping) for g in cfg.generated]
    return _TrainingSet(good, labels, mapping, real_classes, generated, closed, len(records) - len(good),
                        withheld, real_filter)


def _training_input(cfg, ctx: StageContext, data: _TrainingSet):
    """The training stream: PK or random batches of the real images, the generated sets pooled
    with them, or (``generated_ratio``) a fixed share of every batch drawn from the generated."""
    generated, good, labels = data.generated, data.good, data.labels
    k = cfg.instances_per_id
    common = dict(image_size=tuple(cfg.image_size), transforms=list(cfg.augment), seed=ctx.seed,
                  num_replicas=ctx.strategy.num_replicas_in_sync, num_classes=len(data.mapping))

    def pk_input(records, labels_, eps, batch):
        return pipeline.ReIDInput(records, labels_, global_batch_size=batch, sampler=cfg.sampler,
                         p=batch // k if cfg.sampler == "pk" else None,
                         k=k if cfg.sampler == "pk" else None,
                         epsilons=eps if generated else None, **common)

    real_eps = np.zeros(len(good), np.float32)
    if not generated:
        return pk_input(good, labels, None, cfg.batch_size)
    gen_records = [r for g in generated for r in g.records]
    gen_labels = np.concatenate([g.labels for g in generated])
    gen_eps = np.concatenate([g.epsilons for g in generated])
    if not cfg.real:  # generated images only; the classes are still the real identities'
        return pk_input(gen_records, gen_labels, gen_eps, cfg.batch_size)
    if cfg.generated_ratio is None:
        return pk_input(good + gen_records, np.concatenate([labels, gen_labels]),
                        np.concatenate([real_eps, gen_eps]), cfg.batch_size)
    n_gen = round(cfg.batch_size * cfg.generated_ratio)
    real = pk_input(good, labels, real_eps, cfg.batch_size - n_gen)
    fake = pipeline.ReIDInput(gen_records, gen_labels, global_batch_size=n_gen, sampler="random",
                     epsilons=gen_eps, **{**common, "seed": ctx.seed + 1})
    return MixedInput(real, fake)


def _echo_training_set(cfg, ctx: StageContext, data: _TrainingSet, steps: int) -> None:
    generated, good = data.generated, data.good
    gen_total = sum(len(g.records) for g in generated)
    real_part = (f"{len(good)} images of {data.real_classes} identities "
                 f"({len({r.camid for r in good})} cameras)")
    gen_part = (f"{gen_total} generated images ({', '.join(g.describe() for g in generated)}"
                + (f"; {cfg.generated_ratio:.0%} of every batch" if cfg.generated_ratio else "") + ")")
    if not generated:
        what = real_part
    elif cfg.real:
        what = f"{real_part} + {gen_part}"
    else:
        what = (f"{gen_part} only (real: false; the classes are the {data.real_classes} identities "
                "of the real split)")
    ctx.echo(f"training on {what}, {steps} steps/epoch x {cfg.epochs} epochs, global batch "
             f"{cfg.batch_size} on {ctx.strategy.num_replicas_in_sync} replica(s)")


def _build_model(cfg, ctx: StageContext, steps: int, num_classes: int):
    """Backbone, network and compiled ReIDModel, built in the strategy's scope. Returns
    ``(backbone component, network, model)``."""
    h, w = cfg.image_size
    with ctx.strategy.scope():
        backbone = ctx.registry.create("backbone", cfg.backbone)
        configure = getattr(backbone, "configure_training", None)
        if callable(configure):  # e.g. CondenseNet's condensation schedule follows the run length
            note = configure(total_steps=steps * cfg.epochs)
            if note:
                ctx.echo(note)
        net = backbone.build((h, w, 3), num_classes)
        if cfg.sync_batchnorm and ctx.strategy.num_replicas_in_sync > 1:
            # global-batch statistics, as on one device: Keras' own synchronised BN (one-pass
            # E[x^2] - E[x]^2; error ~1e-5 at the mean/std <= 15 measured in ResNet50). The
            # two-pass keras_reid.layers.SyncBatchNormalization is not used here: two workers
            # trained with it end 1e-2 apart from one process (test_multi_worker_cli), which the
            # one-pass layers do not; see the issue 16 note.
            for layer in batchnorm_layers(net):
                layer.synchronized = True
        loss = ctx.registry.create("loss", cfg.loss)
        smoothing = getattr(getattr(loss, "config", None), "label_smoothing", 0.0)
        if smoothing and cfg.real and any(g.labels == "lsro" for g in cfg.generated):
            ctx.echo(f"note: the loss's label_smoothing {smoothing} smooths the real images' targets "
                     "too; LSRO (Zheng et al. 2017) keeps them one-hot: set loss.label_smoothing: 0")
        model = ReIDModel(net, loss)
        schedule = make_schedule(cfg.schedule, steps_per_epoch=steps, base_lr=cfg.optimizer.lr,
                                 epochs=cfg.epochs)
        model.compile(optimizer=make_optimizer(cfg.optimizer, schedule))
        model(np.zeros((1, h, w, 3), np.float32), training=False)
    return backbone, net, model


def _callbacks(cfg, ctx: StageContext, inp, initial_epoch: int) -> tuple[list, Any]:
    """Checkpoints, scalars, the first input batch as a picture (a fresh run only) and, with
    ``eval_every``, the retrieval curve. Returns ``(callbacks, curve or None)``."""
    def sample_batch():
        images, _ = next(iter(inp.dataset(0).take(1)))
        return np.asarray(images).astype(np.uint8)

    tb = ctx.tensorboard_dir
    callbacks = [
        EpochCheckpoint(ctx.stage_dir / "checkpoints", max_to_keep=cfg.keep_checkpoints,
                        label=ctx.stage_name),
        ScalarLogger(tb, every=cfg.log_every, is_chief=ctx.is_chief, prefix="reid"),
    ]
    if initial_epoch == 0:
        callbacks.append(BatchImageLogger(tb, sample_batch, name="reid/input_batch",
                                          is_chief=ctx.is_chief))
    curve = None
    if cfg.eval_every:
        curve = RetrievalCurve(usable_records(ctx, "query", cfg), usable_records(ctx, "gallery", cfg),
                               image_size=tuple(cfg.image_size), every=cfg.eval_every, epochs=cfg.epochs,
                               logdir=tb, stage_dir=ctx.stage_dir, echo=ctx.echo, is_chief=ctx.is_chief)
        callbacks.append(curve)
    return callbacks, curve


def _recalibrate(cfg, ctx: StageContext, model, inp) -> int:
    """Precise BN over ``bn_recalibration_batches`` of the augmented training stream (the
    statistics the features were trained under; clean images give worse retrieval, see
    training/batchnorm.py). Returns the number of batches used."""
    if not cfg.bn_recalibration_batches:
        return 0
    used = recalibrate_batchnorm(model, inp.dataset(cfg.epochs).repeat().take(cfg.bn_recalibration_batches))
    if used:   # 0: the model has no BatchNorm layer, nothing to say
        ctx.echo(f"BatchNorm statistics re-estimated over {used} training batches")
    return used


def _save(cfg, ctx: StageContext, model, model_path, data: _TrainingSet) -> None:
    """model.keras (+ its preprocessing record), labels.json, classifier.keras for closed-set
    data or a holdout, and the holdout's records."""
    model.export_inference_model(model_path)
    write_preprocessing(model_path, Preprocessing(
        image_size=tuple(cfg.image_size), feature_dim=int(model.inference_model().outputs[0].shape[-1]),
        backbone=dict(cfg.backbone), stage=ctx.stage_name))
    io.write_json(ctx.stage_dir / "labels.json", {str(pid): label for pid, label in data.mapping.items()})
    if data.closed or data.withheld:
        model.export_inference_model(ctx.stage_dir / "classifier.keras", output="logits")
    if data.withheld:
        io.write_json(ctx.stage_dir / HOLDOUT_FILE, {
            "fraction": cfg.holdout_per_class, "seed": ctx.seed,
            "records": [[r.path, r.pid, r.camid] for r in data.withheld]})

