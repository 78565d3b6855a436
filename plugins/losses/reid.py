"""Losses ``softmax``, ``triplet`` and ``softmax_triplet`` for re-ID training.

Every loss maps ``(labels, outputs)`` to a float32 per-example loss ``[B]`` (the training
step averages it over the global batch) and exposes ``terms(labels, outputs)``, a dict of
named per-example contributions whose sum is the loss, and ``term_names``, their names.
``labels`` are int identities ``[B]`` or float target distributions ``[B, C]`` (soft labels
from label policies such as LSRO); ``outputs`` is the backbone's dict (``logits`` and
``embedding``, see ``keras_reid.interfaces.Backbone``).
"""
from __future__ import annotations

from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field

from keras_reid.registry import register


class SoftmaxConfig(BaseModel):
    """Parameters of the ``softmax`` loss."""

    model_config = ConfigDict(extra="forbid")

    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0, description="epsilon of label smoothing")


class TripletConfig(BaseModel):
    """Parameters of the ``triplet`` loss."""

    model_config = ConfigDict(extra="forbid")

    margin: float | None = Field(0.3, ge=0.0, description="hinge margin; null = soft margin (softplus)")
    normalize: bool = Field(False, description="L2-normalise embeddings before the distances")


class SoftmaxTripletConfig(SoftmaxConfig, TripletConfig):
    """Parameters of the ``softmax_triplet`` loss."""

    softmax_weight: float = Field(1.0, ge=0.0)
    triplet_weight: float = Field(1.0, ge=0.0)


class _TermsLoss:
    """Shared plumbing: ``__call__`` is the sum of ``terms``."""

    term_names: tuple[str, ...] = ()

    def terms(self, labels: Any, outputs: Mapping[str, Any]) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, labels: Any, outputs: Mapping[str, Any]) -> Any:
        """Returns the float32 per-example loss [B] (the sum of the terms)."""
        values = list(self.terms(labels, outputs).values())
        total = values[0]
        for v in values[1:]:
            total = total + v
        return total


@register("loss", "softmax", config=SoftmaxConfig)
class SoftmaxLoss(_TermsLoss):
    """Cross-entropy on the logits with label smoothing (int labels or soft target distributions)."""

    term_names = ("softmax",)

    def __init__(self, config: SoftmaxConfig) -> None:
        self.config = config

    def terms(self, labels: Any, outputs: Mapping[str, Any]) -> dict[str, Any]:
        """Returns ``{"softmax": per-example cross-entropy [B]}``."""
        return {"softmax": softmax_cross_entropy(labels, outputs["logits"], self.config.label_smoothing)}


@register("loss", "triplet", config=TripletConfig)
class TripletLoss(_TermsLoss):
    """Batch-hard triplet loss on the embedding (hinge with a margin, or soft margin)."""

    term_names = ("triplet",)

    def __init__(self, config: TripletConfig) -> None:
        self.config = config

    def terms(self, labels: Any, outputs: Mapping[str, Any]) -> dict[str, Any]:
        """Returns ``{"triplet": per-anchor batch-hard loss [B]}``."""
        return {"triplet": batch_hard_triplet(labels, outputs["embedding"], self.config.margin,
                                              self.config.normalize)}


@register("loss", "softmax_triplet", config=SoftmaxTripletConfig)
class SoftmaxTripletLoss(_TermsLoss):
    """Weighted sum of label-smoothed cross-entropy and batch-hard triplet loss (BoT)."""

    term_names = ("softmax", "triplet")

    def __init__(self, config: SoftmaxTripletConfig) -> None:
        self.config = config

    def terms(self, labels: Any, outputs: Mapping[str, Any]) -> dict[str, Any]:
        """Returns ``{"softmax": w_s * CE [B], "triplet": w_t * triplet [B]}`` (weighted terms)."""
        c = self.config
        ce = softmax_cross_entropy(labels, outputs["logits"], c.label_smoothing)
        tri = batch_hard_triplet(labels, outputs["embedding"], c.margin, c.normalize)
        return {"softmax": c.softmax_weight * ce, "triplet": c.triplet_weight * tri}


