"""Features of a trained re-ID model, with the preprocessing it was trained with.

The one feature-extraction path of the project: the ``evaluate`` stage, ``keras-reid
extract/search/evaluate/export`` and :func:`load_model` all embed images through
:func:`extract_features` (image files) or :meth:`FeatureExtractor.__call__` (files or arrays),
so a feature computed here equals the one the evaluation ranked.

Preprocessing (the contract every backbone follows, recorded beside the model)
    RGB, float32 in [0, 255], resized to the model's (height, width) with TensorFlow's bilinear,
    antialiased resize and rounded to uint8 (only when the size differs); the backbone does its
    own normalisation inside the model. Features: the model's ``features`` output, averaged with
    that of the mirrored image (``flip``), L2-normalised.

Preprocessing record
    ``train_reid`` writes ``model.preprocessing.json`` next to ``model.keras`` (for any
    ``NAME.keras``: ``NAME.preprocessing.json``): image size, input range, flip, normalisation,
    feature size and the backbone spec (whose ``load``/``convert`` a loader may need). For models
    trained before the record existed, :func:`read_preprocessing` falls back to what the stage
    folder says (``.complete.json``'s image size, ``.config.json``'s backbone).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from keras_reid import __version__, io
from keras_reid.errors import DatasetError, InputError, UserError
from keras_reid.forward_pass import forward
from keras_reid.progress import progbar
from keras_reid.registry import REGISTRY
from keras_reid.stages.base import COMPLETE_MARKER

RECORD_SUFFIX = ".preprocessing.json"
"""``NAME.keras`` -> ``NAME.preprocessing.json`` beside it."""
RECORD_VERSION = 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
"""Image files the commands pick up in folders (any format TensorFlow decodes works as a file)."""
RESIZE = "bilinear, antialiased (tf.image.resize), rounded to uint8; only when the size differs"
MARKET_STYLE_NAME = re.compile(r"^(-?\d+)_c(\d+)(?=[s_.])")
"""Person id and camera at the start of Market-1501/DukeMTMC/CUHK03-NP names (``0002_c1s1_...``)."""


# ---------------------------------------------------------------------------------------------
# feature extraction (shared with the evaluate stage; the forward pass is keras_reid.forward_pass)


def extract_features(model, records, image_size, batch_size: int, flip: bool,
                     desc: str = "features", verbose: int = 1, normalise: bool = True) -> np.ndarray:
    """L2-normalised (``normalise``, the default; else raw) float32 features [N, D] of
    ``records`` (anything with a ``path``; mean of image and mirror if ``flip``), read with
    ``keras_reid.data.pipeline.eval_dataset``.

    The forward pass runs as one compiled ``tf.function`` per model and image size, whatever
    the batch size (eager calls of a ResNet50 are several times slower on CPU). ``verbose``:
    a progress bar (1, the default) or none (0).
    """
    import tensorflow as tf  # deferred: TensorFlow, keeps import keras_reid.inference (and the CLI) light

    from keras_reid.data.pipeline import eval_dataset  # deferred: TensorFlow, keeps import keras_reid.inference (and the CLI) light

    ds = eval_dataset(records, image_size=tuple(image_size), batch_size=batch_size)
    bar = progbar(len(records), unit_name="image") if verbose else None
    feats = []
    for images in ds:
        if isinstance(images, (tuple, list)):
            images = images[0]
        spec = tf.TensorSpec([None, *images.shape[1:]], images.dtype)
        feats.append(forward(model, flip, spec, normalise)(images).numpy())
        if bar is not None:
            bar.add(int(images.shape[0]))
    return np.concatenate(feats, 0) if feats else np.zeros((0, 1), np.float32)


def load_keras_model(path: str | os.PathLike, backbone: dict | None = None, registry=None):
    """Returns the ``keras.Model`` a train stage saved at ``path``; a backbone component with
    ``load(path)`` (``backbone``: its registry spec) loads it itself (its custom layers are
    registered in modules imported only when needed)."""
    import keras  # deferred: Keras, keeps import keras_reid.inference (and the CLI) light

    import keras_reid.layers  # noqa: F401  # deferred: Keras; registers custom layers (GeM pooling) for loading

    if backbone:
        factory = (registry or REGISTRY).create("backbone", backbone)
        if callable(getattr(factory, "load", None)):
            return factory.load(str(path))
    return keras.saving.load_model(path, compile=False)


# ---------------------------------------------------------------------------------------------
# the preprocessing record


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects and how its features are made (see the module docstring)."""

    image_size: tuple[int, int]
    flip: bool = True
    l2_normalise: bool = True
    input_range: tuple[float, float] = (0.0, 255.0)
    channels: str = "RGB"
    resize: str = RESIZE
    feature_dim: int | None = None
    backbone: dict | None = None
    stage: str | None = None
    converted: bool = False
    """The model is its backbone's deploy form (``model_converted.keras``), not to be converted again."""
    source: str = field(default="record", compare=False)
    """Where it was read: the record file, or the stage folder of a model trained before it."""

    def to_json(self) -> dict:
        out = {"version": RECORD_VERSION, "image_size": list(self.image_size),
               "channels": self.channels, "input_range": list(self.input_range),
               "resize": self.resize, "flip": self.flip, "l2_normalise": self.l2_normalise,
               "feature_dim": self.feature_dim, "backbone": self.backbone, "stage": self.stage,
               "keras_reid": __version__}
        if self.converted:   # absent otherwise: records of trained models stay as they were
            out["converted"] = True
        return out

    @classmethod
    def from_json(cls, data: dict, where: str) -> "Preprocessing":
        """Reads a record; raises InputError naming ``where`` when it is not one."""
        try:
            h, w = (int(v) for v in data["image_size"])
            lo, hi = (float(v) for v in data.get("input_range", (0, 255)))
            if data.get("channels", "RGB") != "RGB":
                raise ValueError(f"channels {data.get('channels')!r}, expected 'RGB'")
            return cls(image_size=(h, w), flip=bool(data.get("flip", True)),
                       l2_normalise=bool(data.get("l2_normalise", True)), input_range=(lo, hi),
                       resize=str(data.get("resize", RESIZE)),
                       feature_dim=data.get("feature_dim"), backbone=data.get("backbone"),
                       stage=data.get("stage"), converted=bool(data.get("converted", False)),
                       source=where)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{where} is not a keras-reid preprocessing record ({exc}); delete it "
                             "and load the model from its stage folder, or retrain the stage") from None


