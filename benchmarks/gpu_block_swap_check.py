"""Block swap on a CUDA GPU: peak memory, step time and exact equality against no swapping.

What the CPU tests cannot show, measured on a synthetic stack of mid-size blocks laid out like FramePack's
DiT (a list of "double" blocks, then a list of "single" blocks twice as many, width 3072 as the real model,
about 113M bf16 parameters per block):

- peak CUDA memory of a step with N = 0 and N > 0 blocks swapped, and the weights resident after placement;
- median step time, and its ratio to no swapping (how much of the copying the copy stream hides);
- outputs and input gradients bit-equal to no swapping (``torch.equal``; the max difference is printed too);
- pinned (``--use_pinned_memory_for_block_swap``) and pageable host memory, with and without gradient
  checkpointing, forward-only inference and forward + backward training, and a switch to inference and back;
- that moving the model whole after placement (``model.to("cuda")``, as accelerate's device placement would)
  is caught by the first forward pass.

Run on a machine with a CUDA GPU: ``python benchmarks/gpu_block_swap_check.py [--tokens 16384] [--steps 4]``.
Prints one line per case and writes ``$OUT/block_swap.json`` (or ``./block_swap.json``) with every figure.
Exits 1 when a result differs from no swapping or a check fails.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tuner_core import make_plugin_manager
from tuner_core.architecture import ModelLayout
from tuner_core.memory.apply import apply_memory_strategies
from tuner_core.memory.block_swap import block_swappers, switch_to_inference, switch_to_training
from tuner_core.memory.strategy import MemorySettings

LAYOUT = ModelLayout(block_lists=("doubles", "singles"))
PLUGINS = make_plugin_manager(entry_points=False)
#: ``--device cpu`` dry-runs this script's logic with the CPU as both devices (no figure means anything).
DEVICE = torch.device("cuda")


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _memory(peak: bool = False) -> int:
    if DEVICE.type != "cuda":
        return 0
    return torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()


class DoubleBlock(nn.Module):
    """Attention-sized projections and an MLP (no attention kernel: the matrix work is what matters)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        x = x + self.out(q * torch.sigmoid(k) + v) * 0.1
        return x + self.down(F.gelu(self.up(self.norm(x)))) * 0.1


