"""Stage ``train_generator``: pair the data as the generator needs, compute masks, train the GAN."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from keras_reid.data.gan_pairs import make_pairs
from keras_reid.interfaces import MASK_KEYS, generator_factory
from keras_reid.recipe import component, ref
from keras_reid.registry import register
from keras_reid.stages.base import ImageSize, Stage, StageContext
from keras_reid.training.precision import Precision, precision_policy


class TrainGeneratorConfig(BaseModel):
    """Parameters of the ``train_generator`` stage."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = ref("datasets", description="name of a dataset under datasets:")
    split: str = "train"
    generator: dict = component("generator", {"type": "pix2pix"})
    source_camera: int | None = Field(None, description="camera A (camera_pairs / random_target pairing)")
    target_camera: int | None = Field(None, description="camera B, whose style is learnt")
    masker: dict | None = component("masker", None, description="person masks, for generators that need them")
    pose: dict | None = component("pose", None, description="pose estimator (mediapipe_pose, synthetic, "
                                  "precomputed), for generators that need target poses (pngan)")
    min_keypoints: int = Field(8, ge=1, le=18, description="a pose counts as found with at least this "
                               "many keypoints; pairs whose target has none are dropped (counted)")
    semantic_filter: dict | None = component("filter", None, description="semantic filter (e.g. face) "
                                             "scoring the real images once (cached), for semantic "
                                             "control and guided generators")
    semantic_control: bool = Field(False, description="train on real images the semantic filter "
                                   "accepts only (paper: D sees a real image only if F(x) = 1)")
    min_score: float = Field(0.5, ge=0.0, le=1.0, description="filter score that counts as accepted")
    filter_resolution: Literal["image_size", "native"] = Field(
        "image_size", description="the size at which the semantic filter scores the real images: "
        "image_size = as the generator sees them (resized); native = each image as stored, "
        "whatever its size (a face takes more pixels in a large crop than after resizing to "
        "128x64; LIMA's paper runs its face detector on the original crops)")
    image_size: ImageSize = Field((128, 64), description="height, width the generator works at")
    targets_per_source: int = Field(10, gt=0, description="random_target pairing: camera-B images per "
                                    "camera-A image (thesis Model 4: 10)")
    max_pairs_per_identity: int | None = Field(None, gt=0, description="identity_pairs: cap per identity")
    batch_size: int = Field(32, gt=0, description="global batch size (all replicas)")
    epochs: int = Field(10, gt=0)
    steps_per_epoch: int | None = Field(None, gt=0, description="default: one pass over the pairs")
    flip: bool = Field(True, description="random horizontal flip of each example (all its images)")
    per_identity: bool = Field(False, description="train one generator G_j per identity (unpaired "
                               "generators such as dcgan), saved as generators/<pid>.keras")
    init_from: str | None = ref("stages", None, description="a train_generator stage whose generator "
                                "starts every G_j (the paper's G pre-trained on all identities)")
    identities: list[int] | Literal["people"] | None = Field(
        None, description="per_identity: only these pids; people = every class but the closed-set "
        "'unknown' class 0 (default: all, class 0 included)")
    sample_every: int = Field(100, gt=0, description="steps between TensorBoard sample grids")
    samples: int = Field(8, gt=0, le=32, description="examples in the sample grid")
    keep_checkpoints: int = Field(2, gt=0)
    log_every: int = Field(10, gt=0, description="steps between TensorBoard step scalars")
    verbose: int = Field(1, ge=0, le=2)
    precision: Precision | None = Field(
        None, description="dtype policy of this stage: float32, mixed_float16 (with loss scaling) or "
        "mixed_bfloat16; null = the recipe's precision")


@register("stage", "train_generator", config=TrainGeneratorConfig)
class TrainGenerator(Stage):
    """Train an image-to-image generator (e.g. pix2pix Model 4) on paired examples; checkpoints
    every epoch and resumes; samples to TensorBoard; saves ``generator.keras``."""

    distributed = True   # every worker of a multi-worker run trains it

    @classmethod
    def check_config(cls, config: TrainGeneratorConfig, recipe) -> tuple | None:
        factory = generator_factory(config.generator)
        needs = set(factory.needs) | set(factory.generation_needs)
        if needs & set(MASK_KEYS) and config.masker is None:
            return (("masker",), f"the generator '{config.generator.get('type')}' "
                    f"({_describe(config.generator)}) needs person masks ({', '.join(sorted(needs & set(MASK_KEYS)))}) "
                    "but no masker is given; add e.g. masker: {type: mediapipe_selfie} "
                    "(or {type: synthetic} on the synthetic dataset)")
        if "target_pose" in needs and config.pose is None:
            return (("pose",), f"the generator '{config.generator.get('type')}' needs target poses but no "
                    "pose estimator is given; add e.g. pose: {type: mediapipe_pose} (or {type: synthetic} "
                    "on the synthetic dataset, {type: precomputed, csv: ...} for a Pose-Transfer CSV)")
        if config.per_identity and factory.pairing != "unpaired":
            return (("per_identity",), f"per-identity generators need an unpaired generator (e.g. "
                    f"dcgan); '{config.generator.get('type')}' pairs {factory.pairing}")
        if config.init_from is not None:
            init_type = recipe.model.stages[config.init_from].type
            if init_type != "train_generator":
                return (("init_from",), f"stage '{config.init_from}' is a {init_type} stage, expected "
                        "a train_generator stage")
            if recipe.stage_configs[config.init_from].generator != config.generator:
                return (("init_from",), f"stage '{config.init_from}' trains a different generator "
                        "configuration; init_from needs the same generator settings")
        if config.semantic_control and config.semantic_filter is None:
            return (("semantic_filter",), "missing: semantic_control needs a semantic filter, e.g. "
                    "semantic_filter: {type: face}")
        if getattr(factory.config, "guided", False) and config.semantic_filter is None:
            return (("semantic_filter",), "missing: the guided generator needs a semantic filter to "
                    "tell which images have no face, e.g. semantic_filter: {type: face}")
        if factory.pairing in ("camera_pairs", "random_target"):
            for key in ("source_camera", "target_camera"):
                if getattr(config, key) is None:
                    return ((key,), f"missing: the generator pairs camera A with camera B "
                            f"({factory.pairing}); set source_camera and target_camera")
            if config.source_camera == config.target_camera:
                return (("target_camera",), f"got {config.target_camera}, the same as source_camera; "
                        "expected a different camera")
        return None

    @classmethod
    def preflight(cls, config: TrainGeneratorConfig, context: StageContext) -> None:
        """Check cameras and pairs against the loaded dataset before any stage runs."""
        factory = generator_factory(config.generator, context.registry)
        splits = context.dataset(config.dataset)
        make_pairs(factory.pairing, splits[config.split], source_camera=config.source_camera,
                   target_camera=config.target_camera, targets_per_source=1,
                   source=f"split '{config.split}' of dataset '{config.dataset}'",
                   closed_set=splits.kind == "closed_set")

    def run(self, context: StageContext) -> dict:
        """Train under the stage's precision (Keras' global dtype policy, restored afterwards);
        returns the summary, which records the precision."""
        from keras_reid.stages.train_generator import run as body  # deferred: TensorFlow, validation stays light

        with precision_policy(context.precision) as precision:
            summary = body.train(self.config, context)
        return {**summary, "precision": precision}


def _describe(spec: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in spec.items() if k != "type") or "defaults"
