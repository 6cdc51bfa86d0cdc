"""FramePack video generation: section count and order, per-section conditioning, the section loop and
streamed decoding. The solver, the sigma schedule, the DiT and the VAE decode are supplied by the caller.

Typical wiring (see each module)::

    sections = section_count(video_seconds, window, video_sections=video_sections)
    plan = generation_plan(sections, window, f1=f1, latent_paddings=paddings)
    conditioner = SectionConditioner(prompts, images, negative)
    decoder = StreamedDecoder(decode, sink, sections=sections, latent_window_size=window)
    feed = TimeOrderedFeed(decoder.feed)
    latents = generate_sections(plan, conditioner, predict_velocity=dit, solver=solver, sigmas=sigmas,
                                generator=torch.Generator("cpu").manual_seed(seed), settings=settings,
                                device=device, end_latent=end_latent, on_section=feed)
    decoder.finish()
"""

from tuner_framepack.generation.conditioning import ImageConditioning, SectionConditioner, SectionConditioning
from tuner_framepack.generation.model_call import (
    ModelCallSettings,
    SectionSolver,
    VelocityModel,
    make_denoise,
    section_model_kwargs,
)
from tuner_framepack.generation.section_count import (
    parse_latent_paddings,
    section_count,
    section_latent_paddings,
    section_seconds,
    video_frame_count,
    video_latent_count,
)
from tuner_framepack.generation.section_loop import SectionResult, generate_sections, section_noise
from tuner_framepack.generation.section_plan import (
    CleanContext,
    ForwardHistory,
    GenerationPlan,
    InvertedHistory,
    SectionStep,
    generation_plan,
    new_history,
)
from tuner_framepack.generation.section_prompts import (
    parse_section_strings,
    section_key,
    unused_section_keys,
)
from tuner_framepack.generation.streamed_decode import (
    StreamedDecoder,
    TimeOrderedFeed,
    decode_chunk_spans,
    decode_streamed,
    overlap_frames,
    soft_append,
)

__all__ = [
    "CleanContext",
    "ForwardHistory",
    "GenerationPlan",
    "ImageConditioning",
    "InvertedHistory",
    "ModelCallSettings",
    "SectionConditioner",
    "SectionConditioning",
    "SectionResult",
    "SectionStep",
    "SectionSolver",
    "StreamedDecoder",
    "TimeOrderedFeed",
    "VelocityModel",
    "decode_chunk_spans",
    "decode_streamed",
    "generate_sections",
    "generation_plan",
    "make_denoise",
    "new_history",
    "overlap_frames",
    "parse_latent_paddings",
    "parse_section_strings",
    "section_count",
    "section_key",
    "section_latent_paddings",
    "section_model_kwargs",
    "section_noise",
    "section_seconds",
    "soft_append",
    "unused_section_keys",
    "video_frame_count",
    "video_latent_count",
]
