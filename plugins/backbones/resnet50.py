"""Backbone ``resnet50``: Keras' ResNet-50 with a re-ID head.

The defaults are the BoT head (Luo et al. 2019): last stride 1, BN-neck, bias-free classifier
N(0, 0.001). deep-person-reid's (torchreid's) ``resnet50`` of 2018-2019, which the
background-transfer thesis trained, is ``last_stride: 2, bn_neck: false, classifier_bias: true,
classifier_std: 0.01``: the 2048-d average-pooled feature is both the retrieval feature and the
input of an ``nn.Linear`` classifier (``recipes/market_model1.yaml`` uses it).

``head: pngan`` is PN-GAN's ResNet-50-A/B (Qian et al. 2018, Sec. 3.3: "we merge the 5a, 5b and
5c convolutional layers ... into a 1024-d feature vector after an FC layer"): the outputs of the
three res5 blocks (``conv5_block1_out``, ``conv5_block2_out``, ``conv5_block3_out``) are each
pooled (``pooling``) and concatenated (``res5_merge: concat``, 3 x 2048; ``sum`` adds them
instead: the paper does not say which), a Dense layer maps them to ``embedding_dim`` (1024 by
default), the retrieval feature; dropout (the paper's 0.5) sits before the classifier.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from keras_reid.errors import ModelFileError
from keras_reid.registry import register

#: Where Keras downloads the ImageNet weights from (quoted in the error when that fails).
IMAGENET_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
                "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
#: The mean pixel (B, G, R) that ``keras.applications.resnet50.preprocess_input`` subtracts.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
#: The layers whose stride 2 makes the last stage halve the feature map.
LAST_STRIDE_LAYERS = ("conv5_block1_0_conv", "conv5_block1_1_conv")
#: The outputs of the res5a, res5b and res5c blocks that ``head: pngan`` merges.
RES5_BLOCK_OUTPUTS = ("conv5_block1_out", "conv5_block2_out", "conv5_block3_out")
#: The embedding size of ``head: pngan`` when ``embedding_dim`` is null (the paper's 1024).
PNGAN_EMBEDDING_DIM = 1024


class ResNet50Config(BaseModel):
    """Parameters of the ``resnet50`` backbone."""

    model_config = ConfigDict(extra="forbid")

    weights: str | None = Field(
        None, description="'imagenet' (Keras downloads them), a path to ResNet50 (include_top=False) "
        "weights (.weights.h5 or .h5), or null for random initialisation")
    last_stride: Literal[1, 2] = Field(1, description="stride of the last stage (1 doubles the final map)")
    pooling: Literal["avg", "max", "gem"] = "avg"
    embedding_dim: int | None = Field(None, gt=0, description="optional Dense reduction before the neck")
    bn_neck: bool = Field(True, description="BatchNorm (no bias) between embedding and classifier")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before the classifier")
    classifier_bias: bool = Field(False, description="give the classifier a bias (torchreid's "
                                  "nn.Linear has one; BoT has none)")
    classifier_std: float = Field(0.001, gt=0.0, description="std of the classifier's N(0, std) "
                                  "initial weights (torchreid: 0.01)")
    head: Literal["default", "pngan"] = Field(
        "default", description="default: the last block's map pooled; pngan: the res5a, res5b and "
        "res5c outputs pooled, merged (res5_merge) and reduced by a Dense layer to embedding_dim "
        "(1024 if null; PN-GAN's ResNet-50-A/B)")
    res5_merge: Literal["concat", "sum"] = Field(
        "concat", description="head: pngan - how the three pooled res5 features are merged before "
        "the Dense layer")

    @field_validator("weights")
    @classmethod
    def _not_empty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("'imagenet', a path to a weights file, or null")
        return v


@register("backbone", "resnet50", config=ResNet50Config)
class ResNet50Backbone:
    """ResNet-50 (keras.applications) with last stride 1 or 2, GeM/avg/max pooling, an optional
    BN-neck and a classifier with or without bias."""

    def __init__(self, config: ResNet50Config) -> None:
        self.config = config

    def build(self, input_shape: tuple[int, int, int], num_classes: int) -> Any:
        """Returns a ``keras.Model`` float32 images [B, H, W, 3] in [0, 255] ->
        ``{"embedding": [B, D], "features": [B, D], "logits": [B, num_classes]}``
        (D = 2048, or ``embedding_dim``; ``head: pngan``: ``embedding_dim`` or 1024). The
        convolutional trunk is one nested model (``resnet50``; ``resnet50_res5`` with the three
        res5 outputs for ``head: pngan``): the layers ``freeze_backbone_epochs`` freezes."""
        import keras  # deferred: Keras, keeps plugin discovery light

        from keras_reid_plugins.backbones._head import global_pool, reid_head  # deferred: Keras, keeps plugin discovery light

        h, w, c = (int(v) for v in input_shape)
        if c != 3:
            raise ValueError(f"resnet50 expects 3-channel images, got input shape {tuple(input_shape)}")
        base = self.base_model()
        inputs = keras.Input((h, w, 3), name="images")
        # caffe-style preprocessing with a frozen built-in layer (RGB -> BGR, minus the mean),
        # so the saved model reloads without custom objects
        pre = keras.layers.Dense(3, trainable=False, name="caffe_preprocess")
        x = pre(inputs)
        perm = [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
        pre.set_weights([_array(perm), -_array(CAFFE_MEAN_BGR)])
        embedding_dim = self.config.embedding_dim
        if self.config.head == "pngan":
            trunk = keras.Model(base.inputs, [base.get_layer(n).output for n in RES5_BLOCK_OUTPUTS],
                                name="resnet50_res5")
            parts = [global_pool(t, self.config.pooling, name=f"pool_res5{c}")
                     for t, c in zip(trunk(x), "abc")]
            merge = keras.layers.Concatenate(name="res5_concat") if self.config.res5_merge == "concat" \
                else keras.layers.Add(name="res5_sum")
            pooled = merge(parts)
            embedding_dim = embedding_dim or PNGAN_EMBEDDING_DIM
        else:
            pooled = global_pool(base(x), self.config.pooling)
        return reid_head(inputs, pooled, num_classes=num_classes,
                         embedding_dim=embedding_dim, bn_neck=self.config.bn_neck,
                         dropout=self.config.dropout, name="resnet50_reid",
                         classifier_bias=self.config.classifier_bias,
                         classifier_std=self.config.classifier_std)

    def trunk_layers(self, model: Any) -> list:
        """Returns the layers of a model built by :meth:`build` that hold the (pretrained)
        ResNet-50 trunk: the one nested model (``resnet50`` or ``resnet50_res5``); everything
        else (reduction, BN-neck, classifier) is what the re-ID head adds."""
        return [layer for layer in model.layers if layer.name in ("resnet50", "resnet50_res5")]

    def base_model(self) -> Any:
        """Returns the convolutional trunk (``keras.applications.ResNet50``, include_top=False,
        any input size) with the configured weights and last stride."""
        import keras  # deferred: Keras, keeps plugin discovery light

        weights = self.config.weights
        if weights is not None and weights != "imagenet":
            weights = os.path.expanduser(weights)
            if not os.path.isfile(weights):
                raise ModelFileError(
                    f"backbone resnet50: weights file '{weights}' does not exist; give the path of "
                    "ResNet50 (include_top=False) weights (.weights.h5 or .h5), 'imagenet', or null")
            if not weights.endswith((".h5", ".hdf5", ".keras")):
                raise ModelFileError(
                    f"backbone resnet50: weights file '{weights}' is not a Keras weights file; "
                    "expected a .weights.h5 or .h5 file of ResNet50 (include_top=False)")
        try:
            # Keras warns once per unmatched layer before it raises on a wrong file: keep the
            # warnings of a failed load out of the user's way, re-emit those of a good one
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                base = keras.applications.ResNet50(include_top=False, weights=weights,
                                                   input_shape=(None, None, 3))
            for w in caught:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        except Exception as exc:
            reason = " ".join(str(exc).split())[:200]
            if weights == "imagenet":
                raise ModelFileError(
                    f"backbone resnet50: downloading the ImageNet weights failed ({reason}); "
                    f"fetch {IMAGENET_URL} where there is network and set weights: /path/to/that.h5 "
                    "(or copy it into ~/.keras/models/), or use weights: null") from None
            if weights is not None:
                raise ModelFileError(
                    f"backbone resnet50: weights file '{weights}' does not fit ResNet50 "
                    f"(include_top=False) ({reason}); give weights saved from that model") from None
            raise
        if self.config.last_stride == 1:
            base = _with_last_stride_1(base)
        return base


def _with_last_stride_1(base: Any) -> Any:
    """Returns a copy of ``base`` whose last stage keeps the resolution (weights copied)."""
    import keras  # deferred: Keras, keeps plugin discovery light

    config = base.get_config()
    changed = 0
    for layer in config["layers"]:
        if layer["config"].get("name") in LAST_STRIDE_LAYERS:
            layer["config"]["strides"] = [1, 1]
            changed += 1
    if changed != len(LAST_STRIDE_LAYERS):  # pragma: no cover - a Keras layout change
        raise RuntimeError(f"could not find {LAST_STRIDE_LAYERS} in keras.applications.ResNet50")
    rebuilt = keras.Model.from_config(config)
    rebuilt.set_weights(base.get_weights())
    return rebuilt


def _array(values: Any) -> Any:
    return np.asarray(values, dtype=np.float32)
