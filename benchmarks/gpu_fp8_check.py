"""fp8 block weights on a CUDA GPU: accuracy, speed and memory of --fp8_scaled and --fp8_fast.

What the CPU tests cannot show:

1. Per layer, at FramePack's Linear shapes (3072x3072, 3072->12288, 12288->3072, 15360->3072) and a
   token count that is not a multiple of 16: relative error against float32 of the bf16 layer, of the
   block-scaled fp8 layer (weight upcast per call), of the per-channel fp8 layer multiplied with
   ``torch._scaled_mm`` (``--fp8_fast``) and of plain fp8; forward and forward+backward times; the peak
   memory of forward+backward (the fp8 layer must not keep a dequantised copy for backward); the input
   gradient's error.
2. On a DiT of the real width (3072, 24 heads of 128) with fewer blocks (2 double, 4 single), streamed in
   through ``load_into_model`` with the registered fp8 strategy: weight bytes on the GPU (bf16 vs
   fp8-scaled vs fp8-fast), output cosine similarity to bf16, forward time, and a LoRA training step
   (rank 16, gradient checkpointing) with its peak VRAM and time.

Run on a machine with a CUDA GPU from the repository root::

    python benchmarks/gpu_fp8_check.py [--tokens 8191] [--repeats 20]

``--dry-run`` runs the same logic on the CPU with small shapes (no figure means anything). Prints one
line per case and writes ``$OUT/fp8_check.json`` (or ``./fp8_check.json``). Exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "plugins" / "framepack", ROOT / "plugins" / "lora"):
    sys.path.insert(0, str(_path))
try:  # tuner_core imports PyAV for its video reader; this script reads no video
    import av  # noqa: F401
except ImportError:
    _av = types.ModuleType("av")
    _av.error = types.SimpleNamespace(FFmpegError=type("FFmpegError", (Exception,), {}))
    sys.modules["av"] = _av

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from tuner_core import make_plugin_manager  # noqa: E402
from tuner_core.memory.apply import apply_memory_strategies, load_transform  # noqa: E402
from tuner_core.memory.fp8 import Fp8Options  # noqa: E402
from tuner_core.memory.fp8_format import cast_to_fp8, quantise_weight  # noqa: E402
from tuner_core.memory.fp8_linear import fp8_matmul_problem, make_fp8_linear  # noqa: E402
from tuner_core.memory.strategy import MemorySettings  # noqa: E402
from tuner_core.weights import StateDictSource, load_into_model  # noqa: E402

SHAPES = [(3072, 3072), (12288, 3072), (3072, 12288), (3072, 15360)]  # (out, in)
FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("  ok   " if ok else "  FAIL ") + what)
    if not ok:
        FAILURES.append(what)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bytes(fn, device: torch.device) -> int:
    if device.type != "cuda":
        fn()
        return 0
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def fp8_linear(weight: torch.Tensor, mode: str | None, fast: bool) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=True, device=weight.device, dtype=weight.dtype)
    nn.init.normal_(layer.bias, std=0.02)
    if mode is None:
        layer.weight = nn.Parameter(cast_to_fp8(weight), requires_grad=False)
    else:
        values, scale = quantise_weight(weight, mode)
        layer.weight = nn.Parameter(values, requires_grad=False)
        layer.register_buffer("scale_weight", scale)
    return make_fp8_linear(layer, fast=fast)


def layer_case(shape, tokens: int, device: torch.device, repeats: int, fast_ok: bool) -> dict:
    out_f, in_f = shape
    gen = torch.Generator(device=device).manual_seed(0)
    weight = (torch.randn(out_f, in_f, generator=gen, device=device) * 0.02).to(torch.bfloat16)
    x = torch.randn(tokens, in_f, generator=gen, device=device).to(torch.bfloat16)
    bf16 = nn.Linear(in_f, out_f, device=device, dtype=torch.bfloat16).requires_grad_(False)
    bf16.weight.copy_(weight)
    layers = {
        "bf16": bf16,
        "fp8_block": fp8_linear(weight, "block", fast=False),
        "fp8_plain": fp8_linear(weight, None, fast=False),
    }
    if fast_ok:
        layers["fp8_fast"] = fp8_linear(weight, "channel", fast=True)
    exact_grad_in = None
    figures: dict = {}
    for name, layer in layers.items():
        layer.bias.data.copy_(bf16.bias)
        exact = F.linear(x.float(), weight.float(), bf16.bias.float())
        xg = x.detach().clone().requires_grad_(True)
        out = layer(xg)
        out.float().square().mean().backward()
        if exact_grad_in is None:
            xe = x.float().detach().clone().requires_grad_(True)
            F.linear(xe, weight.float(), bf16.bias.float()).square().mean().backward()
            exact_grad_in = xe.grad

        def forward(layer=layer):
            with torch.no_grad():
                layer(x)

        def step(layer=layer):
            xs = x.detach().clone().requires_grad_(True)
            layer(xs).float().square().mean().backward()

        figures[name] = {
            "error": rel(out, exact),
            "grad_error": rel(xg.grad, exact_grad_in),
            "forward_ms": timed(forward, device, repeats) * 1e3,
            "step_ms": timed(step, device, repeats) * 1e3,
            "step_peak_mib": peak_bytes(step, device) / 2**20,
            "fast": bool(getattr(layer, "fp8_fast", False)),
        }
    return figures


def report_layers(tokens: int, device: torch.device, repeats: int, fast_ok: bool, shapes) -> dict:
    results = {}
    for shape in shapes:
        figures = layer_case(shape, tokens, device, repeats, fast_ok)
        results[f"{shape[0]}x{shape[1]}"] = figures
        print(f"layer out={shape[0]} in={shape[1]} tokens={tokens}")
        for name, f in figures.items():
            print(
                f"  {name:10s} error {f['error']:.4f} grad {f['grad_error']:.4f} fwd {f['forward_ms']:.3f} ms "
                f"fwd+bwd {f['step_ms']:.3f} ms peak {f['step_peak_mib']:.0f} MiB"
            )
        check(figures["fp8_block"]["error"] < 0.04, f"{shape}: block-scaled fp8 error < 4%")
        check(
            figures["fp8_block"]["grad_error"] < 0.05, f"{shape}: block-scaled fp8 input gradient error < 5%"
        )
        if device.type == "cuda":
            check(
                figures["fp8_block"]["step_peak_mib"] <= figures["bf16"]["step_peak_mib"] * 1.05 + 1,
                f"{shape}: fp8 forward+backward peak no higher than bf16's (no dequantised copy kept)",
            )
        if fast_ok:
            fast = figures["fp8_fast"]
            check(fast["fast"], f"{shape}: --fp8_fast layer uses torch._scaled_mm")
            check(fast["error"] < 0.06, f"{shape}: fp8 matmul error < 6%")
            check(fast["grad_error"] < 0.05, f"{shape}: fp8 matmul input gradient error < 5%")
    return results


def dit_state(config, device: torch.device) -> dict:
    from tuner_framepack.dit import HunyuanVideoTransformer3DModelPacked
    from tuner_framepack.testing.tiny_dit import randomize_weights

    with torch.device(device):
        model = HunyuanVideoTransformer3DModelPacked(config)
    randomize_weights(model)
    # On the host, as a checkpoint would be: each load copies (and quantises) tensor by tensor.
    state = {k: v.to("cpu", torch.bfloat16) for k, v in model.state_dict().items()}
    del model
    return state


def load_variant(config, state, settings, device, plugins, layout):
    from tuner_framepack.dit import HunyuanVideoTransformer3DModelPacked

    with torch.device("meta"):
        model = HunyuanVideoTransformer3DModelPacked(config)
    transform = load_transform(layout, settings, plugins)
    load_into_model(
        model, StateDictSource(state, "random DiT"), device=device, dtype=torch.bfloat16, transform=transform
    )
    return model


def report_dit(device: torch.device, repeats: int, fast_ok: bool, small: bool) -> dict:
    from tuner_framepack.architecture import FramePackArchitecture
    from tuner_framepack.dit import DiTConfig
    from tuner_framepack.testing.tiny_dit import tiny_dit_config, tiny_dit_inputs

    layout = FramePackArchitecture.layout
    plugins = make_plugin_manager()
    config = tiny_dit_config() if small else DiTConfig(num_layers=2, num_single_layers=4)
    size = (2, 8, 8) if small else (9, 48, 48)
    state = dit_state(config, device)
    inputs = tiny_dit_inputs(config, frames=size[0], height=size[1], width=size[2], dtype=torch.bfloat16)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    variants = {"bf16": {}, "fp8_scaled": {"fp8_base": True, "fp8_scaled": True}}
    if fast_ok:
        variants["fp8_fast"] = {"fp8_base": True, "fp8_scaled": True, "fast": True}
    results, baseline = {}, None
    for name, flags in variants.items():
        own = Fp8Options(fp8_fast=flags.pop("fast", False))
        settings = MemorySettings(**flags, options=own)
        sync(device)
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        model = load_variant(config, state, settings, device, plugins, layout)
        apply_memory_strategies(model, layout, settings, plugins, device)
        sync(device)
        held = (torch.cuda.memory_allocated(device) - before) if device.type == "cuda" else 0
        model.set_attention("sdpa")
        with torch.no_grad():
            out = model(**inputs)
        baseline = out if baseline is None else baseline
        cosine = F.cosine_similarity(out.float().flatten(), baseline.float().flatten(), dim=0).item()
        with torch.no_grad():
            fwd = timed(lambda m=model: m(**inputs), device, max(3, repeats // 4))
        step_s, step_peak = lora_step(model, layout, plugins, device, inputs, repeats)
        results[name] = {
            "weights_mib": held / 2**20,
            "cosine_to_bf16": cosine,
            "error_to_bf16": rel(out, baseline),
            "forward_ms": fwd * 1e3,
            "lora_step_ms": step_s * 1e3,
            "lora_step_peak_mib": step_peak / 2**20,
        }
        r = results[name]
        print(
            f"DiT {name:10s} weights {r['weights_mib']:.0f} MiB cosine {cosine:.5f} fwd {r['forward_ms']:.1f} ms "
            f"LoRA step {r['lora_step_ms']:.1f} ms peak {r['lora_step_peak_mib']:.0f} MiB"
        )
        del model, out
        if device.type == "cuda":
            torch.cuda.empty_cache()
    check(results["fp8_scaled"]["cosine_to_bf16"] >= 0.999, "DiT fp8-scaled cosine to bf16 >= 0.999")
    if device.type == "cuda":
        ratio = results["fp8_scaled"]["weights_mib"] / results["bf16"]["weights_mib"]
        results["fp8_scaled_weight_ratio"] = ratio
        print(f"  fp8-scaled / bf16 weight bytes on the GPU: {ratio:.3f}")
        check(ratio < 0.75, "DiT fp8-scaled weights below 0.75x bf16 (0.66 expected: AdaLN stays bf16)")
    if fast_ok:
        check(results["fp8_fast"]["cosine_to_bf16"] >= 0.998, "DiT fp8-fast cosine to bf16 >= 0.998")
    return results


def lora_step(model, layout, plugins, device, inputs, repeats) -> tuple[float, int]:
    """Median time and peak memory of one LoRA (rank 16) forward+backward+AdamW step with checkpointing."""
    apply_memory_strategies(
        model, layout, MemorySettings(gradient_checkpointing=True, training=True), plugins, device
    )
    model.train().requires_grad_(False)
    network = plugins.network("lora").create(model, layout, dim=16, alpha=16, dropout=None, args={})
    network.apply_to(model)
    network.to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)

    def step():
        loss = model(**inputs).float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        check_finite.append(bool(torch.isfinite(loss)))

    check_finite: list[bool] = []
    seconds = timed(step, device, max(3, repeats // 4))
    peak = peak_bytes(step, device)
    check(all(check_finite), "LoRA step losses finite")
    return seconds, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tokens", type=int, default=8191, help="rows of the layer inputs (odd on purpose)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dry-run", action="store_true", help="CPU, small shapes: checks the script only")
    parser.add_argument("--skip-dit", action="store_true", help="only the layer cases")
    args = parser.parse_args()
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: run with --dry-run to check the script on the CPU")
        return 2
    problem = fp8_matmul_problem(device)
    fast_ok = problem is None or (args.dry_run and hasattr(torch, "_scaled_mm"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    print(f"torch {torch.__version__}, {name}, capability {capability}, fp8 matmul: {problem or 'yes'}")
    shapes = [(64, 64), (128, 64), (64, 192)] if args.dry_run else SHAPES
    tokens = 37 if args.dry_run else args.tokens
    results = {
        "device": name,
        "capability": capability,
        "torch": torch.__version__,
        "fp8_matmul": problem or "yes",
        "layers": report_layers(tokens, device, 3 if args.dry_run else args.repeats, fast_ok, shapes),
    }
    if not args.skip_dit:
        results["dit"] = report_dit(device, 4 if args.dry_run else args.repeats, fast_ok, args.dry_run)
    results["failures"] = FAILURES
    out = Path(os.environ.get("OUT", ".")) / "fp8_check.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}; {len(FAILURES)} failed check(s)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
