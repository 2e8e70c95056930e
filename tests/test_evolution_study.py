"""examples/evolution_study.py keeps working: tiny runs of its arms, and the table it writes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def study_module():
    spec = importlib.util.spec_from_file_location("evolution_study", ROOT / "examples" / "evolution_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_study_runs_its_arms_from_one_ancestor_and_tabulates_them(tmp_path):
    study = study_module()
    assert (
        study.main(["--tasks", "shapes", "--arms", "paper", "sharp", "recipe", "--smoke", "--out", str(tmp_path)]) == 0
    )
    table = pd.read_csv(tmp_path / "study.csv")
    assert set(table["arm"]) == {"paper", "sharp", "recipe"}
    ancestors = table[table["generation"] == 1]
    assert ancestors["value"].nunique() == 1  # every arm starts from the one loaded ancestor
    paper = table[table["arm"] == "paper"]
    assert {"synthesis", "magnitude", "random", "imp", "imp_rewind"} <= set(paper["kind"])
    assert set(table[table["arm"] == "sharp"]["kind"]) == {"synthesis"}  # lever arms run no baselines
    matched = paper[paper["kind"] != "synthesis"].merge(
        paper[paper["kind"] == "synthesis"], on="generation", suffixes=("", "_lineage")
    )
    assert (matched["synapses"] == matched["synapses_lineage"]).all()  # at the lineage's sparsity
    text = (tmp_path / "study.md").read_text()
    assert "### shapes (selection: val_accuracy; held out: test_accuracy)" in text
    assert "- shapes: recipe >= imp on the selection metric in" in text and "goal: 40x" in text
    again = study.main(["--tasks", "shapes", "--arms", "paper", "--smoke", "--out", str(tmp_path)])  # resumed
    assert again == 0 and set(pd.read_csv(tmp_path / "study.csv")["arm"]) == {"paper"}
