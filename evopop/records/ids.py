"""Individual ids: which are allowed (they become file names) and how they sort (g2-10 after g2-9)."""

from __future__ import annotations

import re

import pandas as pd

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_individual_id(individual_id: str) -> str:
    """Ids become file names: refuse anything that could escape the run directory."""
    if not _SAFE_ID.match(individual_id) or ".." in individual_id:
        raise ValueError(f"invalid individual id {individual_id!r}: letters, digits, '_', '-', '.' only")
    return individual_id


def natural_key(individual_id: str) -> list:
    """Sort key that puts ids like g2-10 after g2-9."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(individual_id))]


def natural_order(column: pd.Series) -> pd.Series:
    """`natural_key` as a pandas ``sort_values(key=...)``: text columns by natural key, others as they are."""
    if column.dtype == object or str(column.dtype).startswith("string"):
        return column.map(natural_key)
    return column
