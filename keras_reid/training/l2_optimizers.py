"""Optimisers with PyTorch's *coupled* weight decay: an L2 term added to the gradient.

``torch.optim.Adam(weight_decay=wd)`` and ``torch.optim.SGD(weight_decay=wd)`` add ``wd * w`` to
the gradient of every parameter before the update ("L2 regularisation"), so the decay of Adam
goes through the moment estimates and is divided by ``sqrt(v)`` like the gradient. Keras'
``weight_decay`` argument (and ``AdamW``) is *decoupled* (Loshchilov & Hutter): ``w -= lr * wd * w``
beside the update. Re-ID code of the deep-person-reid era (torchreid) used the coupled form on all
parameters, BatchNorm scales and biases included; these classes reproduce it.

``OptimizerConfig(weight_decay_mode="coupled")`` selects them (``keras_reid.training.optim``).
Importing this module registers both classes with Keras (package ``keras_reid``), so a saved
optimizer reloads (``keras_reid.training.reid_model`` imports it).
"""
from __future__ import annotations

from typing import Any

import keras
from keras import ops


def _with_l2(optimizer: Any, gradient: Any, variable: Any) -> Any:
    """Returns ``gradient + l2 * variable`` (in the variable's dtype) for a decayed variable,
    else the gradient cast to the variable's dtype. Decayed: every variable the optimizer
    updates unless excluded with Keras' ``exclude_from_weight_decay``."""
    gradient = ops.cast(gradient, variable.dtype)
    if optimizer.l2 and optimizer._use_weight_decay(variable):
        gradient = gradient + ops.cast(optimizer.l2, variable.dtype) * variable
    return gradient


@keras.saving.register_keras_serializable(package="keras_reid")
class AdamL2(keras.optimizers.Adam):
    """``torch.optim.Adam`` (amsgrad off) in Keras: coupled weight decay ``l2`` and PyTorch's
    placement of ``epsilon`` (default 1e-8, added to the bias-corrected ``sqrt(v_hat)``). One
    step on variable ``w`` with gradient ``g`` at step ``t``::

        g = g + l2 * w
        m = beta_1 m + (1 - beta_1) g          v = beta_2 v + (1 - beta_2) g^2
        w = w - lr / (1 - beta_1^t) * m / (sqrt(v) / sqrt(1 - beta_2^t) + epsilon)

    Gradient clipping (``clipnorm``) acts on ``g`` before the L2 term, as clipping the
    ``.grad`` of a torch model before ``optimizer.step()`` does.
    """

    def __init__(self, learning_rate: Any = 0.001, l2: float = 0.0, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-8, **kwargs: Any) -> None:
        if kwargs.get("weight_decay"):
            raise ValueError("AdamL2 decays through the gradient (l2=...); Keras' decoupled "
                             "weight_decay would decay twice")
        if kwargs.get("amsgrad"):
            raise ValueError("AdamL2 does not implement amsgrad")
        kwargs.pop("weight_decay", None)
        kwargs.pop("amsgrad", None)
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                         **kwargs)
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        self.l2 = float(l2)

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """Apply one PyTorch-Adam step with the L2 term to ``variable``; returns None."""
        dtype = variable.dtype
        gradient = _with_l2(self, gradient, variable)
        lr = ops.cast(learning_rate, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        beta_1 = ops.cast(self.beta_1, dtype)
        beta_2 = ops.cast(self.beta_2, dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - beta_2))
        denom = ops.sqrt(v) / ops.sqrt(1 - ops.power(beta_2, step)) + ops.cast(self.epsilon, dtype)
        self.assign_sub(variable, lr / (1 - ops.power(beta_1, step)) * m / denom)

    def get_config(self) -> dict:
        """Returns Adam's config plus ``l2``."""
        config = super().get_config()
        config.pop("amsgrad", None)
        config.pop("weight_decay", None)
        config["l2"] = self.l2
        return config


@keras.saving.register_keras_serializable(package="keras_reid")
class SGDL2(keras.optimizers.SGD):
    """Keras SGD (momentum, Nesterov) on ``g + l2 * w``: coupled weight decay as
    ``torch.optim.SGD(weight_decay=l2)`` applies it (the momentum update itself is Keras')."""

    def __init__(self, learning_rate: Any = 0.01, l2: float = 0.0, **kwargs: Any) -> None:
        if kwargs.get("weight_decay"):
            raise ValueError("SGDL2 decays through the gradient (l2=...); Keras' decoupled "
                             "weight_decay would decay twice")
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, **kwargs)
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        self.l2 = float(l2)

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """Apply Keras' SGD step to ``variable`` with the L2 term in the gradient; returns None."""
        super().update_step(_with_l2(self, gradient, variable), variable, learning_rate)

    def get_config(self) -> dict:
        """Returns SGD's config plus ``l2``."""
        config = super().get_config()
        config.pop("weight_decay", None)
        config["l2"] = self.l2
        return config
