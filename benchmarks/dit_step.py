"""Forward+backward time and peak memory of tuner's FramePack DiT against diffusers' port, on the CPU.

Method:

- Both models get the same random weights (a strict state-dict copy) and the same inputs, in float32 and
  training mode; one "step" is a forward, a mean-square loss and a backward, then the gradients are dropped.
- Every measurement runs in a fresh subprocess (``--worker``), so neither implementation inherits the other's
  allocator state or caches; the parent alternates the order of the two implementations every round and
  reports the median over rounds of each worker's median step time.
- Peak memory is measured in two ways. ``tensor peak``: the highest total of tensor bytes allocated during a
  step on top of what existed before it (weights, inputs), from the PyTorch profiler's memory timeline of
  the second step; this is exact and is what the memory ratio uses. ``RSS delta``: the kernel's peak
  resident set size during the first (cold) step (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``) minus the resident size before it; it also counts allocator slack and one-time
  initialisation, so it is printed for reference only.
- Shapes: ``small`` is the tiny test config (dim 64) on a 3-frame 12x10 latent; ``window9`` is a dim-256
  2+2-block config on a FramePack training section (9 noisy frames at 32x32 latents, clean 1x/2x/4x history,
  729 SigLIP tokens, 512 text tokens of which 120 are valid); ``window9-b2`` is the same at batch 2 with
  120 and 80 valid text tokens; ``window9-hd128`` has the real model's 128-wide heads and RoPE split on
  24x24 latents, which gives the real 13B model's ratio of attention to matrix-multiply work at 640x640.

Only timings are printed; nothing is asserted. Run: ``python benchmarks/dit_step.py [--rounds 3] [--cases ...]``.
The machine should be otherwise idle; rerun when the per-round figures disagree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

IMPLEMENTATIONS = ("tuner", "diffusers")
CASES = ("small", "window9", "window9-b2", "window9-hd128")


def _case(name: str) -> tuple[object, dict]:
    """The config and input tensors of a benchmark case."""
    from tuner_framepack.testing.tiny_dit import tiny_dit_config, tiny_dit_inputs

    if name == "small":
        config = tiny_dit_config()
        return config, tiny_dit_inputs(config, batch=1, text_lengths=(9,))
    if name == "window9-hd128":
        # The real model's head size and RoPE split, with the real 13B model's balance of attention and
        # matrix-multiply work at 640x640 (sequence / (6 * width) ~= 1; the other window-9 cases are ~2.5,
        # i.e. dominated by the attention kernel both implementations share).
        config = tiny_dit_config(
            num_attention_heads=4,
            attention_head_dim=128,
            rope_axes_dim=(16, 56, 56),
            text_embed_dim=256,
            pooled_projection_dim=64,
            image_proj_dim=96,
        )
        inputs = tiny_dit_inputs(
            config,
            batch=1,
            frames=9,
            height=24,
            width=24,
            text_len=512,
            text_lengths=(120,),
            image_tokens=729,
        )
        return config, inputs
    config = tiny_dit_config(
        num_attention_heads=4,
        attention_head_dim=64,
        rope_axes_dim=(16, 24, 24),
        text_embed_dim=256,
        pooled_projection_dim=64,
        image_proj_dim=96,
    )
    lengths = (120,) if name == "window9" else (120, 80)
    inputs = tiny_dit_inputs(
        config,
        batch=len(lengths),
        frames=9,
        height=32,
        width=32,
        text_len=512,
        text_lengths=lengths,
        image_tokens=729,
    )
    return config, inputs


def _diffusers_inputs(inputs: dict) -> dict:
    """The same inputs under diffusers' argument names (one shared 1-D index row)."""
    return {
        "hidden_states": inputs["hidden_states"],
        "timestep": inputs["timestep"],
        "encoder_hidden_states": inputs["encoder_hidden_states"],
        "encoder_attention_mask": inputs["encoder_attention_mask"],
        "pooled_projections": inputs["pooled_projections"],
        "image_embeds": inputs["image_embeddings"],
        "indices_latents": inputs["latent_indices"][0],
        "guidance": inputs["guidance"],
        "latents_clean": inputs["clean_latents"],
        "indices_latents_clean": inputs["clean_latent_indices"][0],
        "latents_history_2x": inputs["clean_latents_2x"],
        "indices_latents_history_2x": inputs["clean_latent_2x_indices"][0],
        "latents_history_4x": inputs["clean_latents_4x"],
        "indices_latents_history_4x": inputs["clean_latent_4x_indices"][0],
        "return_dict": False,
    }


