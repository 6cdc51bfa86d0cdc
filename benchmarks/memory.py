"""Memory options on a FramePack DiT: weight bytes, load peak, activations kept for backward, step time.

Method:

- A random-weight DiT (the test kit's ``build_tiny_dit`` widened to 256, ``--quick`` 128; 4 double + 8
  single blocks, so the blocks hold most weights) is saved in bf16 in the diffusers layout. Every model
  is loaded from it through the real loader (``load_dit``) with the registered memory strategies
  (``load_transform`` while streaming, then ``apply_memory_strategies``), as ``tuner train`` does.
- Weights: state-dict bytes with ``--fp8_base`` / ``--fp8_scaled`` over bf16, for the quantised layers
  (with their scales) and the whole model; the real 13B model's figure from its config on the meta device.
- Load peak: the most host tensor memory alive at once while the fp8-scaled model streams in
  (``tiny_memory.peak_memory``), over the bf16 model's bytes: onto the host, and onto another device (the
  GPU with ``--device cuda``, else the meta device, which keeps nothing: what remains is streaming's own).
- Activations: a rank-16 LoRA (the lora plugin) on the bf16 base, one training forward; the distinct
  storages autograd saves for backward, weights excluded, counted by a saved-tensor hook around it. The
  offload's hooks take over inside checkpointed blocks; what they copy is counted apart (without CUDA
  they are told to copy anyway, as the tests do). On CUDA the allocator's growth is printed too.
- Step time: forward, loss, backward and AdamW of that LoRA per option: after ``--warmup`` steps the
  median of ``--steps``, options in turn for ``--rounds`` rounds in alternating order, the median over
  rounds against the bf16 step of the same run. Without CUDA block swap runs with the CPU as both devices
  (``TUNER_BLOCK_SWAP_CPU=1``, the tests' switch): it saves nothing and shows its hooks' and copies' cost.

Ratios come from the same run; wall times are printed, never asserted.

    python benchmarks/memory.py [--quick] [--device cpu|cuda] [--rounds 3] [--warmup 1] [--steps 3]

Targets: fp8-scaled / bf16 bytes of the quantised layers <= 0.53 (expected (1 + 2/64) / 2 = 0.516);
activations kept with gradient checkpointing / without <= 0.35.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import attrs
import torch
from timing import median_step
from torch import nn

from tuner_core.memory.apply import apply_memory_strategies, load_transform
from tuner_core.memory.block_swap import ENV_CPU
from tuner_core.memory.checkpointing import activation_offload
from tuner_core.memory.fp8 import quantisable_names
from tuner_core.memory.fp8_format import scale_key
from tuner_core.memory.strategy import MemorySettings
from tuner_core.plugins import make_plugin_manager
from tuner_framepack.architecture import FramePackArchitecture
from tuner_framepack.dit import DiTConfig, HunyuanVideoTransformer3DModelPacked, load_dit
from tuner_framepack.testing.tiny_dit import (
    build_tiny_dit,
    save_diffusers_layout,
    tiny_dit_config,
    tiny_dit_inputs,
)
from tuner_framepack.testing.tiny_memory import peak_memory

LAYOUT = FramePackArchitecture.layout
PLUGINS = make_plugin_manager()
QUANTISED_TARGET = 0.53
CHECKPOINT_TARGET = 0.35
LORA_RANK = 16
BLOCKS_TO_SWAP = 4  # 2 of the 4 double blocks and 5 of the 8 single ones, by the reference's split
MIB = 2**20
GC = "--gradient_checkpointing"
OFFLOAD = "  + --gradient_checkpointing_cpu_offload"

#: The step configurations: name and the memory settings of their load (all train a LoRA).
CONFIGURATIONS: dict[str, MemorySettings] = {
    "bf16": MemorySettings(training=True),
    "--fp8_base": MemorySettings(training=True, fp8_base=True),
    "--fp8_scaled": MemorySettings(training=True, fp8_base=True, fp8_scaled=True),
    GC: MemorySettings(training=True, gradient_checkpointing=True),
    OFFLOAD: MemorySettings(
        training=True, gradient_checkpointing=True, gradient_checkpointing_cpu_offload=True
    ),
    f"--blocks_to_swap {BLOCKS_TO_SWAP}": MemorySettings(training=True, blocks_to_swap=BLOCKS_TO_SWAP),
}


@attrs.frozen
class Bench:
    """The saved checkpoint, its config, the training inputs and where everything runs."""

    path: Path
    config: DiTConfig
    inputs: dict[str, torch.Tensor]
    device: torch.device

    @property
    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA, as ``--mixed_precision bf16``; on the CPU the bf16 weights decide."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", torch.bfloat16)
        return contextlib.nullcontext()

    def sync(self) -> None:
        """Wait for the GPU, so times and memory figures cover the work asked for."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def make_bench(root: Path, *, quick: bool, device: torch.device) -> Bench:
    """Build the widened random DiT, save it in bf16 and make inputs of one training section."""
    heads = 2 if quick else 4
    config = tiny_dit_config(
        num_attention_heads=heads,
        attention_head_dim=64,
        rope_axes_dim=(16, 24, 24),
        num_layers=4,
        num_single_layers=8,
        text_embed_dim=128,
        pooled_projection_dim=64,
        image_proj_dim=96,
    )
    model = build_tiny_dit(config).to(torch.bfloat16)
    path = save_diffusers_layout(model, config, root / "dit", num_shards=2).shards[0]
    size, text = (12, 32) if quick else (16, 64)
    inputs = tiny_dit_inputs(
        config, frames=5, height=size, width=size, text_len=text, image_tokens=64, dtype=torch.bfloat16
    )
    inputs = {k: v.to(device) for k, v in inputs.items()}
    return Bench(path, config, inputs, device)


