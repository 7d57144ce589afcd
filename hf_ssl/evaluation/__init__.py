"""Evaluation of frozen features: weighted k-NN and a linear probe."""

from hf_ssl.evaluation.knn import (
    ExtractedFeatures,
    KnnEvaluator,
    RawPixels,
    extract_features,
    extract_readable_features,
    image_embedding,
    knn_accuracy,
    knn_predict,
    subsample,
)
from hf_ssl.evaluation.linear_probe import LinearProbeEvaluator, linear_probe_accuracy

__all__ = [
    "ExtractedFeatures",
    "KnnEvaluator",
    "LinearProbeEvaluator",
    "RawPixels",
    "extract_features",
    "extract_readable_features",
    "image_embedding",
    "knn_accuracy",
    "knn_predict",
    "linear_probe_accuracy",
    "subsample",
]