class SingleBlock(nn.Module):
    """Half a double block's weights, as FramePack's single blocks are."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 3 * width)
        self.down = nn.Linear(3 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x)))) * 0.1


class Stack(nn.Module):
    def __init__(self, doubles: int, singles: int, width: int) -> None:
        super().__init__()
        self.doubles = nn.ModuleList(DoubleBlock(width) for _ in range(doubles))
        self.singles = nn.ModuleList(SingleBlock(width) for _ in range(singles))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in [*self.doubles, *self.singles]:
            x = block(x)
        return x


def prepare(base: Stack, n: int, *, training: bool, gc: bool, pinned: bool) -> Stack:
    """A copy of ``base`` (on the GPU) with the memory strategies applied, as the commands apply them."""
    model = copy.deepcopy(base)
    settings = MemorySettings(
        blocks_to_swap=n,
        gradient_checkpointing=gc,
        use_pinned_memory_for_block_swap=pinned,
        training=training,
    )
    apply_memory_strategies(model, LAYOUT, settings, PLUGINS, DEVICE)
    return model.train(training)


def one_step(model: Stack, x: torch.Tensor, training: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not training:
        with torch.no_grad():
            return model(x), None
    x = x.detach().requires_grad_()
    out = model(x)
    out.float().square().mean().backward()
    return out.detach(), x.grad


def measure(model: Stack, x: torch.Tensor, training: bool, steps: int) -> dict:
    """Peak memory of one step, median time of ``steps`` steps (after one warm-up), the last results."""
    one_step(model, x, training)
    _sync()
    resident = _memory()
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        out, grad = one_step(model, x, training)
        _sync()
        times.append(time.perf_counter() - start)
    return {
        "peak_gib": _memory(peak=True) / 2**30,
        "resident_gib": resident / 2**30,
        "step_s": statistics.median(times),
        "out": out,
        "grad": grad,
    }


def compare(got: dict, want: dict) -> dict:
    """Bit equality (and the max difference) of outputs and input gradients."""
    pairs = [("out", got["out"], want["out"])]
    if want["grad"] is not None:
        pairs.append(("grad", got["grad"], want["grad"]))
    result = {}
    for name, a, b in pairs:
        result[f"{name}_equal"] = bool(torch.equal(a, b))
        result[f"{name}_max_diff"] = float((a.float() - b.float()).abs().max())
    return result


def run_cases(
    base: Stack, x: torch.Tensor, steps: int, cases: list[tuple[str, int, bool, bool, bool]]
) -> list:
    rows, references = [], {}
    for mode, n, gc, pinned, training in cases:
        model = prepare(base, n, training=training, gc=gc, pinned=pinned)
        figures = measure(model, x, training, steps)
        key = (mode, gc)
        if n == 0:
            references[key] = figures
        want = references[key]
        row = {
            "mode": mode,
            "blocks_to_swap": n,
            "checkpointing": gc,
            "pinned": pinned,
            **{k: round(v, 4) for k, v in figures.items() if isinstance(v, float)},
            "time_ratio": round(figures["step_s"] / want["step_s"], 3),
            **compare(figures, want),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        del model, figures
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def check_switch_and_round_trip(base: Stack, x: torch.Tensor) -> dict:
    """Training -> inference -> training on one model: results stay equal, weights come back intact."""
    model = prepare(base, 6, training=True, gc=True, pinned=True)
    want_train = one_step(base.train(), x, True)
    got_train = one_step(model, x, True)
    switch_to_inference(model)
    with torch.no_grad():
        infer_equal = bool(torch.equal(base(x), model(x)))
    switch_to_training(model)
    again = one_step(model, x, True)
    transfer = block_swappers(model)[0].transfer
    transfer.synchronize()
    intact = all(
        torch.equal((p if transfer.is_resident(p) else transfer.host_copy(p)).to(DEVICE), q)
        for p, q in zip(model.parameters(), base.parameters())
    )
    return {
        "train_equal": bool(torch.equal(got_train[1], want_train[1])),
        "inference_equal": infer_equal,
        "train_again_equal": bool(torch.equal(again[1], want_train[1])),
        "weights_intact": intact,
    }


def check_moved_model_is_caught(base: Stack, x: torch.Tensor) -> dict:
    model = prepare(base, 4, training=False, gc=False, pinned=False)
    if DEVICE.type != "cuda":
        return {"caught": None}  # moving a CPU model to the CPU moves nothing
    model.to("cuda")  # what accelerate's device placement would do
    try:
        with torch.no_grad():
            model(x)
    except RuntimeError as exc:
        return {"caught": "was moved after block swap placed it" in str(exc)}
    return {"caught": False}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--doubles", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--width", type=int, default=3072)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of this script's logic")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU (or --device cpu for a dry run)")
        return 2
    if DEVICE.type == "cpu":
        os.environ["TUNER_BLOCK_SWAP_CPU"] = "1"
    torch.manual_seed(0)
    with DEVICE:
        base = Stack(args.doubles, 2 * args.doubles, args.width).to(torch.bfloat16).requires_grad_(False)
        x = torch.randn(1, args.tokens, args.width, dtype=torch.bfloat16)
    weights = sum(p.numel() * p.element_size() for p in base.parameters()) / 2**30
    top_train, top_infer = 12 * args.doubles // 8, 14 * args.doubles // 8  # (6, 13) and (7, 15) of 8 + 16
    name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu (dry run)"
    print(f"{name}: {weights:.2f} GiB of weights, {args.tokens} tokens", flush=True)
    # (mode, blocks_to_swap, checkpointing, pinned, training); each N = 0 row is the reference of the next
    cases = [("inference", 0, False, False, False)]
    cases += [("inference", n, False, pinned, False) for n in (6, top_infer) for pinned in (True, False)]
    for gc in (False, True):
        cases.append(("training", 0, gc, False, True))
        cases += [("training", n, gc, pinned, True) for n in (6, top_train) for pinned in (True, False)]
    rows = run_cases(base, x, args.steps, cases)
    checks = {"switch": check_switch_and_round_trip(base, x), "moved": check_moved_model_is_caught(base, x)}
    print(json.dumps(checks), flush=True)
    out = Path(os.environ.get("OUT", ".")) / "block_swap.json"
    out.write_text(
        json.dumps({"weights_gib": weights, "tokens": args.tokens, "rows": rows, "checks": checks})
    )
    equal = all(r["out_equal"] and r.get("grad_equal", True) for r in rows)
    ok = equal and all(checks["switch"].values()) and checks["moved"]["caught"] is not False
    print("all equal and checks passed" if ok else "FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
