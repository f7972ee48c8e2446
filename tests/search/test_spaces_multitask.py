"""Search spaces of mtt and mtca, group loss weights, uncertainty weighting and conditional
parameters; space-file fixing and dropping; TPE with multivariate/group sampling (no Ray)."""
import warnings

import optuna
import pytest

from monet.data.affwild2 import spec as affwild2_spec
from monet.errors import ConfigError
from monet.tasks import TaskSpec
from search import tune_monet
from search.searcher import make_sampler
from search.spaces import FAMILIES_ALL, SearchSpace, trial_to_train_config

optuna.logging.set_verbosity(optuna.logging.WARNING)
AFF = affwild2_spec()
BP4D = TaskSpec.binary([f"AU{a}" for a in (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)], "au")
BASE = {"dataset": "affwild2", "data_root": "/x"}


def sample(space, n=60, seed=0, sampler=None):
    study = optuna.create_study(sampler=sampler or optuna.samplers.RandomSampler(seed=seed))
    out = []
    for i in range(n):
        t = study.ask()
        fixed = space(t)
        out.append({**t.params, **fixed})
        study.tell(t, float(i % 7))
    return out


def test_mtt_and_mtca_default_parameters():
    mtt = set(SearchSpace.build(["mtt"], AFF, 10).names())
    assert {"lr", "weight_decay", "batch_size", "temperature/au", "temperature/expr",
            "temperature/va", "weight/au", "weight/expr", "weight/va", "weighting", "d_model",
            "heads", "n_x", "n_t", "n_d", "mixup", "mixup_alpha", "task_weighting"} <= mtt
    assert "dice_lambda" not in mtt
    mtca = set(SearchSpace.build(["mtca"], AFF, 10).names())
    assert {"knn", "cross_attn", "d_model", "mixup", "weighting", "weight/va",
            "temperature/va"} <= mtca
    assert not {"dice_lambda", "task_weighting", "heads", "n_x"} & mtca
    assert {"mtt", "mtca"} <= set(FAMILIES_ALL)


def test_single_group_datasets_get_no_group_weights():
    names = set(SearchSpace.build(["mtt"], BP4D, 10).names())
    assert "temperature/au" in names and not any(n.startswith("weight/") for n in names)
    assert "weighting" in names
    assert "weighting" not in SearchSpace.build(["vmnc"], BP4D, 10).names()
    assert "weight/expr" in SearchSpace.build(["monet"], AFF, 10).names()   # every family


def test_samples_are_valid_configs_with_wide_log_temperatures_and_conditions():
    space = SearchSpace.build(["mtt"], AFF, 10)
    ps = sample(space, 80)
    temps = [p["temperature/expr"] for p in ps]
    assert min(temps) >= 0.05 and max(temps) <= 20 and max(temps) / min(temps) > 20
    for p in ps:
        assert (p["mixup_alpha"] is not None) == p["mixup"]    # conditional on mixup
        c = trial_to_train_config({**BASE, "family": "mtt"}, p)
        assert c.d_model % c.heads == 0 and 1 <= c.n_x <= 4
        assert c.temperatures == {g: p[f"temperature/{g}"] for g in ("au", "expr", "va")}
        assert c.group_weights == {g: p[f"weight/{g}"] for g in ("au", "expr", "va")}
    assert {p["weighting"] for p in ps} == {"fixed", "uncertainty"}
    ca = sample(SearchSpace.build(["mtca"], AFF, 10), 60, seed=1)
    for p in ca:                       # mtca: temperatures only start learned weighting
        assert (p["temperature/au"] is not None) == (p["weighting"] == "uncertainty")
        assert 1 <= p["knn"] <= 12


def test_family_all_samples_every_family_and_tpe_multivariate_group_works():
    space = SearchSpace.build(list(FAMILIES_ALL), AFF, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ps = sample(space, 30, sampler=make_sampler("tpe-mv", 0, n_startup_trials=10))
    assert {p["family"] for p in ps} >= {"mtt", "mtca"}
    tpe = make_sampler("tpe-mv", 0, 5)
    assert tpe._multivariate and tpe._group
    # the default, --sampler tpe, models each parameter on its own (search_vs_peers measured it
    # better at 20-50 trials); k is still drawn within 1..M
    tpe = make_sampler("tpe", 0, 5)
    assert not tpe._multivariate and not tpe._group
    tuner_args = tune_monet.build_parser().parse_args([])
    assert tuner_args.sampler == "tpe"
    assert tune_monet.build_parser().parse_args(["--sampler", "tpe-mv"]).sampler == "tpe-mv"
    for p in sample(SearchSpace.build(["monet"], AFF, 10), 25, sampler=tpe):
        assert 1 <= p["k"] <= p["M"]
    names = set(space.names()) - {"family"}
    for p in ps:
        assert names <= set(p)             # every trial config has every column
        c = trial_to_train_config({**BASE, "family": p["family"]}, p)
        assert c.family == p["family"]
        if p["family"] != "monet":
            assert p["M"] is None and c.M == 120          # None: the TrainConfig default


def test_space_file_fixes_and_drops_the_new_parameters():
    over = {"weighting": "uncertainty", "temperature/va": None, "weight/va": 2.0,
            "knn": {"low": 2, "high": 3}, "mixup": True, "d_model": [96], "heads": [4, 12],
            "n_x": 2}
    space = SearchSpace.build(["mtt", "mtca"], AFF, 10, over, source="s.yaml")
    for p in sample(space, 40):
        assert p["weighting"] == "uncertainty" and p["weight/va"] == 2.0
        assert "temperature/va" not in p and p["mixup_alpha"] is not None
        if p["family"] == "mtca":
            assert 2 <= p["knn"] <= 3 and p["temperature/au"] is not None
            assert p["heads"] is None and p["n_t"] is None     # mtt's, not used here
        else:
            assert p["n_x"] == 2 and p["d_model"] == 96
        c = trial_to_train_config({**BASE, "family": p["family"]}, p)
        assert c.group_weights["va"] == 2.0 and "va" not in c.temperatures


@pytest.mark.parametrize("over,msg", [
    ({"weight/pose": 1.0}, "no task group 'pose'"),
    ({"weight/au": -1.0}, "loss weight >= 0"),
    ({"d_model": [100], "heads": [8]}, "not a multiple of heads"),
    ({"weighting": "learned"}, "weighting"),
])
def test_space_file_errors(over, msg):
    with pytest.raises(ConfigError, match=msg):
        SearchSpace.build(["mtt"], AFF, 10, over, source="s.yaml")
