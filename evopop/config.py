"""Run configuration: YAML validated into typed, frozen objects before any work starts.

Every bad value gets one clear message naming the field and what is allowed; unknown keys are
rejected with a suggestion. Overrides come as ``dotted.key=value`` (values parsed as YAML).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from .records.storage import is_uri
from .synthesis.baselines import KINDS as BASELINE_KINDS
from .synthesis.environment import MAX_SHARPNESS, MODES, check_factor
from .training.loop import Recipe

SELECTION_RULES = ("best", "topk", "all")  # see evopop.engine.policy.selection


class ConfigError(ValueError):
    """A configuration problem, reported before Ray starts or data loads (exit code 2)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class RunSection(_Section):
    name: str = Field("evopop", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=80)
    seed: int = Field(0, ge=0, lt=2**62)


class TaskSection(_Section):
    name: str = "shapes"  # a built-in task, or an import path "package.module:factory"
    args: dict[str, Any] = Field(default_factory=dict)
    # folders an import-path task is looked for in (after sys.path, before the current folder); a config
    # file read from disk adds its own folder, relative to the current one where it is inside it
    paths: list[str] = Field(default_factory=list)


class _RecipeSection(_Section):
    def recipe(self, epochs: int | None = None) -> Recipe:
        """The training recipe of this section, for ``epochs`` (default: its own)."""
        values = self.model_dump()
        return Recipe(**{**values, "epochs": values["epochs"] if epochs is None else epochs})


def _section_of(recipe: type, name: str) -> type[_RecipeSection]:
    """A config section whose keys, types, bounds and defaults are the fields of the dataclass
    ``recipe``: they are defined once, where the training reads them."""
    hints = typing.get_type_hints(recipe, include_extras=True)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(recipe)}
    assert all(default is not dataclasses.MISSING for _, default in fields.values()), "every key needs a default"
    section = create_model(name, __base__=_RecipeSection, __module__=__name__, __doc__=recipe.__doc__, **fields)
    section.__fields_from__ = recipe  # where the fields' comments are (docs/reference.py reads them)
    return section


TrainSection = _section_of(Recipe, "TrainSection")  # evopop.training.loop.Recipe's fields


class AncestorSection(_Section):
    checkpoint: str | None = None  # an evopop checkpoint or a plain state_dict (.pt): no training
    epochs: int | None = Field(None, ge=1)  # epochs to train the ancestor; default train.epochs

    @field_validator("checkpoint")
    @classmethod
    def _exists(cls, value):
        if value is not None and not is_uri(value) and not Path(value).is_file():
            raise ValueError(f"file not found: {value}")
        return value


class AdaptSection(_Section):
    """C adapted per lineage to its observed loss (`evopop.engine.policy.adaptation`); off when absent."""

    max_drop: float = Field(gt=0, lt=1)  # the relative loss of the selection metric per generation to stay under
    factor: float = Field(1.5, gt=1, le=10)  # how fast the pressure -ln C grows and backs off
    min_c: float = Field(0.05, gt=0, lt=1)  # the harshest environment it may reach


class EnvironmentSection(_Section):
    c: float = 0.4
    mode: Literal[MODES] = "scale"
    layers: dict[str, float] = Field(default_factory=dict)  # glob pattern on layer names -> C
    frozen: list[str] = Field(default_factory=list)  # glob patterns of layers that never mutate
    schedule: dict[int, float] = Field(default_factory=dict)  # generation -> C from then on
    # k in P(s | w) = exp(k (|w| / Z - 1)): how much likelier strong synapses (clusters) survive than weak
    # ones (e^k times); 1 is the paper's model, larger moves synthesis towards magnitude pruning
    sharpness: float = Field(1.0, gt=0, le=MAX_SHARPNESS)
    # C follows each lineage's loss (the synapses' environment only; layers with a C of their own keep it)
    adapt: AdaptSection | None = None
    # clusters only: surviving channels per layer rounded (stochastically) to a multiple of this, which
    # most kernels run faster on than odd counts
    multiple: int = Field(1, ge=1, le=1024)

    @model_validator(mode="after")
    def _adapt_or_schedule(self):
        if self.adapt is None:
            return self
        if self.schedule:
            raise ValueError("adapt and schedule both set C per generation: keep one of them")
        if self.c >= 1:
            raise ValueError("adapt needs c below 1: at c = 1 there is no pressure -ln C to adapt")
        if self.adapt.min_c > self.c:
            raise ValueError(f"adapt.min_c ({self.adapt.min_c}) must not exceed c ({self.c}): it bounds C from below")
        return self

    @field_validator("c")
    @classmethod
    def _c(cls, v):
        return check_factor(v, "C")

    @field_validator("layers")
    @classmethod
    def _layers(cls, v):
        for pattern, c in v.items():
            check_factor(c, f"C of layers {pattern!r}")
        return v

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v):
        for generation, c in v.items():
            if generation < 2:
                raise ValueError(f"schedule generations start at 2 (the first offspring), got {generation}")
            check_factor(c, f"C of generation {generation}")
        return v


