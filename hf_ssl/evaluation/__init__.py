"""Evaluation of frozen features: weighted k-NN."""

from hf_ssl.evaluation.knn import KnnEvaluator, extract_features, image_embedding, knn_accuracy, knn_predict, subsample

__all__ = ["KnnEvaluator", "extract_features", "image_embedding", "knn_accuracy", "knn_predict", "subsample"]
