"""Analysis: diversity mathematics, loading runs, tables, figures, reports. It reads what the records
hand it; what it writes (diversity, through `DiversityRecorder`, a hook on the evolution loop) it
writes through them."""

from .generation_diversity import generation_diversity, write_generation_diversity
from .loading import Run, load_run


def build_report(*args, **kwargs):
    """`evopop.analysis.report.build_report` (imported lazily: it needs matplotlib)."""
    from .report import build_report as build

    return build(*args, **kwargs)


__all__ = ["Run", "load_run", "build_report", "generation_diversity", "write_generation_diversity"]
