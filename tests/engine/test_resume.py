"""Resume: a run killed mid-epoch and resumed from its last state ends with the weights of an unbroken run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from .helpers import cache_all, run, train_values

KILL_AT_STEP_5 = textwrap.dedent(
    """
    import json, os, signal, sys
    from tuner_core import hookimpl, make_plugin_manager
    sys.path.insert(0, sys.argv[2])
    from helpers import run

    class KillAtStep5:
        @hookimpl
        def tuner_on_step_end(self, step):
            if step == 5:
                os.kill(os.getpid(), signal.SIGKILL)

    values = json.loads(sys.argv[1])
    run("train", values, make_plugin_manager(plugins=[KillAtStep5()]))
    """
)


@pytest.mark.parametrize("seed", [3, 2**63 + 5])  # a seed beyond int64 once overflowed the batch seeds
def test_resume_after_a_kill_mid_epoch_matches_an_unbroken_run(toy, tmp_path, seed):
    cache_all(toy)
    # 6 items in batches of 2: 3 steps per epoch, so the state of step 4 is in the middle of epoch 2.
    common = {
        "max_train_epochs": 3,
        "save_every_n_steps": 2,
        "save_state": True,
        "network_dropout": 0.1,
        "seed": seed,
    }
    unbroken = tmp_path / "unbroken"
    run("train", train_values(toy, unbroken, **common))

    killed = tmp_path / "killed"
    values = {k: str(v) for k, v in train_values(toy, killed, **common).items()}
    helpers_dir = str(__import__("pathlib").Path(__file__).parent)
    result = subprocess.run(
        [sys.executable, "-c", KILL_AT_STEP_5, json.dumps(values), helpers_dir],
        capture_output=True,
        text=True,
    )
    assert result.returncode == -9, result.stderr[-2000:]
    assert not (killed / "last.safetensors").exists()
    state = killed / "last-step00000004-state"
    assert state.is_dir() and not list(killed.glob(".*tmp"))  # only complete saves are visible

    run("train", train_values(toy, killed, resume=state, **common))
    a, b = load_file(str(unbroken / "last.safetensors")), load_file(str(killed / "last.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a if "lora_up" in k)  # it trained


def test_resume_rejects_a_directory_that_is_not_a_state(toy, tmp_path):
    cache_all(toy)
    (tmp_path / "empty").mkdir()
    try:
        run("train", train_values(toy, tmp_path / "out", max_train_steps=2, resume=tmp_path / "empty"))
    except Exception as exc:
        assert "state" in str(exc)
    else:
        raise AssertionError("resuming from a non-state directory must fail")
