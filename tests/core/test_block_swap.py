"""Block swap with the CPU as both devices: where every weight sits before each block, and results equal to
no swapping, bit for bit, in forward and backward, with and without checkpointing, with a LoRA.

On the CPU a parked weight's Parameter holds a zero-memory NaN stand-in while its values wait in the
transfer's host store, so "on the device" is physical here too: a block that ran with a parked weight
would make every result NaN. What the CPU cannot show: copy-stream overlap, event ordering, pinned memory
and the memory saved (``benchmarks/gpu_block_swap_check.py`` measures those on a GPU).
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tuner_core import make_plugin_manager
from tuner_core.architecture import ModelLayout
from tuner_core.errors import ConfigError, NotAvailableError, NotSupportedError
from tuner_core.memory.apply import apply_memory_strategies, unavailable_memory_options
from tuner_core.memory.block_swap import (
    ENV_CPU,
    BlockSwap,
    check_block_swap_device,
    swap_weights,
    switch_to_training,
)
from tuner_core.memory.block_swap_plan import (
    backward_move,
    check_blocks_to_swap,
    forward_move,
    max_blocks_to_swap,
    split_blocks_to_swap,
)
from tuner_core.memory.blocks import install_block_hooks
from tuner_core.memory.strategy import MemorySettings, MemoryStrategy
from tuner_core.memory.transfer import WeightTransfer
from tuner_lora.lora_network import LoRANetworkType

DIM, HIDDEN = 8, 16
CPU = torch.device("cpu")
PLUGINS = make_plugin_manager(entry_points=False)


class _SaveWeight(torch.autograd.Function):
    """``x @ w.T`` that saves the weight Parameter itself for backward (as fp8 layers do)."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(weight)
        return x @ weight.t()

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad @ weight, None


class SavingLinear(nn.Linear):
    def forward(self, x):
        return _SaveWeight.apply(x, self.weight) + self.bias


class DoubleBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(DIM)
        self.up = nn.Linear(DIM, HIDDEN)
        self.down = nn.Linear(HIDDEN, DIM)
        self.gate = SavingLinear(DIM, DIM)

    def forward(self, x):
        return x + self.down(F.gelu(self.up(self.norm(x)))) * torch.sigmoid(self.gate(x))


class SingleBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(DIM)
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x):
        return x + torch.tanh(self.proj(self.norm(x)))


class Stack(nn.Module):
    def __init__(self, doubles=6, singles=8):
        super().__init__()
        self.embed = nn.Linear(4, DIM)
        self.doubles = nn.ModuleList(DoubleBlock() for _ in range(doubles))
        self.singles = nn.ModuleList(SingleBlock() for _ in range(singles))
        self.out = nn.Linear(DIM, 3)

    def forward(self, x):
        x = self.embed(x)
        for block in self.doubles:
            x = block(x)
        for block in self.singles:
            x = block(x)
        return self.out(x)


TWO_LISTS = ModelLayout(block_lists=("doubles", "singles"), network_targets=("DoubleBlock", "SingleBlock"))
ONE_LIST = ModelLayout(block_lists=("doubles",), network_targets=("DoubleBlock", "SingleBlock"))


@pytest.fixture(autouse=True)
def _cpu_allowed(monkeypatch):
    monkeypatch.setenv(ENV_CPU, "1")


def build(seed=0):
    torch.manual_seed(seed)
    model = Stack()
    with torch.no_grad():
        for block in model.doubles:
            block.norm.weight.add_(0.1 * torch.randn(DIM))
    return model.requires_grad_(False)


def swapped(model, layout, n, *, training, gc="plain", **extra):
    """A copy of ``model`` with the memory strategies applied as the commands apply them.

    :param gc: ``plain``, ``checkpointing``, or ``offload`` (checkpointing with the inputs on the host).
    """
    model = copy.deepcopy(model)
    settings = MemorySettings(
        blocks_to_swap=n,
        gradient_checkpointing=gc == "checkpointing",
        gradient_checkpointing_cpu_offload=gc == "offload",
        training=training,
        **extra,
    )
    applied = apply_memory_strategies(model, layout, settings, PLUGINS, CPU)
    assert ("block-swap" in applied) == (n > 0) and ("gradient-checkpointing" in applied) == (gc != "plain")
    return model.train(training)


