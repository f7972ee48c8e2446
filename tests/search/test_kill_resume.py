"""One search, its driver SIGKILLed at 5 seeded moments and resumed after each, against the same
search never killed (same seed, one trial at a time, so that the run is deterministic).

The moments: after the k-th evaluation round reported by any trial (lines of the trials'
``metrics.jsonl``), for 5 k drawn with a seeded ``random.Random``. Only the driver is killed;
its watchdog ends its Ray processes, as it would for a user.

Checked after the last resume:
* ``trials.parquet`` has each trial once and each Optuna trial once (6 rows), all TERMINATED;
* a trial that had finished (TERMINATED in ``trials.csv``) before a kill never started again
  (its ``attempts.jsonl`` has as many lines at the end as when it finished: a trial that was
  mid-run at a kill continues from its checkpoint, one more line, and is then done);
* every trial that finished full-budget in the study is COMPLETE once, every stopped one PRUNED
  once, nothing is left RUNNING;
* ASHA's decisions match the never-killed search: the same configurations in the same order, and
  for each the same ``stopped_early`` and the same epoch count. The metric is ``val/loss``: on this tiny
data many configurations tie on accuracy, and ASHA never stops a tie.
"""
import json
import os
import random
import signal
import subprocess
import time

import optuna
import pandas as pd

from conftest import CLI, REPO, TINY, run_cli

ENV = {"TUNE_GLOBAL_CHECKPOINT_S": "1", "RAY_USAGE_STATS_ENABLED": "0"}
SEED = 13


def _args(tmp_path, name):
    space = tmp_path / "space.yaml"
    space.write_text("batch_size: 16\n")
    return TINY + ["--family", "vmnc", "--num-samples", "6", "--max-epochs", "2",
                   "--metric", "val/loss", "--space", str(space), "--eval-every", "0.5",
                   "--grace-period", "0.5", "--checkpoint-period", "0",   # every round
                   "--reduction-factor", "2", "--n-startup-trials", "3", "--seed", "3",
                   "--max-concurrent", "1", "--num-cpus", "1", "--verbose", "0",
                   "--storage-path", str(tmp_path), "--name", name]


def _rounds(exp):
    n = 0
    for m in exp.glob("trial_*/metrics.jsonl"):
        try:
            n += len(m.read_text().splitlines())
        except OSError:
            pass
    return n


def _finished(exp):
    try:
        df = pd.read_csv(exp / "trials.csv")
    except (OSError, pd.errors.EmptyDataError):
        return set()
    return set(df[df["state"] == "TERMINATED"]["trial_id"])


def _attempts(exp, tid):
    """Starts of a trial so far (lines of its attempts.jsonl)."""
    return len((exp / f"trial_{tid}" / "attempts.jsonl").read_text().splitlines())


def _decisions(exp):
    df = pd.read_parquet(exp / "trials.parquet").sort_values("config/optuna_trial")
    params = [c for c in df.columns if c.startswith("config/") and c != "config/optuna_trial"]
    return [(int(r["config/optuna_trial"]), tuple(r[p] for p in params), bool(r["stopped_early"]),
             float(r["epochs"])) for _, r in df.iterrows()]


