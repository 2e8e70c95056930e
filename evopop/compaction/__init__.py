"""Physically smaller networks: compaction of an individual, its measured latency, and its export."""

from .compact import Compacted, CompactionError, compact, kept_neurons
from .latency import latency_ms

__all__ = ["Compacted", "CompactionError", "compact", "kept_neurons", "latency_ms"]