def with_lora(model, layout, seed=3):
    network = LoRANetworkType().create(model, layout, dim=2, alpha=1.0, dropout=None, args={})
    torch.manual_seed(seed)
    for param in network.parameters():
        nn.init.normal_(param, std=0.3)  # lora_up starts at zero; make every adapter count
    network.apply_to(model)
    return network


def step(model, x, network=None):
    """Forward and backward; the output and every gradient (of the input and of the LoRA)."""
    x = x.clone().requires_grad_()
    out = model(x)
    out.square().mean().backward()
    grads = [x.grad] + ([p.grad.clone() for p in network.parameters()] if network else [])
    if network:
        network.zero_grad(set_to_none=True)
    return out.detach(), grads


def is_parked(param):
    data = param.data
    return data.stride() == (0,) * data.dim() and bool(torch.isnan(data).all())


def resident(model, path):
    """Blocks of ``path`` whose swapped weights all hold their values (none may be half there)."""
    found = []
    for index, block in enumerate(getattr(model, path)):
        parked = [is_parked(p) for p in swap_weights(block)]
        assert all(parked) or not any(parked), f"{path}[{index}] half parked"
        if not any(parked):
            found.append(index)
    return found


class Recorder(MemoryStrategy):
    """Records, before every block, which blocks of each list hold their weights."""

    name = "recorder"

    def __init__(self, model, layout):
        self.model, self.layout = model, layout
        self.where = {
            id(b): (path, i) for path in layout.block_lists for i, b in enumerate(getattr(model, path))
        }
        self.seen = []

    def before_block(self, index, block, *, backward):
        path, local = self.where[id(block)]
        now = {p: resident(self.model, p) for p in self.layout.block_lists}
        assert local in now[path], f"{path}[{local}] runs parked"
        for param in block.parameters():
            if id(param) not in {id(p) for p in swap_weights(block)}:
                assert not is_parked(param)  # biases and norms never move
        self.seen.append((path, local, backward, tuple(now[path])))


def record(model, layout):
    recorder = Recorder(model, layout)
    install_block_hooks(model, layout, [recorder])  # after block swap's hooks: sees what the block sees
    return recorder


# -- split and limits -----------------------------------------------------------------------------------


def test_split_over_one_and_two_lists():
    assert split_blocks_to_swap(0, (6, 8)) == (0, 0)
    assert [split_blocks_to_swap(n, (6,)) for n in (1, 3, 4)] == [(1,), (3,), (4,)]
    assert [split_blocks_to_swap(n, (6, 8)) for n in (1, 2, 3, 4)] == [(0, 3), (1, 3), (1, 5), (2, 5)]
    assert max_blocks_to_swap((6,), training=True) == 4 and max_blocks_to_swap((6,), training=False) == 5
    assert max_blocks_to_swap((6, 8), training=True) == 4 and max_blocks_to_swap((6, 8), training=False) == 6


def test_more_than_the_lists_hold_or_the_layout_allows_is_refused():
    check_blocks_to_swap(4, TWO_LISTS, (6, 8), training=True)
    with pytest.raises(ConfigError, match=r"would swap 7 of the 8 blocks of singles.*give at most 4"):
        check_blocks_to_swap(5, TWO_LISTS, (6, 8), training=True)
    check_blocks_to_swap(6, TWO_LISTS, (6, 8), training=False)
    with pytest.raises(ConfigError, match="give at most 6"):
        check_blocks_to_swap(7, TWO_LISTS, (6, 8), training=False)
    limited = ModelLayout(block_lists=("doubles",), max_blocks_to_swap_training=2)
    with pytest.raises(ConfigError, match=r"--blocks_to_swap 3 is above .* in training \(2\)"):
        check_blocks_to_swap(3, limited, (6,), training=True)


