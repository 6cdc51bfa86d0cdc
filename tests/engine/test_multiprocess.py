"""Two processes (CPU, gloo): sharded batches, identical weights after every step, one writer."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tuner_toy.build import make_toy_models

from .helpers import cache_all

SCRIPT = Path(__file__).with_name("multiprocess_train.py")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launchers() -> list[list[str]]:
    found = []
    if shutil.which("accelerate"):
        found.append(
            [
                "accelerate",
                "launch",
                "--multi_gpu",
                "--num_processes",
                "2",
                "--num_machines",
                "1",
                "--mixed_precision",
                "no",
                "--dynamo_backend",
                "no",
            ]
        )
    found.append([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"])
    return found


def train_two_processes(toy, out: Path, launcher: list[str], extra: dict | None = None, env=None):
    """Train the toy on two processes; each one's record (batches, checksums)."""
    cache_all(toy)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TUNER_LOG_LEVEL": "WARNING", **(env or {})}
    # A free port of its own: two runs on the default port (29500) at once join each other's group and hang.
    port = ["--main_process_port" if "accelerate" in launcher[0] else "--master_port", str(free_port())]
    result = subprocess.run(
        [*launcher, *port, str(SCRIPT), str(toy.root), str(out), json.dumps(extra or {})],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.parametrize("launcher", launchers(), ids=lambda command: Path(command[0]).name)
def test_two_process_training(toy, tmp_path, launcher):
    out = tmp_path / "out"
    rank0, rank1 = train_two_processes(toy, out, launcher)
    # 6 items, batch 2 -> 3 batches per epoch, cut to 2 so both processes take the same number of steps
    assert len(rank0["batches"]) == len(rank1["batches"]) == 2
    assert set(rank0["batches"]).isdisjoint(rank1["batches"])  # each process saw other data
    assert rank0["checksums"] == rank1["checksums"]  # gradients were averaged: identical weights every step
    assert (out / "last.safetensors").is_file() and not list(out.glob(".*"))


def test_two_process_training_with_block_swap_syncs_only_the_network(toy, tmp_path):
    # Block swap keeps the frozen base weights in host memory; DDP must neither insist that every parameter
    # sits on one device nor broadcast the 13B base (every process loads it from the same file): only the
    # network trains, so only its weights are synced. On the CPU, TUNER_BLOCK_SWAP_CPU=1 runs the real swap.
    launcher = launchers()[-1]  # torchrun: always there
    make_toy_models(toy.root / "models", depth=4)  # same seed, so the same encoders: 2 of 4 blocks can swap
    runs = {}
    for swap in (0, 2):
        out = tmp_path / f"swap{swap}"
        extra = {"blocks_to_swap": swap, "gradient_checkpointing": True}
        runs[swap] = train_two_processes(toy, out, launcher, extra, env={"TUNER_BLOCK_SWAP_CPU": "1"})
        assert runs[swap][0]["checksums"] == runs[swap][1]["checksums"]
    assert runs[2][0]["checksums"] == pytest.approx(runs[0][0]["checksums"], rel=1e-6)
