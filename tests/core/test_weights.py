"""Checkpoint handling: resolving files and shards, safe .pt reading, streaming into meta models, errors."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tuner_core.errors import ModelLoadError
from tuner_core.weights import (
    load_into_model,
    load_pt_state_dict,
    open_checkpoint,
    resolve_checkpoint,
    save_safetensors,
    save_sharded_safetensors,
    sniff_format,
)
from tuner_core.weights.sniff import SAFETENSORS, TORCH_PICKLE, TORCH_ZIP


class Toy(nn.Module):
    """A small model with parameters, a persistent buffer and a non-persistent one."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.norm = nn.LayerNorm(width)
        self.blocks = nn.ModuleList([nn.Linear(width, width) for _ in range(3)])
        self.head = nn.Linear(width, 2)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))


def toy_state(seed: int = 0, width: int = 6) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = Toy(width)
    model.steps.fill_(7)
    return {k: v.clone() for k, v in model.state_dict().items()}


def meta_toy(width: int = 6) -> Toy:
    with torch.device("meta"):
        return Toy(width)


# -- resolving files -------------------------------------------------------------------------------------


def test_first_shard_expands_to_the_whole_set(tmp_path):
    shards, index = save_sharded_safetensors(
        toy_state(), tmp_path, num_shards=3, stem="diffusion_pytorch_model"
    )
    assert [p.name for p in shards] == [
        f"diffusion_pytorch_model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)
    ]
    for given in (shards[0], shards[2], index, tmp_path):
        assert resolve_checkpoint(given).files == tuple(shards)
    assert resolve_checkpoint(tmp_path).index == index


def test_missing_shard_is_named(tmp_path):
    shards, index = save_sharded_safetensors(toy_state(), tmp_path, num_shards=3)
    shards[1].unlink()
    with pytest.raises(ModelLoadError, match=r"model-00002-of-00003\.safetensors"):
        resolve_checkpoint(shards[0])
    with pytest.raises(ModelLoadError, match=r"missing.*model-00002-of-00003"):
        resolve_checkpoint(tmp_path)  # through the index


def test_directory_without_index_uses_shards_then_first_file(tmp_path):
    shards, index = save_sharded_safetensors(toy_state(), tmp_path / "sharded", num_shards=2)
    index.unlink()
    (tmp_path / "sharded" / "config.json").write_text("{}")
    resolved = resolve_checkpoint(tmp_path / "sharded")
    assert resolved.files == tuple(shards) and resolved.config == tmp_path / "sharded" / "config.json"

    single = tmp_path / "single"
    save_safetensors(toy_state(), single / "b.safetensors")
    save_safetensors(toy_state(1), single / "a.safetensors")
    resolved = resolve_checkpoint(single)
    assert resolved.files == (single / "a.safetensors",) and resolved.config is None


def test_nothing_to_load_is_an_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        resolve_checkpoint(tmp_path / "absent.safetensors")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="no .safetensors"):
        resolve_checkpoint(tmp_path)


def test_corrupt_file_is_an_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ModelLoadError, match="bad.safetensors"):
        open_checkpoint(bad)


def test_same_tensor_in_two_shards_is_an_error(tmp_path):
    state = toy_state()
    save_file({"head.bias": state["head.bias"]}, str(tmp_path / "m-00001-of-00002.safetensors"))
    save_file({"head.bias": state["head.bias"]}, str(tmp_path / "m-00002-of-00002.safetensors"))
    with pytest.raises(ModelLoadError, match="stored twice"):
        open_checkpoint(tmp_path / "m-00001-of-00002.safetensors")


# -- streaming into a model --------------------------------------------------------------------------------