def test_the_schedule_is_the_references():
    # training: block i < s goes out for len - s + i; backward brings them back in reverse
    assert [forward_move(6, 2, i, forward_only=False) for i in range(6)] == [(0, 4), (1, 5), *[None] * 4]
    assert [backward_move(6, 2, i) for i in range(5, -1, -1)] == [None, (5, 1), (4, 0), None, None, None]
    # inference: edges only below len // 2, else wrapping around
    assert [forward_move(6, 2, i, forward_only=True) for i in range(6)] == [
        (0, 4),
        (1, 5),
        None,
        None,
        (4, 0),
        (5, 1),
    ]
    assert [forward_move(6, 4, i, forward_only=True) for i in range(6)] == [
        (0, 2),
        (1, 3),
        (2, 4),
        (3, 5),
        (4, 0),
        (5, 1),
    ]


# -- where the weights are ------------------------------------------------------------------------------


def test_placement_before_each_block_in_training():
    model = swapped(build(), ONE_LIST, 2, training=True)
    assert resident(model, "doubles") == [0, 1, 2, 3]
    recorder = record(model, ONE_LIST)
    step(model, torch.randn(2, 5, 4))
    early, late = (0, 1, 2, 3), (2, 3, 4, 5)
    assert recorder.seen == [
        ("doubles", 0, False, early),
        ("doubles", 1, False, (1, 2, 3, 4)),
        *[("doubles", i, False, late) for i in (2, 3, 4, 5)],
        ("doubles", 5, True, late),
        ("doubles", 4, True, late),
        ("doubles", 3, True, (1, 2, 3, 4)),
        *[("doubles", i, True, early) for i in (2, 1, 0)],
    ]
    assert resident(model, "doubles") == [0, 1, 2, 3]  # where the next step starts


def test_placement_in_inference_wrapping_around():
    model = swapped(build(), ONE_LIST, 4, training=False)
    recorder = record(model, ONE_LIST)
    with torch.no_grad():
        model(torch.randn(1, 3, 4))
    assert [seen[3] for seen in recorder.seen] == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (0, 5)]
    assert resident(model, "doubles") == [0, 1]


def test_only_block_linear_weights_move_and_lora_stays():
    model = swapped(build(), TWO_LISTS, 4, training=True)
    network = with_lora(model, TWO_LISTS)
    parked = {id(p) for p in model.parameters() if is_parked(p)}
    expected = {
        id(p)
        for path, n in (("doubles", 2), ("singles", 5))
        for b in getattr(model, path)[-n:]
        for p in swap_weights(b)
    }
    assert parked == expected and len(parked) == 2 * 3 + 5
    recorder = record(model, TWO_LISTS)
    step(model, torch.randn(2, 5, 4), network)
    assert len(recorder.seen) == 2 * (6 + 8)
    assert not any(is_parked(p) for p in network.parameters())
    assert not any(is_parked(p) for p in [*model.embed.parameters(), *model.out.parameters()])


# -- results equal no swapping --------------------------------------------------------------------------


@pytest.mark.parametrize("gc", ["plain", "checkpointing", "offload"])
@pytest.mark.parametrize("lora", [False, True], ids=["frozen", "lora"])
@pytest.mark.parametrize("n", [2, 4])
def test_training_steps_equal_no_swap(gc, lora, n):
    base, x = build(), torch.randn(2, 5, 4)
    reference = swapped(base, TWO_LISTS, 0, training=True, gc=gc)
    model = swapped(base, TWO_LISTS, n, training=True, gc=gc)
    nets = (with_lora(reference, TWO_LISTS), with_lora(model, TWO_LISTS)) if lora else (None, None)
    for _ in range(2):  # the second step starts where the first left the blocks
        want, got = step(reference, x, nets[0]), step(model, x, nets[1])
        assert torch.equal(want[0], got[0])
        assert len(want[1]) == len(got[1]) and all(torch.equal(a, b) for a, b in zip(want[1], got[1]))
        assert torch.isfinite(got[0]).all()


@pytest.mark.parametrize("n", [1, 3, 5])
def test_inference_passes_equal_no_swap(n):
    base = build()
    model = swapped(base, ONE_LIST, n, training=False)
    with torch.no_grad():
        for seed in range(3):
            x = torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(seed))
            assert torch.equal(base(x), model(x))
    assert resident(model, "doubles") == list(range(6 - n))


