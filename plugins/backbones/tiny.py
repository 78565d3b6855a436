"""Backbone ``tiny``: a small fast CNN with the standard re-ID outputs (tests, smoke runs, a template).

A plugin author can copy this file: a pydantic config, ``@register``, and a ``build``
method that imports Keras inside and returns a functional model with the three outputs
of the backbone contract (see ``keras_reid.interfaces.Backbone``).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from keras_reid.registry import register


class TinyConfig(BaseModel):
    """Parameters of the ``tiny`` backbone."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(32, gt=0, description="filters of the first block (doubled per block, up to 8x)")
    blocks: int = Field(4, ge=1, le=6, description="conv blocks; all but the last halve the resolution")
    batch_norm: bool = Field(True, description="BatchNormalization after each conv (false: none at all)")
    pooling: Literal["avg", "max", "gem"] = "avg"
    embedding_dim: int | None = Field(128, gt=0, description="Dense reduction after pooling (null: none)")
    bn_neck: bool | None = Field(None, description="BN-neck before the classifier (default: batch_norm)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _no_bn_means_none(self) -> "TinyConfig":
        if self.bn_neck and not self.batch_norm:
            raise ValueError("bn_neck: true needs batch_norm: true (batch_norm: false means no "
                             "BatchNormalization at all)")
        return self


@register("backbone", "tiny", config=TinyConfig)
class TinyBackbone:
    """A small fast CNN (a few conv blocks) for tests, smoke runs and as a plugin template."""

    def __init__(self, config: TinyConfig) -> None:
        self.config = config

    def trunk_layers(self, model: Any) -> list:
        """Returns the convolutional layers of a model built by :meth:`build` (``block*``), the
        part ``freeze_backbone_epochs`` freezes; the head's layers are not among them."""
        return [layer for layer in model.layers if layer.name.startswith("block")]

    def build(self, input_shape: tuple[int, int, int], num_classes: int) -> Any:
        """Returns a ``keras.Model`` float32 images [B, H, W, 3] in [0, 255] ->
        ``{"embedding": [B, D], "features": [B, D], "logits": [B, num_classes]}``."""
        import keras  # deferred: Keras, keeps plugin discovery light

        from keras_reid_plugins.backbones._head import global_pool, reid_head  # deferred: Keras, keeps plugin discovery light

        cfg = self.config
        inputs = keras.Input(tuple(int(v) for v in input_shape), name="images")
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inputs)
        for i in range(cfg.blocks):
            filters = cfg.width * 2 ** min(i, 3)
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=not cfg.batch_norm,
                                    name=f"block{i + 1}_conv")(x)
            if cfg.batch_norm:
                x = keras.layers.BatchNormalization(name=f"block{i + 1}_bn")(x)
            x = keras.layers.ReLU(name=f"block{i + 1}_relu")(x)
            if i < cfg.blocks - 1:
                x = keras.layers.MaxPooling2D(2, padding="same", name=f"block{i + 1}_pool")(x)
        pooled = global_pool(x, cfg.pooling)
        bn_neck = cfg.batch_norm if cfg.bn_neck is None else cfg.bn_neck
        return reid_head(inputs, pooled, num_classes=num_classes, embedding_dim=cfg.embedding_dim,
                         bn_neck=bn_neck, dropout=cfg.dropout, name="tiny_reid")
