"""Analyse a search: the trial table, Optuna importances and plots, MONET order analytics, a report.

The command users run, on a finished search or while it runs::

    python search/analyze.py results/toy-monet-20260101-120000            # -> <exp>/analysis/
    python search/analyze.py results/smoke --top 5 --out report/ --importance ped-anova
    python search/analyze.py s3://bucket/results/smoke --out smoke-analysis   # object storage

It reads only the experiment folder that ``search/tune_monet.py`` wrote: ``config.yaml``,
``trials.parquet``, the per-trial folders (``params.json``, ``metrics.jsonl`` or Ray's
``result.json``, ``checkpoint/checkpoint.pt`` or Ray's latest ``checkpoint_*/``) and the Optuna
study. The folder may be a URI (``s3://...``, ``gs://...``, ``?endpoint_override=...``), read
through pyarrow (:mod:`search.storage`). The study is looked up in the storage that
``config.yaml`` records (``--optuna-storage``), else in ``<exp>/study.db`` (sqlite) or
``<exp>/study.journal`` (Optuna journal file), under the experiment's name; a search on object
storage without ``--optuna-storage`` kept its study inside Ray's searcher state, which is not
read here (a pickle). Without a study the table and the order analytics are still made;
importances and Optuna's plots are skipped with one line saying why.

What it writes into ``--out`` (a local folder; default ``<exp>/analysis/``, or
``./<name>-analysis/`` for an experiment on object storage), every file atomically (temporary
file + rename), and only after everything was computed:

* ``report.html``  one self-contained page (plotly.js inlined: it opens offline);
* ``report.md``    the top-k table, the importances, the order analytics and the PNG figures;
* ``figures/*.png`` Optuna's matplotlib figures (history, importances, slices, parallel
  coordinates, intermediate values with the ASHA rungs marked) and the order figures;
* ``trials.csv``   the analysis table (:func:`load`); ``importances.csv``; ``orders.csv``.

The figures are Optuna's own (``optuna.visualization`` and ``optuna.visualization.matplotlib``),
not redrawn; only the MONET order figures, which no library has, are drawn here: the soft order
matrix Omega of the best MONET trial (rows: steps, columns: tasks; MONET paper Fig. 8/10), the
consensus order of the top MONET trials (mean expected position of each task under their Omega)
and the distance of the soft order to the identity against the validation score.

Bad input (a missing or incomplete experiment folder, no finished trial) prints one
``error: ...`` line, exits with code 2 and writes nothing.

Example:
    >>> from search.analyze import load
    >>> df = load("results/smoke")                                       # doctest: +SKIP
    >>> df[["trial_id", "optuna_state", "epochs", "rung", "last/val/mean_acc"]]  # doctest: +SKIP
"""
from __future__ import annotations

import argparse
import html
import io
import json
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pandas as pd

from search.finalists import truthy
from search.storage import ExperimentStore

EXIT_BAD_INPUT = 2
IMPORTANCE_EVALUATORS = ("fanova", "ped-anova")
STATE_RANK = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}
MANIFEST = ".analysis-files.json"   # what the last run wrote into --out (stale files go)


class BadExperiment(Exception):
    """The folder is not an experiment that can be analysed (exit code 2, one line)."""


# =============================================================================== the folder
def read_config(exp) -> dict:
    """``<exp>/config.yaml`` as written by ``tune_monet.py`` (checked for the keys used here).

    Args:
        exp: the experiment: a local folder, a URI or an :class:`ExperimentStore`.
    """
    import yaml

    exp = ExperimentStore.of(exp)
    if exp.is_local and not exp.exists():
        raise BadExperiment(f"{exp}: no such experiment folder")
    if exp.is_local and not exp.is_dir():
        raise BadExperiment(f"{exp}: not a folder; expected the experiment folder "
                            f"<storage>/<name>/ that search/tune_monet.py writes")
    path = exp.shown("config.yaml")
    if not exp.is_file("config.yaml"):
        if not exp.is_local and not exp.is_dir():
            raise BadExperiment(f"{exp}: no such experiment folder (nothing stored there)")
        raise BadExperiment(f"{exp}: not an experiment folder (no config.yaml); expected the "
                            f"folder <storage>/<name>/ that search/tune_monet.py writes")
    try:
        cfg = exp.read_yaml("config.yaml")
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise BadExperiment(f"{path}: cannot read it ({type(e).__name__})") from None
    s = cfg.get("search") if isinstance(cfg, dict) else None
    missing = [k for k in ("metric", "mode", "families", "name") if not isinstance(s, dict)
               or k not in s]
    if missing:
        raise BadExperiment(f"{path}: incomplete (no search/{missing[0]}); expected the "
                            f"config.yaml that search/tune_monet.py writes")
    return cfg


def asha_rungs(search: dict) -> list:
    """ASHA's milestones in epochs, as Ray's ``ASHAScheduler`` builds them (one bracket).

    ``grace * rf**k`` for ``k < int(log(max_t / grace) / log(rf) + 1)``; empty for ``fifo``.

    Example:
        >>> asha_rungs({"scheduler": "asha", "grace_period": 0.5, "reduction_factor": 2,
        ...             "max_epochs": 3})
        [0.5, 1.0, 2.0]
    """
    if search.get("scheduler", "asha") != "asha":
        return []
    try:
        g, rf, mx = (float(search[k]) for k in ("grace_period", "reduction_factor", "max_epochs"))
    except (KeyError, TypeError, ValueError):
        return []
    if not (g > 0 and rf > 1 and mx >= g):
        return []
    n = int(np.log(mx / g) / np.log(rf) + 1)
    return [g * rf ** k for k in range(n)]


def _rung(epochs, rungs: list):
    """(index, epochs) of the highest rung with milestone <= ``epochs``; (None, nan) below."""
    if epochs is None or not np.isfinite(epochs) or not rungs:
        return None, math.nan
    passed = [i for i, m in enumerate(rungs) if epochs + 1e-9 >= m]
    return (passed[-1], rungs[passed[-1]]) if passed else (None, math.nan)