def load(bench: Bench, settings: MemorySettings, device: torch.device | str | None = None) -> nn.Module:
    """The DiT through the real loader with the registered strategies (``tests/framepack/test_fp8``'s way)."""
    target = torch.device(device or bench.device)
    # Block swap places each weight itself, so the model loads on the host first (as prepare_model does).
    load_device = torch.device("cpu") if settings.blocks_to_swap else target
    transform = load_transform(LAYOUT, settings, PLUGINS)
    model = load_dit(
        bench.path,
        config={"rope_axes_dim": bench.config.rope_axes_dim},
        dtype=torch.bfloat16,
        device=load_device,
        transform=transform,
    )
    if target.type != "meta":
        apply_memory_strategies(model, LAYOUT, settings, PLUGINS, target)
    return model


def state_bytes(state: dict[str, torch.Tensor], names: list[str] | None = None) -> int:
    """Bytes of ``state`` (or of ``names`` in it)."""
    return sum(state[n].numel() * state[n].element_size() for n in (names if names is not None else state))


def weight_figures(bench: Bench) -> dict[str, float]:
    """fp8 / bf16 weight bytes: the quantised layers (with their scales) and the whole model."""
    bf16 = load(bench, MemorySettings(), "cpu").state_dict()
    names = quantisable_names({k: tuple(v.shape) for k, v in bf16.items()}, LAYOUT)
    figures = {"quantised share": sum(bf16[n].numel() for n in names) / sum(t.numel() for t in bf16.values())}
    for label, scaled in (("fp8", False), ("fp8-scaled", True)):
        state = load(bench, MemorySettings(fp8_base=True, fp8_scaled=scaled), "cpu").state_dict()
        quantised = names + [scale_key(n) for n in names if scale_key(n) in state]
        figures[f"{label} layers"] = state_bytes(state, quantised) / state_bytes(bf16, names)
        figures[f"{label} whole"] = state_bytes(state) / state_bytes(bf16)
    figures["bf16 bytes"] = state_bytes(bf16)
    return figures


def real_model_figures() -> dict[str, float]:
    """The released 13B DiT's fp8 / bf16 whole-model bytes, from its configuration on the meta device."""
    with torch.device("meta"):
        model = HunyuanVideoTransformer3DModelPacked(DiTConfig())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    quantised = sum(math.prod(shapes[n]) for n in quantisable_names(shapes, LAYOUT))
    total = sum(math.prod(s) for s in shapes.values())
    rest = 2 * (total - quantised)  # embedders, AdaLN modulation linears, refiner: bf16
    return {
        "quantised share": quantised / total,
        "fp8 whole": (quantised + rest) / (2 * total),
        "fp8-scaled whole": (quantised * (1 + 2 / 64) + rest) / (2 * total),
    }


