"""Core options of ``tuner train``. Names, meanings and defaults follow the musubi-tuner FramePack guide."""

from __future__ import annotations

from pathlib import Path

import attrs

from tuner_core.attention import normalize_attn_mode
from tuner_core.errors import ConfigError
from tuner_core.options import at_least, option
from tuner_core.seeds import check_seed

DATA, MODEL, MEMORY, OPTIM, TIMESTEPS, NETWORK, SAVE, SAMPLE, LOG = (
    "data",
    "model",
    "memory",
    "optimizer",
    "timesteps and loss",
    "network",
    "saving and resuming",
    "sampling during training",
    "logging",
)

TIMESTEP_SAMPLING = ("sigma", "uniform", "sigmoid", "shift", "flux_shift", "logsnr")
WEIGHTING_SCHEMES = ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap")
LR_SCHEDULERS = (
    "constant",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant_with_warmup",
)
#: The attention flags (each a field below) and the backend each selects.
ATTENTION_FLAGS = {
    flag: normalize_attn_mode(flag) for flag in ("sdpa", "flash_attn", "sage_attn", "xformers")
}


@attrs.frozen(kw_only=True)
class TrainOptions:
    """Everything ``tuner train`` needs besides the architecture's own options."""

    # -- data -----------------------------------------------------------------------------------------
    dataset_config: Path = option(help="Dataset TOML (or JSON) file; its caches must exist.", group=DATA)
    max_data_loader_n_workers: int = option(
        8,
        help="Worker processes loading cached batches (capped at the number of CPUs).",
        group=DATA,
        validator=at_least(0),
    )
    persistent_data_loader_workers: bool = option(
        False, help="Keep data-loader workers alive between epochs.", group=DATA
    )
    seed: int | None = option(
        None,
        help="Random seed, 0 .. 2**64-1 (default: a random one, logged).",
        group=DATA,
        validator=check_seed,
    )

    # -- model / attention ------------------------------------------------------------------------------
    sdpa: bool = option(False, help="Use PyTorch scaled-dot-product attention (the default).", group=MODEL)
    flash_attn: bool = option(False, help="Use FlashAttention (package flash-attn).", group=MODEL)
    sage_attn: bool = option(
        False, help="Use SageAttention (inference only; rejected for training).", group=MODEL
    )
    xformers: bool = option(False, help="Use xformers memory-efficient attention.", group=MODEL)
    split_attn: bool = option(False, help="Run attention one batch element at a time.", group=MODEL)
    mixed_precision: str = option(
        "no", help="Mixed precision of the forward pass.", choices=("no", "fp16", "bf16"), group=MODEL
    )

    # -- memory -----------------------------------------------------------------------------------------
    fp8_base: bool = option(False, help="Keep the base model's block weights in float8_e4m3fn.", group=MEMORY)
    fp8_scaled: bool = option(
        False,
        help="Quantise block weights to fp8 with block-wise scales (requires --fp8_base).",
        group=MEMORY,
    )
    blocks_to_swap: int = option(
        0,
        help="Number of transformer blocks kept on the CPU and swapped in per step.",
        group=MEMORY,
        validator=at_least(0),
    )
    use_pinned_memory_for_block_swap: bool = option(
        False, help="Stage swapped blocks through pinned host memory.", group=MEMORY
    )
    gradient_checkpointing: bool = option(
        False, help="Recompute block activations in backward.", group=MEMORY
    )
    gradient_checkpointing_cpu_offload: bool = option(
        False, help="Offload checkpointed activations to the CPU.", group=MEMORY
    )

    # -- optimizer ----------------------------------------------------------------------------------------
    optimizer_type: str = option(
        "AdamW",
        help="AdamW, AdamW8bit (bitsandbytes), AdaFactor, or a dotted class path (torch.optim.SGD).",
        group=OPTIM,
    )
    optimizer_args: list[str] = option(
        factory=list,
        help="Extra optimizer arguments as key=value (weight_decay=0.01 betas=0.9,0.999).",
        nargs="*",
        group=OPTIM,
    )
    learning_rate: float = option(2e-6, help="Learning rate.", group=OPTIM, validator=at_least(0))
    max_grad_norm: float = option(1.0, help="Gradient clipping norm; 0 disables clipping.", group=OPTIM)
    gradient_accumulation_steps: int = option(
        1, help="Batches accumulated per optimizer step.", group=OPTIM, validator=at_least(1)
    )
    lr_scheduler: str = option("constant", help="Learning-rate schedule.", choices=LR_SCHEDULERS, group=OPTIM)
    lr_warmup_steps: float = option(
        0, help="Warm-up steps, or a fraction (<1) of the total steps.", group=OPTIM, validator=at_least(0)
    )
    lr_decay_steps: float = option(
        0,
        help="Decay steps at the end, or a fraction (<1) of the total steps.",
        group=OPTIM,
        validator=at_least(0),
    )
    lr_scheduler_num_cycles: int = option(
        1, help="Restarts of cosine_with_restarts.", group=OPTIM, validator=at_least(1)
    )
    lr_scheduler_power: float = option(1.0, help="Power of the polynomial schedule.", group=OPTIM)
    lr_scheduler_min_lr_ratio: float | None = option(
        None, help="Final learning rate as a fraction of --learning_rate.", group=OPTIM, validator=at_least(0)
    )
    max_train_steps: int = option(1600, help="Optimizer steps to train.", group=OPTIM, validator=at_least(1))
    max_train_epochs: int | None = option(
        None, help="Epochs to train (overrides --max_train_steps).", group=OPTIM, validator=at_least(1)
    )

    # -- timesteps and loss ---------------------------------------------------------------------------------
    timestep_sampling: str = option(
        "sigma", help="How noise levels are drawn.", choices=TIMESTEP_SAMPLING, group=TIMESTEPS
    )
    discrete_flow_shift: float = option(
        1.0, help="Shift s of the noise schedule: t' = s*t / (1 + (s-1)*t).", group=TIMESTEPS
    )
    sigmoid_scale: float = option(
        1.0, help="Scale of the normal draw for sigmoid/shift sampling.", group=TIMESTEPS
    )
    weighting_scheme: str = option(
        "none", help="Loss weighting / density of the sigma draw.", choices=WEIGHTING_SCHEMES, group=TIMESTEPS
    )
    logit_mean: float = option(0.0, help="Mean of logit_normal and logsnr draws.", group=TIMESTEPS)
    logit_std: float = option(
        1.0, help="Standard deviation of logit_normal and logsnr draws.", group=TIMESTEPS
    )
    mode_scale: float = option(1.29, help="Scale of the 'mode' weighting scheme.", group=TIMESTEPS)
    min_timestep: int | None = option(
        None, help="Lowest timestep (0-1000) drawn.", group=TIMESTEPS, validator=at_least(0)
    )
    max_timestep: int | None = option(
        None, help="Highest timestep (0-1000) drawn.", group=TIMESTEPS, validator=at_least(0)
    )
    preserve_distribution_shape: bool = option(
        False, help="Apply min/max timestep by rejection instead of rescaling.", group=TIMESTEPS
    )
    guidance_scale: float = option(
        1.0, help="Distilled guidance value fed to guidance-embedding models while training.", group=TIMESTEPS
    )

    # -- network ----------------------------------------------------------------------------------------
    network_module: str | None = option(
        None,
        help="Network type to train (see `tuner plugins`); none = full fine-tune.",
        group=NETWORK,
    )
    network_dim: int | None = option(
        None, help="Network rank (default 4).", group=NETWORK, validator=at_least(1)
    )
    network_alpha: float = option(
        1.0, help="Network alpha; the update is scaled by alpha/dim.", group=NETWORK
    )
    network_dropout: float | None = option(None, help="Dropout of network neurons.", group=NETWORK)
    network_args: list[str] = option(
        factory=list,
        help="Network arguments as key=value: for lora conv_dim, conv_alpha, rank_dropout, module_dropout, "
        "include_patterns, exclude_patterns, loraplus_lr_ratio, verbose; for lycoris.kohya also algo "
        "(lora, loha, lokr, full, dylora, glora, diag-oft, boft, ia3), preset, factor, dropout, ...",
        nargs="*",
        group=NETWORK,
    )
    network_weights: Path | None = option(None, help="Start from these network weights.", group=NETWORK)
    dim_from_weights: bool = option(
        False, help="Take each module's rank (and alpha) from --network_weights.", group=NETWORK
    )
    scale_weight_norms: float | None = option(
        None,
        help="After each optimizer step, scale down network updates whose norm exceeds this (1 is a good start).",
        group=NETWORK,
        validator=at_least(0),
    )
    base_weights: list[Path] = option(
        factory=list, help="Network files merged into the model before training.", nargs="*", group=NETWORK
    )
    base_weights_multiplier: list[float] = option(
        factory=list, help="Multiplier per --base_weights file (default 1.0 each).", nargs="*", group=NETWORK
    )

    # -- saving and resuming ---------------------------------------------------------------------------------
    output_dir: Path = option(
        help="Directory for weights, states, samples and the loss plot (created if missing).",
        group=SAVE,
        output="directory",
    )
    output_name: str = option("last", help="Base name of saved files.", group=SAVE)
    save_precision: str | None = option(
        None,
        help="dtype of saved weights (default fp32 for networks).",
        choices=("float", "fp32", "fp16", "bf16"),
        group=SAVE,
    )
    save_every_n_epochs: int | None = option(
        None, help="Save weights every N epochs.", group=SAVE, validator=at_least(1)
    )
    save_every_n_steps: int | None = option(
        None, help="Save weights every N steps.", group=SAVE, validator=at_least(1)
    )
    save_last_n_epochs: int | None = option(
        None, help="Keep only the last N epoch saves.", group=SAVE, validator=at_least(1)
    )
    save_last_n_steps: int | None = option(
        None, help="Keep only the saves of the last N steps.", group=SAVE, validator=at_least(1)
    )
    save_last_n_epochs_state: int | None = option(
        None, help="Keep only the last N epoch states.", group=SAVE, validator=at_least(1)
    )
    save_last_n_steps_state: int | None = option(
        None, help="Keep only the states of the last N steps.", group=SAVE, validator=at_least(1)
    )
    save_state: bool = option(False, help="Save a resumable state with every weights save.", group=SAVE)
    save_state_on_train_end: bool = option(False, help="Save a resumable state at the end.", group=SAVE)
    resume: Path | None = option(None, help="Resume from this state directory.", group=SAVE)
    no_metadata: bool = option(False, help="Write only the minimum metadata into saved files.", group=SAVE)
    training_comment: str | None = option(None, help="Comment stored in saved files.", group=SAVE)

    # -- sampling during training ------------------------------------------------------------------------------
    sample_prompts: Path | None = option(None, help="Prompt file for samples during training.", group=SAMPLE)
    sample_every_n_steps: int | None = option(
        None, help="Generate samples every N steps.", group=SAMPLE, validator=at_least(1)
    )
    sample_every_n_epochs: int | None = option(
        None, help="Generate samples every N epochs.", group=SAMPLE, validator=at_least(1)
    )
    sample_at_first: bool = option(False, help="Generate samples before training.", group=SAMPLE)

    # -- logging ------------------------------------------------------------------------------------------
    logging_dir: Path | None = option(
        None, help="Write TensorBoard logs here.", group=LOG, output="directory"
    )
    log_prefix: str | None = option(None, help="Prefix of the TensorBoard run directory.", group=LOG)

    def __attrs_post_init__(self) -> None:
        flags = [name for name in ATTENTION_FLAGS if getattr(self, name)]
        if len(flags) > 1:
            raise ConfigError("choose one attention backend: " + ", ".join("--" + f for f in flags))
        if self.sage_attn:
            raise ConfigError(
                "--sage_attn is for inference only; it has no backward pass. Use --sdpa or --flash_attn"
            )
        if (
            self.min_timestep is not None
            and self.max_timestep is not None
            and not self.min_timestep < self.max_timestep <= 1000
        ):
            raise ConfigError(
                f"--min_timestep ({self.min_timestep}) must be below --max_timestep ({self.max_timestep}), "
                "both within 0..1000"
            )
        if self.max_timestep is not None and self.max_timestep > 1000:
            raise ConfigError(f"--max_timestep must be at most 1000, got {self.max_timestep}")

    @property
    def attn_mode(self) -> str:
        """The attention backend the flags select (``sdpa`` when none is given)."""
        for flag, mode in ATTENTION_FLAGS.items():
            if getattr(self, flag):
                return mode
        return "sdpa"