def _read_trials(exp: ExperimentStore) -> pd.DataFrame:
    path = exp.shown("trials.parquet")
    try:
        data = exp.read_bytes("trials.parquet")
    except (FileNotFoundError, IsADirectoryError):
        raise BadExperiment(f"{exp}: no finished trial yet (no trials.parquet; the search writes "
                            f"it when its first trial ends)") from None
    try:
        df = pd.read_parquet(io.BytesIO(data))
    except Exception as e:  # truncated/corrupt: never written atomically by someone else
        raise BadExperiment(f"{path}: cannot read it ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if "trial_id" not in df.columns or "state" not in df.columns:
        raise BadExperiment(f"{path}: no trial_id/state columns; not a monet-tune trial table")
    return df


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _read_or_none(exp: ExperimentStore, rel: str) -> Optional[str]:
    try:
        return exp.read_text(rel)
    except (OSError, UnicodeDecodeError):   # missing, a folder, being written
        return None


def _running_rows(exp: ExperimentStore, known: set, metric: str, mode: str, family: str) -> list:
    """Rows for trial folders not yet in trials.parquet (the search is running them).

    The learning curve comes from the trial's ``metrics.jsonl`` (a local experiment folder) or,
    where there is none (object storage), from Ray's ``result.json``."""
    rows = []
    for dname in exp.listdir():
        tid = dname[len("trial_"):]
        if not dname.startswith("trial_") or tid in known:
            continue
        text = _read_or_none(exp, f"{dname}/params.json")
        if text is None:
            continue
        try:
            params = json.loads(text)
        except ValueError:
            continue
        recs = []
        text = _read_or_none(exp, f"{dname}/metrics.jsonl")
        if text is None:
            text = _read_or_none(exp, f"{dname}/result.json")
        for line in (text or "").splitlines():
            try:
                recs.append(json.loads(line))
            except ValueError:   # a line being written
                pass
        vals = [r[metric] for r in recs if isinstance(r.get(metric), (int, float))]
        last = recs[-1] if recs else {}
        row = {"trial_id": tid, "family": params.get("family", family), "state": "RUNNING",
               "stopped_early": False, "epochs": last.get("epoch"), "rounds": last.get("round"),
               f"best/{metric}": (max(vals) if mode == "max" else min(vals)) if vals else None,
               f"last/{metric}": vals[-1] if vals else None,    # the last evaluated round
               "trial_dir": exp.shown(dname)}
        if "order/dist_to_identity" in last:
            row["last/order/dist_to_identity"] = last["order/dist_to_identity"]
        row.update({f"config/{k}": v for k, v in _flatten(params).items()})
        rows.append(row)
    return rows


def _derived_state(row) -> str:
    st = row.get("state")
    if st == "TERMINATED":
        return "PRUNED" if bool(row.get("stopped_early")) else "COMPLETE"
    return {"ERROR": "FAIL", "RUNNING": "RUNNING", "PENDING": "WAITING"}.get(st, str(st))


def _table(exp: ExperimentStore, cfg: dict, study) -> pd.DataFrame:
    s = cfg["search"]
    metric, mode = s["metric"], s["mode"]
    df = _read_trials(exp)
    running = _running_rows(exp, set(df["trial_id"].astype(str)), metric, mode,
                            s.get("family") or s["families"][0])
    if running:
        df = pd.concat([df, pd.DataFrame(running)], ignore_index=True)
    if "family" not in df.columns:
        df["family"] = None
    if "config/family" in df.columns:        # --family all: the family is a searched parameter
        df["family"] = df["family"].fillna(df["config/family"])
    df["family"] = df["family"].fillna(s["families"][0])
    num = df["config/optuna_trial"] if "config/optuna_trial" in df else pd.Series([None] * len(df))
    df["optuna_number"] = pd.array([int(v) if pd.notna(v) else None for v in num], dtype="Int64")
    by_number, by_ray = {}, {}
    if study is not None:
        for t in study.get_trials(deepcopy=False):
            by_number[t.number] = t
            if t.user_attrs.get("ray_trial_id"):
                by_ray[t.user_attrs["ray_trial_id"]] = t
    states, values = [], []
    for _, r in df.iterrows():
        t = by_ray.get(r["trial_id"])
        if t is None and pd.notna(r["optuna_number"]):
            t = by_number.get(int(r["optuna_number"]))
        states.append(t.state.name if t is not None else _derived_state(r))
        values.append(t.value if t is not None and t.value is not None else math.nan)
    df["optuna_state"] = states
    df["optuna_value"] = values
    rungs = asha_rungs(s)
    rr = [_rung(e, rungs) for e in pd.to_numeric(df["epochs"], errors="coerce")]
    df["rung"] = pd.array([i for i, _ in rr], dtype="Int64")
    df["rung_epochs"] = [e for _, e in rr]
    return df


def load(exp_dir) -> pd.DataFrame:
    """One row per trial of the experiment ``exp_dir``, finished or (while the search runs) not.

    The columns of the search's own ``trials.parquet`` (``trial_id``, ``family``, ``state``,
    ``stopped_early``, ``epochs`` used, ``best/<metric>`` and ``last/<metric>``, ``config/*``, ...),
    trials whose folder exists but which are not in ``trials.parquet`` yet (state ``RUNNING``, from
    their ``params.json`` and ``metrics.jsonl``), and:

    * ``optuna_number``, ``optuna_state`` (COMPLETE / PRUNED / FAIL / RUNNING) and
      ``optuna_value`` from the Optuna study (without a study the state follows the Ray state:
      full budget COMPLETE, stopped early PRUNED, error FAIL);
    * ``rung``: the highest ASHA rung the trial reached (0 = the grace period; for a PRUNED trial
      the rung it was stopped at) and ``rung_epochs``, its milestone, from the ASHA settings in
      ``config.yaml`` (grace_period, reduction_factor, max_epochs).

    Args:
        exp_dir: the experiment folder ``<storage>/<name>/``: a local path, a URI
            (``s3://bucket/prefix/name``) or an :class:`~search.storage.ExperimentStore`.

    Returns:
        A ``pandas.DataFrame``, in the order of ``trials.parquet``.

    Raises:
        BadExperiment: the folder is missing or incomplete (one line).
        OSError: object storage cannot be read (no access, endpoint away).
    """
    exp = ExperimentStore.of(exp_dir)
    cfg = read_config(exp)
    study, _ = open_study(exp, cfg)
    return _table(exp, cfg, study)


# =============================================================================== Optuna
def _quiet_optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", module="optuna")
    return optuna


def _storage(url: str, exp: ExperimentStore):
    """(storage, None) or (None, why) for a storage URL, never creating a file."""
    optuna = _quiet_optuna()
    if url.startswith("journal:") or url.endswith((".log", ".journal")):
        path = url[len("journal:"):] if url.startswith("journal:") else url
        path = path[2:] if path.startswith("//") else path
        p = _existing(path, exp)
        if p is None:
            return None, f"no journal file {path}"
        from optuna.storages.journal import JournalFileBackend, JournalStorage
        return JournalStorage(JournalFileBackend(str(p))), None
    if url.startswith("sqlite:///"):
        p = _existing(url[len("sqlite:///"):], exp)
        if p is None:
            return None, f"no file {url[len('sqlite:///'):]}"
        url = f"sqlite:///{p}"
    try:
        return optuna.storages.RDBStorage(url), None
    except Exception as e:
        return None, f"cannot open {url} ({type(e).__name__})"


def _existing(path: str, exp: ExperimentStore) -> Optional[Path]:
    """The local file ``path`` (as given, else relative to a local experiment or its parent)."""
    p = Path(path).expanduser()
    near = [exp.local_path / p, exp.local_path.parent / p] if exp.is_local else []
    for c in ([p] if p.is_absolute() else [p] + near):
        if c.is_file():
            return c.resolve()
    return None


def open_study(exp, cfg: dict):
    """The experiment's Optuna study and where it came from: ``(study, text)``, or
    ``(None, why)`` when there is none.

    Looked up under the experiment's name in ``config.yaml``'s ``search.optuna_storage``, else in
    ``<exp>/study.db``, else in ``<exp>/study.journal`` (local experiment folders only: a search
    on object storage keeps its study in Ray's searcher state unless it had --optuna-storage).
    """
    exp = ExperimentStore.of(exp)
    name = cfg["search"].get("name") or exp.name
    urls = []
    if cfg["search"].get("optuna_storage"):
        urls.append(str(cfg["search"]["optuna_storage"]))
    if exp.is_local:
        urls += [f"sqlite:///{exp.local_path / 'study.db'}",
                 f"journal:{exp.local_path / 'study.journal'}"]
    elif not urls:
        return None, ("no Optuna study (a search on object storage without --optuna-storage "
                      "keeps its study inside Ray's searcher state, which is not read here)")
    why = []
    for url in urls:
        storage, note = _storage(url, exp)
        if storage is None:
            why.append(note)
            continue
        optuna = _quiet_optuna()
        try:
            return optuna.load_study(study_name=name, storage=storage), f"{url} (study {name!r})"
        except KeyError:
            why.append(f"{url} has no study named {name!r}")
        except Exception as e:
            why.append(f"cannot read {url} ({type(e).__name__})")
    return None, "no Optuna study (" + "; ".join(why) + ")"


def _union(a, b):
    """The smallest distribution holding both ``a`` and ``b`` (``k``'s range grows with M)."""
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)

    if a is None:
        return b
    if a == b:
        return a
    if isinstance(a, FloatDistribution) and isinstance(b, FloatDistribution):
        return FloatDistribution(min(a.low, b.low), max(a.high, b.high), log=a.log and b.log,
                                 step=a.step if a.step == b.step and not a.log else None)
    if isinstance(a, IntDistribution) and isinstance(b, IntDistribution):
        log = a.log and b.log
        return IntDistribution(min(a.low, b.low), max(a.high, b.high), log=log,
                               step=1 if log or a.step != b.step else a.step)
    if isinstance(a, CategoricalDistribution) and isinstance(b, CategoricalDistribution):
        return CategoricalDistribution(list(a.choices) + [c for c in b.choices
                                                          if c not in a.choices])
    return a


