"""Exponential backoff with full jitter (the AWS architecture blog's "full jitter")."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds before retry number ``attempt`` (1-based): uniform in [0, min(cap, base*2^(n-1))]."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 62))
    return (rng or random).uniform(0.0, ceiling)
