"""Find a task by built-in name or by import path ``"package.module:factory"``."""

from __future__ import annotations

import importlib
import json
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..synthesis import Architecture, trace_architecture
from .base import Task

BUILTIN = {
    "shapes": "evopop.tasks.classification:shapes",
    "saliency": "evopop.tasks.saliency:saliency",
    "images": "evopop.tasks.images:images",
}


def resolve_factory(target: str, paths: Sequence[str] = ()):
    """The callable named by ``target`` (a built-in name or "module:attribute"); a module not on
    sys.path is looked for in ``paths`` (relative ones from the current folder), then the current folder."""
    path = BUILTIN.get(target, target)
    if ":" not in path:
        raise ValueError(
            f"unknown task {target!r}: use a built-in name ({', '.join(sorted(BUILTIN))}) "
            "or an import path 'package.module:factory'"
        )
    module_name, attr = path.split(":", 1)
    search_in(paths)
    module = import_from(module_name, paths, f"task {target!r}")
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} (task {target!r})")
    if not callable(factory):
        raise ValueError(f"task target {target!r} is not callable")
    return factory


def import_from(module_name: str, paths: Sequence[str], what: str):
    """Import ``module_name`` (`search_in` has put ``paths`` and the current folder on sys.path);
    ValueError saying where it was looked for, or what it failed on."""
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == module_name.split(".")[0]
        if not missing:  # the module is there; it failed, or something it imports is missing
            raise ValueError(f"cannot import module {module_name!r} for {what}: {exc}") from exc
    searched = list(dict.fromkeys([os.path.abspath(p) for p in paths] + [os.getcwd()]))
    raise ValueError(
        f"cannot import module {module_name!r} for {what}: it is on no sys.path entry, and not in "
        f"{', '.join(searched)} (task.paths, the config file's folder, the current folder)"
    )


def search_in(paths: Sequence[str]) -> None:
    """Let code the task names by import path (its model too: ``model: mymodels:net``) be found in
    ``paths`` and the current folder: appended to sys.path, after what is installed."""
    for folder in [os.path.abspath(p) for p in paths] + [os.getcwd()]:
        if os.path.isdir(folder) and folder not in sys.path:
            sys.path.append(folder)
    importlib.invalidate_caches()


def build_task(target: str, args: dict[str, Any] | None = None, paths: Sequence[str] = ()) -> Task:
    factory = resolve_factory(target, paths)
    try:
        task = factory(**(args or {}))
    except TypeError as exc:
        raise ValueError(f"task {target!r} does not accept these args {sorted(args or {})}: {exc}") from exc
    if not isinstance(task, Task):
        raise ValueError(f"task factory {target!r} returned {type(task).__name__}, not an evopop Task")
    return task


@dataclass(frozen=True)
class BuiltTask:
    """A task and its traced network: built once per process (see `built_task`)."""

    task: Task
    arch: Architecture


_BUILT: dict[str, BuiltTask] = {}


def built_task(target: str, args: dict[str, Any] | None = None, paths: Sequence[str] = ()) -> BuiltTask:
    """The task named by ``target`` with ``args``, and its traced architecture, once per process.

    Every part of a process that needs the task (preflight, the in-process trainer, diversity) shares
    one instance, so its data are built and its network is traced once. Tracing runs under a forked
    RNG: asking for a task never changes the caller's random state.
    """
    key = f"{target}\x1f{json.dumps(args or {}, sort_keys=True, default=repr)}"
    if key not in _BUILT:
        task = build_task(target, args, paths)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            # a network that cannot be traced is said once, by the run's plan (`Architecture.note`),
            # not by every process that builds the task
            warnings.filterwarnings("ignore", message=".* cannot be traced")
            arch = trace_architecture(task.build_model(), task.example_input())
        _BUILT[key] = BuiltTask(task, arch)
    return _BUILT[key]
