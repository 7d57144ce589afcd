"""`build_mlp`, the one builder of the methods' MLP heads: the layers it makes, and that every head built with it
keeps the tensor names, the seeded init and the outputs of the hand-written layers it replaced (checkpoints load by
name, seeded runs replay)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from hf_ssl.models.byol import ByolMlp
from hf_ssl.models.dino import DinoHead
from hf_ssl.models.heads import MlpHead, build_mlp
from hf_ssl.models.simclr import SimClrProjectionHead
from hf_ssl.models.vicreg import VicRegExpander
from tests.models.pretraining_cases import pretraining_case


def layer_kinds(mlp: nn.Sequential) -> list[str]:
    """Each layer as `Linear(in, out, bias)`, `BatchNorm1d(width)` or the activation's class name."""
    kinds = []
    for layer in mlp:
        if isinstance(layer, nn.Linear):
            kinds.append(f"Linear({layer.in_features}, {layer.out_features}, {layer.bias is not None})")
        elif isinstance(layer, nn.BatchNorm1d):
            kinds.append(f"BatchNorm1d({layer.num_features})")
        else:
            kinds.append(type(layer).__name__)
    return kinds


def test_layers_run_linear_batch_norm_activation_and_end_on_a_bare_linear():
    assert layer_kinds(build_mlp([6, 5, 4, 3])) == [
        "Linear(6, 5, False)",
        "BatchNorm1d(5)",
        "ReLU",
        "Linear(5, 4, False)",
        "BatchNorm1d(4)",
        "ReLU",
        "Linear(4, 3, True)",
    ]
    # without BatchNorm the hidden layers keep their bias; a lone layer is the output layer
    assert layer_kinds(build_mlp([6, 5, 3], batch_norm=False, activation=nn.GELU)) == [
        "Linear(6, 5, True)",
        "GELU",
        "Linear(5, 3, True)",
    ]
    assert layer_kinds(build_mlp([6, 3], output_bias=False)) == ["Linear(6, 3, False)"]
    assert layer_kinds(build_mlp([6, 5, 3], hidden_bias=True, output_bias=False)) == [
        "Linear(6, 5, True)",
        "BatchNorm1d(5)",
        "ReLU",
        "Linear(5, 3, False)",
    ]


def test_fewer_than_two_widths_are_refused():
    with pytest.raises(ValueError, match="at least an input and an output width"):
        build_mlp([8])


def test_mlp_head_keeps_its_layers_under_mlp():
    head = MlpHead([6, 5, 3])
    assert list(head.state_dict()) == [
        "mlp.0.weight",
        "mlp.1.weight",
        "mlp.1.bias",
        "mlp.1.running_mean",
        "mlp.1.running_var",
        "mlp.1.num_batches_tracked",
        "mlp.3.weight",
        "mlp.3.bias",
    ]
    inputs = torch.randn(4, 6)
    assert torch.equal(head(inputs), head.mlp(inputs))


# The layers each head was written as before `build_mlp`, in creation order (which is init order).
class UnderMlp(nn.Module):
    """Hand-written layers under `mlp.`, where the heads keep theirs."""

    def __init__(self, mlp: nn.Sequential):
        super().__init__()
        self.mlp = mlp

    def forward(self, inputs):
        return self.mlp(inputs)


def hand_written_simclr(in_dim, out_dim, hidden_dim, num_layers, use_bn):
    widths = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    layers = []
    for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
        is_hidden = index < num_layers - 1
        layers.append(nn.Linear(width_in, width_out, bias=not (is_hidden and use_bn)))
        if is_hidden:
            layers += [nn.BatchNorm1d(width_out)] if use_bn else []
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def hand_written_byol(in_dim, hidden_dim, out_dim):
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, out_dim),
    )


def hand_written_vicreg(in_dim, dims):
    widths = [in_dim, *dims]
    layers = []
    for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(width_in, width_out, bias=False))
        if index < len(dims) - 1:
            layers += [nn.BatchNorm1d(width_out), nn.ReLU()]
    return nn.Sequential(*layers)


class HandWrittenDinoHead(nn.Module):
    """DinoHead's layers and DINO's init (truncated normal MLP, then the weight-normed last layer's v and g)."""

    def __init__(self, in_dim, out_dim, hidden_dim, bottleneck_dim, num_layers, use_bn):
        super().__init__()
        widths = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers = []
        for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(width_in, width_out))
            if index < num_layers - 1:
                layers += [nn.BatchNorm1d(width_out)] if use_bn else []
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            for layer in self.mlp:
                if isinstance(layer, nn.Linear):
                    nn.init.trunc_normal_(layer.weight, std=0.02)
                    nn.init.zeros_(layer.bias)
            weight = self.last_layer.parametrizations.weight
            nn.init.kaiming_uniform_(weight.original1, a=math.sqrt(5))
            nn.init.ones_(weight.original0)

    def forward(self, embeddings):
        return self.last_layer(F.normalize(self.mlp(embeddings), dim=-1))