def _fits(dist, value) -> bool:
    """Whether ``value`` lies in ``dist`` (Optuna's own containment check)."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except Exception:  # a value of another type (the space changed between runs)
        return False


def family_study(study, family: Optional[str] = None):
    """An in-memory copy of ``study`` (the trials of ``family``, or all) for importances and plots.

    Optuna's importance evaluators refuse parameters whose distribution changes from trial to
    trial, and our ``k`` is suggested in ``1..M`` with M drawn first. The copy gives every
    parameter one distribution, the union of its ranges over the trials (values unchanged). With
    a ``family``, the ``family`` parameter itself is left out. Trial order is kept.
    """
    optuna = _quiet_optuna()
    from optuna.trial import TrialState, create_trial

    trials = [t for t in study.get_trials(deepcopy=False)
              if t.state != TrialState.WAITING
              and (family is None or t.params.get("family", family) == family)]
    dists = {}
    for t in trials:
        for n, d in t.distributions.items():
            if not (family is not None and n == "family"):
                dists[n] = _union(dists.get(n), d)
    copy = optuna.create_study(direction=study.direction)
    for t in trials:
        params = {n: v for n, v in t.params.items() if n in dists}
        ok = {n: v for n, v in params.items() if _fits(dists[n], v)}
        complete = t.state == TrialState.COMPLETE
        copy.add_trial(create_trial(
            state=t.state, value=t.value if complete else None, params=ok,
            distributions={n: dists[n] for n in ok}, user_attrs=dict(t.user_attrs),
            intermediate_values=dict(t.intermediate_values)))
    return copy


def searched_params(study, family: Optional[str] = None) -> list:
    """Names of the parameters Optuna suggested (in the trials of ``family``), suggestion order."""
    names = []
    for t in study.get_trials(deepcopy=False):
        if family is None or t.params.get("family", family) == family:
            names += [n for n in t.distributions if n not in names
                      and not (family is not None and n == "family")]
    return names


def make_evaluator(kind: str, seed: int = 0):
    """``fanova`` (Optuna's default, random forests) or ``ped-anova``."""
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    if kind == "fanova":
        return FanovaImportanceEvaluator(seed=seed)
    if kind == "ped-anova":
        return PedAnovaImportanceEvaluator()
    raise ValueError(f"importance: expected one of {IMPORTANCE_EVALUATORS}, got {kind!r}")


def _known_evaluator(imp: dict):
    """An Optuna importance evaluator that returns ``imp``: Optuna's importance figures then show
    exactly the table's numbers, computed once."""
    from optuna.importance import BaseImportanceEvaluator

    class Known(BaseImportanceEvaluator):
        def evaluate(self, study, params=None, *, target=None):
            return {p: imp[p] for p in (params or imp)}

    return Known()


def importances(study, families: list, kind: str = "fanova") -> tuple:
    """Importances on the COMPLETE trials: ``({group: {param: importance}}, notes)``.

    One group per family (``--family all``: each family on its own trials, its own parameters);
    a multi-family search adds ``all`` (``family`` and the parameters every family shares).
    A group with fewer than two COMPLETE trials is left out with a note.
    """
    optuna = _quiet_optuna()
    from optuna.trial import TrialState

    groups = [(f, f if len(families) > 1 else None) for f in families]
    if len(families) > 1:
        groups.append(("all", None))
    out, notes = {}, []
    for name, fam in groups:
        fs = family_study(study, fam)
        done = [t for t in fs.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value)]
        if len(done) < 2:
            notes.append(f"importances ({name}): {len(done)} COMPLETE trial(s); they need 2")
            continue
        if name == "all":   # what every COMPLETE trial has
            params = [n for n in searched_params(study) if all(n in t.params for t in done)]
        else:
            params = [n for n in searched_params(study, fam)]
        if not params:
            notes.append(f"importances ({name}): no searched parameter")
            continue
        try:
            imp = optuna.importance.get_param_importances(
                fs, evaluator=make_evaluator(kind), params=params, normalize=True)
        except Exception as e:  # e.g. every value equal and the evaluator refuses
            notes.append(f"importances ({name}): {type(e).__name__}: {str(e).splitlines()[0]}")
            continue
        out[name] = {p: float(imp.get(p, 0.0)) for p in
                     sorted(params, key=lambda p: -float(imp.get(p, 0.0)))}
    return out, notes