# ---------------------------------------------------------------------------- functions
def softmax_cross_entropy(labels: Any, logits: Any, label_smoothing: float = 0.0) -> Any:
    """Returns the per-example cross-entropy [B] of ``logits`` [B, C] against ``labels``.

    Int labels [B] become one-hot targets; float labels [B, C] are used as target
    distributions. Both are smoothed as Keras' ``CategoricalCrossentropy`` does:
    ``target * (1 - eps) + eps / C``.
    """
    from keras import ops  # deferred: Keras, keeps plugin discovery light

    logits = ops.cast(logits, "float32")
    num_classes = ops.shape(logits)[-1]
    if len(labels.shape) == 2:
        target = ops.cast(labels, "float32")
    else:
        target = ops.one_hot(ops.cast(ops.reshape(labels, (-1,)), "int32"), num_classes, dtype="float32")
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / ops.cast(num_classes, "float32")
    return -ops.sum(target * ops.log_softmax(logits, axis=-1), axis=-1)


def identities(labels: Any) -> tuple[Any, Any]:
    """Returns (int32 identity [B], bool has_identity [B]) from int labels [B] or targets [B, C].

    A soft target row has an identity (its argmax) when its largest entry is at least 0.5;
    rows such as LSRO's uniform distributions have none and take no part in metric losses.
    """
    from keras import ops  # deferred: Keras, keeps plugin discovery light

    if len(labels.shape) == 2:
        labels = ops.cast(labels, "float32")
        return ops.cast(ops.argmax(labels, axis=-1), "int32"), ops.max(labels, axis=-1) >= 0.5
    ids = ops.cast(ops.reshape(labels, (-1,)), "int32")
    return ids, ops.ones_like(ids, dtype="bool")


def pairwise_euclidean(x: Any, eps: float = 1e-12) -> Any:
    """Returns Euclidean distances [B, B] between the rows of ``x`` [B, D], with a finite
    gradient where the distance is 0 (the square root is taken only where d^2 > eps)."""
    from keras import ops  # deferred: Keras, keeps plugin discovery light

    sq = ops.sum(ops.square(x), axis=-1)
    d2 = ops.expand_dims(sq, 1) + ops.expand_dims(sq, 0) - 2.0 * ops.matmul(x, ops.transpose(x))
    d2 = ops.maximum(d2, 0.0)
    positive = d2 > eps
    return ops.where(positive, ops.sqrt(ops.where(positive, d2, 1.0)), 0.0)


def batch_hard_triplet(labels: Any, embedding: Any, margin: float | None = 0.3,
                       normalize: bool = False) -> Any:
    """Returns the batch-hard triplet loss of each anchor [B] (Hermans et al. 2017).

    For each anchor: hardest positive = farthest other example of its identity, hardest
    negative = closest example of another identity; loss = ``max(0, d_ap - d_an + margin)``,
    or ``softplus(d_ap - d_an)`` when ``margin`` is None. Anchors without a positive or a
    negative in the batch (and examples without an identity) contribute 0.
    """
    from keras import ops  # deferred: Keras, keeps plugin discovery light

    x = ops.cast(embedding, "float32")
    if normalize:
        x = x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-12)
    dist = pairwise_euclidean(x)
    ids, known = identities(labels)
    n = ops.shape(dist)[0]
    same = ops.equal(ops.expand_dims(ids, 1), ops.expand_dims(ids, 0))
    both = ops.logical_and(ops.expand_dims(known, 1), ops.expand_dims(known, 0))
    not_self = ops.logical_not(ops.cast(ops.eye(n), "bool"))
    pos_mask = ops.logical_and(ops.logical_and(same, both), not_self)
    neg_mask = ops.logical_and(ops.logical_not(same), both)
    big = ops.stop_gradient(ops.max(dist)) + 1.0
    hardest_pos = ops.max(ops.where(pos_mask, dist, 0.0), axis=1)
    hardest_neg = ops.min(ops.where(neg_mask, dist, big), axis=1)
    diff = hardest_pos - hardest_neg
    loss = ops.softplus(diff) if margin is None else ops.relu(diff + margin)
    valid = ops.logical_and(ops.any(pos_mask, axis=1), ops.any(neg_mask, axis=1))
    return ops.where(valid, loss, 0.0)