def record_path(model_path: str | os.PathLike) -> Path:
    """``NAME.keras`` -> ``NAME.preprocessing.json`` (same folder)."""
    p = Path(model_path)
    return p.with_name(p.stem + RECORD_SUFFIX) if p.suffix == ".keras" else p.with_name(p.name + RECORD_SUFFIX)


def write_preprocessing(model_path: str | os.PathLike, preprocessing: Preprocessing) -> Path:
    """Atomically writes the record of the model at ``model_path``; returns its path."""
    return io.write_json(record_path(model_path), preprocessing.to_json())


def read_preprocessing(model_path: str | os.PathLike) -> Preprocessing:
    """The preprocessing of the model at ``model_path``: its record, else (a model trained before
    records existed) what its train stage's folder says; raises InputError when nothing is known."""

    model_path = Path(model_path)
    record = record_path(model_path)
    if record.is_file():
        try:
            data = io.read_json(record)
        except ValueError as exc:
            raise InputError(f"{record} is not valid JSON ({exc}); delete it and load the model from "
                             "its stage folder") from None
        return Preprocessing.from_json(data if isinstance(data, dict) else {}, str(record))
    stage_dir = model_path.parent
    marker = io.read_json(stage_dir / COMPLETE_MARKER)
    summary = (marker or {}).get("summary") or {}
    if marker is not None and summary.get("image_size") and marker.get("type") in (None, "train_reid"):
        config = (io.read_json(stage_dir / ".config.json") or {}).get("config") or {}
        h, w = (int(v) for v in summary["image_size"])
        return Preprocessing(image_size=(h, w), backbone=config.get("backbone"),
                             stage=marker.get("stage"), source=str(stage_dir / COMPLETE_MARKER))
    raise InputError(f"no preprocessing record {record.name} beside {model_path}, and its folder is "
                     "not a trained train_reid stage; load the model from the run's stage folder "
                     "(e.g. runs/quickstart/baseline) or put the record it was trained with beside it")


# ---------------------------------------------------------------------------------------------
# finding the model


@dataclass(frozen=True)
class ModelLocation:
    """A resolved model: the ``.keras`` file and, when it is a run's, its stage folder."""

    path: Path
    stage: str | None = None


def _run_models(run: Path) -> list[str]:
    """Names of the trained train_reid stages of the run folder ``run`` (in folder order)."""

    out = []
    for d in sorted(p for p in run.iterdir() if p.is_dir()):
        marker = io.read_json(d / COMPLETE_MARKER)
        if marker and marker.get("type") == "train_reid" and (d / "model.keras").is_file():
            out.append(d.name)
    return out


