"""Semantic filter ``face``: the best MediaPipe face-detection score of each image.

Uses the MediaPipe Tasks ``FaceDetector`` (IMAGE mode) with one of the BlazeFace models
provisioned by ``keras-reid models fetch``: ``full_range`` (face_detection_full_range_sparse,
192x192 input, made for small faces) or ``short_range`` (128x128 input, faces that fill
much of the picture). The Tasks detector letterboxes the whole image into that input.

The filter gives the detector the whole image by default (``crop: full``, threshold 0.55).
Measured on 208 hand-labelled real pedestrian crops (Market-1501, DukeMTMC-reID and MSMT17
crops, Market-1501 raw frames, PETS 2009 footage; ``tools/face_filter_real.py``), the
full-range model on the whole crop at 0.55 finds 79% of the visible faces at 128x64 and
accepts 20% of the back views (82% / 14% at the crops' native sizes), the best balanced
accuracy of all settings tried. The top square of the crop (``crop: top``; ``auto``: the top
square of crops taller than 1.5x their width, the former default, tuned on synthetic faces,
where it separates fronts from backs best) found only a third of the real faces, the top third
no more, and the short-range model was worse everywhere. Real faces in 128x64 crops are about
10 pixels tall: expect about one face in five missed and some backs of heads taken for faces.
``upscale`` resizes the detector input first (cubic); it did not help on real crops.
``min_face_size`` drops boxes smaller than that many pixels (in the original image). The
filter holds a native detector: use it as a context manager or call ``close()``; it is also
closed when garbage-collected.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from keras_reid.mediapipe_tasks import TasksComponent
from keras_reid.model_files import model_path
from keras_reid.registry import register

MODEL_FILES = {"full_range": "face_detection_full_range_sparse.tflite",
               "short_range": "face_detection_short_range.tflite"}


class FaceConfig(BaseModel):
    """Parameters of the face filter."""

    model_config = ConfigDict(extra="forbid")
    model: Literal["full_range", "short_range"] = Field(
        "full_range", description="BlazeFace model: full_range (small faces) or short_range")
    threshold: float = Field(0.55, ge=0.0, le=1.0,
                             description="minimum detection confidence; weaker faces score 0")
    min_face_size: int = Field(0, ge=0, description="ignore faces whose box is smaller (pixels)")
    crop: Literal["auto", "full", "top"] = Field(
        "full", description="full: the whole image (best on real crops); top: the top square "
                            "(where the head is); auto: top square of tall person crops, else "
                            "the whole image (the setting tuned on synthetic faces)")
    upscale: int = Field(1, ge=1, le=8, description="resize the detector input by this factor "
                                                    "first (cubic); rarely useful")
    model_dir: str | None = Field(None, description="model cache folder (default: the keras-reid "
                                                    "cache, see `keras-reid models list`)")


@register("filter", "face", config=FaceConfig)
class FaceFilter(TasksComponent):
    """MediaPipe face detector: images -> best face score in [0, 1] (0 without a face)."""

    def __init__(self, config: FaceConfig | None = None):
        self.config = config or FaceConfig()

    def model_file(self):
        """Returns the path of the detector model in the cache (ModelFileError if missing)."""
        return model_path(MODEL_FILES[self.config.model], self.config.model_dir)

    def _create(self):
        from mediapipe.tasks.python import BaseOptions, vision  # deferred: MediaPipe, keeps plugin discovery light

        path = self.model_file()
        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_path=str(path)),
            running_mode=vision.RunningMode.IMAGE,
            min_detection_confidence=float(self.config.threshold))
        return vision.FaceDetector.create_from_options(options)

    # -- scoring
    def region(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of the part of an image of ``shape`` given to the detector."""
        h, w = int(shape[0]), int(shape[1])
        mode = self.config.crop
        if mode == "auto":
            mode = "top" if h >= 1.5 * w else "full"
        if mode == "top":
            return 0, min(h, w), 0, w
        return 0, h, 0, w

    def detect(self, image: np.ndarray) -> list[tuple[float, tuple[int, int, int, int]]]:
        """Faces of one RGB uint8 image [H, W, 3]: [(score, (x, y, w, h) in image pixels)],
        best first, after the threshold and ``min_face_size``."""
        import mediapipe as mp  # deferred: MediaPipe, keeps plugin discovery light

        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"face filter expects RGB images [H, W, 3], got shape {image.shape}")
        y0, y1, x0, x1 = self.region(image.shape)
        part = image[y0:y1, x0:x1]
        k = self.config.upscale
        if k > 1:
            import cv2  # deferred: OpenCV, keeps plugin discovery light

            part = cv2.resize(part, (part.shape[1] * k, part.shape[0] * k),
                              interpolation=cv2.INTER_CUBIC)
        part = np.ascontiguousarray(part, dtype=np.uint8)
        result = self.run(lambda det: det.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=part)))
        faces = []
        for d in result.detections:
            score = float(d.categories[0].score) if d.categories else 0.0
            b = d.bounding_box
            box = (x0 + b.origin_x // k, y0 + b.origin_y // k, b.width // k, b.height // k)
            if score < self.config.threshold or min(box[2], box[3]) < self.config.min_face_size:
                continue
            faces.append((score, box))
        return sorted(faces, key=lambda f: -f[0])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 RGB images [N, H, W, 3] -> float32 [N]: best face score (0 when none)."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.dtype != np.uint8:
            raise ValueError(f"face filter expects uint8 images, got {images.dtype}")
        scores = np.zeros(len(images), np.float32)
        for i, img in enumerate(images):
            faces = self.detect(img)
            scores[i] = faces[0][0] if faces else 0.0
        return scores
