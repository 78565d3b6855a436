"""A backbone's deploy form: the compact model a trained model is converted to for inference
(CondenseNet's converted model), its parity check, and the size and latency of both forms.

A backbone component offers a deploy form by having ``convert(model) -> keras.Model`` (see
:class:`keras_reid.interfaces.Backbone`). ``train_reid`` converts its inference model with it
after training (option ``convert``), checks that both give the same features and saves
``model_converted.keras`` beside ``model.keras``; the ``evaluate`` stage ranks the converted
model next to the trained one and measures both (parameters, bytes on disk, ms per image at
batch 1). Nothing here knows any particular backbone.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from keras_reid.errors import UserError
from keras_reid.forward_pass import forward

CONVERTED_FILE = "model_converted.keras"
"""``<train stage>/model_converted.keras``: the deploy form of ``model.keras``."""
TOLERANCE = 1e-4
"""Largest accepted |converted - trained| output difference, relative to the largest output
magnitude when that exceeds 1 (float32 sums in another order differ by more than 1e-4 in
absolute terms only for large outputs)."""
LATENCY_WARMUP = 3
"""Untimed calls of each model before the timed ones (tracing, allocation)."""


class ConversionError(UserError):
    """A converted model that does not compute what the trained model computes (exit code 1)."""


def converted_name(name: str) -> str:
    """The metrics.json name of the converted form of model ``name``: ``"r (converted)"``."""
    return f"{name} (converted)"


def converter(backbone: Any) -> Callable[[Any], Any] | None:
    """The ``convert(model)`` of a backbone component (an instance or its class), None when it
    has no deploy form."""
    fn = getattr(backbone, "convert", None)
    return fn if callable(fn) else None


def max_difference(a: Any, b: Any, images: np.ndarray) -> tuple[float, float]:
    """``(max |a(x) - b(x)|, max |a(x)|)`` over ``images`` (float32 [N, H, W, 3]), both models
    in inference mode; dict outputs are compared key by key."""
    out_a, out_b = a(images, training=False), b(images, training=False)
    if isinstance(out_a, Mapping):
        pairs = [(np.asarray(out_a[k], np.float64), np.asarray(out_b[k], np.float64)) for k in out_a]
    else:
        pairs = [(np.asarray(out_a, np.float64), np.asarray(out_b, np.float64))]
    diff = max(float(np.max(np.abs(x - y))) if x.size else 0.0 for x, y in pairs)
    scale = max(float(np.max(np.abs(x))) if x.size else 0.0 for x, _ in pairs)
    return diff, scale


def check_parity(trained: Any, converted: Any, images: np.ndarray, what: str) -> float:
    """Returns the largest output difference of ``converted`` and ``trained`` on ``images``;
    raises :class:`ConversionError` naming ``what`` when it exceeds :data:`TOLERANCE` (relative
    to the output scale above 1)."""
    diff, scale = max_difference(trained, converted, images)
    limit = TOLERANCE * max(1.0, scale)
    if not diff <= limit:   # also catches NaN
        raise ConversionError(
            f"{what}: the converted model's outputs differ from the trained model's by {diff:.3g} "
            f"on {len(images)} images (largest output {scale:.3g}, tolerance {limit:.3g}): the "
            "backbone's convert() is wrong for this model; report it, and set convert: false on "
            "the train_reid stage to train without the deploy form")
    return diff


def model_size(model: Any, path: str | Path | None = None) -> dict:
    """``{"params": weights in the model, "bytes": size of its file (when ``path`` is given)}``."""
    out = {"params": int(model.count_params())}
    if path is not None:
        out["bytes"] = int(Path(path).stat().st_size)
    return out


def latency_ms(models: Mapping[str, Any], image: np.ndarray, runs: int,
               warmup: int = LATENCY_WARMUP) -> dict[str, dict]:
    """Milliseconds per image at batch 1 of each model on ``image`` (float32 [1, H, W, 3]):
    ``{name: {"ms_per_image": median, "ms_min": minimum, "runs": runs, "batch": 1}}``.

    Each model runs as one compiled graph (``keras_reid.forward_pass.forward``, raw features, no
    flip: one forward pass); the models are timed round-robin, one call of each per round, so a
    change in the machine's load affects all of them alike."""
    import tensorflow as tf  # deferred: TensorFlow, the run summary (CLI) imports this module

    x = tf.constant(np.asarray(image, np.float32))
    spec = tf.TensorSpec([None, *x.shape[1:]], tf.float32)
    calls = {name: forward(model, False, spec, normalise=False) for name, model in models.items()}
    for call in calls.values():
        for _ in range(warmup):
            call(x).numpy()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call(x).numpy()
            times[name].append((time.perf_counter() - t0) * 1000.0)
    return {name: {"ms_per_image": round(float(np.median(t)), 3), "ms_min": round(float(np.min(t)), 3),
                   "runs": runs, "batch": 1} for name, t in times.items()}


def deploy_lines(models: Mapping[str, Any]) -> list[str]:
    """The printed table of the models' ``deploy`` entries (metrics.json ``models``): parameters,
    MB on disk, ms per image, and for a converted model its speed-up and parameter ratio against
    the model it was converted from. Empty when no model has one."""
    rows = {n: m["deploy"] for n, m in models.items()
            if isinstance(m, Mapping) and isinstance(m.get("deploy"), Mapping)}
    if not rows:
        return []
    runs = next((d.get("runs") for d in rows.values() if isinstance(d.get("runs"), (int, float))), None)
    width = max(len("model"), *(len(n) for n in rows)) + 2
    head = ("size and latency" + (f" (batch 1, median of {int(runs)} calls)" if runs else "") + ":")
    lines = [head, f"{'model':<{width}}{'parameters':>12}{'MB':>9}{'ms/image':>10}"]
    for name, d in rows.items():
        def num(key: str, fmt: str, scale: float = 1.0, width_: int = 9) -> str:
            v = d.get(key)
            return f"{format(v * scale, fmt):>{width_}}" if isinstance(v, (int, float)) else f"{'-':>{width_}}"
        line = (f"{name:<{width}}" + num("params", ",.0f", width_=12)
                + num("bytes", ".2f", 1e-6) + num("ms_per_image", ".2f", width_=10))
        base = rows.get((models.get(name) or {}).get("converted_from"))
        if base:
            notes = []
            if isinstance(base.get("ms_per_image"), (int, float)) and d.get("ms_per_image"):
                notes.append(f"{base['ms_per_image'] / d['ms_per_image']:.2f}x as fast")
            if isinstance(base.get("params"), (int, float)) and base["params"]:
                notes.append(f"{d['params'] / base['params']:.2f}x the parameters")
            line += "   " + ", ".join(notes) if notes else ""
        lines.append(line)
    return lines
