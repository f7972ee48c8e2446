"""From a finished search to the paper's table: re-select, retrain on every fold, compare.

The command::

    python search/retrain.py <experiment-dir> [--top 3] [--seeds 3] [--folds all|1,2] [--out DIR]
        [--data-root DIR] [--address ADDR] [--num-cpus N]
    python search/retrain.py --nested DIR1 DIR2 DIR3 [--top 3] [--seeds 3] [--out DIR]

Two stages, every run one Ray task (the search's ``cpus_per_trial`` / ``gpus_per_trial``) that
calls :func:`monet.train.fit` in its own folder ``<out>/runs/<config>/fold<f>/seed<s>/``:

1. **Selection** (the winner's curse): one lucky seed can put a mediocre configuration on top
   of a search. The top-k trials (by the search's metric, finalists first, as
   ``best_config.yaml`` ranks them) are re-run with seeds ``0..S-1`` on the search's own
   validation split (same fold, same validation subjects: the data seed stays the search's);
   the best mean wins, and the table says which and by how much.
2. **Retrain**: the winner on every fold of the dataset's protocol (BP4D, DISFA: the three
   subject-exclusive folds; toy, tabular, CelebA: the fixed split; Aff-Wild2: the official
   validation set) x seeds, with the test split evaluated at the end. The winner's runs on the
   search's own fold are the selection runs themselves (same config, seed and data): they are
   resumed from their final checkpoint and only evaluated on test.

A run folder holds ``config.yaml``, ``metrics.jsonl``, ``checkpoint/checkpoint.pt`` (written by
``fit``), ``test_metrics.yaml`` and ``result.json`` (ours: the run's last validation round and its
test metrics, and one entry per attempt). A rerun of the same command skips finished runs,
resumes interrupted ones from their checkpoint, and starts the others.

Honest protocol (DESIGN.md §9): a fold's row says whether any of its test subjects was a
validation subject of the search (``leak``). Only the search's own fold is clean when a search
ran on one fold; run one search per fold (``tune_monet.py --fold f``) and
``retrain.py --nested DIR1 DIR2 DIR3`` for the leak-free table, where each fold's configuration
was chosen by the search that never saw its test subjects.

Writes ``<out>/`` (default ``<experiment>/retrain/``): ``runs/``, ``selection.csv``,
``table.csv`` and ``table.md`` (rows: configurations; columns: tasks or AUs and the average;
mean +- std over seeds per fold and over folds; the published rows of
``monet/data/published.yaml`` beside ours, in percent), and ``retrain.yaml`` (what was asked and
which configuration won). Bad input (a missing or incomplete experiment folder, no finished
trial, a data root that moved, folds that the dataset does not have, nested searches that are
not one per fold of one dataset) ends with one ``error:`` line and exit code 2, nothing written.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
EXIT_STOPPED = 3
RESULT_FILE = "result.json"
SETTINGS_FILE = "retrain.yaml"

# datasets whose protocol is k-fold cross-validation (config.fold is the test fold)
PROTOCOL_FOLDS = {"bp4d": (1, 2, 3), "disfa": (1, 2, 3)}
FIXED_SPLIT = {"toy": "the fixed train/val/test split", "tabular": "the fixed split",
               "celeba": "the standard partition", "affwild2": "the official validation set"}
ACC_DATASETS = ("toy", "tabular", "celeba")   # protocol metric: accuracy; else F1
# TrainConfig fields that decide what load_dataset returns (one bundle per distinct tuple)
DATA_FIELDS = ("dataset", "T", "reading", "n_train", "n_val", "n_test", "data_seed", "data_root",
               "fold", "val_subjects", "layout", "subset", "cache", "image_size", "augment",
               "backbone", "num_workers")


class BadInput(Exception):
    """Something in the arguments or the experiment folder is wrong (exit code 2)."""


class Stopped(Exception):
    """``--stop-after N``: N runs finished and the rest was cancelled (a drill for resuming)."""


# ---------------------------------------------------------------------------------- experiment
@dataclass
class Candidate:
    """One of the search's top trials, as it will be re-run.

    Attributes:
        name: ``trial_<id>``, the folder name of its runs.
        trial_id, family: from ``trials.parquet``.
        search_rank: 1-based rank in the search (finalists first: full budget, or cut by the
            search's end after ASHA's last rung; :mod:`search.finalists`).
        search_value: its last value of the search's metric.
        full_budget: whether ASHA let it run the whole epoch budget.
        config: its full TrainConfig (``trial_<id>/config.yaml``) as a dict.
    """

    name: str
    trial_id: str
    family: str
    search_rank: int
    search_value: float
    full_budget: bool
    config: dict


@dataclass
class Search:
    """A finished (or running) search, read back from its experiment folder.

    Attributes:
        path: the experiment folder.
        settings: its :class:`search.settings.SearchSettings`.
        base: the fixed TrainConfig fields of every trial.
        fold: the search's fold (the test fold it kept away; 1 on fixed-split datasets).
        data_seed: the seed of its data draw / validation subjects (kept for every rerun).
        candidates: the top-k trials, best first.
        n_finished: finished trials with a finite metric.
    """

    path: Path
    settings: object
    base: dict
    fold: int
    data_seed: int
    candidates: list
    n_finished: int

    @property
    def dataset(self) -> str:
        return self.settings.dataset

    @property
    def metric(self) -> str:
        return self.settings.metric

    @property
    def mode(self) -> str:
        return self.settings.mode


def _read_yaml(path: Path, what: str):
    import yaml

    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except OSError:
        raise BadInput(f"{path}: missing ({what}); is this a complete experiment folder?") from None
    except yaml.YAMLError as e:
        raise BadInput(f"{path}: not readable YAML ({str(e).splitlines()[0]})") from None


def read_search(path, top: int, data_root: Optional[str] = None) -> Search:
    """Read the experiment folder ``path`` and pick its ``top`` trials.

    Raises:
        BadInput: the folder, its ``config.yaml``, ``trials.parquet`` or a top trial's
            ``config.yaml`` is missing or unreadable, or no trial finished.
    """
    import pandas as pd

    from monet.config import TrainConfig
    from monet.errors import MonetError
    from search.finalists import finalists, truthy
    from search.settings import SearchSettings

    exp = Path(path).expanduser().resolve()
    if not exp.is_dir():
        raise BadInput(f"{exp}: no such experiment folder")
    saved = _read_yaml(exp / "config.yaml", "the search's settings")
    if not isinstance(saved, dict) or not isinstance(saved.get("search"), dict) \
            or not isinstance(saved.get("base"), dict):
        raise BadInput(f"{exp / 'config.yaml'}: expected the keys 'search' and 'base' of a "
                       f"search's config.yaml")
    try:
        s = SearchSettings.from_dict(saved["search"], source=str(exp / "config.yaml"))
    except MonetError as e:
        raise BadInput(str(e)) from None
    table = exp / "trials.parquet"
    if not table.is_file():
        raise BadInput(f"{table}: missing; the search has not recorded any trial yet")
    try:
        df = pd.read_parquet(table)
    except Exception as e:
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise BadInput(f"{table}: not readable ({why})") from None
    col = f"last/{s.metric}"
    need = {"trial_id", "state", "stopped_early"}
    if not need <= set(df.columns):
        raise BadInput(f"{table}: missing column(s) {sorted(need - set(df.columns))}")
    if col not in df.columns:
        df[col] = float("nan")
    vals = pd.to_numeric(df[col], errors="coerce")
    ok = df[(df["state"] == "TERMINATED") & vals.map(lambda v: math.isfinite(v))].copy()
    if ok.empty:
        raise BadInput(f"{exp}: no finished trial with a finite {s.metric} yet "
                       f"({len(df)} trial(s) recorded)")
    ok["_v"] = pd.to_numeric(ok[col])
    ok["_early"] = truthy(ok["stopped_early"])
    ok["_out"] = ~finalists(ok)          # finalists first, as best_config.yaml ranks them
    ok = ok.sort_values(["_out", "_v"], ascending=[True, s.mode == "min"], kind="stable")
    cands = []
    for rank, (_, r) in enumerate(ok.head(top).iterrows(), start=1):
        tid = str(r["trial_id"])
        cfg_file = exp / f"trial_{tid}" / "config.yaml"
        cfg = _read_yaml(cfg_file, f"the config of trial {tid}")
        if data_root is not None:
            cfg["data_root"] = str(data_root)
        try:
            cfg = TrainConfig.from_dict(cfg, source=str(cfg_file)).to_dict()
        except (MonetError, TypeError) as e:
            raise BadInput(str(e)) from None
        cands.append(Candidate(name=f"trial_{tid}", trial_id=tid, family=str(cfg["family"]),
                               search_rank=rank, search_value=float(r["_v"]),
                               full_budget=not bool(r["_early"]), config=cfg))
    c0 = cands[0].config
    data_seed = int(c0["data_seed"] if c0.get("data_seed") is not None else c0["seed"])
    fold = int(c0["fold"]) if s.dataset in PROTOCOL_FOLDS else 1
    base = dict(saved["base"])
    if data_root is not None:
        base["data_root"] = str(data_root)
    return Search(path=exp, settings=s, base=base, fold=fold, data_seed=data_seed,
                  candidates=cands, n_finished=len(ok))


def parse_folds(text: str, dataset: str) -> tuple:
    """``--folds`` -> the folds to retrain on, checked against the dataset's protocol.

    Example:
        >>> parse_folds("all", "bp4d"), parse_folds("3,1", "disfa"), parse_folds("all", "toy")
        ((1, 2, 3), (1, 3), (1,))
    """
    allowed = PROTOCOL_FOLDS.get(dataset, (1,))
    if text.strip().lower() == "all":
        return allowed
    try:
        folds = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise BadInput(f"--folds: expected 'all' or comma-separated fold numbers, "
                       f"got {text!r}") from None
    bad = [f for f in folds if f not in allowed]
    if not folds or bad:
        if dataset in PROTOCOL_FOLDS:
            want = f"{dataset} has folds {', '.join(map(str, allowed))}"
        else:
            want = f"{dataset} has one fold, {FIXED_SPLIT.get(dataset, 'its fixed split')} (fold 1)"
        raise BadInput(f"--folds: {text!r} does not match the protocol; {want}")
    return tuple(folds)


# ---------------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Job:
    """One run: a configuration on one fold with one seed.

    Attributes:
        config_name: ``trial_<id>``; fold, seed: where and how it runs.
        phase: ``select`` (validation only) or ``final`` (test evaluated at the end).
        run_dir: ``<out>/runs/<config>/fold<f>/seed<s>``.
        config: the run's full TrainConfig as a dict.
        experiment: the search it comes from; trial_id: its trial there.
    """

    config_name: str
    fold: int
    seed: int
    phase: str
    run_dir: str
    config: dict
    experiment: str
    trial_id: str

    @property
    def key(self) -> tuple:
        return (self.config_name, self.fold, self.seed)

    @property
    def label(self) -> str:
        return f"{self.config_name}/fold{self.fold}/seed{self.seed}"


def read_result(run_dir) -> Optional[dict]:
    """The run's ``result.json``, or None when it has not finished a phase yet."""
    p = Path(run_dir) / RESULT_FILE
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def is_done(job: Job) -> bool:
    """Finished for ``job.phase``: validated (select) or also tested (final)."""
    r = read_result(job.run_dir)
    return r is not None and (job.phase == "select" or r.get("test") is not None)


