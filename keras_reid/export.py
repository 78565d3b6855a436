"""Export a trained re-ID model for serving: TensorFlow SavedModel, TFLite (LiteRT) or ONNX.

The exported graph is the whole feature extractor of :mod:`keras_reid.inference`: float32 RGB
images [N, H, W, 3] in [0, 255] at the model's size -> L2-normalised features [N, D] (averaged
with the mirrored image when the model's preprocessing says so), so a served model returns the
features ``keras-reid extract`` and the evaluate stage compute. Resizing stays outside (see the
``.preprocessing.json`` record written beside the export). Backbones with a compact inference
form (``convert(model)``, e.g. CondenseNet's index gather + grouped convolutions) are exported in
that form. Keras' own ``Model.export`` writes every format; ONNX needs ``pip install
'keras-reid[onnx]'`` (tf2onnx to convert, onnxruntime to check).

Every export is checked before it is published: the exported file and the Keras model embed the
same sample batch, and a maximum absolute difference above :data:`TOLERANCE` fails the export.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from keras_reid import io
from keras_reid.errors import InputError, UserError
from keras_reid.inference import FeatureExtractor, ImageRecord, Preprocessing, record_path
from keras_reid.registry import REGISTRY

FORMATS = ("savedmodel", "tflite", "onnx")
TOLERANCE = 1e-3
"""Largest accepted |exported - Keras| feature difference on the sample batch."""
ONNX_EXTRA = "pip install 'keras-reid[onnx]'"


class ExportError(UserError):
    """An export that failed its parity check or could not be converted (exit code 1)."""


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and measured."""

    path: Path
    format: str
    record: Path
    max_abs_diff: float
    sample_images: int
    compact: str | None
    """How the backbone was converted for export (its ``convert()``, with the parameter counts),
    None when it was exported as trained."""


def missing_onnx_packages() -> list[str]:
    """The packages of the ``onnx`` extra that are not installed (tf2onnx, onnxruntime)."""
    return [m for m in ("tf2onnx", "onnxruntime") if importlib.util.find_spec(m) is None]


def extractor_model(extractor: FeatureExtractor, model=None):
    """A functional ``keras.Model``: images [N, H, W, 3] in [0, 255] -> the extractor's
    features (flip average, L2 normalisation) of ``model`` (default: the extractor's model)."""
    import keras  # deferred: Keras, the CLI imports this module

    net = model if model is not None else extractor.model
    h, w = extractor.image_size
    images = keras.Input((h, w, 3), name="images")
    f = net(images)
    if extractor.preprocessing.flip:
        f = f + net(keras.ops.flip(images, axis=2))
    f = keras.ops.cast(f, "float32")
    features = f / keras.ops.maximum(keras.ops.sqrt(keras.ops.sum(f * f, axis=1, keepdims=True)), 1e-12)
    return keras.Model(images, features, name="reid_features")


def compact_model(extractor: FeatureExtractor, registry=None):
    """``(model, note)``: the backbone's compact inference form of the extractor's model when its
    backbone component has ``convert(model)``, else ``(the model, None)``."""
    spec = extractor.preprocessing.backbone
    if not spec or extractor.preprocessing.converted:   # none, or already the deploy form
        return extractor.model, None
    factory = (registry or REGISTRY).create("backbone", spec)
    convert = getattr(factory, "convert", None)
    if not callable(convert):
        return extractor.model, None
    compact = convert(extractor.model)
    before, after = extractor.model.count_params(), compact.count_params()
    return compact, (f"{spec.get('type')}: exported in its converted inference form "
                     f"(backbone convert(); {before:,} parameters trained, {after:,} exported)")


def sample_batch(extractor: FeatureExtractor, images: list[str] | None = None, n: int = 8,
                 seed: int = 0) -> np.ndarray:
    """float32 [n, H, W, 3] in [0, 255]: the given image files read as the extractor reads them,
    else ``n`` seeded random images."""
    h, w = extractor.image_size
    if images:
        from keras_reid.data.pipeline import eval_dataset  # deferred: TensorFlow, the CLI imports this module

        batch = next(iter(eval_dataset([ImageRecord(p) for p in images[:n]], image_size=(h, w),
                                       batch_size=n)))
        return np.asarray(batch, np.float32)
    return np.random.default_rng(seed).uniform(0, 255, (n, h, w, 3)).round().astype(np.float32)


