"""Object storage as the result store: search, SIGKILL, --resume and analysis on s3://.

The S3 API is real: ``moto_server`` (package ``moto[server]``) on 127.0.0.1, reached by pyarrow
and Ray through ``AWS_ENDPOINT_URL`` or ``?endpoint_override=``. Where the machine allows it
(root: ``unshare -n``), the whole module runs inside a network namespace of its own that has
nothing but the loopback interface, so nothing but 127.0.0.1 can be contacted at all.

The test process never opens the bucket itself (pyarrow's I/O threads may predate the
namespace): it reads the bucket through small ``pyarrow.fs`` subprocesses.
"""
import base64
import ctypes
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import CLI, REPO, TINY, free_ports
from test_cli_errors import run_inproc
from test_resume import _kill_session

BUCKET = "monet-results"
CLONE_NEWNET = 0x40000000
METRIC = "last/val/mean_acc"

# Read (or list) objects of the bucket with pyarrow.fs: argv = keys; prints {key: base64 | null};
# a key ending in "/" is listed recursively (null when nothing is there).
READER = r"""
import base64, json, sys
import pyarrow.fs as pafs
fs, root = pafs.FileSystem.from_uri(sys.argv[1])
out = {}
for key in sys.argv[2:]:
    path = f"{root}/{key}".rstrip("/")
    if key.endswith("/"):
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
        out[key] = sorted(i.path[len(path) + 1:] for i in infos) or None
        continue
    try:
        with fs.open_input_stream(path) as f:
            out[key] = base64.b64encode(f.readall()).decode()
    except FileNotFoundError:
        out[key] = None
print(json.dumps(out))
"""

# Wait until the experiment state Ray saved in the bucket has a finished trial and an unfinished
# one with a checkpoint: Ray's record of it, or the trial's own checkpoint object (which the
# trial reads when restarted; Ray's periodic save may not land in the bucket mid-trial, and the
# save forced at the trial's start has no checkpoint yet): a driver killed now must resume both.
WAITER = r"""
import json, sys, time
import pyarrow.fs as pafs
fs, root = pafs.FileSystem.from_uri(sys.argv[1])
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    states = sorted(i.path for i in infos if i.path.rsplit("/", 1)[-1].startswith(
        "experiment_state-"))
    try:
        with fs.open_input_stream(states[-1]) as f:
            trials = [(json.loads(a)["trial_id"], json.loads(b)["last_result"])
                      for a, b in json.loads(f.readall())["trial_data"]]
    except (IndexError, FileNotFoundError, ValueError):
        trials = []
    done = [t for t, r in trials if r.get("done")]
    mid = [t for t, r in trials if not r.get("done") and (r.get("checkpoint_dir_name") or
           fs.get_file_info(f"{root}/trial_{t}/checkpoint/checkpoint.pt").type
           == pafs.FileType.File)]
    if done and mid:
        print(" ".join(done) + "|" + " ".join(mid))
        sys.exit(0)
    time.sleep(0.2)
sys.exit(1)
"""


