"""FramePack generation: memory against video length, seconds per section, and time outside the DiT.

Method:

- ``tuner generate --arch framepack`` runs through the library (the options built as the CLI builds them,
  then ``run_command``) on the tiny random-weight models of the test kit saved in their published formats
  (diffusers DiT shards, the encoder kit), from a start image PNG, writing an H.264 video. Every run has the
  same size, window and steps; only the number of sections changes: 1, 2 and ``--sections``.
- Timing: a plugin answers ``tuner_load_model`` by loading each model through the architecture (the load is
  timed and reported apart) and wraps the DiT's ``forward`` and the VAE's ``decode`` in timers. For the
  run, the pipeline module's ``generate_sections`` (the section loop: conditioning, history, solver, DiT
  calls; not the encoders, not the decode) and ``decode_latents`` (VAE decode, overlap blending and the
  video encoder) are wrapped in timers as well. Timed runs carry no profiler.
- Memory: one more run of each length under the PyTorch profiler with memory recording, as
  ``tuner_framepack.testing.tiny_memory.peak_memory`` measures: the peak is the most host tensor memory
  alive at once during the command (the weights it loads included). "Held at decode start" is the tensor
  memory alive as each VAE decode call starts: it climbs chunk after chunk if decoded frames are kept, so
  its growth from the second chunk (the first one that has an overlap tail pending) to the last is compared
  with the pixels of the whole video. On CUDA the device peak (``torch.cuda.max_memory_allocated``) is
  printed too. The peak RSS (VmHWM, reset before each timed run) above the RSS at its start is printed for
  information: it counts what the allocators keep.
- Memory runs go longest first, so one-time allocations can only make the longer video look worse.

Ratios and shares come from runs of the same process; wall times are printed, never asserted.

    python benchmarks/framepack_generation.py [--quick] [--sections 8] [--size 128] [--window 9] [--steps 2]

Targets: peak memory of ``--sections`` sections / 1 section <= 1.15 (memory must not grow with the video);
time outside the DiT <= 10 % of the section loop.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import re
import shutil
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.profiler import ProfilerActivity, profile, record_function

from tuner_cli.parser import build_command_options
from tuner_core import hookimpl
from tuner_core.commands.run import run_command
from tuner_core.media.write import write_image
from tuner_core.plugins import make_plugin_manager
from tuner_framepack.testing.tiny_dit import save_tiny_dit_diffusers
from tuner_framepack.testing.tiny_encoders import (
    kit_dit_config,
    save_tiny_encoder_kit,
)
from tuner_toy.sample_data import square_video

#: Name of the profiler annotation around every VAE decode call (to find the chunk starts in the timeline).
DECODE_MARK = "framepack_generation.vae_decode"
MEMORY_TARGET = 1.15
OUTSIDE_DIT_TARGET = 0.10
#: Growth of the held memory over the decode chunks, as a share of the video's pixels (this benchmark's check).
HELD_GROWTH_TARGET = 0.10
MIB = 2**20


class Stopwatch:
    """Seconds and calls per phase name, and the device memory allocated as each marked call starts."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self.durations: defaultdict[str, list[float]] = defaultdict(list)
        self.device_alive_at_start: list[int] = []

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def wrap(self, name: str, fn: Callable[..., Any], *, mark: bool = False) -> Callable[..., Any]:
        """``fn`` timed under ``name``; with ``mark``, annotated for the profiler's timeline as well."""

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._sync()
            if mark and self.device.type == "cuda":
                self.device_alive_at_start.append(torch.cuda.memory_allocated(self.device))
            start = time.perf_counter()
            try:
                with record_function(DECODE_MARK) if mark else contextlib.nullcontext():
                    return fn(*args, **kwargs)
            finally:
                self._sync()
                elapsed = time.perf_counter() - start
                self.seconds[name] += elapsed
                self.calls[name] += 1
                self.durations[name].append(elapsed)

        return timed


