"""The experiment folder's own files, refreshed as trials finish (always written atomically).

``<storage>/<name>/`` (a local folder or object storage: :mod:`search.storage`) holds, beside Ray's experiment state and the per-trial folders:

* ``config.yaml``       the resolved flags and search space (written once by the CLI);
* ``trials.parquet``    one row per trial (also ``trials.csv``): trial id, family, state
  (TERMINATED/ERROR/RUNNING/PENDING), ``stopped_early``, ``passed_rungs`` (ASHA let it go on
  at its last rung), ``config/<param>``,
  ``best/<metric>`` and ``last/<metric>``, ``epochs`` used, ``node_ip``/``node_id``,
  ``error``, ``trial_dir``;
* ``best_config.yaml``  the best finalist (:func:`pick_best`): its full TrainConfig, the metric and its
  value, trial id, family, dataset and the monet-tune version; ``best_train_config.yaml`` holds
  the TrainConfig alone (``python -m monet.train --config best_train_config.yaml``).
"""
from __future__ import annotations

import io
import math
import time
from pathlib import Path
from typing import Optional

import pandas as pd
from ray.tune import Callback
from ray.tune.utils import flatten_dict

import monet
from search.finalists import finalist
from search.settings import outside_search
from search.spaces import WARM_START_KEY, trial_to_train_config
from search.storage import ExperimentStore

LAST_KEYS = ("train/loss", "val/loss", "val/mean_acc", "val/mean_f1", "order/dist_to_identity")


