"""Pose estimator ``mediapipe_pose``: COCO-18 keypoints from MediaPipe's BlazePose (full) model.

Two ways to find the person (``roi``):

* ``crop`` (default): the image is a person crop, so the crop itself is the region of interest:
  it is padded to a centred square with a margin and BlazePose's landmark model runs on it
  directly (a TensorFlow Lite interpreter: ``ai_edge_litert`` when installed, else
  ``tf.lite.Interpreter``).
* ``detector``: the MediaPipe Tasks ``PoseLandmarker`` (IMAGE mode, one pose): BlazePose's person
  detector finds the region, then the same landmark model runs on it.

Both use the bundle ``pose_landmarker_full.task`` that ``keras-reid models fetch`` provides (the
official bundle, or one built from the BlazePose models of the mediapipe 0.10.21 wheel; see
``keras_reid.model_files``); ``crop`` takes the landmark model out of it (or uses a ``.tflite``
landmark model given as ``model``). BlazePose's detector keys on the face, so it misses people
seen from the back or the side: on the synthetic data (``python tools/pose_pck.py``, 300 images,
torso-normalised PCK@0.5 at 128x64 / 256x128) ``crop`` scores 0.83 / 0.86 and finds a pose in
99% of the images, ``detector`` 0.55 / 0.64 with a pose in 66% / 71% (front views: 0.96 / 0.98
against 0.85 / 0.91). ``crop`` assumes a whole-person box (a re-ID crop): on other pictures,
such as a head-and-shoulders portrait, it invents a small whole body; use ``detector`` there.

MediaPipe's 33 landmarks map to COCO-18 (:data:`FROM_BLAZEPOSE`; the neck is the midpoint of
the shoulders when both are found); a keypoint's score is its landmark's visibility, and points
scoring below ``min_score`` or falling outside the image are missing (-1 in every column). Use
it as a context manager or call ``close()``; it is also closed when garbage-collected.
"""
from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from keras_reid.data.images import read_image
from keras_reid.errors import ModelFileError
from keras_reid.mediapipe_tasks import TasksComponent
from keras_reid.model_files import FETCH_HINT, known_names, model_path
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
    roi: Literal["crop", "detector"] = Field("crop", description="crop: the image is the person "
                                             "box (landmarks on the padded crop); detector: "
                                             "PoseLandmarker's person detector finds it (misses "
                                             "backs and side views)")
    min_score: float = Field(0.5, ge=0.0, le=1.0, description="landmark visibility below which a "
                             "keypoint counts as missing (-1)")
    min_presence_confidence: float = Field(0.5, ge=0.0, le=1.0, description="pose-presence score "
                                           "needed to report any landmark")
    min_detection_confidence: float = Field(0.5, ge=0.0, le=1.0, description="roi detector only: "
                                            "person-detector score needed to look for a pose")
    pad_to_square: bool | None = Field(None, description="pad tall crops to a centred square first "
                                       "(false: roi crop stretches the crop to the model's square "
                                       "input, roi detector letterboxes it); null: true for roi "
                                       "crop, false for roi detector (the better PCK each)")
    pad_fill: Literal["edge", "black"] = Field("edge", description="padding: replicate the edge "
                                               "pixels (better PCK) or black")
    margin: float = Field(0.15, ge=0.0, le=1.0, description="extra padding, as a fraction of the "
                          "crop's longer side, split over both sides")
    model: str = Field("pose_landmarker_full.task", description="a known bundle or model in the "
                       "cache (`keras-reid models list`), the path of a PoseLandmarker .task "
                       "bundle, or (roi crop) of a BlazePose landmark .tflite model")
    model_dir: str | None = Field(None, description="model cache folder (default: the keras-reid cache)")


LANDMARK_MEMBER = "pose_landmarks_detector.tflite"
"""The landmark model inside a PoseLandmarker bundle."""


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


class CropLandmarker:
    """BlazePose's landmark model run directly on a uint8 RGB image taken as the region of interest.

    ``detect(image) -> (landmarks float32 [33, 3] (y, x, visibility) in [0, 1] of the image, pose
    presence)``; ``close()`` releases the interpreter."""

    def __init__(self, model: bytes) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter  # deferred: LiteRT, keeps plugin discovery light
        except ImportError:
            import tensorflow as tf  # deferred: TensorFlow, keeps plugin discovery light

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tf.lite.Interpreter points to ai-edge-litert
                self.interpreter = tf.lite.Interpreter(model_content=model)
        else:
            self.interpreter = Interpreter(model_content=model)
        self.interpreter.allocate_tensors()
        inp = self.interpreter.get_input_details()[0]
        self.input_index, self.input_size = inp["index"], tuple(int(v) for v in inp["shape"][1:3])
        outputs = {tuple(int(v) for v in o["shape"]): o["index"] for o in self.interpreter.get_output_details()}
        landmarks = [shape for shape in outputs if len(shape) == 2 and shape[1] % 5 == 0 and shape[1] >= 165]
        if (1, 1) not in outputs or not landmarks:
            raise ValueError(f"not a BlazePose landmark model (outputs {sorted(outputs)})")
        self.landmark_index, self.flag_index = outputs[landmarks[0]], outputs[(1, 1)]

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Returns (float32 [33, 3] (y, x, visibility), y and x as fractions of ``image``; pose
        presence in [0, 1]) for one uint8 RGB image (resized to the model's square input)."""
        import cv2  # deferred: OpenCV, keeps plugin discovery light

        h, w = self.input_size
        grow = image.shape[0] < h
        x = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR if grow else cv2.INTER_AREA)
        self.interpreter.set_tensor(self.input_index, (x.astype(np.float32) / 255.0)[None])
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self.landmark_index).reshape(-1, 5)[:33]
        flag = float(np.ravel(self.interpreter.get_tensor(self.flag_index))[0])
        marks = np.stack([raw[:, 1] / h, raw[:, 0] / w, _sigmoid(raw[:, 3])], axis=1)
        return marks.astype(np.float32), flag

    def close(self) -> None:
        """Release the interpreter."""
        self.interpreter = None