def _clear_partial(run_dir: Path) -> None:
    """Leftovers of a run killed before its first checkpoint: start it clean."""
    for name in ("metrics.jsonl", "test_metrics.yaml", RESULT_FILE):
        p = run_dir / name
        if p.exists():
            p.unlink()
    if (run_dir / "events").is_dir():
        shutil.rmtree(run_dir / "events")


def _last_val(run_dir: Path, res: dict, cfg, data, last_round: int) -> dict:
    """The validation metrics of the run's last round: from ``metrics.jsonl``, or evaluated
    again when the run was killed between its last checkpoint and its log line."""
    from monet.train import build_loss_weights, evaluate, plan_steps

    total = plan_steps(cfg, len(data.train)).total_steps
    last = None
    try:
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            if line.strip():
                m = json.loads(line)
                if last is None or m["step"] >= last["step"]:
                    last = m
    except OSError:
        pass
    if last is not None and int(last["step"]) == total:
        return {k: v for k, v in last.items() if k.startswith("val/") or k in ("epoch", "round")}
    model = res["model"]
    w = build_loss_weights(cfg, data)
    val = evaluate(model, data.val, data.spec, cfg, w, data.prepare,
                   next(model.parameters()).device, cfg.seed)
    return {**{f"val/{k}": float(v) for k, v in val.items()}, "epoch": float(cfg.epochs),
            "round": int(last_round)}


