"""Search spaces: per-family defaults, conditional k, YAML overrides and their errors (no Ray)."""
import math

import optuna
import pytest
import yaml

from monet.config import TrainConfig
from monet.errors import ConfigError
from monet.tasks import Task, TaskSpec
from search.spaces import FAMILIES_ALL, SearchSpace, trial_to_train_config

optuna.logging.set_verbosity(optuna.logging.WARNING)
TOY5 = TaskSpec.binary([f"task{i}" for i in range(1, 6)])
AFF = TaskSpec((Task("AU1", group="au"), Task("AU2", group="au"),
                Task("expr", "multiclass", 8, group="expr")))


def sample(space, n=60, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        t = study.ask()
        fixed = space(t)
        out.append({**t.params, **fixed})
        study.tell(t, 0.0)
    return out


def test_monet_defaults_cover_paper_parameters_and_k_never_exceeds_m():
    space = SearchSpace.build(["monet"], TOY5, max_epochs=20)
    names = set(space.names())
    assert {"lr", "weight_decay", "lr_decay", "batch_size", "hidden", "M", "k", "warmup",
            "order_lr", "L", "dice_lambda", "task_weighting", "temperature/task"} <= names
    for p in sample(space):
        assert 1 <= p["k"] <= p["M"] <= min(math.factorial(5), 128)
        assert 0.0 <= p["warmup"] <= 5.0
        assert p["batch_size"] in (16, 32, 64, 128)
        cfg = trial_to_train_config({"dataset": "toy", "T": 5, "family": "monet"}, p)
        assert cfg.temperatures == {"task": p["temperature/task"]}


def test_small_t_caps_m_at_t_factorial_and_warmup_at_half_the_budget():
    space = SearchSpace.build(["monet"], TaskSpec.binary("abc"), max_epochs=3)
    ps = sample(space, 40)
    assert max(p["M"] for p in ps) <= 6
    assert max(p["warmup"] for p in ps) <= 1.5


def test_family_spaces_differ():
    vm = set(SearchSpace.build(["vmnc"], TOY5, 10).names())
    mr = set(SearchSpace.build(["mrnn"], TOY5, 10).names())
    assert {"head_width", "dropout"} <= vm and "M" not in vm and "hidden" not in vm
    assert {"hidden", "L"} <= mr and "M" not in mr and "dropout" not in mr


def test_family_all_is_the_first_categorical_choice_and_conditions_the_rest():
    space = SearchSpace.build(list(FAMILIES_ALL), TOY5, 10)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(40):
        t = study.ask()
        space(t)
        assert next(iter(t.params)) == "family"
        fam = t.params["family"]
        seen.add(fam)
        assert ("M" in t.params) == (fam == "monet")
        assert ("dropout" in t.params) == (fam in ("vmnc", "vmns"))
        study.tell(t, 0.0)
    assert seen == set(FAMILIES_ALL)


def test_one_temperature_per_task_group():
    names = SearchSpace.build(["monet"], AFF, 10).names()
    assert "temperature/au" in names and "temperature/expr" in names


def test_yaml_overrides_range_fix_drop_and_add(tmp_path):
    f = tmp_path / "space.yaml"
    f.write_text(yaml.safe_dump({
        "lr": {"low": "1e-4", "high": 1e-3, "log": True},   # YAML may read 1e-4 as text
        "batch_size": [32, 64],
        "M": {"low": 4, "high": 16},
        "hidden": 32,
        "weight_decay": None,
        "enc_layers": {"low": 2, "high": 3},
        "feedback_embed": 16,
    }))
    space = SearchSpace.from_file(f, ["monet"], TOY5, 10)
    for p in sample(space, 40):
        assert 1e-4 <= p["lr"] <= 1e-3
        assert p["batch_size"] in (32, 64)
        assert 4 <= p["M"] <= 16 and 1 <= p["k"] <= p["M"]
        assert p["hidden"] == 32 and p["feedback_embed"] == 16
        assert p["enc_layers"] in (2, 3)
        assert "weight_decay" not in p
        cfg = trial_to_train_config({"family": "monet", "T": 5}, p)
        assert cfg.weight_decay == TrainConfig.weight_decay


@pytest.mark.parametrize("content, message", [
    ({"learning_rate": {"low": 1, "high": 2}}, "unknown parameter 'learning_rate'"),
    ({"lr": {"low": 1e-2, "high": 1e-4}}, "low 0.01 > high 0.0001"),
    ({"M": {"low": 2, "high": 8}, "k": {"low": 1, "high": 20}}, "parameter 'k' spans 1..20"),
    ({"M": 4, "k": 5}, "beyond M's range 4..4"),
    ({"M": {"low": 1, "high": 500}}, "expected 1..T! = 120"),
    ({"lr": {"low": 0, "high": 1, "log": True}}, "a log range needs low > 0"),
    ({"lr": {"lo": 1, "high": 2}}, "unknown key(s) ['lo']"),
    ({"dropout": 1.5}, "parameter 'dropout' = 1.5"),
    ({"epochs": 5}, "set by the flag --max-epochs"),
    ({"temperature/expr": 2.0}, "no task group 'expr'"),
    ({"batch_size": []}, "empty list of choices"),
])
def test_bad_space_files_name_the_parameter(tmp_path, content, message):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError) as e:
        SearchSpace.from_file(f, ["monet"], TOY5, 10)
    assert message in str(e.value)
    assert str(f) in str(e.value)
    assert "\n" not in str(e.value)


def test_unreadable_space_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        SearchSpace.from_file(tmp_path / "missing.yaml", ["vmnc"], TOY5, 10)
    f = tmp_path / "broken.yaml"
    f.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        SearchSpace.from_file(f, ["vmnc"], TOY5, 10)
    f.write_text("- lr\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        SearchSpace.from_file(f, ["vmnc"], TOY5, 10)


def test_space_is_picklable_for_ray():
    import pickle

    space = SearchSpace.build(["monet"], TOY5, 10)
    again = pickle.loads(pickle.dumps(space))
    assert again.describe() == space.describe()
