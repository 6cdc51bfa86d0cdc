"""LyCORIS through lycoris-lora on the tiny FramePack DiT: every algorithm trains, saves, loads back and merges
to the output of the unmerged network; presets stay per network; the plugin lists it only when installed."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tuner_core.plugins import make_plugin_manager
from tuner_core.training.saved_files import save_weights
from tuner_framepack.architecture import FramePackArchitecture
from tuner_framepack.testing.tiny_dit import build_tiny_dit, tiny_dit_config, tiny_dit_inputs

lycoris = pytest.importorskip("lycoris.kohya")

from tuner_lora.lycoris_network import LycorisNetworkType  # noqa: E402

LAYOUT = FramePackArchitecture.layout
CONFIG = tiny_dit_config(num_layers=1, num_single_layers=1, num_refiner_layers=1)
INPUTS = tiny_dit_inputs(CONFIG, frames=2, height=8, width=8, text_len=8, image_tokens=4)
#: Linear layers per tiny model: 12 in the double block, 5 in the single block (norm linears excluded).
TARGETS = 17
#: Each algorithm with arguments that make its update non-trivial. DyLoRA trains a random block of ranks each
#: forward (also in eval) and scales a block by ``alpha / (block + 1)``, so its saved file (scaled
#: ``alpha / rank``) gives its forward's output only with one block of one rank.
ALGOS = {
    "lora": {},
    "locon": {"conv_dim": 2, "conv_alpha": 1},
    "loha": {},
    "lokr": {"factor": 8},
    "full": {},
    "dylora": {"block_size": 1},
    "glora": {},
    "diag-oft": {},
    "boft": {},
    "ia3": {},
}


def _model() -> torch.nn.Module:
    model = build_tiny_dit(CONFIG, seed=3)
    model.requires_grad_(False)
    return model


def _output(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**INPUTS)


def _train_one_step(algo: str, args: dict, dim: int) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    model = _model()
    network = LycorisNetworkType().create(
        model, LAYOUT, dim=dim, alpha=2.0, dropout=None, args={"algo": algo, **args}
    )
    network.apply_to(model)
    model.train()
    network.train()
    optimizer = torch.optim.AdamW(network.parameter_groups(1e-2))
    model(**INPUTS).square().mean().backward()
    optimizer.step()
    model.eval()
    network.eval()
    return model, network


@pytest.mark.parametrize("algo", list(ALGOS))
def test_each_algorithm_trains_saves_and_merges_to_the_unmerged_output(algo, tmp_path):
    dim = 1 if algo == "dylora" else 4
    model, network = _train_one_step(algo, ALGOS[algo], dim)
    modules = network.lycoris_modules()
    assert len(modules) == TARGETS
    assert not any("norm" in m.lora_name for m in modules)
    unmerged = _output(model)
    assert (unmerged - _output(_model())).abs().max() > 1e-4  # the step changed the output

    path = save_weights(tmp_path / f"{algo}.safetensors", network.adapter_state_dict(), {}, None)
    weights = load_file(str(path))
    assert all(k.startswith("lora_unet_") for k in weights)
    plugins = make_plugin_manager()
    sniffed = next(n for n in plugins.networks() if n.can_load(set(weights)))
    by_type = {"lora": "lora", "locon": "lora", "dylora": "lora", "loha": "loha", "lokr": "lokr"}
    assert sniffed.name == by_type.get(algo, "lycoris")

    if algo != "ia3":  # lycoris's own loader fails on its IA3 files (see tuner_lora.lycoris_merge)
        loaded, _ = lycoris.create_network_from_weights(1.0, str(path), None, None, _model())
        assert len(loaded.unet_loras) == TARGETS

    merged = _model()
    unused = plugins.network("lycoris").merge_into(merged, LAYOUT, weights, 1.0)
    assert unused == []
    assert (_output(merged) - unmerged).abs().max() < 1e-5

    # --network_weights: a fresh network loads the file (then is applied, as training does) and holds it.
    model = _model()
    reloaded = LycorisNetworkType().create(
        model, LAYOUT, dim=dim, alpha=2.0, dropout=None, args={"algo": algo, **ALGOS[algo]}
    )
    reloaded.load_adapter_state_dict(weights)
    reloaded.apply_to(model)
    reloaded.eval()
    for key, tensor in reloaded.adapter_state_dict().items():
        assert torch.allclose(tensor.cpu(), weights[key], atol=1e-6), key
    assert (_output(model) - unmerged).abs().max() < 1e-5


def test_saved_names_are_lycoris_names_on_the_layout_targets():
    network = LycorisNetworkType().create(
        _model(), LAYOUT, dim=4, alpha=1.0, dropout=None, args={"algo": "loha"}
    )
    keys = set(network.adapter_state_dict())
    assert "lora_unet_transformer_blocks_0_attn_to_q.hada_w1_a" in keys
    assert "lora_unet_single_transformer_blocks_0_proj_out.hada_w2_b" in keys
    assert "lora_unet_transformer_blocks_0_ff_context_net_0_proj.alpha" in keys
    assert not any("norm1" in k or "x_embedder" in k or "norm_out" in k for k in keys)
    kinds = {k.split(".", 1)[1] for k in keys}
    assert kinds == {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}


def test_two_networks_in_one_process_do_not_share_preset_state():
    cls = lycoris.LycorisNetworkKohya
    before = (list(cls.UNET_TARGET_REPLACE_MODULE), list(cls.TARGET_EXCLUDE_NAME), cls.ENABLE_CONV)
    first = LycorisNetworkType().create(
        _model(), LAYOUT, dim=4, alpha=1.0, dropout=None, args={"algo": "lokr", "preset": "attn-mlp"}
    )
    # lycoris's own API applies presets to the class: a preset the next network must not inherit.
    cls.apply_preset({"unet_target_module": ["Nothing"], "exclude_name": [".*"], "enable_conv": False})
    try:
        second = LycorisNetworkType().create(
            _model(), LAYOUT, dim=4, alpha=1.0, dropout=None, args={"algo": "loha"}
        )
        assert cls.UNET_TARGET_REPLACE_MODULE == ["Nothing"]  # the caller's class state is put back
    finally:
        cls.apply_preset(
            {"unet_target_module": before[0], "exclude_name": before[1], "enable_conv": before[2]}
        )
    assert len(second.lycoris_modules()) == TARGETS
    assert list(LAYOUT.network_targets) == second.lycoris_network.UNET_TARGET_REPLACE_MODULE
    assert "HunyuanVideoTransformerBlock" in first.lycoris_network.UNET_TARGET_REPLACE_MODULE
    assert (
        first.lycoris_network.UNET_TARGET_REPLACE_MODULE != second.lycoris_network.UNET_TARGET_REPLACE_MODULE
    )
    assert (list(cls.UNET_TARGET_REPLACE_MODULE), list(cls.TARGET_EXCLUDE_NAME), cls.ENABLE_CONV) == before
    third = LycorisNetworkType().create(
        _model(), LAYOUT, dim=4, alpha=1.0, dropout=None, args={"algo": "lora"}
    )
    assert len(third.lycoris_modules()) == TARGETS


def test_patterns_and_package_arguments_reach_lycoris():
    only_attention = LycorisNetworkType().create(
        _model(),
        LAYOUT,
        dim=4,
        alpha=1.0,
        dropout=None,
        args={"algo": "lora", "exclude_patterns": [r".*(ff|proj_mlp|proj_out).*"]},
    )
    assert len(only_attention.lycoris_modules()) == 8 + 3
    with_norms = LycorisNetworkType().create(
        _model(),
        LAYOUT,
        dim=4,
        alpha=1.0,
        dropout=None,
        args={"algo": "lora", "include_patterns": [r".*norm1\.linear"]},
    )
    assert len(with_norms.lycoris_modules()) == TARGETS + 1
    lokr = LycorisNetworkType().create(
        _model(),
        LAYOUT,
        dim=4,
        alpha=1.0,
        dropout=0.1,
        args={"algo": "lokr", "factor": 4, "module_dropout": 0.2},
    )
    module = lokr.lycoris_modules()[0]
    assert module.lokr_w1.shape == (4, 4) and module.module_dropout == 0.2
    assert module.dropout == 0.1 or getattr(module.drop, "p", None) == 0.1  # --network_dropout -> dropout


def test_unknown_algorithm_and_empty_targets_are_errors():
    from tuner_core import ConfigError

    with pytest.raises(ConfigError, match="not a LyCORIS algorithm"):
        LycorisNetworkType().create(_model(), LAYOUT, dim=4, alpha=1.0, dropout=None, args={"algo": "lorax"})
    with pytest.raises(ConfigError, match="found no layer"):
        LycorisNetworkType().create(
            _model(),
            LAYOUT,
            dim=4,
            alpha=1.0,
            dropout=None,
            args={"algo": "loha", "exclude_patterns": [".*"]},
        )


def test_dylora_blocks_load_back_from_the_saved_matrices(caplog):
    args = {"algo": "dylora", "block_size": 2, "no_such_arg": 1}
    _, network = _train_one_step("dylora", {"block_size": 2}, 4)
    weights = {k: v.clone() for k, v in network.adapter_state_dict().items()}
    with caplog.at_level("WARNING", logger="tuner_lora"):
        fresh = LycorisNetworkType().create(_model(), LAYOUT, dim=4, alpha=2.0, dropout=None, args=args)
    assert "no_such_arg: not read by lycoris" in caplog.text
    fresh.load_adapter_state_dict(weights)
    for key, tensor in fresh.adapter_state_dict().items():
        assert torch.equal(tensor, weights[key]), key


def test_loraplus_and_max_norm_go_through_lycoris():
    _, network = _train_one_step("lora", {"loraplus_lr_ratio": 4}, 4)
    groups = network.parameter_groups(1e-3)
    assert sorted(g["lr"] for g in groups) == [1e-3, 4e-3]
    scaled, mean_norm, max_norm = network.apply_max_norm_regularization(1e-6, torch.device("cpu"))
    assert scaled == TARGETS and max_norm == pytest.approx(1e-6, rel=1e-3)


def test_dim_from_weights_rebuilds_each_module_of_the_file():
    _, network = _train_one_step("loha", {}, 4)
    weights = network.adapter_state_dict()
    rebuilt = LycorisNetworkType().create_from_weights(
        _model(), LAYOUT, weights, alpha=1.0, dropout=None, args={}
    )
    assert len(rebuilt.lycoris_modules()) == TARGETS
    for key, tensor in rebuilt.adapter_state_dict().items():
        assert torch.allclose(tensor, weights[key]), key


def test_files_of_lycoris_own_wrapper_merge_too():
    model, network = _train_one_step("lokr", {}, 4)
    native = {"lycoris_" + k.removeprefix("lora_unet_"): v for k, v in network.adapter_state_dict().items()}
    lycoris_type = make_plugin_manager().network("lycoris.kohya")
    assert lycoris_type.can_load(set(native))
    merged = _model()
    assert lycoris_type.merge_into(merged, LAYOUT, lycoris_type.normalize_weights(LAYOUT, native), 1.0) == []
    assert (_output(merged) - _output(model)).abs().max() < 1e-5


def test_a_lora_file_without_alpha_merges_through_lycoris_at_scale_one():
    from tuner_lora.lora_network import LoRANetworkType

    network = LoRANetworkType().create(_model(), LAYOUT, dim=4, alpha=4.0, dropout=None, args={})
    for adapter in network.adapters():
        torch.nn.init.normal_(adapter.lora_up.weight, std=0.05)
    weights = network.adapter_state_dict()
    with_alpha, without = _model(), _model()
    LoRANetworkType().merge_into(with_alpha, LAYOUT, weights, 1.0)
    no_alpha = {k: v for k, v in weights.items() if not k.endswith(".alpha")}
    assert LycorisNetworkType().merge_into(without, LAYOUT, no_alpha, 1.0) == []
    assert (_output(with_alpha) - _output(without)).abs().max() < 1e-5


def test_lycoris_is_listed_only_when_installed(monkeypatch):
    import tuner_lora.lycoris_merge as lycoris_merge

    assert "lycoris.kohya" in make_plugin_manager().networks()
    monkeypatch.setattr(lycoris_merge.importlib.util, "find_spec", lambda name: None)
    assert "lycoris" not in make_plugin_manager().networks()


@pytest.fixture
def toy(tmp_path):
    """The engine tests' toy workspace: dataset, VAE, text encoder and DiT files."""
    from ..engine.conftest import make_workspace

    return make_workspace(tmp_path / "toy")