def _num(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def trial_row(trial, metric: str, mode: str, family: Optional[str] = None,
              store: Optional[ExperimentStore] = None, scheduler=None) -> dict:
    """One table row from a Ray ``Trial`` (its config, last result and metric analysis).

    Args:
        trial: the Ray ``Trial``.
        metric: the searched metric; mode: ``max`` or ``min``.
        family: the family when the config has none (a one-family search).
        store: the experiment's store; under a URI ``trial_dir`` is the trial's full URI.
        scheduler: the search's scheduler; one with ``passed_rungs`` (ASHA) fills that column.
    """
    last = trial.last_result or {}
    ma = getattr(trial, "metric_analysis", {}) or {}
    cfg = flatten_dict(dict(trial.config or {}), delimiter="/")
    budget = _num(last.get("budget"))
    row = {
        "trial_id": trial.trial_id,
        "family": cfg.get("family") or family,
        "state": trial.status,
        "stopped_early": bool(trial.status == "TERMINATED" and (budget is None or budget < 1 - 1e-9)),
        "passed_rungs": bool(hasattr(scheduler, "passed_rungs") and
                             scheduler.passed_rungs(trial.trial_id)),
        "epochs": _num(last.get("epoch")),
        "rounds": _num(last.get("round")),
        "budget": budget,
        f"best/{metric}": _num((ma.get(metric) or {}).get(mode)),
        f"last/{metric}": _num(last.get(metric)),
    }
    for k in LAST_KEYS:
        if k != metric and k in last:
            row[f"last/{k}"] = _num(last.get(k))
    row["time_total_s"] = _num(last.get("time_total_s"))
    row["node_ip"] = last.get("node_ip")
    row["node_id"] = last.get("node_id")
    row["error"] = _error_line(trial)
    row["trial_dir"] = _trial_path(trial)
    if store is not None and not store.is_local and row["trial_dir"]:
        row["trial_dir"] = store.shown(Path(row["trial_dir"]).name)
    row["warm_start"] = cfg.get(WARM_START_KEY) or None
    for k, v in cfg.items():
        row[f"config/{k}"] = v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
    return row


def _trial_path(trial) -> Optional[str]:
    try:
        return str(trial.path)
    except Exception:
        return None


def _error_line(trial) -> Optional[str]:
    if trial.status != "ERROR":
        return None
    p = getattr(getattr(trial, "run_metadata", None), "error_filename", None)
    # the driver writes the error file in its own copy of the trial folder first (under
    # object storage the only one it can read as a file)
    paths = [Path(d) / (p or "error.txt") for d in (getattr(trial, "local_path", None),
                                                     _trial_path(trial)) if d]
    for path in paths:
        try:
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            break
        except OSError:
            continue
    else:
        return "error"
    for ln in reversed(lines):   # the exception's own line
        if "Error" in ln or "Exception" in ln or "Fault" in ln:
            return ln.strip()[:300]
    return lines[-1].strip()[:300] if lines else "error"


def pick_best(rows: list, metric: str, mode: str) -> Optional[dict]:
    """The best row by its last value of ``metric`` among the finalists (:mod:`search.finalists`; all
    finished trials when there is none).

    Example:
        >>> r = lambda i, v, early, passed=False: {"trial_id": i, "state": "TERMINATED",
        ...     "last/m": v, "stopped_early": early, "passed_rungs": passed}
        >>> rows = [r("full", .80, False), r("rung", .90, True), r("cut", .85, True, True)]
        >>> pick_best(rows, "m", "max")["trial_id"]
        'cut'
    """
    key = f"last/{metric}"
    ok = [r for r in rows if r["state"] == "TERMINATED" and _finite(r.get(key))]
    pool = [r for r in ok if finalist(r)] or ok
    if not pool:
        return None
    sign = -1.0 if mode == "max" else 1.0
    return min(pool, key=lambda r: sign * r[key])


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


class ExperimentFiles:
    """Writes ``trials.parquet``, ``trials.csv``, ``best_config.yaml`` and
    ``best_train_config.yaml`` for one experiment.

    Args:
        exp_dir: the experiment: a local folder, a URI (``s3://...``, ``gs://...``) or an
            :class:`~search.storage.ExperimentStore`.
        metric: the searched metric; mode: ``max`` or ``min``.
        base: the fixed TrainConfig fields; dataset: the dataset name.
        scheduler: the search's scheduler (fills ``passed_rungs``; see :mod:`search.finalists`).
    """

    def __init__(self, exp_dir, metric: str, mode: str, base: dict, dataset: str,
                 scheduler=None):
        self.store = ExperimentStore.of(exp_dir)
        self.scheduler = scheduler
        self.metric, self.mode = metric, mode
        self.base = dict(base)
        self.dataset = dataset

    def write(self, trials) -> Optional[dict]:
        rows = [trial_row(t, self.metric, self.mode, self.base.get("family"), self.store,
                          self.scheduler) for t in trials]
        rows.sort(key=lambda r: (r.get("config/optuna_trial") is None,   # in the study's order
                                 r.get("config/optuna_trial") or 0))
        df = pd.DataFrame(rows)
        if len(df):
            buf = io.BytesIO()
            df.astype({c: "string" for c in df.columns if df[c].dtype == object}).to_parquet(
                buf, index=False)
            self.store.write_bytes("trials.parquet", buf.getvalue())
            self.store.write_text("trials.csv", df.to_csv(index=False))
        best = pick_best(rows, self.metric, self.mode)
        if best is not None:
            trial = next(t for t in trials if t.trial_id == best["trial_id"])
            params = flatten_dict(dict(trial.config), delimiter="/")
            cfg = outside_search(trial_to_train_config(self.base, params).to_dict())
            doc = {
                "metric": self.metric, "mode": self.mode, "value": best[f"last/{self.metric}"],
                "best_round_value": best[f"best/{self.metric}"],
                "trial_id": best["trial_id"], "family": cfg["family"], "dataset": self.dataset,
                "epochs": best["epochs"], "full_budget": not best["stopped_early"],
                "passed_rungs": best["passed_rungs"],
                "trial_dir": best["trial_dir"], "monet_tune_version": monet.__version__,
                "config": cfg,
            }
            self.store.write_yaml("best_config.yaml", doc)
            self.store.write_yaml("best_train_config.yaml", cfg)
            return doc
        return None


class ResultsCallback(Callback):
    """Tune callback (driver side): refresh the experiment files when trials end.

    Rewriting the whole table costs time proportional to the number of trials, so rewriting it
    at every trial end makes a long search quadratic. The tables are rewritten at the end of the
    loop step in which trials ended, if the time since the last write is at least
    ``1 / max_share`` times what the last write took (so writing takes at most ``max_share`` of
    the driver's time); otherwise at the end of a later step, once that time has passed; and
    always at the experiment's end. Small searches (writes of a few milliseconds)
    get a table at every trial end, as before.

    Args:
        files: the experiment's :class:`ExperimentFiles`.
        max_share: the largest share of the driver's time spent writing tables.
        after: an object whose ``pending`` is True while trial ends are not saved in Ray's
            experiment state yet; the tables wait for it (they never say a trial finished
            before a resumed search would know it).
    """

    def __init__(self, files: ExperimentFiles, max_share: float = 0.05, after=None):
        self.files = files
        self.after = after   # e.g. search.asha.SaveOnTrialStartEnd: wait while it is pending
        self.best = None
        self.max_share = float(max_share)
        self.writes = 0
        self._stale = False
        self._last_end = -math.inf
        self._last_cost = 0.0

    def _due(self) -> bool:
        return time.monotonic() - self._last_end >= self._last_cost / self.max_share

    def _refresh(self, trials):
        t0 = time.monotonic()
        try:
            self.best = self.files.write(trials)
        except Exception as e:  # never kill the search over a table
            print(f"warning: could not write the trial tables: {e}")
        self._last_end = time.monotonic()
        self._last_cost = self._last_end - t0
        self._stale = False
        self.writes += 1

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._stale = True

    def on_trial_error(self, iteration, trials, trial, **info):
        self._stale = True

    def on_step_end(self, iteration, trials, **info):
        # at the end of Tune's loop step, after Ray saved the experiment state (see
        # search.asha.SaveOnTrialStartEnd, placed before this callback): the table never says a
        # trial finished before a resumed search would know it
        if self._stale and self._due() and not getattr(self.after, "pending", False):
            self._refresh(trials)

    def on_experiment_end(self, trials, **info):
        self._refresh(trials)
