"""Backbone ``condensenet``: CondenseNet (Huang et al. 2018) with learned group convolutions.

Dense blocks of layers BN-ReLU-LearnedGroupConv 1x1 (``bottleneck`` x growth channels, G
groups, condensation factor C) then BN-ReLU-3x3 group conv (G groups) to ``growth`` channels,
concatenated to the block's input; 2x2 average pooling between blocks; a 3x3 stride-2 stem
conv to 2 x growth[0] channels; final BN-ReLU, pooling and the BN-neck re-ID head of the other
backbones, whose bias-free classifier also condenses (keeps ``classifier_keep`` of its inputs).

Presets (``preset``; ``stages``/``growth`` override them): ``condensenet74`` = the paper's
ImageNet CondenseNet-74 (stages 4-6-8-10-8, growth 8-16-32-64-128; use C = G = 4, or 8 for the
paper's smaller variant), ``small`` = stages 2-2-2, growth 4-8-16 for tests and smoke runs.

Condensation is driven by the layers themselves (no callback, no stage change): set
``condense_steps`` to the total number of training steps (epochs x steps per epoch) and the
C - 1 condensations happen in the training steps at fractions 1/(2(C-1)), 2/(2(C-1)), ...,
1/2 of it, the group lasso acting in the stage before the last one; 0 (the default) leaves the
network dense until :meth:`CondenseNetBackbone.condense` is called. See
``keras_reid_plugins.backbones._condensenet_model`` for the details (grouping: output channel
o belongs to group o mod G).

:meth:`CondenseNetBackbone.convert` returns the inference model computing the same outputs:
the learned 1x1 convs of all but the last dense block as plain convolutions with the gathers,
shuffles and BatchNorms folded into (block-sparse) weights, the last block's compact (per-group
gather + 1x1 conv); the 3x3 group convs of the first two blocks as block-diagonal plain
convolutions, the later ones as TensorFlow's own grouped convolution; the classifier's inputs
gathered. The layout was chosen by measurement (``tools/bench_condensenet_layout.py``,
``tools/bench_backbones.py``). It is the backbone's deploy form
(``keras_reid.deploy``): ``train_reid`` saves it as ``model_converted.keras`` after training and
``evaluate`` reports it beside the trained model, with both forms' size and latency. A process that loads a saved CondenseNet ``.keras`` file must import
``keras_reid_plugins.backbones._condensenet_model`` first (or use :func:`load_model`).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from keras_reid.registry import register

#: stages (layers per dense block) and growth rates of each preset
PRESETS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "condensenet74": ((4, 6, 8, 10, 8), (8, 16, 32, 64, 128)),
    "small": ((2, 2, 2), (4, 8, 16)),
}


class CondenseNetConfig(BaseModel):
    """Parameters of the ``condensenet`` backbone."""

    model_config = ConfigDict(extra="forbid")

    preset: Literal["condensenet74", "small"] = Field(
        "condensenet74", description="condensenet74: the paper's ImageNet CondenseNet-74 "
        "(stages 4-6-8-10-8, growth 8-16-32-64-128); small: stages 2-2-2, growth 4-8-16")
    stages: list[int] | None = Field(None, min_length=1, description="layers per dense block "
                                     "(null: the preset's)")
    growth: list[int] | None = Field(None, min_length=1, description="growth rate per dense block, "
                                     "each divisible by groups (null: the preset's)")
    groups: int = Field(4, ge=1, description="groups G of the learned 1x1 and the 3x3 group convs")
    condense_factor: int = Field(4, ge=1, description="condensation factor C: each group of a "
                                 "learned 1x1 conv finally keeps 1/C of its inputs")
    bottleneck: int = Field(4, ge=1, description="width of the learned 1x1 conv, x growth")
    condense_steps: int | None = Field(None, ge=0, description="total training steps driving the "
                                       "schedule; the C-1 condensations happen over the first half of "
                                       "them. null: the length of the run (train_reid fills in epochs x "
                                       "steps per epoch); 0: no automatic condensation (call condense())")
    group_lasso: float = Field(1e-5, ge=0.0, description="weight of the group-lasso loss, active "
                               "in the stage before the last condensation (0: none)")
    classifier_keep: float = Field(0.5, gt=0.0, le=1.0, description="fraction of its inputs the "
                                   "classifier keeps (largest L1 norm) at the last condensation")
    pooling: Literal["avg", "max", "gem"] = "avg"
    embedding_dim: int | None = Field(None, gt=0, description="optional Dense reduction before the neck")
    bn_neck: bool = Field(True, description="BatchNorm (no bias) between embedding and classifier")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the classifier")

    @model_validator(mode="after")
    def _consistent(self) -> "CondenseNetConfig":
        stages, growth = self.layout()
        if len(stages) != len(growth):
            raise ValueError(f"stages {stages} and growth {growth} must have the same length")
        if any(s < 1 for s in stages) or any(k < 1 for k in growth):
            raise ValueError("stages and growth must be positive")
        bad = [k for k in growth if k % self.groups]
        if bad:
            raise ValueError(f"growth rates {bad} are not divisible by groups {self.groups}")
        if 0 < (self.condense_steps or 0) < 2 * max(self.condense_factor - 1, 1):
            raise ValueError(f"condense_steps must be 0 or at least 2 x (condense_factor - 1) = "
                             f"{2 * (self.condense_factor - 1)}")
        return self

    def layout(self) -> tuple[list[int], list[int]]:
        """(stages, growth) after applying the preset."""
        stages, growth = PRESETS[self.preset]
        return (list(self.stages) if self.stages is not None else list(stages),
                list(self.growth) if self.growth is not None else list(growth))


@register("backbone", "condensenet", config=CondenseNetConfig)
class CondenseNetBackbone:
    """CondenseNet (learned group convolutions, condensation, compact converted form)."""

    def __init__(self, config: CondenseNetConfig) -> None:
        self.config = config

    def build(self, input_shape: tuple[int, int, int], num_classes: int) -> Any:
        """Returns the trainable (masked) ``keras.Model`` float32 images [B, H, W, 3] in [0, 255] ->
        ``{"embedding": [B, D], "features": [B, D], "logits": [B, num_classes]}`` (D = the final
        channel count, or ``embedding_dim``)."""
        from keras_reid_plugins.backbones._condensenet_model import build_condensenet  # deferred: Keras, keeps plugin discovery light

        if int(input_shape[-1]) != 3:
            raise ValueError(f"condensenet expects 3-channel images, got input shape {tuple(input_shape)}")
        stages, growth = self.config.layout()
        return build_condensenet(self.config, input_shape, num_classes, stages=stages, growth=growth)

    def configure_training(self, total_steps: int) -> str | None:
        """Called by ``train_reid`` before :meth:`build` with the run's length: an unset
        ``condense_steps`` becomes ``total_steps`` (0 when the run is too short to condense).
        Returns a line for the log, or None when nothing changed."""
        if self.config.condense_steps is not None:
            return None
        least = 2 * max(self.config.condense_factor - 1, 1)
        steps = int(total_steps) if total_steps >= least else 0
        self.config = self.config.model_copy(update={"condense_steps": steps})
        if not steps:
            return (f"condensenet: the run has {total_steps} steps, fewer than the {least} the "
                    "condensation schedule needs: training without condensation")
        return (f"condensenet: {self.config.condense_factor - 1} condensation(s) over the first "
                f"{steps // 2} of {steps} steps")

    def condense(self, model: Any, classifier: bool | None = None) -> int:
        """One manual condensation of every learned layer of ``model`` (see
        ``_condensenet_model.condense_all``); returns the condensations done so far."""
        from keras_reid_plugins.backbones._condensenet_model import condense_all  # deferred: Keras, keeps plugin discovery light

        return condense_all(model, classifier)

    def load(self, path: str) -> Any:
        """Returns the saved model at ``path`` (CondenseNet layers registered first)."""
        return load_model(path)

    def convert(self, model: Any, layout: str | list[str] | None = None) -> Any:
        """Returns the compact inference ``keras.Model`` of ``model`` (built by :meth:`build`,
        any number of condensations done) with the same outputs in inference mode. ``layout``:
        how each dense block runs, ``dense`` / ``native`` / ``split_native`` / ``split`` /
        ``grouped`` or a list with one per block (None: the measured default, dense for the
        first two blocks, split_native for the last two, native between; see
        ``_condensenet_model``)."""
        from keras_reid_plugins.backbones._condensenet_model import convert_model  # deferred: Keras, keeps plugin discovery light

        stages, growth = self.config.layout()
        return convert_model(self.config, model, stages=stages, growth=growth, layout=layout)


def load_model(path: str) -> Any:
    """Loads a saved CondenseNet model (trained or converted form; its layers registered first)."""
    import keras  # deferred: Keras, keeps plugin discovery light

    from keras_reid_plugins.backbones import _condensenet_model  # noqa: F401  # deferred: Keras; importing registers layers

    return keras.saving.load_model(path, compile=False)