def test_streams_into_meta_model_with_dtype_and_device(tmp_path):
    state = toy_state()
    shards, _ = save_sharded_safetensors(state, tmp_path, num_shards=3)
    model = meta_toy()
    with open_checkpoint(shards[0]) as source:
        result = load_into_model(
            model, source, dtype=torch.bfloat16, keep_dtype=lambda k: k.startswith("norm.")
        )
    assert result.loaded == len(state) and not result.missing and not result.ignored
    for key, value in model.state_dict().items():
        assert value.device.type == "cpu"
        if key == "steps":
            assert value.dtype == torch.int64 and value.item() == 7  # integers are never cast
        elif key.startswith("norm."):
            assert value.dtype == torch.float32 and torch.equal(value, state[key])
        else:
            assert value.dtype == torch.bfloat16 and torch.equal(value, state[key].to(torch.bfloat16))
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in model.parameters())
    model.embed(torch.ones(1, 4, dtype=torch.bfloat16)).sum().backward()
    assert model.embed.weight.grad is not None


def test_transform_may_rewrite_and_add_tensors(tmp_path):
    state = toy_state()
    path = save_safetensors(state, tmp_path / "toy.safetensors")
    seen = []

    def quantise(key, tensor):
        seen.append((key, tensor.dtype))
        if key.startswith("blocks.") and key.endswith(".weight"):
            scale = tensor.abs().amax() / 100
            return {key: (tensor / scale).round() * scale, key.replace(".weight", ".scale_weight"): scale}
        return {key: tensor}

    model = meta_toy()
    with open_checkpoint(path) as source:
        result = load_into_model(model, source, dtype=torch.float64, transform=quantise)
    assert sorted(result.added) == [f"blocks.{i}.scale_weight" for i in range(3)]
    assert all(dtype == torch.float64 for key, dtype in seen if key != "steps")  # cast happens first
    assert model.blocks[1].scale_weight.dtype == torch.float64
    assert "blocks.1.scale_weight" in model.state_dict()


def test_tensors_may_go_to_more_than_one_device(tmp_path):
    path = save_safetensors(toy_state(), tmp_path / "toy.safetensors")
    asked = []

    def place(key):
        asked.append(key)
        return torch.device("meta") if key.startswith("blocks.2.") else torch.device("cpu")

    model = meta_toy()
    with open_checkpoint(path) as source:
        load_into_model(model, source, device=place, strict=False)
    devices = {key: t.device.type for key, t in model.state_dict().items()}
    assert {d for k, d in devices.items() if k.startswith("blocks.2.")} == {"meta"}
    assert {d for k, d in devices.items() if not k.startswith("blocks.2.")} == {"cpu"}
    assert set(asked) == set(devices)


def test_rename_maps_stored_names(tmp_path):
    state = {"model." + k: v for k, v in toy_state().items()}
    state["model.unused"] = torch.zeros(1)
    path = save_safetensors(state, tmp_path / "prefixed.safetensors")
    model = meta_toy()

    def rename(key):
        return None if key.endswith("unused") else key.removeprefix("model.")

    with open_checkpoint(path) as source:
        load_into_model(model, source, rename=rename)
    assert torch.equal(model.head.weight, toy_state()["head.weight"])


def test_mismatch_error_names_file_and_keys(tmp_path):
    state = toy_state(width=8)  # every block has the wrong width for Toy(6)
    del state["head.bias"]
    for i in range(12):
        state[f"extra.{i}"] = torch.zeros(1)
    path = save_safetensors(state, tmp_path / "other.safetensors")
    with open_checkpoint(path) as source, pytest.raises(ModelLoadError) as caught:
        load_into_model(meta_toy(), source)
    message = str(caught.value)
    assert "other.safetensors" in message and "Toy" in message
    assert "1 missing" in message and "head.bias" in message
    assert "12 unexpected" in message and "extra.0" in message and "and 7 more" in message
    assert "wrong shape" in message and "blocks.0.weight is (8, 8)" in message and "expects (6, 6)" in message
    assert "11 with the wrong shape" in message


def test_non_strict_reports_missing_and_ignored(tmp_path):
    state = toy_state()
    del state["head.bias"]
    state["extra"] = torch.zeros(1)
    path = save_safetensors(state, tmp_path / "partial.safetensors")
    model = meta_toy()
    with open_checkpoint(path) as source:
        result = load_into_model(model, source, strict=False)
    assert result.missing == ("head.bias",) and result.ignored == ("extra",)
    assert model.head.bias.is_meta and not model.head.weight.is_meta


