"""The reference network's training options: each ``--network_args`` key has an effect, ``--dim_from_weights``
follows the file, ``--network_weights`` continues from a file, ``--base_weights`` merges before training,
``--scale_weight_norms`` caps update norms and logs its figures, ``--save_precision`` sets the saved dtype."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tuner_core import hookimpl, make_plugin_manager
from tuner_framepack.architecture import FramePackArchitecture
from tuner_framepack.testing.tiny_dit import build_tiny_dit, tiny_dit_config
from tuner_lora.lora_module import LoRAModule
from tuner_lora.lora_network import LoRANetworkType, target_layers

from ..engine.conftest import make_workspace
from ..engine.helpers import build_command_options_for, cache_all, run, train_values

LAYOUT = FramePackArchitecture.layout
CONFIG = tiny_dit_config(num_layers=1, num_single_layers=1, num_refiner_layers=1)


def _create(args: dict, *, dim: int = 4, alpha: float = 1.0, model: nn.Module | None = None):
    model = model if model is not None else build_tiny_dit(CONFIG)
    return model, LoRANetworkType().create(model, LAYOUT, dim=dim, alpha=alpha, dropout=None, args=args)


def _randomized(module: LoRAModule) -> LoRAModule:
    torch.manual_seed(1)
    nn.init.normal_(module.lora_up.weight, std=0.5)
    return module


# -- network_args --------------------------------------------------------------------------------------------


def test_include_and_exclude_patterns_select_targets_as_the_reference():
    model = build_tiny_dit(CONFIG)
    default = [p for p, _ in target_layers(model, LAYOUT, {})]
    assert len(default) == 17 and not any("norm" in p for p in default)
    no_ff = [p for p, _ in target_layers(model, LAYOUT, {"exclude_patterns": [r".*\.ff(_context)?\..*"]})]
    assert len(no_ff) == 13
    # include wins over every exclusion, the layout's norm exclusion too (full match, not search)
    back = [
        p
        for p, _ in target_layers(
            model,
            LAYOUT,
            {"exclude_patterns": [r".*attn.*"], "include_patterns": [r".*attn\.to_q", r".*norm1\.linear"]},
        )
    ]
    assert (
        "transformer_blocks.0.norm1.linear" in back
        and "transformer_blocks.0.norm1_context.linear" not in back
    )
    assert [p for p in back if "attn" in p] == [
        "transformer_blocks.0.attn.to_q",
        "single_transformer_blocks.0.attn.to_q",
    ]
    assert [
        p for p, _ in target_layers(model, LAYOUT, {"include_patterns": ["attn"]})
    ] == default  # fullmatch


def test_rank_dropout_drops_ranks_per_sample_and_rescales():
    layer = nn.Linear(8, 6)
    adapter = _randomized(LoRAModule("x", layer, rank=4, alpha=2.0, rank_dropout=0.5))
    adapter.apply_to()
    x = torch.randn(3, 5, 8)
    base = adapter._original_forward(x)
    adapter.train()
    torch.manual_seed(7)
    got = layer(x) - base
    torch.manual_seed(7)
    keep = (torch.rand(3, 4) > 0.5).float()
    h = adapter.lora_down(x) * keep[:, None, :]
    expected = adapter.lora_up(h) * (0.5 / (1 - 0.5))
    assert torch.allclose(got, expected, atol=1e-6)
    adapter.eval()
    full = adapter.lora_up(adapter.lora_down(x)) * 0.5
    assert torch.allclose(layer(x) - base, full, atol=1e-6)


def test_module_dropout_skips_the_whole_update_in_training_only():
    layer = nn.Linear(8, 6)
    adapter = _randomized(LoRAModule("x", layer, rank=4, alpha=4.0, module_dropout=1.0))
    adapter.apply_to()
    x = torch.randn(2, 8)
    base = adapter._original_forward(x)
    adapter.train()
    assert torch.equal(layer(x), base)
    adapter.eval()
    assert not torch.allclose(layer(x), base)


def test_network_args_reach_every_adapter():
    _, network = _create({"rank_dropout": "0.25", "module_dropout": 0.1, "conv_alpha": 2})
    adapters = network.adapters()
    assert {(a.rank_dropout, a.module_dropout) for a in adapters} == {(0.25, 0.1)}


def test_loraplus_lr_ratio_makes_lora_up_learn_ratio_times_faster():
    model, network = _create({"loraplus_lr_ratio": 8})
    network.apply_to(model)
    for adapter in network.adapters():
        nn.init.normal_(adapter.lora_up.weight, std=0.01)
    before = {n: p.detach().clone() for n, p in network.named_parameters()}
    optimizer = torch.optim.SGD(network.parameter_groups(1e-2))
    from tuner_framepack.testing.tiny_dit import tiny_dit_inputs

    model(
        **tiny_dit_inputs(CONFIG, frames=1, height=4, width=4, text_len=4, image_tokens=2)
    ).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in network.named_parameters()}
    optimizer.step()
    for name, param in network.named_parameters():
        lr = 8e-2 if "lora_up" in name else 1e-2
        assert torch.allclose(before[name] - param.detach(), lr * grads[name], atol=1e-7), name


def test_verbose_logs_each_target_and_each_exclusion(caplog):
    with caplog.at_level(logging.INFO, logger="tuner_lora"):
        _create({"verbose": True})
    text = caplog.text
    assert "lora_unet_transformer_blocks_0_attn_to_q" in text and "rank 4, alpha 1" in text
    assert "lora_unet_single_transformer_blocks_0_proj_out" in text
    assert "excluded: transformer_blocks.0.norm1.linear" in text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tuner_lora"):
        _create({})
    assert "attn_to_q" not in caplog.text


# -- --dim_from_weights and loading ----------------------------------------------------------------------------


def test_dim_from_weights_takes_each_modules_rank_and_alpha():
    _, source = _create({}, dim=4, alpha=2.0)
    weights = source.adapter_state_dict()
    name = "lora_unet_transformer_blocks_0_attn_to_k"
    weights[f"{name}.lora_down.weight"] = torch.randn(2, 64)
    weights[f"{name}.lora_up.weight"] = torch.randn(64, 2)
    weights[f"{name}.alpha"] = torch.tensor(1.0)
    dropped = "lora_unet_single_transformer_blocks_0_proj_mlp"
    for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha"):
        del weights[dropped + suffix]
    network = LoRANetworkType().create_from_weights(
        build_tiny_dit(CONFIG), LAYOUT, weights, alpha=9.0, dropout=None, args={}
    )
    adapters = {a.lora_name: a for a in network.adapters()}
    assert dropped not in adapters and len(adapters) == 16
    assert (adapters[name].rank, adapters[name].scale) == (2, 0.5)
    assert {a.rank for n, a in adapters.items() if n != name} == {4}
    assert {a.scale for n, a in adapters.items() if n != name} == {0.5}
    network.load_adapter_state_dict(weights)


def test_loaded_alpha_sets_the_scale():
    _, source = _create({}, dim=4, alpha=4.0)
    _, network = _create({}, dim=4, alpha=1.0)
    network.load_adapter_state_dict(source.adapter_state_dict())
    assert {a.scale for a in network.adapters()} == {1.0}


def test_max_norm_regularization_caps_each_update_as_the_reference():
    _, network = _create({}, dim=4, alpha=2.0)
    for index, adapter in enumerate(network.adapters()):
        nn.init.normal_(adapter.lora_up.weight, std=0.05 * (index + 1))
    norms = [a.delta_weight().norm().item() for a in network.adapters()]
    cap = (sorted(norms)[8] + sorted(norms)[9]) / 2
    scaled, mean_norm, max_norm = network.apply_max_norm_regularization(cap, torch.device("cpu"))
    after = [a.delta_weight().norm().item() for a in network.adapters()]
    assert scaled == sum(n > cap for n in norms) == 17 - 9
    assert max(after) == pytest.approx(cap, rel=1e-4) and max_norm == pytest.approx(cap, rel=1e-4)
    assert mean_norm == pytest.approx(sum(after) / len(after), rel=1e-4)
    for was, now in zip(norms, after, strict=True):
        assert now == pytest.approx(min(was, cap), rel=1e-4)


# -- through `tuner train` on the toy ----------------------------------------------------------------------------


@pytest.fixture
def toy(tmp_path):
    """The engine tests' toy workspace: dataset, VAE, text encoder and DiT files."""
    return make_workspace(tmp_path / "toy")


