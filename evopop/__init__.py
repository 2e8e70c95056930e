"""evopop: population-based, distributed evolutionary synthesis of deep neural networks."""
__version__ = "0.1.0"


def load_run(run_dir: str):
    """The records of a run (running or finished) as pandas DataFrames; see `evopop.analysis.load_run`."""
    from .analysis.loading import load_run as load

    return load(run_dir)


def build_report(run_dir: str, out_dir: str | None = None, **kwargs):
    """Write RUN_DIR/report/index.html with figures; see `evopop.analysis.report.build_report`."""
    from .analysis.report import build_report as build

    return build(run_dir, out_dir, **kwargs)


__all__ = ["load_run", "build_report", "__version__"]
