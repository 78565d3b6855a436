"""Stage ``train_reid``: train a re-ID model (backbone + loss) under the recipe's strategy."""
from __future__ import annotations

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from keras_reid.recipe import component, ref
from keras_reid.registry import register
from keras_reid.stages.base import Stage, StageContext
from keras_reid.data.transforms import TransformSpec
from keras_reid.training.optim import OptimizerConfig, ScheduleConfig

log = logging.getLogger("keras_reid")


def _default_augment() -> list:
    return [{"type": "flip", "p": 0.5}, {"type": "pad_crop", "pad": 10},
            {"type": "random_erasing", "p": 0.5}]


class TrainReIDConfig(BaseModel):
    """Parameters of the ``train_reid`` stage."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = ref("datasets", description="name of a dataset under datasets:")
    split: str = "train"
    cameras: list[int] | None = Field(None, description="train only on images of these cameras")
    image_size: tuple[int, int] = Field((256, 128), description="input height, width")
    backbone: dict = component("backbone", {"type": "resnet50"})
    loss: dict = component("loss", {"type": "softmax_triplet"})
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    sampler: Literal["pk", "random"] = "pk"
    batch_size: int = Field(32, gt=0, description="global batch size (all replicas)")
    instances_per_id: int = Field(4, gt=0, description="K of the PK sampler")
    epochs: int = Field(60, gt=0)
    augment: list[TransformSpec] = Field(default_factory=_default_augment)
    bn_recalibration_batches: int = Field(
        50, ge=0, description="after training, re-estimate BatchNorm statistics over this many "
        "training batches (precise BN; 0 = off)")
    keep_checkpoints: int = Field(2, gt=0)
    log_every: int = Field(10, gt=0, description="steps between TensorBoard step scalars")
    verbose: int = Field(1, ge=0, le=2)

    @field_validator("image_size")
    @classmethod
    def _positive(cls, v):
        if min(v) < 16:
            raise ValueError("height and width of at least 16 pixels")
        return v


@register("stage", "train_reid", config=TrainReIDConfig)
class TrainReID(Stage):
    """Train a re-ID backbone with a re-ID loss; checkpoints every epoch and resumes."""

    @classmethod
    def check_config(cls, config: TrainReIDConfig, recipe) -> tuple | None:
        if config.sampler == "pk" and config.batch_size % config.instances_per_id:
            return (("batch_size",), f"got {config.batch_size}, expected a multiple of "
                    f"instances_per_id ({config.instances_per_id}) for the PK sampler")
        return None

    def run(self, context: StageContext) -> dict:
        from keras_reid.stages import _train_reid_impl

        return _train_reid_impl.train(self.config, context)