class _Capture:
    """A plugin that keeps the trained module's weights at the start and every step's metrics."""

    def __init__(self) -> None:
        self.network: dict[str, torch.Tensor] = {}
        self.model: dict[str, torch.Tensor] = {}
        self.metrics: list[dict[str, float]] = []

    @hookimpl
    def tuner_on_train_start(self, run):
        trained = getattr(run.trained, "module", run.trained)
        self.network = {k: v.detach().clone() for k, v in trained.network.adapter_state_dict().items()}
        self.model = {k: v.detach().clone() for k, v in trained.model.state_dict().items()}

    @hookimpl
    def tuner_on_step_end(self, metrics):
        self.metrics.append(dict(metrics))


def _train(toy, out, capture: _Capture | None = None, **extra):
    plugins = make_plugin_manager(plugins=[capture]) if capture is not None else None
    return run("train", train_values(toy, out, max_train_steps=3, **extra), plugins)


def test_network_weights_continue_a_run_and_save_precision_sets_the_dtype(toy, tmp_path):
    cache_all(toy)
    first = _train(
        toy, tmp_path / "a", network_alpha=4.0, learning_rate=5e-2, network_args=["rank_dropout=0.1"]
    )
    (weights_a,) = first.outputs["weights"]
    saved = load_file(str(weights_a))
    capture = _Capture()
    second = _train(toy, tmp_path / "b", capture, network_weights=weights_a, save_precision="bf16")
    assert capture.network.keys() == saved.keys()
    for key, tensor in saved.items():
        assert torch.equal(capture.network[key].cpu(), tensor), key  # at step 0 the network is the file
    (weights_b,) = second.outputs["weights"]
    continued = load_file(str(weights_b))
    assert {t.dtype for t in continued.values()} == {torch.bfloat16}
    assert float(continued["lora_unet_blocks_0_attn_to_q.alpha"]) == 4.0
    assert any(not torch.equal(continued[k].float(), saved[k].to(torch.bfloat16).float()) for k in saved)


