"""The one seeding scheme of evopop: every seed is ``derive_seed(*parts)`` of what identifies its use.

A seed is the blake2b hash of the ``repr`` of its parts (joined by a unit separator), cut to 63 bits
so that it fits ``torch.Generator.manual_seed`` and signed 64-bit columns. Why this and not Python's
``hash()``, ``random`` or arithmetic such as ``seed * K + index``:

- stable across processes, machines and Python versions (``hash()`` of a str is salted per process),
  so a run, a Ray worker and a later reanalysis derive the same seeds;
- parts of any type and number, with a leading tag naming the use ("offspring", "shapes", ...), so
  seeds of different uses never collide by construction, and ``(seed, i + 1)`` is unrelated to
  ``(seed + 1, i)`` (which ``seed * K + index`` schemes cannot promise);
- the values are pinned by tests: changing the scheme changes every genome and data item.

Parts are hashed by ``repr``, so pass plain Python values: ``repr(np.int64(3))`` is not ``repr(3)``.
Callers normalise with ``int()`` / ``str()`` (see `offspring_seed`).
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes, machines and Python versions."""
    text = "\x1f".join(repr(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def offspring_seed(run_seed: int, generation: int, ancestor_id: str, offspring_index: int) -> int:
    """Seed of one offspring's synthesis: the same for the same (run seed, generation, ancestor, index)."""
    return derive_seed("offspring", int(run_seed), int(generation), str(ancestor_id), int(offspring_index))
