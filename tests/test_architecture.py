"""The design's rules that code can check: every engine module is under the Ray contract, and every
package of evopop is a real package (`lint-imports` checks the contracts themselves, in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
RAY_MODULES = {"evopop.engine.ray_executor", "evopop.engine.trainer"}


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_every_engine_module_but_the_ray_ones_is_forbidden_to_reach_ray():
    (ray_contract,) = [c for c in contracts() if c.get("forbidden_modules") == ["ray"]]
    engine = {f"evopop.engine.{p.stem}" for p in (ROOT / "evopop" / "engine").glob("*.py") if p.stem != "__init__"}
    assert engine - RAY_MODULES <= set(ray_contract["source_modules"]), "a new engine module is not checked"
    assert not RAY_MODULES & set(ray_contract["source_modules"])
    assert not ray_contract.get("allow_indirect_imports", False)


def test_every_folder_of_evopop_is_a_package():
    folders = [p for p in (ROOT / "evopop").iterdir() if p.is_dir() and p.name != "__pycache__"]
    assert folders and all((p / "__init__.py").is_file() for p in folders), [p.name for p in folders]
