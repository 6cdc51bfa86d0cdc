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


@pytest.mark.parametrize("launcher", launchers(), ids=lambda command: Path(command[0]).name)
def test_two_process_training(toy, tmp_path, launcher):
    cache_all(toy)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TUNER_LOG_LEVEL": "WARNING"}
    # A free port of its own: two runs on the default port (29500) at once join each other's group and hang.
    port = ["--main_process_port" if "accelerate" in launcher[0] else "--master_port", str(free_port())]
    result = subprocess.run(
        [*launcher, *port, str(SCRIPT), str(toy.root), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rank0 = json.loads((out / "rank0.json").read_text())
    rank1 = json.loads((out / "rank1.json").read_text())
    # 6 items, batch 2 -> 3 batches per epoch, cut to 2 so both processes take the same number of steps
    assert len(rank0["batches"]) == len(rank1["batches"]) == 2
    assert set(rank0["batches"]).isdisjoint(rank1["batches"])  # each process saw other data
    assert rank0["checksums"] == rank1["checksums"]  # gradients were averaged: identical weights every step
    assert (out / "last.safetensors").is_file() and not list(out.glob(".*"))
