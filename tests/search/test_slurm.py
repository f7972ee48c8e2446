"""clusters/slurm_tune.sh run for real on one node, with SLURM itself replaced by tiny shims.

``srun`` and ``scontrol`` are shell scripts in a temporary folder put first on PATH: ``srun``
drops its options and runs the command here, ``scontrol show hostnames`` prints the node list.
Everything else is real: the script makes a token, starts ``ray start --head --block`` with token
authentication on 127.0.0.1 (node IP set by MONET_HEAD_IP; its other ports passed explicitly so
that concurrent tests do not collide), waits for the node, runs a tiny search through
``--address`` and, on exit, stops Ray and removes the token. The script runs in its own session;
whatever of it is still alive at the end is killed by id and counted as a failure.
"""
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from conftest import REPO, TINY, free_ports

SRUN = r"""#!/usr/bin/env bash
# srun shim: skip the options, run the command on this machine (as srun does on the node)
while [[ $# -gt 0 && $1 == -* ]]; do
    case $1 in
        -w|-N|-n|-c|--nodelist|--nodes|--ntasks|--cpus-per-task) shift 2 ;;
        *) shift ;;
    esac
done
echo "$(date +%s) srun $*" >> "$SHIM_LOG"
exec "$@"
"""
SCONTROL = r"""#!/usr/bin/env bash
# scontrol shim: only `scontrol show hostnames LIST` (a comma-separated list, no ranges)
[[ $1 == show && $2 == hostnames ]] || { echo "shim: unsupported: $*" >&2; exit 2; }
tr ',' '\n' <<< "$3"
"""


def _session_pids(sid):
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getsid(int(d)) == sid and int(d) != sid:
                    pids.append(int(d))
            except OSError:
                pass
    return pids


def _kill_session(sid):
    for pid in _session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _slurm_env(tmp_path, job_id, cpus=2):
    shims = tmp_path / "shims"
    shims.mkdir()
    for name, text in [("srun", SRUN), ("scontrol", SCONTROL)]:
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    p = free_ports(6)
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SLURM_"))}
    env.update({
        "PATH": f"{shims}{os.pathsep}{env['PATH']}",
        "SHIM_LOG": str(tmp_path / "shim.log"),
        "SLURM_JOB_ID": str(job_id), "SLURM_JOB_NODELIST": "node1",
        "SLURM_CPUS_PER_TASK": str(cpus), "SLURM_SUBMIT_DIR": str(REPO),
        "PYTHON": sys.executable, "RAY_USAGE_STATS_ENABLED": "0",
        "MONET_HEAD_IP": "127.0.0.1", "MONET_RAY_PORT": str(p[0]),
        "MONET_RAY_TMP": f"/tmp/rs{p[0]}",           # short: AF_UNIX socket paths are limited
        "MONET_RAY_ARGS": (f"--dashboard-agent-listen-port={p[1]} --metrics-export-port={p[2]} "
                           f"--runtime-env-agent-port={p[3]} --node-manager-port={p[4]} "
                           f"--object-manager-port={p[5]}"),
        "MONET_RAY_HEAD_ARGS": "--include-dashboard=false",
        "MONET_TOKEN_DIR": str(tokens), "MONET_RAY_WAIT": "120",
        "MONET_STORAGE": str(tmp_path / "results"),
    })
    return env, tokens


def _run_script(cmd, env, timeout):
    proc = subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_session(proc.pid)
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError("script timed out:\n" + out[-4000:])
    time.sleep(1)                                   # let `ray start --block` finish its exit
    left = _session_pids(proc.pid)
    _kill_session(proc.pid)
    shutil.rmtree(env["MONET_RAY_TMP"], ignore_errors=True)
    return proc.returncode, out, left


def test_slurm_tune_runs_a_search_and_removes_the_token(tmp_path):
    env, tokens = _slurm_env(tmp_path, job_id=4242)
    rc, out, left = _run_script(
        ["bash", "clusters/slurm_tune.sh"] + TINY + [
            "--family", "vmnc", "--num-samples", "2", "--max-epochs", "2", "--scheduler", "fifo",
            "--cpus-per-trial", "1", "--verbose", "0", "--name", "slurm1"],
        env, timeout=240)
    assert rc == 0, out[-4000:]
    assert "Ray cluster up: 1 node(s) at 127.0.0.1:" in out, out[-4000:]
    df = pd.read_parquet(tmp_path / "results" / "slurm1" / "trials.parquet")
    assert len(df) == 2 and set(df["state"]) == {"TERMINATED"}, df
    # the head was started through srun, with explicit CPU/GPU counts and the short temp dir
    shim_log = (tmp_path / "shim.log").read_text()
    assert "start --head --block --node-ip-address=127.0.0.1" in shim_log
    assert "--num-cpus=2 --num-gpus=0" in shim_log and f"--temp-dir={env['MONET_RAY_TMP']}" in shim_log
    # the per-job token folder was made where asked, and removed; ~/.ray was not used for it
    assert list(tokens.iterdir()) == [], list(tokens.iterdir())
    assert "RAY_AUTH_TOKEN" not in shim_log                 # never on a command line
    assert left == [], f"processes left running: {left}"


