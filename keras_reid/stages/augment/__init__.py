"""Stage ``augment``: run a trained generator over chosen source images and write a labelled set.

Output (``<run>/<stage>/``)::

    data/bounding_box_train/0002_c6s1_000451_01_g5k0.jpg   Market-1501 layout: identity kept,
                                                           camera = the generator's target camera
    manifest-<i>-of-<N>.jsonl                              one line per generated image (kept or
                                                           dropped by a filter): file, source image,
                                                           pid, cameras, generator, checkpoint, seed,
                                                           filter scores
    shard-<i>-of-<N>.done                                  written when part i of N is complete

File names follow the Market-1501 pattern with a suffix ``_g<source camera>k<copy>`` that no
real Market-1501 file has, so they can sit beside real images without colliding, and readers
that search for ``([-\\d]+)_c(\\d)`` (torchreid, the Market reader here) still parse them.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from keras_reid.interfaces import generator_factory
from keras_reid.recipe import component, ref
from keras_reid.registry import register
from keras_reid.stages.base import Stage, StageContext

SOURCES = ("all", "test", "new_ids", "train_pairs")


class AugmentConfig(BaseModel):
    """Parameters of the ``augment`` stage."""

    model_config = ConfigDict(extra="forbid")

    generator: str = ref("stages", description="the train_generator stage whose generator is used")
    dataset: str | None = ref("datasets", None, description="source images' dataset (default: the "
                              "generator's)")
    split: str = Field("train", description="split the source images come from")
    source_camera: int | None = Field(None, description="default: the generator's camera A")
    images: Literal["all", "test", "new_ids", "train_pairs"] = Field(
        "all", description="which source-camera images: all; test = those whose (pid, sequence) "
        "never occurs in the target camera (camera-pair split); new_ids = identities never seen by "
        "the target camera; train_pairs = the camera-A images of the train pairs")
    poses: str | None = ref("stages", None, description="pose generators (pngan): a canonical_poses "
                            "stage; every source image gets one version per canonical pose (labels kept)")
    pose_indices: list[int] | None = Field(None, description="poses: only these canonical poses "
                                           "(e.g. [0] for the '1 pose' ablation; default all)")
    source_pose: dict | None = component("pose", None, description="poses: a pose estimator run on the "
                                         "source images first, to count (and with no_pose: skip, leave "
                                         "out) those where no pose is found")
    no_pose: Literal["skip", "generate"] = Field("generate", description="source images without a "
                                                 "pose: skip them, or generate their canonical-pose "
                                                 "versions anyway (the generator needs no source pose)")
    min_keypoints: int = Field(8, ge=1, le=18, description="source_pose: keypoints that count as a pose")
    copies: int = Field(1, gt=0, le=99, description="generated images per source image (each with "
                        "its own target mask / noise where the generator uses them)")
    samples: int | None = Field(None, gt=0, le=999_999, description="unconditional generators "
                                "(dcgan): how many images to sample from noise")
    noise: bool | None = Field(None, description="dropout noise at generation; null = the generator's "
                               "dropout_at_generation setting")
    filters: list[dict] = component("filter", [], description="semantic filters; an image is kept "
                                    "only if every filter scores it at least min_score")
    min_score: float = Field(0.5, ge=0.0, le=1.0)
    measure: list[dict] = component("filter", [], description="filters that score every generated "
                                    "image without dropping any: the fraction scoring at least "
                                    "min_score is reported (e.g. how many samples show a face)")
    max_images: int | None = Field(None, gt=0, description="use at most this many source images "
                                   "(a deterministic subset)")
    batch_size: int = Field(32, gt=0)
    jpeg_quality: int = Field(95, ge=50, le=100)
    jpeg_chroma: Literal["full", "subsampled"] = Field(
        "full", description="full: colour kept at every pixel (JPEG 4:4:4); subsampled: colour at "
                            "half resolution (4:2:0, smaller files). At 128x64, 4:2:0 changes the "
                            "face filter's verdict on many generated faces (one set of 400: "
                            "15.5% faces before encoding, 8.8% as 4:2:0, 14.3% as 4:4:4)")
    engine: Literal["local", "ray"] = Field("local", description="local: this process (use "
                                            "`--shard i/N` to split across processes); ray: Ray Data "
                                            "actors (pip install 'keras-reid[ray]')")
    ray_address: str | None = Field(None, description="Ray cluster address (default: start or join "
                                    "a local instance; RAY_ADDRESS is honoured)")
    ray_actors: int = Field(2, gt=0, description="generator actors (each loads the model once)")
    ray_cpus_per_actor: float = Field(1.0, gt=0)
    ray_gpus_per_actor: float = Field(0.0, ge=0)

    @field_validator("filters", "measure")
    @classmethod
    def _filters(cls, v):
        return list(v or [])


@register("stage", "augment", config=AugmentConfig)
class Augment(Stage):
    """Generate labelled images with a trained generator, filter them, write them atomically
    with a manifest; resumable, shardable (``--shard i/N``), optionally on Ray."""

    @classmethod
    def check_config(cls, config: AugmentConfig, recipe) -> tuple | None:
        stage_type = recipe.model.stages[config.generator].type
        if stage_type != "train_generator":
            return (("generator",), f"stage '{config.generator}' is a {stage_type} stage, expected "
                    "a train_generator stage")
        gen_cfg = recipe.stage_configs[config.generator]
        gen_needs = generator_factory(gen_cfg.generator).generation_needs
        unconditional = "noise" in gen_needs
        if "target_pose" in gen_needs:
            if config.poses is None:
                return (("poses",), f"missing: the generator of stage '{config.generator}' draws people "
                        "in target poses; name a canonical_poses stage, e.g. poses: canonical")
            if recipe.model.stages[config.poses].type != "canonical_poses":
                return (("poses",), f"stage '{config.poses}' is a {recipe.model.stages[config.poses].type} "
                        "stage, expected a canonical_poses stage")
            k = recipe.stage_configs[config.poses].k
            bad = [i for i in config.pose_indices or [] if not 0 <= i < k]
            if bad:
                return (("pose_indices",), f"{bad} are not canonical poses of stage '{config.poses}' "
                        f"(0..{k - 1})")
            return None
        if config.poses is not None or config.source_pose is not None:
            return (("poses",), f"the generator of stage '{config.generator}' takes no target pose; "
                    "poses and source_pose apply to pose generators (pngan) only")
        if unconditional and config.samples is None:
            return (("samples",), f"missing: the generator of stage '{config.generator}' samples "
                    "from noise; say how many images to generate, e.g. samples: 1000")
        if config.samples is not None and not unconditional:
            return (("samples",), f"the generator of stage '{config.generator}' translates source "
                    "images; samples applies to noise generators only (use images/copies)")
        if unconditional:
            return None
        if config.images != "all" and config.source_camera not in (None, gen_cfg.source_camera):
            return (("images",), f"'{config.images}' comes from the camera-pair split of the "
                    f"generator's cameras; source_camera {config.source_camera} differs from its "
                    f"camera {gen_cfg.source_camera}")
        return None

    @classmethod
    def preflight(cls, config: AugmentConfig, context: StageContext) -> None:
        """Check the source camera against the loaded dataset before any stage runs."""
        from keras_reid.stages.augment import run as body  # deferred: TensorFlow, validation stays light

        body.source_records(config, context)

    def run(self, context: StageContext) -> dict:
        from keras_reid.stages.augment import run as body  # deferred: TensorFlow, validation stays light

        return body.augment(self.config, context)
