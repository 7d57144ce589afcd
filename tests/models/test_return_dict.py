"""Every hf_ssl model returns its `ModelOutput`, or the same values as a tuple with `return_dict=False` or
`config.return_dict = False` (transformers' `can_return_tuple`), the argument winning over the config."""

import pytest
import torch
from transformers import AutoModel
from transformers.utils import ModelOutput

from tests.models.pretraining_cases import METHODS, pretraining_case


def assert_same_values(as_tuple: tuple, output: ModelOutput) -> None:
    expected = output.to_tuple()  # the fields that are set, in order
    assert len(as_tuple) == len(expected)
    for value, expected_value in zip(as_tuple, expected):
        if isinstance(expected_value, torch.Tensor):
            assert torch.equal(value, expected_value)
        else:  # H-JEPA's per-level tuples
            assert all(torch.equal(item, expected_item) for item, expected_item in zip(value, expected_value))


@pytest.mark.parametrize("method", METHODS)
def test_pretraining_model_returns_a_tuple_when_asked_or_configured(method):
    case = pretraining_case(method)
    model = case.build().eval()  # eval: no DINO center update, BatchNorm on running statistics: calls repeat
    output = model(**case.inputs)
    assert isinstance(output, ModelOutput) and output.loss.ndim == 0

    as_tuple = model(**case.inputs, return_dict=False)
    assert type(as_tuple) is tuple
    assert_same_values(as_tuple, output)

    model.config.return_dict = False
    assert type(model(**case.inputs)) is tuple
    assert isinstance(model(**case.inputs, return_dict=True), ModelOutput)


@pytest.mark.parametrize("method", METHODS)
def test_feature_model_returns_a_tuple_when_asked_or_configured(method):
    case = pretraining_case(method)
    torch.manual_seed(0)
    features = AutoModel.from_config(case.config).eval()
    pixel_values = case.inputs.get("pixel_values", next(iter(case.inputs.values()))[0])
    output = features(pixel_values)
    assert output.pooler_output.shape[0] == pixel_values.shape[0]
    assert_same_values(features(pixel_values, return_dict=False), output)

    features.config.return_dict = False
    assert type(features(pixel_values)) is tuple
    assert isinstance(features(pixel_values, output_hidden_states=True, return_dict=True), ModelOutput)