def test_train_and_generate_with_lycoris_on_the_toy(toy, tmp_path):
    from safetensors import safe_open

    from ..engine.helpers import cache_all, run, train_values

    cache_all(toy)
    values = train_values(
        toy,
        tmp_path / "out",
        max_train_steps=3,
        learning_rate=5e-2,
        network_module="lycoris.kohya",
        network_args=["algo=loha", "verbose=True"],
        save_state_on_train_end=True,
    )
    (weights,) = run("train", values).outputs["weights"]
    with safe_open(str(weights), "pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
    assert "lora_unet_blocks_0_attn_to_q.hada_w1_a" in keys and not any("norm" in k for k in keys)
    assert metadata["ss_network_module"] == "lycoris.kohya"
    resumed = run("train", {**values, "max_train_steps": 4, "resume": tmp_path / "out" / "last-state"})
    assert resumed.outputs["weights"]

    base = {
        "dit": toy.dit,
        "vae": toy.vae,
        "text_encoder": toy.text_encoder,
        "prompt": "a red square",
        "video_size": [32, 32],
        "video_frames": 5,
        "infer_steps": 2,
        "seed": 1,
        "output_type": "images",
    }

    def images(name: str, **extra) -> list[bytes]:
        paths = run("generate", {**base, "save_path": tmp_path / name, **extra}).outputs["images"]
        return [p.read_bytes() for p in paths]

    plain = images("plain")
    assert images("zero", lora_weight=[weights], lora_multiplier=[0.0], lycoris=True) == plain
    merged = images("merged", lora_weight=[weights], lycoris=True)
    assert merged != plain
    assert images("sniffed", lora_weight=[weights]) == merged  # found by its tensor names without --lycoris


@pytest.mark.parametrize(
    ("module", "algo", "key"), [("networks.loha", "loha", "hada_w1_a"), ("networks.lokr", "lokr", "lokr_w1")]
)
def test_musubi_loha_and_lokr_names_train_that_algorithm(module, algo, key):
    plugins = make_plugin_manager()
    network_type = plugins.network(module)
    assert network_type.name == algo and network_type.check_args({}) == []
    torch.manual_seed(0)
    network = network_type.create(_model(), LAYOUT, dim=4, alpha=1.0, dropout=None, args={"factor": 4})
    state = network.adapter_state_dict()
    assert any(k.endswith(f".{key}") for k in state)
    assert network_type.can_load(set(state)) and not plugins.network("lora").can_load(set(state))
    # Sniffing a file at load picks the type of its algorithm; another algorithm is the lycoris type's.
    loading = [n.name for n in plugins.networks() if n.can_load(set(state))]
    assert loading[0] == algo
    (problem,) = network_type.check_args({"algo": "ia3"})
    assert f"--network_module {algo} trains {algo}" in problem and "lycoris.kohya" in problem


def _fp8_model() -> torch.nn.Module:
    """The tiny DiT with its block weights stored in fp8-scaled, loaded as ``--fp8_base --fp8_scaled`` does."""
    from tuner_core.memory.apply import apply_memory_strategies, load_transform
    from tuner_core.memory.strategy import MemorySettings
    from tuner_core.weights import StateDictSource, load_into_model

    plugins = make_plugin_manager()
    settings = MemorySettings(fp8_base=True, fp8_scaled=True, training=True)
    with torch.device("meta"):
        model = type(_model())(CONFIG)
    transform = load_transform(LAYOUT, settings, plugins)
    load_into_model(model, StateDictSource(_model().state_dict(), "tiny"), transform=transform)
    apply_memory_strategies(model, LAYOUT, settings, plugins, torch.device("cpu"))
    return model.requires_grad_(False)


@pytest.mark.parametrize("algo", [a for a in ALGOS if a != "full"])
def test_each_algorithm_trains_on_an_fp8_base_in_bypass_mode(algo, caplog):
    model = _fp8_model()
    dim = 1 if algo == "dylora" else 4
    with caplog.at_level("INFO"):
        network = LycorisNetworkType().create(
            model, LAYOUT, dim=dim, alpha=2.0, dropout=None, args={"algo": algo, **ALGOS[algo]}
        )
    assert "bypass_mode=True" in caplog.text
    network.apply_to(model)
    model.train()
    network.train()
    before = {k: v.clone() for k, v in network.adapter_state_dict().items()}
    optimizer = torch.optim.AdamW(network.parameter_groups(1e-2))
    for _ in range(2):  # lycoris initialises one factor at zero: the second step moves every tensor
        loss = model(**INPUTS).float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert torch.isfinite(loss)
    after = network.adapter_state_dict()
    assert any(not torch.equal(after[k], v) for k, v in before.items())
    blocks = [
        p
        for n, p in model.named_parameters()
        if n.startswith("transformer_blocks.") and n.endswith("to_q.weight")
    ]
    assert blocks and all(p.dtype == torch.float8_e4m3fn for p in blocks)  # the base stayed in fp8


def test_full_and_rebuild_mode_are_refused_on_an_fp8_base():
    from tuner_core.errors import ConfigError

    model = _fp8_model()
    with pytest.raises(ConfigError, match="algo=full trains whole weights"):
        LycorisNetworkType().create(model, LAYOUT, dim=4, alpha=1.0, dropout=None, args={"algo": "full"})
    with pytest.raises(ConfigError, match="bypass_mode=False cannot train on an fp8 base"):
        LycorisNetworkType().create(
            model, LAYOUT, dim=4, alpha=1.0, dropout=None, args={"algo": "lora", "bypass_mode": "False"}
        )


@pytest.mark.parametrize("algo", ["lora", "loha", "lokr"])
def test_dora_files_merge_whole_not_as_plain_lora(algo, tmp_path):
    from tuner_core.network_files import NetworkFile
    from tuner_core.network_merge import merge_networks

    model, network = _train_one_step(algo, {"dora_wd": True}, 4)
    unmerged = _output(model)
    path = save_weights(tmp_path / "dora.safetensors", network.adapter_state_dict(), {}, None)
    keys = set(load_file(str(path)))
    plugins = make_plugin_manager()
    assert any(k.endswith(".dora_scale") for k in keys) and not plugins.network("lora").can_load(keys)
    merged = _model()
    merge_networks(merged, [NetworkFile(path)], list(plugins.networks()), plugins.architecture("framepack"))
    assert (_output(merged) - unmerged).abs().max() < 1e-5  # magnitudes included


@pytest.mark.parametrize("algo", ["loha", "lokr"])
@pytest.mark.parametrize("spelling", ["comfy", "peft"])
def test_loha_and_lokr_in_dotted_spellings_merge_like_the_kohya_file(algo, spelling, tmp_path):
    import json

    from safetensors.torch import save_file

    from tuner_core.network_files import NetworkFile
    from tuner_core.network_merge import merge_networks

    model, network = _train_one_step(algo, ALGOS[algo], 4)  # alpha 2.0, dim 4
    kohya = {k: v.detach().cpu() for k, v in network.adapter_state_dict().items()}
    paths = {f"lora_unet_{p.replace('.', '_')}": p for p, _ in _model().named_modules() if p}
    front = "diffusion_model." if spelling == "comfy" else "base_model.model."
    dotted = {}
    for key, tensor in kohya.items():
        name, part = key.split(".", 1)
        if spelling == "peft" and part == "alpha":
            continue  # PEFT keeps alpha in adapter_config.json
        dotted[f"{front}{paths[name]}.{part}"] = tensor
    path = tmp_path / "adapter_model.safetensors"
    save_file(dotted, str(path))
    if spelling == "peft":
        (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "alpha": 2.0}))
    plugins = make_plugin_manager()
    assert [n.name for n in plugins.networks() if n.can_load(set(dotted))][0] == algo
    expected, merged = _model(), _model()
    save_file(kohya, str(tmp_path / "kohya.safetensors"))
    architecture, types = plugins.architecture("framepack"), list(plugins.networks())
    merge_networks(expected, [NetworkFile(tmp_path / "kohya.safetensors")], types, architecture)
    merge_networks(merged, [NetworkFile(path)], types, architecture)
    assert (_output(merged) - _output(expected)).abs().max() < 1e-6
    assert (_output(expected) - _output(_model())).abs().max() > 1e-4  # the network does change the output
