"""Engine overhead: a training step through ``tuner train`` vs a bare PyTorch loop, and cached-data throughput.

Both sides train the same toy denoiser (full fine-tuning, AdamW, fp32, CPU) on the same cached batches.
The bare loop holds every batch in memory and does only noise, forward, loss, backward and the optimizer
step; the engine adds everything it does per step (memory-mapped cache reads, batch sampling, timestep
draws, loss hook, clipping, scheduler, progress, lifecycle hooks). Runs alternate (engine, bare, engine,
...) and the medians of the per-step times are compared, so drift of a noisy machine hits both sides.

    python benchmarks/engine_overhead.py [--rounds 3] [--steps 40] [--dim 128] [--depth 4]

Prints the ratio engine/bare (target <= 1.05) and the cache loading throughput.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tuner_core import make_plugin_manager
from tuner_core.commands import options_class
from tuner_core.commands.cache_latents import cache_latents
from tuner_core.commands.cache_text import cache_text
from tuner_core.config.dataset import load_dataset_config
from tuner_core.options import build_options
from tuner_core.training.cached_data import (
    CachedItemsDataset,
    EpochBatches,
    find_cached_items,
    stack_batch,
)
from tuner_core.training.trainer import train
from tuner_toy.build import make_toy_models
from tuner_toy.options import ToyCacheLatentsOptions, ToyCacheTextOptions, ToyTrainOptions
from tuner_toy.sample_data import make_sample_dataset


def prepare(root: Path, dim: int, depth: int):
    dataset = make_sample_dataset(root, videos=16, frames=17, size=128)
    files = make_toy_models(root / "models", dim=dim, depth=depth)
    plugins = make_plugin_manager()
    arch = plugins.architecture("toy")
    cache_latents(
        build_options(ToyCacheLatentsOptions, {"dataset_config": dataset, "vae": files.vae}),
        architecture=arch,
        plugins=plugins,
    )
    cache_text(
        build_options(ToyCacheTextOptions, {"dataset_config": dataset, "text_encoder": files.text_encoder}),
        architecture=arch,
        plugins=plugins,
    )
    return dataset, files, plugins, arch


def engine_step_times(dataset, files, plugins, arch, out: Path, steps: int) -> list[float]:
    options = build_options(
        options_class("train", arch, plugins.memory_strategies()),  # with any installed strategy's options
        {
            "dit": files.dit,
            "dataset_config": dataset,
            "output_dir": out,
            "max_train_steps": steps,
            "learning_rate": 1e-4,
            "seed": 0,
            "max_data_loader_n_workers": 0,
            "timestep_sampling": "uniform",
        },
    )
    stamps: list[float] = []
    train(
        options,
        architecture=arch,
        plugins=plugins,
        on_step=lambda run: stamps.append(time.perf_counter()),
    )
    return [b - a for a, b in zip(stamps[5:], stamps[6:])]  # skip warm-up steps


def bare_step_times(dataset, files, plugins, arch, steps: int) -> list[float]:
    config = load_dataset_config(dataset, arch.dataset_options)
    items = find_cached_items(config, arch, None)
    data = CachedItemsDataset(items, arch, plugins)
    batches = [stack_batch([data[i], data[i + 1]]) for i in range(0, len(items) - 1, 2)]
    model = arch.load_component(
        "dit",
        build_options(ToyTrainOptions, {"dit": files.dit, "dataset_config": dataset, "output_dir": "."}),
        torch.device("cpu"),
    )
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps):
        start = time.perf_counter()
        batch = batches[step % len(batches)]
        latents = batch["latents"].float()
        sigma = torch.rand(latents.shape[0], generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        mix = sigma.view(-1, 1, 1, 1, 1)
        noisy = (1 - mix) * latents + mix * noise
        prediction = model(noisy, sigma * 1000, batch["text"], batch["text_mask"], batch["pooled"])
        loss = torch.nn.functional.mse_loss(prediction, noise - latents)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[5:]


def loading_throughput(dataset, plugins, arch, epochs: int = 20) -> tuple[float, float]:
    config = load_dataset_config(dataset, arch.dataset_options)
    items = find_cached_items(config, arch, None)
    data = CachedItemsDataset(items, arch, plugins)
    sampler = EpochBatches(items, [2], [1], seed=0)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler, collate_fn=stack_batch, num_workers=0)
    count, nbytes = 0, 0
    start = time.perf_counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for batch in loader:
            count += batch["latents"].shape[0]
            nbytes += sum(t.numel() * t.element_size() for t in batch.values())
    elapsed = time.perf_counter() - start
    return count / elapsed, nbytes / elapsed / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dataset, files, plugins, arch = prepare(root, args.dim, args.depth)
        engine, bare = [], []
        for round_ in range(args.rounds):
            engine += engine_step_times(dataset, files, plugins, arch, root / f"out{round_}", args.steps)
            bare += bare_step_times(dataset, files, plugins, arch, args.steps)
        e, b = statistics.median(engine), statistics.median(bare)
        print(
            f"toy denoiser dim {args.dim} depth {args.depth}, batch 2 x (8, 5, 32, 32) latents, CPU, 1 thread"
        )
        print(f"engine step  median {e * 1000:8.2f} ms  ({len(engine)} steps)")
        print(f"bare step    median {b * 1000:8.2f} ms  ({len(bare)} steps)")
        print(f"ratio engine/bare: {e / b:.3f}  (target <= 1.05)")
        items_s, mib_s = loading_throughput(dataset, plugins, arch)
        print(
            f"cached-data loading: {items_s:.0f} items/s, {mib_s:.1f} MiB/s (memory-mapped safetensors, 1 process)"
        )


if __name__ == "__main__":
    main()