def test_base_weights_are_merged_into_the_model_before_training(toy, tmp_path):
    cache_all(toy)
    (lora_file,) = _train(toy, tmp_path / "a", learning_rate=5e-2).outputs["weights"]
    capture = _Capture()
    _train(toy, tmp_path / "b", capture, base_weights=[lora_file], base_weights_multiplier=[0.5])
    architecture = make_plugin_manager().architecture("toy")
    options = build_command_options_for("train", architecture, train_values(toy, tmp_path / "c"))
    base = architecture.load_component("dit", options, torch.device("cpu"))
    plain = {k: v.clone() for k, v in base.state_dict().items()}
    assert LoRANetworkType().merge_into(base, architecture.layout, load_file(str(lora_file)), 0.5) == []
    expected = base.state_dict()
    changed = [k for k in expected if not torch.equal(plain[k], capture.model[k])]
    assert changed and all(".attn." in k or ".ff_" in k for k in changed)
    for key, tensor in expected.items():
        assert torch.allclose(capture.model[key], tensor, atol=1e-6), key


def test_scale_weight_norms_caps_norms_and_logs_the_figures(toy, tmp_path):
    cache_all(toy)
    capture = _Capture()
    result = _train(toy, tmp_path / "a", capture, learning_rate=0.2, scale_weight_norms=0.05)
    figures = [m for m in capture.metrics if "max_norm/keys_scaled" in m]
    assert len(figures) == 3
    assert all(m["max_norm/max_key_norm"] <= 0.05 * (1 + 1e-4) for m in figures)
    assert figures[-1]["max_norm/keys_scaled"] > 0
    (weights,) = result.outputs["weights"]
    saved = load_file(str(weights))
    for key in (k for k in saved if k.endswith(".lora_down.weight")):
        name = key[: -len(".lora_down.weight")]
        update = saved[f"{name}.lora_up.weight"] @ saved[key] * (saved[f"{name}.alpha"] / saved[key].shape[0])
        assert update.norm() <= 0.05 * (1 + 1e-4), name
