"""Model zoo: parameter counts, forward shapes, Opacus validation, registry errors.

Parametrised over ``list_models()``: a newly registered model fails here until its parameter
count is added to PARAMETER_COUNTS. Needs neither the datasets nor the network.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn

from smoothnet.models import build_model, count_parameters, list_models
from smoothnet.models.registry import model_entry, model_options

torch.set_num_threads(1)

# (model, image size) -> parameters for 10 classes. Sources: torchvision's ResNet-18/34, DenseNet-121 and
# EfficientNet-B0 with a 10-class head (BatchNorm -> GroupNorm keeps the affine parameters), the SmoothNets
# paper (Remerscheid et al. 2022, arXiv 2205.04095) for SmoothNet W80D50, and the architectures' definitions
# for the rest (Tramer-Boneh CNN 550,570; ScatterNet+linear 243*64*10+10; WRN-16-4 with weight
# standardisation = 2,751,562 + one gain per conv output channel).
PARAMETER_COUNTS = {
    ("smoothnet", 32): 3_391_853,
    ("smoothnet", 64): 3_391_853,  # ImageNette in the quick profile
    ("smoothnet", 224): 3_391_853,
    ("smoothnet_w80d50", 32): 3_391_853,
    ("smoothnet_w80d50", 64): 3_391_853,
    ("smoothnet_w80d50", 224): 3_391_853,
    ("resnet9", 32): 2_447_946,
    ("resnet18", 32): 11_173_962,
    ("resnet18", 224): 11_181_642,
    ("resnet34", 32): 21_289_802,
    ("resnet34", 224): 21_289_802,
    ("densenet121", 32): 6_964_106,
    ("densenet121", 224): 6_964_106,
    ("efficientnet_b0", 32): 4_020_358,
    ("efficientnet_b0", 224): 4_020_358,
    ("wrn16_4", 32): 2_753_818,
    ("wrn16_4", 224): 2_753_818,
    ("tramer_boneh_cnn", 32): 550_570,
    ("papernot_tempered_sigmoid_cnn", 32): 550_570,
    ("scatternet_linear", 32): 155_530,
    ("scatternet_cnn", 32): 187_210,
}

MODEL_SIZES = [(name, size) for name in list_models() for size in model_entry(name).image_sizes]


@pytest.mark.parametrize(("name", "image_size"), MODEL_SIZES)
def test_parameter_count_matches_table(name, image_size):
    assert (name, image_size) in PARAMETER_COUNTS, f"add {name!r} at {image_size} to PARAMETER_COUNTS"
    model = build_model(name, num_classes=10, image_size=image_size)
    assert count_parameters(model) == PARAMETER_COUNTS[(name, image_size)]


def test_table_has_no_stale_entries():
    assert set(PARAMETER_COUNTS) == set(MODEL_SIZES)


@pytest.mark.parametrize(("name", "image_size"), MODEL_SIZES)
def test_forward_shape_and_finite(name, image_size):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, image_size=image_size).eval()
    batch = 2 if image_size == 32 else 1  # 224x224 SmoothNet takes seconds on one core
    with torch.no_grad():
        out = model(torch.randn(batch, 3, image_size, image_size))
    assert out.shape == (batch, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_opacus_validator_reports_nothing(name):
    model = build_model(name, image_size=32)
    assert ModuleValidator.validate(model, strict=False) == []
    ModuleValidator.validate(model, strict=True)  # raises on any error


@pytest.mark.parametrize("name", list_models())
def test_no_batchnorm_anywhere(name):
    model = build_model(name, image_size=32)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("name", ["resnet9", "resnet18", "resnet34", "densenet121", "efficientnet_b0"])
def test_baselines_use_groupnorm_with_gcd_8_groups(name):
    norms = [m for m in build_model(name).modules() if isinstance(m, nn.GroupNorm)]
    assert norms, name
    for norm in norms:
        assert norm.num_groups == math.gcd(8, norm.num_channels), (name, norm)


def test_resnet18_stem_depends_on_resolution():
    cifar, imagenet = build_model("resnet18", image_size=32), build_model("resnet18", image_size=224)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    assert imagenet.conv1.kernel_size == (7, 7) and isinstance(imagenet.maxpool, nn.MaxPool2d)


def test_only_scatternets_have_a_frozen_frontend():
    with_frontend = {name for name in list_models() if hasattr(build_model(name), "frozen_frontend")}
    assert with_frontend == {"scatternet_linear", "scatternet_cnn"}


@pytest.mark.parametrize("name", ["scatternet_linear", "scatternet_cnn"])
def test_frozen_frontend_contract(name):
    model = build_model(name).eval()
    assert list(model.frozen_frontend.parameters()) == []
    assert count_parameters(model.head) == count_parameters(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.frozen_frontend(x)
        torch.testing.assert_close(model(x), model.head(features), rtol=0, atol=0)
    assert features.shape == (2, 243, 8, 8)


def test_scatternet_groupnorm_without_affine():
    norm = build_model("scatternet_linear").head[0]
    assert isinstance(norm, nn.GroupNorm) and norm.num_groups == 27 and not norm.affine


def test_tempered_sigmoid_defaults_are_tanh():
    a, b = build_model("papernot_tempered_sigmoid_cnn"), build_model("tramer_boneh_cnn")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-6)
    c = build_model("papernot_tempered_sigmoid_cnn", scale=1.5, temperature=3.0, offset=0.5)
    c.load_state_dict(a.state_dict())
    assert not torch.allclose(a(x), c(x))


# SmoothNet variants against the thesis study (paper/published.yaml, source "thesis"): exact count here, and within one unit of the thesis' last printed digit (K or 100K).
THESIS_VARIANTS = [
    (dict(connection="dense", width=8, depth=5), 3_391_853, 3_400_000, 50_000),
    (dict(connection="dense", width=8, depth=1), 601_069, 601_000, 1_000),
    (dict(connection="dense", width=8, depth=8), 8_237_453, 8_200_000, 50_000),
    (dict(connection="residual", width=8, depth=1), 777_354, 777_000, 1_000),
    (dict(connection="residual", width=1, depth=1), 103_562, 103_000, 1_000),
    (dict(connection="residual", width=5, depth=1), 447_882, 447_000, 1_000),
    (dict(connection="residual", width=1, depth=8), 144_554, 144_000, 1_000),
    (dict(connection="residual", width=8, depth=5), 2_254_986, 2_300_000, 50_000),
    (dict(connection="residual", width=8, depth=1, norm="none"), 776_586, 776_000, 1_000),
    (dict(connection="plain", width=1, depth=1, norm="none", activation="relu"), 101_370, 101_000, 1_000),
    (dict(connection="plain", width=8, depth=1, norm="none", activation="relu"), 634_378, 634_000, 1_000),
    (dict(connection="plain", width=5, depth=5, norm="none", activation="relu"), 680_602, 680_000, 1_000),
    (dict(connection="plain", width=5, depth=8, norm="none", activation="relu"), 896_962, 896_000, 1_000),
    (
        dict(connection="plain", width=8, depth=5, norm="none", activation="relu"),
        1_372_426,
        1_400_000,
        50_000,
    ),
]


@pytest.mark.parametrize(("options", "exact", "thesis", "unit"), THESIS_VARIANTS)
def test_smoothnet_variants_match_thesis_counts(options, exact, thesis, unit):
    count = count_parameters(build_model("smoothnet", **options))
    assert count == exact
    assert abs(count - thesis) < unit


@pytest.mark.parametrize("connection", ["plain", "residual", "dense"])
@pytest.mark.parametrize("image_size", [32, 224])
def test_smoothnet_connections_are_resolution_independent(connection, image_size):
    model = build_model("smoothnet", image_size=image_size, width=1, depth=2, connection=connection)
    assert count_parameters(model) == count_parameters(
        build_model("smoothnet", width=1, depth=2, connection=connection)
    )
    with torch.no_grad():
        assert model(torch.randn(1, 3, image_size, image_size)).shape == (1, 10)


def test_smoothnet_instance_norm_is_the_authors():
    model = build_model("smoothnet", width=1, depth=1, norm="instance")
    norms = [m for m in model.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and all(not n.affine and not n.track_running_stats for n in norms)


def test_smoothnet_weight_standardization():
    from smoothnet.models.layers import WSConv2d

    plain = build_model("smoothnet", width=1, depth=2)
    ws = build_model("smoothnet", width=1, depth=2, weight_standardization=True)
    convs = [m for m in ws.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(m, WSConv2d) for m in convs)
    assert count_parameters(ws) == count_parameters(plain) + sum(m.out_channels for m in convs)
    # The standardised kernel has zero mean and unit fan-in norm per output filter (gain 1).
    w = convs[0].standardized_weight()
    torch.testing.assert_close(w.mean(dim=(1, 2, 3)), torch.zeros(w.shape[0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(w.flatten(1).norm(dim=1), torch.ones(w.shape[0]), atol=1e-4, rtol=0)


def test_smoothnet_head_reads_only_last_block():
    # Dense SmoothNet's head sees the last int(16*width) channels; the classifier's input is 16x that.
    model = build_model("smoothnet", width=2, depth=3)
    assert model.classifier[0].in_features == 32 * 16


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'resnet1000'.*valid models:.*smoothnet"):
        build_model("resnet1000")


def test_unknown_option_lists_valid_options():
    with pytest.raises(ValueError, match=r"does not accept option\(s\) \['widht'\].*valid options:.*width"):
        build_model("smoothnet", widht=4)
    with pytest.raises(ValueError, match="valid options: none"):
        build_model("resnet18", width=2)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("smoothnet", {"connection": "skip"}, "connection must be one of"),
        ("smoothnet", {"norm": "batch"}, "norm must be one of"),
        ("smoothnet", {"pool": "min"}, "pool must be one of"),
        ("smoothnet", {"activation": "gelu"}, "activation must be one of"),
        ("smoothnet", {"depth": 0}, "depth"),
        ("scatternet_linear", {"norm_groups": 10}, "norm_groups must divide 243"),
        ("papernot_tempered_sigmoid_cnn", {"temperature": 0.0}, "temperature must be > 0"),
    ],
)
def test_invalid_option_values_are_clear(name, options, message):
    with pytest.raises(ValueError, match=message):
        build_model(name, **options)


def test_unsupported_image_size_and_classes():
    with pytest.raises(ValueError, match=r"supports image_size in \[32\]"):
        build_model("resnet9", image_size=224)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        build_model("resnet9", num_classes=1)


@pytest.mark.parametrize("name", list_models())
def test_every_model_has_description_and_accepts_exactly_its_listed_options(name):
    entry = model_entry(name)
    assert isinstance(entry.description, str) and entry.description.strip()
    options = model_options(name)
    assert isinstance(options, list) and not {"num_classes", "image_size"} & set(options)
    signature = inspect.signature(entry.constructor)
    defaults = {option: signature.parameters[option].default for option in options}
    assert inspect.Parameter.empty not in defaults.values(), "every option needs a default"
    # each listed option is accepted (at its default it builds the default model); anything else is refused
    assert count_parameters(build_model(name, **defaults)) == count_parameters(build_model(name))
    with pytest.raises(ValueError, match=r"does not accept option\(s\) \['not_an_option'\]"):
        build_model(name, not_an_option=1)


def test_model_options_are_the_constructors_keywords():
    assert {"width", "depth", "connection", "norm", "pool", "activation"} <= set(model_options("smoothnet"))
    assert {"scale", "temperature", "offset"} == set(model_options("papernot_tempered_sigmoid_cnn"))
    assert model_options("resnet18") == []
