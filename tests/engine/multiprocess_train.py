"""Run by ``accelerate launch`` / ``torchrun`` from test_multiprocess.py: train the toy on every process and
record, per process, the batches it saw and a checksum of the trainable weights after every step.

Arguments: the toy workspace, the output directory, and optionally more train options as JSON."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import run, train_values  # noqa: E402

from tuner_core import hookimpl, make_plugin_manager  # noqa: E402


class Recorder:
    def __init__(self):
        self.batches, self.checksums, self.rank = [], [], None

    @hookimpl
    def tuner_compute_loss(self, batch):
        self.batches.append(round(float(batch["latents"].double().sum()), 4))  # and let the default answer

    @hookimpl
    def tuner_on_step_end(self, run, step):
        import torch.distributed as dist

        self.rank = dist.get_rank() if dist.is_initialized() else 0
        total = sum(float(p.detach().double().sum()) for p in run.trained.parameters() if p.requires_grad)
        self.checksums.append(total)


class ToyWorkspace:
    def __init__(self, root):
        self.root = Path(root)
        self.dataset = self.root / "dataset.toml"
        self.vae = self.root / "models" / "toy_vae.safetensors"
        self.text_encoder = self.root / "models" / "toy_text.safetensors"
        self.dit = self.root / "models" / "toy_dit.safetensors"


if __name__ == "__main__":
    toy, out = ToyWorkspace(sys.argv[1]), Path(sys.argv[2])
    extra = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}  # more train options (block swap)
    recorder = Recorder()
    plugins = make_plugin_manager(plugins=[recorder])
    run("train", train_values(toy, out, max_train_epochs=2, network_dropout=None, **extra), plugins)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{recorder.rank}.json").write_text(
        json.dumps({"batches": recorder.batches, "checksums": recorder.checksums})
    )
    torch.distributed.barrier() if torch.distributed.is_initialized() else None
