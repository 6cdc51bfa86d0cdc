"""The LoRA network: targets from the layout, file format, forward, merging, LoRA+."""

from __future__ import annotations

import torch
from torch import nn

from tuner_core import ModelLayout
from tuner_lora.lora_network import LoRANetworkType, lora_name, target_layers


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.ModuleDict({"to_q": nn.Linear(8, 8), "to_out": nn.ModuleList([nn.Linear(8, 8)])})
        self.norm1 = nn.ModuleDict({"linear": nn.Linear(8, 16)})
        self.conv1x1 = nn.Conv2d(8, 8, 1)
        self.conv3x3 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        h = self.attn["to_q"](x) + self.attn["to_out"][0](x)
        img = x.transpose(1, 2).reshape(x.shape[0], 8, 2, 2)
        h = h + (self.conv1x1(img) + self.conv3x3(img)).reshape(x.shape[0], 8, 4).transpose(1, 2)
        return h + self.norm1["linear"](x)[..., :8]


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(8, 8)
        self.blocks = nn.ModuleList([Block(), Block()])

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return x


LAYOUT = ModelLayout(block_lists=("blocks",), network_targets=("Block",), network_exclude=(r".*(norm).*",))


def test_targets_follow_the_layout_and_exclude_norms():
    paths = [p for p, _ in target_layers(Model(), LAYOUT, {})]
    assert paths == [
        "blocks.0.attn.to_q",
        "blocks.0.attn.to_out.0",
        "blocks.0.conv1x1",
        "blocks.1.attn.to_q",
        "blocks.1.attn.to_out.0",
        "blocks.1.conv1x1",
    ]
    with_convs = [p for p, _ in target_layers(Model(), LAYOUT, {"conv_dim": 4})]
    assert "blocks.0.conv3x3" in with_convs
    only_q = [
        p for p, _ in target_layers(Model(), LAYOUT, {"exclude_patterns": [r".*to_out.*", r".*conv.*"]})
    ]
    assert only_q == ["blocks.0.attn.to_q", "blocks.1.attn.to_q"]
    back = [p for p, _ in target_layers(Model(), LAYOUT, {"include_patterns": [r".*norm1\.linear"]})]
    assert "blocks.0.norm1.linear" in back


def test_names_and_saved_keys_follow_the_reference_format():
    assert (
        lora_name("lora_unet", "transformer_blocks.0.attn.to_q") == "lora_unet_transformer_blocks_0_attn_to_q"
    )
    network = LoRANetworkType().create(Model(), LAYOUT, dim=4, alpha=1.0, dropout=None, args={})
    keys = set(network.adapter_state_dict())
    assert "lora_unet_blocks_0_attn_to_q.lora_down.weight" in keys
    assert "lora_unet_blocks_0_attn_to_q.lora_up.weight" in keys
    assert "lora_unet_blocks_0_attn_to_q.alpha" in keys
    state = network.adapter_state_dict()
    assert state["lora_unet_blocks_0_attn_to_q.lora_down.weight"].shape == (4, 8)
    assert state["lora_unet_blocks_0_attn_to_q.lora_up.weight"].shape == (8, 4)
    assert float(state["lora_unet_blocks_0_attn_to_q.alpha"]) == 1.0


def test_fresh_lora_does_not_change_output_and_trained_one_merges_exactly():
    torch.manual_seed(0)
    model = Model()
    x = torch.randn(2, 4, 8)
    before = model(x)
    network = LoRANetworkType().create(model, LAYOUT, dim=4, alpha=2.0, dropout=None, args={"conv_dim": 2})
    network.apply_to(model)
    assert torch.allclose(model(x), before)  # lora_up starts at zero
    for name, p in network.named_parameters():
        if "lora_up" in name:
            nn.init.normal_(p, std=0.1)
    with_adapter = model(x).detach()
    assert not torch.allclose(with_adapter, before)

    def fresh() -> Model:
        torch.manual_seed(0)
        return Model()

    merged = fresh()
    unused = LoRANetworkType().merge_into(merged, LAYOUT, network.adapter_state_dict(), multiplier=1.0)
    assert unused == []
    assert torch.allclose(merged(x), with_adapter, atol=1e-5)
    half, base = fresh(), fresh()
    LoRANetworkType().merge_into(half, LAYOUT, network.adapter_state_dict(), multiplier=0.5)
    for name, weight in half.state_dict().items():
        expected = base.state_dict()[name] + (merged.state_dict()[name] - base.state_dict()[name]) / 2
        assert torch.allclose(weight, expected, atol=1e-6), name


def test_alpha_scales_the_update_by_alpha_over_rank():
    torch.manual_seed(0)
    layer = nn.Linear(8, 8)
    x = torch.randn(3, 8)
    base = layer(x).detach()
    from tuner_lora.lora_module import LoRAModule

    updates = []
    for alpha in (1.0, 4.0):
        adapter = LoRAModule("lora_unet_x", layer, rank=4, alpha=alpha)
        torch.manual_seed(2)
        nn.init.normal_(adapter.lora_up.weight, std=0.1)
        nn.init.normal_(adapter.lora_down.weight, std=0.1)
        adapter.apply_to()
        updates.append(layer(x).detach() - base)
        expected = x @ (adapter.lora_up.weight @ adapter.lora_down.weight).T * (alpha / 4)
        assert torch.allclose(updates[-1], expected, atol=1e-6)
        adapter.remove()
    assert torch.allclose(updates[1], updates[0] * 4, atol=1e-6)


def test_loraplus_gives_lora_up_its_own_learning_rate():
    network = LoRANetworkType().create(
        Model(), LAYOUT, dim=4, alpha=1.0, dropout=None, args={"loraplus_lr_ratio": 16}
    )
    groups = network.parameter_groups(1e-4)
    assert [g["lr"] for g in groups] == [1e-4, 1.6e-3]
    assert all(p.shape[1] == 4 for p in groups[1]["params"] if p.dim() == 2)


def test_unused_and_mismatched_weights_are_reported():
    weights = (
        LoRANetworkType()
        .create(Model(), LAYOUT, dim=4, alpha=1.0, dropout=None, args={})
        .adapter_state_dict()
    )
    weights["lora_unet_nowhere.lora_down.weight"] = torch.zeros(4, 8)
    unused = LoRANetworkType().merge_into(Model(), LAYOUT, weights, 1.0)
    assert unused == ["lora_unet_nowhere.lora_down.weight"]
    assert LoRANetworkType().can_load(set(weights)) and not LoRANetworkType().can_load({"lokr_w1"})
