"""The training loop: warmup, checkpoint/resume equality, non-finite loss, learning, the CLI."""
import json
import subprocess
import sys

import pytest
import torch
import yaml

from monet.config import TrainConfig
from monet.data import load_dataset
from monet.errors import ConfigError, NonFiniteLossError
from monet.train import fit, load_checkpoint

SMALL = dict(dataset="toy", T=3, n_train=96, n_val=48, n_test=48, batch_size=16, tensorboard=False)


def test_warmup_leaves_order_logits_unchanged():
    c = TrainConfig(**SMALL, family="monet", M=6, k=4, warmup=2, epochs=2, order_lr=0.05)
    res = fit(c, load_dataset(c))
    assert torch.equal(res["model"].order_logits.detach(), torch.zeros(6))
    c2 = c.replace(warmup=1.5)     # fractional warmup: the order optimizer starts mid-epoch 2
    res2 = fit(c2, load_dataset(c2))
    assert float(res2["model"].order_logits.detach().abs().max()) > 0


def test_eval_rounds_in_fractions_of_an_epoch():
    c = TrainConfig(**SMALL, family="vmnc", epochs=1, eval_every=0.5)
    seen = []

    def report(m, ck):  # the checkpoint folder is valid during the call
        saved = torch.load(ck + "/checkpoint.pt", weights_only=True)
        seen.append((m["epoch"], m["round"], saved["round"], saved["step"]))

    fit(c, load_dataset(c), report=report)
    assert seen == [(0.5, 1, 1, 3), (1.0, 2, 2, 6)]


def test_checkpoint_period_skips_rounds_that_do_not_evaluate_and_changes_no_result(tmp_path):
    """checkpoint_period_s: a round that evaluates (where a scheduler may stop the run) and the
    last round write a checkpoint; the others only once the period has passed. Training and the
    metrics are the same, and the run resumes from the checkpoint it has."""
    c = TrainConfig(**SMALL, family="monet", M=6, k=3, warmup=1, epochs=3, eval_every=0.5,
                    eval_at=[1.0, 2.2])
    data = load_dataset(c)

    def run(cfg, d):
        got = []
        fit(cfg, data, report=lambda m, ck: got.append((m, ck is not None)), run_dir=str(d))
        return got

    every = run(c, tmp_path / "every")
    long = run(c.replace(checkpoint_period_s=1e6), tmp_path / "long")
    zero = run(c.replace(checkpoint_period_s=0.0), tmp_path / "zero")
    assert [w for _, w in every] == [True] * 6 and [w for _, w in zero] == [True] * 6
    # evaluated at epochs 1.0, 2.5 (first round past 2.2) and 3.0 (the last): only those write
    assert [m["epoch"] for m, w in long if w] == [1.0, 2.5, 3.0]
    assert [m["epoch"] for m, w in long if w] == [m["epoch"] for m, _ in long if "val/loss" in m]
    for (a, _), (b, _) in zip(every, long):
        assert {k: v for k, v in a.items() if not k.startswith("time/")} == \
               {k: v for k, v in b.items() if not k.startswith("time/")}
    ck = load_checkpoint(tmp_path / "long" / "checkpoint")
    assert ck["round"] == 6 and ck["step"] == 18
    # a run stopped after round 4 (epoch 2.0) resumes from round 2's checkpoint (epoch 1.0)
    # and ends where the uninterrupted run ended
    part = c.replace(checkpoint_period_s=1e6, epochs=2.0)
    run(part, tmp_path / "part")
    assert load_checkpoint(tmp_path / "part" / "checkpoint")["round"] == 4   # the last round
    mid = run(c.replace(checkpoint_period_s=1e6, epochs=1.0), tmp_path / "mid")
    assert [m["round"] for m, w in mid if w] == [2]
    resumed = []
    fit(c.replace(checkpoint_period_s=1e6), data, report=lambda m, ck: resumed.append(m),
        run_dir=str(tmp_path / "mid2"), resume_from=str(tmp_path / "mid" / "checkpoint"))
    assert [m["round"] for m in resumed] == [3, 4, 5, 6]
    assert resumed[-1]["val/loss"] == long[-1][0]["val/loss"]
    with pytest.raises(ConfigError, match="checkpoint_period_s"):
        c.replace(checkpoint_period_s=-1.0)


def test_a_run_that_starts_over_drops_the_earlier_attempts_metrics(tmp_path):
    """A trial retried (or resumed) before its first checkpoint runs from round 1 again in the
    same folder: metrics.jsonl holds this attempt's rounds only, not the earlier one's too."""
    c = TrainConfig(**SMALL, family="vmnc", epochs=2, eval_every=0.5)
    data = load_dataset(c)
    run = tmp_path / "trial"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"round": r, "epoch": r / 2, "step": 3 * r, "train/loss": 9.0}) + "\n"
        for r in (1, 2, 3)))                      # an attempt killed after round 3, no checkpoint
    fit(c, data, run_dir=str(run))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert all(r["train/loss"] != 9.0 for r in rows)