def train_run(job: Job, data, threads: int = 1) -> dict:
    """One run (the body of the Ray task): fresh, resumed from the run folder's checkpoint, or
    (a finished selection run entering the final phase) only evaluated on test.

    Args:
        job: what to run and where.
        data: the run's :class:`monet.data.DataBundle`.
        threads: torch threads (the task's CPU share).

    Returns:
        The run's ``result.json`` content.
    """
    import torch

    from monet.config import TrainConfig
    from monet.io import atomic_write_json
    from monet.train import CHECKPOINT_FILE, fit, load_checkpoint

    torch.set_num_threads(max(1, int(threads)))
    cfg = TrainConfig.from_dict(job.config, source=job.label)
    if "cuda" in str(cfg.device) and not torch.cuda.is_available():
        cfg = cfg.replace(device="cpu")
    run_dir = Path(job.run_dir)
    ckpt = run_dir / "checkpoint" / CHECKPOINT_FILE
    previous = read_result(run_dir) or {}
    if ckpt.is_file():
        from_round, resume = int(load_checkpoint(ckpt)["round"]), str(ckpt)
    else:
        from_round, resume = 0, None
        if run_dir.is_dir():
            _clear_partial(run_dir)
    t0 = time.time()
    res = fit(cfg, data, run_dir=str(run_dir), resume_from=resume)
    last_round = int(res["metrics"]["round"]) if res["metrics"] else from_round
    val = _last_val(run_dir, res, cfg, data, last_round)
    attempt = {"phase": job.phase, "resumed_from_round": from_round,
               "rounds_trained": last_round - from_round, "seconds": time.time() - t0,
               "finished": time.time()}
    result = {
        "config": job.config_name, "trial_id": job.trial_id, "experiment": job.experiment,
        "fold": job.fold, "seed": job.seed, "phase": job.phase, "family": cfg.family,
        "epochs": float(cfg.epochs), "steps": int(res["steps"]), "val": val,
        "test": {k: float(v) for k, v in res["test"].items()} if res["test"] else None,
        "attempts": list(previous.get("attempts", [])) + [attempt],
    }
    atomic_write_json(run_dir / RESULT_FILE, result)
    return result


class Progress:
    """The live progress line on stderr: runs done / running / left and an ETA.

    On a terminal the line is redrawn in place; otherwise one line is printed per change.
    """

    def __init__(self, label: str, total: int, slots: int, stream=None):
        self.label, self.total, self.slots = label, total, max(1, slots)
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last = None
        self.durations = []

    def line(self, done: int, in_flight: int, failed: int = 0) -> str:
        running = min(in_flight, self.slots)
        left = self.total - done - failed - running
        if self.durations and (running + left):
            per = sum(self.durations) / len(self.durations)
            eta = _hms(per * math.ceil((running + left) / self.slots))
        else:
            eta = "0:00" if not (running + left) else "?"
        s = (f"{self.label}: {done}/{self.total} runs done, {running} running, {left} left, "
             f"ETA {eta}")
        return s + (f", {failed} failed" if failed else "")

    def show(self, done: int, in_flight: int, failed: int = 0, final: bool = False) -> None:
        s = self.line(done, in_flight, failed)
        if self.tty:
            self.stream.write("\r" + s.ljust(len(self.last or "")) + ("\n" if final else ""))
        elif s != self.last:
            self.stream.write(s + "\n")
        self.stream.flush()
        self.last = s


