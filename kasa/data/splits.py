"""Small helpers shared by the evaluators."""

from __future__ import annotations

import hashlib
from typing import Callable, Hashable, Iterable, Sequence, TypeVar

T = TypeVar("T")

SPLITS = ("train", "validation", "test")


def stable_hash(text: str, seed: int = 0) -> int:
    """A process-independent 64-bit hash (Python's ``hash`` is salted per process)."""
    digest = hashlib.sha256(f"{seed}\x00{text}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def split_by_key(
    items: Iterable[T],
    key: Callable[[T], str],
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    names: Sequence[str] = SPLITS,
    seed: int = 0,
) -> dict[str, list[T]]:
    """Deterministically split ``items`` so that all items sharing a key land in the same split.

    Keys are ordered by a seeded SHA-256 hash (independent of input order and of the Python process)
    and cut by cumulative ``fractions`` of the number of distinct keys; items keep their input order
    within a split.
    """
    if len(fractions) != len(names):
        raise ValueError(f"fractions {tuple(fractions)} and split names {tuple(names)} differ in length")
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {tuple(fractions)}")
    items = list(items)
    keys: dict[Hashable, None] = {}
    for item in items:
        keys.setdefault(key(item), None)
    ordered = sorted(keys, key=lambda k: (stable_hash(str(k), seed), str(k)))
    n = len(ordered)
    assignment: dict[Hashable, str] = {}
    start = 0
    cumulative = 0.0
    for i, (name, frac) in enumerate(zip(names, fractions)):
        cumulative += frac
        end = n if i == len(names) - 1 else int(round(cumulative * n))
        for k in ordered[start:end]:
            assignment[k] = name
        start = end
    out: dict[str, list[T]] = {name: [] for name in names}
    for item in items:
        out[assignment[key(item)]].append(item)
    return out