def test_shape_errors_are_raised_even_when_not_strict(tmp_path):
    path = save_safetensors(toy_state(width=8), tmp_path / "wide.safetensors")
    with open_checkpoint(path) as source, pytest.raises(ModelLoadError, match="wrong shape"):
        load_into_model(meta_toy(), source, strict=False)


# -- pickled checkpoints -------------------------------------------------------------------------------------


def test_pt_checkpoint_unwraps_state_dict_and_prefix(tmp_path):
    state = toy_state()
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {"net." + k: v for k, v in state.items()}, "epoch": 3}, path)
    loaded = load_pt_state_dict(path, prefix="net.")
    assert loaded.keys() == state.keys()
    model = meta_toy()
    with open_checkpoint(path, prefix="net.") as source:
        load_into_model(model, source)
    assert torch.equal(model.embed.weight, state["embed.weight"])
    with pytest.raises(ModelLoadError, match="no tensor name starts with"):
        load_pt_state_dict(path, prefix="other.")


class Payload:
    """An object whose unpickling would run code."""

    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pt_checkpoint_never_executes_pickled_code(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"weight": Payload()}, handle, protocol=2)
    with pytest.raises(ModelLoadError, match="refusing|not a readable"):
        load_pt_state_dict(path)
    assert "pickled code ran" not in capsys.readouterr().out


# -- what a file really is ----------------------------------------------------------------------------------


def test_format_is_sniffed_from_the_first_bytes(tmp_path):
    state = toy_state()
    torch.save(state, tmp_path / "zip.bin")
    torch.save(state, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    save_safetensors(state, tmp_path / "st.bin")
    (tmp_path / "text.bin").write_text("PK is not enough: a zip starts with PK\\x03\\x04")
    (tmp_path / "empty.bin").touch()
    assert sniff_format(tmp_path / "zip.bin") == TORCH_ZIP
    assert sniff_format(tmp_path / "legacy.bin") == TORCH_PICKLE
    assert sniff_format(tmp_path / "st.bin") == SAFETENSORS
    assert sniff_format(tmp_path / "text.bin") is None
    assert sniff_format(tmp_path / "empty.bin") is None


@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".bin", ".pth", ""])
def test_any_named_checkpoint_loads_by_content(tmp_path, suffix):
    state = toy_state()
    for name, save in (
        ("zip", lambda p: torch.save(state, p)),
        ("legacy", lambda p: torch.save(state, p, _use_new_zipfile_serialization=False)),
        ("st", lambda p: save_safetensors(state, p)),
    ):
        path = tmp_path / (name + suffix)
        save(path)
        with open_checkpoint(path) as source:
            assert set(source.infos()) == set(state), path
            assert torch.equal(source.get("embed.weight"), state["embed.weight"])


@pytest.mark.parametrize("name", ["x.ckpt", "x.pt", "x.bin", "x"])
def test_text_renamed_as_checkpoint_is_not_called_a_pickle(tmp_path, name):
    path = tmp_path / name
    path.write_text("just some notes\nsecond line\n")
    for reader in (open_checkpoint, load_pt_state_dict):
        with pytest.raises(ModelLoadError) as err:
            reader(path)
        message = str(err.value)
        assert message.startswith(f"{path}: not a PyTorch checkpoint or safetensors file")
        assert "it starts with text 'just some notes'" in message and "pickled" not in message


def test_text_named_safetensors_is_not_a_safetensors_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("hello, this is text")
    with pytest.raises(
        ModelLoadError, match=r"model\.safetensors: not a safetensors file \(it starts with text 'hello"
    ):
        open_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"not a safetensors file \(it is empty, 0 bytes"):
        open_checkpoint(path)
    path.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00[1,2]")
    with pytest.raises(ModelLoadError, match="not a safetensors file"):
        open_checkpoint(path)


def test_empty_and_pointer_checkpoints_say_so(tmp_path):
    empty = tmp_path / "model.ckpt"
    empty.touch()
    with pytest.raises(
        ModelLoadError, match=r"not a PyTorch checkpoint or safetensors file \(it is empty, 0 bytes"
    ):
        open_checkpoint(empty)
    pointer = tmp_path / "model.bin"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n")
    with pytest.raises(ModelLoadError, match="Git LFS pointer"):
        open_checkpoint(pointer)


