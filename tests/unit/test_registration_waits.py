"""The engine's waits between registration attempts (no sockets)."""

from __future__ import annotations

import itertools
import random

from ipython1.engine.service import registration_waits


def test_waits_double_up_to_the_ceiling_and_stay_in_its_upper_half() -> None:
    waits = list(itertools.islice(registration_waits(first=0.05, most=2.0), 12))
    ceilings = [0.05, 0.1, 0.2, 0.4, 0.8, 1.6] + [2.0] * 6
    for wait, ceiling in zip(waits, ceilings, strict=True):
        assert ceiling / 2 <= wait <= ceiling


def test_engines_turned_away_together_come_back_spread_out() -> None:
    # Hundreds of engines refused by the same full handshake cap must not retry in step.
    rngs = [random.Random(seed).random for seed in range(200)]
    fifth = [list(itertools.islice(registration_waits(rng=rng), 5))[-1] for rng in rngs]
    assert max(fifth) - min(fifth) > 0.3  # ceiling 0.8 s: spread over [0.4, 0.8]
    assert len({round(w, 3) for w in fifth}) > 100


def test_the_extremes_of_the_draw() -> None:
    assert list(itertools.islice(registration_waits(rng=lambda: 0.0), 3)) == [0.025, 0.05, 0.1]
    assert list(itertools.islice(registration_waits(rng=lambda: 1.0), 3)) == [0.05, 0.1, 0.2]
