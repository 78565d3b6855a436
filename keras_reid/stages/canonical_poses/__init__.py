"""Stage ``canonical_poses``: cluster the training poses into k canonical poses (PN-GAN).

Output (``<run>/<stage>/``)::

    canonical_poses.json    k poses: keypoints [18, 3] (y, x, presence) at image_size, cluster sizes
    canonical_poses.csv     the same keypoints in the Pose-Transfer CSV format (128x64 coordinates)
    pose_<i>.png            skeleton image of canonical pose i (what the generator is given)
    mean_<i>.png            mean of the skeleton images of the poses in cluster i

and one picture of the k skeletons in TensorBoard.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from keras_reid.recipe import component, ref
from keras_reid.registry import register
from keras_reid.stages.base import ImageSize, Stage, StageContext


class CanonicalPosesConfig(BaseModel):
    """Parameters of the ``canonical_poses`` stage."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = ref("datasets", description="name of a dataset under datasets:")
    split: str = "train"
    pose: dict = component("pose", {"type": "mediapipe_pose"}, description="pose estimator")
    image_size: ImageSize = Field((256, 128), description="height, width of the pose images "
                                  "(the generator's size)")
    k: int = Field(8, ge=1, le=64, description="canonical poses (paper: 8)")
    features: Literal["keypoints", "vgg19", "cnn"] = Field(
        "keypoints", description="what k-means clusters: keypoints = normalised keypoint vectors "
        "(centred on the body, scaled by the torso; works offline); vgg19 = features of the "
        "skeleton images from VGG-19 (the paper's choice: ImageNet weights, see cnn_weights; the "
        "last pooled map flattened, so the layout of the limbs counts); cnn = average-pooled "
        "features of an ImageNet MobileNetV2")
    cnn_weights: str | None = Field(
        "imagenet", description="vgg19/cnn: 'imagenet' (downloaded by Keras, needs the network), a "
        "local .weights.h5 / .h5 file of the network without its top, or null (random weights: "
        "for tests only, the clusters mean little)")
    min_keypoints: int = Field(8, ge=1, le=18, description="poses with fewer keypoints are not clustered")
    max_poses: int | None = Field(None, gt=0, description="cluster at most this many poses (a "
                                  "deterministic subset)")
    restarts: int = Field(10, ge=1, description="k-means restarts (the lowest distortion is kept)")
    seed: int | None = Field(None, description="seed of the k-means starts and the max_poses "
                             "subset; null = the recipe's seed. With a seed of its own the stage "
                             "does not depend on the recipe's seed, and the repeats of "
                             "'keras-reid run --seeds' share one run of it")


@register("stage", "canonical_poses", config=CanonicalPosesConfig)
class CanonicalPoses(Stage):
    """Cluster all training poses into k canonical poses with k-means (PN-GAN)."""

    @classmethod
    def uses_seed(cls, config: CanonicalPosesConfig) -> bool:
        """Returns False when the config gives the stage a seed of its own."""
        return config.seed is None

    @classmethod
    def preflight(cls, config: CanonicalPosesConfig, context: StageContext) -> None:
        context.dataset(config.dataset)[config.split]

    def run(self, context: StageContext) -> dict:
        from keras_reid.stages.canonical_poses import run as body  # deferred: TensorFlow, validation stays light

        return body.run(self.config, context)
