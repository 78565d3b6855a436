"""Pose estimator ``mediapipe_pose``: COCO-18 keypoints from MediaPipe's PoseLandmarker.

Runs the MediaPipe Tasks ``PoseLandmarker`` (IMAGE mode, one pose) with the bundle
``pose_landmarker_full.task`` that ``keras-reid models fetch`` provides (the official bundle, or
one built from the BlazePose models of the mediapipe 0.10.21 wheel; see ``keras_reid.models``).
Tall person crops are padded to a centred square first (as the selfie masker does) so the
person is not stretched sideways. MediaPipe's 33 landmarks map to COCO-18 (:data:`FROM_BLAZEPOSE`;
the neck is the midpoint of the shoulders when both are found); a keypoint's score is its
landmark's visibility, and points scoring below ``min_score`` or falling outside the image are
missing (-1 in every column). Use it as a context manager or call ``close()``; it is also
closed when garbage-collected.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from keras_reid.mediapipe_tasks import TasksComponent
from keras_reid.registry import register

FROM_BLAZEPOSE: tuple[int | None, ...] = (
    0,     # nose
    None,  # neck: midpoint of the shoulders (11, 12)
    12, 14, 16,  # Rsho, Relb, Rwri  <- right shoulder, elbow, wrist
    11, 13, 15,  # Lsho, Lelb, Lwri
    24, 26, 28,  # Rhip, Rkne, Rank
    23, 25, 27,  # Lhip, Lkne, Lank
    2, 5,        # Leye, Reye  <- left eye, right eye (centres)
    7, 8,        # Lear, Rear
)
"""BlazePose landmark index of each COCO-18 keypoint (both use the person's own left and right)."""

SHOULDERS = (11, 12)


class MediaPipePoseConfig(BaseModel):
    """Parameters of the ``mediapipe_pose`` estimator."""

    model_config = ConfigDict(extra="forbid")
    min_score: float = Field(0.5, ge=0.0, le=1.0, description="landmark visibility below which a "
                             "keypoint counts as missing (-1)")
    min_detection_confidence: float = Field(0.5, ge=0.0, le=1.0, description="person-detector score "
                                            "needed to look for a pose at all")
    min_presence_confidence: float = Field(0.5, ge=0.0, le=1.0, description="pose-presence score "
                                           "needed to report the landmarks")
    pad_to_square: bool = Field(True, description="pad tall crops to a centred square before "
                                "estimating (false: the crop is given as it is)")
    pad_fill: Literal["edge", "black"] = Field("edge", description="padding: replicate the edge "
                                               "pixels or black")
    model: str = Field("pose_landmarker_full.task", description="a known bundle in the cache "
                       "(`keras-reid models list`) or the path of a PoseLandmarker .task bundle")
    model_dir: str | None = Field(None, description="model cache folder (default: the keras-reid cache)")


@register("pose", "mediapipe_pose", config=MediaPipePoseConfig)
class MediaPipePose(TasksComponent):
    """MediaPipe PoseLandmarker: uint8 RGB images -> float32 COCO-18 keypoints [N, 18, 3] (y, x, score)."""

    reads_files = False  # works on pixels: keypoints_for(paths, size) reads the images

    def __init__(self, config: MediaPipePoseConfig | None = None) -> None:
        self.config = config or MediaPipePoseConfig()

    def model_file(self) -> Path:
        """Returns the path of the PoseLandmarker bundle: ``model`` itself when it names an existing
        file, else the known bundle of that name in the cache (ModelFileError if missing)."""
        from keras_reid.models import known_names, model_path

        name = self.config.model
        given = Path(name).expanduser()
        if name not in known_names() and name + ".task" not in known_names() and given.is_file():
            return given
        return model_path(name, self.config.model_dir)

    def _create(self):
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.PoseLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self.model_file())),
            running_mode=vision.RunningMode.IMAGE, num_poses=1,
            min_pose_detection_confidence=self.config.min_detection_confidence,
            min_pose_presence_confidence=self.config.min_presence_confidence,
            output_segmentation_masks=False)
        return vision.PoseLandmarker.create_from_options(options)

    def landmarks(self, image: np.ndarray) -> np.ndarray | None:
        """Returns float32 [33, 3] (y, x, visibility) of BlazePose's landmarks in pixels of one uint8
        RGB image [H, W, 3], or None when no person is found."""
        import mediapipe as mp

        h, w = image.shape[:2]
        top = left = 0
        if self.config.pad_to_square and h != w:
            import cv2

            side = max(h, w)
            top, left = (side - h) // 2, (side - w) // 2
            border = cv2.BORDER_REPLICATE if self.config.pad_fill == "edge" else cv2.BORDER_CONSTANT
            image = cv2.copyMakeBorder(image, top, side - h - top, left, side - w - left, border,
                                       value=(0, 0, 0))
        ph, pw = image.shape[:2]
        frame = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image, np.uint8))
        result = self.run(lambda task: task.detect(frame))
        if not result.pose_landmarks:
            return None
        marks = result.pose_landmarks[0]
        # normalised coordinates span the image edges; pixel centres are at integers
        return np.array([(m.y * ph - 0.5 - top, m.x * pw - 0.5 - left,
                          m.visibility if m.visibility is not None else 1.0) for m in marks],
                        np.float32)

    def to_coco18(self, marks: np.ndarray | None, size: tuple[int, int]) -> np.ndarray:
        """Returns float32 [18, 3] (y, x, score) COCO-18 keypoints from BlazePose landmarks
        [33, 3] of an image of ``size``; -1 where missing (score < min_score, outside the image)."""
        out = np.full((18, 3), -1.0, np.float32)
        if marks is None:
            return out
        h, w = size
        y, x, score = marks[:, 0], marks[:, 1], marks[:, 2]
        # a half-pixel margin: points on the border stay
        ok = (score >= self.config.min_score) & (y > -0.5) & (y < h - 0.5) & (x > -0.5) & (x < w - 0.5)
        for i, j in enumerate(FROM_BLAZEPOSE):
            if j is not None and ok[j]:
                out[i] = (min(max(y[j], 0.0), h - 1), min(max(x[j], 0.0), w - 1), score[j])
        a, b = SHOULDERS
        if ok[a] and ok[b]:
            out[1] = ((y[a] + y[b]) / 2, (x[a] + x[b]) / 2, min(score[a], score[b]))
            out[1, 0] = min(max(out[1, 0], 0.0), h - 1)
            out[1, 1] = min(max(out[1, 1], 0.0), w - 1)
        return out

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 RGB images [N, H, W, 3] -> float32 keypoints [N, 18, 3] (y, x, score) in pixels,
        COCO-18 order, -1 where missing."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.dtype != np.uint8:
            raise ValueError(f"mediapipe_pose expects uint8 images, got {images.dtype}")
        out = np.full((len(images), 18, 3), -1.0, np.float32)
        for i, image in enumerate(images):
            out[i] = self.to_coco18(self.landmarks(image), image.shape[:2])
        return out

    def keypoints_for(self, paths: Sequence[str], size: tuple[int, int]) -> np.ndarray:
        """Returns float32 [N, 18, 3] (y, x, score) of the images at ``paths`` in pixels of ``size``
        (height, width): each image is read at its own resolution, estimated, and its keypoints
        scaled to ``size``. Raises DatasetError naming an image that cannot be read."""
        from keras_reid.data.images import read_image
        from keras_reid.keypoints import scale_keypoints

        out = np.full((len(paths), 18, 3), -1.0, np.float32)
        for i, p in enumerate(paths):
            image = read_image(str(p), None)
            out[i] = scale_keypoints(self(image)[0], image.shape[:2], size)
        return out
