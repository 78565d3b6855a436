"""Stage ``evaluate``: retrieval (Market protocol) or closed-set metrics of trained models."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from keras_reid.data.records import DISTRACTOR_PID, JUNK_PID
from keras_reid.errors import DatasetError
from keras_reid.recipe import ref
from keras_reid.registry import register
from keras_reid.stages.base import Stage, StageContext


class FusionConfig(BaseModel):
    """PN-GAN test-time fusion (Qian et al. 2018): each query and gallery image is described by
    model A on the image itself plus model B on each of its pose-normalised versions; the
    L2-normalised vectors are fused into one L2-normalised vector and ranked like any model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("fused", min_length=1, description="model name of the fused result in metrics.json")
    real: str = ref("stages", description="train_reid stage (model A) that embeds the real image")
    normalised: str = ref("stages", description="train_reid stage (model B) that embeds each "
                          "pose-normalised version")
    views: list[str] = ref("stages", description="augment stages whose kept manifest rows are the "
                           "pose-normalised versions of the query and gallery images (matched by "
                           "their 'source' path)")
    method: Literal["max", "mean", "concat"] = Field(
        "max", description="max: element-wise max of all vectors (PN-GAN); mean: their mean; "
        "concat: [A's vector, mean of B's vectors] (missing part = zeros)")
    normalise_fused: bool = Field(True, description="L2-normalise the fused vector before ranking "
                                  "(false: rank the fused vector as it is, as PN-GAN does; the "
                                  "vectors fused are L2-normalised either way)")
    poses: list[int] | None = Field(None, description="use only versions with these pose_index "
                                    "values (e.g. [0]); null = every version")
    normalised_name: str | None = Field(None, min_length=1, description="also report B alone on "
                                        "the fused versions under this name (images without "
                                        "versions fall back to B on the real image); null = skip")

    @field_validator("poses")
    @classmethod
    def _poses(cls, v):
        if v is None:
            return v
        if not v or any(p < 0 for p in v) or len(set(v)) != len(v):
            raise ValueError("a non-empty list of distinct pose indices >= 0, e.g. [0], or null for all")
        return sorted(v)


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
    normalise: bool = Field(True, description="L2-normalise each model's features before ranking; "
                            "false ranks the raw features (torchreid's test default, which the "
                            "thesis used); PN-GAN fusion and multi_query always use unit vectors")
    metric: Literal["euclidean", "cosine"] = "euclidean"
    rerank: bool = False
    k1: int = Field(20, gt=0)
    k2: int = Field(6, gt=0)
    lambda_value: float = Field(0.3, ge=0.0, le=1.0)
    max_rank: int = Field(50, gt=0)
    single_shot: bool = Field(False, description="single-shot CMC (CUHK03/CUHK01 classic protocol): "
                              "per query, one random gallery image of each identity, averaged over "
                              "single_shot_repeats draws (seeded); mAP and mINP stay on the whole gallery")
    single_shot_repeats: int = Field(10, gt=0, description="draws of the single-shot CMC")
    multi_query: Literal["mean", "max"] | None = Field(
        None, description="also report Market-1501 multi-query: each query's feature pooled "
        "(mean or max) with those of every multi_query_split image of its person in its camera, "
        "then ranked like a single query; null = off")
    multi_query_split: str = Field("gt_bbox", description="the split multi_query pools from "
                                   "(Market-1501's gt_bbox/, the hand-drawn boxes)")
    converted: bool = Field(True, description="also rank the deploy form of each model whose "
                            "train stage saved one (train_reid convert: CondenseNet's converted "
                            "model) as '<name> (converted)', and report both forms' parameters, "
                            "bytes on disk and latency")
    latency_runs: int = Field(11, ge=0, description="timed calls (batch 1, after 3 untimed ones) "
                              "per model for the latency of a model and its deploy form; the "
                              "median is reported (0 = no timing)")
    batch_size: int = Field(64, gt=0)
    ranked_lists: int = Field(8, ge=0, description="queries drawn as ranked lists in TensorBoard")
    projector_samples: int = Field(300, ge=0, description="gallery images exported to the embedding projector")
    generated: list[str] = ref("stages", [], description="augment stages whose generated images are "
                               "scored: SSIM against their source (and target-camera image where one "
                               "exists) and identity preservation with every evaluated model")
    quality_images: int = Field(500, gt=0, description="generated images scored per augment stage "
                                "(a deterministic subset)")
    fusion: FusionConfig | None = Field(None, description="PN-GAN fused evaluation: model A on the "
                                        "real image + model B on its pose-normalised versions")