class Instruments:
    """A plugin that loads every model through the architecture, timing the load, and wraps the DiT's
    ``forward`` and the VAE's ``decode`` in the stopwatch."""

    def __init__(self, watch: Stopwatch) -> None:
        self.watch = watch

    @hookimpl
    def tuner_load_model(self, architecture, component, options, device, transform):
        """Load ``component`` as the architecture would, then wrap the calls this benchmark times."""
        start = time.perf_counter()
        model = architecture.load_component(component, options, device, transform)
        self.watch.seconds["load"] += time.perf_counter() - start
        if component == "dit":
            model.forward = self.watch.wrap("dit", model.forward)
        elif component == "vae":
            model.decode = self.watch.wrap("vae_decode", model.decode, mark=True)
        return model


@contextlib.contextmanager
def timed_pipeline(watch: Stopwatch) -> Iterator[None]:
    """Time the section loop and the decode phase of the FramePack pipeline for the duration of the block."""
    from tuner_framepack.generation import pipeline

    originals = {name: getattr(pipeline, name) for name in ("generate_sections", "decode_latents")}
    for name, fn in originals.items():
        setattr(pipeline, name, watch.wrap(name, fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(pipeline, name, fn)


@attrs.frozen
class HostMemory:
    """Host tensor memory of one profiled call: the peak and what was alive as each marked call started."""

    peak: int
    alive_at_marks: list[int]


def host_tensor_memory(fn: Callable[[], Any]) -> HostMemory:
    """Run ``fn`` under the profiler and sweep its CPU allocation events (see the module docstring)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = list(prof.profiler.kineto_results.events())
    allocations = sorted(
        (e.start_ns(), e.nbytes())
        for e in events
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    marks = sorted(e.start_ns() for e in events if e.name() == DECODE_MARK)
    alive = peak = 0
    alive_at_marks, index = [], 0
    for mark in marks:
        while index < len(allocations) and allocations[index][0] < mark:
            alive += allocations[index][1]
            peak = max(peak, alive)
            index += 1
        alive_at_marks.append(alive)
    for _, nbytes in allocations[index:]:
        alive += nbytes
        peak = max(peak, alive)
    return HostMemory(peak, alive_at_marks)


def _rss_kib(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in KiB (Linux), else ``None``."""
    try:
        match = re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (``/proc/self/clear_refs``); whether it could be done."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@attrs.define
class RunFigures:
    """What one generation of ``sections`` sections measured."""

    sections: int
    wall: float = 0.0
    seconds: dict[str, float] = attrs.field(factory=dict)
    calls: dict[str, int] = attrs.field(factory=dict)
    durations: dict[str, list[float]] = attrs.field(factory=dict)
    rss_growth: int | None = None
    host: HostMemory | None = None
    device_peak: int | None = None
    device_alive_at_decodes: list[int] = attrs.field(factory=list)


class Bench:
    """The tiny kit, a start image and the command values shared by every run."""

    def __init__(self, root: Path, *, size: int, window: int, steps: int, device: torch.device) -> None:
        self.root, self.device = root, device
        kit = save_tiny_encoder_kit(root / "encoders")
        config = kit_dit_config()
        dit = save_tiny_dit_diffusers(root / "dit", config=config).shards[0]  # config.json beside it
        image = write_image(root / "start.png", square_video((200, 50, 50), (1, 0), frames=1, size=size)[0])
        self.values = {
            "dit": dit,
            "vae": kit.vae.snapshot,
            "image_encoder": kit.image_encoder.comfy_file,
            "text_encoder1": kit.text_encoder1.first_shard,
            "text_encoder2": kit.text_encoder2.comfy_file,
            "tokenizer2": kit.text_encoder2.tokenizer_dir,  # Comfy's file ships no tokenizer
            "prompt": "a red square moving right",
            "image_path": str(image),
            "video_size": [size, size],
            "latent_window_size": window,
            "infer_steps": steps,
            "seed": 0,
            "device": str(device),
        }

    def _command(self, sections: int, watch: Stopwatch) -> Callable[[], Any]:
        plugins = make_plugin_manager(plugins=[Instruments(watch)])
        arch = plugins.architecture("framepack")
        out = self.root / "out"
        values = {**self.values, "video_sections": sections, "save_path": out}
        options = build_command_options("generate", arch, values, {}, None, plugins.memory_strategies())

        def command() -> Any:
            shutil.rmtree(out, ignore_errors=True)
            with timed_pipeline(watch):
                return run_command("generate", options, architecture=arch, plugins=plugins)

        return command

    def timed(self, sections: int) -> RunFigures:
        """One run without the profiler: wall time, phase times, peak RSS growth."""
        watch = Stopwatch(self.device)
        command = self._command(sections, watch)
        rss_start = _rss_kib("VmRSS") if _reset_peak_rss() else None
        start = time.perf_counter()
        command()
        wall = time.perf_counter() - start
        rss_peak = _rss_kib("VmHWM")
        growth = None if rss_start is None or rss_peak is None else (rss_peak - rss_start) * 1024
        return RunFigures(
            sections, wall, dict(watch.seconds), dict(watch.calls), dict(watch.durations), rss_growth=growth
        )

    def memory(self, sections: int) -> RunFigures:
        """One run under the profiler: host tensor peak and held memory; on CUDA the device peak."""
        watch = Stopwatch(self.device)
        command = self._command(sections, watch)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0
        host = host_tensor_memory(command)
        figures = RunFigures(sections, host=host)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            figures.device_peak = torch.cuda.max_memory_allocated(self.device) - before
            figures.device_alive_at_decodes = [a - before for a in watch.device_alive_at_start]
        return figures


def _first_and_rest(durations: list[float]) -> str:
    """``first / median of the others`` in seconds (the first call after a load pays one-time costs)."""
    if len(durations) < 2:
        return f"{durations[0]:.2f} / -" if durations else "-"
    return f"{durations[0]:.2f} / {statistics.median(durations[1:]):.2f}"


def _verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "MISS"


def report(args: argparse.Namespace, timed: dict[int, RunFigures], memory: dict[int, RunFigures]) -> None:
    """Print the figures, the targets and PASS/MISS per target."""
    long, short = args.sections, 1
    frames = 4 * long * args.window + 1
    video_pixels = frames * args.size * args.size * 3 * 4  # what the decoded video weighs as float32
    print(
        f"\nFramePack generate, tiny random models, {args.device}, {args.size}x{args.size}, window "
        f"{args.window}, {args.steps} steps, {torch.get_num_threads()} threads; {long} sections = {frames} frames"
    )
    columns = [timed[short], timed[long]]
    print(f"\n{'':34s}" + "".join(f"{f'{r.sections} section(s)':>16s}" for r in columns))

    def row(label: str, values: list[str]) -> None:
        print(f"{label:34s}" + "".join(f"{v:>16s}" for v in values))

    def seconds(run: RunFigures, name: str) -> float:
        return run.seconds.get(name, 0.0)

    def other(run: RunFigures) -> float:
        phases = ("load", "generate_sections", "decode_latents")
        return run.wall - sum(seconds(run, n) for n in phases)

    row("command wall (s)", [f"{r.wall:.2f}" for r in columns])
    row("  model loads (s)", [f"{seconds(r, 'load'):.2f}" for r in columns])
    row("  encoders, files, rest (s)", [f"{other(r):.2f}" for r in columns])
    row("  section loop (s)", [f"{seconds(r, 'generate_sections'):.2f}" for r in columns])
    row("    DiT forward (s)", [f"{seconds(r, 'dit'):.2f} / {r.calls.get('dit', 0)}" for r in columns])
    row("      1st call / median of later", [_first_and_rest(r.durations.get("dit", [])) for r in columns])
    row("  decode phase (s)", [f"{seconds(r, 'decode_latents'):.2f}" for r in columns])
    row(
        "    VAE decode (s)",
        [f"{seconds(r, 'vae_decode'):.2f} / {r.calls.get('vae_decode', 0)}" for r in columns],
    )
    print("per section:")
    row("  wall without loads (s)", [f"{(r.wall - seconds(r, 'load')) / r.sections:.3f}" for r in columns])
    row("  section loop (s)", [f"{seconds(r, 'generate_sections') / r.sections:.3f}" for r in columns])
    row("  decode phase (s)", [f"{seconds(r, 'decode_latents') / r.sections:.3f}" for r in columns])
    row("  of it VAE decode (s)", [f"{seconds(r, 'vae_decode') / r.sections:.3f}" for r in columns])
    shares = []
    for r in columns:
        loop = seconds(r, "generate_sections")
        shares.append((loop - seconds(r, "dit")) / loop if loop else float("nan"))
    row("  outside the DiT, share of loop", [f"{s:.1%}" for s in shares])

    mem_runs = [memory[n] for n in sorted(memory)]
    print(f"\n{'memory':34s}" + "".join(f"{f'{r.sections} section(s)':>16s}" for r in mem_runs))
    row("  peak host tensors (MiB)", [f"{r.host.peak / MIB:.1f}" for r in mem_runs])
    row(
        "  held at 1st / last decode (MiB)",
        [f"{r.host.alive_at_marks[0] / MIB:.1f} / {r.host.alive_at_marks[-1] / MIB:.1f}" for r in mem_runs],
    )
    if args.device.startswith("cuda"):
        row("  peak CUDA allocated (MiB)", [f"{r.device_peak / MIB:.1f}" for r in mem_runs])
    rss = [timed[r.sections].rss_growth if r.sections in timed else None for r in mem_runs]
    row("  peak RSS growth, timed run (MiB)", [f"{g / MIB:.1f}" if g is not None else "-" for g in rss])
    print(f"  the {frames} decoded frames as float32 would weigh {video_pixels / MIB:.1f} MiB")

    ratio_1 = memory[long].host.peak / memory[short].host.peak
    ratio_2 = memory[long].host.peak / memory[2].host.peak
    held = memory[long].host.alive_at_marks
    growth = (held[-1] - held[1]) if len(held) > 2 else 0
    share_long = shares[1]
    print("\ntarget                                           measured   target   verdict")
    lines = [
        (
            f"peak host memory, {long} / 1 sections",
            f"{ratio_1:.2f}",
            f"<= {MEMORY_TARGET}",
            ratio_1,
            MEMORY_TARGET,
        ),
        (
            f"peak host memory, {long} / 2 sections (*)",
            f"{ratio_2:.2f}",
            f"<= {MEMORY_TARGET}",
            ratio_2,
            MEMORY_TARGET,
        ),
        (
            f"held memory growth, decode 2 -> {len(held)} (**)",
            f"{growth / video_pixels:.1%}",
            f"<= {HELD_GROWTH_TARGET:.0%}",
            growth / video_pixels,
            HELD_GROWTH_TARGET,
        ),
        (
            f"time outside the DiT, {long} sections",
            f"{share_long:.1%}",
            f"<= {OUTSIDE_DIT_TARGET:.0%}",
            share_long,
            OUTSIDE_DIT_TARGET,
        ),
    ]
    if args.device.startswith("cuda"):
        cuda_ratio = memory[long].device_peak / memory[short].device_peak
        lines.insert(
            2,
            (
                f"peak CUDA memory, {long} / 1 sections",
                f"{cuda_ratio:.2f}",
                f"<= {MEMORY_TARGET}",
                cuda_ratio,
                MEMORY_TARGET,
            ),
        )
    for label, measured, target, value, limit in lines:
        print(f"{label:48s} {measured:>8s} {target:>8s}   {_verdict(value, limit)}")
    print(
        "(*) a 1-section video is decoded in one chunk of W+1 latents; longer ones in chunks of 2W+1 and 2W\n"
        "    latents (the reference's), so 2 sections is the first length with the full decode working set.\n"
        "(**) tensor memory alive as each VAE decode starts, last minus second, over the video's float32 pixels\n"
        "    (this benchmark's check: it would be about 100 % if the decoded frames were kept)."
    )


def main() -> None:
    """Parse the options, build the kit, run the generations and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 px, 4 sections: a smaller, faster run")
    parser.add_argument("--sections", type=int, default=None, help="sections of the long video (default 8)")
    parser.add_argument("--size", type=int, default=None, help="video height and width (default 128)")
    parser.add_argument("--window", type=int, default=9, help="--latent_window_size")
    parser.add_argument("--steps", type=int, default=2, help="--infer_steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    args = parser.parse_args()
    args.sections = args.sections or (4 if args.quick else 8)
    args.size = args.size or (64 if args.quick else 128)
    if args.sections < 3:
        parser.error("--sections must be at least 3 (it is compared with 1 and 2 sections)")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), size=args.size, window=args.window, steps=args.steps, device=device)
        memory = {n: bench.memory(n) for n in (args.sections, 2, 1)}  # longest first (see the docstring)
        timed = {n: bench.timed(n) for n in (1, args.sections)}
    report(args, timed, memory)
    print(f"\nbenchmark wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