HEADS = {  # name: (the head as built now, its hand-written layers)
    "simclr v1": (
        lambda: SimClrProjectionHead(12, 8, 10, 2, True),
        lambda: UnderMlp(hand_written_simclr(12, 8, 10, 2, True)),
    ),
    "simclr v2": (
        lambda: SimClrProjectionHead(12, 8, 10, 3, True),
        lambda: UnderMlp(hand_written_simclr(12, 8, 10, 3, True)),
    ),
    "simclr no bn": (
        lambda: SimClrProjectionHead(12, 8, 10, 3, False),
        lambda: UnderMlp(hand_written_simclr(12, 8, 10, 3, False)),
    ),
    "simclr linear": (
        lambda: SimClrProjectionHead(12, 8, 10, 1, True),
        lambda: UnderMlp(hand_written_simclr(12, 8, 10, 1, True)),
    ),
    "byol": (lambda: ByolMlp(12, 10, 8), lambda: UnderMlp(hand_written_byol(12, 10, 8))),
    "vicreg": (lambda: VicRegExpander(12, [10, 10, 8]), lambda: UnderMlp(hand_written_vicreg(12, [10, 10, 8]))),
    "vicreg linear": (lambda: VicRegExpander(12, [8]), lambda: UnderMlp(hand_written_vicreg(12, [8]))),
    "dino": (
        lambda: DinoHead(12, 16, hidden_dim=10, bottleneck_dim=8, num_layers=3),
        lambda: HandWrittenDinoHead(12, 16, 10, 8, 3, False),
    ),
    "dino bn": (
        lambda: DinoHead(12, 16, hidden_dim=10, bottleneck_dim=8, num_layers=2, use_bn=True),
        lambda: HandWrittenDinoHead(12, 16, 10, 8, 2, True),
    ),
}


@pytest.mark.parametrize("head_name", HEADS)
def test_each_head_equals_its_hand_written_layers_bit_for_bit(head_name):
    build_head, build_hand_written = HEADS[head_name]
    torch.manual_seed(0)
    head = build_head()
    torch.manual_seed(0)
    reference = build_hand_written()
    assert layer_kinds(head.mlp) == layer_kinds(reference.mlp)
    assert list(head.state_dict()) == list(reference.state_dict())
    for name, tensor in reference.state_dict().items():
        assert torch.equal(head.state_dict()[name], tensor), name

    inputs = torch.randn(5, 12, generator=torch.Generator().manual_seed(1))
    # in training BatchNorm uses the batch statistics and updates its running ones, which eval then uses
    assert torch.equal(head.train()(inputs), reference.train()(inputs))
    assert torch.equal(head.eval()(inputs), reference.eval()(inputs))


# Names in the pretraining checkpoints, as the hand-written heads saved them: a checkpoint loads by them.
HEAD_TENSOR_NAMES = {
    "simclr": [
        "projection_head.mlp.0.weight",
        *(
            f"projection_head.mlp.1.{name}"
            for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        ),
        "projection_head.mlp.3.weight",
        "projection_head.mlp.3.bias",
    ],
    "byol": [
        f"{network}.mlp.{name}"
        for network in ("online.projector", "target.projector", "predictor")
        for name in (
            "0.weight",
            "1.weight",
            "1.bias",
            "1.running_mean",
            "1.running_var",
            "1.num_batches_tracked",
            "3.weight",
            "3.bias",
        )
    ],
    "vicreg": [
        f"expander.mlp.{name}"
        for name in (
            "0.weight",
            "1.weight",
            "1.bias",
            "1.running_mean",
            "1.running_var",
            "1.num_batches_tracked",
            "3.weight",
            "4.weight",
            "4.bias",
            "4.running_mean",
            "4.running_var",
            "4.num_batches_tracked",
            "6.weight",
        )
    ],
    "dino": [
        f"{network}.head.{name}"
        for network in ("student", "teacher")
        for name in (
            "mlp.0.weight",
            "mlp.0.bias",
            "mlp.2.weight",
            "mlp.2.bias",
            "mlp.4.weight",
            "mlp.4.bias",
            "last_layer.parametrizations.weight.original0",
            "last_layer.parametrizations.weight.original1",
        )
    ],
}
HEAD_PREFIXES = (
    "projection_head.",
    "online.projector.",
    "target.projector.",
    "predictor.",
    "expander.",
    "student.head.",
    "teacher.head.",
)


@pytest.mark.parametrize("method", HEAD_TENSOR_NAMES)
def test_pretraining_checkpoints_keep_their_head_tensor_names(method):
    model = pretraining_case(method).build()
    names = [name for name in model.state_dict() if name.startswith(HEAD_PREFIXES)]
    assert names == HEAD_TENSOR_NAMES[method]