def _sigkill_when(argv, log_path, ready, what, env=None, before_kill=None, timeout=400):
    """Run the CLI with ``argv`` in a session of its own until ``ready()`` (the driver still
    running), call ``before_kill()``, SIGKILL the driver (no cleanup) and give the watchdog 2 s to
    end the killed driver's Ray processes. ``what``: the failure message if never ready."""
    log = open(log_path, "w")
    proc = subprocess.Popen(CLI + argv, cwd=str(REPO), env={**os.environ, **ENV, **(env or {})},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready() and proc.poll() is None:
            assert time.monotonic() < deadline, what
            time.sleep(0.05)
        assert proc.poll() is None, log_path.read_text()[-3000:]
        if before_kill is not None:
            before_kill()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    time.sleep(2)                     # the watchdog ends the killed driver's Ray processes


def test_five_sigkills_and_resumes_match_an_uninterrupted_search(tmp_path):
    ref = run_cli(_args(tmp_path, "reference"), env=ENV, timeout=600)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    want = _decisions(tmp_path / "reference")
    total = _rounds(tmp_path / "reference")
    assert len(want) == 6 and any(s for _, _, s, _ in want), want   # ASHA stopped some
    moments = sorted(random.Random(SEED).sample(range(2, total - 1), 5))

    name, exp = "killed", tmp_path / "killed"
    args = _args(tmp_path, name)
    finished_before_a_kill, kills = {}, []

    def before_kill(k):
        for tid in _finished(exp):      # attempts so far of each finished trial
            finished_before_a_kill.setdefault(tid, _attempts(exp, tid))
        kills.append((k, _rounds(exp)))

    for i, k in enumerate(moments):
        argv = args if i == 0 else ["--resume", "--storage-path", str(tmp_path), "--name", name,
                                    "--verbose", "0"]
        _sigkill_when(argv, tmp_path / f"run{i}.log", lambda: _rounds(exp) >= k,
                      f"round {k} never reached", before_kill=lambda: before_kill(k))
    print("killed at (round wanted, rounds seen):", kills)

    res = run_cli(["--resume", "--storage-path", str(tmp_path), "--name", name, "--verbose", "0"],
                  env=ENV, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    print("reference:", [(n, s, e) for n, _, s, e in want])
    print("killed   :", [(n, s, e) for n, _, s, e in _decisions(exp)])
    df = pd.read_parquet(exp / "trials.parquet")
    assert len(df) == 6 and df["trial_id"].is_unique, df[["trial_id", "config/optuna_trial"]]
    assert df["config/optuna_trial"].is_unique and set(df["state"]) == {"TERMINATED"}
    for tid, n in finished_before_a_kill.items():
        assert _attempts(exp, tid) == n, f"finished trial {tid} started again after it finished"

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{exp / 'study.db'}")
    told = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    by_ray = [t.user_attrs.get("ray_trial_id") for t in told]
    assert sorted(by_ray) == sorted(df["trial_id"]), (by_ray, list(df["trial_id"]))
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    states = {t.user_attrs["ray_trial_id"]: t.state.name for t in told}
    for _, r in df.iterrows():
        assert states[r["trial_id"]] == ("PRUNED" if r["stopped_early"] else "COMPLETE"), r

    got = _decisions(exp)
    assert [(p, s, e) for _, p, s, e in got] == [(p, s, e) for _, p, s, e in want]


def _ray_state_trials(exp):
    """Trial ids in the newest experiment_state of ``exp`` (what Ray restores)."""
    newest = sorted(exp.glob("experiment_state-*.json"))[-1]
    return {json.loads(t)["trial_id"] for t, _ in json.loads(newest.read_text())["trial_data"]}


def test_a_started_trial_is_in_rays_saved_state_before_it_reports(tmp_path):
    """Ray saves its experiment state every TUNE_GLOBAL_CHECKPOINT_S (here: not again after the
    first save). A driver killed while the second trial runs must still find that trial in the
    saved state, so that the resume continues it (one more start, from its checkpoint) instead of
    asking for a new trial and leaving the study with one the experiment does not have."""
    args = _args(tmp_path, "k")
    args[args.index("--num-samples") + 1] = "3"
    exp = tmp_path / "k"
    started = []

    def two_reported():
        started[:] = [d for d in exp.glob("trial_*") if (d / "metrics.jsonl").is_file()
                      and (d / "metrics.jsonl").read_text().strip()]
        return len(started) == 2

    _sigkill_when(args, tmp_path / "run.log", two_reported, "the second trial never reported",
                  env={"TUNE_GLOBAL_CHECKPOINT_S": "100000"}, timeout=300)
    ran = {d.name[len("trial_"):] for d in started}
    assert ran <= _ray_state_trials(exp), (ran, _ray_state_trials(exp))
    res = run_cli(["--resume", "--storage-path", str(tmp_path), "--name", "k", "--verbose", "0"],
                  env=ENV, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    df = pd.read_parquet(exp / "trials.parquet")
    assert len(df) == 3 and ran <= set(df["trial_id"]), (ran, list(df["trial_id"]))
    study = optuna.load_study(study_name="k", storage=f"sqlite:///{exp / 'study.db'}")
    assert [t.state.name for t in study.trials].count("FAIL") == 0     # no trial lost
    assert sorted(t.user_attrs["ray_trial_id"] for t in study.trials) == sorted(df["trial_id"])
