"""Hyperparameter search for monet models: Optuna (TPE) suggests, Ray Tune runs, ASHA stops.

The command users run::

    python search/tune_monet.py                        # small MONET search on toy data, local Ray
    python search/tune_monet.py --dataset toy --family vmnc --num-samples 3 --max-epochs 3 \\
        --storage-path results --name smoke
    python search/tune_monet.py --dataset bp4d --data-root /data/BP4D --family all \\
        --space my_space.yaml --num-samples 200 --max-epochs 10 --eval-every 0.25 \\
        --gpus-per-trial 0.25 --address auto --optuna-storage sqlite:///bp4d.db
    python search/tune_monet.py --storage-path results --name smoke --resume
    python search/tune_monet.py --storage-path s3://bucket/results --name smoke   # object storage

Everything lands in ``<storage-path>/<name>/``: ``config.yaml`` (resolved flags and space),
``trials.parquet``/``trials.csv``, ``best_config.yaml``, one folder per trial (TensorBoard events,
metrics.jsonl, checkpoints) and Ray's experiment state (for ``--resume``). ``--storage-path`` may
be a URI that ``pyarrow.fs.FileSystem.from_uri`` accepts (``s3://``, ``gs://``, with query
options such as ``?endpoint_override=...``): the same files then go to object storage, the trials'
checkpoints through Ray, and the Optuna study is kept in Ray's saved searcher state unless
``--optuna-storage`` is given.

Bad input (unknown dataset/family, missing data root, bad space file, unreachable ``--address``,
GPUs asked on a cluster without any) ends with one ``error:`` line and exit code 2 before any
trial starts.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import math
import os
import socket
import sys
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.settings import DATA_FLAGS, SearchSettings, TrialRuntime  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
EXIT_BAD_INPUT = 2
EXIT_NO_RESULT = 1
EXIT_SIGTERM = 128 + 15

# defaults of the no-argument run: a small MONET search on toy data that takes a few minutes
DEFAULTS = dict(dataset="toy", family="monet", T=5, num_samples=16, max_epochs=30.0,
                eval_every=1.0, grace_period=2.0, reduction_factor=5.0,
                checkpoint_period=10.0)


def default_grace(max_epochs: float, eval_every: float = 1.0) -> float:
    """ASHA's default grace period: ``max_epochs / 15``, at least one evaluation round.

    With the default reduction factor of 5, replayed on the 32 recorded toy MONET curves of the
    ASHA-vs-FIFO benchmark in 300 random trial orders (``benchmarks/asha_replay.py``), ASHA used
    0.26 of FIFO's trial-epochs on average, <= 1/3 in 93% of the orders, and found FIFO's winner
    in all of them; ``max_epochs / 10`` with factor 3 (the old default): 0.33, 54-60%, 89-99%
    (README, "Search efficiency")."""
    return max(float(eval_every), float(max_epochs) / 15)


class BadInput(Exception):
    """A flag, file or cluster problem found before any trial starts (exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    from monet.cli import ArgumentParser, add_config_flags

    p = ArgumentParser(prog="python search/tune_monet.py",
                       description="Optuna-suggested trials on Ray Tune with ASHA for monet models.")
    p.add_argument("--dataset", default=DEFAULTS["dataset"], help="dataset name (default: toy)")
    add_config_flags(p, only=[f.field for f in DATA_FLAGS],
                     group="data (fixed for every trial; TrainConfig fields)")
    g = p.add_argument_group("search")
    g.add_argument("--family", default=DEFAULTS["family"],
                   help="model family (vmnc, vmns, mrnn, monet, oracle) or 'all'")
    g.add_argument("--space", default=None, help="YAML file overriding the search space")
    g.add_argument("--metric", default=None,
                   help="validation metric to optimise (default: val/mean_acc; face AU data: "
                        "val/mean_f1; Aff-Wild2: val/p_mtl)")
    g.add_argument("--mode", choices=("max", "min"), default=None,
                   help="default: min for *loss metrics, else max")
    g.add_argument("--num-samples", type=int, default=DEFAULTS["num_samples"], metavar="N",
                   help="trials in all (with --resume: more than before extends the search)")
    g.add_argument("--max-epochs", type=float, default=DEFAULTS["max_epochs"],
                   help="epoch budget of a full trial (ASHA's max_t)")
    g.add_argument("--eval-every", type=float, default=DEFAULTS["eval_every"],
                   help="evaluation round length in epochs (fractions allowed): ASHA's clock")
    g.add_argument("--eval-rounds", choices=("decisions", "all"), default="decisions",
                   help="rounds that evaluate on validation: 'decisions' (default) only where "
                        "the scheduler decides (ASHA's rungs) and the last round, 'all' every "
                        "round (learning curves; costs about as much as training on small "
                        "data); with --time-budget or --trial-timeout every round")
    g.add_argument("--val-loss", choices=("exact", "sampled"), default=None,
                   help="MONET's val/loss in trials: 'sampled' (default) over the L orders the "
                        "evaluation's trajectories draw from pi, an unbiased estimate of the "
                        "mixture likelihood at about L/M of the cost; 'exact' over all M orders "
                        "(the default when --metric is a loss); retrains are always exact")
    g.add_argument("--grace-period", type=float, default=None,
                   help="epochs before ASHA may stop a trial (default: max-epochs/15, "
                        "at least one round)")
    g.add_argument("--reduction-factor", type=float, default=DEFAULTS["reduction_factor"],
                   metavar="X", help="ASHA: a share 1/X of the trials go on at each rung")
    g.add_argument("--scheduler", choices=("asha", "fifo"), default="asha",
                   help="fifo runs every trial to the full budget")
    g.add_argument("--sampler", choices=("tpe", "tpe-mv", "tpe-rung", "tpe-last", "random"), default="tpe",
                   help="Optuna sampler: tpe (each parameter on its own, constant liar), tpe-mv "
                        "(multivariate TPE, conditional parameters grouped), tpe-rung (tpe "
                        "comparing trials at one common budget, BOHB's rule), random")
    g.add_argument("--n-startup-trials", type=int, default=None, metavar="N",
                   help="random trials before TPE (default: num-samples/4, 3..10)")
    g.add_argument("--constant-liar", choices=("on", "off"), default="on", metavar="on|off",
                   help="TPE's constant liar: running trials count as bad ones, so parallel "
                        "suggestions spread out (on, default) or are ignored (off: Optuna's and "
                        "Ray's OptunaSearch default)")
    g.add_argument("--tpe-history", type=int, default=1000, metavar="N",
                   help="TPE looks at the best trials and the latest N finished ones, so that "
                        "suggestions do not slow down as the study grows (0: all; default 1000)")
    g.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                   help="trials at once (default: what the cluster's CPUs/GPUs allow)")
    g.add_argument("--time-budget", type=float, default=None, help="seconds for the whole search")
    g.add_argument("--seed", type=int, default=0, help="sampler seed and every trial's seed")
    g.add_argument("--optuna-storage", default=None, metavar="URL",
                   help="the study's storage: sqlite:///study.db or journal:FILE (shared disks); "
                        "default: study.db in the experiment folder")
    g.add_argument("--trial-timeout", type=float, default=None, metavar="S",
                   help="seconds a trial may run; then it is stopped (PRUNED in Optuna)")
    g.add_argument("--checkpoint-period", type=float, default=DEFAULTS["checkpoint_period"],
                   metavar="S", help="a trial writes a checkpoint where it evaluates (where ASHA "
                   "may stop it), at its last round, and at other rounds once S seconds have "
                   "passed since its last one: a resumed or retried trial redoes at most about "
                   "S seconds (0: every round)")
    g.add_argument("--warm-start", default=None, metavar="PATH",
                   help="start with the best configs of another search: its experiment folder "
                        "or sqlite:///file.db#study_name")
    g.add_argument("--warm-start-top", type=int, default=5, metavar="K",
                   help="how many configs --warm-start takes (5)")
    g = p.add_argument_group("resources and Ray")
    g.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="X",
                   help="CPUs of one trial (also its torch threads)")
    g.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="X",
                   help="fractions pack several small trials on one GPU")
    g.add_argument("--no-reuse-actors", dest="reuse_actors", action="store_false",
                   help="a new Ray actor (process) per trial; by default a trial slot's actor "
                        "runs one trial after another and keeps the data it was handed")
    g.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs of a local Ray instance (default: all of this machine's)")
    g.add_argument("--address", default=None,
                   help="Ray cluster (host:port, auto, ray://...); default: $RAY_ADDRESS, "
                        "else a local instance")
    g.add_argument("--storage-path", default="results",
                   help="experiment storage: a local folder or a pyarrow URI (s3://bucket/prefix, "
                        "gs://bucket/prefix, ?endpoint_override=... allowed)")
    g.add_argument("--name", default=None, help="experiment name (default: dataset-family-time)")
    g.add_argument("--resume", action="store_true",
                   help="continue the experiment --storage-path/--name; with a larger "
                        "--num-samples (or --time-budget) it is extended")
    g.add_argument("--max-failures", type=int, default=0,
                   help="retries of a failed trial, from its last checkpoint")
    g.add_argument("--verbose", type=int, default=1, help="0 quiet, 1 table, 2 every result")
    g.add_argument("--inject-fault", default=None, help=argparse.SUPPRESS)
    return p


# ---------------------------------------------------------------------------------- checks
def default_metric(dataset: str) -> str:
    if dataset in ("bp4d", "disfa"):
        return "val/mean_f1"
    if dataset == "affwild2":
        return "val/p_mtl"
    return "val/mean_acc"


def resolve(a) -> SearchSettings:
    """Flags -> the resolved experiment settings (what config.yaml records)."""
    from monet.data import list_datasets
    from monet.models import list_families
    from search.searcher import absolute_storage_url

    datasets = list_datasets()
    if a.dataset not in datasets:
        raise BadInput(f"--dataset: unknown dataset {a.dataset!r}; expected one of {datasets}")
    families = list_families()
    if a.family == "all":
        from search.spaces import FAMILIES_ALL
        fams = [f for f in FAMILIES_ALL if f in families]
    elif a.family in families:
        fams = [a.family]
    else:
        raise BadInput(f"--family: unknown family {a.family!r}; expected one of "
                       f"{families + ['all']}")
    for flag, v, ok, want in (
            ("--num-samples", a.num_samples, a.num_samples >= 1, ">= 1"),
            ("--max-epochs", a.max_epochs, a.max_epochs > 0, "> 0"),
            ("--eval-every", a.eval_every, 0 < a.eval_every <= a.max_epochs,
             f"in (0, --max-epochs={a.max_epochs:g}]"),
            ("--reduction-factor", a.reduction_factor, a.reduction_factor > 1, "> 1"),
            ("--cpus-per-trial", a.cpus_per_trial, a.cpus_per_trial > 0, "> 0"),
            ("--gpus-per-trial", a.gpus_per_trial, a.gpus_per_trial >= 0, ">= 0"),
            ("--max-failures", a.max_failures, a.max_failures >= 0, ">= 0")):
        if not ok:
            raise BadInput(f"{flag}: got {v!r}; expected {want}")
    if a.num_cpus is not None and a.num_cpus < 1:
        raise BadInput(f"--num-cpus: got {a.num_cpus}; expected >= 1")
    if a.max_concurrent is not None and a.max_concurrent < 1:
        raise BadInput(f"--max-concurrent: got {a.max_concurrent}; expected >= 1")
    if a.time_budget is not None and not a.time_budget > 0:
        raise BadInput(f"--time-budget: got {a.time_budget}; expected seconds > 0")
    if a.trial_timeout is not None and not a.trial_timeout > 0:
        raise BadInput(f"--trial-timeout: got {a.trial_timeout}; expected seconds > 0")
    if not 0 <= a.checkpoint_period < 1e9:
        raise BadInput(f"--checkpoint-period: got {a.checkpoint_period}; expected seconds >= 0")
    if a.tpe_history < 0:
        raise BadInput(f"--tpe-history: got {a.tpe_history}; expected >= 0 (0: all trials)")
    if a.warm_start_top < 1:
        raise BadInput(f"--warm-start-top: got {a.warm_start_top}; expected >= 1")
    grace = a.grace_period
    if grace is None:
        grace = default_grace(a.max_epochs, a.eval_every)
    if not 0 < grace <= a.max_epochs:
        raise BadInput(f"--grace-period: got {grace:g}; expected in (0, --max-epochs={a.max_epochs:g}]")
    metric = a.metric or default_metric(a.dataset)
    if not metric.startswith(("val/", "train/", "order/")):
        raise BadInput(f"--metric: {metric!r} is not a training/validation metric; expected "
                       f"val/... (the search never looks at the test split)")
    n_startup = a.n_startup_trials
    if n_startup is None:
        n_startup = int(min(10, max(3, a.num_samples // 4)))
    storage = str(a.storage_path)
    if "://" not in storage:
        from monet.cli import check_writable_dir
        storage = str(check_writable_dir(Path(storage).expanduser().resolve(), "--storage-path"))
    else:
        _check_storage_uri(storage)
    name = a.name or f"{a.dataset}-{a.family}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    if not name or "/" in name or name.startswith("."):
        raise BadInput(f"--name: {name!r} is not a plain folder name")
    return SearchSettings(
        dataset=a.dataset, families=tuple(fams), family=a.family, space=a.space, metric=metric,
        mode=a.mode or ("min" if metric.endswith("loss") else "max"),
        num_samples=a.num_samples, max_epochs=float(a.max_epochs),
        eval_every=float(a.eval_every), grace_period=float(grace),
        reduction_factor=float(a.reduction_factor), scheduler=a.scheduler, sampler=a.sampler,
        n_startup_trials=n_startup, tpe_history=a.tpe_history,
        constant_liar=a.constant_liar == "on", max_concurrent=a.max_concurrent,
        time_budget=a.time_budget,
        seed=a.seed, optuna_storage=absolute_storage_url(a.optuna_storage),
        cpus_per_trial=float(a.cpus_per_trial), gpus_per_trial=float(a.gpus_per_trial),
        max_failures=a.max_failures, storage_path=storage, name=name,
        inject_fault=a.inject_fault, trial_timeout=a.trial_timeout, warm_start=a.warm_start,
        warm_start_top=a.warm_start_top, reuse_actors=a.reuse_actors, eval_rounds=a.eval_rounds,
        val_loss=a.val_loss or ("exact" if metric.endswith("loss") else "sampled"),
        checkpoint_period=float(a.checkpoint_period))


def decision_epochs(s: SearchSettings) -> Optional[list]:
    """The epochs at which a trial must report the metric (``TrainConfig.eval_at``): ASHA's rung
    milestones as Ray computes them, or none for FIFO (the last round is always evaluated);
    None (every round) with ``--eval-rounds all``, or when a time limit may end a trial at any
    round (``--time-budget``, ``--trial-timeout``)."""
    if s.eval_rounds == "all" or s.time_budget or s.trial_timeout:
        return None
    from search.analyze import asha_rungs

    return [m for m in asha_rungs(dataclasses.asdict(s)) if m < s.max_epochs]


def base_config(a, s: SearchSettings) -> dict:
    """Fixed TrainConfig fields of every trial (the data flags and the search's own), validated."""
    from monet.config import TrainConfig

    d = {"dataset": s.dataset, "epochs": s.max_epochs, "eval_every": s.eval_every,
         "seed": s.seed, "tensorboard": True, "test_at_end": False, "checkpoint_every": 1,
         "checkpoint_period_s": s.checkpoint_period or None,
         "family": s.families[0], "val_loss": s.val_loss}
    for f in DATA_FLAGS:
        v = getattr(a, f.field, None)
        if v is not None:
            d[f.field] = v
    if s.dataset == "toy" and "T" not in d:
        d["T"] = DEFAULTS["T"]
    if s.gpus_per_trial > 0:
        d["device"] = "cuda"
    TrainConfig.from_dict(d, source="flags")     # the flags' values first (one line, exit 2)
    d["eval_at"] = decision_epochs(s)
    return d


def _check_storage_uri(uri: str) -> None:
    """A ``--storage-path`` URI pyarrow cannot open is refused in one line."""
    from search.storage import ExperimentStore

    try:
        ExperimentStore(uri).check()
    except ValueError as e:
        raise BadInput(f"--storage-path: {e}") from None


def experiment_dir(s: SearchSettings):
    """The local experiment folder, or None when results go to object storage."""
    if s.is_remote:
        return None
    return Path(s.storage_path) / s.name


def experiment_path(s: SearchSettings) -> str:
    """The experiment's location as Ray takes it (a local folder or a URI, query kept last)."""
    from search.storage import join_location

    return join_location(s.storage_path, s.name)


def experiment_store(s: SearchSettings):
    """The experiment's :class:`~search.storage.ExperimentStore` (local folder or URI)."""
    from search.storage import ExperimentStore

    return ExperimentStore(experiment_path(s))


def check_address(address: str) -> None:
    """Fail fast (one line) when a host:port address has nobody listening."""
    if address in ("auto", "local"):
        return
    hp = address.split("://", 1)[-1]
    host, _, port = hp.rpartition(":")
    if not host or not port.isdigit():
        raise BadInput(f"--address: {address!r}; expected host:port, ray://host:port or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as e:
        raise BadInput(f"--address: cannot reach a Ray cluster at {address} "
                       f"({e.strerror or e})") from None


def start_ray(address, num_cpus):
    """Connect to ``address`` or start a local instance; returns True if we started/connected."""
    import ray

    if ray.is_initialized():
        return False
    env_path = os.pathsep.join([str(REPO_ROOT)] + [p for p in
                               os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    os.environ["PYTHONPATH"] = env_path          # local workers inherit the driver's env
    if address:
        check_address(address)
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False,
                     runtime_env={"py_modules": [str(REPO_ROOT / "monet"),
                                                 str(REPO_ROOT / "search")]})
        except Exception as e:
            raise BadInput(f"--address: cannot connect to the Ray cluster at {address}: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    else:
        _start_local_ray(num_cpus)
    return True


_LOCAL = {}   # the guards of the local Ray instance start_ray started (see search/ray_guard.py)


def _start_local_ray(num_cpus) -> None:
    """A local instance on 127.0.0.1 with a token of its own, a watchdog that ends its
    processes when this driver ends however it ends, and SIGTERM handled as a Ctrl+C (Tune
    saves the experiment, then Ray is shut down)."""
    import signal

    import ray
    from search.ray_guard import private_token_env, session_dir_of_ray, start_watchdog

    token = private_token_env()
    token.__enter__()
    try:
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="ERROR",
                 log_to_driver=False, _node_ip_address="127.0.0.1")
        session = session_dir_of_ray()
        _LOCAL.update(token=token, watchdog=start_watchdog(session) if session else None)
    except BaseException:
        token.__exit__(None, None, None)
        raise
    try:
        _LOCAL["sigterm"] = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:          # not the main thread: no signal handling
        pass


def _on_sigterm(signum, frame):
    import signal

    if _LOCAL.get("terminated"):            # a second SIGTERM: stop now
        raise SystemExit(128 + signum)
    _LOCAL["terminated"] = True
    print("stopping: SIGTERM received; the experiment is saved and can be continued with "
          "--resume", file=sys.stderr)
    signal.raise_signal(signal.SIGINT)      # Tune's graceful stop (or KeyboardInterrupt)


def stop_ray() -> None:
    """Shut down what :func:`start_ray` started; for a local instance, also the watchdog, the
    SIGTERM handler and the search's token (the environment is as it was before)."""
    import signal

    import ray

    try:
        ray.shutdown()
    finally:
        if _LOCAL.get("watchdog") is not None:
            _LOCAL["watchdog"].close()
        if "sigterm" in _LOCAL:
            try:
                signal.signal(signal.SIGTERM, _LOCAL["sigterm"])
            except ValueError:
                pass
        if _LOCAL.get("token") is not None:
            _LOCAL["token"].__exit__(None, None, None)
        terminated = _LOCAL.get("terminated")
        _LOCAL.clear()
        if terminated:
            _LOCAL["terminated"] = True


# ---------------------------------------------------------------------------------- run
def run(argv=None) -> int:
    a = build_parser().parse_args(argv)
    from monet.errors import MonetError

    try:
        rc = _run(a, argv if argv is not None else sys.argv[1:])
    except (BadInput, MonetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        if not _LOCAL.pop("terminated", False):
            raise
        rc = 0
    if _LOCAL.pop("terminated", False):
        return EXIT_SIGTERM
    return rc


def _run(a, argv) -> int:
    from monet.config import TrainConfig
    from monet.data import load_dataset
    from search.searcher import make_storage
    from search.spaces import SearchSpace, load_space_file
    from search.trainable import parse_fault

    if a.resume:
        s, base, space_overrides = load_experiment(a, argv)
    else:
        s = resolve(a)
        base = base_config(a, s)
        space_overrides = load_space_file(s.space) if s.space else {}
        store = experiment_store(s)
        try:
            store.check_bucket()
        except OSError as e:
            raise BadInput(f"--storage-path: {e}") from None
        if _exists(store, "tuner.pkl"):
            raise BadInput(f"--name: the experiment {store} exists already; add --resume to "
                           f"continue it or pick another --name")
        if s.optuna_storage is not None:
            import optuna
            if s.name in optuna.study.get_all_study_names(make_storage(s.optuna_storage)):
                raise BadInput(f"--optuna-storage: a study named {s.name!r} exists already in "
                               f"{s.optuna_storage}; add --resume or pick another --name")
        if s.warm_start:
            from search.warmstart import open_source
            open_source(s.warm_start)      # a missing path or study: one line, before Ray
    exp = experiment_dir(s)
    store = experiment_store(s)
    fault = parse_fault(s.inject_fault)

    # data once, in the driver (a missing data root fails here, before Ray starts)
    cfg0 = TrainConfig.from_dict(base, source="flags")
    data = load_dataset(cfg0)
    space = SearchSpace.build(s.families, data.spec, s.max_epochs, space_overrides,
                              source=s.space or "space file")
    check_trainable(space, base, data, s.metric)

    address = a.address or os.environ.get("RAY_ADDRESS") or None
    started = start_ray(address, a.num_cpus)
    import ray
    try:
        s = fit_to_cluster(s, [n["Resources"] for n in ray.nodes() if n.get("Alive")],
                           autoscaling=bool(address))
        runtime = TrialRuntime(threads=max(1, int(s.cpus_per_trial)), fault=fault,
                               exp_dir=str(exp) if exp is not None else None,
                               exp_uri=None if exp is not None else store.location)
        if exp is not None:
            exp.mkdir(parents=True, exist_ok=True)
        saved = {"search": s.to_dict(), "base": base, "space": space.describe(),
                 "space_overrides": space_overrides,
                 # on --resume the budget may have grown; everything else is as saved
                 "argv": _saved_argv(store) if a.resume else sys.argv[1:]}
        if not a.resume:       # a resume rewrites it once the saved experiment has been read
            _write_settings(store, saved)
        storage = make_storage(s.study_url)
        tuner = build_tuner(s, base, data, space, storage, runtime, resume=a.resume,
                            verbose=a.verbose)
        if a.resume:
            _write_settings(store, saved)
        grid = tuner.fit()
        return summarize(s, grid, store, storage)
    finally:
        if started:
            stop_ray()


def _write_settings(store, saved: dict) -> None:
    """``config.yaml`` of the experiment (a missing bucket or an unreachable endpoint: one line,
    before any trial starts)."""
    try:
        store.write_yaml("config.yaml", saved)
    except OSError as e:
        raise BadInput(f"--storage-path: {str(e).splitlines()[0]}") from None


def _saved_argv(store) -> list:
    import yaml

    try:
        return store.read_yaml("config.yaml").get("argv") or []
    except (OSError, AttributeError, UnicodeDecodeError, yaml.YAMLError):
        return []


def _exists(store, rel: str) -> bool:
    """Whether ``rel`` exists in the experiment; storage that cannot be reached is bad input."""
    try:
        return store.exists(rel)
    except OSError as e:
        raise BadInput(f"--storage-path: cannot read {store.shown(rel)}: "
                       f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def given_flags(argv) -> dict:
    """The flags actually typed on the command line: ``dest -> value`` (defaults left out)."""
    unset = object()
    p = build_parser()
    p.set_defaults(**{act.dest: unset for act in p._actions})
    ns = p.parse_args(argv)
    return {k: v for k, v in vars(ns).items() if v is not unset and k != "help"}


def load_experiment(a, argv) -> tuple:
    """The saved settings, base config and space overrides of ``--storage-path/--name``, with the
    budget flags given now applied. Any other flag that differs from the saved experiment is
    refused (one line naming it and its saved value); so is a budget below what was asked."""
    import yaml

    from search.settings import BUDGET_FLAGS
    from search.storage import ExperimentStore, join_location

    if not a.name:
        raise BadInput("--resume: give the experiment with --storage-path and --name")
    root = str(a.storage_path)
    if "://" in root:
        _check_storage_uri(root)
    else:
        root = str(Path(root).expanduser().resolve())
    store = ExperimentStore(join_location(root, a.name))
    if not _exists(store, "config.yaml") or not _exists(store, "tuner.pkl"):
        raise BadInput(f"--resume: no experiment to resume at {store}")
    try:
        saved = store.read_yaml("config.yaml")
        s = SearchSettings.from_dict(saved["search"], source=store.shown("config.yaml"))
        base = dict(saved["base"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
        raise BadInput(f"--resume: {store.shown('config.yaml')} is damaged ({type(e).__name__}); "
                       "the experiment cannot be resumed") from None
    except OSError as e:
        raise BadInput(f"--resume: cannot read {store.shown('config.yaml')}: "
                       f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    s = s.replace(storage_path=root, name=a.name)
    given = given_flags(argv)
    fresh = None
    data_fields = {f.field: f for f in DATA_FLAGS}
    for dest, v in given.items():
        if dest in ("resume", "storage_path", "name", "address", "num_cpus") or dest in BUDGET_FLAGS:
            continue
        flag = "--" + dest.replace("_", "-")
        if dest in ("warm_start", "warm_start_top"):
            raise BadInput(f"{flag}: a resumed search keeps how it started; --warm-start is for "
                           "a new search")
        if dest in data_fields:
            old = base.get(dest)
        elif dest in SearchSettings.fields():
            fresh = fresh or resolve(a)
            v, old = getattr(fresh, dest), getattr(s, dest)
        else:
            old = None
        if _differs(v, old):
            raise BadInput(f"{flag}: {v!r} differs from the saved experiment's {old!r}; on "
                           f"--resume only {', '.join('--' + f.replace('_', '-') for f in BUDGET_FLAGS)}"
                           " may change")
    budget = {k: given[k] for k in BUDGET_FLAGS if k in given and k != "verbose"}
    for k, v in budget.items():
        if k == "num_samples" and v < 1 or k == "max_concurrent" and v < 1 \
                or k == "max_failures" and v < 0 or k == "time_budget" and not v > 0:
            raise BadInput(f"--{k.replace('_', '-')}: got {v!r}; expected a positive budget")
    asked = _trials_asked(s, store)
    if "num_samples" in budget and budget["num_samples"] < asked:
        raise BadInput(f"--num-samples: {budget['num_samples']} is fewer than the {asked} trials "
                       f"the experiment has asked for already (saved --num-samples "
                       f"{s.num_samples})")
    s = s.replace(**budget)
    if base.get("eval_at") is not None:     # a --time-budget given now: every round
        base["eval_at"] = decision_epochs(s)
    return s, base, saved.get("space_overrides") or {}


def _differs(new, old) -> bool:
    if isinstance(new, (int, float)) and isinstance(old, (int, float)) \
            and not isinstance(new, bool) and not isinstance(old, bool):
        return float(new) != float(old)
    if isinstance(new, (list, tuple)) or isinstance(old, (list, tuple)):
        return list(new or []) != list(old or [])
    return new != old


def _trials_asked(s: SearchSettings, store) -> int:
    """Trials the experiment has asked for so far (its Optuna study, else trials.parquet)."""
    url = s.study_url
    if url:
        import optuna
        from optuna.trial import TrialState

        from search.searcher import ORPHAN_ATTR, make_storage
        storage = make_storage(url)
        if s.name in optuna.study.get_all_study_names(storage):
            study = optuna.load_study(study_name=s.name, storage=storage)
            return sum(t.state != TrialState.WAITING and not t.user_attrs.get(ORPHAN_ATTR)
                       for t in study.get_trials(deepcopy=False))
    try:
        import pandas as pd
        return len(pd.read_parquet(io.BytesIO(store.read_bytes("trials.parquet"))))
    except Exception:  # noqa: BLE001 - no table yet: nothing finished
        return 0


def check_trainable(space, base: dict, data, metric: str) -> None:
    """Build the model of one sampled configuration per family (a ConfigError says why a
    configuration cannot train) and check that every family reports ``metric``, so that both
    are refused before Ray starts."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        for family in space.families:
            names = _check_family(space, family, base, data)
            if metric not in names:
                shown = sorted(n for n in names if n.startswith(("val/", "train/", "order/")))
                raise BadInput(f"--metric: {metric!r} is not reported by family {family} on "
                               f"{base['dataset']}; expected one of {shown}")
    finally:
        optuna.logging.set_verbosity(verbosity)


def _check_family(space, family: str, base: dict, data) -> set:
    """Build the model of ``family`` with one randomly sampled configuration of ``space``;
    returns the metric names its trials report."""
    import optuna

    from monet.models import create_model
    from monet.train import reported_metrics
    from search.spaces import SearchSpace, trial_to_train_config

    one = SearchSpace([family], {family: space.params[family]}, space.T)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    fixed = one(trial) or {}
    cfg = trial_to_train_config({**base, "family": family}, {**trial.params, **fixed})
    cfg = cfg.replace(device="cpu")
    return reported_metrics(create_model(cfg, data.spec, data.input_shape), data, cfg)


def fit_to_cluster(s: SearchSettings, nodes: list, autoscaling: bool = False) -> SearchSettings:
    """Check the per-trial resources against the cluster's nodes; size ``max_concurrent`` when
    unset. ``nodes``: the ``Resources`` of every alive node (``ray.nodes()``).

    A trial must fit on one node. On a cluster we connected to (``autoscaling``), a request no
    node meets *now* may be met by nodes the autoscaler adds: one warning line, not an error."""
    cpus = [float(n.get("CPU", 0)) for n in nodes] or [0.0]
    gpus = [float(n.get("GPU", 0)) for n in nodes] or [0.0]
    fits = [c >= s.cpus_per_trial and g >= s.gpus_per_trial for c, g in zip(cpus, gpus)]
    if not any(fits):
        what = (f"--cpus-per-trial {s.cpus_per_trial:g} and --gpus-per-trial "
                f"{s.gpus_per_trial:g}: no node of the Ray cluster has that much (CPUs per node "
                f"{[f'{c:g}' for c in cpus]}, GPUs per node {[f'{g:g}' for g in gpus]})")
        if not autoscaling:
            raise BadInput(what)
        print(f"warning: {what}; the trials wait for nodes the autoscaler adds", file=sys.stderr)
    if s.max_concurrent is not None:
        return s
    if not any(fits):   # nothing fits yet: a small cap, so that TPE still learns as it goes
        return s.replace(max_concurrent=max(1, min(s.num_samples, s.n_startup_trials)))
    per_cpu = sum(c // s.cpus_per_trial for c, ok in zip(cpus, fits) if ok)
    per_gpu = (sum(g // s.gpus_per_trial for g, ok in zip(gpus, fits) if ok)
               if s.gpus_per_trial else math.inf)
    return s.replace(max_concurrent=max(1, int(min(per_cpu, per_gpu, s.num_samples))))


def build_tuner(s: SearchSettings, base: dict, data, space, storage, runtime: TrialRuntime,
                resume: bool = False, verbose: int = 1):
    """The Tuner, shaped like Ray's Optuna example: searcher -> ConcurrencyLimiter ->
    scheduler -> Tuner. With ``resume``, ``Tuner.restore`` of the saved experiment with the
    budget of ``s`` (more trials when it grew), ASHA's saved rungs, and the callbacks, study and
    files of the folder the experiment is in now."""
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(s.max_concurrent)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"      # the classic reporter, with our columns
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")
    if base.get("eval_at") is not None:
        # rounds between scheduler decisions report train/ metrics only; that the metric is
        # reported at all was checked before Ray started (check_trainable)
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from search.asha import STATE_FILE, PersistentASHA, PersistentFIFO, SaveOnTrialStartEnd
    from search.results import ExperimentFiles, ResultsCallback
    from search.searcher import BudgetedSearchGenerator, BudgetHonestOptunaSearch, make_sampler
    from search.trainable import train_trial, trial_dirname

    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data=data, base=base, runtime=runtime),
        {"cpu": s.cpus_per_trial, "gpu": s.gpus_per_trial})
    store = experiment_store(s)
    if s.scheduler == "asha":
        scheduler = PersistentASHA(
            store.uri(STATE_FILE), time_attr="epoch",
            max_t=s.max_epochs, grace_period=s.grace_period, reduction_factor=s.reduction_factor)
    else:
        scheduler = PersistentFIFO()
    # the state is saved before the tables are written, in the same loop step
    callbacks = [SaveOnTrialStartEnd(scheduler)]
    callbacks.append(ResultsCallback(ExperimentFiles(store, s.metric, s.mode, base, s.dataset,
                                                     scheduler),
                                     after=callbacks[0]))
    failure = tune.FailureConfig(max_failures=s.max_failures)
    if resume:
        try:
            tuner = tune.Tuner.restore(experiment_path(s), trainable=trainable,
                                       resume_unfinished=True, resume_errored=False,
                                       restart_errored=False)
        except Exception as e:  # noqa: BLE001 - a truncated or foreign tuner.pkl: one line
            raise BadInput(f"--resume: {experiment_path(s)}/tuner.pkl cannot be read "
                           f"({type(e).__name__}); the experiment cannot be resumed") from None
        _apply_budget(tuner, s, storage, scheduler, callbacks, failure, verbose)
        return tuner
    searcher = BudgetHonestOptunaSearch(
        space, metric=s.metric, mode=s.mode,
        sampler=make_sampler(s.sampler, s.seed, s.n_startup_trials, s.tpe_history,
                             constant_liar=s.constant_liar),
        storage=storage, study_name=s.name)
    if s.warm_start:
        from search.warmstart import enqueue_warm_start
        n = enqueue_warm_start(searcher, space, s.warm_start, s.warm_start_top)
        print(f"warm start: the first {n} trials are the best configs of {s.warm_start}")
    search_alg = BudgetedSearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent))
    search_alg.state_sink = store.write_bytes
    params = [n for n in space.names() if not n.startswith("temperature/")][:8]
    reporter = tune.CLIReporter(
        metric_columns={"epoch": "epoch", s.metric: s.metric, "val/loss": "val/loss"},
        parameter_columns=params, max_report_frequency=10, sort_by_metric=True,
        max_progress_rows=12)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=s.metric, mode=s.mode, search_alg=search_alg, scheduler=scheduler,
            num_samples=s.num_samples, time_budget_s=s.time_budget,
            trial_dirname_creator=trial_dirname, reuse_actors=s.reuse_actors),
        run_config=tune.RunConfig(
            name=s.name, storage_path=s.storage_path, callbacks=callbacks,
            progress_reporter=reporter, verbose=verbose, failure_config=failure,
            stop={"time_total_s": s.trial_timeout} if s.trial_timeout else None,
            # Ray's checkpoints are small pointers to the trial's own (trainable.py): keep all
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None)))


def _apply_budget(tuner, s: SearchSettings, storage, scheduler, callbacks, failure, verbose):
    """Give a restored tuner the budget, scheduler, callbacks and study of now (Ray restores
    them from ``tuner.pkl`` as they were when the search first started)."""
    from search.searcher import BudgetedSearchGenerator

    internal = tuner._local_tuner               # Ray 2.x: TunerInternal holds the configs
    tc, rc = internal._tune_config, internal._run_config
    gen = tc.search_alg
    if not isinstance(gen, BudgetedSearchGenerator):
        raise BadInput(f"--resume: {experiment_path(s)} was made by an older monet-tune; it can "
                       "be resumed only with its saved budget")
    gen.budget, gen.max_concurrent = int(s.num_samples), int(s.max_concurrent)
    gen.state_sink = experiment_store(s).write_bytes
    gen.base_searcher.rebind_storage = storage
    tc.num_samples, tc.time_budget_s, tc.scheduler = s.num_samples, s.time_budget, scheduler
    tc.reuse_actors = s.reuse_actors
    rc.callbacks, rc.failure_config, rc.verbose = callbacks, failure, verbose


def summarize(s: SearchSettings, grid, store, storage) -> int:
    """Print the final summary: trial counts, best config and metric, where the files are.

    Args:
        s: the search's settings.
        grid: Ray's ``ResultGrid``.
        store: the experiment's :class:`~search.storage.ExperimentStore`.
        storage: the Optuna storage (unused here; kept for callers).

    Returns:
        0, or ``EXIT_NO_RESULT`` when no trial finished with a finite metric.
    """
    import yaml

    states = {}
    for r in grid:
        st = "ERROR" if r.error else "TERMINATED"
        budget = (r.metrics or {}).get("budget")
        if st == "TERMINATED" and not (budget is not None and budget >= 1 - 1e-9):
            st = "STOPPED EARLY"
        states[st] = states.get(st, 0) + 1
    counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(states.items()))
    print(f"\n{len(grid)} trials: {counts}")
    try:
        best = store.read_yaml("best_config.yaml")
    except FileNotFoundError:
        best = None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        print(f"cannot read {store.shown('best_config.yaml')}: "
              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")
        return EXIT_NO_RESULT
    if not isinstance(best, dict):
        print("no trial finished with a finite metric; see the trial errors above")
        return EXIT_NO_RESULT
    cut = (" (cut by the search's end after it passed ASHA's last rung)"
           if best.get("passed_rungs") and not best.get("full_budget", True) else "")
    print(f"best trial {best['trial_id']} ({best['family']}): {best['metric']} = "
          f"{best['value']:.4f} after {best['epochs']:g} epochs{cut}")
    cfg = best["config"]
    names = _searched_names(store)
    for k in (k for k in sorted(cfg) if k in names):
        print(f"  {k}: {cfg[k]}")
    exp = store.shown()
    print(f"files: {store.shown('best_config.yaml')}, trials.parquet, trials.csv")
    if s.optuna_storage:
        print(f"  optuna-dashboard {s.optuna_storage}")
    if store.is_local:
        print(f"  tensorboard --logdir {exp}")
        print(f"  retrain: python -m monet.train --config {exp}/best_config.yaml --out runs/best")
        print(f"  paper table (seeds, every fold): python search/retrain.py {exp}")
    else:
        print(f"  analysis: python search/analyze.py {exp} --out {s.name}-analysis")
        print(f"  retrain: copy {store.shown('best_train_config.yaml')} here, then "
              f"python -m monet.train --config best_train_config.yaml --out runs/best")
    return 0


def _searched_names(store) -> set:
    import yaml

    try:
        space = store.read_yaml("config.yaml")["space"]
    except (OSError, KeyError, TypeError, UnicodeDecodeError, yaml.YAMLError):
        return set()
    names = {"family"}
    for ps in space.values():
        names |= set(ps)
    return names | {"temperatures"}


def main(argv=None) -> int:
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
