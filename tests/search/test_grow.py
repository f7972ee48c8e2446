"""Grow a search: extend a finished one (--resume --num-samples N), warm-start a new one from
another (--warm-start), refuse flags that would change a saved experiment, and ASHA's rungs and
Optuna's records across a resume. Real Ray (one local instance for the module), real Optuna,
real toy training (vmnc, toy T=3, 2 epochs)."""
import shutil

import optuna
import pandas as pd
import pytest
import yaml
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from conftest import TINY
from search import tune_monet
from search.asha import PersistentASHA
from search.searcher import BudgetHonestOptunaSearch

optuna.logging.set_verbosity(optuna.logging.WARNING)

BASE = TINY + ["--family", "vmnc", "--max-epochs", "2", "--eval-every", "1", "--grace-period", "1",
               "--max-concurrent", "1", "--verbose", "0"]


def _search(root, name, *args):
    return tune_monet.run(BASE + ["--storage-path", str(root), "--name", name, *args])


def _resume(root, name, *args):
    return tune_monet.run(["--resume", "--storage-path", str(root), "--name", name,
                           "--verbose", "0", *args])


def _table(exp):
    return pd.read_parquet(exp / "trials.parquet")


def _study(exp, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{exp / 'study.db'}")


PARAMS = ["config/lr", "config/batch_size", "config/weight_decay", "config/head_width"]


@pytest.fixture(scope="module")
def grown(ray_local, tmp_path_factory):
    """A 3-trial search, a copy of it, both extended to 6; and one 6-trial search in one go."""
    root = tmp_path_factory.mktemp("grow")
    assert _search(root, "a", "--num-samples", "3") == 0
    before = _table(root / "a")
    results_before = {t: (root / "a" / f"trial_{t}" / "result.json").read_bytes()
                      for t in before["trial_id"]}
    shutil.copytree(root / "a", root / "b")
    assert _resume(root, "a", "--num-samples", "6") == 0
    assert _resume(root, "b", "--num-samples", "6") == 0
    assert _search(root, "whole", "--num-samples", "6") == 0
    return root, before, results_before


def test_extend_adds_trials_and_keeps_the_finished_ones(grown):
    root, before, results_before = grown
    exp = root / "a"
    after = _table(exp)
    assert len(after) == 6 and after["trial_id"].is_unique
    assert set(after["state"]) == {"TERMINATED"}
    first = after[after["trial_id"].isin(before["trial_id"])].set_index("trial_id")
    assert len(first) == 3
    old = before.set_index("trial_id")
    for col in PARAMS + ["last/val/mean_acc", "rounds"]:
        assert (first[col] == old.loc[first.index, col]).all(), col
    for t, data in results_before.items():   # not re-run: their result files are unchanged
        assert (exp / f"trial_{t}" / "result.json").read_bytes() == data
    study = _study(exp, "a")
    assert [t.number for t in study.trials] == list(range(6))
    assert sorted(after["config/optuna_trial"]) == list(range(6))
    assert yaml.safe_load((exp / "config.yaml").read_text())["search"]["num_samples"] == 6
    best = yaml.safe_load((exp / "best_config.yaml").read_text())
    assert best["trial_id"] in set(after["trial_id"])


def test_extend_continues_the_sampler_as_if_never_stopped(grown):
    """3 + 3 trials give the configs of one 6-trial search (same seed, one at a time): the
    sampler continued from every earlier trial, no new random start-up phase."""
    root, _, _ = grown
    ext = _table(root / "a").sort_values("config/optuna_trial")
    whole = _table(root / "whole").sort_values("config/optuna_trial")
    for col in PARAMS:
        assert list(ext[col]) == pytest.approx(list(whole[col])), col


def test_extending_two_copies_gives_the_same_new_configs(grown):
    root, before, _ = grown
    a, b = _table(root / "a"), _table(root / "b")
    new_a = a[~a["trial_id"].isin(before["trial_id"])].sort_values("config/optuna_trial")
    new_b = b[~b["trial_id"].isin(before["trial_id"])].sort_values("config/optuna_trial")
    assert len(new_a) == len(new_b) == 3
    for col in PARAMS:
        assert list(new_a[col]) == pytest.approx(list(new_b[col])), col
    assert len(_study(root / "b", "a").trials) == 6      # the copy's own study.db grew


@pytest.mark.parametrize("args, words", [
    (["--max-epochs", "5"], ["--max-epochs: 5.0 differs from the saved experiment's 2.0",
                             "only --num-samples"]),
    (["--T", "4"], ["--T: 4 differs from the saved experiment's 3"]),
    (["--family", "vmns"], ["--family: 'vmns' differs from the saved experiment's 'vmnc'"]),
    (["--num-samples", "2"], ["--num-samples: 2 is fewer than the 6 trials"]),
    (["--warm-start", "x"], ["--warm-start: a resumed search keeps how it started"]),
])
def test_resume_refuses_flags_that_differ(grown, args, words, capsys):
    root, _, _ = grown
    exp = root / "a"
    cfg = (exp / "config.yaml").read_bytes()
    files = sorted(p.name for p in exp.iterdir())
    assert _resume(root, "a", *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for w in words:
        assert w in err[0]
    assert (exp / "config.yaml").read_bytes() == cfg
    assert sorted(p.name for p in exp.iterdir()) == files


def test_same_flags_and_budget_flags_are_accepted_on_resume(grown):
    root, _, _ = grown
    # nothing new to run: the saved flags repeated, a budget flag changed
    assert _resume(root, "a", "--T", "3", "--family", "vmnc", "--max-failures", "1") == 0
    assert len(_table(root / "a")) == 6


def test_trials_a_killed_driver_left_running_are_closed_and_not_counted(grown, tmp_path):
    """A driver SIGKILLed after Optuna asked a trial but before the searcher's state was saved
    leaves that trial RUNNING in the study; the resume closes it as FAIL, marked, and it is not
    one of the experiment's trials (neither for the table nor for the --num-samples check)."""
    from search.searcher import ORPHAN_ATTR

    root, _, _ = grown
    shutil.copytree(root / "a", tmp_path / "a")
    exp = tmp_path / "a"
    orphan = _study(exp, "a").ask().number            # RUNNING, unknown to the saved searcher
    assert _resume(tmp_path, "a") == 0                # no budget flag given
    assert _resume(tmp_path, "a", "--num-samples", "6") == 0     # 6 asked, not 7
    trials = {t.number: t for t in _study(exp, "a").trials}
    assert trials[orphan].state.name == "FAIL" and trials[orphan].user_attrs[ORPHAN_ATTR]
    assert not [t for t in trials.values() if t.state.name == "RUNNING"]
    assert len(_table(exp)) == 6


def test_resume_without_rays_search_state_uses_our_copy(grown, tmp_path):
    """A driver killed while Ray uploads its folder can leave an experiment_state without the
    searcher's state (seen on s3://). The copy written when each trial is created and ends
    carries the search on: one trial more, not the whole budget again, each Optuna trial once."""
    from search.searcher import BudgetedSearchGenerator as G

    root, _, _ = grown
    shutil.copytree(root / "a", tmp_path / "a")
    exp = tmp_path / "a"
    assert (exp / G.OWN_STATE).is_file() and (exp / G.OWN_SEARCHER).is_file()
    for f in list(exp.glob("search_gen_state-*.json")) + list(exp.glob("searcher-state-*.pkl")):
        f.unlink()
    assert _resume(tmp_path, "a", "--num-samples", "7") == 0
    df = _table(exp)
    assert len(df) == 7 and df["config/optuna_trial"].is_unique, df[["trial_id", "config/optuna_trial"]]
    assert sorted(df["config/optuna_trial"]) == list(range(7))
    states = [t.state.name for t in _study(exp, "a").trials]
    assert len(states) == 7 and set(states) <= {"COMPLETE", "PRUNED"}, states


def test_warm_start_clips_marks_and_warns_once(grown, tmp_path, capsys):
    root, _, _ = grown
    space = tmp_path / "narrow.yaml"
    space.write_text("lr: {low: 1.0e-5, high: 2.0e-5, log: true}\nhead_width: [64]\n")
    assert _search(tmp_path, "warm", "--num-samples", "4", "--space", str(space),
                   "--warm-start", str(root / "a"), "--warm-start-top", "3") == 0
    out = capsys.readouterr()
    warns = [ln for ln in out.out.splitlines() + out.err.splitlines() if "--warm-start:" in ln]
    assert len(warns) == len(set(warns)) and any("'lr' clipped to [1e-05, 2e-05]" in w
                                                 for w in warns), warns
    df = _table(tmp_path / "warm").sort_values("config/optuna_trial")
    assert df["warm_start"].notna().sum() == 3
    assert df["warm_start"].iloc[:3].notna().all() and df["warm_start"].iloc[3:].isna().all()
    assert df["warm_start"].iloc[0].startswith(str(root / "a") + "#")
    assert ((df["config/lr"] >= 1e-5 - 1e-12) & (df["config/lr"] <= 2e-5 + 1e-12)).all()
    assert set(df["config/head_width"]) == {64}
    # the warm-started configs are the source's best ones, clipped
    src = _study(root / "a", "a")
    best = sorted((t for t in src.trials if t.state.name == "COMPLETE"),
                  key=lambda t: -t.value)[0]
    assert df["config/batch_size"].iloc[0] == best.params["batch_size"]
    assert df["config/lr"].iloc[0] == pytest.approx(min(max(best.params["lr"], 1e-5), 2e-5))
    study = _study(tmp_path / "warm", "warm")
    assert [t.user_attrs.get("warm_start") is not None for t in study.trials] == [True] * 3 + [False]
    # the analysis report says how they fared against the sampled ones
    from search.analyze import warm_start_summary
    line = warm_start_summary(df, "val/mean_acc", "max")
    assert line.startswith("warm-started: 3 trials, best val/mean_acc ") and "sampled: 1 trials" in line


@pytest.mark.parametrize("src, words", [
    ("{tmp}/nope", ["--warm-start: {tmp}/nope is not an experiment folder"]),
    ("sqlite:///{tmp}/none.db#x", ["--warm-start: no such study database"]),
])
def test_warm_start_from_nothing_is_one_line(tmp_path, capsys, src, words):
    src = src.format(tmp=tmp_path)
    assert _search(tmp_path, "w", "--num-samples", "2", "--warm-start", src) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w.format(tmp=tmp_path) in err[0] for w in words), err
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------------------------- records
def test_a_trial_without_a_final_result_after_reports_is_pruned_not_failed():
    s = BudgetHonestOptunaSearch(lambda t: {"x": t.suggest_float("x", 0, 1)} and None,
                                 metric="val/mean_acc", mode="max",
                                 sampler=optuna.samplers.RandomSampler(seed=0))
    for tid in ("a", "b", "c"):
        s.suggest(tid)
    s.on_trial_result("a", {"val/mean_acc": 0.5, "round": 1, "budget": 0.5})
    s.on_trial_complete("a", {"round": 2, "budget": 0.6})          # no final metric
    s.on_trial_result("b", {"val/mean_acc": 0.5, "round": 1, "budget": 0.5})
    s.on_trial_complete("b", {"val/mean_acc": float("nan"), "round": 2, "budget": 1.0})
    s.on_trial_complete("c", None, error=True)
    states = [t.state.name for t in s.study.trials]
    assert states == ["PRUNED", "FAIL", "FAIL"]
    assert s.study.trials[0].user_attrs["reason"] == "no final result"


def test_asha_rungs_and_decisions_survive_a_restart(tmp_path):
    f = str(tmp_path / "asha_state.json")
    kw = dict(time_attr="epoch", metric="m", mode="max", max_t=9, grace_period=1,
              reduction_factor=3)
    trials = [Trial("__fake", stub=True, trial_id=f"t{i}") for i in range(5)]
    a = PersistentASHA(f, **kw)
    a.set_search_properties(None, None)
    for t in trials:
        a.on_trial_add(None, t)
    decisions = [a.on_trial_result(None, t, {"epoch": 1, "m": v})
                 for t, v in zip(trials, [0.9, 0.8, 0.1, 0.7, 0.05])]
    assert decisions[-1] == TrialScheduler.STOP
    b = PersistentASHA(f, **kw)                 # a resumed search: a fresh scheduler object
    b.set_search_properties(None, None)
    assert b.state() == a.state()
    # the stop decision stands when Ray replays the stopped trial from an older checkpoint
    assert b.on_trial_result(None, trials[4], {"epoch": 1, "m": 0.99}) == TrialScheduler.STOP
    # and a new trial is judged against the saved rung, as by the never-stopped scheduler
    new = Trial("__fake", stub=True, trial_id="t9")
    b.on_trial_add(None, new)
    a.on_trial_add(None, Trial("__fake", stub=True, trial_id="t9"))
    assert b.on_trial_result(None, new, {"epoch": 1, "m": 0.2}) == \
        a.on_trial_result(None, new, {"epoch": 1, "m": 0.2}) == TrialScheduler.STOP


def test_trial_timeout_stops_trials_and_records_them_pruned(ray_local, tmp_path):
    rc = tune_monet.run(TINY + ["--family", "vmnc", "--num-samples", "2", "--max-epochs", "200",
                                "--eval-every", "1", "--scheduler", "fifo", "--trial-timeout", "3",
                                "--storage-path", str(tmp_path), "--name", "t", "--verbose", "0"])
    df = _table(tmp_path / "t")
    assert len(df) == 2 and df["stopped_early"].all() and (df["epochs"] < 200).all()
    assert (df["time_total_s"] >= 3).all()
    states = {t.state.name for t in _study(tmp_path / "t", "t").trials}
    assert states == {"PRUNED"}
    assert rc == 0          # the best config is then the best stopped trial, and says so
    best = yaml.safe_load((tmp_path / "t" / "best_config.yaml").read_text())
    assert best["full_budget"] is False


def test_asha_knows_which_trials_passed_its_last_rung_and_the_tables_say_so(tmp_path):
    from search.results import pick_best, trial_row

    f = str(tmp_path / "asha_state.json")
    kw = dict(time_attr="epoch", metric="m", mode="max", max_t=9, grace_period=1,
              reduction_factor=3)                  # rungs at 1 and 3 epochs
    a = PersistentASHA(f, **kw)
    a.set_search_properties(None, None)
    t = {k: Trial("__fake", stub=True, trial_id=k) for k in ("lead", "low", "next", "young")}
    for x in t.values():
        a.on_trial_add(None, x)
    go = TrialScheduler.CONTINUE
    assert a.on_trial_result(None, t["lead"], {"epoch": 1, "m": 0.9}) == go
    assert a.on_trial_result(None, t["lead"], {"epoch": 3, "m": 0.9}) == go      # last rung
    assert a.on_trial_result(None, t["low"], {"epoch": 1, "m": 0.1}) == TrialScheduler.STOP
    assert a.on_trial_result(None, t["next"], {"epoch": 1, "m": 0.95}) == go
    assert a.on_trial_result(None, t["next"], {"epoch": 3, "m": 0.95}) == go
    assert a.on_trial_result(None, t["young"], {"epoch": 1, "m": 0.97}) == go
    assert a.on_trial_result(None, t["young"], {"epoch": 2, "m": 0.99}) == go     # no rung yet
    passed = {k for k in t if a.passed_rungs(k)}
    assert passed == {"lead", "next"}
    # the full budget is a stop by ASHA, and the trial is still one that passed its rungs
    assert a.on_trial_result(None, t["lead"], {"epoch": 9, "m": 0.91}) == TrialScheduler.STOP
    assert a.passed_rungs("lead")
    b = PersistentASHA(f, **kw)                    # a resumed search reads them back
    assert {k for k in t if b.passed_rungs(k)} == passed
    # the tables: "next" and "young" were cut by the search's end (a time budget) at 5 and
    # 2 epochs; "young" has the best value but never met the last rung, "next" did
    results = {"lead": (9, 1.0, 0.91), "low": (1, 1 / 9, 0.1), "next": (5, 5 / 9, 0.95),
               "young": (2, 2 / 9, 0.99)}
    rows = []
    for k, (ep, budget, m) in results.items():
        t[k].set_status(Trial.TERMINATED)
        t[k].run_metadata.last_result = {"epoch": ep, "budget": budget, "m": m}
        rows.append(trial_row(t[k], "m", "max", "monet", scheduler=b))
    got = {r["trial_id"]: (r["stopped_early"], r["passed_rungs"]) for r in rows}
    assert got == {"lead": (False, True), "low": (True, False), "next": (True, True),
                   "young": (True, False)}
    assert pick_best(rows, "m", "max")["trial_id"] == "next"
    # without the scheduler (FIFO, or a table of an older version) only full budgets count
    rows = [trial_row(t[k], "m", "max", "monet") for k in t]
    assert not any(r["passed_rungs"] for r in rows)
    assert pick_best(rows, "m", "max")["trial_id"] == "lead"
    # the analysis ranks them the same way (a PRUNED finalist with the COMPLETE trials)
    from search import analyze
    df = pd.DataFrame({"trial_id": ["lead", "low", "next", "young"],
                       "optuna_state": ["COMPLETE", "PRUNED", "PRUNED", "PRUNED"],
                       "passed_rungs": [True, False, True, False],
                       "last/m": [0.91, 0.1, 0.95, 0.99]})
    assert list(analyze.ranked(df, "m", "max")["trial_id"]) == ["next", "lead", "young", "low"]
    assert list(analyze.ranked(df.drop(columns="passed_rungs"), "m", "max")["trial_id"]) == \
        ["lead", "young", "next", "low"]
