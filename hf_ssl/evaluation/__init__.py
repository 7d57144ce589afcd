"""Evaluation of frozen features: weighted k-NN and a linear probe.

The names are imported on first use, so that ``python -m hf_ssl.evaluation.knn`` and ``python -m
hf_ssl.evaluation.linear_probe`` run their module once (runpy warns when the package has imported it already).
"""

import importlib

_EXPORTS = {
    "ExtractedFeatures": "features",
    "RawPixels": "features",
    "extract_features": "features",
    "extract_readable_features": "features",
    "image_embedding": "features",
    "subsample": "features",
    "KnnEvaluator": "knn",
    "knn_accuracy": "knn",
    "knn_predict": "knn",
    "LinearProbeEvaluator": "linear_probe",
    "linear_probe_accuracy": "linear_probe",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