# =============================================================================== MONET orders
def soft_order(state: dict) -> tuple:
    """Omega = sum_m pi_m M_sigma_m from a MONET ``state_dict``: ``(omega [T, T], pi [M],
    orders [M, T])`` as numpy arrays (row = step, column = task; MONET eq. 12).

    pi = softmax(order_logits); a model with one order (M = 1) has no logits and pi = [1].
    """
    import torch

    orders = state["orders"].long().cpu()                               # [M, T]
    logits = state.get("order_logits")
    pi = (torch.softmax(logits.detach().double().cpu(), 0) if logits is not None
          else torch.ones(1, dtype=torch.double))                     # [M]
    M, T = orders.shape
    onehot = torch.zeros(M, T, T, dtype=torch.double)
    onehot.scatter_(2, orders[:, :, None], 1.0)                         # [m, step, task]
    omega = torch.einsum("m,mij->ij", pi, onehot)
    return omega.numpy(), pi.numpy(), orders.numpy()


def _checkpoint(exp: ExperimentStore, row):
    """The trial's latest checkpoint file for ``torch.load``: a local path (its own
    ``checkpoint/`` folder), or the bytes of Ray's latest ``checkpoint_*/checkpoint.pt`` in
    object storage (an ``io.BytesIO``); None when there is none."""
    tdir = f"trial_{row['trial_id']}"
    if exp.is_local:
        for d in (exp.local_path / tdir, Path(str(row.get("trial_dir") or ""))):
            p = d / "checkpoint" / "checkpoint.pt"
            if str(d) and p.is_file():
                return p
        return None
    for ck in ["checkpoint"] + sorted((n for n in exp.listdir(tdir)
                                       if n.startswith("checkpoint_")), reverse=True):
        try:
            return io.BytesIO(exp.read_bytes(f"{tdir}/{ck}/checkpoint.pt"))
        except (FileNotFoundError, IsADirectoryError):
            continue
    return None


def _where(p) -> str:
    return "the checkpoint in object storage" if isinstance(p, io.BytesIO) else str(p)


