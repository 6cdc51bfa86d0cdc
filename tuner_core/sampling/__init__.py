"""Generation: flow-matching schedules and solvers any architecture samples with, sample requests and
prompt files.

The public names below are what plugins import (``from tuner_core.sampling import sample_flow``).
"""

from tuner_core.sampling.euler import sample_euler
from tuner_core.sampling.flow import Denoiser, StepCallback
from tuner_core.sampling.guidance import TIMESTEP_SCALE, VelocityModel, flow_denoiser, rescale_guidance
from tuner_core.sampling.sigmas import MAX_FLUX_SHIFT, flux_mu, shifted_sigmas
from tuner_core.sampling.solvers import DEFAULT_SOLVER, SOLVERS, Solver, sample_flow
from tuner_core.sampling.unipc import UNIPC_VARIANTS, sample_unipc

__all__ = [
    "DEFAULT_SOLVER",
    "MAX_FLUX_SHIFT",
    "SOLVERS",
    "TIMESTEP_SCALE",
    "UNIPC_VARIANTS",
    "Denoiser",
    "Solver",
    "StepCallback",
    "VelocityModel",
    "flow_denoiser",
    "flux_mu",
    "rescale_guidance",
    "sample_euler",
    "sample_flow",
    "sample_unipc",
    "shifted_sigmas",
]
