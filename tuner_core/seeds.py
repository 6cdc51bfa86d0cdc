"""Seeds: the range a user may type, a random default, and independent seeds derived from one.

A run's seed fans out into many generators (one per process, one per batch, one per sample). Adding or
multiplying numbers into the seed overflows torch's 64-bit seeds for large values, and nearby seeds would
give overlapping streams; hashing the parts instead gives every (seed, part...) its own 64-bit seed.
"""

from __future__ import annotations

import hashlib
import random

import attrs
import torch

#: torch accepts seeds in 0 .. 2**64 - 1.
MAX_SEED = 2**64 - 1


def random_seed() -> int:
    """A seed for a run that was given none (31 bits, so it is easy to read back from a log and retype)."""
    return random.SystemRandom().randrange(2**31)


def derive_seed(seed: int, *parts: object) -> int:
    """A 64-bit seed that depends on ``seed`` and every one of ``parts`` (numbers or strings)."""
    text = ":".join(str(p) for p in (seed, *parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def seeded_generator(seed: int, *parts: object) -> torch.Generator:
    """A CPU generator seeded with :func:`derive_seed` of ``seed`` and ``parts``."""
    return torch.Generator().manual_seed(derive_seed(seed, *parts))


def check_seed(_instance: object, attribute: attrs.Attribute, value: int | None) -> None:
    """An attrs validator for seed options: ``None`` or an integer in ``0 .. 2**64 - 1``."""
    if value is not None and not 0 <= value <= MAX_SEED:
        raise ValueError(f"--{attribute.name} must be within 0 .. {MAX_SEED} (2**64 - 1), got {value}")