ENCODINGS = ("synapse", "cluster")


class StopSection(_Section):
    """When the run ends before ``evolution.generations``, judged on the followed lineage (the best
    selected individual) after each generation's selection. Both off by default (the paper's run)."""

    # the lineage's metric fell more than this fraction below the ancestor's (0.03: a 3 % relative loss)
    max_drop: float | None = Field(None, gt=0)
    efficiency: float | None = Field(None, gt=1)  # the lineage reached this many times fewer synapses
    metric: str | None = None  # "<eval set>_<metric>" judged by max_drop; default: the selection metric
    # of that metric; default: the selection's for the selection metric, else min for *_loss / *_mae, max otherwise
    direction: Literal["max", "min"] | None = None


class DistillSection(_Section):
    """Heredity of function: every individual with a parent also learns its parent's outputs
    (`evopop.training.loop.Distillation`). weight 0 (the default) is the paper's training."""

    weight: float = Field(0.0, ge=0, lt=1)  # of the distillation loss; the task's loss gets 1 - weight
    temperature: float = Field(2.0, gt=0)  # softens both outputs before they are compared


class EvolutionSection(_Section):
    generations: int = Field(4, ge=1)  # generation 1 is the ancestor, as in the paper's table
    offspring: int = Field(4, ge=1)  # per ancestor
    # synapse: the paper's encoding; cluster: whole filters / units survive first (evopop.synthesis.clusters)
    encoding: Literal[ENCODINGS] = "synapse"
    # F_s(E): synapses; with encoding: cluster and none given, budget 1.0 (every synapse of a surviving cluster)
    environment: EnvironmentSection = Field(default_factory=EnvironmentSection)
    clusters: EnvironmentSection = Field(default_factory=EnvironmentSection)  # F_c(E): clusters (encoding: cluster)
    normalizer: Literal["layer", "global"] = "layer"  # Z: max |w| of the layer's or the network's living synapses
    init: Literal["inherit", "reinit"] = "inherit"  # offspring start from the parent's surviving weights, or fresh
    epochs: int | None = Field(None, ge=1)  # epochs per offspring; default train.epochs
    stop: StopSection = Field(default_factory=StopSection)  # end the run early (see StopSection)
    distill: DistillSection = Field(default_factory=DistillSection)  # learn the parent's outputs too
    # m: every offspring from generation 3 on is synthesized from m selected parents (evopop.synthesis.mating)
    parents: int = Field(1, ge=1, le=16)
    # the layers of the task's head (the images task's classifier: Task.head_parameters) never mutate: the paper
    # keeps the output layer's meaning; false: they evolve as any other layer
    protect_head: bool = True

    @model_validator(mode="after")
    def _distillation_needs_a_parent(self):
        if self.distill.weight > 0 and self.generations < 2:
            raise ValueError(
                "distill.weight is set, but with generations: 1 no individual has a parent to learn from: "
                "set generations to 2 or more, or remove distill"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _clusters_alone_keep_the_synapses(cls, data):
        """With ``encoding: cluster`` and no ``environment`` given, the synapse level keeps every synapse
        of a surviving cluster (budget 1.0): who sets the clusters alone asks for that many, not for the
        default synapse environment on top of them (18.9x fewer synapses where ~2x was asked)."""
        if isinstance(data, dict) and data.get("encoding") == "cluster" and "environment" not in data:
            return {**data, "environment": {"c": 1.0, "mode": "budget"}}
        return data

    @model_validator(mode="after")
    def _clusters_do_not_adapt(self):
        if self.clusters.adapt is not None:
            raise ValueError(
                "clusters.adapt is not supported: C adapts for the synapses' environment only "
                "(evolution.environment.adapt)"
            )
        return self

    @model_validator(mode="after")
    def _multiples_are_for_clusters(self):
        if self.environment.multiple != 1:
            raise ValueError(
                "environment.multiple: channel multiples round the surviving clusters; set clusters.multiple "
                "(with encoding: cluster) instead"
            )
        return self

    @model_validator(mode="after")
    def _clusters_need_their_encoding(self):
        if self.encoding != "cluster" and self.clusters != EnvironmentSection():
            raise ValueError(
                "clusters is set, but encoding is 'synapse', which has no clusters: set encoding: cluster, "
                "or remove clusters"
            )
        return self


class HalvingSection(_Section):
    """Successive halving of each generation's offspring (`evopop.engine.policy.halving`): all train to
    ``min_epochs``, the best 1/``eta`` by the selection metric train on to ``eta`` times as many
    epochs, and so on to the full epochs; the others stop early (recorded ``stopped``)."""

    eta: int = Field(2, ge=2)  # 1/eta of a rung's offspring continue to the next
    min_epochs: int = Field(1, ge=1)  # the first rung's epochs


LATENCIES = ("cpu_b1", "cpu_b32", "gpu")


class LatencySection(_Section):
    """Selection on the compacted networks' measured latency (`evopop.engine.policy.selection.LatencyRule`)."""

    measure: Literal[LATENCIES] = "cpu_b32"  # which of the latencies compaction measures
    budget: float | None = Field(None, gt=0)  # within this fraction of the root ancestor's latency
    pareto: bool = False  # or: non-dominated sorting on (metric, latency)

    @model_validator(mode="after")
    def _one_rule(self):
        if (self.budget is None) == (not self.pareto):
            raise ValueError("set either budget (a fraction of the ancestor's latency) or pareto: true")
        return self


class SelectionSection(_Section):
    rule: Literal[SELECTION_RULES] = "best"
    k: int = Field(1, ge=1)
    metric: str | None = None  # "<eval set>_<metric>"; default: the task's
    direction: Literal["max", "min"] | None = None
    halving: HalvingSection | None = None  # off: every offspring trains for the full epochs
    latency: LatencySection | None = None  # off: the metric alone decides

    @property
    def candidates_needed(self) -> int:
        """How many candidates the rule needs to choose from to select all it selects: k for topk,
        else 1 (successive halving never keeps fewer)."""
        return self.k if self.rule == "topk" else 1

    @model_validator(mode="after")
    def _halving_needs_a_choice(self):
        if self.halving is not None and self.rule == "all":
            raise ValueError("halving stops offspring early, but rule 'all' selects every offspring: use best or topk")
        return self


class ResourcesSection(_Section):
    executor: Literal["ray", "local"] = "ray"  # local: in this process, one individual at a time (no Ray)
    trainers: int = Field(2, ge=1)  # concurrent trainer actors
    cpus_per_trainer: float = Field(1.0, gt=0)
    gpus_per_trainer: float = Field(0.0, ge=0)  # fractions pack several small offspring on one GPU
    max_retries: int = Field(2, ge=0)  # re-runs of an individual the infrastructure failed (see engine.failures)
    # an individual the infrastructure still failed after its retries: stop before its generation is
    # decided (`evopop resume` runs it again), or continue and decide the generation without it
    on_infrastructure_failure: Literal["stop", "continue"] = "stop"
    # seconds one individual may take on its trainer; past it the trainer is killed and the individual retried
    timeout_s: float = Field(21600.0, gt=0)
    # seconds to wait, on a cluster that may add nodes, for a node that can hold a trainer; 0: refuse at once
    wait_for_nodes_s: float = Field(600.0, ge=0)
    torch_threads: int | None = Field(None, ge=1)  # intra-op threads per trainer; default cpus_per_trainer
    custom: dict[str, float] = Field(default_factory=dict)  # custom Ray resources per trainer, e.g. {"A100": 1}

    @field_validator("custom")
    @classmethod
    def _custom(cls, v):
        for name, amount in v.items():
            if not amount > 0:
                raise ValueError(f"custom resource {name!r} must be > 0, got {amount}")
        return v

    @field_validator("gpus_per_trainer")
    @classmethod
    def _gpus(cls, v):
        if v > 1 and v != int(v):
            raise ValueError(f"gpus_per_trainer above 1 must be a whole number, got {v}")
        return v


class DiversitySection(_Section):
    enabled: bool = True  # record sibling diversity after every generation (RUN_DIR/diversity/)
    functional_batch: int = Field(32, ge=0)  # held-out inputs for prediction disagreement; 0: masks only


class BaselinesSection(_Section):
    """For each selected offspring, networks pruned to its per-layer synapse counts and trained with
    the same recipe and seed, rows of their own kind: its parent by magnitude and at random (one
    shot), and iterative magnitude pruning along a lineage of its own (imp, imp_rewind; see
    `evopop.synthesis.baselines`)."""

    enabled: bool = False
    kinds: list[Literal[BASELINE_KINDS]] = Field(default_factory=lambda: list(BASELINE_KINDS))


class CompactionSection(_Section):
    """Every individual is compacted (dead neurons removed) after evaluation, and its compacted
    network's latency measured: on CPU at batch 1 and 32, and at ``gpu_batch`` on the trainer's GPU."""

    enabled: bool = True
    gpu_batch: int = Field(64, ge=1)
    repeats: int = Field(10, ge=1)  # timed forward passes per batch size; the fastest is recorded
    seconds: float = Field(5.0, gt=0)  # at most this long per batch size (at least one pass is timed)


class TrackingSection(_Section):
    """Where a run is mirrored as it goes (`evopop.analysis.tracking`), besides its own Parquet records:
    TensorBoard event files and an MLflow tracking store, each an optional extra."""

    tensorboard: bool | str = False  # true: RUN_DIR/tensorboard (a local run directory); or a local folder
    mlflow: str | None = (
        None  # an MLflow tracking URI: a local store (sqlite:///mlflow.db) or a server (http://host:5000)
    )
    experiment: str | None = None  # the MLflow experiment; default: run.name


class StorageSection(_Section):
    path: str = "runs"  # where run directories are created (local path; URIs via pyarrow.fs)
    # the run lock's lease: renewed every quarter of it; a new driver takes over a lock not renewed for this long
    lock_lease_s: float = Field(60.0, ge=2, le=3600)
    # which offspring checkpoints a decided generation keeps: "all", or "lineage": the selected (every
    # ancestor of what comes next) and the best keep_top of each generation; baselines keep theirs
    checkpoints: Literal["all", "lineage"] = "all"
    keep_top: int = Field(1, ge=0)


class Config(_Section):
    run: RunSection = Field(default_factory=RunSection)
    task: TaskSection = Field(default_factory=TaskSection)
    train: TrainSection = Field(default_factory=TrainSection)
    ancestor: AncestorSection = Field(default_factory=AncestorSection)
    evolution: EvolutionSection = Field(default_factory=EvolutionSection)
    selection: SelectionSection = Field(default_factory=SelectionSection)
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    diversity: DiversitySection = Field(default_factory=DiversitySection)
    baselines: BaselinesSection = Field(default_factory=BaselinesSection)
    compaction: CompactionSection = Field(default_factory=CompactionSection)
    storage: StorageSection = Field(default_factory=StorageSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)

    @model_validator(mode="after")
    def _latency_needs_compaction(self):
        if self.selection.latency is not None and not self.compaction.enabled:
            raise ValueError(
                "selection.latency selects on the compacted networks' measured latency: "
                "it needs compaction.enabled: true"
            )
        return self

    @model_validator(mode="after")
    def _parents_can_be_supplied(self):
        m, selection = self.evolution.parents, self.selection
        if m == 1:
            return self
        if self.evolution.generations < 3:
            raise ValueError(
                f"evolution.parents ({m}) mates the selected of generation 2 onwards (generation 1 is one ancestor), "
                f"which needs evolution.generations >= 3, got {self.evolution.generations}"
            )
        # generation 2, the first to supply parents, has evolution.offspring individuals
        supplied = {"best": 1, "topk": min(selection.k, self.evolution.offspring), "all": self.evolution.offspring}
        supplied = supplied[selection.rule]
        if supplied < m:
            how = {
                "best": "selection.rule best selects 1",
                "topk": f"selection.k is {selection.k} and generation 2 has {self.evolution.offspring} offspring",
            }
            raise ValueError(
                f"evolution.parents ({m}) needs at least {m} selected individuals to mate, but "
                f"{how.get(selection.rule, f'evolution.offspring is {self.evolution.offspring}')}: use "
                f"selection.rule topk with k >= {m} (or all with evolution.offspring >= {m})"
            )
        return self

    @model_validator(mode="after")
    def _halving_fits_the_generation(self):
        halving = self.selection.halving
        if halving is None:
            return self
        full = self.offspring_epochs
        if halving.min_epochs >= full:
            raise ValueError(
                f"selection.halving.min_epochs ({halving.min_epochs}) must be below the offspring's epochs "
                f"({full}, evolution.epochs or train.epochs): the first rung would already be the full training"
            )
        kept = self.selection.candidates_needed
        if kept >= self.evolution.offspring:
            raise ValueError(
                f"selection.halving keeps at least the {kept} offspring selection needs, and a generation "
                f"descending from one parent has {self.evolution.offspring} (evolution.offspring): none would stop "
                "early; raise evolution.offspring or remove halving"
            )
        return self

    @property
    def offspring_epochs(self) -> int:
        """The epochs an offspring (and its baselines) trains: evolution.epochs, else train.epochs."""
        return self.evolution.epochs or self.train.epochs

    @property
    def ancestor_epochs(self) -> int:
        """The epochs the root ancestor trains: ancestor.epochs, else train.epochs."""
        return self.ancestor.epochs or self.train.epochs

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# -- loading -------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form dotted.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_config(source: str | Path | dict | None = None, overrides: list[str] | None = None) -> Config:
    """Read YAML (a path, a dict, or None for the defaults), apply overrides, validate."""
    if source is None:
        data: dict = {}
    elif isinstance(source, dict):
        data = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if data is None:  # an empty file is a mistake (a wrong path, an unsaved editor), not "the defaults"
            raise ConfigError(
                f"{path}: the config file is empty; give at least the task (task: {{name: shapes}}), "
                "or start from configs/quickstart.yaml"
            )
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    if not isinstance(source, (dict, type(None))):
        data = with_config_folder(data, Path(source))
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from None


def with_config_folder(data: dict, path: Path) -> dict:
    """``data`` whose import-path task is also looked for next to its config file: the file's folder
    added to ``task.paths``, relative to the current folder where it is inside it (so that it holds on
    a cluster, where ``ray job submit --working-dir .`` copies the current folder)."""
    task = data.get("task")
    if not isinstance(task, dict):
        return data
    model = (task.get("args") or {}).get("model") if isinstance(task.get("args"), dict) else None
    names_code = ":" in str(task.get("name", "")) or (
        isinstance(model, str) and ":" in model and not model.startswith(("torchvision:", "timm:"))
    )
    if not names_code:  # a built-in task with a model by name: nothing to look for
        return data
    folder = path.resolve().parent
    try:
        folder_text = folder.relative_to(Path.cwd().resolve()).as_posix() or "."
    except ValueError:
        folder_text = str(folder)
    paths = list(task.get("paths") or [])
    if folder_text in paths or folder_text == ".":
        return data
    return {**data, "task": {**task, "paths": [*paths, folder_text]}}


def format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown key{_suggestion(err['loc'])}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        plain = isinstance(got, (dict, list)) or got is None or "got" in msg or str(got) in msg
        shown = "" if plain else f" (got {got!r})"
        lines.append(f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}")  # a check across sections names its fields
    return "invalid config:\n  " + "\n  ".join(lines)


def _suggestion(loc: tuple) -> str:
    model: Any = Config
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        if field is None:
            return ""
        model = field.annotation
    if not hasattr(model, "model_fields"):
        return ""
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (allowed: {', '.join(allowed)})"
