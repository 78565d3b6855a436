"""Training: the strategy-aware loop, checkpoints, callbacks, models, optimizers and schedules.

The names below are loaded lazily (PEP 562) so that importing a light submodule such as
``keras_reid.training.optim`` for recipe validation does not import TensorFlow.

* ``train(model, dataset_fn, *, strategy, epochs, steps_per_epoch, ...)``: the one loop.
* ``build_optimizers(model, strategy)``, ``model_optimizers(model)``, ``learning_rates(model)``.
* ``EpochCheckpoint(ckpt_dir, max_to_keep)``, ``restore_latest(model, ckpt_dir)``,
  ``latest_checkpoint(ckpt_dir)``.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "train": "keras_reid.training.loop",
    "build_optimizers": "keras_reid.training.loop",
    "model_optimizers": "keras_reid.training.loop",
    "learning_rates": "keras_reid.training.loop",
    "EpochCheckpoint": "keras_reid.training.checkpoint",
    "restore_latest": "keras_reid.training.checkpoint",
    "latest_checkpoint": "keras_reid.training.checkpoint",
    "make_checkpoint": "keras_reid.training.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first access; returns the attribute."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'keras_reid.training' has no attribute '{name}'")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