def test_eval_at_evaluates_only_the_listed_epochs_and_the_last_round():
    """eval_at=[1, 2.2]: the first round reaching each epoch (the test ASHA applies to the
    reported epoch) and the last one evaluate; the others report train/ metrics only, and the
    evaluated rounds report exactly what evaluating every round reports."""
    c = TrainConfig(**SMALL, family="monet", M=6, k=3, warmup=1, epochs=3, eval_every=0.5)
    data = load_dataset(c)
    every, some = [], []
    fit(c, data, report=lambda m, ck: every.append(m))
    res = fit(c.replace(eval_at=[1.0, 2.2]), data, report=lambda m, ck: some.append(m))
    assert [m["epoch"] for m in some] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert [m["epoch"] for m in some if "val/loss" in m] == [1.0, 2.5, 3.0]
    for a, b in zip(every, some):
        assert a["train/loss"] == b["train/loss"]           # training is untouched
        if "val/loss" in b:
            assert {k: v for k, v in a.items() if k.startswith("val/")} == \
                   {k: v for k, v in b.items() if k.startswith("val/")}
        else:
            assert not [k for k in b if k.startswith("val/")]
    assert res["best"]["epoch"] in (1.0, 2.5, 3.0)
    only_last = []
    fit(c.replace(eval_at=[]), data, report=lambda m, ck: only_last.append(m))
    assert [m["epoch"] for m in only_last if "val/loss" in m] == [3.0]
    with pytest.raises(ConfigError, match="field 'eval_at'"):
        c.replace(eval_at=[0, 1])


@pytest.mark.parametrize("family,extra", [("monet", dict(M=6, k=3, warmup=1)),
                                          ("vmns", dict(dropout=0.3))])
def test_resume_gives_identical_weights(tmp_path, family, extra):
    c4 = TrainConfig(**SMALL, family=family, epochs=4, **extra)
    data = load_dataset(c4)
    straight = fit(c4, data, run_dir=tmp_path / "a")["model"].state_dict()
    fit(c4.replace(epochs=2), data, run_dir=tmp_path / "b")
    ck = load_checkpoint(tmp_path / "b" / "checkpoint")          # weights_only=True
    assert ck["step"] == 2 * 6 and ck["round"] == 2
    resumed = fit(c4, data, run_dir=tmp_path / "b", resume_from=tmp_path / "b" / "checkpoint")
    rs = resumed["model"].state_dict()
    assert resumed["steps"] == 4 * 6
    for k, v in straight.items():
        assert torch.equal(v, rs[k]), k
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["round"] for x in lines] == [1, 2, 3, 4]


def test_non_finite_loss_stops_with_clear_error():
    c = TrainConfig(**SMALL, family="vmnc", lr=1e30, epochs=3, lr_decay=1.0)
    with pytest.raises(NonFiniteLossError, match="non-finite loss .* at epoch"):
        fit(c, load_dataset(c))


def test_short_toy_run_learns_task1():
    c = TrainConfig(dataset="toy", T=2, family="vmnc", epochs=40, lr=3e-3, eval_every=40,
                    tensorboard=False, test_at_end=True, seed=0)
    res = fit(c, load_dataset(c))
    assert res["test"]["acc/task1"] >= 0.95


def test_bad_config_fields():
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['bogus'\]"):
        TrainConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="field 'lr_decay' = 1.5; expected a value in"):
        TrainConfig.from_dict({"lr_decay": 1.5})


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "monet.train", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_prints_results_and_writes_run_folder(tmp_path):
    out = tmp_path / "run"
    r = _cli("--dataset", "toy", "--family", "monet", "--T", "3", "--M", "6", "--k", "4",
             "--warmup", "1", "--epochs", "2", "--n-train", "64", "--seed", "0", "--out", str(out),
             "--quiet")
    assert r.returncode == 0, r.stderr
    assert "mean accuracy" in r.stdout and "learned order:" in r.stdout
    for t in ("task1", "task2", "task3"):
        assert f"{t}  acc" in r.stdout
    assert {"config.yaml", "metrics.jsonl", "checkpoint", "test_metrics.yaml", "events"} <= \
        {p.name for p in out.iterdir()}
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["family"] == "monet" and cfg["M"] == 6 and cfg["seed"] == 0
    # the saved config reproduces the run
    again = fit(TrainConfig.from_yaml(out / "config.yaml"),
                load_dataset(TrainConfig.from_yaml(out / "config.yaml")))
    saved = yaml.safe_load((out / "test_metrics.yaml").read_text())
    assert again["test"]["mean_acc"] == pytest.approx(saved["mean_acc"])


