"""Tune's bookkeeping overhead on 1 vs 2 local nodes, and the driver's cost per trial as the study
grows.

Part A, in the terms of Ray's own release test ``tune_scalability_bookkeeping_overhead``
(``release/tune_tests/scalability_tests/workloads/test_bookkeeping_overhead.py``: 10,000 trials
of one second, one result a second, 1 CPU each, on a 16-CPU node, ``TUNE_GLOBAL_CHECKPOINT_S=100``,
``reuse_actors=True``; the ideal is 10000 / 16 = 625 s and it passes under 800 s, a ratio of
1.28). The same trainable (Ray's ``release_test_util.function_trainable``) and settings, scaled
to this machine: ``--trials`` trials on 2 CPUs, either one local node (``start_ray`` of
``search/tune_monet.py``, our token and watchdog included) or two nodes of 1 CPU each
(``ray start --head`` + ``ray start``, on 127.0.0.1, token auth on, as in
``tests/search/test_cluster.py``). Printed: wall time, the ideal (trials x 1 s / 2 CPUs), their
ratio, and Ray's bar (1.28).

Part B, the driver's own cost per trial through our real components, without Ray's actors: the
searcher ``BudgetHonestOptunaSearch`` (SQLite study, the toy vmnc define-by-run space of
``search/spaces.py``) with the sampler of ``make_sampler`` (``WindowedTPESampler``), each trial
reporting two rounds and then completing (full budget) or being stopped (PRUNED), and our
``ResultsCallback`` writing ``trials.parquet``/``trials.csv``/``best_config.yaml`` for Ray
``Trial`` objects, as Tune calls it. Measured: the mean driver time per trial in the windows of
trials 1-100, 401-500 and 1901-2000 of one study of 2,000 trials, and at 100, 500 and 2,000
trials what one suggestion costs with TPE looking at every trial (``history 0``) and at the capped
history, and what one full table write costs (what the callback did at every trial end before
it was throttled).

    python benchmarks/cluster_overhead.py                   # both parts (~5-8 min on 2 cores)
    python benchmarks/cluster_overhead.py --part b --study-trials 500
    python benchmarks/cluster_overhead.py --repeat 3

Raw results: ``benchmarks/results/cluster_overhead/run-<time>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

RAY_BAR = 800 / 625          # Ray's release test: under 800 s where the ideal is 625 s
RAY_BIN = str(Path(sys.executable).with_name("ray"))
OUT = REPO / "benchmarks" / "results" / "cluster_overhead"


# ------------------------------------------------------------------------------ part A
def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _kill_session(proc):
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getsid(int(d)) == proc.pid:
                    os.kill(int(d), signal.SIGKILL)
            except OSError:
                pass
    proc.wait(timeout=30)


def _node_args(p):
    return ["--node-ip-address", "127.0.0.1", "--num-cpus", "1",
            "--dashboard-agent-listen-port", str(p[0]), "--metrics-export-port", str(p[1]),
            "--runtime-env-agent-port", str(p[2]), "--node-manager-port", str(p[3]),
            "--object-manager-port", str(p[4])]


def two_node_cluster(tmp: Path):
    """Start a head and a second node (1 CPU each) on 127.0.0.1 with a token; returns
    (address, env, processes)."""
    token = secrets.token_hex(32)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")},
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    p = _free_ports(11)
    address = f"127.0.0.1:{p[0]}"
    head = subprocess.Popen([RAY_BIN, "start", "--head", "--block", "--port", str(p[0]),
                             "--include-dashboard", "false", "--temp-dir", f"/tmp/rb{p[0]}"]
                            + _node_args(p[1:6]), env=env, stdout=open(tmp / "head.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    procs = [head]
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", p[0]), timeout=1).close()
            break
        except OSError:
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp / "head.log").read_text()[-2000:])
            time.sleep(1)
    procs.append(subprocess.Popen([RAY_BIN, "start", "--block", "--address", address]
                                  + _node_args(p[6:11]), env=env,
                                  stdout=open(tmp / "second.log", "w"), stderr=subprocess.STDOUT,
                                  start_new_session=True))
    return address, env, procs


def bookkeeping(nodes: int, trials: int, tmp: Path) -> dict:
    """Ray's bookkeeping-overhead workload on ``nodes`` local nodes with 2 CPUs in all."""
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "100"       # as Ray's test
    import ray
    from ray import tune
    from ray.tune.utils.release_test_util import function_trainable

    from search import tune_monet
    from search.ray_guard import _reset_ray_token_cache

    tmp.mkdir(parents=True, exist_ok=True)
    procs, saved_env = [], dict(os.environ)
    try:
        if nodes == 1:
            tune_monet.start_ray(None, 2)
        else:
            address, env, procs = two_node_cluster(tmp)
            os.environ.update(env)
            _reset_ray_token_cache()
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            deadline = time.monotonic() + 180
            while sum(n["Alive"] for n in ray.nodes()) < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError("the second node did not join")
                time.sleep(1)
        cpus = ray.cluster_resources().get("CPU", 0)
        config = {"score": tune.uniform(0.0, 1.0), "num_iters": 1, "sleep_time": 1.0,
                  "checkpoint_iters": -1, "checkpoint_size_b": 0, "checkpoint_num_files": 1}
        tuner = tune.Tuner(
            tune.with_resources(function_trainable, {"cpu": 1}), param_space=config,
            tune_config=tune.TuneConfig(num_samples=trials, reuse_actors=True),
            run_config=tune.RunConfig(name=f"bk{nodes}", storage_path=str(tmp / "storage"),
                                      verbose=0))
        t0 = time.monotonic()
        grid = tuner.fit()
        wall = time.monotonic() - t0
        ok = sum(1 for r in grid if not r.error)
    finally:
        if nodes == 1:
            tune_monet.stop_ray()
        else:
            ray.shutdown()
            for proc in reversed(procs):
                _kill_session(proc)
        os.environ.clear()
        os.environ.update(saved_env)
        _reset_ray_token_cache()
    ideal = trials * 1.0 / cpus
    return {"nodes": nodes, "cpus": cpus, "trials": trials, "finished": ok, "wall_s": wall,
            "ideal_s": ideal, "ratio": wall / ideal, "ray_bar": RAY_BAR}


