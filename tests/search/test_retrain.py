"""search/retrain.py on real tiny searches (one local Ray for the module, real training).

A toy T=3 search and synthetic BP4D searches (9 subjects, 5 frames, 32 px, tiny_cnn, vmnc,
1 epoch) are made here with the search CLI's ``run``; the retrain CLI's ``main`` runs in this
process on the module's Ray instance. Checked: the table's numbers are the saved checkpoints
re-evaluated on the test split; a stopped retrain resumes without redoing finished runs and an
interrupted run continues from its checkpoint; the leak column; bad input.
"""
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import TINY
from monet.config import TrainConfig
from monet.data import load_dataset
from monet.data.synthetic import write_synthetic
from monet.models import create_model
from monet.train import build_loss_weights, evaluate, fit, load_checkpoint
from search import retrain, tune_monet

FACE = ["--dataset", "bp4d", "--backbone", "tiny_cnn", "--image-size", "32", "--family", "vmnc",
        "--max-epochs", "1", "--val-subjects", "0.5", "--verbose", "0"]


def _search(root, name, *args):
    rc = tune_monet.run([*args, "--storage-path", str(root), "--name", name])
    assert rc == 0
    return root / name


@pytest.fixture(scope="module")
def toy_exp(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return _search(root, "toy", *TINY, "--family", "vmnc", "--num-samples", "2",
                   "--max-epochs", "2", "--eval-every", "1", "--verbose", "0")


@pytest.fixture(scope="module")
def bp4d(ray_local, tmp_path_factory):
    """Synthetic BP4D and one search per fold (fold 1 with two trials, folds 2, 3 with one)."""
    root = tmp_path_factory.mktemp("bp4d")
    data = root / "data"
    write_synthetic("bp4d", data, subjects=9, frames=5, size=32)
    exps = {f: _search(root, f"fold{f}", *FACE, "--data-root", str(data), "--fold", str(f),
                       "--num-samples", "2" if f == 1 else "1") for f in (1, 2, 3)}
    return data, exps


def _retrain(*args):
    try:
        return retrain.main([str(a) for a in args])
    except SystemExit as e:   # argparse errors
        return e.code


def _table(out):
    return pd.read_csv(out / "table.csv", dtype={"fold": str})


def _reevaluate(run_dir):
    """Test metrics of a run's saved checkpoint, evaluated afresh."""
    ck = load_checkpoint(Path(run_dir) / "checkpoint")
    cfg = TrainConfig.from_dict(ck["config"])
    data = load_dataset(cfg)
    model = create_model(cfg, data.spec, data.input_shape)
    model.load_state_dict(ck["model"])
    return evaluate(model, data.test, data.spec, cfg, build_loss_weights(cfg, data),
                    data.prepare, "cpu", cfg.seed)


def _assert_rows_equal_checkpoints(out, config, folds, seeds, metric):
    """Each fold row of ``config`` in table.csv = mean over seeds of the re-evaluated
    checkpoints (percent), column by column."""
    df = _table(out)
    ours = df[(df["kind"] == "ours") & df["config"].str.startswith(config)].set_index("fold")
    per_fold = {}
    for f in folds:
        runs = [_reevaluate(out / "runs" / config / f"fold{f}" / f"seed{s}") for s in seeds]
        per_fold[f] = runs
        row = ours.loc[str(f)]
        assert row["seeds"] == len(seeds)
        tasks = [c for c in df.columns if c not in ("kind", "config", "fold", "leak",
                                                     "leak_subjects", "seeds", "avg")
                 and not c.endswith("_std")]
        for t in tasks:
            assert row[t] == pytest.approx(100 * sum(r[f"{metric}/{t}"] for r in runs) / len(runs),
                                           abs=1e-9), (f, t)
        avg = "mean_acc" if metric == "acc" else "mean_f1"
        assert row["avg"] == pytest.approx(100 * sum(r[avg] for r in runs) / len(runs), abs=1e-9)
    return ours, per_fold


def _stamps(out):
    """mtime of every finished run's metrics, checkpoint and the first attempt it recorded."""
    st = {}
    for res in (out / "runs").glob("*/fold*/seed*/result.json"):
        d = res.parent
        st[str(d)] = ((d / "metrics.jsonl").stat().st_mtime_ns,
                      (d / "checkpoint" / "checkpoint.pt").stat().st_mtime_ns,
                      json.loads(res.read_text())["attempts"][0])
    return st


class _Interrupt(Exception):
    pass


def test_toy_table_is_the_checkpoints_and_a_stopped_retrain_resumes(toy_exp, tmp_path):
    out = tmp_path / "rt"
    args = [toy_exp, "--top", "2", "--seeds", "2", "--out", out]
    # stopped after two runs (the others cancelled, as a kill would): no table yet
    assert _retrain(*args, "--stop-after", "2") == retrain.EXIT_STOPPED
    assert not (out / "table.csv").exists()
    before = _stamps(out)
    assert len(before) == 2
    assert _retrain(*args) == 0
    after = _stamps(out)
    for d, st in before.items():     # finished runs were not trained again
        assert after[d] == st, d
    sel = pd.read_csv(out / "selection.csv")
    assert len(sel) == 2 and sel["winner"].sum() == 1
    # seed 0 is the search's own seed: the re-run reproduces the search's value exactly
    full = sel[sel["full_budget"]]
    assert len(full) >= 1 and (full["seed0"] == full["search_value"]).all()
    win = sel[sel["winner"]].iloc[0]
    assert win["mean"] == max(sel["mean"])
    # the search's trials evaluate only where ASHA decides (here: its rung at epoch 1, and the
    # last round), estimate val/loss and checkpoint every 10 s; a retrain takes these
    # search-only settings back, as best_config.yaml does: validation every round with the
    # exact loss, a checkpoint every round
    trial_cfg = yaml.safe_load((toy_exp / win["config"] / "config.yaml").read_text())
    assert trial_cfg["eval_at"] == [1.0] and trial_cfg["checkpoint_period_s"] == 10.0
    best = yaml.safe_load((toy_exp / "best_config.yaml").read_text())
    for s in (0, 1):
        run = out / "runs" / win["config"] / "fold1" / f"seed{s}"
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert {k: cfg[k] for k in ("eval_at", "val_loss", "checkpoint_period_s")} == {
            "eval_at": None, "val_loss": "exact", "checkpoint_period_s": None}
        if win["config"] == f"trial_{best['trial_id']}":    # the same config as best_config's
            # (a retrain pins the search's data seed, which best_config leaves to follow seed)
            own = ("seed", "data_seed", "test_at_end")
            assert {k: v for k, v in cfg.items() if k not in own} == {
                k: v for k, v in best["config"].items() if k not in own}
            b = best["config"]
            assert cfg["data_seed"] == (b["data_seed"] if b["data_seed"] is not None else b["seed"])
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [x["round"] for x in lines] == [1, 2]
        assert all("val/mean_acc" in x for x in lines), lines
    ours, per_fold = _assert_rows_equal_checkpoints(out, win["config"], [1], [0, 1], "acc")
    assert ours.loc["1", "leak"] == "no"
    md = (out / "table.md").read_text()
    assert f"Winner: **{win['config']}**" in md and "Table 2 is for T = 5" in md

    # a run interrupted after its first round (what a kill leaves) continues from there
    run = out / "runs" / win["config"] / "fold1" / "seed1"
    first = json.loads((run / "result.json").read_text())
    cfg = TrainConfig.from_yaml(run / "config.yaml")
    shutil.rmtree(run)

    def stop(metrics, ckpt):
        raise _Interrupt

    with pytest.raises(_Interrupt):
        fit(cfg, load_dataset(cfg), report=stop, run_dir=str(run))
    assert load_checkpoint(run / "checkpoint")["round"] == 1
    table = (out / "table.csv").read_text()
    others = {d: s for d, s in _stamps(out).items() if d != str(run)}
    assert _retrain(*args) == 0
    again = json.loads((run / "result.json").read_text())
    steps = [(a["resumed_from_round"], a["rounds_trained"]) for a in again["attempts"]]
    assert steps[0] == (1, 1) and all(n == 0 for _, n in steps[1:])   # then test only
    rounds = [json.loads(x)["round"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2]
    assert again["test"] == first["test"] and again["val"] == first["val"]   # bit-exact resume
    assert (out / "table.csv").read_text() == table
    assert {d: s for d, s in _stamps(out).items() if d != str(run)} == others

    # killed between the last checkpoint and its metrics line: the validation round is evaluated
    # again from the checkpoint, to the same numbers
    run0 = out / "runs" / win["config"] / "fold1" / "seed0"
    done = json.loads((run0 / "result.json").read_text())
    lines = (run0 / "metrics.jsonl").read_text().splitlines()
    (run0 / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    (run0 / "result.json").unlink()
    cfg0 = TrainConfig.from_yaml(run0 / "config.yaml")
    job = retrain.Job(win["config"], 1, 0, "final", str(run0), cfg0.to_dict(), str(toy_exp),
                      win["config"][len("trial_"):])
    redo = retrain.train_run(job, load_dataset(cfg0))
    assert redo["val"] == done["val"] and redo["test"] == done["test"]
    assert redo["attempts"][-1]["rounds_trained"] == 0


def test_bp4d_every_fold_the_leak_column_and_the_published_rows(bp4d):
    data, exps = bp4d
    exp = exps[1]
    out = exp / "retrain"
    assert _retrain(exp, "--top", "1", "--seeds", "2") == 0     # (toy tests the selection)
    sel = pd.read_csv(out / "selection.csv")
    win = sel[sel["winner"]].iloc[0]["config"]
    ours, _ = _assert_rows_equal_checkpoints(out, win, [1, 2, 3], [0, 1], "f1")
    # the leak column, against the search's own validation subjects and the list files
    base = yaml.safe_load((exp / "config.yaml").read_text())["base"]
    val = set(load_dataset(TrainConfig.from_dict(base)).meta["val_subjects"])
    for f in (1, 2, 3):
        lines = (data / "list" / f"BP4D_test_img_path_fold{f}.txt").read_text().split()
        test = {p.split("/")[0] for p in lines}
        assert ours.loc[str(f), "leak"] == ("yes" if val & test else "no"), f
        assert set(str(ours.loc[str(f), "leak_subjects"]).split()) - {"nan"} == val & test
    assert ours.loc["1", "leak"] == "no"                  # the search's fold: validation only
    assert ours.loc["2", "leak"] == ours.loc["3", "leak"] == "yes"
    assert ours.loc["all", "leak"] == "yes"
    # the overall row: per-seed means over the folds, then mean over seeds
    assert ours.loc["all", "avg"] == pytest.approx(ours.loc[["1", "2", "3"], "avg"].mean())
    df = _table(out)
    pub = df[df["kind"] == "published"].set_index("config")
    assert pub.loc["MONET paper, Table 4: MONET (ours)", "avg"] == 64.5
    assert pub.loc["MONET paper, Table 4: VMNC", "AU1"] == 48.7
    assert len(pub) == 16
    md = (out / "table.md").read_text()
    assert "| AU1 | AU2 | AU4 |" in md and "--nested" in md

    # the leak-free table: one search per fold, each fold's config from its own search
    nested = exps[1].parent / "nested"
    assert _retrain("--nested", exps[3], exps[1], exps[2], "--top", "1", "--seeds", "1",
                    "--out", nested) == 0
    n = _table(nested)
    n = n[n["kind"] == "ours"].set_index("fold")
    assert list(n.index) == ["1", "2", "3", "all"] and set(n["leak"]) == {"no"}
    for f in (1, 2, 3):
        best = yaml.safe_load((exps[f] / "best_config.yaml").read_text())["trial_id"]
        assert n.loc[str(f), "config"].startswith(f"trial_{best}")
        run = nested / "runs" / f"trial_{best}" / f"fold{f}" / "seed0"
        assert n.loc[str(f), "avg"] == pytest.approx(100 * _reevaluate(run)["mean_f1"], abs=1e-9)


def _copy_experiment(exp, dst, edit=None):
    """The files retrain reads (config.yaml, trials.parquet, trial configs), optionally edited."""
    dst.mkdir(parents=True)
    shutil.copy(exp / "config.yaml", dst / "config.yaml")
    shutil.copy(exp / "trials.parquet", dst / "trials.parquet")
    for d in exp.glob("trial_*"):
        (dst / d.name).mkdir()
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        if edit:
            edit(cfg)
        (dst / d.name / "config.yaml").write_text(yaml.safe_dump(cfg))
    return dst


def test_bad_input_is_one_line_exit_2_and_nothing_written(toy_exp, bp4d, tmp_path, capsys):
    _, exps = bp4d
    moved = _copy_experiment(exps[1], tmp_path / "moved",
                             lambda c: c.update(data_root=str(tmp_path / "gone")))
    failed = _copy_experiment(toy_exp, tmp_path / "failed")
    df = pd.read_parquet(failed / "trials.parquet")
    df["state"] = "ERROR"
    df.to_parquet(failed / "trials.parquet")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(toy_exp / "config.yaml", partial / "config.yaml")
    no_trial_cfg = _copy_experiment(toy_exp, tmp_path / "nocfg")
    shutil.rmtree(next(no_trial_cfg.glob("trial_*")))
    cases = [
        ([tmp_path / "nowhere"], "no such experiment folder"),
        ([partial], "trials.parquet: missing"),
        ([no_trial_cfg, "--top", "3"], "missing (the config of trial"),
        ([failed], "no finished trial"),
        ([moved], "no longer exists (moved?)"),
        ([exps[1], "--folds", "4"], "bp4d has folds 1, 2, 3"),
        ([toy_exp, "--folds", "2"], "toy has one fold"),
        ([exps[1], "--folds", "one"], "--folds"),
        ([exps[1], "--seeds", "0"], "--seeds"),
        (["--nested", toy_exp, toy_exp, toy_exp], "toy has one fixed split"),
        (["--nested", exps[1], exps[2], toy_exp], "different datasets"),
        (["--nested", exps[1], exps[2]], "one search per fold"),
        (["--nested", exps[1], exps[1], exps[2]], "one search per fold"),
        ([], "give the experiment folder"),
    ]
    before = {p: sorted(x.name for x in p.iterdir()) for p in (toy_exp, exps[1], exps[2])}
    for i, (args, text) in enumerate(cases):
        out = tmp_path / f"out{i}"
        rc = _retrain(*args, "--out", out)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, (args, err)
        assert len(err) == 1 and err[0].startswith("error: ") and text in err[0], (args, err)
        assert not out.exists(), args
    assert {p: sorted(x.name for x in p.iterdir()) for p in before} == before
    # another experiment's retrain folder is not overwritten
    out = exps[1] / "retrain"
    if (out / "retrain.yaml").exists():
        assert _retrain(exps[2], "--out", out) == 2
        assert "holds the retrain of other" in capsys.readouterr().err


def test_a_trial_cut_after_ashas_last_rung_is_a_finalist(toy_exp, tmp_path):
    """The retrain's candidates come finalists first (search.finalists): a trial cut by
    the search's end after ASHA let it go on at its last rung ranks with the full-budget ones,
    one stopped at a rung after them, whatever its value."""
    exp = _copy_experiment(toy_exp, tmp_path / "cut")
    df = pd.read_parquet(exp / "trials.parquet")
    assert "passed_rungs" in df.columns and len(df) == 2
    ids = list(df["trial_id"])
    df["state"] = "TERMINATED"
    df["last/val/mean_acc"] = [0.9, 0.5]          # the first trial has the better value
    df["stopped_early"] = True                    # neither ran its full budget
    df["passed_rungs"] = [False, True]            # only the second passed every rung
    df.to_parquet(exp / "trials.parquet")
    s = retrain.read_search(exp, top=2)
    assert [c.trial_id for c in s.candidates] == [ids[1], ids[0]]
    assert [c.full_budget for c in s.candidates] == [False, False]
    df["passed_rungs"] = [True, True]             # both finalists: the value decides
    df.to_parquet(exp / "trials.parquet")
    assert [c.trial_id for c in retrain.read_search(exp, top=2).candidates] == ids
    df = df.drop(columns=["passed_rungs"])        # a table written before the column existed
    df.to_parquet(exp / "trials.parquet")
    assert [c.trial_id for c in retrain.read_search(exp, top=2).candidates] == ids