def locate_model(path_or_run: str | os.PathLike, model: str | None = None) -> ModelLocation:
    """Resolves a ``.keras`` file, a trained stage's folder, or a run folder with ``model``
    naming the stage; raises InputError (one line, with the fix) for anything else."""
    where = Path(os.path.expanduser(str(path_or_run)))
    example = "a .keras file or a trained stage's folder (e.g. runs/quickstart/baseline)"
    if not where.exists():
        raise InputError(f"model {where} does not exist; give {example}")
    if where.is_file():
        if model:
            raise InputError(f"model={model!r} names a stage of a run folder, but {where} is a file; "
                             "drop model= or give the run folder")
        if where.suffix != ".keras":
            raise InputError(f"{where} is not a .keras file; give {example}")
        return ModelLocation(where)
    if model:
        stage_dir = where / model
        if not (stage_dir / "model.keras").is_file():
            names = _run_models(where)
            known = f"its trained models: {', '.join(names)}" if names else "it has no trained models"
            raise InputError(f"{where} has no trained model '{model}' ({known})")
        return ModelLocation(stage_dir / "model.keras", model)
    if (where / "model.keras").is_file():
        return ModelLocation(where / "model.keras", where.name)
    names = _run_models(where)
    if len(names) == 1:
        return ModelLocation(where / names[0] / "model.keras", names[0])
    if names:
        raise InputError(f"{where} is a run folder with the models {', '.join(names)}; name one: give "
                         f"{where / names[0]} (or --model {names[0]}; in Python model={names[0]!r})")
    raise InputError(f"{where} holds no model.keras and no trained stages; give {example}")


# ---------------------------------------------------------------------------------------------
# the extractor


def list_images(items: Iterable[str | os.PathLike]) -> list[str]:
    """Image files named by ``items``: files as given, folders searched recursively for
    .jpg/.jpeg/.png/.bmp (sorted). Raises InputError for a missing path or a folder without images."""
    out: list[str] = []
    for item in items:
        p = Path(os.path.expanduser(str(item)))
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder {p}; give "
                                 "image files or a folder that holds them")
            out.extend(found)
        elif p.is_file():
            out.append(str(p))
        else:
            raise InputError(f"image {p} does not exist; give image files or folders of images")
    return out


def parse_identity(path: str | os.PathLike) -> tuple[int, int]:
    """``(person id, camera)`` from a Market-style file name (``0002_c1s1_000451_03.jpg`` ->
    ``(2, 1)``), ``(-1, -1)`` when the name carries none."""
    m = MARKET_STYLE_NAME.match(Path(path).name)
    return (int(m.group(1)), int(m.group(2))) if m else (-1, -1)


@dataclass(frozen=True)
class ImageRecord:
    """An image file to embed (the ``path`` attribute is all :func:`extract_features` reads)."""

    path: str