def ranked(df: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """Trials best first: COMPLETE, then PRUNED, RUNNING, FAIL; within a state by the last value
    of ``metric`` (the rule ``best_config.yaml`` follows: finalists first, so a PRUNED trial that
    passed ASHA's last rung before the search's end cut it ranks with the COMPLETE ones; see
    :mod:`search.finalists`)."""
    key = f"last/{metric}"
    v = pd.to_numeric(df[key], errors="coerce") if key in df else pd.Series(np.nan, df.index)
    rank = df["optuna_state"].map(STATE_RANK).fillna(9)
    if "passed_rungs" in df:
        passed = truthy(df["passed_rungs"])
        rank = rank.where(~(passed & (df["optuna_state"] == "PRUNED")), STATE_RANK["COMPLETE"])
    out = df.assign(_s=rank, _v=-v if mode == "max" else v)
    return out.sort_values(["_s", "_v"], na_position="last", kind="stable").drop(
        columns=["_s", "_v"])


@dataclass
class OrderAnalysis:
    """The order analytics of a search's MONET trials (see :func:`order_analysis`)."""

    best: Optional[dict] = None          # trial_id, omega, pi, orders, tasks, M, value
    best_learned: Optional[dict] = None  # the best among the top with M > 1
    consensus: Optional[pd.DataFrame] = None
    consensus_trials: list = field(default_factory=list)
    consensus_note: str = ""
    scatter: Optional[pd.DataFrame] = None
    notes: list = field(default_factory=list)


def order_analysis(exp, df: pd.DataFrame, metric: str, mode: str, top: int) -> OrderAnalysis:
    """Omega of the best MONET trial, the consensus order of the top MONET trials and
    (distance to identity, validation score) for every MONET trial.

    The consensus ranks the tasks by their mean expected position sum_i i * Omega_ij over the top
    trials that learned an order (M > 1; when none did, over all top trials): a Borda count on
    soft orders. ``times_first`` counts the trials whose most likely order starts with the task.
    """
    import torch

    exp = ExperimentStore.of(exp)
    res = OrderAnalysis()
    mon = ranked(df[df["family"] == "monet"], metric, mode)
    mon = mon[mon["optuna_state"].isin(["COMPLETE", "PRUNED", "RUNNING"])]
    if not len(mon):
        res.notes.append("order analytics: no MONET trial with results (family monet)")
        return res
    per = []
    for _, r in mon.iterrows():
        p = _checkpoint(exp, r)
        if p is None:
            continue
        try:
            ck = torch.load(p, map_location="cpu", weights_only=True)
            omega, pi, orders = soft_order(ck["model"])
        except Exception as e:
            res.notes.append(f"order analytics: trial {r['trial_id']}: cannot read "
                             f"{_where(p)} ({type(e).__name__})")
            continue
        spec_tasks = (ck.get("spec") or {}).get("tasks", [])
        # the ordered chain runs over the binary tasks (Aff-Wild2: the 12 AUs; expression and
        # valence/arousal have their own heads)
        tasks = [t["name"] for t in spec_tasks if t.get("kind", "binary") == "binary"]
        if len(tasks) != omega.shape[0]:
            tasks = [f"task{j + 1}" for j in range(omega.shape[0])]
        per.append({"trial_id": r["trial_id"], "state": r["optuna_state"], "omega": omega,
                    "pi": pi, "orders": orders, "tasks": tasks, "M": len(pi),
                    "value": r.get(f"last/{metric}"), "epochs": r.get("epochs")})
        if len(per) >= max(1, top):
            break
    if not per:
        res.notes.append("order analytics: no MONET trial has a checkpoint")
        return res
    res.best = per[0]
    learned = [p for p in per if p["M"] > 1]
    res.best_learned = learned[0] if learned else None
    pool = learned or per
    res.consensus_note = (f"over the {len(pool)} best MONET trial(s) that learned an order "
                          f"(M > 1)" if learned else f"over the {len(pool)} best MONET trial(s); "
                          f"none learned an order (all M = 1): their fixed orders")
    T = pool[0]["omega"].shape[0]
    steps = np.arange(1, T + 1)
    pos = np.array([steps @ p["omega"] for p in pool])                  # [n, T] per task
    tasks = pool[0]["tasks"]
    mean = pos.mean(0)
    order = np.argsort(mean, kind="stable")
    res.consensus = pd.DataFrame({
        "rank": np.arange(1, T + 1), "task": [tasks[j] for j in order],
        "mean_position": mean[order], "std_position": pos.std(0)[order],
        "times_first": [sum(1 for p in pool if p["orders"][int(np.argmax(p["pi"]))][0] == j)
                     for j in order]})
    res.consensus_trials = [{"trial_id": p["trial_id"], "M": p["M"],
                             "most_likely_order": " > ".join(
                                 p["tasks"][j] for j in p["orders"][int(np.argmax(p["pi"]))]),
                             "max_pi": float(p["pi"].max()), "value": p["value"]}
                            for p in pool]
    key = f"last/{metric}"
    if "last/order/dist_to_identity" in df and key in df:
        sc = df[df["family"] == "monet"][["trial_id", "optuna_state",
                                          "last/order/dist_to_identity", key]]
        sc = sc.dropna(subset=["last/order/dist_to_identity", key])
        res.scatter = sc.rename(columns={"last/order/dist_to_identity": "dist_to_identity",
                                         key: "score"})
    return res


# =============================================================================== figures
@dataclass
class Figure:
    """One figure: its name, a caption, the plotly figure (HTML) and the PNG bytes."""

    name: str
    title: str
    plotly: object = None
    png: Optional[bytes] = None


def _png(ax_or_fig) -> bytes:
    import matplotlib.pyplot as plt

    obj = ax_or_fig
    if isinstance(obj, np.ndarray):
        obj = obj.ravel()[0]
    fig = obj if hasattr(obj, "savefig") else obj.figure
    with warnings.catch_warnings():   # figures with colour bars keep their own layout
        warnings.simplefilter("ignore")
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.figsize": (8, 5), "figure.max_open_warning": 0})
    return plt


def optuna_figures(study, fam_studies: dict, imps: dict, kind: str, rungs: list,
                   eval_every: float, n_slices: int = 4) -> tuple:
    """Optuna's own figures, both backends: ``(list[Figure], notes)``."""
    optuna = _quiet_optuna()
    import optuna.visualization as pv
    import optuna.visualization.matplotlib as pm

    _mpl()
    figs, notes = [], []

    def add(name, title, make_plotly, make_mpl):
        try:
            figs.append(Figure(name, title, make_plotly(), _png(make_mpl())))
        except Exception as e:  # one figure Optuna cannot draw does not stop the report
            why = str(e).splitlines()[0] if str(e) else ""
            notes.append(f"figure {name}: {type(e).__name__}: {why}")

    from optuna.trial import TrialState

    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        add("history", "Optimisation history", lambda: pv.plot_optimization_history(study),
            lambda: pm.plot_optimization_history(study))
    else:
        notes.append("figure history: no COMPLETE trial in the study yet")

    def with_rungs(fig_or_ax, plotly: bool):
        """Mark the ASHA rungs (epochs -> rounds of --eval-every epochs) on Optuna's figure."""
        xlabel = f"evaluation round (about {eval_every:g} epochs each, whole batches)"
        for i, m in enumerate(rungs):
            x = m / eval_every
            if plotly:
                fig_or_ax.add_vline(x=x, line_dash="dash", line_color="gray",
                                    annotation_text=f"rung {i}: {m:g} ep")
            else:
                fig_or_ax.axvline(x, ls="--", color="gray", lw=1)
                fig_or_ax.text(x, 1.0, f" rung {i}: {m:g} ep", transform=
                               fig_or_ax.get_xaxis_transform(), fontsize=8, va="top",
                               color="gray")
        if plotly:
            fig_or_ax.update_xaxes(title_text=xlabel)
        else:
            fig_or_ax.set_xlabel(xlabel)
            legend = fig_or_ax.get_legend()
            if legend is not None and len(fig_or_ax.get_lines()) > 20:   # one entry per trial
                legend.remove()
        return fig_or_ax

    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        title = "Intermediate values (learning curves; dashed: ASHA rungs)"
        add("intermediate", title,
            lambda: with_rungs(pv.plot_intermediate_values(study), True),
            lambda: with_rungs(pm.plot_intermediate_values(study), False))
    else:
        notes.append("figure intermediate: no intermediate values in the study")
    for group, imp in imps.items():
        fs = fam_studies[group]
        params = list(imp)
        sfx = "" if len(imps) == 1 else f"_{group}"
        label = "" if len(imps) == 1 else f" ({group})"
        ev = _known_evaluator(imp)
        add(f"importances{sfx}", f"Parameter importances{label}, {kind}",
            lambda: pv.plot_param_importances(fs, evaluator=ev, params=params),
            lambda: pm.plot_param_importances(fs, evaluator=ev, params=params))
        top = params[:max(1, n_slices)]
        add(f"slice{sfx}", f"Slices of the top parameters{label}",
            lambda: pv.plot_slice(fs, params=top),
            lambda: _slice_mpl(pm, fs, top))
        par = params[:6]
        add(f"parallel{sfx}", f"Parallel coordinates{label}",
            lambda: pv.plot_parallel_coordinate(fs, params=par),
            lambda: pm.plot_parallel_coordinate(fs, params=par))
    return figs, notes


def _slice_mpl(pm, fs, params):
    import matplotlib.pyplot as plt

    plt.rcParams["figure.figsize"] = (7, 4.5)       # Optuna: half the width per parameter
    try:
        return pm.plot_slice(fs, params=params)
    finally:
        plt.rcParams["figure.figsize"] = (8, 5)


def _omega_figure(b: dict, name: str) -> Figure:
    import plotly.graph_objects as go

    plt = _mpl()
    om, tasks = b["omega"], b["tasks"]
    T = om.shape[0]
    steps = [f"step {i + 1}" for i in range(T)]
    kind = "one fixed order" if b["M"] == 1 else "pi = softmax(order logits)"
    title = (f"Soft order Omega, trial {b['trial_id']} (M = {b['M']}, {kind}): "
             f"P(task j at step i)")
    pf = go.Figure(go.Heatmap(z=om, x=tasks, y=steps, zmin=0, zmax=1, colorscale="Blues",
                              text=np.round(om, 2), texttemplate="%{text}"))
    pf.update_layout(title=title, xaxis_title="task", yaxis_title="step",
                     yaxis_autorange="reversed")
    with plt.style.context("default"):
        fig, ax = plt.subplots(figsize=(0.9 * T + 3.5, 0.7 * T + 2.5))
        im = ax.imshow(om, vmin=0, vmax=1, cmap="Blues")
        ax.set_xticks(range(T), tasks, rotation=45, ha="right")
        ax.set_yticks(range(T), steps)
        for i in range(T):
            for j in range(T):
                ax.text(j, i, f"{om[i, j]:.2f}", ha="center", va="center",
                        color="white" if om[i, j] > 0.5 else "black", fontsize=9)
        ax.set_xlabel("task")
        ax.set_ylabel("step")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax)
        return Figure(name, title, pf, _png(fig))


