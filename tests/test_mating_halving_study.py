"""examples/mating_halving_study.py keeps working: tiny runs of its arms, and the table it writes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_study_compares_parents_and_halving_from_one_ancestor(ray_cluster, tmp_path):
    spec = importlib.util.spec_from_file_location("mating_halving_study", ROOT / "examples" / "mating_halving_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    assert study.main(["--arms", "parents=1", "parents=2", "full", "halving", "--smoke", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "study.csv")
    assert set(table["arm"]) == {"parents=1", "parents=2", "full", "halving"}
    assert table[table["generation"] == 1]["val_accuracy"].nunique() == 1, "one ancestor for every arm"
    g3 = table[table["generation"] == 3].set_index("arm")
    assert g3.loc["parents=2", "parents"] == 2 and g3.loc["parents=1", "parents"] == 1
    # the compute each spent: 8 offspring halved over rungs of 1 and 2 epochs (8 + 4), 4 trained fully (4 x 2)
    assert g3.loc["halving", "epochs"] == 12 and g3.loc["full", "epochs"] == 8
    assert "**halving**" in (tmp_path / "study.md").read_text()