def test_samples_while_training_switch_to_inference_and_back():
    base, x = build(), torch.randn(2, 5, 4)
    reference = swapped(base, TWO_LISTS, 0, training=True)
    model = swapped(base, TWO_LISTS, 4, training=True)
    nets = with_lora(reference, TWO_LISTS), with_lora(model, TWO_LISTS)
    assert torch.equal(step(reference, x, nets[0])[1][1], step(model, x, nets[1])[1][1])
    BlockSwap.switch_to_inference(model)
    with torch.no_grad():
        assert torch.equal(reference(x), model(x))
        assert torch.equal(reference(x), model(x))
    with pytest.raises(RuntimeError, match="inference mode"):
        model(x.clone().requires_grad_()).sum().backward()
    switch_to_training(model)
    switch_to_training(model)  # twice is fine
    want, got = step(reference, x, nets[0]), step(model, x, nets[1])
    assert all(torch.equal(a, b) for a, b in zip(want[1], got[1]))


def test_a_pass_that_stopped_early_or_ran_without_gradients_is_put_right():
    base, x = build(), torch.randn(2, 5, 4)
    reference = swapped(base, TWO_LISTS, 0, training=True)
    model = swapped(base, TWO_LISTS, 4, training=True)
    nets = with_lora(reference, TWO_LISTS), with_lora(model, TWO_LISTS)
    model(x)  # forward with gradients, never backward: the training schedule left blocks out of place
    with torch.no_grad():  # a forward without gradients in training mode runs the inference schedule
        assert torch.equal(reference(x), model(x))
        assert resident(model, "doubles") == [0, 1, 2, 3]
    want, got = step(reference, x, nets[0]), step(model, x, nets[1])
    assert all(torch.equal(a, b) for a, b in zip(want[1], got[1]))


# -- refusals and messages ------------------------------------------------------------------------------


def test_trained_swapped_weights_are_refused():
    model = swapped(build(), ONE_LIST, 2, training=True).requires_grad_(True)
    with pytest.raises(NotSupportedError, match="Train a network"):
        model(torch.randn(1, 2, 4))


def test_without_cuda_it_says_it_needs_a_gpu(monkeypatch):
    monkeypatch.delenv(ENV_CPU)
    settings = MemorySettings(blocks_to_swap=2, training=True)
    check_block_swap_device(MemorySettings(), CPU)  # nothing asked, nothing refused
    with pytest.raises(NotAvailableError, match="--blocks_to_swap needs a CUDA GPU"):
        check_block_swap_device(settings, CPU)
    with pytest.raises(NotAvailableError, match="needs a CUDA GPU"):
        apply_memory_strategies(build(), ONE_LIST, settings, PLUGINS, CPU)


def test_pinned_memory_without_cuda_warns_and_pins_nothing(caplog):
    with caplog.at_level(logging.WARNING):
        model = swapped(build(), ONE_LIST, 2, training=False, use_pinned_memory_for_block_swap=True)
    assert "nothing is pinned" in caplog.text
    with torch.no_grad():
        assert torch.equal(build()(torch.ones(1, 1, 4)), model(torch.ones(1, 1, 4)))


def test_registered_as_a_core_strategy():
    assert "block-swap" in {s.name for s in PLUGINS.memory_strategies()}
    missing = unavailable_memory_options(PLUGINS, training=True)
    assert not {"blocks_to_swap", "use_pinned_memory_for_block_swap"} & missing


def test_transfer_swaps_values_exactly_through_rotating_host_buffers():
    transfer = WeightTransfer(CPU)
    a = [nn.Parameter(torch.randn(3, 2)), nn.Parameter(torch.randn(4))]
    b = [nn.Parameter(torch.randn(3, 2)), nn.Parameter(torch.randn(4))]
    values = {id(p): p.detach().clone() for p in a + b}
    storage = [p.data for p in a]
    transfer.park(b)
    assert all(is_parked(p) and not transfer.is_resident(p) for p in b)
    for _ in range(3):
        transfer.swap("in", "group", a, b)
        transfer.wait("in")
        assert [p.data.data_ptr() for p in b] == [t.data_ptr() for t in storage]  # b took a's storage
        assert all(is_parked(p) for p in a) and all(torch.equal(p, values[id(p)]) for p in b)
        assert all(torch.equal(transfer.host_copy(p), values[id(p)]) for p in a)
        a, b, storage = b, a, [p.data for p in b]
    transfer.restore(b)
    assert all(torch.equal(p, values[id(p)]) for p in a + b)
