"""Block swap on FramePack's DiT: the reference's split of N over the 20 double and 40 single blocks, its
maxima, and a tiny DiT through ``apply_memory_strategies`` giving exactly the unswapped results (CPU as
both devices; see ``tests/core/test_block_swap.py`` for what that can and cannot show)."""

from __future__ import annotations

import copy

import pytest
import torch

from tuner_core import make_plugin_manager
from tuner_core.errors import ConfigError
from tuner_core.memory.apply import apply_memory_strategies
from tuner_core.memory.block_swap import ENV_CPU, block_swappers, switch_to_inference, switch_to_training
from tuner_core.memory.block_swap_plan import check_blocks_to_swap, max_blocks_to_swap, split_blocks_to_swap
from tuner_core.memory.strategy import MemorySettings
from tuner_framepack.architecture import FramePackArchitecture
from tuner_framepack.testing.tiny_dit import build_tiny_dit, tiny_dit_config, tiny_dit_inputs
from tuner_lora.lora_network import LoRANetworkType

LAYOUT = FramePackArchitecture.layout
REAL = (20, 40)  # the 13B model's double and single blocks
CONFIG = tiny_dit_config(num_layers=4, num_single_layers=8)


@pytest.fixture(autouse=True)
def _cpu_allowed(monkeypatch):
    monkeypatch.setenv(ENV_CPU, "1")


def reference_split(n):
    """``enable_block_swap`` of musubi-tuner's ``hunyuan_video_packed.py``."""
    double = n // 2
    return double, (n - double) * 2 + 1


def test_split_over_the_real_blocks_is_the_references():
    assert split_blocks_to_swap(0, REAL) == (0, 0)  # nothing swaps (the reference never splits 0)
    for n in range(1, 39):
        assert split_blocks_to_swap(n, REAL) == reference_split(n), n
    assert split_blocks_to_swap(36, REAL) == (18, 37) and split_blocks_to_swap(38, REAL) == (19, 39)


def test_maxima_are_the_layouts_and_the_references():
    assert max_blocks_to_swap(REAL, training=True) == LAYOUT.max_blocks_to_swap_training == 36
    assert max_blocks_to_swap(REAL, training=False) == LAYOUT.max_blocks_to_swap_inference == 38
    check_blocks_to_swap(36, LAYOUT, REAL, training=True)
    check_blocks_to_swap(38, LAYOUT, REAL, training=False)
    with pytest.raises(ConfigError, match=r"--blocks_to_swap 37 is above .* in training \(36\)"):
        check_blocks_to_swap(37, LAYOUT, REAL, training=True)
    with pytest.raises(ConfigError, match=r"\(38\)"):
        check_blocks_to_swap(39, LAYOUT, REAL, training=False)


@pytest.fixture(scope="module")
def dit():
    return build_tiny_dit(CONFIG, seed=5).requires_grad_(False)


def prepared(dit, n, *, training, gc=False):
    model = copy.deepcopy(dit)
    settings = MemorySettings(blocks_to_swap=n, gradient_checkpointing=gc, training=training)
    applied = apply_memory_strategies(model, LAYOUT, settings, make_plugin_manager(), torch.device("cpu"))
    assert ("block-swap" in applied) == (n > 0)
    return model.train(training)


def test_tiny_dit_generates_the_same_with_four_blocks_swapped(dit):
    model = prepared(dit, 4, training=False)
    parts = block_swappers(model)[0].lists
    assert [(p.path, p.swapped, len(p.blocks)) for p in parts] == [
        ("transformer_blocks", 2, 4),
        ("single_transformer_blocks", 5, 8),
    ]
    inputs = tiny_dit_inputs(CONFIG)
    with torch.no_grad():
        want = dit(**inputs)
        for _ in range(2):
            assert torch.equal(want, model(**inputs))


def training_step_results(dit, blocks_to_swap, create, *, gc=False):
    """The model with ``blocks_to_swap``, and the output and network gradients of one step (seeded network)."""
    model = prepared(dit, blocks_to_swap, training=True, gc=gc)
    torch.manual_seed(0)
    network = create(model)
    for param in network.parameters():
        torch.nn.init.normal_(param, std=0.05)
    network.apply_to(model)
    out = model(**tiny_dit_inputs(CONFIG))
    out.square().mean().backward()
    return model, out.detach(), [p.grad for p in network.parameters()]


def assert_same_step(dit, create, *, gc=False):
    """A training step with four blocks swapped equals the unswapped one exactly; returns both models."""
    reference, want, want_grads = training_step_results(dit, 0, create, gc=gc)
    model, got, got_grads = training_step_results(dit, 4, create, gc=gc)
    assert torch.equal(want, got)
    assert all(torch.equal(a, b) for a, b in zip(want_grads, got_grads))
    return reference, model


@pytest.mark.parametrize("gc", [False, True], ids=["plain", "checkpointing"])
def test_tiny_dit_lora_training_step_is_the_same_with_four_blocks_swapped(dit, gc):
    def create(model):
        return LoRANetworkType().create(model, LAYOUT, dim=2, alpha=1.0, dropout=None, args={})

    reference, model = assert_same_step(dit, create, gc=gc)
    inputs = tiny_dit_inputs(CONFIG)
    switch_to_inference(model)  # a sample while training, then back
    with torch.no_grad():
        assert torch.equal(reference(**inputs), model(**inputs))
    switch_to_training(model)
    assert all(part.resident == part.start for part in block_swappers(model)[0].lists)


@pytest.mark.parametrize(
    "args", [{"algo": "loha"}, {"algo": "lokr", "factor": 4}, {"algo": "lora", "bypass_mode": True}]
)
def test_tiny_dit_lycoris_training_step_is_the_same_with_four_blocks_swapped(dit, args):
    pytest.importorskip("lycoris")
    from tuner_lora.lycoris_network import LycorisNetworkType

    def create(model):
        return LycorisNetworkType().create(model, LAYOUT, dim=2, alpha=1.0, dropout=None, args=args)

    assert_same_step(dit, create)
