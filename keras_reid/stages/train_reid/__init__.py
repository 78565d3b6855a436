"""Stage ``train_reid``: train a re-ID model (backbone + loss) under the recipe's strategy."""
from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from keras_reid.data.records import select_records
from keras_reid.data.transforms import TransformSpec
from keras_reid.deploy import converter
from keras_reid.errors import DatasetError
from keras_reid.recipe import component, ref
from keras_reid.registry import REGISTRY, register
from keras_reid.stages.base import ImageSize, Stage, StageContext
from keras_reid.training.optim import OptimizerConfig, ScheduleConfig
from keras_reid.training.precision import Precision, precision_policy

log = logging.getLogger("keras_reid")


class GeneratedSet(BaseModel):
    """A set of generated images added to the real training images, with its label policy."""

    model_config = ConfigDict(extra="forbid")

    stage: str | None = ref("stages", None, description="an augment stage whose kept images are used")
    dataset: str | None = ref("datasets", None, description="or: a dataset of generated images "
                              "(its train split)")
    labels: Literal["keep", "smooth", "lsro", "unknown", "fixed"] = Field(
        "keep", description="keep: the identity label; smooth: label smoothing with epsilon; "
        "lsro: a uniform target over the classes (Zheng et al. 2017); unknown: one extra class for "
        "all of them; fixed: the class of fixed_pid (e.g. LIMA's unknown class 0)")
    epsilon: float = Field(0.1, gt=0.0, lt=1.0, description="label smoothing of 'smooth'")
    fixed_pid: int | None = Field(None, description="labels: fixed - the identity (pid) whose class "
                                  "the images get")
    max_images: int | None = Field(None, gt=0, description="a deterministic subset of this size")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.stage is None) == (self.dataset is None):
            raise ValueError("give exactly one of stage (an augment stage) or dataset")
        if (self.labels == "fixed") != (self.fixed_pid is not None):
            raise ValueError("labels: fixed goes with fixed_pid (the identity whose class the images "
                             "get), and fixed_pid only with labels: fixed")
        return self


def _default_augment() -> list:
    return [{"type": "flip", "p": 0.5}, {"type": "pad_crop", "pad": 10},
            {"type": "random_erasing", "p": 0.5}]


