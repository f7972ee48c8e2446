"""A worker node lost mid-search, on a real two-node local cluster (127.0.0.1, token auth on).

The head (1 CPU) and a second node (1 CPU) are started with ``ray start --block``, inside a network
namespace of the test's own that has only loopback (Ray rewrites 127.0.0.1 to the machine's
address otherwise; see tests/search/netns.py); a search with
``--address``, ``--max-failures 2`` and 2 trials at once runs one trial on each node. When a trial
on the second node has a checkpoint, that node's raylet is SIGKILLed with the processes it
started (agents, workers): the node is lost.

Checked: the search ends normally; every trial is TERMINATED (none lost), once in
``trials.parquet`` and once in the Optuna study (COMPLETE, told once); a trial that was on the
lost node started again (``attempts.jsonl``) from its checkpoint (its results after the restart
carry ``restored_round`` >= 1) and finished on the head.
"""
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd

from conftest import CLI, REPO, TINY, free_ports

from netns import netns  # noqa: F401 - fixture
from search.ray_guard import _psutil

psutil = _psutil()
RAY = str(Path(sys.executable).with_name("ray"))


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


CONNECT = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1).close()"
NODES = r"""
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(json.dumps([[n["NodeID"], n["Alive"], "second_node" in n["Resources"]] for n in ray.nodes()]))
"""


def _nodes(ns, address, env):
    out = subprocess.run(ns.cmd([sys.executable, "-c", NODES, address]), env=env, capture_output=True,
                         text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else []


def _first_attempt(trial_dir):
    try:
        lines = (trial_dir / "attempts.jsonl").read_text().splitlines()
        return json.loads(lines[0]) if lines else None
    except (OSError, ValueError):
        return None


def test_worker_node_lost_mid_search(tmp_path, netns):
    token = secrets.token_hex(32)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")},
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
    p = free_ports(11)
    address = f"127.0.0.1:{p[0]}"
    procs = []
    search = None
    try:
        head = subprocess.Popen(netns.cmd(
            [RAY, "start", "--head", "--block", "--port", str(p[0]), "--include-dashboard",
             "false", "--temp-dir", f"/tmp/rn{p[0]}"] + _node_args(p[1:6])),
            env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        procs.append(head)
        deadline = time.monotonic() + 120
        while True:
            try:
                subprocess.run(netns.cmd([sys.executable, "-c", CONNECT, str(p[0])]),
                               check=True, capture_output=True, timeout=60)
                break
            except subprocess.CalledProcessError:
                assert head.poll() is None, (tmp_path / "head.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "head node did not start"
                time.sleep(1)
        second = subprocess.Popen(netns.cmd(
            [RAY, "start", "--block", "--address", address, "--resources",
             '{"second_node": 1}'] + _node_args(p[6:11])),
            env=env, stdout=open(tmp_path / "second.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        procs.append(second)
        deadline = time.monotonic() + 180
        while True:
            nodes = _nodes(netns, address, env)
            if sum(alive for _, alive, _ in nodes) >= 2:
                break
            assert second.poll() is None, (tmp_path / "second.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "second node did not join"
            time.sleep(2)
        second_id = next(nid for nid, _, is_second in nodes if is_second)

        space = tmp_path / "space.yaml"
        space.write_text("batch_size: 16\n")
        name, exp = "node_lost", tmp_path / "node_lost"
        args = TINY + ["--family", "vmnc", "--num-samples", "4", "--max-epochs", "20",
                       "--space", str(space), "--eval-every", "0.5", "--scheduler", "fifo",
                       "--max-concurrent", "2", "--max-failures", "2", "--verbose", "0",
                       "--checkpoint-period", "0",                      # every round
                       "--address", address, "--storage-path", str(tmp_path), "--name", name]
        log = tmp_path / "search.log"
        search = subprocess.Popen(netns.cmd(CLI + args), cwd=str(REPO), env=env, stdout=open(log, "w"),
                                  stderr=subprocess.STDOUT, start_new_session=True)
        # wait for a trial on the second node with a checkpoint behind it (round >= 2). Read
        # what the trial itself writes as it goes (attempts.jsonl at its start, a pointer folder
        # per checkpointed report): result.json is written by the driver and lags, by 15 rounds
        # and more, enough for a short trial to finish before the node is lost.
        deadline = time.monotonic() + 400
        victim = None
        while victim is None:
            for d in exp.glob("trial_*"):
                first = _first_attempt(d)
                if first and first["node_id"] == second_id \
                        and (d / "checkpoint_000001").is_dir() \
                        and (d / "checkpoint" / "checkpoint.pt").is_file():
                    victim = d.name[len("trial_"):]
            assert search.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial ran on the second node"
            time.sleep(0.3)
        raylets = [c for c in psutil.Process(second.pid).children(recursive=True)
                   if c.name() == "raylet"]
        assert len(raylets) == 1, raylets
        # the second node is lost: its raylet and what it started (agents, the trial's worker,
        # which would otherwise finish its trial before noticing)
        for proc in [raylets[0]] + raylets[0].children(recursive=True):
            try:
                proc.kill()
            except psutil.Error:
                pass

        rc = search.wait(timeout=600)
        text = log.read_text()
        assert rc == 0, text[-3000:]

        df = pd.read_parquet(exp / "trials.parquet")
        assert len(df) == 4 and df["trial_id"].is_unique and df["config/optuna_trial"].is_unique
        assert set(df["state"]) == {"TERMINATED"} and not df["stopped_early"].any(), df
        attempts = [json.loads(x) for x in
                    (exp / f"trial_{victim}" / "attempts.jsonl").read_text().splitlines()]
        assert len(attempts) >= 2 and attempts[0]["node_id"] == second_id, attempts
        assert attempts[-1]["restored"] and attempts[-1]["node_id"] != second_id, attempts
        results = [json.loads(x) for x in
                   (exp / f"trial_{victim}" / "result.json").read_text().splitlines()]
        after = [r for r in results if r.get("node_id") != second_id]
        assert after and min(r["restored_round"] for r in after) >= 2, after[:2]
        assert df.set_index("trial_id").loc[victim, "node_id"] != second_id

        study = optuna.load_study(study_name=name, storage=f"sqlite:///{exp / 'study.db'}")
        told = [t for t in study.trials if t.state.name != "FAIL"]
        assert sorted(t.user_attrs["ray_trial_id"] for t in told) == sorted(df["trial_id"])
        assert {t.state.name for t in told} == {"COMPLETE"}
    finally:
        if search is not None and search.poll() is None:
            _kill_session(search)
        for proc in reversed(procs):
            _kill_session(proc)
        shutil.rmtree(f"/tmp/rn{p[0]}", ignore_errors=True)
