"""--sampler tpe-rung: TPE grades finished trials at one common budget (real Optuna, no Ray)."""
import statistics

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search import tune_monet
from search.searcher import last_view, make_sampler, rung_view

optuna.logging.set_verbosity(optuna.logging.WARNING)
X = {"x": FloatDistribution(0.0, 1.0)}


def asha_like_trials():
    """What asynchronous ASHA leaves: the first trials ran to the full budget (30 epochs)
    unopposed, with x near 0.9 and mediocre values; the later ones were stopped at the grace
    rung (epoch 2), the best of them near x = 0.1 and far better at epoch 2."""
    trials = [create_trial(state=TrialState.COMPLETE, value=0.70, params={"x": x},
                           distributions=X, intermediate_values={2: 0.50, 10: 0.60, 30: 0.70})
              for x in (0.85, 0.90, 0.95)]
    for i in range(16):
        x = (i + 0.5) / 16
        trials.append(create_trial(state=TrialState.PRUNED, params={"x": x}, distributions=X,
                                   intermediate_values={2: 0.9 - abs(x - 0.1)}))
    return trials


def test_rung_view_grades_every_trial_at_the_largest_budget_enough_reached():
    trials = asha_like_trials()
    for i, t in enumerate(trials):
        t.number = i
    view = rung_view(trials, 6)                       # 3 trials reached 30: too few, so epoch 2
    assert all(t.state == TrialState.COMPLETE for t in view)
    assert [t.value for t in view[:3]] == [0.50, 0.50, 0.50]
    assert [t.value for t in view[3:]] == [t.intermediate_values[2] for t in trials[3:]]
    assert [t.params for t in view] == [t.params for t in trials]
    view = rung_view(trials, 3)                       # 3 reached epoch 30: graded there
    assert [t.state for t in view[:3]] == [TrialState.COMPLETE] * 3
    assert all(t.state == TrialState.PRUNED for t in view[3:])
    assert rung_view(trials[:4], 6) == trials[:4]     # too few finished trials: as they are


@pytest.mark.parametrize("kind, low, high", [("tpe", 0.6, 1.0), ("tpe-rung", 0.0, 0.4)])
def test_tpe_rung_follows_the_best_at_a_common_budget_not_the_first_to_finish(kind, low, high):
    """Stock TPE ranks every COMPLETE trial above every PRUNED one, so its good group is the
    early full-budget trials (x near 0.9); tpe-rung compares all trials at epoch 2 and
    proposes near x = 0.1, where the trials were best there."""
    study = optuna.create_study(direction="maximize",
                                sampler=make_sampler(kind, seed=0, n_startup_trials=5))
    for t in asha_like_trials():
        study.add_trial(t)
    xs = []
    for _ in range(9):
        t = study.ask(X)
        xs.append(t.params["x"])
        study.tell(t, state=TrialState.FAIL)          # FAIL: ignored by TPE, not a result
    assert low <= statistics.median(xs) <= high, (kind, xs)


def test_last_view_grades_each_trial_by_its_last_value_as_ray_tells_optuna():
    trials = asha_like_trials()
    for i, t in enumerate(trials):
        t.number = i
    view = last_view(trials)
    assert all(t.state == TrialState.COMPLETE for t in view)
    assert [t.value for t in view] == [0.70] * 3 + [t.intermediate_values[2] for t in trials[3:]]


def test_sampler_choices_and_the_constant_liar_flag(tmp_path):
    p = tune_monet.build_parser()
    assert p.parse_args(["--sampler", "tpe-rung"]).sampler == "tpe-rung"
    assert p.parse_args(["--sampler", "tpe-last"]).sampler == "tpe-last"
    with pytest.raises(ValueError, match="expected tpe, tpe-mv, tpe-rung, tpe-last or random"):
        make_sampler("tpe-bohb", 0, 5)
    assert make_sampler("tpe", 0, 5)._constant_liar
    assert not make_sampler("tpe", 0, 5, constant_liar=False)._constant_liar
    on = tune_monet.resolve(p.parse_args(["--storage-path", str(tmp_path)]))
    off = tune_monet.resolve(p.parse_args(["--storage-path", str(tmp_path),
                                           "--constant-liar", "off"]))
    assert on.constant_liar is True and off.constant_liar is False
    with pytest.raises(SystemExit):
        p.parse_args(["--constant-liar", "maybe"])