def load_peaks(bench: Bench, bf16_bytes: float) -> dict[str, float]:
    """Host peaks of the bf16 and fp8-scaled loads onto the host, and of the fp8-scaled load elsewhere."""
    scaled = MemorySettings(fp8_base=True, fp8_scaled=True)
    elsewhere = "cuda" if bench.device.type == "cuda" else "meta"
    peaks = {
        "bf16 onto the host": peak_memory(lambda: load(bench, MemorySettings(), "cpu"))[0],
        "fp8-scaled onto the host": peak_memory(lambda: load(bench, scaled, "cpu"))[0],
        f"fp8-scaled onto {elsewhere}": peak_memory(lambda: load(bench, scaled, elsewhere))[0],
    }
    return {k: v / bf16_bytes for k, v in peaks.items()}


def lora_model(bench: Bench, settings: MemorySettings) -> tuple[nn.Module, nn.Module]:
    """The base loaded with ``settings`` and a LoRA on it, in training mode, as ``prepare_model`` does."""
    # Without CUDA block swap runs only under the tests' switch (the CPU as both devices).
    cpu_swap = settings.blocks_to_swap and bench.device.type != "cuda"
    with mock.patch.dict(os.environ, {ENV_CPU: "1"} if cpu_swap else {}):
        model = load(bench, settings).train()
    model.requires_grad_(False)
    network = PLUGINS.network("lora").create(model, LAYOUT, dim=LORA_RANK, alpha=1.0, dropout=None, args={})
    network.apply_to(model)
    return model, network.to(bench.device).train()


def kept_for_backward(bench: Bench, settings: MemorySettings) -> dict[str, int]:
    """Bytes autograd keeps from one LoRA training forward: on the compute device, and offloaded."""
    model, network = lora_model(bench, settings)
    offload = activation_offload(model)
    if offload is not None and bench.device.type == "cpu":
        offload.always_copy = True  # one device here: copy anyway (as the tests do), so what moves is counted
    tensors = [*model.state_dict().values(), *network.state_dict().values()]
    weights = {t.untyped_storage().data_ptr() for t in tensors}  # the base's and the LoRA's
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:  # views of one storage count once
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    first = model.single_transformer_blocks[0]
    tokens: list[int] = []
    hook = first.register_forward_pre_hook(lambda _module, args: tokens.append(args[0].shape[1]))
    bench.sync()
    before = torch.cuda.memory_allocated(bench.device) if bench.device.type == "cuda" else 0
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), bench.autocast:
        out = model(**bench.inputs)
    bench.sync()
    hook.remove()
    figures = {
        "device": sum(saved.values()),
        "host": offload.counts.copied_bytes if offload is not None else 0,
        "tokens": tokens[0],
    }
    if bench.device.type == "cuda":
        figures["allocated"] = torch.cuda.memory_allocated(bench.device) - before
    del out
    return figures


def step_fn(bench: Bench, settings: MemorySettings) -> Callable[[], None]:
    """One LoRA training step (forward, loss, backward, AdamW) on the base loaded with ``settings``."""
    torch.manual_seed(0)
    model, network = lora_model(bench, settings)
    optimizer = torch.optim.AdamW(network.parameter_groups(1e-4))

    def step() -> None:
        with bench.autocast:
            loss = model(**bench.inputs).float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bench.sync()

    return step


def step_times(bench: Bench, args: argparse.Namespace) -> dict[str, list[float]]:
    """Per configuration, the median step time of each round (order alternating between rounds)."""
    names = list(CONFIGURATIONS)
    results: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            step = step_fn(bench, CONFIGURATIONS[name])
            results[name].append(median_step(step, args.warmup, args.steps))
            del step
            if bench.device.type == "cuda":
                torch.cuda.empty_cache()
    return results


def report_weights(weights: dict[str, float], real: dict[str, float]) -> None:
    """Section 1: weight bytes with fp8 against bf16."""
    print(f"\n1. weight bytes, against bf16 ({weights['bf16 bytes'] / MIB:.1f} MiB here)")
    print(f"{'':34s}{'quantised layers':>18s}{'whole model':>14s}{'real 13B, whole':>18s}")
    for label, flag in (("fp8", "--fp8_base"), ("fp8-scaled", "--fp8_scaled")):
        print(
            f"  {flag:32s}{weights[f'{label} layers']:>18.3f}"
            f"{weights[f'{label} whole']:>14.3f}{real[f'{label} whole']:>18.3f}"
        )
    print(
        f"  The quantised layers are {weights['quantised share']:.0%} of the parameters here and "
        f"{real['quantised share']:.0%} in the real model: the\n  reference's rule keeps the AdaLN "
        "modulation linears (norm*.linear), the embedders and the text refiner in\n  bf16, so the whole "
        "model shrinks less than its quantised layers (real model computed on the meta device)."
    )