def run_exported(path: Path, fmt: str, images: np.ndarray) -> np.ndarray:
    """Features of ``images`` computed by the exported artefact at ``path`` (its own runtime:
    TensorFlow for a SavedModel, the TFLite interpreter, onnxruntime)."""
    if fmt == "savedmodel":
        import tensorflow as tf  # deferred: TensorFlow, the CLI imports this module

        loaded = tf.saved_model.load(str(path))   # kept alive while its function runs
        return np.asarray(loaded.serve(tf.constant(images)))
    if fmt == "tflite":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # tf.lite.Interpreter's move-to-LiteRT notice
            try:
                from ai_edge_litert.interpreter import Interpreter  # deferred: LiteRT, for TFLite only
            except ImportError:
                import tensorflow as tf  # deferred: TensorFlow, the CLI imports this module

                Interpreter = tf.lite.Interpreter
            interpreter = Interpreter(model_path=str(path))
        runner = interpreter.get_signature_runner()
        name = next(iter(interpreter.get_signature_list().values()))["inputs"][0]
        return np.asarray(next(iter(runner(**{name: images}).values())))
    import onnxruntime as ort  # deferred: onnxruntime, optional extra [onnx]

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: images})[0])


@contextlib.contextmanager
def _quiet_native():
    """Silences absl/TensorFlow logging of the converters (their INFO chatter) while exporting."""
    loggers = [logging.getLogger(n) for n in ("absl", "tensorflow", "tf2onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_model(extractor: FeatureExtractor, out: str | os.PathLike, fmt: str, *,
                 sample_images: list[str] | None = None, registry=None,
                 tolerance: float = TOLERANCE) -> ExportResult:
    """Exports ``extractor`` to ``out`` in ``fmt`` (savedmodel: a folder; tflite, onnx: a file),
    checks the export against the Keras model on a sample batch and only then moves it into
    place, with the preprocessing record beside it; returns an :class:`ExportResult`.

    Raises InputError for an unknown format or a missing ONNX extra, ExportError when the
    converter fails or the features differ by more than ``tolerance``."""
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "onnx" and missing_onnx_packages():
        raise InputError(f"ONNX export needs {' and '.join(missing_onnx_packages())}: {ONNX_EXTRA}")
    out = Path(os.path.expanduser(str(out)))
    reference = extractor_model(extractor)
    compact, note = compact_model(extractor, registry)
    exported = extractor_model(extractor, compact) if compact is not extractor.model else reference
    batch = sample_batch(extractor, sample_images)
    want = np.asarray(reference(batch, training=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        target = tmp / ("model" if fmt == "savedmodel" else out.name)
        keras_format = {"savedmodel": "tf_saved_model", "tflite": "litert", "onnx": "onnx"}[fmt]
        try:
            with _quiet_native():
                exported.export(str(target), format=keras_format, verbose=False)
        except Exception as exc:   # noqa: BLE001 - a converter's failure, reported in one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise ExportError(f"the {fmt} converter failed on {extractor.path}: {first}") from None
        got = run_exported(target, fmt, batch)
        diff = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
        if not diff <= tolerance:
            shape = "" if got.shape == want.shape else f" (shape {got.shape}, expected {want.shape})"
            raise ExportError(f"the {fmt} export's features differ from the Keras model's by {diff:.3g}"
                              f"{shape} on {len(batch)} sample images, above the limit {tolerance:g}; "
                              "nothing was written")
        _publish(target, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    pre = replace(extractor.preprocessing, stage=extractor.stage or extractor.preprocessing.stage)
    record = _write_record(out, fmt, pre)
    return ExportResult(out, fmt, record, diff, len(batch), note)


def export_record_path(out: Path, fmt: str) -> Path:
    """Where an export's preprocessing record goes: inside a SavedModel folder, else beside the file."""
    return out / "preprocessing.json" if fmt == "savedmodel" else record_path(out)


def _write_record(out: Path, fmt: str, pre: Preprocessing) -> Path:
    data = pre.to_json()
    data["exported"] = {
        "format": fmt,
        "input": f"float32 [N, {pre.image_size[0]}, {pre.image_size[1]}, 3], RGB in [0, 255], resized "
                 f"to that size as 'resize' says (the export does not resize)",
        "output": "float32 [N, D] features, already "
                  + ("flip-averaged and " if pre.flip else "") + "L2-normalised",
    }
    return io.write_json(export_record_path(out, fmt), data)


def _publish(src: Path, out: Path) -> None:
    """Moves ``src`` over ``out`` (a file, or a folder that replaces an older export)."""
    if out.is_dir() and not src.is_dir():
        raise InputError(f"{out} is a folder; give a file name for this format, e.g. {out / 'model'}")
    if src.is_dir() and out.exists():
        if not out.is_dir():
            raise InputError(f"{out} is a file; a SavedModel is a folder: give another --out")
        old = out.with_name(f".tmp-old-{out.name}-{os.getpid()}")
        os.replace(out, old)
        os.replace(src, out)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(src, out)