# ------------------------------------------------------------------------------ part B
def _space():
    from monet.config import TrainConfig
    from monet.data import load_dataset
    from search.spaces import SearchSpace

    cfg = TrainConfig.from_dict({"dataset": "toy", "family": "vmnc", "T": 3, "n_train": 32,
                                 "n_val": 16, "n_test": 16, "epochs": 4}, source="benchmark")
    return SearchSpace.build(("vmnc",), load_dataset(cfg).spec, 4.0, {}, source="benchmark")


def _score(cfg: dict) -> float:
    """A made-up validation accuracy from the config (deterministic, with an optimum)."""
    import math
    lr = float(cfg.get("lr", 1e-3))
    return 0.9 - 0.05 * (math.log10(lr) + 2.5) ** 2 + 0.001 * (zlib.crc32(str(sorted(cfg.items())).encode()) % 7)


def driver_cost(n_trials: int, tmp: Path, history: int, checkpoints=(100, 500, 2000)) -> dict:
    import optuna
    from ray.tune.experiment import Trial
    from ray.tune.utils import flatten_dict

    from search.results import ExperimentFiles, ResultsCallback
    from search.searcher import BudgetHonestOptunaSearch, WindowedTPESampler, make_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = _space()
    exp = tmp / f"study-h{history}"
    exp.mkdir(parents=True)
    url = f"sqlite:///{exp / 'study.db'}"
    searcher = BudgetHonestOptunaSearch(
        space, metric="val/mean_acc", mode="max",
        sampler=WindowedTPESampler(history=history, seed=0, constant_liar=True,
                                   n_startup_trials=10),
        storage=make_storage(url), study_name="bench")
    base = {"dataset": "toy", "family": "vmnc", "T": 3, "epochs": 4.0}
    files = ExperimentFiles(exp, "val/mean_acc", "max", base, "toy")
    cb = ResultsCallback(files)
    trials, per_trial, suggest_s, at = [], [], [], {}
    for i in range(n_trials):
        tid = f"t{i:05d}"
        t0 = time.perf_counter()
        cfg = searcher.suggest(tid)
        t1 = time.perf_counter()
        trial = Trial("bench", config=cfg, trial_id=tid, stub=True)
        full = i % 3 == 0                      # a third run to the full budget, the rest stopped
        v = _score(flatten_dict(dict(cfg), delimiter="/"))
        for r in (1, 2):
            res = {"val/mean_acc": v - 0.01 * (2 - r), "round": r, "epoch": float(r),
                   "budget": 1.0 if (full and r == 2) else r / 8}
            searcher.on_trial_result(tid, res)
            trial.update_last_result(res)
        searcher.on_trial_complete(tid, res)
        trial.set_status(Trial.TERMINATED)
        trials.append(trial)
        cb.on_trial_complete(i, trials, trial)
        cb.on_step_end(i, trials)
        per_trial.append(time.perf_counter() - t0)
        suggest_s.append(t1 - t0)
        if i + 1 in checkpoints:
            at[i + 1] = _probe(searcher.study, space, files, trials)
    cb.on_experiment_end(trials)
    windows = {}
    for lo, hi in ((0, 100), (400, 500), (1900, 2000)):
        if hi <= n_trials:
            windows[f"{lo + 1}-{hi}"] = {
                "per_trial_ms": 1000 * sum(per_trial[lo:hi]) / (hi - lo),
                "suggest_ms": 1000 * sum(suggest_s[lo:hi]) / (hi - lo)}
    return {"history": history, "trials": n_trials, "total_s": sum(per_trial),
            "table_writes": cb.writes, "windows": windows, "at": at}


