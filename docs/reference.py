"""Write docs/configuration.md and docs/records.md from the code, so that the references cannot drift.

    python docs/reference.py              # rewrite both files
    python docs/reference.py --check      # exit 1, naming the stale file, when either differs from the code
    python docs/reference.py --docs DIR   # read or write DIR/configuration.md and DIR/records.md instead

Sources: the pydantic models of ``evopop/config.py`` (every key, its type, default, allowed values and
bounds; its meaning from the field's ``description`` or else the ``#`` comment beside or above it in the
source), the record dataclasses and Parquet schemas of ``evopop/records/schema.py`` (the same way), and
the run directory layout in the docstring and constants of ``evopop/records/run.py``. The notes below
fill in only what the code does not say; a note for a key the code no longer has, or for a key whose
source has gained a comment of its own, stops the generator, so that the text keeps one home.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import operator
import re
import sys
import textwrap
import tokenize
import types
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from pydantic import BaseModel  # noqa: E402
from pydantic_core import PydanticUndefined  # noqa: E402

from evopop import config as config_module  # noqa: E402
from evopop.records import run as run_module  # noqa: E402
from evopop.records import schema as schema_module  # noqa: E402

DOCS = Path(__file__).resolve().parent
CONFIGURATION, RECORDS = "configuration.md", "records.md"

# -- hand-written text the code does not hold --------------------------------------------------------------------
CONFIG_INTRO = """\
Every key of a config file, generated from the pydantic models in
[`evopop/config.py`](../evopop/config.py). A config is YAML, validated before anything starts: every bad value
gets one message naming the field and what is allowed, and an unknown key gets a suggestion. Any key can be
overridden on the command line as `dotted.key=value` (the value is parsed as YAML), e.g.
`evopop run configs/quickstart.yaml evolution.generations=6 resources.trainers=4`. A key left out takes its
default; a section set to `null` (where allowed) is off. Checks that span several keys (for instance
`evolution.parents` against `selection`) are in the models' validators; [running.md](running.md#configuration)
explains what the sections do together."""

# Meanings (and allowed values) for keys whose source has neither a description nor a comment.
CONFIG_NOTES = {
    "run.name": "the run's name: run directories are named after it",
    "run.seed": "the run seed: every offspring's genome is a pure function of it, the generation, the lineage "
    "and the offspring's index",
    "task.args": "keyword arguments of the task's factory (`shapes`: `train_size`, `val_size`, `test_size` "
    "(a held-out test set, 0 = none), `image_size`, `num_classes`, `widths`, `hidden`, `seed`)",
    "evolution.environment.c": (
        "C: the environmental factor (`scale`: P(h) = C P(s | w); `budget`, `network`: the expected kept fraction)",
        "(0, 1]",
    ),
    "evolution.environment.mode": "`scale` is the paper's literal model; `budget` solves, per layer, the scale that "
    "keeps an expected fraction C; `network` solves one scale for the whole network",
    "selection.rule": "`best` follows the best lineage, `topk` keeps `k`, `all` keeps every offspring",
    "selection.k": "individuals `topk` keeps",
    "selection.direction": "whether the metric is better high (`max`) or low (`min`); default: the task's",
    "resources.cpus_per_trainer": "CPUs Ray reserves per trainer actor",
    "baselines.enabled": "train the pruning baselines beside each selected offspring",
    "baselines.kinds": "`magnitude` and `random`: the parent pruned in one shot; `imp`, `imp_rewind`: iterative "
    "magnitude pruning along a lineage of its own, trained on from its weights or from the root's initial ones",
    "compaction.enabled": "compact every individual and time it in its trainer",
    "compaction.gpu_batch": "batch size of the GPU latency",
}

RECORDS_INTRO = """\
The columns of every record evopop writes, generated from the record dataclasses and Parquet schemas in
[`evopop/records/schema.py`](../evopop/records/schema.py), and the run directory as
[`evopop/records/run.py`](../evopop/records/run.py) lays it out. How to read them (pandas, DuckDB,
`evopop.load_run`), where they are stored and how failures are recorded: [running.md](running.md#records)."""

# Meanings for columns whose source has no comment, by "Class.field".
RECORD_NOTES = {
    "IndividualRecord.run_id": "the run's id (its directory's name)",
    "IndividualRecord.parent_id": "its parent; with several parents, the first (the family's head, which seeds it)",
    "IndividualRecord.individual_id": "`g<generation>-<index>`; a baseline `<offspring id>-<kind>`",
    "IndividualRecord.offspring_index": "the offspring's index under its parent",
    "IndividualRecord.train_seed": "its training seed",
    "IndividualRecord.env_mode": "the environment's mode (`scale`, `budget`, `network`)",
    "IndividualRecord.synapses": "living synapses, as the paper counts them (the forward cascade)",
    "IndividualRecord.parent_synapses": "the parent's living synapses",
    "IndividualRecord.neurons": "living neurons",
    "IndividualRecord.params": "living parameters",
    "IndividualRecord.macs": "synaptic multiply-accumulates per sample (nominal: masked, not compacted)",
    "IndividualRecord.dense_macs": "the same, of the dense network",
    "IndividualRecord.ancestor_effective_synapses": "effective synapses of the generation-1 ancestor",
    "IndividualRecord.effective_neurons": "living neurons that can still reach the output",
    "IndividualRecord.effective_macs": "MACs per sample of the effective genome",
    "IndividualRecord.compact_macs": "MACs per sample of the compacted network",
    "IndividualRecord.compact_neurons": "neurons of the compacted network",
    "IndividualRecord.latency_cpu_b32_ms": "the same at batch 32 (the trainer's threads)",
    "IndividualRecord.train_seconds": "training time",
    "IndividualRecord.samples_per_second": "training throughput",
    "IndividualRecord.node_id": "the Ray node it ran on",
    "IndividualRecord.worker_id": "the trainer that ran it",
    "IndividualRecord.attempts": "how many times it ran, over every driver of the run (the infrastructure's "
    "failures are retried; under successive halving, the attempts of its last rung)",
    "IndividualRecord.error": "the error of a failed individual",
    "IndividualRecord.finished_at": "UTC time the record was written",
    "LayerRecord.individual_id": "the individual",
    "LayerRecord.layer": "the synaptic layer's name",
    "LayerRecord.kind": "the layer's type (conv, linear, ...)",
    "LayerRecord.synapses": "living synapses",
    "LayerRecord.dense_synapses": "synapses of the dense layer",
    "LayerRecord.neurons": "living neurons (output channels or units)",
    "LayerRecord.dense_neurons": "neurons of the dense layer",
    "LayerRecord.macs": "living multiply-accumulates per sample",
    "LayerRecord.living_fraction": "synapses / dense_synapses",
    "PromotionRecord.individual_id": "the offspring",
    "PromotionRecord.rung": "the rung decided",
    "PromotionRecord.promoted": "whether it continued to the next rung",
    "SelectionRecord.individual_id": "the individual",
    "SelectionRecord.selected": "whether it became an ancestor of the next generation",
    "DiversityPair.b": "the other individual (a < b)",
    "DiversityPair.parent_b": "b's parent, as parent_a",
    "DiversityPair.dense_synapses": "synapses of the dense scope",
    "DiversitySummary.mean": "the mean of the quantity over the group",
    "DiversitySummary.min": "its smallest value",
    "DiversitySummary.max": "its largest value",
}

# Descriptions for paths the layout in evopop/records/run.py lists without one.
LAYOUT_NOTES = {
    "RUN_DIR/config.yaml": "the resolved config",
}

# The population files' schema metadata (keys from `population_schema`), and what each holds.
METADATA_NOTES = {
    "evopop.schema_version": "the records schema version (`SCHEMA_VERSION`)",
    "evopop.layers": "the synaptic layers' names, in the order of `layer_fractions` (JSON list)",
    "evopop.metrics": "the metric columns (JSON list): how `evopop show` and `load_run` read a run without its task",
    "evopop.selection": "the selection metric and its direction (JSON)",
    "pandas": "makes `pandas.read_parquet` read integer columns as nullable integers (a null `seed` stays exact)",
}

NONE = "—"


# -- source comments ---------------------------------------------------------------------------------------------
def _comments(source: str) -> dict[int, str]:
    """Line number -> the text of the `#` comment on it."""
    out = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            out[token.start[0]] = token.string.lstrip("#").strip()
    return out


def field_comments(cls) -> dict[str, str]:
    """Field name -> its comment in the source: the comment lines right above it, then the one beside it."""
    out: dict[str, str] = {}
    sources = [k for k in cls.__mro__ if k.__module__ not in ("builtins", "pydantic.main")]
    sources += [cls.__fields_from__] if hasattr(cls, "__fields_from__") else []  # a section made from a dataclass
    for klass in reversed(sources):
        try:
            lines, start = inspect.getsourcelines(klass)
        except (OSError, TypeError):
            continue
        source = textwrap.dedent("".join(lines))
        comments = _comments(source)
        text_lines = source.splitlines()
        (node,) = ast.parse(source).body
        previous_end = node.lineno
        for statement in node.body:
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                above, line = [], statement.lineno - 1
                while line > previous_end and text_lines[line - 1].strip().startswith("#"):
                    above.insert(0, comments[line])
                    line -= 1
                beside = [comments[n] for n in range(statement.lineno, statement.end_lineno + 1) if n in comments]
                text = " ".join(above + beside).strip()
                if text:
                    out[statement.target.id] = text
            previous_end = statement.end_lineno
    return out


def docstring(obj) -> str:
    text = inspect.getdoc(obj) or ""
    return " ".join(text.split())


# -- formatting --------------------------------------------------------------------------------------------------
def cell(text: str) -> str:
    """One table cell: on one line, its pipes escaped, and outside code spans its `<` (not an HTML tag) and `*`."""
    parts = " ".join(str(text).split()).replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
    return "`".join(parts) or NONE


def paragraph(text: str) -> list[str]:
    return textwrap.wrap(" ".join(text.split()), 116, break_long_words=False, break_on_hyphens=False)


def constants(text: str) -> str:
    """A comment's constants of evopop/records/schema.py (OK, EVOLVED_KINDS) with their values."""

    def value(match: re.Match) -> str:
        found = getattr(schema_module, match[0], None)
        if isinstance(found, str):
            return code(found)
        if isinstance(found, tuple) and all(isinstance(v, str) for v in found):
            return f"{match[0]} ({', '.join(code(v) for v in found)})"
        return match[0]

    return re.sub(r"\b[A-Z][A-Z_]+\b", value, text)


def code(value: str) -> str:
    return f"`{value}`"


def yaml_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{yaml_value(k)}: {yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, int) and value >= 2**20 and value & (value - 1) == 0:
        return f"2**{value.bit_length() - 1}"
    return str(value)


def is_section(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def unwrap_optional(annotation):
    """(the annotation without None, whether None is allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        inner = args[0] if len(args) == 1 else functools.reduce(operator.or_, args)
        return inner, optional
    return annotation, False


def type_name(annotation) -> str:
    annotation, optional = unwrap_optional(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if is_section(annotation):
        name = "section"
    elif origin is typing.Literal:
        name = " or ".join(sorted({type(a).__name__ for a in args}))
    elif origin is dict:
        name = f"map {type_name(args[0])} → {type_name(args[1])}"
    elif origin in (list, tuple):
        name = f"list of {type_name(args[0])}"
    elif annotation is typing.Any:
        name = "any"
    elif isinstance(annotation, type):
        name = annotation.__name__
    else:
        name = str(annotation)
    return f"{name} or null" if optional else name


def allowed(field) -> str:
    annotation, _ = unwrap_optional(field.annotation)
    while typing.get_origin(annotation) in (list, tuple):
        annotation = typing.get_args(annotation)[0]
    parts = []
    if typing.get_origin(annotation) is typing.Literal:
        parts.append(", ".join(code(yaml_value(a)) for a in typing.get_args(annotation)))
    for constraint in field.metadata:
        for attribute, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(constraint, attribute, None) is not None:
                parts.append(f"{sign} {yaml_value(getattr(constraint, attribute))}")
        if getattr(constraint, "max_length", None) is not None:
            parts.append(f"at most {constraint.max_length} characters")
        if getattr(constraint, "pattern", None) is not None:
            parts.append(f"matches {code(constraint.pattern)}")
    return ", ".join(parts)


def default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return "" if isinstance(value, BaseModel) else code(yaml_value(value))
    if field.default is PydanticUndefined:
        return "required"
    return code(yaml_value(field.default))


def anchor(path: str) -> str:
    """GitHub's anchor for a heading of plain words and dots."""
    return re.sub(r"[^a-z0-9_ -]", "", path.lower()).replace(" ", "-")


# -- configuration.md ----------------------------------------------------------------------------------------
def configuration() -> str:
    used: set[str] = set()
    sections: list[tuple[str, type[BaseModel]]] = []
    shown: dict[type, str] = {}

    def walk(prefix: str, model: type[BaseModel]) -> None:
        sections.append((prefix, model))
        for name, field in model.model_fields.items():
            inner, _ = unwrap_optional(field.annotation)
            if is_section(inner):
                walk(f"{prefix}.{name}", inner)

    for name, field in config_module.Config.model_fields.items():
        walk(name, unwrap_optional(field.annotation)[0])

    out = ["<!-- generated by docs/reference.py from evopop/config.py; do not edit -->", "", "# Configuration", ""]
    out += [CONFIG_INTRO, ""]
    out += paragraph("Sections: " + ", ".join(f"[{p}](#{anchor(p)})" for p, _ in sections) + ".") + [""]
    for prefix, model in sections:
        out += [f"## {prefix}", ""]
        if model in shown:
            other = shown[model]
            out += [f"The same keys as [{other}](#{anchor(other)}), under `{prefix}`.", ""]
            continue
        shown[model] = prefix
        if model.__doc__ and docstring(model):
            out += paragraph(docstring(model)) + [""]
        comments = field_comments(model)
        out += ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        for name, field in model.model_fields.items():
            key = f"{prefix}.{name}"
            meaning = field.description or comments.get(name, "")
            extra_allowed = ""
            note = CONFIG_NOTES.get(key)
            if note is not None:
                used.add(key)
                if meaning:
                    raise SystemExit(f"docs/reference.py: CONFIG_NOTES[{key!r}] repeats what evopop/config.py says")
                meaning, extra_allowed = note if isinstance(note, tuple) else (note, "")
            inner, _ = unwrap_optional(field.annotation)
            if is_section(inner):
                meaning = f"{meaning} ([keys](#{anchor(key)}))".strip()
            kind = code(type_name(field.annotation))
            row = [code(key), kind, default(field), allowed(field) or extra_allowed, meaning]
            out.append("| " + " | ".join(cell(c) for c in row) + " |")
        out.append("")
    stale = sorted(set(CONFIG_NOTES) - used)
    if stale:
        raise SystemExit(f"docs/reference.py: CONFIG_NOTES names keys the config no longer has: {stale}")
    return "\n".join(out)


# -- records.md ----------------------------------------------------------------------------------------------
def record_classes() -> list[type]:
    found = []
    for _, cls in inspect.getmembers(schema_module, dataclasses.is_dataclass):
        if cls.__module__ == schema_module.__name__ and schema_module.arrow_fields(cls):
            found.append(cls)
    return sorted(found, key=lambda c: inspect.getsourcelines(c)[1])


def dataset_of(cls) -> str:
    match = re.search(r"RUN_DIR/(\w+)", cls.__doc__ or "")
    if match is None:
        raise SystemExit(f"docs/reference.py: {cls.__name__}'s docstring names no RUN_DIR/<dataset>")
    return match.group(1)


def layout() -> tuple[list[tuple[str, str]], str]:
    """The run directory as evopop/records/run.py's docstring lays it out, checked against its constants."""
    doc = inspect.getdoc(run_module) or ""
    rows = [(m[1], m[2]) for m in re.finditer(r"^[ \t]*(RUN_DIR/\S+)[ \t]*(.*)$", doc, re.M)]
    paths = [p for p, _ in rows]
    tree = ast.parse(inspect.getsource(run_module))
    for node in tree.body:
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            for name in (t.id for t in ast.walk(target) if isinstance(t, ast.Name)):
                value = getattr(run_module, name, None)
                if name.isupper() and isinstance(value, str):
                    if not any(p == f"RUN_DIR/{value}" or p.startswith(f"RUN_DIR/{value}/") for p in paths):
                        raise SystemExit(
                            f"docs/reference.py: evopop/records/run.py defines {name} = {value!r}, "
                            f"but its docstring's layout does not list RUN_DIR/{value}"
                        )
    described = []
    for path, what in rows:
        note = LAYOUT_NOTES.get(path)
        if note is not None and what:
            raise SystemExit(f"docs/reference.py: LAYOUT_NOTES[{path!r}] repeats what evopop/records/run.py says")
        described.append((path, what or note or ""))
    stale = sorted(set(LAYOUT_NOTES) - set(paths))
    if stale:
        raise SystemExit(f"docs/reference.py: LAYOUT_NOTES names paths the layout no longer has: {stale}")
    prose = doc.split("\n\n", 2)[-1].replace("This module", "`evopop/records/run.py`")
    return described, prose


def records() -> str:
    used: set[str] = set()
    rows, prose = layout()
    out = [
        "<!-- generated by docs/reference.py from evopop/records/schema.py and evopop/records/run.py; do not edit -->",
        "",
        "# Records",
        "",
        RECORDS_INTRO,
        "",
        "## The run directory",
        "",
        "| path | what |",
        "|---|---|",
    ]
    out += [f"| {cell(code(path))} | {cell(what)} |" for path, what in rows]
    out += [""] + paragraph(prose) + [""]
    for text in (inspect.getdoc(schema_module) or "").split("\n\n")[1:]:
        out += paragraph(text) + [""]
    partition = schema_module.PARTITIONING.field("generation").type
    out += [f"Records schema version {schema_module.SCHEMA_VERSION}; `generation` reads back as `{partition}`.", ""]

    for cls in record_classes():
        dataset = dataset_of(cls)
        out += [f"## {dataset}", ""] + paragraph(f"`{cls.__name__}`: {docstring(cls)}") + [""]
        comments = field_comments(cls)
        if cls is schema_module.IndividualRecord:
            metric = "<set>_<metric>"
            schema = schema_module.population_schema([metric], [], ("metric", "max"))
            names = {f.name for f in dataclasses.fields(cls)}
            types_ = {f.name: f.type for f in dataclasses.fields(cls)}
            columns = [(n if n in names else "metrics", n, schema.field(n).type) for n in schema.names]
        else:
            types_ = {f.name: f.type for f in dataclasses.fields(cls)}
            columns = [(n, n, t) for n, t in schema_module.arrow_fields(cls)]
        out += ["| column | type | meaning |", "|---|---|---|"]
        for field_name, column, arrow_type in columns:
            meaning = comments.get(field_name, "")
            note = RECORD_NOTES.get(f"{cls.__name__}.{field_name}")
            if note is not None:
                used.add(f"{cls.__name__}.{field_name}")
                if meaning:
                    raise SystemExit(
                        f"docs/reference.py: RECORD_NOTES[{cls.__name__}.{field_name}] repeats its comment"
                    )
                meaning = note
            meaning = constants(meaning)
            nullable = ", nullable" if "None" in str(types_.get(field_name, "")) else ""
            if field_name == "metrics":
                meaning = f"every metric of the task on every evaluation set, e.g. `val_accuracy` ({meaning})"
            out.append(f"| {cell(code(column))} | {cell(code(str(arrow_type)) + nullable)} | {cell(meaning)} |")
        out.append("")
        if cls is schema_module.IndividualRecord:
            metadata = schema_module.population_schema([], [], ("metric", "max")).metadata
            keys = [k.decode() for k in metadata]
            missing = sorted(set(keys) ^ set(METADATA_NOTES))
            if missing:
                raise SystemExit(f"docs/reference.py: METADATA_NOTES and the population metadata differ: {missing}")
            out += ["The population files' schema metadata:", "", "| key | holds |", "|---|---|"]
            out += [f"| {cell(code(k))} | {cell(METADATA_NOTES[k])} |" for k in keys]
            out.append("")
    stale = sorted(set(RECORD_NOTES) - used)
    if stale:
        raise SystemExit(f"docs/reference.py: RECORD_NOTES names columns the records no longer have: {stale}")
    return "\n".join(out)


# -- command line --------------------------------------------------------------------------------------------
def generate() -> dict[str, str]:
    return {CONFIGURATION: configuration(), RECORDS: records()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a file differs from what the code gives")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the folder of the two files (default: docs/)")
    args = parser.parse_args(argv)
    stale = []
    for name, text in generate().items():
        path = args.docs / name
        current = path.read_text() if path.is_file() else None
        if current == text:
            continue
        if args.check:
            stale.append(path)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    for path in stale:
        print(f"{path} is stale: it differs from what the code gives; run `python docs/reference.py`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
