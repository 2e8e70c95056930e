"""The design's rules that code can check: no import circle anywhere in evopop, every room of the
engine under the engine's layer contract, Ray fenced into one package, and every folder of evopop
a real package (`lint-imports` checks the contracts themselves, in CI)."""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "evopop" / "engine"


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def import_circles(graph: grimp.ImportGraph, package: str) -> list[tuple[str, ...]]:
    """Every import circle among ``package``'s modules, as the shortest chain that closes one."""
    circles = set()
    for module in graph.find_descendants(package) | {package}:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith(package):
                chain = graph.find_shortest_chain(importer=imported, imported=module)
                if chain:
                    circles.add(tuple(sorted(set(chain))))
    return sorted(circles)


def test_no_module_of_evopop_is_part_of_an_import_circle():
    graph = grimp.build_graph("evopop", exclude_type_checking_imports=True)
    assert import_circles(graph, "evopop") == []


def test_the_circle_check_finds_a_circle():
    graph = grimp.ImportGraph()
    for module in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(module)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.a")
    graph.add_import(importer="pkg.c", imported="pkg.a")
    assert import_circles(graph, "pkg") == [("pkg.a", "pkg.b")]


def test_every_room_and_module_of_the_engine_is_in_the_engine_layers():
    (rooms,) = [c for c in contracts() if c.get("containers") == ["evopop.engine"]]
    layered = {name.strip() for layer in rooms["layers"] for name in layer.split("|")}
    found = {p.stem for p in ENGINE.glob("*.py") if p.stem != "__init__"}
    found |= {p.name for p in ENGINE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert found == layered, "a new part of the engine is not in a room of the layer contract"
    assert rooms["layers"][0] == "ray", "nothing else in the engine may reach the Ray room"


def test_ray_is_fenced_into_one_package_by_one_rule_each():
    protected = {c["protected_modules"][0]: c["allowed_importers"] for c in contracts() if c["type"] == "protected"}
    assert protected["ray"] == ["evopop.engine.ray"]
    assert protected["evopop.engine.ray"] == ["evopop.api"]
    assert not any(c.get("ignore_imports") for c in contracts()), "an exception hides what the contracts say"


def test_every_folder_of_evopop_is_a_package():
    folders = [p for p in (ROOT / "evopop").rglob("*") if p.is_dir() and p.name != "__pycache__"]
    assert folders and all((p / "__init__.py").is_file() for p in folders), [p.name for p in folders]
