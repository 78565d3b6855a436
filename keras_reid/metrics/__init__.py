"""Evaluation metrics: Market-protocol retrieval (CMC, mAP, mINP), k-reciprocal re-ranking,
closed-set identity classification, generated-image quality (SSIM, identity preservation).
Pure numpy at import time; only ``ssim`` imports TensorFlow, when called."""
from keras_reid.metrics.closed_set import closed_set_metrics
from keras_reid.metrics.quality import identity_preservation, ssim
from keras_reid.metrics.rerank import rerank, rerank_features
from keras_reid.metrics.retrieval import chance_level, evaluate_retrieval, pairwise_distance

__all__ = ["evaluate_retrieval", "chance_level", "pairwise_distance", "rerank", "rerank_features", "closed_set_metrics",
           "ssim", "identity_preservation"]