def test_damaged_checkpoints_are_not_called_pickled_objects(tmp_path):
    state = {"w": torch.arange(2000, dtype=torch.float32)}
    for name, kwargs in (("zip.pt", {}), ("legacy.pt", {"_use_new_zipfile_serialization": False})):
        path = tmp_path / name
        torch.save(state, path, **kwargs)
        data = path.read_bytes()
        for cut in (3, 60, len(data) // 2):
            path.write_bytes(data[:cut])
            with pytest.raises(ModelLoadError) as err:
                open_checkpoint(path)
            message = str(err.value)
            assert "pickled objects" not in message, (name, cut, message)
            assert "damaged PyTorch checkpoint" in message or "not a PyTorch checkpoint" in message, message


def test_sharded_save_writes_a_consistent_index(tmp_path):
    state = toy_state()
    shards, index = save_sharded_safetensors(state, tmp_path, num_shards=4)
    weight_map = json.loads(index.read_text())["weight_map"]
    assert set(weight_map) == set(state) and set(weight_map.values()) == {p.name for p in shards}
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries
    with pytest.raises(ValueError, match="num_shards"):
        save_sharded_safetensors(state, tmp_path, num_shards=len(state) + 1)


# -- the safetensors reader ---------------------------------------------------------------------------------


def test_reader_round_trips_every_dtype(tmp_path):
    tensors = {
        "bf16": torch.randn(3, 5).to(torch.bfloat16),
        "f16": torch.randn(4).to(torch.float16),
        "f64": torch.randn(2, 2, dtype=torch.float64),
        "fp8": torch.randn(7).to(torch.float8_e4m3fn),
        "bool": torch.tensor([True, False, True]),
        "i64": torch.arange(5),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
    }
    save_file(tensors, str(tmp_path / "all.safetensors"), metadata={"format": "pt"})
    with open_checkpoint(tmp_path / "all.safetensors") as source:
        assert source.metadata() == {"format": "pt"}
        assert source.infos()["bf16"].dtype == "bfloat16" and source.infos()["bf16"].shape == (3, 5)
        for key, value in tensors.items():
            read = source.get(key)
            assert read.dtype == value.dtype and read.shape == value.shape
            assert torch.equal(read.reshape(-1).view(torch.uint8), value.reshape(-1).view(torch.uint8))


def test_truncated_file_is_detected_up_front(tmp_path):
    path = save_safetensors(toy_state(), tmp_path / "cut.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(ModelLoadError, match="truncated"):
        open_checkpoint(path)
    path.write_bytes(b"\xff" * 8 + data[8:])
    with pytest.raises(ModelLoadError, match="header length"):
        open_checkpoint(path)


MEMORY_SCRIPT = """
import sys, torch
from torch import nn
from tuner_core.weights import load_into_model, open_checkpoint

def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

width, blocks = int(sys.argv[2]), int(sys.argv[3])
with torch.device("meta"):
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(blocks)])
torch.ones(1)  # initialise torch's allocator before the baseline
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the peak resident size (VmHWM) so import-time peaks do not count
before = status_kib("VmRSS")
with open_checkpoint(sys.argv[1]) as source:
    load_into_model(model, source)
print((status_kib("VmHWM") - before) * 1024)
"""


def test_loading_needs_about_one_model_size_of_memory(tmp_path):
    import subprocess
    import sys

    width, blocks = 1024, 24  # 24 x 4 MiB = 96 MiB of weights
    state = {f"{i}.weight": torch.randn(width, width) for i in range(blocks)}
    state.update({f"{i}.bias": torch.randn(width) for i in range(blocks)})
    path = save_safetensors(state, tmp_path / "big.safetensors")
    size = sum(t.numel() * t.element_size() for t in state.values())
    del state
    script = tmp_path / "measure.py"
    script.write_text(MEMORY_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(path), str(width), str(blocks)],
        capture_output=True,
        text=True,
        check=True,
    )
    grown = int(result.stdout)
    assert grown < 1.2 * size, f"loading {size / 2**20:.0f} MiB grew the process by {grown / 2**20:.0f} MiB"
