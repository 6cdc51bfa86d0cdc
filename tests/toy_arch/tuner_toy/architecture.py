"""The toy architecture as tuner sees it: declarations plus the model-specific steps."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch
from safetensors.torch import load_file

from tuner_core import (
    Architecture,
    CacheRecord,
    ConfigError,
    MediaRules,
    MediaSample,
    ModelLayout,
    ModelLoadError,
    SampleRequest,
    shift_sigmas,
)
from tuner_core.weights import Transform, file_identity
from tuner_toy.models import SPATIAL, TEMPORAL, ToyAutoencoder, ToyDenoiser, ToyTextEncoder
from tuner_toy.options import ToyCacheLatentsOptions, ToyCacheTextOptions, ToyGenerateOptions, ToyTrainOptions

MODEL_CLASSES = {"vae": ToyAutoencoder, "text_encoder": ToyTextEncoder, "dit": ToyDenoiser}


class ToyArchitecture(Architecture):
    """A flow-matching text-to-video toy with a linear autoencoder."""

    name: ClassVar[str] = "toy"
    title: ClassVar[str] = "Toy flow-matching video model (tests and demo)"
    can_sample: ClassVar[bool] = True
    cache_short_name: ClassVar[str] = "toy"
    options = {
        "cache-latents": ToyCacheLatentsOptions,
        "cache-text": ToyCacheTextOptions,
        "train": ToyTrainOptions,
        "generate": ToyGenerateOptions,
    }
    option_defaults = {"generate": {"infer_steps": 8, "video_size": [64, 64], "fps": 16}}
    media = MediaRules(fps=16.0, frame_multiple=TEMPORAL, bucket_step=16, min_frames=5)
    layout = ModelLayout(
        block_lists=("blocks",),
        network_targets=("ToyBlock",),
        network_exclude=(r".*norm.*",),
        keep_high_precision=(
            r"^x_embedder\.",
            r"^time_",
            r"^text_in\.",
            r"^pooled_in\.",
            r"norm",
            r"^proj_out\.",
        ),
    )
    cache_version = "1"

    # -- models ------------------------------------------------------------------------------------

    def components(self, command: str, options: Any) -> tuple[str, ...]:
        return {
            "cache-latents": ("vae",),
            "cache-text": ("text_encoder",),
            "train": ("dit",),
            "generate": ("dit", "vae", "text_encoder"),
        }[command]

    def sample_components(self, options: Any) -> tuple[str, ...]:
        if options.vae is None or options.text_encoder is None:
            raise ConfigError("sampling during training with --arch toy needs --vae and --text_encoder")
        return ("vae", "text_encoder")

    def load_component(
        self, component: str, options: Any, device: torch.device, transform: Transform | None = None
    ) -> Any:
        path = self.component_path(component, options)
        if path is None or not Path(path).is_file():
            raise ModelLoadError(f"--{component}: {path} does not exist")
        state = load_file(str(path))
        if transform is not None:  # the memory strategies' rewrite, as a streaming loader would apply it
            state = {k: t for name, tensor in state.items() for k, t in transform(name, tensor).items()}
        if component == "dit":  # the size is read from the weights, so any toy size loads
            dim = state["x_embedder.weight"].shape[0]
            depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
            model = ToyDenoiser(dim=dim, heads=max(dim // 16, 1), depth=depth)
        else:
            model = MODEL_CLASSES[component]()
        try:
            declared = model.state_dict()
            for key in state.keys() - declared.keys():  # tensors a transform added (fp8 scales): buffers
                owner, _, name = key.rpartition(".")
                model.get_submodule(owner).register_buffer(name, state[key])
            # Assigned, not copied: a transform may have changed the dtype (fp8 weights).
            model.load_state_dict(state, assign=True)
        except (RuntimeError, AttributeError) as exc:
            raise ModelLoadError(
                f"--{component} {path} does not hold toy {component} weights: {exc}"
            ) from exc
        return model.to(device).eval()

    def cache_identity(self, command: str, options: Any) -> str:
        component = "vae" if command == "cache-latents" else "text_encoder"
        return file_identity(self.component_path(component, options))

    # -- caching -----------------------------------------------------------------------------------

    def encode_latents(
        self, samples: Sequence[MediaSample], models: Mapping[str, Any], options: Any
    ) -> list[list[CacheRecord]]:
        vae: ToyAutoencoder = models["vae"]
        out = []
        for sample in samples:
            pixels = torch.from_numpy(sample.pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            latents = vae.encode(pixels)
            (name,) = self.latent_cache_names(sample.item, options)
            w, h = sample.item.original_size
            out.append(
                [
                    CacheRecord(
                        name, {"latents": latents}, {"architecture": "toy", "width": str(w), "height": str(h)}
                    )
                ]
            )
        return out

    def encode_text(
        self, captions: Sequence[str], models: Mapping[str, Any], options: Any
    ) -> list[dict[str, torch.Tensor]]:
        return [models["text_encoder"](caption) for caption in captions]

    def text_cache_metadata(self, caption: str) -> dict[str, str]:
        return {"architecture": "toy", "caption1": caption}

    # -- training ----------------------------------------------------------------------------------

    def batch_item(
        self, latent_tensors: Mapping[str, torch.Tensor], text_tensors: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return {
            "latents": latent_tensors["latents"],
            "text": text_tensors["text"],
            "text_mask": text_tensors["text_mask"],
            "pooled": text_tensors["pooled"],
        }

    def predict(
        self,
        model: torch.nn.Module,
        batch: Mapping[str, torch.Tensor],
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        options: Any,
    ) -> torch.Tensor:
        return model(noisy_latents, timesteps, batch["text"], batch["text_mask"], batch["pooled"])

    def network_metadata(self) -> dict[str, str]:
        return {"ss_base_model_version": "toy", "modelspec.architecture": "toy/lora"}

    # -- demo --------------------------------------------------------------------------------------------

    def demo(self, directory: Path, *, quick: bool = False) -> Mapping[str, Mapping[str, Any]]:
        from tuner_toy.build import make_toy_models
        from tuner_toy.sample_data import make_sample_dataset

        dataset = make_sample_dataset(directory / "data")
        files = make_toy_models(directory / "models", dim=64)
        epochs = 2 if quick else 300
        prompts = directory / "prompts.txt"
        prompts.write_text("a red square moving right --w 64 --h 64 --f 17 --s 25 --d 7\n", encoding="utf-8")
        return {
            "cache-latents": {"dataset_config": dataset, "vae": files.vae},
            "cache-text": {"dataset_config": dataset, "text_encoder": files.text_encoder},
            "train": {
                "dataset_config": dataset,
                "dit": files.dit,
                "vae": files.vae,
                "text_encoder": files.text_encoder,
                "output_dir": directory / "output",
                # The toy starts from random weights, so the demo trains all of it; with a real base
                # model you would train a LoRA (--network_module lora), as the tests do.
                "output_name": "toy",
                "learning_rate": 2e-3,
                "lr_scheduler": "cosine",
                "timestep_sampling": "shift",
                "discrete_flow_shift": 3.0,
                "max_train_epochs": epochs,
                "seed": 0,
                "max_data_loader_n_workers": 0,
                "sample_prompts": prompts,
                "sample_every_n_epochs": epochs // 2,
            },
            "generate": {
                "dit": directory / "output" / "toy.safetensors",
                "vae": files.vae,
                "text_encoder": files.text_encoder,
                "prompt": "a red square moving right",
                "video_frames": 17,
                "seed": 7,
                "infer_steps": 25,
                "save_path": directory / "generated",
            },
        }

    def demo_notes(self) -> list[str]:
        return [
            "The toy is the test-suite's small flow-matching model, trained here from random weights; "
            "`tuner demo` (FramePack) runs the real architecture's code on tiny stand-in models."
        ]

    # -- sampling ----------------------------------------------------------------------------------

    def generation_request(self, options: Any) -> SampleRequest:
        return attrs.evolve(super().generation_request(options), frames=options.video_frames)

    @torch.no_grad()
    def sample(
        self,
        models: Mapping[str, Any],
        requests: Sequence[SampleRequest],
        options: Any,
        generators: Sequence[torch.Generator],
    ) -> Iterator[torch.Tensor]:
        dit: ToyDenoiser = models["dit"]
        device = next(dit.parameters()).device
        for request, generator in zip(requests, generators):
            text = {k: v[None].to(device) for k, v in models["text_encoder"](request.prompt).items()}
            frames = max(request.frames, 1)
            shape = (1, 8, (frames - 1) // TEMPORAL + 1, request.height // SPATIAL, request.width // SPATIAL)
            x = torch.randn(shape, generator=generator).to(device)
            sigmas = shift_sigmas(torch.linspace(1.0, 0.0, request.steps + 1), 3.0)
            for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
                t = torch.full((1,), float(sigma) * 1000, device=device)
                velocity = dit(x, t, text["text"], text["text_mask"], text["pooled"])
                x = x + (float(sigma_next) - float(sigma)) * velocity
            yield x[0].float().cpu()

    @torch.no_grad()
    def decode_latents(
        self,
        models: Mapping[str, Any],
        latents: torch.Tensor,
        options: Any,
        sink: Callable[[torch.Tensor], None],
    ) -> None:
        video = models["vae"].decode(latents.float().cpu())  # (F, 3, H, W) in [-1, 1]
        sink(((video + 1) / 2).clamp(0, 1).permute(1, 0, 2, 3))