def order_figures(oa: OrderAnalysis, metric: str) -> list:
    """The MONET order figures, both backends: Omega of the best MONET trial (and of the best
    one that learned an order, when the best has M = 1), distance to identity vs score."""
    import plotly.graph_objects as go

    plt = _mpl()
    figs = []
    if oa.best is not None:
        figs.append(_omega_figure(oa.best, "omega"))
        if oa.best_learned is not None and oa.best_learned is not oa.best:
            figs.append(_omega_figure(oa.best_learned, "omega_learned"))
    if oa.scatter is not None and len(oa.scatter):
        sc = oa.scatter
        title = f"Soft order distance to the identity vs {metric} (MONET trials, last round)"
        pf = go.Figure()
        with plt.style.context("default"):
            fig, ax = plt.subplots(figsize=(7, 5))
            for st, g in sc.groupby("optuna_state"):
                pf.add_trace(go.Scatter(x=g["dist_to_identity"], y=g["score"], mode="markers",
                                        name=st, text=g["trial_id"], marker={"size": 10}))
                ax.scatter(g["dist_to_identity"], g["score"], label=st, s=40)
            pf.update_layout(title=title, xaxis_title="||Omega - I||_F^2",
                             yaxis_title=metric)
            ax.set_xlabel("||Omega - I||_F^2")
            ax.set_ylabel(metric)
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend()
            figs.append(Figure("order_vs_score", title, pf, _png(fig)))
    return figs


# =============================================================================== report
def _is_order(name: str) -> bool:
    return name.startswith(("omega", "order_"))


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)) or v is pd.NA:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c]).replace("|", "/") for c in cols) + " |")
    return "\n".join(lines)


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r[c]))}</td>" for c in df.columns)
                   + "</tr>" for _, r in df.iterrows())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def top_table(df: pd.DataFrame, metric: str, mode: str, top: int, params: list) -> pd.DataFrame:
    """The ``top`` best trials: rank, id, family, state, epochs, rung, values, searched params."""
    r = ranked(df, metric, mode).head(top)
    cols = {"trial_id": "trial", "family": "family", "optuna_state": "state",
            "epochs": "epochs", "rung": "rung", f"last/{metric}": f"last {metric}",
            f"best/{metric}": f"best {metric}"}
    out = pd.DataFrame({new: r[old].tolist() if old in r else [None] * len(r)
                        for old, new in cols.items()})
    for p in params:
        c = f"config/{p}"
        if c in r and p != "family":
            out[p] = r[c].tolist()
    out.insert(0, "rank", range(1, len(out) + 1))
    return out


