"""--resume: SIGKILL the driver mid-search, resume it with a larger budget (the extend form),
and check no finished trial ran again, none was lost and none was counted twice."""
import json

import os
import signal
import subprocess
import time

import optuna
import pandas as pd

from conftest import CLI, REPO, TINY, run_cli

ENV = {"TUNE_GLOBAL_CHECKPOINT_S": "1"}   # save the experiment state every second


def _session_pids(sid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getsid(int(d)) == sid:
                    out.append(int(d))
            except OSError:
                pass
    return out


def _kill_session(sid):
    """SIGKILL every process of the session we started (the driver and its Ray processes)."""
    for pid in _session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _finished(csv):
    try:
        df = pd.read_csv(csv)
    except (OSError, pd.errors.EmptyDataError):
        return set()
    return set(df[df["state"] == "TERMINATED"]["trial_id"])


def _mid_run(exp, done, lo=3, hi=30):
    """Trials (not in ``done``) that have a checkpoint and between lo and hi evaluation rounds of
    the 60 behind them: killed now, they must continue from that checkpoint on resume."""
    out = set()
    for d in exp.glob("trial_*"):
        tid = d.name[len("trial_"):]
        if tid in done or not (d / "checkpoint" / "checkpoint.pt").is_file():
            continue
        try:
            rounds = len((d / "metrics.jsonl").read_text().splitlines())
        except OSError:
            continue
        if lo <= rounds <= hi:
            out.add(tid)
    return out


def test_resume_after_sigkill_runs_no_finished_trial_again(tmp_path):
    name, db = "resumable", f"sqlite:///{tmp_path / 'study.db'}"
    space = tmp_path / "space.yaml"
    space.write_text("batch_size: 16\n")        # 6 steps an epoch: trials last a few seconds
    args = TINY + ["--family", "vmnc", "--num-samples", "5", "--max-epochs", "30",
                   "--space", str(space),
                   "--eval-every", "0.5", "--eval-rounds", "all",   # trials of a few seconds
                   "--checkpoint-period", "0",                      # checkpointed every round
                   "--scheduler", "fifo", "--max-concurrent", "2",
                   "--num-cpus", "2", "--optuna-storage", db, "--verbose", "0",
                   "--storage-path", str(tmp_path), "--name", name]
    env = {**os.environ, **ENV}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(CLI + args, cwd=str(REPO), env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    exp = tmp_path / name
    try:
        deadline = time.monotonic() + 400
        # Kill when two trials have finished and another is mid-run with a checkpoint, so
        # that both halves of resume are exercised: no rerun of finished trials, and a
        # running trial continuing from its checkpoint.
        while True:
            finished = _finished(exp / "trials.csv")
            if len(finished) >= 2 and _mid_run(exp, finished):
                break
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial finished"
            time.sleep(0.2)
        done_before = _finished(exp / "trials.csv")
        time.sleep(1.0)                     # let the experiment state catch up
        os.kill(proc.pid, signal.SIGKILL)   # the driver dies without any cleanup
        proc.wait()
    finally:
        _kill_session(proc.pid)
        log.close()
    assert len(done_before) < 5
    mid_before = _mid_run(exp, done_before, lo=1, hi=60)

    res = run_cli(["--resume", "--storage-path", str(tmp_path), "--name", name,
                   "--num-samples", "6", "--verbose", "0"], env=ENV, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "best trial" in res.stdout

    df = pd.read_parquet(exp / "trials.parquet")
    assert len(df) == 6 and set(df["state"]) == {"TERMINATED"} and df["trial_id"].is_unique
    assert sorted(df["config/optuna_trial"]) == list(range(6))
    assert (df["rounds"] > 0).all()
    resumed = 0
    for _, r in df.iterrows():
        d = exp / f"trial_{r['trial_id']}"
        attempts = [json.loads(x) for x in (d / "attempts.jsonl").read_text().splitlines()]
        if r["trial_id"] in done_before:
            assert len(attempts) == 1, f"finished trial {r['trial_id']} ran again"
        if any(a["restored"] for a in attempts):
            resumed += 1
            results = [json.loads(x) for x in (d / "result.json").read_text().splitlines()]
            assert results[-1]["restored_round"] >= 1
            # rounds continue where the checkpoint left off, none repeated after it
            rounds = [x["round"] for x in results]
            assert rounds[-1] == max(rounds)
    assert resumed >= 1, f"no trial continued from its checkpoint (mid-run at the kill: {mid_before})"
    study = optuna.load_study(study_name=name, storage=db)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(study.trials) == 6 and len(complete) == 6
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
