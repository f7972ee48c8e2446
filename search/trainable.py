"""``monet.train.fit`` wrapped as a Ray Tune function trainable.

One trial = one ``fit`` run in the trial's folder (``config.yaml``, ``metrics.jsonl``,
tensorboardX ``events/``, beside Ray's own ``result.json``/``progress.csv``). After every
evaluation round the trainable reports the flat metrics with ``tune.report`` and, on rounds that
wrote one, a checkpoint with ``tune.Checkpoint.from_directory``. A retried or resumed trial
continues from its latest checkpoint bit-exactly.

Where the checkpoint lives: the trial's own ``checkpoint/checkpoint.pt``, in the local experiment
folder or, for an experiment in object storage, as one object
``<uri>/trial_<id>/checkpoint/checkpoint.pt`` (overwritten whole each round); Ray is given a small
pointer checkpoint. Ray's record of a trial's latest checkpoint is saved every few seconds, so
after a crash it may name an older one: had Ray kept the checkpoints themselves with
``num_to_keep``, it could name one already deleted (``Could not recover from checkpoint as it
does not exist on storage anymore``), and the trial would fail on ``--resume``.

Besides ``fit``'s metrics every report carries ``budget`` (share of the trial's epoch budget done,
1.0 at the end: the searcher's COMPLETE/PRUNED test), ``node_id`` and ``restored_round`` (the
round the attempt resumed from; 0 for a fresh start).

The data is loaded once by the driver and handed over with ``tune.with_parameters``, with the
fixed TrainConfig fields and the per-trial runtime settings (threads, fault injection, the
experiment folder), which never ride inside the searched config::

    trainable = tune.with_parameters(train_trial, data=bundle, base=base_config_dict,
                                     runtime=TrialRuntime(threads=1, exp_dir="results/exp"))
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Optional

import ray
import torch
from ray import tune
from ray.tune.utils import flatten_dict

from monet.errors import NonFiniteLossError
from monet.io import atomic_write_bytes
from monet.train import CHECKPOINT_FILE, fit, load_checkpoint, plan_steps
from search.settings import TrialRuntime
from search.spaces import TRIAL_NUMBER_KEY, trial_to_train_config
from search.storage import ExperimentStore

NONFINITE_MARK = "nonfinite.txt"     # left in the trial folder: a retry fails at once
ATTEMPTS_LOG = "attempts.jsonl"      # one line per start of the trial (fresh, retry, resume)
POINTER_FILE = "pointer.json"        # what Ray's checkpoint holds for a local experiment


class InjectedFault(RuntimeError):
    """Raised by ``--inject-fault raise``: a deliberate fault for drills and tests."""


def parse_fault(spec: Optional[str]) -> Optional[dict]:
    """``--inject-fault`` text -> dict.

    Form: ``KIND[,round=R][,every=N][,once]`` with KIND ``raise`` (an exception after round R's
    report) or ``nan`` (the trial trains with lr=1e9, so its loss really becomes non-finite).
    ``every=N`` picks the trials whose Optuna trial number is a multiple of N (default: every
    trial); ``once`` faults only on a fresh start, so a retry from the checkpoint succeeds.
    """
    if not spec:
        return None
    from monet.errors import ConfigError

    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts or parts[0] not in ("raise", "nan"):
        raise ConfigError(f"--inject-fault: expected raise|nan[,round=R][,every=N][,once], "
                          f"got {spec!r}")
    out = {"kind": parts[0], "round": 1, "every": 1, "once": False}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        if k == "once" and not v:
            out["once"] = True
        elif k in ("round", "every") and v.isdigit() and int(v) >= 1:
            out[k] = int(v)
        else:
            raise ConfigError(f"--inject-fault: bad part {p!r}; expected round=R, every=N or once")
    return out


def _clean(metrics: dict) -> dict:
    """Only finite numbers go to Tune (ASHA and the loggers need numbers)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            out[k] = int(v)
        elif isinstance(v, (int, float)) and math.isfinite(v):
            out[k] = v
    return out


def trial_dirname_of(trial_id: str) -> str:
    return f"trial_{trial_id}"


def trial_dirname(trial) -> str:
    """Short trial folder names (Ray's default spells out every parameter)."""
    return trial_dirname_of(trial.trial_id)


