"""Declarative image transforms for recipes, built with albumentations.

A recipe lists transforms as mappings with a ``type``::

    augment:
      - {type: flip, p: 0.5}
      - {type: pad_crop, pad: 10, fill: zero}
      - {type: random_translate, p: 0.5, scale: 1.125}
      - {type: color_jitter, brightness: 0.2, contrast: 0.15, saturation: 0.1, hue: 0.0, p: 0.5}
      - {type: random_erasing, p: 0.5, scale: [0.02, 0.4], ratio: [0.3, 3.3], fill: random}

Resizing is not a transform: the input pipeline resizes to the recipe's image size before
the transforms run, and every transform keeps that size. Transforms work on uint8 RGB
[H, W, 3] images. :func:`apply_transforms` seeds every transform of a Compose from one
per-example seed, so results do not depend on thread scheduling.
"""
from __future__ import annotations

import os
import queue
import random
from typing import TYPE_CHECKING, Annotated, Any, Iterable, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from keras_reid.errors import RecipeError

if TYPE_CHECKING:  # pragma: no cover
    import albumentations

IMAGENET_MEAN_PIXEL = (123.675, 116.28, 103.53)
"""Per-channel ImageNet mean in 0..255 RGB, the fill of ``random_erasing`` with ``fill: mean``."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FlipSpec(_Spec):
    """Horizontal mirror with probability ``p``."""

    type: Literal["flip"] = "flip"
    p: float = Field(0.5, ge=0, le=1)


class PadCropSpec(_Spec):
    """Pad ``pad`` pixels on every side (zeros or a reflection) and crop back at a random place."""

    type: Literal["pad_crop"] = "pad_crop"
    pad: int = Field(10, ge=0)
    fill: Literal["zero", "reflect"] = "zero"
    p: float = Field(1.0, ge=0, le=1)


class RandomTranslateSpec(_Spec):
    """deep-person-reid's (torchreid's) ``Random2DTranslation``: with probability ``p`` enlarge the
    image ``scale`` times (bilinear, sides rounded) and crop a random window of the original size;
    otherwise leave it as it is."""

    type: Literal["random_translate"] = "random_translate"
    p: float = Field(0.5, ge=0, le=1)
    scale: float = Field(1.125, ge=1.0, le=2.0)


class ColorJitterSpec(_Spec):
    """Random brightness/contrast/saturation factors in [1-x, 1+x] and hue shift in [-hue, hue]."""

    type: Literal["color_jitter"] = "color_jitter"
    brightness: float = Field(0.2, ge=0, le=1)
    contrast: float = Field(0.15, ge=0, le=1)
    saturation: float = Field(0.1, ge=0, le=1)
    hue: float = Field(0.0, ge=0, le=0.5)
    p: float = Field(0.5, ge=0, le=1)


class RandomErasingSpec(_Spec):
    """Random erasing (Zhong et al. 2020): a rectangle of ``scale`` x area and aspect ``ratio``
    filled with noise (``random``), the ImageNet mean pixel (``mean``) or zeros."""

    type: Literal["random_erasing"] = "random_erasing"
    p: float = Field(0.5, ge=0, le=1)
    scale: tuple[float, float] = (0.02, 0.4)
    ratio: tuple[float, float] = (0.3, 3.3)
    fill: Literal["random", "mean", "zero"] = "random"

    @model_validator(mode="after")
    def _ranges(self) -> "RandomErasingSpec":
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale must be 0 < low <= high <= 1, got {list(self.scale)}")
        lo, hi = self.ratio
        if not 0 < lo <= hi:
            raise ValueError(f"ratio must be 0 < low <= high, got {list(self.ratio)}")
        return self


TransformSpec = Annotated[
    Union[FlipSpec, PadCropSpec, RandomTranslateSpec, ColorJitterSpec, RandomErasingSpec],
    Field(discriminator="type")]
"""One transform of a recipe's ``augment`` list (discriminated on ``type``)."""

_SPEC_LIST = TypeAdapter(list[TransformSpec])


def parse_specs(specs: Iterable[Any] | None) -> list[BaseModel]:
    """Return validated spec models for a list of spec models or plain mappings.

    Raises RecipeError (one line: index, key, problem) for an invalid entry.
    """
    items = [s.model_dump() if isinstance(s, BaseModel) else s for s in (specs or [])]
    try:
        return _SPEC_LIST.validate_python(items)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise RecipeError(
            f"invalid transform at augment.{loc}: {first['msg']} (types: flip, pad_crop, "
            f"random_translate, color_jitter, random_erasing)") from None


