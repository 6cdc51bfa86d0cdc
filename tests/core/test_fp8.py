"""fp8 block weights (--fp8_base / --fp8_scaled / --fp8_fast): the reference's format and math, the fp8
Linear's forward and backward, load-time quantisation and checkpoints already stored in fp8."""

from __future__ import annotations

import logging

import attrs
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tuner_core import ModelLayout
from tuner_core.errors import ConfigError, ModelLoadError, NotAvailableError, PluginError
from tuner_core.memory.apply import (
    check_memory_options,
    load_transform,
    unavailable_memory_options,
)
from tuner_core.memory.fp8 import Fp8Options, Fp8Weights, is_quantisable
from tuner_core.memory.fp8_format import (
    FP8_DTYPE,
    MIN_SCALE,
    cast_to_fp8,
    dequantise_weight,
    quantisation_mode,
    quantise_weight,
    scale_key,
    scale_problem,
    scale_shape,
)
from tuner_core.memory.fp8_linear import Fp8Linear, fp8_matmul_problem, make_fp8_linear
from tuner_core.memory.strategy import MemorySettings
from tuner_core.plugins import make_plugin_manager
from tuner_core.weights import StateDictSource, load_into_model

LAYOUT = ModelLayout(block_lists=("blocks",), keep_high_precision=(r"norm",))


def settings(*, scaled: bool = True, fast: bool = False, training: bool = False, options=None):
    return MemorySettings(
        fp8_base=True, fp8_scaled=scaled, training=training, options=options or Fp8Options(fp8_fast=fast)
    )


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return ((approx.float() - exact.float()).norm() / exact.float().norm()).item()


