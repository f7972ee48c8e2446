"""Real searches on one local Ray instance (2 CPUs): files, Optuna records, faults, retries.

Every search here is tiny: toy T=3 with 96 training examples, vmnc (or a small MONET), a few
epochs. The CLI's ``run`` is called in this process, on the module's Ray instance.
"""
import json
import struct

import optuna
import pandas as pd
import pytest
import yaml

from conftest import TINY
from monet.config import TrainConfig
from search import tune_monet

optuna.logging.set_verbosity(optuna.logging.WARNING)


def search(tmp_path, name, *args, own_db=True):
    """Run a search; ``own_db=False`` leaves the study where the search keeps it by default."""
    db = f"sqlite:///{tmp_path / (name + '.db')}" if own_db else None
    rc = tune_monet.run(TINY + ["--storage-path", str(tmp_path), "--name", name,
                                *(["--optuna-storage", db] if db else []), "--verbose", "0", *args])
    exp = tmp_path / name
    db = db or f"sqlite:///{exp / 'study.db'}"
    study = optuna.load_study(study_name=name, storage=db)
    return rc, exp, pd.read_parquet(exp / "trials.parquet"), study


def by_ray_id(study):
    return {t.user_attrs.get("ray_trial_id"): t for t in study.trials}


def read_events(path):
    """Tags and kinds (scalar/histo/image) in a tensorboardX events file (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    tags = {}
    data = path.read_bytes()
    i = 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        ev = event_pb2.Event()
        ev.ParseFromString(data[i + 12:i + 12 + n])
        i += 12 + n + 4
        for v in ev.summary.value:
            tags[v.tag] = v.WhichOneof("value")
    return tags


def decision_rounds(epochs, rungs, full: bool) -> list:
    """The rounds (1-based) that --eval-rounds decisions evaluates, from the epochs the rounds
    reported: the first round reaching each rung, and the last round of a full-budget trial."""
    e = [0.0] + list(epochs)
    want = [i for i in range(1, len(e)) if any(e[i - 1] < m <= e[i] for m in rungs)]
    return want + [len(epochs)] if full and len(epochs) not in want else want


def test_smoke_search_writes_files_and_tells_optuna_the_budget_truth(ray_local, tmp_path):
    rc, exp, df, study = search(
        tmp_path, "smoke", "--family", "vmnc", "--num-samples", "6", "--max-epochs", "3",
        "--eval-every", "0.5", "--grace-period", "0.5", "--reduction-factor", "2",
        "--max-concurrent", "2")
    assert rc == 0
    # experiment files
    for f in ("config.yaml", "trials.parquet", "trials.csv", "best_config.yaml"):
        assert (exp / f).is_file(), f
    assert len(df) == 6 and set(df["state"]) == {"TERMINATED"}
    csv = pd.read_csv(exp / "trials.csv")
    assert list(csv["trial_id"]) == list(df["trial_id"])
    cfg = yaml.safe_load((exp / "config.yaml").read_text())
    assert cfg["search"]["metric"] == "val/mean_acc" and cfg["search"]["max_epochs"] == 3.0
    assert "lr" in cfg["space"]["vmnc"]
    best = yaml.safe_load((exp / "best_config.yaml").read_text())
    assert best["family"] == "vmnc" and best["dataset"] == "toy" and best["metric"] == "val/mean_acc"
    assert best["monet_tune_version"] and best["full_budget"] is True
    row = df.set_index("trial_id").loc[best["trial_id"]]
    full = df[~df["stopped_early"]]
    assert best["value"] == pytest.approx(full["last/val/mean_acc"].max())
    assert row["epochs"] == 3.0
    assert TrainConfig.from_dict(best["config"]).epochs == 3.0
    # ASHA stopped some trials before the budget; the others used all 6 rounds
    early = df[df["stopped_early"]]
    assert len(early) >= 1 and (early["epochs"] < 3).all()
    # (6 rounds of half an epoch; 3 when a batch is the whole training split of 96)
    from monet.train import plan_steps
    for _, r in full.iterrows():
        plan = plan_steps(TrainConfig(batch_size=int(r["config/batch_size"]), epochs=3,
                                      eval_every=0.5), 96)
        assert r["rounds"] == -(-plan.total_steps // plan.steps_per_round), r
        assert r["rounds"] == (6 if r["config/batch_size"] < 96 else 3), r
    # Optuna: PRUNED (with intermediate values) for ASHA-stopped, COMPLETE for full budget
    # --eval-rounds decisions (default): validation only at ASHA's rungs (0.5, 1, 2 epochs) and
    # at the end; the Optuna steps are exactly the evaluated rounds
    assert cfg["base"]["eval_at"] == [0.5, 1.0, 2.0]
    assert cfg["search"]["checkpoint_period"] == 10.0 and cfg["base"]["checkpoint_period_s"] == 10.0
    assert best["config"]["checkpoint_period_s"] is None   # a retrain checkpoints every round
    assert best["config"]["eval_at"] is None          # a retrain evaluates every round
    ot = by_ray_id(study)
    assert len(study.trials) == 6
    for _, r in df.iterrows():
        t = ot[r["trial_id"]]
        steps = sorted(t.intermediate_values)
        rows = [json.loads(x) for x in (exp / r["trial_dir"].rsplit("/", 1)[-1] / "metrics.jsonl")
                .read_text().splitlines()]
        assert len(rows) == r["rounds"]
        want = decision_rounds([x["epoch"] for x in rows], (0.5, 1.0, 2.0),
                               full=not r["stopped_early"])
        assert steps == want == [x["round"] for x in rows if "val/mean_acc" in x], (steps, want)
        # --checkpoint-period 10 (default): these trials last a few seconds, so Ray holds a
        # checkpoint exactly at the evaluated rounds (where ASHA may stop a trial) and the last
        results = [json.loads(x) for x in (exp / r["trial_dir"].rsplit("/", 1)[-1] / "result.json")
                   .read_text().splitlines()]
        assert [x["round"] for x in results if x.get("checkpoint_dir_name")] == \
               sorted(set(want) | {len(rows)}), [x.get("checkpoint_dir_name") for x in results]
        if r["stopped_early"]:
            assert t.state == optuna.trial.TrialState.PRUNED
            assert r["epochs"] < 3
        else:
            assert t.state == optuna.trial.TrialState.COMPLETE
            assert t.value == pytest.approx(r["last/val/mean_acc"])
    # per-trial folders: our metrics + tensorboardX events beside Ray's result files
    for d in df["trial_dir"]:
        d = exp / d.rsplit("/", 1)[-1]
        assert (d / "result.json").is_file() and (d / "metrics.jsonl").is_file()
        ev = next((d / "events").glob("events.out.tfevents.*"))
        tags = read_events(ev)
        assert tags.get("val/mean_acc") == "simple_value" and "train/loss" in tags
    # two trials really ran at the same time
    spans = []
    for d in df["trial_dir"]:
        d = exp / d.rsplit("/", 1)[-1]
        start = json.loads((d / "attempts.jsonl").read_text().splitlines()[0])["time"]
        end = json.loads((d / "result.json").read_text().splitlines()[-1])["timestamp"]
        spans.append((start, end))
    spans.sort()
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))
    # Ray actors are reused (reuse_actors): 6 trials ran in fewer than 6 worker processes
    pids = {json.loads((exp / d.rsplit("/", 1)[-1] / "result.json").read_text().splitlines()[-1])["pid"]
            for d in df["trial_dir"]}
    assert cfg["search"]["reuse_actors"] is True and len(pids) < len(df), pids


def test_monet_trials_log_pi_histogram_and_omega_image(ray_local, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("M: {low: 2, high: 6}\nL: 4\nwarmup: 0.0\n")
    rc, exp, df, study = search(
        tmp_path, "monet", "--family", "monet", "--space", str(space), "--num-samples", "2",
        "--max-epochs", "1", "--scheduler", "fifo", own_db=False)
    assert rc == 0 and len(df) == 2
    # the study lives in the experiment folder by default (found where the folder is: the
    # saved setting stays unset, so a copied folder keeps its own study)
    saved = yaml.safe_load((exp / "config.yaml").read_text())["search"]
    assert saved["optuna_storage"] is None and (exp / "study.db").is_file()
    assert len(study.trials) == 2
    # best_config.yaml is a config monet.train takes as it is
    from monet.train import main as train_main
    assert train_main(["--config", str(exp / "best_config.yaml"), "--epochs", "0.5",
                       "--out", str(tmp_path / "retrained"), "--quiet"]) == 0
    re = yaml.safe_load((tmp_path / "retrained" / "config.yaml").read_text())
    best = yaml.safe_load((exp / "best_config.yaml").read_text())
    assert {k: v for k, v in re.items() if k not in ("epochs", "test_at_end")} == {
        k: v for k, v in best["config"].items() if k not in ("epochs", "test_at_end")}
    assert (df["config/k"] <= df["config/M"]).all()
    d = exp / df["trial_dir"][0].rsplit("/", 1)[-1]
    # trials estimate val/loss from the evaluation's L orders (--val-loss sampled, the default
    # for an accuracy metric); best_config.yaml, and so every retrain, has the exact loss
    assert yaml.safe_load((d / "config.yaml").read_text())["val_loss"] == "sampled"
    assert best["config"]["val_loss"] == "exact" and re["val_loss"] == "exact"
    tags = read_events(next((d / "events").glob("events.out.tfevents.*")))
    assert tags.get("order/pi") == "histo"
    assert tags.get("order/omega") == "image"
    assert "order/dist_to_identity" in tags


@pytest.mark.parametrize("fault, text", [
    ("raise,round=1,every=2", "injected fault"),
    ("nan,every=2", "non-finite loss"),
])
def test_failing_trials_are_errors_and_the_search_goes_on(ray_local, tmp_path, fault, text):
    rc, exp, df, study = search(
        tmp_path, "faults", "--family", "vmnc", "--num-samples", "4", "--max-epochs", "2",
        "--scheduler", "fifo", "--inject-fault", fault)
    assert rc == 0
    df = df.sort_values("config/optuna_trial")
    assert list(df["state"]) == ["ERROR", "TERMINATED", "ERROR", "TERMINATED"]
    assert all(text in e for e in df[df["state"] == "ERROR"]["error"])
    ot = by_ray_id(study)
    for _, r in df.iterrows():
        want = "FAIL" if r["state"] == "ERROR" else "COMPLETE"
        assert ot[r["trial_id"]].state.name == want
    best = yaml.safe_load((exp / "best_config.yaml").read_text())
    assert best["trial_id"] in set(df[df["state"] == "TERMINATED"]["trial_id"])


def test_max_failures_retries_from_the_last_checkpoint(ray_local, tmp_path):
    rc, exp, df, study = search(
        tmp_path, "retry", "--family", "vmnc", "--num-samples", "2", "--max-epochs", "2",
        "--eval-every", "0.5", "--scheduler", "fifo", "--max-failures", "1",
        "--inject-fault", "raise,round=2,once", "--checkpoint-period", "0")   # every round
    assert rc == 0
    assert set(df["state"]) == {"TERMINATED"} and (df["rounds"] == 4).all()
    for d in df["trial_dir"]:
        d = exp / d.rsplit("/", 1)[-1]
        attempts = [json.loads(x) for x in (d / "attempts.jsonl").read_text().splitlines()]
        assert [a["restored"] for a in attempts] == [False, True]
        rounds = [json.loads(x) for x in (d / "result.json").read_text().splitlines()]
        # rounds 1-2 on the first attempt, then 3-4 resumed from round 2's checkpoint
        assert [r["round"] for r in rounds][-2:] == [3, 4]
        assert rounds[-1]["restored_round"] == 2
    assert {t.state.name for t in study.trials} == {"COMPLETE"}


def test_nonfinite_trials_are_not_retried(ray_local, tmp_path):
    rc, exp, df, study = search(
        tmp_path, "nan", "--family", "vmnc", "--num-samples", "1", "--max-epochs", "1",
        "--scheduler", "fifo", "--max-failures", "2", "--inject-fault", "nan")
    assert rc == 1                               # no trial succeeded
    assert list(df["state"]) == ["ERROR"]
    d = exp / df["trial_dir"][0].rsplit("/", 1)[-1]
    assert (d / "nonfinite.txt").is_file()
    assert study.trials[0].state.name == "FAIL"


def test_evaluating_only_at_decisions_changes_no_decision(ray_local, tmp_path):
    """The same seeded search (one trial at a time) with --eval-rounds all and the default
    (decisions): the same trials stopped at the same epochs, the same final metrics, and
    validation ran only at ASHA's rungs and at the end."""
    space = tmp_path / "space.yaml"
    space.write_text("batch_size: 16\n")          # 6 steps an epoch: 8 rounds of a quarter
    args = ("--family", "vmnc", "--space", str(space), "--num-samples", "5", "--max-epochs", "2",
            "--eval-every", "0.25",
            "--grace-period", "0.5", "--reduction-factor", "2", "--max-concurrent", "1",
            "--sampler", "random", "--seed", "4")
    rc_all, exp_all, df_all, _ = search(tmp_path, "all", *args, "--eval-rounds", "all")
    rc, exp, df, _ = search(tmp_path, "decisions", *args)
    assert rc == rc_all == 0
    cols = ["config/optuna_trial", "epochs", "rounds", "stopped_early", "last/val/mean_acc",
            "last/val/loss"]
    a = df_all.sort_values("config/optuna_trial")[cols].reset_index(drop=True)
    b = df.sort_values("config/optuna_trial")[cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    assert a["stopped_early"].any() and not a["stopped_early"].all()

    def rounds(e):      # per trial: [(epoch, evaluated)] in round order
        return [[(r["epoch"], "val/loss" in r) for r in map(json.loads, (
            d / "metrics.jsonl").read_text().splitlines())] for d in sorted(e.glob("trial_*"))]
    assert sum(ev for t in rounds(exp_all) for _, ev in t) == a["rounds"].sum()
    # decisions: the first round reaching each rung (0.5 and 1 epoch: grace 0.5, factor 2) and
    # the last round of the full budget (2 epochs), nothing else
    for t in rounds(exp):
        want = decision_rounds([e for e, _ in t], (0.5, 1.0), full=t[-1][0] == 2.0)
        assert [i for i, (_, ev) in enumerate(t, 1) if ev] == want, t
    assert sum(ev for t in rounds(exp) for _, ev in t) < a["rounds"].sum()
    assert yaml.safe_load((exp_all / "config.yaml").read_text())["base"]["eval_at"] is None