class TrainReIDConfig(BaseModel):
    """Parameters of the ``train_reid`` stage."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = ref("datasets", description="name of a dataset under datasets:")
    split: str = "train"
    cameras: list[int] | None = Field(None, description="train only on images of these cameras")
    holdout_per_class: float | None = Field(
        None, gt=0.0, lt=1.0, description="withhold this fraction of every identity's training "
        "images (rounded; at least one image of each stays for training; seeded) as a "
        "classification test set: the evaluate stage reports prec@1, prec@5 and mAP of the "
        "classifier on them (the semantic-selective DCGAN paper's Duke columns: 0.15); null = off")
    image_size: ImageSize = Field((256, 128), description="input height, width")
    backbone: dict = component("backbone", {"type": "resnet50"})
    loss: dict = component("loss", {"type": "softmax_triplet"})
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    sampler: Literal["pk", "random"] = "pk"
    batch_size: int = Field(32, gt=0, description="global batch size (all replicas)")
    instances_per_id: int = Field(4, gt=0, description="K of the PK sampler")
    epochs: int = Field(60, gt=0)
    freeze_backbone_epochs: int = Field(
        0, ge=0, description="two-step fine-tuning (Geng et al. 2016; PN-GAN): for the first N epochs "
        "train only the layers the backbone adds (head, classifier), its pretrained trunk frozen "
        "(BatchNorm there in inference mode); then everything. 0 = off")
    augment: list[TransformSpec] = Field(default_factory=_default_augment)
    sync_batchnorm: bool = Field(
        True, description="with more than one replica (mirrored, multi_worker), BatchNorm layers "
        "normalise with the statistics of the whole global batch, as one device does, so the "
        "model does not depend on how the batch is split; false: each replica uses its own part "
        "(one all-reduce less per BatchNorm layer and step)")
    bn_recalibration_batches: int = Field(
        50, ge=0, description="after training, re-estimate BatchNorm statistics over this many "
        "training batches (precise BN; 0 = off)")
    generated: list[GeneratedSet] = Field(default_factory=list, description="generated image sets "
                                          "added to the real training images")
    generated_ratio: float | None = Field(None, gt=0.0, lt=1.0, description="fraction of every batch "
                                          "drawn from the generated sets (null: one pool, sampled alike)")
    real: bool = Field(True, description="train on the split's real images too; false: on the "
                       "generated sets only, over the real identities' classes (PN-GAN's model B)")
    real_filter: dict | None = component(
        "filter", None, description="a semantic filter (e.g. face) that chooses the real training "
        "images: only those it scores at least real_min_score train (LIMA Table 1 row 5, 'FR'). "
        "Scored once per image at its native size (cached in the stage folder); the classes stay "
        "those of the whole split, so a class the filter empties is still predicted, never learnt")
    real_min_score: float = Field(0.5, ge=0.0, le=1.0, description="real_filter score that keeps "
                                  "a real image")
    keep_checkpoints: int = Field(2, gt=0)
    log_every: int = Field(10, gt=0, description="steps between TensorBoard step scalars")
    eval_every: int | None = Field(
        None, gt=0, description="every N epochs (and after the last) rank the dataset's query and "
        "gallery splits with the model in training: mAP/rank-k as curves in TensorBoard "
        "(reid/eval/...) and eval_history in the summary; null = off")
    convert: bool | None = Field(
        None, description="after training, convert the model to its backbone's deploy form (the "
        "backbone's convert(): CondenseNet's compact inference model), check that it gives the same "
        "features (within 1e-4) and save it as model_converted.keras; the evaluate stage ranks it "
        "next to the trained model and measures both (size, latency). null: whenever the backbone "
        "has a deploy form; true: required; false: off")
    verbose: int = Field(1, ge=0, le=2)
    precision: Precision | None = Field(
        None, description="dtype policy of this stage: float32, mixed_float16 (with loss scaling) or "
        "mixed_bfloat16; null = the recipe's precision")



def _has_deploy_form(backbone: dict) -> bool | None:
    """Whether the backbone component offers a deploy form (``convert``); None when unknown."""
    try:
        return converter(REGISTRY.get("backbone", backbone.get("type")).obj) is not None
    except Exception:  # noqa: BLE001 - an unknown backbone is reported by the backbone's own check
        return None


def _trunk_problem(backbone: dict) -> str | None:
    """Returns why ``backbone`` cannot be frozen (it does not name its trunk layers), else None."""
    name = backbone.get("type")
    try:
        cls = REGISTRY.get("backbone", name).obj
    except Exception:  # noqa: BLE001 - an unknown backbone is reported by the backbone's own check
        return None
    if not callable(getattr(cls, "trunk_layers", None)):
        return (f"backbone '{name}' does not say which of its layers are the trunk (no "
                "trunk_layers method); remove freeze_backbone_epochs")
    return None


def _freeze_problem(config: TrainReIDConfig) -> tuple | None:
    """``(key path, message)`` when freeze_backbone_epochs, convert or the PK batch cannot work."""
    if config.freeze_backbone_epochs:
        if config.freeze_backbone_epochs >= config.epochs:
            return (("freeze_backbone_epochs",), f"{config.freeze_backbone_epochs} is not fewer "
                    f"than epochs ({config.epochs}): the whole network would never train")
        problem = _trunk_problem(config.backbone)
        if problem:
            return (("freeze_backbone_epochs",), problem)
    if config.convert and _has_deploy_form(config.backbone) is False:
        return (("convert",), f"backbone '{config.backbone.get('type')}' has no deploy form "
                "(no convert method); remove convert or use a backbone that has one (condensenet)")
    if config.sampler == "pk" and config.batch_size % config.instances_per_id:
        return (("batch_size",), f"got {config.batch_size}, expected a multiple of "
                f"instances_per_id ({config.instances_per_id}) for the PK sampler")
    return None


def _real_problem(config: TrainReIDConfig) -> tuple | None:
    """``(key path, message)`` when an option needs the real images but ``real`` is false."""
    if config.holdout_per_class is not None and not config.real:
        return (("holdout_per_class",), "withholds real training images, but real is false; "
                "remove holdout_per_class or set real: true")
    if config.real_filter is not None and not config.real:
        return (("real_filter",), "chooses real images, but real is false; remove real_filter "
                "or set real: true")
    if not config.real:
        if not config.generated:
            return (("real",), "false leaves nothing to train on; add generated: "
                    "[{stage: augment}] or set real: true")
        if config.generated_ratio is not None:
            return (("generated_ratio",), "shares a batch between real and generated images, "
                    "but real is false; remove generated_ratio")
        for i, g in enumerate(config.generated):
            if g.labels in ("lsro", "unknown"):
                return (("generated", i, "labels"), f"{g.labels} images need real classes to "
                        "stand beside, but real is false; use labels: keep (or smooth/fixed) "
                        "or set real: true")
    return None


def _generated_problem(config: TrainReIDConfig, recipe) -> tuple | None:
    """``(key path, message)`` when a generated set names no augment stage or its lsro images
    would go to the PK sampler."""
    for i, g in enumerate(config.generated):
        if g.stage is not None and recipe.model.stages[g.stage].type != "augment":
            return (("generated", i, "stage"), f"stage '{g.stage}' is a "
                    f"{recipe.model.stages[g.stage].type} stage, expected an augment stage")
        if g.labels == "lsro" and config.sampler == "pk" and config.generated_ratio is None:
            return (("generated", i, "labels"), "lsro images have no identity for the PK sampler; "
                    "set generated_ratio (e.g. 0.25) so they come in their own share of each batch")
    return None


def _ratio_problem(config: TrainReIDConfig) -> tuple | None:
    """``(key path, message)`` when generated_ratio leaves no generated or real share, or a real
    share the PK sampler cannot fill."""
    if config.generated_ratio is None:
        return None
    if not config.generated:
        return (("generated_ratio",), "set, but there are no generated sets; add generated: "
                "[{stage: augment}] or remove generated_ratio")
    n_gen = round(config.batch_size * config.generated_ratio)
    n_real = config.batch_size - n_gen
    if n_gen == 0 or n_real == 0:
        return (("generated_ratio",), f"{config.generated_ratio} of a batch of "
                f"{config.batch_size} leaves {n_gen} generated and {n_real} real images; "
                "expected both > 0")
    if config.sampler == "pk" and n_real % config.instances_per_id:
        return (("generated_ratio",), f"leaves {n_real} real images per batch, expected a "
                f"multiple of instances_per_id ({config.instances_per_id}); e.g. "
                f"{config.instances_per_id * max(1, round(n_real / config.instances_per_id))}"
                f"/{config.batch_size} real")
    return None


@register("stage", "train_reid", config=TrainReIDConfig)
class TrainReID(Stage):
    """Train a re-ID backbone with a re-ID loss; checkpoints every epoch and resumes."""

    distributed = True   # every worker of a multi-worker run trains it

    @classmethod
    def check_config(cls, config: TrainReIDConfig, recipe) -> tuple | None:
        return (_freeze_problem(config) or _real_problem(config) or _generated_problem(config, recipe)
                or _ratio_problem(config))

    @classmethod
    def preflight(cls, config: TrainReIDConfig, context: StageContext) -> None:
        """Before any stage runs: the training split exists and every fixed_pid is one of its
        identities (a class index outside the classes would otherwise fail hours later)."""
        splits = context.dataset(config.dataset)
        if config.eval_every and (splits.kind == "closed_set"
                                  or not splits.splits.get("query") or not splits.splits.get("gallery")):
            raise DatasetError(
                f"stage '{context.stage_name}': eval_every ranks the query and gallery splits of "
                f"dataset '{config.dataset}', which has none (closed-set or training-only data); "
                "remove eval_every")
        records = select_records(splits[config.split], config.cameras, splits.kind == "closed_set")
        pids = sorted({r.pid for r in records})
        for i, g in enumerate(config.generated):
            if g.labels == "fixed" and g.fixed_pid not in set(pids):
                shown = ", ".join(map(str, pids[:20])) + (" ..." if len(pids) > 20 else "")
                raise DatasetError(
                    f"stage '{context.stage_name}': generated[{i}].fixed_pid {g.fixed_pid} is not a "
                    f"class of split '{config.split}' of dataset '{config.dataset}' (classes: {shown}); "
                    "use one of them (LIMA's unknown class is 0) or labels: unknown for an extra class")

    def run(self, context: StageContext) -> dict:
        """Train under the stage's precision (Keras' global dtype policy, restored afterwards);
        returns the summary, which records the precision."""
        from keras_reid.stages.train_reid import run as body  # deferred: TensorFlow, validation stays light

        with precision_policy(context.precision) as precision:
            summary = body.train(self.config, context)
        return {**summary, "precision": precision}