class FeatureExtractor:
    """A trained re-ID model with the preprocessing it was trained with.

    ``extractor(images_or_paths, batch_size=64) -> np.ndarray`` float32 [N, D]: L2-normalised
    features (flip-averaged unless ``preprocessing.flip`` is False), exactly those the evaluate
    stage ranks. Attributes: ``model`` (keras.Model images -> features), ``preprocessing``,
    ``path`` (the .keras file), ``stage`` (its train stage, when known).
    """

    def __init__(self, model, preprocessing: Preprocessing, path: Path | None = None,
                 stage: str | None = None) -> None:
        self.model = model
        self.preprocessing = preprocessing
        self.path = path
        self.stage = stage

    @property
    def image_size(self) -> tuple[int, int]:
        return self.preprocessing.image_size

    @property
    def feature_dim(self) -> int:
        return int(self.model.outputs[0].shape[-1])

    def __repr__(self) -> str:
        p = self.preprocessing
        return (f"FeatureExtractor({self.path}, image_size={p.image_size}, flip={p.flip}, "
                f"features={self.feature_dim})")

    def __call__(self, images: Any, batch_size: int = 64, verbose: int = 0) -> np.ndarray:
        """Features [N, D] of ``images``: image paths (str or Path), or RGB arrays in [0, 255]
        (one [H, W, 3], a batch [N, H, W, 3], or a list of [H, W, 3] of any sizes; uint8 or float),
        resized to the model's size as image files are. ``verbose=1`` shows a progress bar.
        Raises DatasetError for an image file that cannot be read, InputError for bad arrays."""
        if batch_size <= 0:
            raise InputError(f"batch_size must be positive, got {batch_size}")
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = images[None]
        if isinstance(images, np.ndarray):
            return self._arrays(self._check_array(images, "images"), batch_size)
        items = list(images)
        if not items:
            return np.zeros((0, self.feature_dim), np.float32)
        if all(isinstance(i, (str, os.PathLike)) for i in items):
            return self.files(items, batch_size, verbose)
        if all(isinstance(i, np.ndarray) for i in items):
            arrays = [self._resized(self._check_array(a[None] if a.ndim == 3 else a, f"images[{n}]"))
                      for n, a in enumerate(items)]
            return self._arrays(np.concatenate(arrays, 0), batch_size)
        raise InputError("images must all be paths or all be arrays, not a mix; embed them in two calls")

    def files(self, paths: Sequence[str | os.PathLike], batch_size: int = 64, verbose: int = 0) -> np.ndarray:
        """Features [N, D] of the image files ``paths`` (read and resized as the evaluate stage
        reads them); raises DatasetError naming the first file that cannot be decoded."""
        from keras_reid.data.pipeline import scan_images  # deferred: TensorFlow, keeps import keras_reid.inference (and the CLI) light

        records = [ImageRecord(str(p)) for p in paths]
        _, bad = scan_images(records)
        if bad:
            raise DatasetError(f"cannot read {len(bad)} of {len(records)} images (first: {bad[0]}); "
                               "check the paths and that the files are images")
        return extract_features(self.model, records, self.image_size, batch_size,
                                self.preprocessing.flip, verbose=verbose)

    def _check_array(self, images: np.ndarray, name: str) -> np.ndarray:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise InputError(f"{name} must be RGB images [N, H, W, 3] or [H, W, 3], got shape "
                             f"{images.shape}")
        if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
            raise InputError(f"{name} must hold numbers (uint8 or float in [0, 255]), got {images.dtype}")
        if np.issubdtype(images.dtype, np.floating) and images.size and float(images.max()) <= 1.0 \
                and float(images.max()) > 0.0:
            raise InputError(f"{name} are floats in [0, 1]; the model takes RGB in [0, 255] "
                             "(multiply by 255)")
        return images

    def _resized(self, images: np.ndarray) -> np.ndarray:
        """``images`` at the model's size, resized as ``eval_dataset`` resizes image files."""
        h, w = self.image_size
        if images.shape[1:3] == (h, w):
            return images.astype(np.float32, copy=False)
        import tensorflow as tf  # deferred: TensorFlow, keeps import keras_reid.inference (and the CLI) light

        out = tf.image.resize(tf.cast(images, tf.float32), (h, w), method="bilinear", antialias=True)
        return np.round(np.clip(out.numpy(), 0.0, 255.0)).astype(np.float32)

    def _arrays(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        import tensorflow as tf  # deferred: TensorFlow, keeps import keras_reid.inference (and the CLI) light

        images = self._resized(images)
        spec = tf.TensorSpec([None, *images.shape[1:]], tf.float32)
        run = forward(self.model, self.preprocessing.flip, spec)
        feats = [run(tf.constant(images[s:s + batch_size])).numpy()
                 for s in range(0, len(images), batch_size)]
        return np.concatenate(feats, 0) if feats else np.zeros((0, self.feature_dim), np.float32)


def load_model(path_or_run: str | os.PathLike, model: str | None = None, *, flip: bool | None = None,
               registry=None) -> FeatureExtractor:
    """Returns a :class:`FeatureExtractor` for a trained re-ID model.

    ``path_or_run``: a ``.keras`` file (its ``.preprocessing.json`` record beside it), a trained
    stage's folder (``runs/quickstart/baseline``), or a run folder with ``model`` naming the
    stage (``load_model("runs/quickstart", model="baseline")``). ``flip`` overrides the recorded
    flip averaging. Raises InputError (one line, with the fix) when the model or its
    preprocessing cannot be found.

    >>> extract = load_model("runs/quickstart/baseline")
    >>> feats = extract(["a.jpg", "b.jpg"])            # float32 [2, D], L2-normalised
    """
    where = locate_model(path_or_run, model)
    pre = read_preprocessing(where.path)
    if flip is not None:
        pre = replace(pre, flip=bool(flip))
    if not pre.l2_normalise:
        raise UserError(f"{pre.source}: l2_normalise false is not supported by this keras-reid; "
                        "features are always L2-normalised")
    try:
        net = load_keras_model(where.path, pre.backbone, registry)
    except (ValueError, OSError, TypeError) as exc:
        raise InputError(f"cannot load {where.path} as a Keras model ({str(exc).splitlines()[0][:200]}); "
                         "give the model.keras a train_reid stage wrote") from None
    return FeatureExtractor(net, pre, where.path, where.stage or pre.stage)