def report_activations(bench: Bench, kept: dict[str, dict[str, int]]) -> None:
    """Section 3: bytes kept for backward per option."""
    blocks = bench.config.num_layers + bench.config.num_single_layers
    plain = kept["bf16"]["device"]
    cuda = bench.device.type == "cuda"
    print(
        f"\n3. activations kept for backward (LoRA rank {LORA_RANK} training forward, {blocks} blocks, "
        f"{kept['bf16']['tokens']} tokens per block)"
    )
    print(
        f"{'':44s}{'on device MiB':>14s}{'/ none':>8s}{'on host MiB':>13s}"
        + ("  CUDA growth MiB" if cuda else "")
    )
    for name, figures in kept.items():
        label = "no checkpointing" if name == "bf16" else name
        extra = f"{figures['allocated'] / MIB:>17.2f}" if cuda else ""
        print(
            f"  {label:42s}{figures['device'] / MIB:>14.2f}{figures['device'] / plain:>8.3f}"
            f"{figures['host'] / MIB:>13.2f}{extra}"
        )
    if not cuda:
        print("  (no CUDA: the offload copies into host memory on the same machine, as the tests make it)")


def report_steps(bench: Bench, times: dict[str, list[float]]) -> None:
    """Section 4: step time per option against the bf16 step."""
    base = statistics.median(times["bf16"])
    print(f"\n4. LoRA training step (rank {LORA_RANK}, forward + backward + AdamW), median over rounds")
    print(f"{'':44s}{'ms/step':>10s}{'/ bf16':>8s}   rounds (ms)")
    for name, values in times.items():
        value = statistics.median(values)
        rounds = " ".join(f"{t * 1e3:.0f}" for t in values)
        print(f"  {name:42s}{value * 1e3:>10.0f}{value / base:>8.3f}   {rounds}")
    if bench.device.type != "cuda":
        print(
            "  (no CUDA: fp8 layers upcast their weights per call; block swap runs with the CPU as both\n"
            f"  devices ({ENV_CPU}=1), so it saves nothing and shows only its hooks and copies; the offload\n"
            "  has nothing to move and copies nothing in these timed steps)"
        )


def main() -> None:
    """Measure the four figures and print them with a verdict per target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="width 128, a smaller section: a faster run")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    # One thread: with two on this shared 2-core machine a step now and then took 5-10x longer (threads
    # waiting for each other while another process held a core), which no median of a few steps hides.
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of step timing (default 3, quick 2)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round (default 3, quick 2)")
    args = parser.parse_args()
    args.steps = args.steps or (2 if args.quick else 3)
    args.rounds = args.rounds or (2 if args.quick else 3)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bench = make_bench(Path(tmp), quick=args.quick, device=device)
        weights, real = weight_figures(bench), real_model_figures()
        peaks = load_peaks(bench, weights["bf16 bytes"])
        kept = {name: kept_for_backward(bench, CONFIGURATIONS[name]) for name in ("bf16", GC, OFFLOAD)}
        times = step_times(bench, args)
    c = bench.config
    print(
        f"\nFramePack DiT, random weights: width {c.num_attention_heads * c.attention_head_dim} "
        f"({c.num_attention_heads} heads of {c.attention_head_dim}), {c.num_layers} double + "
        f"{c.num_single_layers} single blocks; bf16 weights, {device}, threads: {torch.get_num_threads()}"
    )
    report_weights(weights, real)
    print("\n2. host tensor peak while loading, against the bf16 model's bytes")
    for label, value in peaks.items():
        print(f"  {label:42s}{value:>8.3f}")
    report_activations(bench, kept)
    report_steps(bench, times)
    checkpointed = kept[GC]["device"] / kept["bf16"]["device"]
    print(f"\n{'target':58s}{'measured':>9s}{'target':>9s}   verdict")
    lines = [
        (
            "fp8-scaled / bf16 bytes, quantised layers (expected 0.516)",
            weights["fp8-scaled layers"],
            QUANTISED_TARGET,
        ),
        ("activations kept, checkpointing / none", checkpointed, CHECKPOINT_TARGET),
    ]
    for label, value, target in lines:
        print(f"{label:58s}{value:>9.3f}{'<= ' + str(target):>9s}   {'met' if value <= target else 'missed'}")
    print(f"\nbenchmark wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