def _probe(study, space, files, trials, k: int = 5) -> dict:
    """At the study's current size: one suggestion with TPE looking at every trial, one with the
    default cap (both on the same SQLite study; the probe trials are told FAIL, which TPE
    ignores), and one full write of the tables."""
    import optuna
    from optuna.trial import TrialState

    from search.searcher import DEFAULT_TPE_HISTORY, WindowedTPESampler

    out = {}
    for name, hist in (("tpe_all_ms", 0), (f"tpe_cap{DEFAULT_TPE_HISTORY}_ms", DEFAULT_TPE_HISTORY),
                       ("tpe_cap200_ms", 200)):
        s = optuna.load_study(study_name=study.study_name, storage=study._storage,
                              sampler=WindowedTPESampler(history=hist, seed=1, constant_liar=True,
                                                         n_startup_trials=10))
        ts = []
        for _ in range(k):
            t0 = time.perf_counter()
            t = s.ask()
            space(t)
            ts.append(time.perf_counter() - t0)
            s.tell(t, state=TrialState.FAIL)
        out[name] = 1000 * sorted(ts)[k // 2]
    t0 = time.perf_counter()
    files.write(trials)
    out["table_write_ms"] = 1000 * (time.perf_counter() - t0)
    return out


# ------------------------------------------------------------------------------ main
def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("a", "b", "both"), default="both")
    p.add_argument("--trials", type=int, default=80, help="part A: one-second trials (80)")
    p.add_argument("--nodes", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2],
                   help="part A: node counts to compare (1,2)")
    p.add_argument("--study-trials", type=int, default=2000, help="part B: study size (2000)")
    p.add_argument("--study-dir", default="/dev/shm" if os.access("/dev/shm", os.W_OK) else None,
                   help="part B: where the SQLite study and tables go (default /dev/shm: a "
                        "disk's sync latency, a constant per commit, would hide the growth)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--no-netns", action="store_true",
                   help="run in this network namespace (default: a new one with loopback only, "
                        "so that Ray, which rewrites 127.0.0.1 to the machine's address, "
                        "stays on loopback)")
    p.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if not (a.no_netns or a.in_netns) and shutil.which("unshare") and shutil.which("ip"):
        args = list(sys.argv[1:] if argv is None else argv) + ["--in-netns"]
        os.execvp("unshare", ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"',
                              sys.executable, str(Path(__file__).resolve())] + args)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for rep in range(a.repeat):
        rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpus": os.cpu_count(),
               "netns": a.in_netns,
               "load_before": _load()}
        with tempfile.TemporaryDirectory(prefix="cluster-overhead-") as td:
            tmp = Path(td)
            if a.part in ("a", "both"):
                rec["bookkeeping"] = []
                for nodes in a.nodes:
                    r = bookkeeping(nodes, a.trials, tmp / f"n{nodes}")
                    rec["bookkeeping"].append(r)
                    print(f"[run {rep + 1}] bookkeeping, {nodes} node(s), {r['cpus']:g} CPUs: "
                          f"{r['finished']}/{r['trials']} one-second trials in {r['wall_s']:.1f} s, "
                          f"ideal {r['ideal_s']:.1f} s: ratio {r['ratio']:.2f} "
                          f"(Ray's bar {RAY_BAR:.2f}: 800 s / 625 s)", flush=True)
            if a.part in ("b", "both"):
                with tempfile.TemporaryDirectory(prefix="cluster-overhead-",
                                                 dir=a.study_dir) as sd:
                    r = driver_cost(a.study_trials, Path(sd), history=1000)
                r["study_dir"] = a.study_dir
                rec["driver"] = r
                print(f"[run {rep + 1}] driver cost per trial, our searcher + WindowedTPE "
                      f"(history 1000) + ResultsCallback, {r['trials']} trials in "
                      f"{r['total_s']:.1f} s, {r['table_writes']} table writes:", flush=True)
                for w, v in r["windows"].items():
                    print(f"    trials {w:>9}: {v['per_trial_ms']:7.1f} ms/trial "
                          f"(suggest {v['suggest_ms']:6.1f} ms)")
                ws = list(r["windows"].values())
                if len(ws) > 1:
                    print(f"    last window / first window: "
                          f"{ws[-1]['per_trial_ms'] / ws[0]['per_trial_ms']:.2f}")
                for n, v in r["at"].items():
                    print(f"    at {n:>5} trials: one suggestion "
                          + ", ".join(f"{k[:-3]} {x:.1f} ms" for k, x in v.items()
                                      if k.startswith("tpe"))
                          + f"; one full table write {v['table_write_ms']:.1f} ms "
                          f"(= the old per-trial-end cost)")
        rec["load_after"] = _load()
        print(f"[run {rep + 1}] load average before {rec['load_before']}, after "
              f"{rec['load_after']}", flush=True)
        f = out / f"run-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"
        f.write_text(json.dumps(rec, indent=1))
        print(f"[run {rep + 1}] raw results: {f.relative_to(REPO) if f.is_relative_to(REPO) else f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
