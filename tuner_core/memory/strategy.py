"""The interface of a memory strategy (fp8, fp8-scaled, block swap, gradient checkpointing, ...)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tuner_core.architecture import ModelLayout
    from tuner_core.weights.reader import TensorInfo
    from tuner_core.weights.stream import StoredPlan


@attrs.frozen
class MemorySettings:
    """The memory options of one command, as the strategies read them."""

    fp8_base: bool = False
    fp8_scaled: bool = False
    blocks_to_swap: int = 0
    gradient_checkpointing: bool = False
    gradient_checkpointing_cpu_offload: bool = False
    use_pinned_memory_for_block_swap: bool = False
    #: True while training (backward passes happen), False for inference.
    training: bool = False
    #: True when training updates the model's own weights (no network on top: full fine-tuning).
    full_fine_tuning: bool = False
    #: The command's whole options object, where a strategy reads the options it declared itself
    #: (:attr:`MemoryStrategy.options`). Left out of the hash: option values may be lists.
    options: Any = attrs.field(default=None, repr=False, hash=False)


class MemoryStrategy:
    """Base class of a registered memory strategy.

    A strategy may act on each tensor while a checkpoint streams in (:meth:`transform_tensor`, before the
    model owns it, so a 13B model never sits in memory at full precision), on the loaded model
    (:meth:`apply`), and around every declared block's forward and backward (:meth:`before_block`,
    :meth:`after_block`). Strategies run in ascending ``order``.

    A strategy may add its own options to a command through :attr:`options`: they appear in the
    command's ``--help``, are validated like the core's, and reach the strategy as
    ``settings.options.<name>``.
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    order: ClassVar[int] = 100
    #: The options this strategy adds, per command (``"train"``, ``"generate"``): an attrs class of
    #: :func:`tuner_core.option` fields, each with a default, declared
    #: ``@attrs.frozen(kw_only=True, slots=False)`` (it is mixed into the command's options class, and
    #: slotted classes cannot be mixed). See :func:`tuner_core.commands.options_class`.
    options: ClassVar[Mapping[str, type]] = {}

    def enabled(self, settings: MemorySettings) -> bool:
        """Whether these settings ask for this strategy.

        The core also asks with only the fixed fields set (to tell whether any strategy acts on
        ``--fp8_base``, say); ``settings.options`` then holds just this strategy's options, at their defaults.
        """
        raise NotImplementedError

    def check(self, settings: MemorySettings) -> None:
        """Refuse, before any model loads, settings this strategy cannot run with here (raise a
        :class:`~tuner_core.errors.TunerError` saying what to do). Called only when :meth:`enabled`."""

    def transform_tensor(
        self, key: str, tensor: torch.Tensor, layout: ModelLayout, settings: MemorySettings
    ) -> Mapping[str, torch.Tensor]:
        """Rewrite one loaded tensor; may return extra entries (for example a scale). Identity by default."""
        return {key: tensor}

    def plan_load(
        self, stored: Mapping[str, TensorInfo], layout: ModelLayout, settings: MemorySettings
    ) -> StoredPlan | None:
        """Look at a checkpoint's tensor names, shapes and dtypes once, before any tensor is read.

        Return which stored tensors :meth:`transform_tensor` takes that the model does not declare, and
        which it receives in their stored dtype (a checkpoint already in fp8 is used as it is), or
        ``None`` for nothing special. Raise :class:`~tuner_core.errors.ModelLoadError` to refuse the
        checkpoint with a message that says why.
        """
        return None

    def before_block(self, index: int, block: nn.Module, *, backward: bool) -> None:
        """Called before declared block ``index`` runs its forward, or its backward (``backward=True``).

        Block swap waits here until the block's weights have arrived. Only strategies that override this
        (or :meth:`after_block`) get hooks on the blocks. With gradient checkpointing a block's forward
        runs again inside its backward, so the forward calls come twice.
        """

    def after_block(self, index: int, block: nn.Module, *, backward: bool) -> None:
        """Called after declared block ``index`` ran its forward, or its backward (``backward=True``).

        Block swap starts moving the next block's weights here.
        """

    def apply(
        self, model: nn.Module, layout: ModelLayout, settings: MemorySettings, device: torch.device
    ) -> None:
        """Change the loaded model in place (patch forwards, place blocks, register hooks)."""
