"""What keeps a search of thousands of trials from slowing down as it goes (real Optuna, real Ray
Trial objects; the timings themselves are in benchmarks/cluster_overhead.py):

* WindowedTPESampler is exactly TPESampler while the study is within its history, and beyond it
  TPE sees the best trials of the whole study, the latest ``history`` others and the running ones;
* ResultsCallback writes the tables at every trial end when writing is cheap, writes fewer times
  when it is not (here: a share of the driver's time so small that only the first trial end and
  the experiment's end write), and the last write always has every trial.
"""
import optuna
import pandas as pd
from optuna.samplers._tpe.sampler import default_gamma
from optuna.trial import TrialState
from ray.tune.experiment import Trial

from search.results import ExperimentFiles, ResultsCallback
from search.searcher import WindowedTPESampler, _HistoryWindow, make_sampler

optuna.logging.set_verbosity(optuna.logging.ERROR)


def _objective(t):
    x = t.suggest_float("x", -2, 2)
    y = t.suggest_int("y", 0, 10)
    return (x - 0.3) ** 2 + (y - 4) ** 2 / 10


def test_windowed_tpe_is_tpe_within_its_history():
    a = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3, n_startup_trials=5,
                                                               constant_liar=True))
    b = optuna.create_study(sampler=WindowedTPESampler(history=30, seed=3, n_startup_trials=5,
                                                       constant_liar=True))
    a.optimize(_objective, n_trials=25)
    b.optimize(_objective, n_trials=25)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]


def test_history_window_keeps_the_best_the_latest_and_the_running():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(_objective, n_trials=80)
    pruned = study.ask()
    pruned.suggest_float("x", -2, 2)
    pruned.report(5.0, 1)
    study.tell(pruned, state=TrialState.PRUNED)
    running = study.ask()
    window = _HistoryWindow(study, 10, default_gamma)
    seen = {t.number for t in window._get_trials(deepcopy=False, states=None)}
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = {t.number for t in sorted(done, key=lambda t: t.value)[:default_gamma(81)]}
    latest = {t.number for t in study.trials if t.state != TrialState.RUNNING}
    latest = set(sorted(latest)[-10:])
    assert seen == best | latest | {running.number}
    # the sampler runs on it
    s = WindowedTPESampler(history=10, seed=0, n_startup_trials=5)
    study.sampler = s
    study.tell(running, state=TrialState.FAIL)
    study.optimize(_objective, n_trials=5)
    assert len(study.trials) == 87


def test_make_sampler_defaults_to_a_bounded_history():
    s = make_sampler("tpe", 0, 3)
    assert isinstance(s, WindowedTPESampler) and s.history == 1000
    assert make_sampler("tpe", 0, 3, 0).history == 0


def _trial(i):
    t = Trial("noop", config={"family": "vmnc", "lr": 10 ** -(i % 4), "optuna_trial": i},
              trial_id=f"t{i:03d}", stub=True)
    t.update_last_result({"val/mean_acc": 0.5 + i / 100, "epoch": 2.0, "round": 4,
                          "budget": 1.0})
    t.set_status(Trial.TERMINATED)
    return t


def _run(tmp_path, max_share, n=12):
    files = ExperimentFiles(tmp_path, "val/mean_acc", "max", {"dataset": "toy"}, "toy")
    cb = ResultsCallback(files, max_share=max_share)
    trials, rows_seen = [], []
    for i in range(n):
        trials.append(_trial(i))
        cb.on_trial_complete(i, trials, trials[-1])
        cb.on_step_end(i, trials)
        rows_seen.append(len(pd.read_parquet(tmp_path / "trials.parquet")))
    cb.on_experiment_end(trials)
    return cb, rows_seen


def test_results_callback_throttles_and_always_writes_at_the_end(tmp_path):
    (tmp_path / "every").mkdir()
    (tmp_path / "rare").mkdir()
    cb, seen = _run(tmp_path / "every", max_share=float("inf"))
    assert seen == list(range(1, 13)) and cb.writes == 13     # every trial end, and the end
    cb, seen = _run(tmp_path / "rare", max_share=1e-12)
    assert seen == [1] * 12 and cb.writes == 2                # the first trial end, the end
    assert len(pd.read_parquet(tmp_path / "rare" / "trials.parquet")) == 12


def test_tpe_history_flag_refuses_a_negative_value():
    from conftest import TINY, run_cli

    res = run_cli(TINY + ["--family", "vmnc", "--tpe-history", "-1", "--num-samples", "1"])
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "--tpe-history" in res.stderr, res.stderr
