"""Command line: ``evopop run | resume | show``.

    evopop run CONFIG [dotted.key=value ...] [--run-dir DIR]   start a run, print its directory
    evopop resume RUN_DIR [resources.trainers=8 ...]            finish an interrupted run
    evopop show RUN_DIR                                         the population so far
    evopop report RUN_DIR [--out DIR]                           an HTML report with figures
    evopop export RUN_DIR ID --out FILE [--format pt2|onnx]     one individual, compacted, standalone
    evopop inspect MODEL [--input 3,224,224] [--arg k=v ...]    what evopop can remove from a model

Exit codes: 0 done, 1 the evolution stopped (records intact: `evopop resume` goes on), 2 bad config or input.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time

from .config import Config, ConfigError, load_config

EXIT_FAILED, EXIT_CONFIG = 1, 2


def _new_run_dir(config: Config) -> str:
    from .records.storage import join

    stamp = time.strftime("%Y%m%d-%H%M%S")
    return join(config.storage.path, f"{config.run.name}-{stamp}-{secrets.token_hex(2)}")


def _records(run_dir: str):
    """The records of an existing run, or a ConfigError saying there is none."""
    from .records.run import RunRecords

    records = RunRecords(run_dir)
    if not records.exists():
        raise ConfigError(f"{run_dir}: no evopop run here (config.yaml missing)")
    return records


def cmd_run(args) -> int:
    from .engine.plan import drawn_survival, expected_survival, plan_run
    from .records.run import RunRecords

    config = load_config(args.config, args.overrides)
    plan = plan_run(config)  # every check that needs no cluster, before Ray starts
    run_dir = args.run_dir or _new_run_dir(config)
    records = RunRecords(run_dir)
    if records.exists():
        raise ConfigError(f"--run-dir: {run_dir} already holds a run; use 'evopop resume {run_dir}' to finish it")
    print(f"run directory: {run_dir}", flush=True)
    print(f"evolution: {expected_survival(config.evolution)}", flush=True)
    drawn = drawn_survival(config)
    if drawn:
        print(f"evolution: {drawn}", flush=True)
    return _drive(config, run_dir, plan)


def cmd_resume(args) -> int:
    import yaml

    from .engine.plan import plan_run

    config = load_config(yaml.safe_load(_records(args.run_dir).read_config()), args.overrides)
    plan = plan_run(config)
    print(f"resuming: {args.run_dir}", flush=True)
    return _drive(config, args.run_dir, plan)


def _drive(config: Config, run_dir: str, plan) -> int:
    from .analysis.tables import lineage_table, metrics_first
    from .api import evolve
    from .engine.failures import RunStopped
    from .records.locks import RunFencedError, RunLockedError

    try:
        population = evolve(config, run_dir, plan=plan)
    except RunStopped as exc:
        print(f"evolution stopped: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except RunLockedError as exc:
        print(f"evopop: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except RunFencedError as exc:  # another driver took the run over: it carries on, this one stops
        print(f"evopop: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # the run's storage went away (a store down, a volume unmounted)
        print(
            f"evopop: the run's storage failed ({type(exc).__name__}: {str(exc).strip()[:300]}); the records written "
            f"so far are intact: once it is back, `evopop resume {run_dir}` carries on",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print()
    print(lineage_table(population, metrics_first(plan.metric, plan.metric_columns)).to_string(index=False))
    print(f"\nrecords: {run_dir}/population  (evopop show {run_dir})")
    return 0


def cmd_show(args) -> int:
    """The population so far, from the records alone: no task, no data, no cluster."""
    from .analysis.loading import load_run
    from .analysis.tables import lineage_table, population_table

    _records(args.run_dir)
    run = load_run(args.run_dir)
    if run.population.empty:
        print("no individuals recorded yet")
        return 0
    print(population_table(run.population, run.metric).to_string(index=False))
    print("\nfollowed lineage:")
    print(lineage_table(run.population, run.ordered_metrics).to_string(index=False))
    print(f"\n{run.progress()}")
    return 0


def cmd_report(args) -> int:
    from .analysis.report import build_report

    _records(args.run_dir)
    path = build_report(args.run_dir, args.out, compute_missing_diversity=not args.no_diversity)
    print(f"report: {path}")
    return 0


def cmd_export(args) -> int:
    from .analysis.export import ExportError, export_individual

    try:
        exported = export_individual(args.run_dir, args.individual_id, args.out, args.format)
    except ExportError as exc:
        raise ConfigError(str(exc)) from None
    compacted, recorded = exported.metadata["compacted"], exported.metadata["recorded"]
    dense = f" (the dense network: {int(recorded['dense_macs']):,})" if recorded.get("dense_macs") else ""
    print(f"{args.individual_id}: {compacted['params']:,} parameters, {compacted['macs']:,} MACs per sample{dense}")
    print(f"wrote {exported.path} and {exported.metadata_path}")
    return 0


def cmd_inspect(args) -> int:
    import torch

    from .toolkit import inspect, load_model, trace_architecture

    try:
        shape = tuple(int(d) for d in args.input.split(","))
    except ValueError:
        raise ConfigError(f"--input: expected sizes like 3,224,224, got {args.input!r}") from None
    kwargs = {}
    for item in args.arg:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--arg: expected key=value, got {item!r}")
        kwargs[key] = _literal(value)
    try:
        model = load_model(args.model, **kwargs).eval()
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"model: {exc}") from None
    try:
        arch = trace_architecture(model, torch.randn(1, *shape))
    except ValueError as exc:  # no synaptic layers
        raise ConfigError(f"model: {exc}") from None
    print(inspect(arch))
    return 0


def _literal(text: str):
    """``key=value`` values as YAML reads them (numbers, booleans, null), else the text."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evopop", description="Evolutionary synthesis of deep neural networks")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start a run")
    run.add_argument("config", help="YAML config file")
    run.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    run.add_argument("--run-dir", help="run directory (default: <storage.path>/<run.name>-<time>-<id>)")
    run.set_defaults(func=cmd_run)
    resume = sub.add_parser("resume", help="finish an interrupted run")
    resume.add_argument("run_dir")
    resume.add_argument("overrides", nargs="*", help="resources.* / compaction.* overrides (another cluster, say)")
    resume.set_defaults(func=cmd_resume)
    show = sub.add_parser("show", help="print the population of a run")
    show.add_argument("run_dir")
    show.set_defaults(func=cmd_show)
    report = sub.add_parser("report", help="write an HTML report with figures (running or finished runs)")
    report.add_argument("run_dir")
    report.add_argument("--out", help="output directory (default: RUN_DIR/report)")
    report.add_argument(
        "--no-diversity",
        action="store_true",
        help="do not compute missing diversity from checkpoints (faster on big runs)",
    )
    report.set_defaults(func=cmd_report)
    export = sub.add_parser("export", help="write one individual as a compacted torch.export (or ONNX) program")
    export.add_argument("run_dir")
    export.add_argument("individual_id", help="e.g. g4-3 (see evopop show RUN_DIR)")
    export.add_argument("--out", required=True, help="output file (.pt2 or .onnx); metadata goes to OUT.json")
    export.add_argument("--format", choices=("pt2", "onnx"), default="pt2")
    export.set_defaults(func=cmd_export)
    inspect = sub.add_parser("inspect", help="what evopop can remove from a model: groups, pinned layers and why")
    inspect.add_argument("model", help="torchvision:NAME, timm:NAME or package.module:callable (random weights)")
    inspect.add_argument("--input", default="3,224,224", help="one example's shape, without the batch")
    inspect.add_argument("--arg", action="append", default=[], help="key=value for the model's constructor")
    inspect.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"evopop: {exc}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