def importance_frame(imps: dict, kind: str) -> pd.DataFrame:
    """``{group: {param: importance}}`` -> rows ``group, param, importance, evaluator``."""
    rows = [{"group": g, "param": p, "importance": v, "evaluator": kind}
            for g, imp in imps.items() for p, v in imp.items()]
    return pd.DataFrame(rows, columns=["group", "param", "importance", "evaluator"])


CSS = """body{font-family:sans-serif;margin:16px;color:#222;max-width:1380px}
h1{font-size:22px;margin:4px 0}h2{font-size:17px;margin:18px 0 6px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:12px;margin:6px 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eef}
.grid{display:flex;flex-wrap:wrap;gap:8px}.fig{width:670px}.note{color:#a33;font-size:12px}
.summary{font-size:13px}.wide{overflow-x:auto;max-width:1380px}"""


def render_html(name: str, summary: list, top: pd.DataFrame, imp: pd.DataFrame, figs: list,
                oa: OrderAnalysis, notes: list) -> str:
    """One self-contained page: plotly.js inlined once, every figure a plotly div."""
    import plotly.offline

    parts = [f"<h1>Search {html.escape(name)}</h1>",
             "<div class='summary'>" + "<br>".join(html.escape(s) for s in summary) + "</div>"]
    parts.append(f"<h2>Top {len(top)} trials</h2><div class='wide'>" + _html_table(top)
                 + "</div>")

    def fig_divs(names_filter):
        out = []
        for f in figs:
            if names_filter(f.name):
                f.plotly.update_layout(width=660, height=440, margin=dict(l=50, r=20, t=60, b=50),
                                       title_font_size=13)
                out.append("<div class='fig'>" + f.plotly.to_html(
                    full_html=False, include_plotlyjs=False, div_id=f"fig-{f.name}",
                    config={"responsive": False}) + "</div>")
        return out

    opt = fig_divs(lambda n: not _is_order(n))
    if opt:
        parts.append("<h2>Optuna</h2><div class='grid'>" + "".join(opt) + "</div>")
    if len(imp):
        parts.append("<h2>Parameter importances</h2>" + _html_table(imp))
    order = fig_divs(_is_order)
    if order or oa.consensus is not None:
        parts.append("<h2>MONET order analytics</h2><div class='grid'>" + "".join(order)
                     + "</div>")
        if oa.consensus is not None:
            parts.append(f"<p>Consensus order {html.escape(oa.consensus_note)}: tasks by their "
                         f"mean expected position sum_i i * Omega_ij (times_first: how many of "
                         f"them start their most likely order with the task).</p>"
                         + _html_table(oa.consensus)
                         + _html_table(pd.DataFrame(oa.consensus_trials)))
    if notes:
        parts.append("<h2>Skipped</h2>" + "".join(f"<div class='note'>{html.escape(n)}</div>"
                                                 for n in notes))
    js = plotly.offline.get_plotlyjs()
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>monet-tune analysis: {html.escape(name)}</title><style>{CSS}</style>"
            f"<script type='text/javascript'>{js}</script></head><body>"
            + "\n".join(parts) + "</body></html>")