def _albumentation(spec: BaseModel, height: int, width: int):
    import cv2  # deferred: OpenCV, recipe validation imports this module for the transform specs

    A = _albumentations()
    if isinstance(spec, FlipSpec):
        return A.HorizontalFlip(p=spec.p)
    if isinstance(spec, PadCropSpec):
        border = cv2.BORDER_CONSTANT if spec.fill == "zero" else cv2.BORDER_REFLECT_101
        return A.Sequential([
            A.PadIfNeeded(min_height=height + 2 * spec.pad, min_width=width + 2 * spec.pad,
                          border_mode=border, fill=0),
            A.RandomCrop(height=height, width=width),
        ], p=spec.p)
    if isinstance(spec, RandomTranslateSpec):
        return A.Sequential([
            A.Resize(height=int(round(height * spec.scale)), width=int(round(width * spec.scale)),
                     interpolation=cv2.INTER_LINEAR),
            A.RandomCrop(height=height, width=width),
        ], p=spec.p)
    if isinstance(spec, ColorJitterSpec):
        return A.ColorJitter(brightness=spec.brightness, contrast=spec.contrast,
                             saturation=spec.saturation, hue=spec.hue, p=spec.p)
    if isinstance(spec, RandomErasingSpec):
        fill = {"random": "random", "mean": IMAGENET_MEAN_PIXEL, "zero": 0}[spec.fill]
        return A.Erasing(scale=spec.scale, ratio=spec.ratio, fill=fill, p=spec.p)
    raise TypeError(f"unknown transform spec {spec!r}")  # pragma: no cover


def _albumentations():
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import
    import albumentations  # deferred: albumentations, recipe validation reads only the specs

    return albumentations


def build_transforms(specs: Iterable[Any] | None, height: int, width: int
                     ) -> "albumentations.Compose | None":
    """Return an albumentations Compose for ``specs`` at ``height`` x ``width`` (None if empty).

    ``specs`` are spec models or mappings with a ``type`` (validated here).
    """
    parsed = parse_specs(specs)
    if not parsed:
        return None
    A = _albumentations()
    return A.Compose([_albumentation(s, height, width) for s in parsed])


def _nodes(node) -> list:
    """Return ``node`` and every transform below it, depth first."""
    from albumentations.core.composition import BaseCompose  # deferred: albumentations, as above

    out = [node]
    if isinstance(node, BaseCompose):
        for child in node.transforms:
            out.extend(_nodes(child))
    return out


def example_seed(seed: int, epoch: int, position: int) -> np.random.SeedSequence:
    """Return the SeedSequence of one example: a function of (seed, epoch, position) only."""
    return np.random.SeedSequence([int(seed), int(epoch), int(position), 0x7A5F])


def apply_transforms(compose, image: np.ndarray, seed: int, epoch: int, position: int,
                     nodes: list | None = None) -> np.ndarray:
    """Return ``compose`` applied to one uint8 [H, W, 3] image, seeded by (seed, epoch, position).

    All transforms inside the Compose draw, one after the other, from one pair of random
    generators made from the example's SeedSequence (albumentations' ``set_random_seed``
    would give each transform the same seed, so two transforms with the same probability
    would always fire together). The result depends only on the image and the three numbers.
    ``nodes`` is ``_nodes(compose)``, passed by callers that cache it.
    """
    ss = example_seed(seed, epoch, position)
    py_random = random.Random(int(ss.generate_state(1, np.uint64)[0]))
    generator = np.random.Generator(np.random.PCG64(ss))
    for node in nodes if nodes is not None else _nodes(compose):
        node.py_random = py_random
        node.random_generator = generator
    return compose(image=image)["image"]


class SeededTransforms:
    """A thread-safe callable applying the specs' transforms, seeded per example.

    ``__call__(image, seed, epoch, position)`` returns the transformed uint8 image. tf.data's
    parallel map calls it from several threads at once; each call borrows a Compose from a
    pool (building one when none is free) and gives it back, so no Compose is used by two
    threads at a time. A pool rather than ``threading.local``: ``tf.numpy_function`` runs
    Python on TensorFlow's own threads with a fresh Python thread state per call, which would
    throw the thread-local Compose away after every image.
    """

    def __init__(self, specs: Iterable[Any] | None, height: int, width: int) -> None:
        self.specs = parse_specs(specs)
        self.height, self.width = int(height), int(width)
        self._pool: queue.SimpleQueue = queue.SimpleQueue()
        self.built = 0

    def __bool__(self) -> bool:
        return bool(self.specs)

    def _borrow(self) -> tuple[Any, list]:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            compose = build_transforms(self.specs, self.height, self.width)
            self.built += 1
            return compose, _nodes(compose)

    def __call__(self, image: np.ndarray, seed: int, epoch: int, position: int) -> np.ndarray:
        item = self._borrow()
        try:
            out = apply_transforms(item[0], image, seed, epoch, position, item[1])
        finally:
            self._pool.put(item)
        return np.ascontiguousarray(out, dtype=np.uint8)