def reference_blockwise(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's block-wise math written out block by block, as an independent oracle."""
    out_features, in_features = weight.shape
    values = torch.empty(out_features, in_features, dtype=FP8_DTYPE)
    scales = torch.empty(out_features, in_features // 64, 1, dtype=weight.dtype)
    for row in range(out_features):
        for block in range(in_features // 64):
            part = weight[row, block * 64 : (block + 1) * 64]
            scale = torch.clamp(part.abs().max() / 448.0, min=1e-8).to(torch.float32)
            values[row, block * 64 : (block + 1) * 64] = (
                (part.float() / scale).nan_to_num(0.0).clamp(-448, 448).to(FP8_DTYPE)
            )
            scales[row, block, 0] = scale.to(weight.dtype)
    return values, scales


class Block(nn.Module):
    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.attn = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.norm_linear = nn.Linear(width, 2 * width)  # a modulation layer: stays high precision
        self.mlp = nn.Linear(width, 2 * width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shift, gate = self.norm_linear(x).chunk(2, dim=-1)
        h = self.norm(x + self.attn(x)) * gate + shift
        return x + self.mlp(h)[..., : x.shape[-1]]


class Toy(nn.Module):
    def __init__(self, width: int = 64, blocks: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(blocks))
        self.head = nn.Linear(width, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def toy_state(seed: int = 0, width: int = 64, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = Toy(width)
    return {k: v.to(dtype) for k, v in model.state_dict().items()}


def load_toy(state, strategy_settings, width: int = 64, dtype=None) -> tuple[Toy, object]:
    """The toy streamed in with the core's strategies' transform (the registered fp8 among them)."""
    with torch.device("meta"):
        model = Toy(width)
    strategy = Fp8Weights()
    transform = load_transform(LAYOUT, strategy_settings, make_plugin_manager(entry_points=False))
    source = StateDictSource(dict(state), "toy.safetensors")
    result = load_into_model(model, source, transform=transform, dtype=dtype)
    strategy.apply(model, LAYOUT, strategy_settings, torch.device("cpu"))
    return model, result


# -- the format -----------------------------------------------------------------------------------------


def test_scale_names_shapes_and_dtypes_are_the_references():
    weight = torch.randn(96, 256, dtype=torch.bfloat16)
    values, scale = quantise_weight(weight)
    assert values.dtype == torch.float8_e4m3fn and values.shape == (96, 256)
    assert scale.shape == (96, 4, 1) == scale_shape((96, 256)) and scale.dtype == torch.bfloat16
    assert scale_key("transformer_blocks.0.attn.to_q.weight") == "transformer_blocks.0.attn.to_q.scale_weight"
    assert scale_shape((96, 100)) == (96, 1) and quantisation_mode((96, 100)) == "channel"
    assert scale_shape((4, 8, 3, 3)) == () and quantisation_mode((4, 8, 3, 3)) == "tensor"
    assert quantisation_mode((96, 256), "channel") == "channel" and scale_shape((96, 256), "channel") == (
        96,
        1,
    )


def test_block_wise_values_and_scales_equal_the_reference_math_exactly():
    for dtype in (torch.bfloat16, torch.float32):
        weight = (torch.randn(12, 192) * 0.02).to(dtype)
        weight[3, 70] = 0.9  # an outlier decides only its own block
        values, scale = quantise_weight(weight)
        expected_values, expected_scale = reference_blockwise(weight)
        assert torch.equal(values.view(torch.uint8), expected_values.view(torch.uint8))
        assert torch.equal(scale, expected_scale)
        assert scale[3, 1, 0] > 10 * scale[3, 0, 0]


def test_per_channel_fallback_when_inputs_are_not_a_multiple_of_64(caplog):
    weight = torch.randn(10, 100) * 0.05
    with caplog.at_level(logging.DEBUG):  # a warning the first time for each input size, then debug
        values, scale = quantise_weight(weight, key="blocks.0.odd.weight")
    assert (
        scale.shape == (10, 1)
        and "blocks.0.odd.weight" in caplog.text
        and "per output channel" in caplog.text
    )
    assert torch.allclose(scale[:, 0], weight.abs().amax(dim=1) / 448)
    assert values.float().abs().amax(dim=1).eq(448).all()  # each row's largest value hits the fp8 maximum


def test_per_tensor_fallback_for_weights_that_are_not_2d():
    weight = torch.randn(4, 8, 3, 3)
    values, scale = quantise_weight(weight)
    assert scale.shape == () and torch.allclose(scale, weight.abs().max() / 448)
    assert relative_error(dequantise_weight(values, scale, torch.float32), weight) < 0.05


def test_nan_becomes_zero_and_its_block_stays_usable_and_zero_blocks_get_the_minimum_scale():
    weight = torch.randn(2, 128) * 0.1
    weight[0, 5] = float("nan")
    weight[1, 64:] = 0.0
    values, scale = quantise_weight(weight)
    back = dequantise_weight(values, scale, torch.float32)
    assert torch.isfinite(scale).all() and torch.isfinite(back).all()
    assert back[0, 5] == 0 and relative_error(back[0, 6:64], weight[0, 6:64]) < 0.05
    assert scale[1, 1, 0] == pytest.approx(MIN_SCALE) and (back[1, 64:] == 0).all()
    assert torch.isfinite(cast_to_fp8(weight).float()).all()


def test_scaled_is_more_accurate_than_plain_fp8_on_random_weights():
    torch.manual_seed(0)
    x = torch.randn(32, 512)
    report = {}
    for std in (0.02, 0.002):
        weight = torch.randn(256, 512) * std
        values, scale = quantise_weight(weight)
        scaled = relative_error(dequantise_weight(values, scale, torch.float32), weight)
        plain = relative_error(cast_to_fp8(weight).float(), weight)
        out_scaled = relative_error(x @ dequantise_weight(values, scale, torch.float32).T, x @ weight.T)
        out_plain = relative_error(x @ cast_to_fp8(weight).float().T, x @ weight.T)
        report[std] = (scaled, plain, out_scaled, out_plain)
        assert scaled < 0.03 and out_scaled < 0.03  # e4m3 keeps 3 mantissa bits: measured 2.5% rms
        assert scaled < plain and out_scaled < out_plain
    # Small weights fall into fp8's subnormals unscaled (measured: 3.3% at std 0.02, 28% at 0.002);
    # the scale keeps every block in the normal range (2.5% at both).
    assert report[0.002][1] > 5 * report[0.002][0], report


def test_scale_shapes_a_stored_checkpoint_may_use():
    assert scale_problem((96, 256), (96, 4, 1)) is None
    assert scale_problem((96, 256), (96, 1)) is None and scale_problem((96, 256), ()) is None
    assert scale_problem((96, 256), (1,)) is None and scale_problem((96, 256), (96, 2, 1)) is None
    assert "fits no fp8 layout" in scale_problem((96, 256), (96, 3, 1))
    assert "fits no fp8 layout" in scale_problem((96, 256), (4, 96))


# -- the fp8 Linear ---------------------------------------------------------------------------------------


def fp8_layer(width_in=128, width_out=64, mode="block", bias=True):
    torch.manual_seed(1)
    layer = nn.Linear(width_in, width_out, bias=bias)
    exact = layer.weight.detach().clone()
    values, scale = quantise_weight(exact, mode)
    layer.weight = nn.Parameter(values, requires_grad=False)
    layer.register_buffer("scale_weight", scale)
    return make_fp8_linear(layer), exact


def test_fp8_linear_computes_in_the_input_dtype_close_to_the_full_weight():
    layer, exact = fp8_layer()
    x = torch.randn(3, 5, 128)
    out = layer(x)
    assert isinstance(layer, Fp8Linear) and out.dtype == torch.float32
    assert relative_error(out, F.linear(x, exact, layer.bias)) < 0.03
    assert layer(x.bfloat16()).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16


def test_fp8_linear_backward_gives_input_and_bias_gradients_and_keeps_only_fp8_for_it():
    layer, exact = fp8_layer()
    layer.bias.requires_grad_(True)
    x = torch.randn(4, 128, requires_grad=True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = layer(x)
    out.square().sum().backward()
    reference_x = x.detach().clone().requires_grad_(True)
    F.linear(reference_x, exact, layer.bias.detach()).square().sum().backward()
    assert relative_error(x.grad, reference_x.grad) < 0.05
    assert layer.bias.grad is not None and layer.weight.grad is None
    assert {t.dtype for t in saved} <= {torch.float8_e4m3fn, torch.float32}
    assert not any(t.dtype == torch.float32 and t.shape == exact.shape for t in saved)  # no dequantised copy


def test_unscaled_fp8_weights_compute_too():
    layer = nn.Linear(64, 32)
    exact = layer.weight.detach().clone()
    layer.weight = nn.Parameter(cast_to_fp8(exact), requires_grad=False)
    make_fp8_linear(layer)
    x = torch.randn(2, 64)
    assert relative_error(layer(x), F.linear(x, exact, layer.bias)) < 0.1


def test_make_fp8_linear_refuses_a_layer_a_network_already_wrapped():
    layer = nn.Linear(64, 32)
    layer.weight = nn.Parameter(cast_to_fp8(layer.weight.detach()), requires_grad=False)
    layer.forward = lambda x: x
    with pytest.raises(TypeError, match="before a network wraps"):
        make_fp8_linear(layer)


@pytest.mark.skipif(not hasattr(torch, "_scaled_mm"), reason="no torch._scaled_mm")
def test_the_fp8_matmul_path_matches_the_upcast_path():
    """The --fp8_fast forward forced on the CPU (where this PyTorch has a _scaled_mm), against upcasting."""
    layer, exact = fp8_layer(mode="channel")
    x = torch.randn(7, 128)  # 7 rows: not a multiple of 16
    upcast = layer(x)
    layer.fp8_fast = True
    try:
        fast = layer(x)
    except RuntimeError as exc:  # a CPU build without fp8 GEMM
        pytest.skip(f"torch._scaled_mm does not run on this CPU: {exc}")
    assert relative_error(fast, upcast) < 0.05 and relative_error(fast, F.linear(x, exact, layer.bias)) < 0.06
    x.requires_grad_(True)
    layer(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_fp8_fast_says_once_why_it_falls_back_here(caplog):
    assert "CUDA" in fp8_matmul_problem("cpu")
    state = toy_state()
    with caplog.at_level(logging.WARNING):
        model, _ = load_toy(state, settings(scaled=False, fast=True))
        strategy = Fp8Weights()
        strategy.apply(model, LAYOUT, settings(scaled=False, fast=True), torch.device("cpu"))
        strategy.apply(model, LAYOUT, settings(scaled=False, fast=True), torch.device("cpu"))
    assert "implies --fp8_scaled" in caplog.text
    assert caplog.text.count("fp8 matrix multiplication needs a CUDA GPU") == 2  # once per strategy instance
    assert not any(m.fp8_fast for m in model.modules() if isinstance(m, Fp8Linear))
    assert "blocks.0.attn.scale_weight" in model.state_dict()  # --fp8_fast implies scaled weights


# -- loading ----------------------------------------------------------------------------------------------


def test_is_quantisable_follows_the_layout():
    assert is_quantisable("blocks.0.attn.weight", (64, 64), LAYOUT)
    assert not is_quantisable("blocks.0.attn.bias", (64,), LAYOUT)
    assert not is_quantisable("blocks.0.norm_linear.weight", (128, 64), LAYOUT)
    assert not is_quantisable("embed.weight", (64, 8), LAYOUT)
    custom = ModelLayout(block_lists=("blocks",), quantise_weights=(r"^head\.",))
    assert is_quantisable("head.weight", (8, 64), custom) and not is_quantisable(
        "blocks.0.attn.weight", (64, 64), custom
    )


@pytest.mark.parametrize("scaled", [True, False])
def test_loading_quantises_exactly_the_quantisable_weights_and_stays_close(scaled):
    state = toy_state(dtype=torch.float32)
    model, result = load_toy(state, settings(scaled=scaled))
    fp8 = {n for n, p in model.named_parameters() if p.dtype == torch.float8_e4m3fn}
    assert fp8 == {f"blocks.{i}.{name}.weight" for i in (0, 1) for name in ("attn", "mlp")}
    scales = {k for k in model.state_dict() if k.endswith("scale_weight")}
    assert scales == ({k.replace(".weight", ".scale_weight") for k in fp8} if scaled else set())
    assert set(result.added) == scales
    assert not any(p.requires_grad for p in model.parameters() if p.dtype == torch.float8_e4m3fn)
    reference = Toy()
    reference.load_state_dict(state)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        assert relative_error(model(x), reference(x)) < 0.03


def test_a_checkpoint_stored_in_fp8_with_scales_is_used_as_it_is():
    quantised, _ = load_toy(toy_state(), settings())
    stored = {k: v.clone() for k, v in quantised.state_dict().items()}
    for flags in (settings(), settings(scaled=False)):  # --fp8_base alone also uses stored scales
        again, result = load_toy(stored, flags, dtype=torch.float32)
        for key, tensor in stored.items():
            if tensor.dtype == torch.float8_e4m3fn or key.endswith("scale_weight"):
                loaded = again.state_dict()[key]
                assert loaded.dtype == tensor.dtype and torch.equal(
                    loaded.view(torch.uint8), tensor.view(torch.uint8)
                )
        assert again.embed.weight.dtype == torch.float32  # the rest is cast as asked
    with pytest.raises(ModelLoadError, match=r"scale_weight tensors are fp8 scales.*--fp8_scaled"):
        with torch.device("meta"):
            plain = Toy()
        load_into_model(plain, StateDictSource(stored, "fp8.safetensors"))


def test_a_plain_fp8_checkpoint_is_used_as_it_is():
    state = toy_state()
    state["blocks.0.attn.weight"] = cast_to_fp8(state["blocks.0.attn.weight"])
    model, _ = load_toy(state, settings())
    assert torch.equal(
        model.blocks[0].attn.weight.view(torch.uint8), state["blocks.0.attn.weight"].view(torch.uint8)
    )
    assert (
        "scale_weight" not in model.blocks[0].attn._buffers
        and "scale_weight" in model.blocks[1].attn._buffers
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda s: s.update({"blocks.0.attn.scale_weight": torch.ones(64, 1)}),
            "stored in bfloat16, not in fp8",
        ),
        (lambda s: s.update({"blocks.0.ghost.scale_weight": torch.ones(1)}), "no blocks.0.ghost.weight"),
        (lambda s: s.update({"embed.scale_weight": torch.ones(1)}), "not one of the weights"),
        (
            lambda s: s.update(
                {
                    "blocks.0.attn.weight": cast_to_fp8(s["blocks.0.attn.weight"]),
                    "blocks.0.attn.scale_weight": torch.ones(64, 3, 1),
                }
            ),
            "fits no fp8 layout",
        ),
    ],
)
def test_a_stored_scale_that_cannot_be_used_is_refused_naming_it(change, message):
    state = toy_state()
    change(state)
    with pytest.raises(ModelLoadError, match=message):
        load_toy(state, settings())


def test_fp8_in_a_layer_that_is_not_a_linear_is_refused():
    model = Toy()
    model.blocks[0].norm.weight = nn.Parameter(
        cast_to_fp8(model.blocks[0].norm.weight.detach()), requires_grad=False
    )
    with pytest.raises(PluginError, match="blocks.0.norm.weight.*LayerNorm is not a Linear"):
        Fp8Weights().apply(model, LAYOUT, settings(), torch.device("cpu"))


def test_full_fine_tuning_of_fp8_weights_is_refused():
    full = attrs.evolve(settings(training=True), full_fine_tuning=True)
    with pytest.raises(ConfigError, match="--network_module"):  # before any tensor is read
        Fp8Weights().plan_load({}, LAYOUT, full)
    with pytest.raises(ConfigError, match="--network_module"):
        Fp8Weights().apply(Toy(), LAYOUT, full, torch.device("cpu"))
    Fp8Weights().plan_load({}, LAYOUT, settings(training=True))  # a network on top trains instead


def test_fp8_options_are_available_and_the_rest_is_still_refused():
    plugins = make_plugin_manager(entry_points=False)
    for training in (True, False):
        missing = unavailable_memory_options(plugins, training=training)
        assert not missing & {"fp8_base", "fp8", "fp8_scaled"}
    check_memory_options(MemorySettings(fp8_base=True, fp8_scaled=True, training=True), plugins)
    if "blocks_to_swap" in unavailable_memory_options(plugins, training=True):
        with pytest.raises(NotAvailableError, match="--blocks_to_swap"):
            check_memory_options(MemorySettings(blocks_to_swap=2, training=True), plugins)
