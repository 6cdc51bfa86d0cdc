"""Training-step time of a network on tuner's FramePack DiT against the frozen base model.

Method:

- ``base``: the frozen DiT, with the noisy latents requiring a gradient, so that a step (forward, mean-square
  loss, backward) runs the same backward through every layer as network training does, but computes no
  weight gradient and has no optimizer. This is what a network's overhead is measured against.
- ``lora-r32``: tuner's LoRA (``--network_module lora``) of rank 32 on the layout's targets, plus an AdamW
  step and ``zero_grad``; ``lycoris-<algo>``: the same through lycoris-lora (``--network_module
  lycoris.kohya --network_args algo=<algo>``) with dim 32 and lycoris's defaults for everything else.
- Every configuration runs on a fresh copy of the same random weights; after ``--warmup`` steps the median
  of ``--steps`` step times is taken; configurations are measured in turn, ``--rounds`` times, alternating
  the order, and the median over rounds is printed with its ratio to ``base``.
- On CUDA the base weights are bf16, the step runs under bf16 autocast (as ``--mixed_precision bf16`` does)
  and each step ends with a synchronize; network weights stay float32, as in training.

Cases: ``tiny`` is the test config (width 64: a rank-32 adapter is half the width, so its ratio is large by
construction); ``mid`` is width 1024 (8 heads of 128), 2 double + 2 single blocks on a 5-frame 16x16-latent
section with history, 128 text and 64 image tokens (CPU-sized); ``wide`` is the real model's width 3072
(24 heads of 128) with the same blocks on a 9-frame section with 256 text tokens (GPU-sized). The real model is 20 + 40 blocks of width 3072.

Run: ``python benchmarks/lora_overhead.py [--case mid] [--device cpu|cuda] [--algos lora loha ...] [--bypass]``
(``--bypass``: each algorithm also with lycoris's ``bypass_mode=True``).
Only timings are printed; the target for ``lora-r32`` is a ratio <= 1.15 at realistic width.
"""

from __future__ import annotations

import argparse
import logging
import statistics
from collections.abc import Callable

import torch
from timing import median_step

ALGOS = ("lora", "loha", "lokr", "full", "dylora", "glora", "diag-oft", "boft", "ia3")
RANK = 32


def _case(name: str, device: torch.device) -> tuple[object, dict[str, torch.Tensor]]:
    """The DiT config and inputs of a case."""
    from tuner_framepack.testing.tiny_dit import tiny_dit_config, tiny_dit_inputs

    if name == "tiny":
        config = tiny_dit_config()
        inputs = tiny_dit_inputs(config)
    else:
        heads = 8 if name == "mid" else 24
        config = tiny_dit_config(
            num_attention_heads=heads,
            attention_head_dim=128,
            rope_axes_dim=(16, 56, 56),
            text_embed_dim=256,
            pooled_projection_dim=64,
            image_proj_dim=96,
        )
        frames, text = (5, 128) if name == "mid" else (9, 256)
        inputs = tiny_dit_inputs(config, frames=frames, height=16, width=16, text_len=text, image_tokens=64)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    inputs = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}
    return config, inputs


def _model(config: object, device: torch.device) -> torch.nn.Module:
    from tuner_framepack.testing.tiny_dit import build_tiny_dit

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_tiny_dit(config, seed=0).to(device, dtype)
    model.requires_grad_(False)
    return model.train()


def _network(kind: str, model: torch.nn.Module, device: torch.device) -> torch.nn.Module | None:
    """``None`` for the frozen base; else the network, applied to ``model``."""
    from tuner_framepack.architecture import FramePackArchitecture

    layout = FramePackArchitecture.layout
    if kind == "base":
        return None
    if kind == "lora-r32":
        from tuner_lora.lora_network import LoRANetworkType

        network = LoRANetworkType().create(model, layout, dim=RANK, alpha=1.0, dropout=None, args={})
    else:
        from tuner_lora.lycoris_network import LycorisNetworkType

        algo, _, mode = kind.removeprefix("lycoris-").partition("+")
        args = {"algo": algo, **({"bypass_mode": True} if mode == "bypass" else {})}
        network = LycorisNetworkType().create(model, layout, dim=RANK, alpha=1.0, dropout=None, args=args)
    network.apply_to(model)
    return network.to(device).train()


def _step_fn(kind: str, case: str, device: torch.device) -> Callable[[], None]:
    """One training step of ``kind`` on ``case``, ready to call."""
    torch.manual_seed(0)
    config, inputs = _case(case, device)
    model = _model(config, device)
    network = _network(kind, model, device)
    optimizer = torch.optim.AdamW(network.parameter_groups(1e-4)) if network is not None else None
    latents = inputs.pop("hidden_states")
    autocast = (
        torch.autocast("cuda", torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )

    def step() -> None:
        noisy = latents.detach().requires_grad_(network is None)
        with autocast:
            loss = model(hidden_states=noisy, **inputs).float().square().mean()
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def main() -> None:
    """Measure and print each configuration's step time and its ratio to the frozen base."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=("tiny", "mid", "wide"), default="mid")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--algos", nargs="*", default=list(ALGOS), help="LyCORIS algorithms (none: skip)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--bypass",
        action="store_true",
        help="also each algorithm with --network_args bypass_mode=True (lycoris adds the update to the "
        "output instead of rebuilding the weight every step)",
    )
    args = parser.parse_args()
    logging.getLogger("LyCORIS").setLevel(logging.ERROR)
    device = torch.device(args.device)
    modes = ("", "+bypass") if args.bypass else ("",)
    kinds = ["base", "lora-r32", *(f"lycoris-{a}{m}" for a in args.algos for m in modes)]
    results: dict[str, list[float]] = {k: [] for k in kinds}
    for round_index in range(args.rounds):
        order = kinds if round_index % 2 == 0 else list(reversed(kinds))
        for kind in order:
            step = _step_fn(kind, args.case, device)
            results[kind].append(median_step(step, args.warmup, args.steps))
            del step
            if device.type == "cuda":
                torch.cuda.empty_cache()
    base = statistics.median(results["base"])
    print(f"case {args.case} on {device} ({torch.get_num_threads()} threads), rank/dim {RANK}")
    print(f"{'configuration':<26}{'ms/step':>10}{'ratio':>8}   rounds (ms)")
    for kind in kinds:
        value = statistics.median(results[kind])
        rounds = " ".join(f"{t * 1e3:.1f}" for t in results[kind])
        print(f"{kind:<26}{value * 1e3:>10.1f}{value / base:>8.3f}   {rounds}")


if __name__ == "__main__":
    main()