def _hms(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Runner:
    """Runs jobs as Ray tasks with the search's resources; counts finished runs for
    ``--stop-after``."""

    def __init__(self, settings, slots: int, stop_after: Optional[int] = None):
        import ray

        self.ray = ray
        self.remote = ray.remote(train_run).options(
            num_cpus=settings.cpus_per_trial, num_gpus=settings.gpus_per_trial, max_retries=0)
        self.threads = max(1, int(settings.cpus_per_trial))
        self.slots = slots
        self.stop_after = stop_after
        self.finished = 0
        self._data_refs = {}

    def _ref(self, key, bundle):
        if key not in self._data_refs:
            self._data_refs[key] = self.ray.put(bundle)
        return self._data_refs[key]

    def run(self, label: str, jobs: list, data_for) -> tuple:
        """Run ``jobs`` not finished yet; returns ``(results by job key, failures)``.

        Args:
            label: the progress line's label.
            jobs: the phase's jobs (finished ones are read back, not run).
            data_for: ``data_for(job) -> (key, DataBundle)``.
        """
        results, failures, todo = {}, [], []
        for j in jobs:
            if is_done(j):
                results[j.key] = read_result(j.run_dir)
            else:
                todo.append(j)
        resumable = sum((Path(j.run_dir) / "checkpoint" / "checkpoint.pt").is_file() for j in todo)
        print(f"{label}: {len(jobs)} runs: {len(jobs) - len(todo)} finished before, "
              f"{resumable} to resume, {len(todo) - resumable} to start", file=sys.stderr)
        progress = Progress(label, len(jobs), self.slots)
        pending = {}
        for j in todo:
            key, bundle = data_for(j)
            pending[self.remote.remote(j, self._ref(key, bundle), self.threads)] = j
        done0 = len(results)
        progress.show(done0, len(pending))
        while pending:
            ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                j = pending.pop(ref)
                try:
                    r = self.ray.get(ref)
                except Exception as e:
                    failures.append((j, _first_line(e)))
                    continue
                results[j.key] = r
                progress.durations.append(r["attempts"][-1]["seconds"])
                self.finished += 1
            progress.show(len(results), len(pending), len(failures), final=not pending)
            if self.stop_after is not None and self.finished >= self.stop_after and pending:
                for ref in pending:
                    self.ray.cancel(ref, force=True)
                raise Stopped(f"stopped after {self.finished} runs (--stop-after); "
                              f"run the same command again to finish")
        if self.stop_after is not None and self.finished >= self.stop_after:
            raise Stopped(f"stopped after {self.finished} runs (--stop-after); "
                          f"run the same command again to finish")
        return results, failures


def _first_line(e: Exception) -> str:
    cause = getattr(e, "cause", None) or e
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"


# ---------------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """Everything checked before anything is written or any run starts.

    Attributes:
        searches: one (single mode) or one per fold (``--nested``).
        folds: the folds each search's winner is retrained on (single: ``--folds``; nested:
            the search's own fold).
        seeds: ``0..S-1``; out: the output folder.
        bundles: loaded data, by :data:`DATA_FIELDS` key.
        leaks: ``(search index, fold) -> sorted list of the fold's test subjects that were
            validation subjects of the search`` (empty: no leak); subjects: whether the data
            has subject ids at all.
    """

    searches: list
    folds: dict
    seeds: tuple
    out: Path
    nested: bool
    bundles: dict = field(default_factory=dict)
    leaks: dict = field(default_factory=dict)
    subjects: bool = True

    @property
    def dataset(self) -> str:
        return self.searches[0].dataset

    def config_for(self, search: Search, cand: Candidate, fold: int, seed: int, test: bool) -> dict:
        """The run's TrainConfig: the trial's, with the seed replaced, the data seed kept and
        the search-only settings reset (:func:`search.settings.outside_search`: validation
        every round with the exact loss, a checkpoint every round), as in best_config.yaml."""
        from monet.config import TrainConfig

        from search.settings import outside_search

        d = outside_search(cand.config)
        d.update(seed=int(seed), data_seed=search.data_seed, test_at_end=bool(test))
        if self.dataset in PROTOCOL_FOLDS:
            d["fold"] = int(fold)
        return TrainConfig.from_dict(d, source=cand.name).to_dict()

    def job(self, search: Search, cand: Candidate, fold: int, seed: int, phase: str) -> Job:
        run_dir = self.out / "runs" / cand.name / f"fold{fold}" / f"seed{seed}"
        return Job(config_name=cand.name, fold=int(fold), seed=int(seed), phase=phase,
                   run_dir=str(run_dir), config=self.config_for(search, cand, fold, seed,
                                                                phase == "final"),
                   experiment=str(search.path), trial_id=cand.trial_id)

    def bundle(self, config: dict):
        """The DataBundle of ``config`` (loaded once per distinct data key)."""
        from monet.config import TrainConfig
        from monet.data import load_dataset

        key = data_key(config)
        if key not in self.bundles:
            c = TrainConfig.from_dict({**config, "test_at_end": False})
            self.bundles[key] = load_dataset(c)
        return key, self.bundles[key]


def data_key(config: dict) -> tuple:
    return tuple((f, config.get(f)) for f in DATA_FIELDS)


def _subjects(bundle, split: str) -> Optional[set]:
    key = f"{split}_subjects"
    if key in bundle.meta:
        return set(bundle.meta[key])
    s = getattr(getattr(bundle, split), "subjects", None)
    return set(s) if s is not None else None


def make_plan(a) -> Plan:
    """Check the arguments and the experiment folders; load the data of every fold.

    Raises:
        BadInput: anything that would stop the retrain (one line says what).
    """
    from monet.errors import MonetError

    if a.top < 1:
        raise BadInput(f"--top: got {a.top}; expected >= 1")
    if a.seeds < 1:
        raise BadInput(f"--seeds: got {a.seeds}; expected >= 1")
    if a.stop_after is not None and a.stop_after < 1:
        raise BadInput(f"--stop-after: got {a.stop_after}; expected >= 1")
    if a.nested:
        if a.experiment:
            raise BadInput("give either an experiment folder or --nested DIR1 DIR2 DIR3, not both")
        if a.folds.strip().lower() != "all":
            raise BadInput("--folds: not with --nested (each search retrains on its own --fold)")
        searches = [read_search(d, a.top, a.data_root) for d in a.nested]
        ds = {s.dataset for s in searches}
        if len(ds) > 1:
            raise BadInput(f"--nested: the searches are of different datasets "
                           f"({', '.join(f'{s.path.name}: {s.dataset}' for s in searches)})")
        dataset = searches[0].dataset
        if dataset not in PROTOCOL_FOLDS:
            raise BadInput(f"--nested: {dataset} has one fixed split, no folds to nest; "
                           f"retrain the one search without --nested")
        want = PROTOCOL_FOLDS[dataset]
        got = sorted(s.fold for s in searches)
        if got != list(want):
            raise BadInput(f"--nested: expected one search per fold {', '.join(map(str, want))} "
                           f"of {dataset}; got searches of fold(s) "
                           f"{', '.join(f'{s.path.name}: {s.fold}' for s in searches)}")
        if len({s.path for s in searches}) != len(searches):
            raise BadInput("--nested: the same experiment folder is given twice")
        searches.sort(key=lambda s: s.fold)
        names = [c.name for s in searches for c in s.candidates]
        if len(set(names)) != len(names):
            raise BadInput("--nested: two searches share a trial id; give distinct searches")
        folds = {i: (s.fold,) for i, s in enumerate(searches)}
        out = Path(a.out) if a.out else Path(os.path.commonpath([str(s.path) for s in searches])) \
            / "retrain-nested"
    else:
        if not a.experiment:
            raise BadInput("give the experiment folder (or --nested DIR1 DIR2 DIR3)")
        searches = [read_search(a.experiment, a.top, a.data_root)]
        folds = {0: parse_folds(a.folds, searches[0].dataset)}
        out = Path(a.out) if a.out else searches[0].path / "retrain"
    plan = Plan(searches=searches, folds=folds, seeds=tuple(range(a.seeds)),
                out=out.expanduser().resolve(), nested=bool(a.nested))
    _check_out(plan)
    # the data: a moved root fails here, before anything is written
    for s in searches:
        root = s.candidates[0].config.get("data_root")
        if s.dataset != "toy" and root and not Path(root).exists():
            raise BadInput(f"the search's data root {root} no longer exists (moved?); give its "
                           f"place with --data-root DIR")
    try:
        for i, s in enumerate(searches):
            c0 = s.candidates[0]
            _, sb = plan.bundle(plan.config_for(s, c0, s.fold, 0, False))
            val = _subjects(sb, "val")
            for f in (PROTOCOL_FOLDS.get(s.dataset, (1,)) if not plan.nested else folds[i]):
                _, fb = plan.bundle(plan.config_for(s, c0, f, 0, True))
                test = _subjects(fb, "test")
                if val is None or test is None:
                    plan.subjects = False
                    plan.leaks[(i, f)] = []
                else:
                    plan.leaks[(i, f)] = sorted(val & test)
    except MonetError as e:
        raise BadInput(f"loading the search's data: {e}") from None
    return plan


def _check_out(plan: Plan) -> None:
    """``--out`` must be new, or a retrain of the same experiment(s)."""
    f = plan.out / SETTINGS_FILE
    if plan.out.exists() and not plan.out.is_dir():
        raise BadInput(f"--out: {plan.out} is a file")
    if f.is_file():
        import yaml

        try:
            prev = yaml.safe_load(f.read_text()) or {}
        except Exception:
            prev = {}
        mine = [str(s.path) for s in plan.searches]
        if prev.get("experiments") != mine:
            raise BadInput(f"--out: {plan.out} holds the retrain of other experiment(s) "
                           f"({', '.join(prev.get('experiments') or ['?'])}); pick another --out")


# ---------------------------------------------------------------------------------- stages
def select_winners(plan: Plan, results: dict) -> list:
    """Per search: the candidates' validation means over seeds, best first.

    Returns:
        One list per search of dicts ``{candidate, values, mean, std}``, sorted best first (by
        the search's mode; ties keep the search's order).
    """
    out = []
    for s in plan.searches:
        rows = []
        for c in s.candidates:
            vals = [_num((results.get((c.name, s.fold, seed)) or {}).get("val", {}).get(s.metric))
                    for seed in plan.seeds]
            good = [v for v in vals if v is not None]
            mean = sum(good) / len(good) if good else float("nan")
            rows.append({"candidate": c, "values": vals, "mean": mean, "std": _std(good)})
        sign = -1.0 if s.mode == "max" else 1.0
        rows.sort(key=lambda r: _rank_key(r, sign))
        out.append(rows)
    return out


def _rank_key(row: dict, sign: float) -> tuple:
    """Best mean first (NaN means last); ties keep the search's order."""
    bad = math.isnan(row["mean"])
    return (bad, 0.0 if bad else sign * row["mean"], row["candidate"].search_rank)


def _num(v) -> Optional[float]:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def _std(vals: list) -> float:
    """Sample standard deviation (n - 1); NaN for fewer than two values."""
    if len(vals) < 2:
        return float("nan")
    m = sum(vals) / len(vals)
    return math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


# ---------------------------------------------------------------------------------- tables
def table_columns(spec, dataset: str) -> list:
    """``[(label, test metric key)]``: one column per task, then ``avg``.

    Example:
        >>> from monet.tasks import TaskSpec
        >>> table_columns(TaskSpec.binary(["AU1", "AU2"]), "bp4d")
        [('AU1', 'f1/AU1'), ('AU2', 'f1/AU2'), ('avg', 'mean_f1')]
    """
    cols = []
    for t in spec.tasks:
        if t.kind == "regression":
            cols.append((t.name, f"ccc/{t.name}"))
        elif t.kind == "binary" and dataset in ACC_DATASETS:
            cols.append((t.name, f"acc/{t.name}"))
        else:
            cols.append((t.name, f"f1/{t.name}"))
    if dataset == "affwild2":
        avg = "p_mtl"
    else:
        avg = "mean_acc" if dataset in ACC_DATASETS else "mean_f1"
    return cols + [("avg", avg)]


def unit_scale(dataset: str) -> float:
    """Ours are fractions; the tables show percent as the papers do (Aff-Wild2: raw)."""
    return 1.0 if dataset == "affwild2" else 100.0


def our_rows(plan: Plan, winners: list, results: dict, columns: list) -> list:
    """Rows of our test results: one per (configuration, fold), then the mean over folds."""
    scale = unit_scale(plan.dataset)
    rows, per_fold = [], []          # per_fold: (fold, {seed: {metric: value}})
    for i, s in enumerate(plan.searches):
        w = winners[i][0]["candidate"]
        for f in plan.folds[i]:
            by_seed = {seed: (results.get((w.name, f, seed)) or {}).get("test")
                       for seed in plan.seeds}
            by_seed = {k: v for k, v in by_seed.items() if v}
            per_fold.append((f, by_seed))
            rows.append(_row("ours", f"{w.name} ({w.family})", str(f), plan.leaks.get((i, f), []),
                             [by_seed], columns, scale, plan))
    if len(per_fold) > 1:
        if plan.nested:
            label = "nested: " + ", ".join(f"fold {s.fold}: {winners[i][0]['candidate'].name}"
                                           for i, s in enumerate(plan.searches))
        else:
            w = winners[0][0]["candidate"]
            label = f"{w.name} ({w.family})"
        leaks = sorted({x for i, s in enumerate(plan.searches) for f in plan.folds[i]
                        for x in plan.leaks.get((i, f), [])})
        all_folds = [f for f, _ in per_fold]
        fold_label = "all" if sorted(all_folds) == list(PROTOCOL_FOLDS.get(plan.dataset, (1,))) \
            else ",".join(map(str, all_folds))
        rows.append(_row("ours", label, fold_label, leaks, [b for _, b in per_fold], columns,
                         scale, plan))
    return rows


def _row(kind, config, fold, leak_subjects, folds_by_seed: list, columns, scale, plan) -> dict:
    """Mean +- std over seeds of the per-seed means over ``folds_by_seed`` (seeds that every
    fold has)."""
    seeds = set.intersection(*[set(b) for b in folds_by_seed]) if folds_by_seed else set()
    row = {"kind": kind, "config": config, "fold": fold,
           "leak": ("yes" if leak_subjects else "no") if plan.subjects else "no",
           "leak_subjects": " ".join(leak_subjects), "seeds": len(seeds)}
    for label, key in columns:
        per_seed = []
        for seed in sorted(seeds):
            vals = [b[seed].get(key) for b in folds_by_seed]
            if all(v is not None for v in vals):
                per_seed.append(scale * sum(vals) / len(vals))
        row[label] = sum(per_seed) / len(per_seed) if per_seed else float("nan")
        row[f"{label}_std"] = _std(per_seed)
    return row


def published_rows(plan: Plan, columns: list) -> tuple:
    """``(rows, notes)``: the published rows for this dataset and setting, and why others are
    not shown."""
    from monet.config import TrainConfig
    from monet.data.published import all_tables

    cfg = TrainConfig.from_dict(plan.searches[0].candidates[0].config)
    labels = [c for c, _ in columns]
    rows, notes = [], []
    tables = all_tables(plan.dataset)
    shown = {t.source for t in tables if t.matches(cfg)}
    for t in tables:
        if not t.matches(cfg):
            if t.source not in shown:      # e.g. toy Table 2 is T = 5; not the other subsets
                need = ", ".join(f"{k} = {v}" for k, v in t.match.items())
                have = ", ".join(f"{k} = {getattr(cfg, k, None)}" for k in t.match)
                notes.append(f"{t.source} is for {need} (this search: {have}); its rows are "
                             f"not shown")
            continue
        for name, vals in t.rows.items():
            row = {"kind": "published", "config": f"{t.source}: {name}", "fold": "", "leak": "",
                   "leak_subjects": "", "seeds": ""}
            byname = dict(zip(t.columns, vals))
            for lab in labels:
                row[lab] = byname.get(lab, float("nan"))
                row[f"{lab}_std"] = float("nan")
            rows.append(row)
        if t.note:
            notes.append(f"{t.source}: {t.note}")
    return rows, notes


def selection_rows(plan: Plan, ranked: list) -> list:
    rows = []
    for i, s in enumerate(plan.searches):
        best = ranked[i][0]["mean"]
        for pos, r in enumerate(ranked[i], start=1):
            c = r["candidate"]
            rows.append({
                "search": s.path.name, "fold": s.fold, "config": c.name, "family": c.family,
                "search_rank": c.search_rank, "search_value": c.search_value,
                "full_budget": c.full_budget, "metric": s.metric, "seeds": len(plan.seeds),
                "mean": r["mean"], "std": r["std"],
                "behind_winner": abs(best - r["mean"]) if pos > 1 else 0.0,
                "rank": pos, "winner": pos == 1,
                **{f"seed{seed}": v for seed, v in zip(plan.seeds, r["values"])}})
    return rows


def _fmt(v, std=None, digits=1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    s = f"{v:.{digits}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        s += f" ± {std:.{digits}f}"
    return s


def render_md(plan: Plan, ranked: list, rows: list, columns: list, notes: list) -> str:
    """``table.md``: the selection and the paper-layout table, with what the columns mean."""
    scale = unit_scale(plan.dataset)
    unit = "%" if scale == 100 else "raw"
    kind = {"mean_acc": "accuracy", "mean_f1": "F1", "p_mtl": "P_MTL"}[columns[-1][1]]
    d = 1 if scale == 100 else 3
    lines = [f"# Retrain: {plan.dataset}, test {kind} ({unit})", ""]
    seeds = ", ".join(map(str, plan.seeds))
    for i, s in enumerate(plan.searches):
        lines += [f"## Selection on the search's validation split: {s.path.name} (fold {s.fold})",
                  "",
                  f"The top {len(s.candidates)} of {s.n_finished} finished trials re-run with "
                  f"seeds {seeds} on the search's own validation split; `{s.metric}` "
                  f"({s.mode}), last round.", "",
                  "| rank | config | family | search rank | search value | mean ± std over seeds "
                  "| behind the winner |", "|---|---|---|---|---|---|---|"]
        for pos, r in enumerate(ranked[i], start=1):
            c = r["candidate"]
            behind = "" if pos == 1 else f"{abs(ranked[i][0]['mean'] - r['mean']):.4f}"
            lines.append(f"| {pos} | {c.name} | {c.family} | {c.search_rank}"
                         f"{'' if c.full_budget else ' (stopped early)'} | {c.search_value:.4f} | "
                         f"{_fmt(r['mean'], r['std'], 4)} | {behind} |")
        lines += ["", _verdict(s, ranked[i]), ""]
    lines += ["## Test results (paper layout)", ""]
    head = ["config", "fold", "leak", "seeds"] + [("Avg." if c == "avg" else c) for c, _ in columns]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["config"], r["fold"], r["leak"], str(r["seeds"])]
        cells += [_fmt(r[c], r[f"{c}_std"], d) for c, _ in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Ours: mean ± sample std over seeds ({seeds}); a fold row averages the seeds, "
                 f"the mean-over-folds row averages each seed over the folds first. Columns: "
                 f"{_column_text(columns)} on the test split"
                 f"{'' if scale != 100 else ' (percent)'}.")
    lines.append("")
    lines += _leak_text(plan)
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _column_text(columns: list) -> str:
    kinds = {"acc": "accuracy", "f1": "F1", "ccc": "CCC"}
    used = [kinds[k] for k in kinds if any(m.startswith(k + "/") for _, m in columns)]
    avg = {"mean_acc": "their mean", "mean_f1": "their mean",
           "p_mtl": "P_MTL (mean AU F1 + expression F1 + mean CCC)"}[columns[-1][1]]
    return f"{' / '.join(used)} per task, Avg. {avg},"


def _verdict(s: Search, ranked: list) -> str:
    w = ranked[0]
    c = w["candidate"]
    txt = (f"Winner: **{c.name}** ({c.family}, search rank {c.search_rank}), mean {w['mean']:.4f} "
           f"over the seeds")
    if len(ranked) > 1:
        txt += (f", ahead of {ranked[1]['candidate'].name} by "
                f"{abs(w['mean'] - ranked[1]['mean']):.4f}")
    top = next(r for r in ranked if r["candidate"].search_rank == 1)
    gap = top["candidate"].search_value - top["mean"]
    better_in_search = (gap > 0) == (s.mode == "max")
    if abs(gap) < 1e-12:
        how = "the same"
    else:
        how = f"{'optimism' if better_in_search else 'pessimism'} {abs(gap):.4f}"
    txt += (f". The search's own pick {top['candidate'].name} scored "
            f"{top['candidate'].search_value:.4f} in the search and {top['mean']:.4f} re-run "
            f"({how}).")
    if c.search_rank != 1:
        txt += " The re-runs overturned the search's ranking."
    return txt


def _leak_text(plan: Plan) -> list:
    split = FIXED_SPLIT.get(plan.dataset, "the fixed split")
    if not plan.subjects:
        return [f"leak: no. {plan.dataset} has no subject ids; its test split ({split}) is "
                f"disjoint from the search's validation split."]
    if plan.dataset not in PROTOCOL_FOLDS and not plan.leaks.get((0, 1)):
        return [f"leak: no. The test split ({split}) shares no subject with the search's "
                f"validation split."]
    out = []
    for i, s in enumerate(plan.searches):
        bad = {f: plan.leaks[(i, f)] for f in plan.folds[i] if plan.leaks.get((i, f))}
        if not bad:
            out.append(f"leak: no. None of the test subjects of fold(s) "
                       f"{', '.join(map(str, plan.folds[i]))} was a validation subject of "
                       f"{s.path.name} (fold {s.fold}).")
        else:
            out.append("leak: yes for " + "; ".join(
                f"fold {f} (its test subjects {', '.join(v)} were validation subjects of "
                f"{s.path.name})" for f, v in bad.items())
                + ". The configuration was chosen on them: those rows are optimistic. For a "
                  "leak-free table run one search per fold (`tune_monet.py --fold f`) and "
                  "`retrain.py --nested DIR1 DIR2 DIR3`.")
    return out


def write_tables(plan: Plan, ranked: list, results: dict) -> dict:
    """Write ``selection.csv``, ``table.csv`` and ``table.md``; returns the table rows."""
    import pandas as pd

    from monet.io import atomic_write_text

    spec = plan.bundle(plan.config_for(plan.searches[0], plan.searches[0].candidates[0],
                                       plan.searches[0].fold, 0, False))[1].spec
    columns = table_columns(spec, plan.dataset)
    ours = our_rows(plan, ranked, results, columns)
    pub, notes = published_rows(plan, columns)
    rows = ours + pub
    order = ["kind", "config", "fold", "leak", "leak_subjects", "seeds"]
    for c, _ in columns:
        order += [c, f"{c}_std"]
    atomic_write_text(plan.out / "table.csv", pd.DataFrame(rows, columns=order).to_csv(index=False))
    atomic_write_text(plan.out / "selection.csv",
                      pd.DataFrame(selection_rows(plan, ranked)).to_csv(index=False))
    atomic_write_text(plan.out / "table.md", render_md(plan, ranked, rows, columns, notes))
    return {"ours": ours, "columns": columns}


# ---------------------------------------------------------------------------------- CLI
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python search/retrain.py",
                description="Re-select the search's top configurations over seeds, retrain the "
                            "winner on every fold, and write the paper-layout table.")
    p.add_argument("experiment", nargs="?", help="the search's experiment folder")
    p.add_argument("--top", type=int, default=3, help="trials re-run for the selection (3)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..S-1 per configuration (3)")
    p.add_argument("--folds", default="all",
                   help="folds to retrain on: all (default) or e.g. 1,2 (BP4D/DISFA: 1..3; "
                        "other datasets have one fixed split, fold 1)")
    p.add_argument("--out", default=None, help="output folder (default: <experiment>/retrain)")
    p.add_argument("--nested", nargs="+", metavar="DIR", default=None,
                   help="one search per fold (tune_monet.py --fold f): each fold's "
                        "configuration is chosen by the search that kept that fold out")
    p.add_argument("--data-root", default=None,
                   help="where the search's data lives now, when it has moved")
    p.add_argument("--address", default=None,
                   help="Ray cluster (host:port, auto); default: $RAY_ADDRESS, else local")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray instance")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    """The CLI (see the module docstring). Returns the exit code."""
    a = build_parser().parse_args(argv)
    from monet.errors import MonetError
    from search import tune_monet

    try:
        plan = make_plan(a)
        address = a.address or os.environ.get("RAY_ADDRESS") or None
        started = tune_monet.start_ray(address, a.num_cpus)
    except (BadInput, tune_monet.BadInput, MonetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    import ray
    try:
        try:
            slots = _slots(plan.searches[0].settings, ray.cluster_resources())
        except BadInput as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return _run(plan, a, slots)
    except Stopped as e:
        print(str(e), file=sys.stderr)
        return EXIT_STOPPED
    finally:
        if started:
            ray.shutdown()


def _slots(s, res: dict) -> int:
    """Runs at once on the cluster with the search's per-run resources."""
    if s.gpus_per_trial > 0 and res.get("GPU", 0) < s.gpus_per_trial:
        raise BadInput(f"the search ran trials with {s.gpus_per_trial:g} GPU(s) each; this Ray "
                       f"cluster has {res.get('GPU', 0):g}")
    if res.get("CPU", 0) < s.cpus_per_trial:
        raise BadInput(f"the search ran trials with {s.cpus_per_trial:g} CPU(s) each; this Ray "
                       f"cluster has {res.get('CPU', 0):g}")
    n = res.get("CPU", 1) / s.cpus_per_trial
    if s.gpus_per_trial > 0:
        n = min(n, res.get("GPU", 0) / s.gpus_per_trial)
    return max(1, int(n))


