"""Stage ``evaluate``: retrieval (Market protocol) or closed-set metrics of trained models."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from keras_reid.recipe import ref
from keras_reid.registry import register
from keras_reid.stages.base import Stage, StageContext


class EvaluateConfig(BaseModel):
    """Parameters of the ``evaluate`` stage."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = ref("datasets", description="name of a dataset under datasets:")
    models: list[str] = ref("stages", description="train stages whose models are evaluated")
    names: dict[str, str] = Field(default_factory=dict,
                                  description="model names in metrics.json, per stage (default: stage name)")
    query_split: str = "query"
    gallery_split: str = "gallery"
    test_split: str = Field("test", description="closed-set data: the split to classify")
    flip: bool = Field(True, description="average the features of the image and its mirror image")
    metric: Literal["euclidean", "cosine"] = "euclidean"
    rerank: bool = False
    k1: int = Field(20, gt=0)
    k2: int = Field(6, gt=0)
    lambda_value: float = Field(0.3, ge=0.0, le=1.0)
    max_rank: int = Field(50, gt=0)
    batch_size: int = Field(64, gt=0)
    ranked_lists: int = Field(8, ge=0, description="queries drawn as ranked lists in TensorBoard")
    projector_samples: int = Field(300, ge=0, description="gallery images exported to the embedding projector")
    generated: list[str] = ref("stages", [], description="augment stages whose generated images are "
                               "scored: SSIM against their source (and target-camera image where one "
                               "exists) and identity preservation with every evaluated model")
    quality_images: int = Field(500, gt=0, description="generated images scored per augment stage "
                                "(a deterministic subset)")


@register("stage", "evaluate", config=EvaluateConfig)
class Evaluate(Stage):
    """Evaluate trained models: CMC/mAP/mINP (optionally re-ranked) or closed-set prec@1/mAP."""

    @classmethod
    def check_config(cls, config: EvaluateConfig, recipe) -> tuple | None:
        for i, name in enumerate(config.models):
            stage_type = recipe.model.stages[name].type
            if stage_type != "train_reid":
                return (("models", i), f"stage '{name}' is a {stage_type} stage, expected a "
                        "train_reid stage whose model can be evaluated")
        for i, name in enumerate(config.generated):
            stage_type = recipe.model.stages[name].type
            if stage_type != "augment":
                return (("generated", i), f"stage '{name}' is a {stage_type} stage, expected an "
                        "augment stage")
        for key in config.names:
            if key not in config.models:
                return (("names", key), f"'{key}' is not one of the evaluated models {config.models}")
        return None

    def run(self, context: StageContext) -> dict:
        from keras_reid.stages import _evaluate_impl

        return _evaluate_impl.evaluate(self.config, context)
