"""evopop: population-based, distributed evolutionary synthesis of deep neural networks."""

__version__ = "0.1.0"


def load_config(source=None, overrides=None):
    """A validated `evopop.config.Config` from YAML (a path, a dict, or None) and ``dotted.key=value`` overrides."""
    from .config import load_config as load

    return load(source, overrides)


def evolve(config, run_dir: str, **kwargs):
    """Run (or finish) ``config`` in ``run_dir``; returns the population. See `evopop.api.evolve`."""
    from .api import evolve as run

    return run(config, run_dir, **kwargs)


def load_run(run_dir: str):
    """The records of a run (running or finished) as pandas DataFrames; see `evopop.analysis.load_run`."""
    from .analysis.loading import load_run as load

    return load(run_dir)


def build_report(run_dir: str, out_dir: str | None = None, **kwargs):
    """Write RUN_DIR/report/index.html with figures; see `evopop.analysis.report.build_report`."""
    from .analysis.report import build_report as build

    return build(run_dir, out_dir, **kwargs)


__all__ = ["evolve", "load_config", "load_run", "build_report", "__version__"]