def test_slurm_cluster_needs_the_token_and_cleans_up(tmp_path):
    """ray_cluster_up alone: a client without the job's token is refused, one with it connects."""
    env, tokens = _slurm_env(tmp_path, job_id=4343, cpus=1)
    env["EMPTY_HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir()
    probe = ("import ray; ray.init(logging_level='ERROR'); "
             "print('NODES', len(ray.nodes()))")
    script = f"""
set -euo pipefail
source clusters/slurm_ray.sh
trap ray_cluster_down EXIT
ray_cluster_up
ls "$_ray_token_dir" | sed 's/^/TOKENFILE /'
stat -c 'TOKENMODE %a' "$RAY_AUTH_TOKEN_PATH"
"$PYTHON" -c "{probe}" | sed 's/^/WITH /'
# no token at all: Ray's default (auth off) client, with no ~/.ray/auth_token to find
env -u RAY_AUTH_MODE -u RAY_AUTH_TOKEN_PATH HOME="$EMPTY_HOME" "$PYTHON" -c "{probe}" >/dev/null 2>&1 \\
    && echo "NOAUTH connected" || echo "NOAUTH refused"
# token mode with a wrong token
env -u RAY_AUTH_TOKEN_PATH RAY_AUTH_TOKEN=0000 "$PYTHON" -c "{probe}" >/dev/null 2>&1 \\
    && echo "WRONG connected" || echo "WRONG refused"
"""
    rc, out, left = _run_script(["bash", "-c", script], env, timeout=180)
    assert rc == 0, out[-4000:]
    assert "TOKENFILE token" in out and "TOKENMODE 600" in out, out[-3000:]
    assert "WITH NODES 1" in out, out[-3000:]
    assert "NOAUTH refused" in out and "WRONG refused" in out, out[-3000:]
    assert list(tokens.iterdir()) == []
    assert left == [], f"processes left running: {left}"


def test_slurm_scripts_parse():
    for name in ["slurm_tune.sh", "slurm_retrain.sh", "slurm_ray.sh"]:
        res = subprocess.run(["bash", "-n", str(REPO / "clusters" / name)],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    for name in ["slurm_tune.sh", "slurm_retrain.sh"]:
        mode = (REPO / "clusters" / name).stat().st_mode
        assert mode & stat.S_IXUSR, f"{name} is not executable"


def test_slurm_tune_stops_cleanly_on_sigterm(tmp_path):
    """SIGTERM to the batch shell (the time limit's --signal=B:TERM): the search saves and stops."""
    env, tokens = _slurm_env(tmp_path, job_id=4444)
    exp = tmp_path / "results" / "slurm_term"
    proc = subprocess.Popen(
        ["bash", "clusters/slurm_tune.sh"] + TINY + [
            "--family", "vmnc", "--num-samples", "50", "--max-epochs", "200", "--scheduler",
            "fifo", "--cpus-per-trial", "1", "--verbose", "0", "--name", "slurm_term"],
        env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while not list(exp.glob("*/result.json")):          # a trial is running
            assert proc.poll() is None, proc.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "no trial started"
            time.sleep(1)
        assert list(tokens.iterdir()), "the token should exist while the job runs"
        os.kill(proc.pid, signal.SIGTERM)                   # to the batch shell only
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            _kill_session(proc.pid)
            proc.kill()
    time.sleep(1)
    left = _session_pids(proc.pid)
    _kill_session(proc.pid)
    shutil.rmtree(env["MONET_RAY_TMP"], ignore_errors=True)
    # Ray Tune stopped the search (it would run for hours) and saved the experiment to resume
    assert "Ray cluster up" in out and "stopped early" in out, out[-4000:]
    assert list(exp.glob("experiment_state*.json")), sorted(p.name for p in exp.iterdir())
    assert list(tokens.iterdir()) == []
    assert left == [], f"processes left running: {left}"
