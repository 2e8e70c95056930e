"""Analysis: tables, diversity of offspring, loading runs, reports. Reads records; never writes them,
except diversity, which the driver records after each generation."""
from .diversity import generation_diversity, write_generation_diversity
from .loading import Run, load_run


def build_report(*args, **kwargs):
    """`evopop.analysis.report.build_report` (imported lazily: it needs matplotlib)."""
    from .report import build_report as build

    return build(*args, **kwargs)


__all__ = ["Run", "load_run", "build_report", "generation_diversity", "write_generation_diversity"]
