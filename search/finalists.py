"""Which trials may win a search: the rule ``best_config.yaml``, ``search/retrain.py`` and
``search/analyze.py`` share (no Ray import, so the table readers stay light).

A *finalist* ran its full budget, or ASHA let it go on at its last rung below the full budget
(``passed_rungs``, recorded by :class:`search.asha.PersistentASHA`) and the search's end (a time
budget, a stopper, a trial timeout) then cut it: it passed every decision the scheduler makes.
A trial ASHA stopped at a rung is not one.
"""
from __future__ import annotations


def truthy(col):
    """A boolean column of ``trials.parquet`` / ``trials.csv`` as booleans (stored as bools or
    as the strings ``True`` / ``1``)."""
    return col.astype(str).str.lower().isin(["true", "1"])


def finalist(row: dict) -> bool:
    """One table row (a dict) is a finalist (see the module docstring)."""
    return not row["stopped_early"] or bool(row.get("passed_rungs"))


def finalists(df):
    """The finalists of a trials table, as a boolean mask (a table written before the
    ``passed_rungs`` column existed: the full-budget trials).

    Example:
        >>> import pandas as pd
        >>> df = pd.DataFrame({"stopped_early": ["False", "True", "True"],
        ...                    "passed_rungs": [True, False, "True"]})
        >>> finalists(df).tolist(), finalists(df.drop(columns="passed_rungs")).tolist()
        ([True, False, True], [True, False, False])
    """
    out = ~truthy(df["stopped_early"])
    if "passed_rungs" in df.columns:
        out |= truthy(df["passed_rungs"])
    return out