def _status_bytes(field: str) -> int:
    """A memory figure of this process from ``/proc/self/status`` (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _rss_peak_delta(step) -> int:
    """Peak resident memory during ``step()`` above the resident memory before it.

    The kernel's high-water mark is reset first (``clear_refs`` 5), so earlier peaks do not count.
    """
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")
    before = _status_bytes("VmRSS")
    step()
    return _status_bytes("VmHWM") - before


def _profiled_peak(step) -> int:
    """Peak bytes of tensors allocated during ``step()`` beyond those alive before it (profiler timeline)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        step()
    live = peak = 0
    sizes = {}
    for _, action, key, size in prof._memory_profile().timeline:  # private, but the only exact CPU timeline
        name = action.name
        if name == "CREATE":
            sizes[key] = size
            live += size
        elif name == "DESTROY" and key in sizes:
            live -= sizes.pop(key)
        peak = max(peak, live)
    return peak


def worker(impl: str, case: str, steps: int, threads: int) -> dict:
    """Measure one implementation on one case in this process; returns the figures."""
    import torch

    torch.set_num_threads(threads)
    from tuner_framepack.testing.tiny_dit import build_tiny_dit

    config, inputs = _case(case)
    model = build_tiny_dit(config).train()
    if impl == "diffusers":
        from diffusers import HunyuanVideoFramepackTransformer3DModel

        reference = HunyuanVideoFramepackTransformer3DModel(**config.to_dict())
        reference.load_state_dict(model.state_dict(), strict=True)
        model = reference.train()
        inputs = _diffusers_inputs(inputs)

        def forward():
            return model(**inputs)[0]
    else:

        def forward():
            return model(**inputs)

    def step():
        forward().square().mean().backward()
        model.zero_grad(set_to_none=True)

    # the first (cold) step for RSS: afterwards the allocator reuses freed pages and RSS barely moves
    rss_delta = _rss_peak_delta(step)
    peak = _profiled_peak(step)
    step()  # warm-up of the timed steps
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"time": statistics.median(times), "peak": peak, "rss_delta": rss_delta}


def _run_worker(impl: str, case: str, steps: int, threads: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        impl,
        case,
        "--steps",
        str(steps),
        "--threads",
        str(threads),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"worker {impl}/{case} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    """Alternate fresh worker processes of both implementations and print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per worker (after one warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.steps, args.threads)))
        return
    for case in args.cases:
        results = {impl: [] for impl in IMPLEMENTATIONS}
        for round_index in range(args.rounds):
            order = IMPLEMENTATIONS if round_index % 2 == 0 else IMPLEMENTATIONS[::-1]
            for impl in order:
                figures = _run_worker(impl, case, args.steps, args.threads)
                results[impl].append(figures)
                print(
                    f"  {case:11s} round {round_index + 1} {impl:9s} step {figures['time'] * 1000:8.1f} ms  "
                    f"tensor peak {figures['peak'] / 2**20:8.1f} MiB  RSS delta {figures['rss_delta'] / 2**20:8.1f} MiB",
                    flush=True,
                )
        summary = {
            impl: {key: statistics.median(r[key] for r in runs) for key in ("time", "peak", "rss_delta")}
            for impl, runs in results.items()
        }
        ours, theirs = summary["tuner"], summary["diffusers"]
        print(
            f"{case}: fwd+bwd tuner {ours['time'] * 1000:.1f} ms vs diffusers {theirs['time'] * 1000:.1f} ms "
            f"-> time ratio {ours['time'] / theirs['time']:.3f}; tensor peak {ours['peak'] / 2**20:.1f} vs "
            f"{theirs['peak'] / 2**20:.1f} MiB -> memory ratio {ours['peak'] / theirs['peak']:.3f} "
            f"(RSS delta ratio {ours['rss_delta'] / max(theirs['rss_delta'], 1):.3f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