@register("stage", "evaluate", config=EvaluateConfig)
class Evaluate(Stage):
    """Evaluate trained models: CMC/mAP/mINP (optionally re-ranked) or closed-set prec@1/mAP."""

    @classmethod
    def reported_models(cls, config: EvaluateConfig) -> list[str]:
        """The model names this stage writes to metrics.json: each evaluated model (or its
        ``names:`` entry), then the fused result and B on the versions when ``fusion`` is set."""
        out = [config.names.get(s, s) for s in config.models]
        if config.fusion is not None:
            out.append(config.fusion.name)
            if config.fusion.normalised_name is not None:
                out.append(config.fusion.normalised_name)
        return out

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
        if not config.normalise and config.multi_query is not None:
            return (("normalise",), "multi_query pools unit vectors; keep normalise: true or set "
                    "multi_query: null")
        for key in config.names:
            if key not in config.models:
                return (("names", key), f"'{key}' is not one of the evaluated models {config.models}")
        if config.fusion is not None:
            return cls._check_fusion(config, recipe)
        return None

    @staticmethod
    def _check_fusion(config: EvaluateConfig, recipe) -> tuple | None:
        fusion = config.fusion
        for key in ("real", "normalised"):
            name = getattr(fusion, key)
            stage_type = recipe.model.stages[name].type
            if stage_type != "train_reid":
                return (("fusion", key), f"stage '{name}' is a {stage_type} stage, expected a "
                        "train_reid stage whose model embeds the images")
        if not fusion.views:
            return (("fusion", "views"), "empty: list the augment stage(s) that generated the "
                    "pose-normalised versions of the query and gallery images, e.g. [pn_test]")
        for i, name in enumerate(fusion.views):
            stage_type = recipe.model.stages[name].type
            if stage_type != "augment":
                return (("fusion", "views", i), f"stage '{name}' is a {stage_type} stage, expected "
                        "an augment stage whose manifest holds pose-normalised query/gallery images")
        taken = [config.names.get(s, s) for s in config.models]
        if fusion.name in taken:
            return (("fusion", "name"), f"'{fusion.name}' is already the name of an evaluated model; "
                    "choose another name, e.g. fused")
        if fusion.normalised_name is not None and fusion.normalised_name in taken + [fusion.name]:
            return (("fusion", "normalised_name"), f"'{fusion.normalised_name}' is already a model "
                    f"name in this stage; choose another, e.g. {fusion.normalised}_normalised")
        return None

    @classmethod
    def preflight(cls, config: EvaluateConfig, context: StageContext) -> None:
        """Before any stage runs (else the error would come after the training): some query
        person appears in the gallery from another camera, and multi_query's split exists."""
        splits = context.dataset(config.dataset)
        if splits.kind == "retrieval" and config.query_split in splits and config.gallery_split in splits:
            cls._check_query_gallery(splits, config, context.stage_name)
        if config.multi_query is None:
            return
        if splits.kind == "retrieval" and config.multi_query_split not in splits:
            raise DatasetError(
                f"stage '{context.stage_name}': multi_query pools images of split "
                f"'{config.multi_query_split}', which dataset '{config.dataset}' does not have "
                f"(splits: {', '.join(splits.splits)}); extract Market-1501's gt_bbox/ beside "
                "query/, or set multi_query_split, or multi_query: null")

    @staticmethod
    def _check_query_gallery(splits, config: EvaluateConfig, stage: str) -> None:
        """DatasetError when no query person appears in the gallery from another camera: every
        query would be dropped by the protocol and the stage would fail after the training."""
        people = [r for r in splits[config.query_split] if r.pid not in (DISTRACTOR_PID, JUNK_PID)]
        gallery: dict[int, set[int]] = {}
        for r in splits[config.gallery_split]:
            gallery.setdefault(r.pid, set()).add(r.camid)
        if people and not any(gallery.get(r.pid, set()) - {r.camid} for r in people):
            shared = len({r.pid for r in people} & set(gallery))
            raise DatasetError(
                f"stage '{stage}': none of the {len({r.pid for r in people})} query people of dataset "
                f"'{config.dataset}' appears in split '{config.gallery_split}' from another camera "
                f"({shared} appear at all), so no query could be ranked; check that query and "
                "gallery come from the same dataset (the root, query_split, gallery_split)")

    def run(self, context: StageContext) -> dict:
        from keras_reid.stages.evaluate import run as body  # deferred: TensorFlow, validation stays light

        return body.evaluate(self.config, context)