# ------------------------------------------------------------------------------ fixtures
def _own_netns():
    """Move this thread (and so every process it starts) into a new network namespace with
    only loopback up; returns a function that moves it back, or None where that is not
    allowed (then the test runs on the machine's own 127.0.0.1)."""
    if not shutil.which("unshare"):
        return None
    holder = subprocess.Popen(["unshare", "-n", "sh", "-c", "ip link set lo up && exec sleep 3600"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mine = os.readlink("/proc/self/ns/net")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and holder.poll() is None:
        try:
            if os.readlink(f"/proc/{holder.pid}/ns/net") != mine:
                break
        except OSError:
            pass
        time.sleep(0.05)
    time.sleep(0.2)                                     # `ip link set lo up` has run
    libc = ctypes.CDLL(None, use_errno=True)
    back = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/proc/{holder.pid}/ns/net", os.O_RDONLY)
    except OSError:
        holder.kill()
        return None
    ok = holder.poll() is None and libc.setns(target, CLONE_NEWNET) == 0
    os.close(target)
    if not ok:
        holder.kill()
        os.close(back)
        return None

    def restore():
        libc.setns(back, CLONE_NEWNET)
        os.close(back)
        holder.kill()
        holder.wait()
    return restore


class S3:
    """The moto server of the module: its endpoint, environment and bucket helpers."""

    def __init__(self, port: int, isolated: bool):
        self.endpoint = f"http://127.0.0.1:{port}"
        self.isolated = isolated
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_EC2_METADATA_DISABLED": "true", "TUNE_GLOBAL_CHECKPOINT_S": "1"}

    def python(self, code: str, *args, timeout=120, env=None) -> subprocess.CompletedProcess:
        e = {**os.environ, **self.env, **(env or {})}
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                              text=True, timeout=timeout, env=e)

    def read(self, prefix: str, *keys: str) -> dict:
        """``{key: bytes | None}`` (a key ending in ``/``: the names below it, or None)."""
        r = self.python(READER, f"s3://{BUCKET}/{prefix}", *keys)
        assert r.returncode == 0, r.stderr[-2000:]
        out = json.loads(r.stdout)
        return {k: (base64.b64decode(v) if isinstance(v, str) else v) for k, v in out.items()}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    restore = _own_netns()
    if restore is None:
        warnings.warn("no network namespace of our own (not root?): the S3 tests run on this "
                      "machine's 127.0.0.1, and nothing proves that no other address is reached")
    server = None
    try:
        port, = free_ports(1)
        exe = Path(sys.executable).with_name("moto_server")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
        log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
        server = subprocess.Popen(cmd + ["-H", "127.0.0.1", "-p", str(port)], stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, "moto_server did not start"
                assert time.monotonic() < deadline, "moto_server did not listen"
                time.sleep(0.2)
        s = S3(port, isolated=restore is not None)
        r = s.python("import sys, pyarrow.fs as f; f.S3FileSystem(endpoint_override=sys.argv[1], "
                     "allow_bucket_creation=True).create_dir(sys.argv[2])", s.endpoint, BUCKET)
        assert r.returncode == 0, r.stderr[-2000:]
        yield s
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        if restore is not None:
            restore()


def _cli(s3, args, timeout=300, env=None):
    """``tune_monet.py ARGS`` with the S3 environment; ``env`` values of None are unset."""
    e = {**os.environ, **s3.env, **(env or {})}
    e = {k: v for k, v in e.items() if v is not None}
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout,
                          env=e, cwd=str(REPO))


def _one_error_line(r):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    return lines[0]


# ------------------------------------------------------------------------------ tests
def test_search_kill_resume_and_analysis_on_s3(s3, tmp_path):
    """A search on s3:// writes its files to the bucket; after a SIGKILL of the driver,
    ``--resume --num-samples N+1`` finishes every trial once (the finished one not re-run, the
    interrupted one from its checkpoint); the analysis reads the bucket into a local folder."""
    name = "exp"
    space = tmp_path / "space.yaml"
    space.write_text("batch_size: 16\n")        # 6 steps an epoch: trials last a few seconds
    # ASHA's only rung is the full budget (no trial stops early); every round evaluated and
    # checkpointed (--eval-rounds all): the second trial has checkpoints well before it ends
    args = TINY + ["--family", "vmnc", "--num-samples", "2", "--max-epochs", "6",
                   "--eval-every", "0.5", "--eval-rounds", "all", "--checkpoint-period", "0",
                   "--grace-period", "6", "--reduction-factor", "2",
                   "--space", str(space), "--max-concurrent", "1", "--num-cpus", "2",
                   "--verbose", "0", "--storage-path", f"s3://{BUCKET}", "--name", name]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(CLI + args, cwd=str(REPO), env={**os.environ, **s3.env}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # kill once Ray's saved state has a finished trial and one mid-run with a checkpoint
        waited = s3.python(WAITER, f"s3://{BUCKET}/{name}", "240", timeout=300)
        assert waited.returncode == 0, (tmp_path / "first.log").read_text()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)    # the driver dies without any cleanup
        proc.wait()
    finally:
        _kill_session(proc.pid)
        log.close()
    done_before, mid_before = (set(x.split()) for x in waited.stdout.strip().split("|"))
    got = s3.read(name, "config.yaml", "asha_state.json", "tuner.pkl")
    assert all(got[k] is not None for k in got), [k for k in got if got[k] is None]
    assert json.loads(got["asha_state.json"])["brackets"]

    # resume on the query form of the URI (no AWS_ENDPOINT_URL), with one trial more
    uri = f"s3://{BUCKET}?endpoint_override={s3.endpoint}"
    res = _cli(s3, ["--resume", "--storage-path", uri, "--name", name, "--num-samples", "3",
                    "--max-concurrent", "2", "--verbose", "0"],
               env={"AWS_ENDPOINT_URL": None}, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "best trial" in res.stdout

    logs = {t: f"trial_{t}/result.json" for t in done_before | mid_before}
    got = s3.read(name, "trials.parquet", "trials.csv", "best_config.yaml",
                  "best_train_config.yaml", "config.yaml", "asha_state.json", *logs.values())
    assert all(got[k] is not None for k in got), [k for k in got if got[k] is None]
    df = pd.read_parquet(io.BytesIO(got["trials.parquet"]))
    assert len(df) == 3 and df["trial_id"].is_unique, df[["trial_id", "state"]]
    assert sorted(df["config/optuna_trial"]) == [0, 1, 2]         # each Optuna trial once
    assert mid_before <= set(df["trial_id"])
    assert set(df["state"]) == {"TERMINATED"}, (df[["trial_id", "state", "error"]].to_string()
                                                + res.stdout[-3000:] + res.stderr[-3000:])
    assert df["trial_dir"].str.startswith(f"s3://{BUCKET}/{name}/trial_").all()
    results = {t: [json.loads(x) for x in got[k].decode().splitlines() if x.strip()]
               for t, k in logs.items()}
    for t in done_before:                     # a finished trial is not run again
        assert [r["round"] for r in results[t]] == list(range(1, 13))
        assert {r["restored_round"] for r in results[t]} == {0}
    # the trial killed mid-run continued from its checkpoint in the bucket
    for t in mid_before:
        assert max(r["restored_round"] for r in results[t]) >= 1, results[t][-1]
        assert results[t][-1]["round"] == 12
    best = yaml.safe_load(got["best_config.yaml"])
    assert best["trial_id"] in set(df["trial_id"])
    assert f"best trial {best['trial_id']}" in res.stdout
    assert yaml.safe_load(got["best_train_config.yaml"]) == best["config"]
    assert yaml.safe_load(got["config.yaml"])["search"]["num_samples"] == 3

    # the analysis reads the bucket and writes a local folder
    out = tmp_path / "analysis"
    r = subprocess.run([sys.executable, str(REPO / "search" / "analyze.py"),
                        f"s3://{BUCKET}/{name}", "--out", str(out)], capture_output=True,
                       text=True, timeout=300, cwd=str(REPO), env={**os.environ, **s3.env})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    table = pd.read_csv(out / "trials.csv")
    assert list(table["trial_id"].astype(str)) == list(df["trial_id"])
    assert table[METRIC].tolist() == pytest.approx(df[METRIC].tolist())
    assert best["trial_id"] in (out / "report.md").read_text()


DELETE_SEARCH_STATE = r"""
import sys
import pyarrow.fs as pafs
fs, root = pafs.FileSystem.from_uri(sys.argv[1])
gone = []
for i in fs.get_file_info(pafs.FileSelector(root)):
    n = i.path.rsplit("/", 1)[-1]
    if n.startswith(("search_gen_state-", "searcher-state-")):
        fs.delete_file(i.path)
        gone.append(n)
print(len(gone))
"""


def test_resume_on_s3_when_rays_search_state_did_not_reach_the_bucket(s3, tmp_path):
    """Ray uploads its experiment folder file by file; a driver killed in between leaves the
    bucket with an experiment_state and no searcher state (the study is in memory on s3://).
    The search state we write when each trial is created and ends carries the search on:
    ``--resume --num-samples 3`` runs one trial more (not three), each Optuna trial once."""
    name = "lost_state"
    args = TINY + ["--family", "vmnc", "--num-samples", "2", "--max-epochs", "1",
                   "--max-concurrent", "1", "--num-cpus", "2", "--verbose", "0",
                   "--storage-path", f"s3://{BUCKET}", "--name", name]
    res = _cli(s3, args)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    gone = s3.python(DELETE_SEARCH_STATE, f"s3://{BUCKET}/{name}")
    assert gone.returncode == 0 and gone.stdout.strip() == "2", gone.stdout + gone.stderr
    res = _cli(s3, ["--resume", "--storage-path", f"s3://{BUCKET}", "--name", name,
                    "--num-samples", "3", "--verbose", "0"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    df = pd.read_parquet(io.BytesIO(s3.read(name, "trials.parquet")["trials.parquet"]))
    assert sorted(df["config/optuna_trial"]) == [0, 1, 2], df[["trial_id", "config/optuna_trial"]]


def test_object_storage_errors_are_one_line(s3, tmp_path, capsys):
    """Bad URIs, missing buckets and missing experiments: one error line, exit 2, nothing
    written."""
    # a URI pyarrow refuses is refused before anything is opened (in this process: no request)
    r = _one_error_line(run_inproc(TINY + ["--storage-path", "s4://nowhere/x", "--name", "a"],
                                   capsys))
    assert r.startswith("error: --storage-path: s4://nowhere/x: pyarrow cannot open"), r
    r = _one_error_line(_cli(s3, TINY + ["--storage-path", "s3://no-such-bucket/x",
                                         "--name", "a"]))
    assert "no bucket" in r
    r = _one_error_line(_cli(s3, ["--resume", "--storage-path", f"s3://{BUCKET}/none",
                                  "--name", "a"]))
    assert "no experiment to resume" in r
    r = subprocess.run([sys.executable, str(REPO / "search" / "analyze.py"),
                        f"s3://{BUCKET}/none/a", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120, cwd=str(REPO),
                       env={**os.environ, **s3.env})
    assert "no such experiment" in _one_error_line(r)
    assert not (tmp_path / "o").exists()
    # nothing was written to the bucket by the refused commands
    assert s3.read("", "none/")["none/"] is None


def test_locations_keep_their_query_and_hide_credentials(s3):
    """URI arithmetic (experiment name before the query), credentials never shown, and gs://
    opened by pyarrow's GCS filesystem (no GCS server here: nothing is requested)."""
    from search.storage import ExperimentStore, filesystem, join_location, parent_location

    uri = "s3://KEY:SECRET@bucket/results?endpoint_override=http://127.0.0.1:9&region=x"
    exp = ExperimentStore(join_location(uri, "exp"))
    assert exp.location == ("s3://KEY:SECRET@bucket/results/exp"
                            "?endpoint_override=http://127.0.0.1:9&region=x")
    assert exp.uri("trial_1", "result.json").startswith("s3://KEY:SECRET@bucket/results/exp/"
                                                         "trial_1/result.json?endpoint_override")
    assert "SECRET" not in str(exp) and "SECRET" not in exp.shown("a.yaml")
    assert parent_location(exp.location) == uri and exp.name == "exp"
    fs, path = filesystem("gs://bucket/results/exp/config.yaml")
    assert (fs.type_name, path) == ("gcs", "bucket/results/exp/config.yaml")
    gs = ExperimentStore("gs://bucket/results/exp")
    gs.check()
    assert not gs.is_local and gs.local_path is None
