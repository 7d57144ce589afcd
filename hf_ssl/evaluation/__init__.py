"""Evaluation of frozen features: weighted k-NN."""

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

__all__ = [
    "ExtractedFeatures",
    "KnnEvaluator",
    "RawPixels",
    "extract_features",
    "extract_readable_features",
    "image_embedding",
    "knn_accuracy",
    "knn_predict",
    "subsample",
]