def render_md(name: str, summary: list, top: pd.DataFrame, imp: pd.DataFrame, figs: list,
              oa: OrderAnalysis, notes: list) -> str:
    """``report.md``: summary, top-k table, importances, figures (PNG links), order analytics."""
    out = [f"# Search {name}", ""] + [f"- {s}" for s in summary] + ["", f"## Top {len(top)} trials",
                                                                   "", _md_table(top), ""]
    if len(imp):
        out += ["## Parameter importances", ""]
        for g, sub in imp.groupby("group", sort=False):
            out += [f"**{g}** ({sub['evaluator'].iloc[0]}, COMPLETE trials)", "",
                    _md_table(sub[["param", "importance"]]), ""]
    optf = [f for f in figs if not _is_order(f.name)]
    if optf:
        out += ["## Optuna figures", ""] + [f"![{f.title}](figures/{f.name}.png)\n" for f in optf]
    if oa.best is not None or oa.scatter is not None:
        out += ["## MONET order analytics", ""]
        if oa.best is not None:
            b = oa.best
            om = pd.DataFrame(b["omega"], columns=b["tasks"],
                              index=[f"step {i + 1}" for i in range(len(b["omega"]))])
            out += [f"Soft order Omega of the best MONET trial {b['trial_id']} (M = {b['M']}; "
                    f"row = step, column = task):", "", _md_table(om.reset_index(names="")), ""]
        if oa.consensus is not None:
            out += [f"Consensus order {oa.consensus_note}: tasks by their mean expected "
                    f"position sum_i i * Omega_ij (times_first: how many of them start their "
                    f"most likely order with the task).", "",
                    _md_table(oa.consensus), "", _md_table(pd.DataFrame(oa.consensus_trials)), ""]
        out += [f"![{f.title}](figures/{f.name}.png)\n" for f in figs
                if _is_order(f.name)]
    if notes:
        out += ["## Skipped", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


# =============================================================================== main
@dataclass
class Analysis:
    """Everything :func:`analyze` computed; ``files`` maps relative paths to their bytes."""

    table: pd.DataFrame
    importances: dict
    orders: OrderAnalysis
    summary: list
    notes: list
    files: dict


def analyze(exp_dir, top: int = 10, importance: str = "fanova", n_slices: int = 4) -> Analysis:
    """Compute the whole analysis in memory (nothing is written; see :func:`write`).

    Args:
        exp_dir: the experiment: a local folder, a URI (``s3://...``, ``gs://...``) or an
            :class:`~search.storage.ExperimentStore`.
        top: trials in the top table and in the consensus order.
        importance: ``fanova`` or ``ped-anova``.
        n_slices: parameters in the slice plot.

    Raises:
        BadExperiment: missing or incomplete folder, or no finished trial.
        OSError: object storage cannot be read (no access, endpoint away).
    """
    exp = ExperimentStore.of(exp_dir)
    cfg = read_config(exp)
    s = cfg["search"]
    metric, mode, families = s["metric"], s["mode"], list(s["families"])
    study, where = open_study(exp, cfg)
    df = _table(exp, cfg, study)
    if f"last/{metric}" not in df.columns:
        raise BadExperiment(f"{exp.shown('trials.parquet')}: no column last/{metric} (the "
                            f"search's metric)")
    finished = df[df["optuna_state"].isin(["COMPLETE", "PRUNED"])
                  & pd.to_numeric(df[f"last/{metric}"], errors="coerce").notna()]
    if not len(finished):
        counts = ", ".join(f"{n} {k}" for k, n in df["optuna_state"].value_counts().items())
        raise BadExperiment(f"{exp}: no finished trial with a value of {metric} ({counts})")
    notes = []
    counts = ", ".join(f"{n} {k}" for k, n in df["optuna_state"].value_counts().items())
    best = ranked(df, metric, mode).iloc[0]
    summary = [f"{len(df)} trials ({counts}); metric {metric} ({mode})",
               f"best trial {best['trial_id']} ({best['family']}, {best['optuna_state']}): "
               f"{metric} = {_fmt(best.get(f'last/{metric}'))} after {_fmt(best['epochs'])} epochs",
               f"ASHA rungs (epochs): {', '.join(f'{m:g}' for m in asha_rungs(s)) or 'none'}; "
               f"families: {', '.join(families)}"]
    warm = warm_start_summary(df, metric, mode)
    if warm:
        summary.append(warm)
    imps, figs = {}, []
    if study is None:
        notes.append(f"importances and Optuna figures: {where}")
    else:
        summary.append(f"Optuna study: {where}")
        imps, n = importances(study, families, importance)
        notes += n
        fam_studies = {g: family_study(study, None if g == "all" or len(families) == 1 else g)
                       for g in imps}
        figs, n = optuna_figures(study, fam_studies, imps, importance, asha_rungs(s),
                                 float(s.get("eval_every") or 1.0), n_slices)
        notes += n
    oa = order_analysis(exp, df, metric, mode, top)
    notes += oa.notes
    figs += order_figures(oa, metric)
    params = []
    for ps in (cfg.get("space") or {}).values():
        params += [p for p, v in (ps or {}).items() if isinstance(v, (dict, list))
                   and p not in params]
    toptab = top_table(df, metric, mode, top, params)
    imp = importance_frame(imps, importance)
    name = s.get("name") or exp.name
    files = {
        "report.html": render_html(name, summary, toptab, imp, figs, oa, notes).encode(),
        "report.md": render_md(name, summary, toptab, imp, figs, oa, notes).encode(),
        "trials.csv": df.to_csv(index=False).encode(),
        "importances.csv": imp.to_csv(index=False).encode(),
    }
    if oa.consensus is not None:
        files["orders.csv"] = oa.consensus.to_csv(index=False).encode()
    for f in figs:
        if f.png:
            files[f"figures/{f.name}.png"] = f.png
    return Analysis(df, imps, oa, summary, notes, files)


def warm_start_summary(df: pd.DataFrame, metric: str, mode: str) -> Optional[str]:
    """How the warm-started trials (``--warm-start``) fared against the sampled ones, or None."""
    if "warm_start" not in df.columns or not df["warm_start"].notna().any():
        return None
    value = pd.to_numeric(df[f"last/{metric}"], errors="coerce")
    parts = []
    for label, rows in (("warm-started", df["warm_start"].notna()),
                        ("sampled", df["warm_start"].isna())):
        v = value[rows].dropna()
        if not len(v):
            parts.append(f"{label}: {int(rows.sum())} trials, none finished")
            continue
        best = v.max() if mode == "max" else v.min()
        parts.append(f"{label}: {int(rows.sum())} trials, best {metric} {_fmt(best)}, "
                     f"median {_fmt(v.median())}")
    return "; ".join(parts)


def write(analysis: Analysis, out: Path) -> None:
    """Write every file atomically into ``out``; files an earlier run wrote and this one did not
    (a figure of a parameter no longer in the top) are removed."""
    from monet.io import atomic_write_bytes, atomic_write_text

    old = []
    try:
        old = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        pass
    for rel, data in analysis.files.items():
        atomic_write_bytes(out / rel, data)
    for rel in old if isinstance(old, list) else []:
        p = out / str(rel)
        if rel not in analysis.files and p.is_file() and p.resolve().is_relative_to(out.resolve()):
            p.unlink()
    atomic_write_text(out / MANIFEST, json.dumps(sorted(analysis.files)))


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python search/analyze.py",
                description="Tables, Optuna importances and plots, MONET order analytics and a "
                            "report for one search experiment (also while it runs).")
    p.add_argument("experiment", help="the experiment folder <storage>/<name>/: a local folder "
                   "or a URI (s3://bucket/prefix/name, gs://..., ?endpoint_override=...)")
    p.add_argument("--top", type=int, default=10, help="trials in the top table and in the "
                   "consensus order (10)")
    p.add_argument("--out", default=None, help="local output folder (default: "
                   "<experiment>/analysis; ./<name>-analysis for object storage)")
    p.add_argument("--importance", choices=IMPORTANCE_EVALUATORS, default="fanova",
                   help="Optuna importance evaluator (fanova)")
    p.add_argument("--slices", type=int, default=4, help="parameters in the slice plot (4)")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.top < 1 or a.slices < 1:
        print(f"error: --{'top' if a.top < 1 else 'slices'}: expected >= 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    exp = ExperimentStore(a.experiment)
    try:
        exp.check()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if a.out:
        out = Path(a.out).expanduser()
    else:
        out = exp.local_path / "analysis" if exp.is_local else Path(f"{exp.name}-analysis")
    if out.exists() and not out.is_dir():
        print(f"error: --out: {out} is a file; expected a folder", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        res = analyze(exp, top=a.top, importance=a.importance, n_slices=a.slices)
    except BadExperiment as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:   # object storage: no access, endpoint away, ...
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {exp}: cannot read it ({why})", file=sys.stderr)
        return EXIT_BAD_INPUT
    for line in res.summary:
        print(line)
    for n in res.notes:
        print(f"skipped {n}")
    write(res, out)
    n_png = sum(1 for k in res.files if k.endswith(".png"))
    print(f"wrote {out}/report.html, report.md, trials.csv, importances.csv and {n_png} figures "
          f"in figures/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
