"""Masker ``mediapipe_selfie``: person masks from MediaPipe's selfie segmentation model.

Runs the MediaPipe Tasks ``ImageSegmenter`` (IMAGE mode, confidence masks) with
``selfie_segmentation.tflite``, provisioned by ``keras-reid models fetch``. The model takes a
square 256x256 input; tall person crops are padded to a square first (``pad_to_square``,
edge pixels replicated) so the person is not stretched sideways, and the mask is cropped
back. It segments people well on person crops but is not a person detector: it also
'finds' people in empty scenes now and then. Use it as a context manager or call
``close()``; it is also closed when garbage-collected.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from keras_reid.mediapipe_tasks import TasksComponent
from keras_reid.registry import register


class SelfieMaskerConfig(BaseModel):
    """Parameters of the ``mediapipe_selfie`` masker."""

    model_config = ConfigDict(extra="forbid")
    threshold: float | None = Field(0.5, gt=0.0, lt=1.0, description="confidence counted as person; "
                                    "null = soft masks")
    pad_to_square: bool = Field(True, description="pad tall crops to a square before segmenting")
    model_dir: str | None = Field(None, description="model cache folder (default: the keras-reid cache)")


@register("masker", "mediapipe_selfie", config=SelfieMaskerConfig)
class SelfieMasker(TasksComponent):
    """MediaPipe selfie segmentation: uint8 RGB images -> float32 person masks [N, H, W, 1]."""

    MODEL = "selfie_segmentation.tflite"

    def __init__(self, config: SelfieMaskerConfig | None = None) -> None:
        self.config = config or SelfieMaskerConfig()

    def _create(self):
        from mediapipe.tasks.python import BaseOptions, vision

        from keras_reid.models import model_path

        options = vision.ImageSegmenterOptions(
            base_options=BaseOptions(model_asset_path=str(model_path(self.MODEL, self.config.model_dir))),
            running_mode=vision.RunningMode.IMAGE, output_confidence_masks=True,
            output_category_mask=False)
        return vision.ImageSegmenter.create_from_options(options)

    def mask(self, image: np.ndarray) -> np.ndarray:
        """float32 [H, W] person confidence (or 0/1 with a threshold) of one uint8 RGB image."""
        import mediapipe as mp

        h, w = image.shape[:2]
        top = left = 0
        if self.config.pad_to_square and h != w:
            import cv2

            side = max(h, w)
            top, left = (side - h) // 2, (side - w) // 2
            image = cv2.copyMakeBorder(image, top, side - h - top, left, side - w - left,
                                       cv2.BORDER_REPLICATE)
        frame = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image, np.uint8))
        result = self.run(lambda seg: seg.segment(frame))
        conf = np.asarray(result.confidence_masks[-1].numpy_view(), np.float32).reshape(image.shape[:2])
        conf = conf[top:top + h, left:left + w]
        if self.config.threshold is not None:
            conf = (conf >= self.config.threshold).astype(np.float32)
        return conf

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 RGB images [N, H, W, 3] -> float32 person masks [N, H, W, 1] in [0, 1]."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.dtype != np.uint8:
            raise ValueError(f"mediapipe_selfie expects uint8 images, got {images.dtype}")
        return np.stack([self.mask(img) for img in images])[..., None]

    def masks_for(self, paths: Sequence[str], size: tuple[int, int]) -> np.ndarray:
        """Masks [N, H, W, 1] of the images at ``paths`` read and resized to ``size``."""
        from keras_reid.data.gan_input import load_images

        return self(load_images(list(paths), size))