@register("pose", "mediapipe_pose", config=MediaPipePoseConfig)
class MediaPipePose(TasksComponent):
    """MediaPipe BlazePose (full): uint8 RGB images -> float32 COCO-18 keypoints [N, 18, 3] (y, x, score)."""

    reads_files = False  # works on pixels: keypoints_for(paths, size) reads the images

    def __init__(self, config: MediaPipePoseConfig | None = None) -> None:
        self.config = config or MediaPipePoseConfig()

    @property
    def pad_to_square(self) -> bool:
        """Whether crops are padded to a square: the config's choice, by default only for roi crop."""
        square = self.config.pad_to_square
        return self.config.roi == "crop" if square is None else square

    def model_file(self) -> Path:
        """Returns the path of the model: ``model`` itself when it names an existing file, else the
        known bundle or model of that name in the cache (ModelFileError if missing)."""
        name = self.config.model
        given = Path(name).expanduser()
        if not any(n in known_names() for n in (name, name + ".task", name + ".tflite")) and given.is_file():
            return given
        return model_path(name, self.config.model_dir)

    def _create(self):
        path = self.model_file()
        bundle = zipfile.is_zipfile(path)
        if self.config.roi == "crop":
            try:
                if bundle:
                    with zipfile.ZipFile(path) as zf:
                        content = zf.read(LANDMARK_MEMBER)
                else:
                    content = path.read_bytes()
                return CropLandmarker(content)
            except (KeyError, ValueError) as exc:
                raise ModelFileError(f"{path} is not a PoseLandmarker bundle nor a BlazePose landmark "
                                     f"model ({exc}); {FETCH_HINT}") from None
        if not bundle:
            raise ModelFileError(f"roi: detector needs a PoseLandmarker .task bundle, got {path}; "
                                 f"{FETCH_HINT}, or use roi: crop")
        from mediapipe.tasks.python import BaseOptions, vision  # deferred: MediaPipe, keeps plugin discovery light

        options = vision.PoseLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(path)),
            running_mode=vision.RunningMode.IMAGE, num_poses=1,
            min_pose_detection_confidence=self.config.min_detection_confidence,
            min_pose_presence_confidence=self.config.min_presence_confidence,
            output_segmentation_masks=False)
        return vision.PoseLandmarker.create_from_options(options)

    def landmarks(self, image: np.ndarray) -> np.ndarray | None:
        """Returns float32 [33, 3] (y, x, visibility) of BlazePose's landmarks in pixels of one uint8
        RGB image [H, W, 3], or None when no person is found."""
        import cv2  # deferred: OpenCV, keeps plugin discovery light

        h, w = image.shape[:2]
        grow = 1.0 + self.config.margin
        if self.pad_to_square:
            ph = pw = int(round(max(h, w) * grow))
        else:
            ph, pw = int(round(h * grow)), int(round(w * grow))
        top, left = (ph - h) // 2, (pw - w) // 2
        if (ph, pw) != (h, w):
            border = cv2.BORDER_REPLICATE if self.config.pad_fill == "edge" else cv2.BORDER_CONSTANT
            image = cv2.copyMakeBorder(image, top, ph - h - top, left, pw - w - left, border,
                                       value=(0, 0, 0))
        image = np.ascontiguousarray(image, np.uint8)
        if self.config.roi == "crop":
            marks, presence = self.run(lambda task: task.detect(image))
            if presence < self.config.min_presence_confidence:
                return None
        else:
            import mediapipe as mp  # deferred: MediaPipe, keeps plugin discovery light

            frame = mp.Image(image_format=mp.ImageFormat.SRGB, data=image)
            result = self.run(lambda task: task.detect(frame))
            if not result.pose_landmarks:
                return None
            marks = np.array([(m.y, m.x, m.visibility if m.visibility is not None else 1.0)
                              for m in result.pose_landmarks[0]], np.float32)
        # normalised coordinates span the image edges; pixel centres are at integers
        out = marks.copy()
        out[:, 0] = marks[:, 0] * ph - 0.5 - top
        out[:, 1] = marks[:, 1] * pw - 0.5 - left
        return out

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
        from keras_reid.keypoints import scale_keypoints  # deferred: OpenCV, keeps plugin discovery light

        out = np.full((len(paths), 18, 3), -1.0, np.float32)
        for i, p in enumerate(paths):
            image = read_image(str(p), None)
            out[i] = scale_keypoints(self(image)[0], image.shape[:2], size)
        return out