@pytest.mark.parametrize("args,msg", [
    (["--family", "nope"], "family: unknown model family 'nope'"),
    (["--M", "200", "--T", "5", "--k", "10"], "only T! = 120"),
    (["--k", "130", "--M", "120"], "k = 130 > M = 120"),
    (["--k", "0"], "expected k >= 1"),
    (["--T", "3", "--family", "oracle", "--order", "0,1"], "permutation"),
    (["--dataset", "nope"], "dataset: unknown dataset 'nope'"),
    (["--lr", "-1"], "field 'lr' = -1.0"),
])
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, args, msg):
    r = _cli(*args, "--epochs", "1", "--out", str(tmp_path / "x"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], r.stderr


def test_warmup_loss_mean_trains_every_kept_order_equally():
    from monet.losses import task_nll
    from monet.models.base import ModelOutput
    from monet.tasks import TaskSpec
    from monet.train import compute_loss

    spec = TaskSpec.binary("ab")
    logits = torch.tensor([[[2.0, -1.0], [0.0, 0.0], [-3.0, 1.0]]])      # B=1, K=3, T=2
    log_w = torch.log_softmax(torch.tensor([[0.5, 0.0, -0.5]]), dim=1)
    y, m = torch.tensor([[1.0, 0.0]]), torch.ones(1, 2)
    nll = task_nll(logits, y, m, spec)[0]
    c = TrainConfig(warmup_loss="mean")
    loss, _ = compute_loss(None, ModelOutput(logits, log_w), y, m, spec, torch.ones(2), c,
                           warming=True)
    assert float(loss) == pytest.approx(float(nll.mean()))
    loss, _ = compute_loss(None, ModelOutput(logits, log_w), y, m, spec, torch.ones(2), c,
                           warming=False)                                 # eq. 18 after warmup
    assert float(loss) == pytest.approx(float(-torch.logsumexp(log_w[0] - nll, 0)))
    with pytest.raises(ConfigError, match="warmup_loss"):
        TrainConfig.from_dict({"warmup_loss": "nope"})


def test_order_temperature_default_off_and_annealed_to_final():
    from monet.train import order_temperature

    off = TrainConfig(**SMALL, family="monet", M=6, k=4, warmup=0, epochs=2)
    assert {order_temperature(off, s, 12) for s in range(13)} == {1.0}
    c = off.replace(order_temp_final=0.01, order_anneal_start=0.5)
    taus = [order_temperature(c, s, 12) for s in range(13)]
    assert taus[:7] == [1.0] * 7 and taus[-1] == pytest.approx(0.01)
    assert taus[9] == pytest.approx(0.1)                      # geometric: halfway, sqrt(0.01)
    assert all(a >= b for a, b in zip(taus, taus[1:]))
    data = load_dataset(c)
    plain = fit(off, data)["model"]                           # the default: the paper's pi
    assert plain.order_temperature == 1.0
    assert torch.equal(plain.pi(), torch.softmax(plain.order_logits.detach(), dim=0))
    sharp = fit(c, data)["model"]
    assert sharp.order_temperature == pytest.approx(0.01)
    u = sharp.order_logits.detach()
    assert torch.allclose(sharp.pi(), torch.softmax(u / 0.01, dim=0))
    assert float(sharp.pi().max()) > float(torch.softmax(u, dim=0).max())
    with pytest.raises(ConfigError, match="order_temp_final"):
        c.replace(order_temp_final=0.0)
    with pytest.raises(ConfigError, match="order_anneal_start"):
        c.replace(order_anneal_start=1.0)


def test_sampled_val_loss_is_the_l_order_estimate_and_changes_no_prediction():
    """val_loss='sampled': -log of the mean likelihood under the L orders the evaluation's
    trajectories drew (recomputed here one order at a time); the predictions and every other
    metric are the exact evaluation's; with M <= L it is the exact loss."""
    from monet.losses import task_nll
    from monet.train import EVAL_SEED_OFFSET, build_loss_weights, evaluate

    c = TrainConfig(**SMALL, family="monet", M=6, k=3, L=4, warmup=0, epochs=1, order_lr=0.05)
    data = load_dataset(c)
    model = fit(c, data)["model"]
    assert float(model.pi().max() - model.pi().min()) > 1e-3     # pi is no longer uniform
    w = build_loss_weights(c, data)
    exact = evaluate(model, data.val, data.spec, c, w, seed=c.seed)
    est = evaluate(model, data.val, data.spec, c.replace(val_loss="sampled"), w, seed=c.seed)
    assert {k: v for k, v in est.items() if k != "loss"} == \
        {k: v for k, v in exact.items() if k != "loss"}
    x, y, m = data.val[:]
    gen = torch.Generator().manual_seed(c.seed + EVAL_SEED_OFFSET)
    _, drawn = model.predict(x, L=c.L, generator=gen, return_orders=True)
    with torch.no_grad():
        nll = torch.stack([task_nll(model(x, y, mask=m, kept=drawn[:, j:j + 1]).logits, y, m,
                                    data.spec, w)[:, 0] for j in range(c.L)], 1)   # [B, L]
    want = float((torch.log(torch.tensor(float(c.L))) - torch.logsumexp(-nll, 1)).mean())
    assert est["loss"] == pytest.approx(want, rel=1e-5)
    assert est["loss"] != pytest.approx(exact["loss"], rel=1e-6)
    assert est["loss"] == pytest.approx(exact["loss"], rel=0.1)
    small = c.replace(L=6)                                         # M <= L: exact
    assert evaluate(model, data.val, data.spec, small.replace(val_loss="sampled"), w)["loss"] \
        == evaluate(model, data.val, data.spec, small, w)["loss"]