def _save_settings(plan: Plan, a, winners=None) -> None:
    from monet.io import atomic_write_yaml

    doc = {"experiments": [str(s.path) for s in plan.searches], "nested": plan.nested,
           "dataset": plan.dataset, "top": a.top, "seeds": list(plan.seeds),
           "folds": {s.path.name: list(plan.folds[i]) for i, s in enumerate(plan.searches)},
           "data_root": a.data_root}
    if winners is not None:
        doc["winners"] = {s.path.name: winners[i][0]["candidate"].name
                          for i, s in enumerate(plan.searches)}
    atomic_write_yaml(plan.out / SETTINGS_FILE, doc)


def _run(plan: Plan, a, slots: int) -> int:
    runner = Runner(plan.searches[0].settings, slots, stop_after=a.stop_after)
    plan.out.mkdir(parents=True, exist_ok=True)
    _save_settings(plan, a)

    def data_for(job: Job):
        return plan.bundle(job.config)

    sel = [plan.job(s, c, s.fold, seed, "select")
           for s in plan.searches for c in s.candidates for seed in plan.seeds]
    results, failures = runner.run("selection", sel, data_for)
    if failures:
        return _report_failures(failures)
    ranked = select_winners(plan, results)
    for i, s in enumerate(plan.searches):
        if math.isnan(ranked[i][0]["mean"]):
            print(f"error: no selection run of {s.path.name} has a finite {s.metric}",
                  file=sys.stderr)
            return EXIT_FAILED
    final = [plan.job(s, ranked[i][0]["candidate"], f, seed, "final")
             for i, s in enumerate(plan.searches) for f in plan.folds[i] for seed in plan.seeds]
    fin, failures = runner.run("retrain", final, data_for)
    if failures:
        return _report_failures(failures)
    tables = write_tables(plan, ranked, fin)
    _save_settings(plan, a, ranked)
    _print_summary(plan, ranked, tables)
    return 0


def _report_failures(failures: list) -> int:
    for job, msg in failures:
        print(f"error: run {job.label} failed: {msg}", file=sys.stderr)
    return EXIT_FAILED


def _print_summary(plan: Plan, ranked: list, tables: dict) -> None:
    for i, s in enumerate(plan.searches):
        print(_verdict(s, ranked[i]).replace("**", ""))
    d = 1 if unit_scale(plan.dataset) == 100 else 3
    for r in tables["ours"]:
        print(f"  {r['config']}  fold {r['fold']}: test avg {_fmt(r['avg'], r['avg_std'], d)}"
              f"  (leak: {r['leak']})")
    print(f"files: {plan.out}/table.md, table.csv, selection.csv, runs/")


if __name__ == "__main__":
    # run as the module search.retrain, so Ray pickles train_run by reference
    from search.retrain import main as _main
    sys.exit(_main())