def train_trial(config: dict, data=None, base: Optional[dict] = None,
                runtime: Optional[TrialRuntime] = None) -> None:
    """The Tune function trainable: one ``monet.train.fit`` run.

    Args:
        config: the trial's parameters from the search space (nested by Ray on ``/``).
        data: the :class:`monet.data.DataBundle` loaded once by the driver.
        base: fixed TrainConfig fields from the flags.
        runtime: threads, fault injection and the experiment folder (:class:`TrialRuntime`).
    """
    runtime = runtime or TrialRuntime()
    fault, exp_dir = runtime.fault, runtime.exp_dir
    remote = ExperimentStore(runtime.exp_uri) if runtime.exp_uri and not exp_dir else None
    torch.set_num_threads(max(1, int(runtime.threads)))
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    # A local experiment folder (shared by all nodes, as Ray requires): write straight into the
    # trial's folder there, so files survive --resume. Otherwise Ray syncs the staging folder.
    trial_dir = Path(exp_dir) / trial_dirname_of(trial_id) if exp_dir else Path(ctx.get_trial_dir())
    params = flatten_dict(dict(config), delimiter="/")
    number = int(params.get(TRIAL_NUMBER_KEY, 0))
    faulty = fault is not None and number % fault["every"] == 0
    if faulty and fault["kind"] == "nan":
        params["lr"] = 1e9
    cfg = trial_to_train_config(base or {}, params)
    if "cuda" in str(cfg.device) and not torch.cuda.is_available():
        import os
        raise RuntimeError(f"trial {tune.get_context().get_trial_id()} was given GPU(s) by Ray "
                           f"but torch sees none (CUDA_VISIBLE_DEVICES="
                           f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}, torch "
                           f"{torch.__version__}); it does not fall back to the CPU")
    total = plan_steps(cfg, len(data.train)).total_steps
    node_id = ray.get_runtime_context().get_node_id()

    # Where to continue from: the trial's own latest checkpoint (local experiment folder), else
    # the checkpoint Ray restored (remote storage). Ray's own record may be older than ours.
    own = trial_dir / "checkpoint" / CHECKPOINT_FILE
    own_key = f"{trial_dirname_of(trial_id)}/checkpoint/{CHECKPOINT_FILE}"
    if remote is not None and not own.is_file():   # object storage: the trial's own object
        try:
            atomic_write_bytes(own, remote.read_bytes(own_key))
        except FileNotFoundError:
            pass
    ray_ckpt = tune.get_checkpoint()
    restored = own.is_file() or ray_ckpt is not None
    attempt = {"time": time.time(), "restored": restored, "node_id": node_id}
    trial_dir.mkdir(parents=True, exist_ok=True)
    with open(trial_dir / ATTEMPTS_LOG, "a") as f:
        f.write(json.dumps(attempt) + "\n")
    if (trial_dir / NONFINITE_MARK).exists():   # a retry cannot cure a non-finite loss
        raise NonFiniteLossError((trial_dir / NONFINITE_MARK).read_text().strip())

    state = {"restored_round": 0}

    def report(metrics: dict, checkpoint_dir: Optional[str], replay: bool = False) -> None:
        m = _clean(metrics)
        m["budget"] = min(1.0, int(metrics["step"]) / total)
        m["restored_round"] = state["restored_round"]
        m["node_id"] = node_id
        if checkpoint_dir and (exp_dir or remote is not None):
            # Ray records a small pointer (so Ray can keep every one and never points at a
            # deleted checkpoint after a crash); the state stays in checkpoint/, in the local
            # experiment folder or uploaded whole to object storage before the report.
            where = str(own)
            if remote is not None:
                remote.write_bytes(own_key, (Path(checkpoint_dir) / CHECKPOINT_FILE).read_bytes())
                where = remote.shown(own_key)
            with tempfile.TemporaryDirectory(prefix="monet-pointer-") as td:
                (Path(td) / POINTER_FILE).write_text(json.dumps(
                    {"file": where, "round": int(metrics["round"])}))
                tune.report(m, checkpoint=tune.Checkpoint.from_directory(td))
        elif checkpoint_dir:
            tune.report(m, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))
        else:
            tune.report(m)
        if (not replay and faulty and fault["kind"] == "raise"
                and int(metrics["round"]) == fault["round"]
                and not (fault["once"] and restored)):
            raise InjectedFault(f"injected fault after round {fault['round']} "
                                f"(--inject-fault) in trial {trial_id}")

    def resume_from(ckpt_path: str) -> None:
        ck = load_checkpoint(ckpt_path)
        state["restored_round"] = int(ck["round"])
        if ck.get("last"):
            # Report the checkpoint's round again before training on: the scheduler then judges
            # the trial where it stood. A trial that finished before the driver saved that it
            # had ends with its final result (instead of training nothing and ending without
            # one); a trial ASHA stopped at this round before a crash is stopped here, at this
            # round (the saved decision stands), not one round later.
            report(dict(ck["last"]), str(Path(ckpt_path).parent if Path(ckpt_path).is_file()
                                         else ckpt_path), replay=True)
        if int(ck["step"]) >= total:
            return
        fit(cfg, data, report=report, run_dir=str(trial_dir), resume_from=ckpt_path)

    try:
        if own.is_file():
            resume_from(str(own))
        elif ray_ckpt is not None:
            with ray_ckpt.as_directory() as d:
                resume_from(d)
        else:
            fit(cfg, data, report=report, run_dir=str(trial_dir))
    except NonFiniteLossError as e:
        (trial_dir / NONFINITE_MARK).write_text(str(e) + "\n")
        raise
