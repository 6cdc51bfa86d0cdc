"""What DDP synchronises when a network trains on a frozen base model.

Every process loads the base model from the same file, so DDP has nothing to gain from broadcasting it at
start (26 GB for FramePack's DiT) or from checking its buffers every step. With block swap it must not: the
frozen weights of swapped blocks sit in host memory (or, in tests, as stand-ins), where DDP's one-device
check and its broadcast fail. So the frozen parameters and the buffers (constants such as rotary tables
and fp8 scales, equal on every process) are left out of DDP; only the weights that train, the network's,
are synchronised.
"""

from __future__ import annotations

import logging

from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn
from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger(__name__)

#: The distributed types under which accelerate wraps the model in DistributedDataParallel.
_DDP = {DistributedType.MULTI_GPU, DistributedType.MULTI_CPU, DistributedType.MULTI_XPU}


def frozen_state_names(step: nn.Module) -> list[str]:
    """Names (in ``step``) of the parameters that do not train and of every buffer."""
    frozen = [name for name, p in step.named_parameters() if not p.requires_grad]
    buffers = [name for name, _ in step.named_buffers()]
    return frozen + buffers


def leave_frozen_weights_out_of_ddp(step: nn.Module, accelerator: Accelerator) -> int:
    """Before ``accelerator.prepare``: make DDP ignore ``step``'s frozen parameters and buffers (see the
    module docstring). Does nothing outside DDP, or when everything trains; returns how many were left out."""
    if accelerator.distributed_type not in _DDP:
        return 0
    if all(p.requires_grad for p in step.parameters()):
        return 0  # full fine-tuning: DDP keeps every weight and buffer in step, as usual
    names = frozen_state_names(step)
    # The documented way for a module to tell DDP what to skip; DDP reads it when it wraps the module.
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(step, names)
    log.debug("DDP leaves out %d frozen parameters and buffers", len(names))
    return len(names)
