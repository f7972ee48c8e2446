"""Published results (``monet/data/published.yaml``): the papers' rows, to put beside ours.

The file has one top-level key per paper (``monet`` for the MONET paper's Tables 2-5; other
papers add their own key), then one key per dataset holding a list of tables. Each table names
its columns with our task names (plus ``avg``), the metric (``acc`` or ``f1``), the unit and
the TrainConfig fields a run must match for the rows to be comparable (toy: ``T: 5``; CelebA:
the attribute ``subset``).

Example:
    >>> from monet.config import TrainConfig
    >>> t = tables_for("bp4d", TrainConfig(dataset="bp4d"))[0]
    >>> t.source, t.columns[:2], t.rows["MONET (ours)"][-1]
    ('MONET paper, Table 4', ('AU1', 'AU2'), 64.5)
    >>> tables_for("toy", TrainConfig(T=3)), len(tables_for("toy", TrainConfig(T=5)))
    ([], 1)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PUBLISHED_FILE = Path(__file__).with_name("published.yaml")


@dataclass(frozen=True)
class PublishedTable:
    """One published table (or the block of it for one CelebA subset).

    Attributes:
        paper: the paper's short name (its ``short`` key, else its top-level key).
        table: the paper's table number.
        metric: ``acc``, ``f1``, ...; unit: ``percent`` or ``raw``.
        columns: our task names, then ``avg``.
        rows: row name as printed -> one number per column.
        match: TrainConfig fields the rows assume; note: free text.
    """

    paper: str
    table: object
    metric: str
    unit: str
    columns: tuple
    rows: dict
    match: dict
    note: str = ""

    @property
    def source(self) -> str:
        return f"{self.paper}, Table {self.table}"

    def matches(self, config) -> bool:
        """Whether ``config`` (a TrainConfig or dict) has every field of ``match``."""
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        return all(get(k) == v for k, v in self.match.items())


def load(path=PUBLISHED_FILE) -> dict:
    """The whole file: ``{paper: {"title": ..., "short": ..., dataset: [table dict, ...]}}``."""
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def all_tables(dataset: str, path=PUBLISHED_FILE) -> list:
    """Every published table of ``dataset``, whatever its ``match``."""
    out = []
    for paper, entry in load(path).items():
        if not isinstance(entry, dict):
            continue
        tables = entry.get(dataset) or []
        for t in tables if isinstance(tables, list) else [tables]:
            cols = tuple(t["columns"])
            rows = {str(name): [float(v) for v in vals] for name, vals in t["rows"].items()}
            for name, vals in rows.items():
                if len(vals) != len(cols):
                    raise ValueError(f"{path}: {paper}/{dataset} row {name!r} has {len(vals)} "
                                     f"numbers for {len(cols)} columns")
            out.append(PublishedTable(
                paper=str(entry.get("short") or paper), table=t.get("table"),
                metric=t.get("metric", ""), unit=t.get("unit", "percent"), columns=cols,
                rows=rows, match=dict(t.get("match") or {}), note=t.get("note", "")))
    return out


def tables_for(dataset: str, config, path=PUBLISHED_FILE) -> list:
    """The published tables of ``dataset`` whose ``match`` fields ``config`` has."""
    return [t for t in all_tables(dataset, path) if t.matches(config)]
