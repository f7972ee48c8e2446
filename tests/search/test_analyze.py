"""``search/analyze.py`` on a tiny real experiment (real Ray, real Optuna, real toy training).

The module makes one search (toy T=3, MONET, 6 trials, 3 epochs, ASHA from 0.5 epochs, one trial
at a time so that ASHA's decisions do not depend on timing: some trials run the full budget, some
are stopped early) and runs the analysis CLI on it once; the tests read what it wrote. Bad input
is checked on copies.
"""
import json
import shutil
import subprocess
import sys

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from conftest import REPO, TINY, run_cli
from search import analyze

optuna.logging.set_verbosity(optuna.logging.WARNING)

ANALYZE = [sys.executable, str(REPO / "search" / "analyze.py")]
METRIC = "val/mean_acc"
SEARCH = ["--family", "monet", "--num-samples", "6", "--max-epochs", "3", "--eval-every", "0.5",
          "--grace-period", "0.5", "--reduction-factor", "2", "--max-concurrent", "1",
          "--num-cpus", "2", "--verbose", "0"]
PLOTLY_BG = (229, 236, 246)     # plotly's default plot area colour: a plot was drawn


def run_analyze(*args, timeout=300):
    return subprocess.run(ANALYZE + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO))


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A finished tiny search: (experiment folder, study storage URL)."""
    root = tmp_path_factory.mktemp("analyze")
    db = f"sqlite:///{root / 'study.db'}"
    p = run_cli(TINY + SEARCH + ["--storage-path", str(root), "--name", "tiny",
                                 "--optuna-storage", db], timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return root / "tiny", db


@pytest.fixture(scope="module")
def analysis(experiment):
    """``python search/analyze.py <exp>`` (default --out <exp>/analysis): (out, stdout)."""
    exp, _ = experiment
    p = run_analyze(exp, "--top", "5")
    assert p.returncode == 0, p.stderr[-3000:]
    return exp / "analysis", p.stdout


def searched(exp) -> list:
    """The searched parameters of the MONET space, from config.yaml (ranges and choices)."""
    space = yaml.safe_load((exp / "config.yaml").read_text())["space"]["monet"]
    return [p for p, v in space.items() if isinstance(v, (dict, list))]


def copy_experiment(exp, dst):
    shutil.copytree(exp, dst, ignore=shutil.ignore_patterns("analysis"))
    return dst


def files_under(path) -> set:
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.exists() else set()


# ------------------------------------------------------------------------------ the table
def test_table_matches_trials_parquet_and_the_study(experiment):
    exp, db = experiment
    df = analyze.load(exp)
    pq = pd.read_parquet(exp / "trials.parquet")
    assert list(df["trial_id"]) == list(pq["trial_id"])
    for c in pq.columns:        # every column of the search's own table, value for value
        a, b = df[c].tolist(), pq[c].tolist()
        assert [None if pd.isna(x) else x for x in a] == [None if pd.isna(x) else x for x in b], c
    assert any(c.startswith("config/") for c in df.columns)
    # the Optuna state is the study's, trial by trial
    study = optuna.load_study(study_name="tiny", storage=db)
    by_ray = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert df["optuna_state"].tolist() == [by_ray[t].state.name for t in df["trial_id"]]
    assert df["optuna_number"].tolist() == [by_ray[t].number for t in df["trial_id"]]
    assert set(df["optuna_state"]) <= {"COMPLETE", "PRUNED"}
    assert (df["optuna_state"] == "COMPLETE").sum() >= 2 and "PRUNED" in set(df["optuna_state"])
    # rungs from config.yaml's ASHA settings: 0.5 * 2**k up to 3 epochs
    assert analyze.asha_rungs(yaml.safe_load((exp / "config.yaml").read_text())["search"]) == \
        [0.5, 1.0, 2.0]
    for _, r in df.iterrows():
        assert r["rung_epochs"] <= r["epochs"] + 1e-9
        if r["optuna_state"] == "COMPLETE":
            assert r["epochs"] == 3.0 and r["rung"] == 2
        else:           # stopped at the rung it reached, before the next one
            nxt = [0.5, 1.0, 2.0, 3.0][int(r["rung"]) + 1]
            assert r["epochs"] < nxt and r["stopped_early"]


def test_asha_rungs_are_rays():
    from ray.tune.schedulers.async_hyperband import _Bracket

    for g, rf, mx in ((0.5, 2, 3), (1, 3, 30), (3, 3, 30), (0.25, 4, 10), (1, 2, 1)):
        ray_rungs = sorted(m for m, _ in _Bracket(g, mx, rf, 0)._rungs)
        ours = analyze.asha_rungs({"grace_period": g, "reduction_factor": rf, "max_epochs": mx})
        assert ours == pytest.approx(ray_rungs), (g, rf, mx)
    assert analyze.asha_rungs({"scheduler": "fifo", "grace_period": 1, "reduction_factor": 2,
                               "max_epochs": 4}) == []


def test_a_trial_still_running_has_a_row(experiment, tmp_path):
    """While the search runs, trials.parquet lags: a trial folder without a row is RUNNING."""
    exp = copy_experiment(experiment[0], tmp_path / "tiny")
    pq = pd.read_parquet(exp / "trials.parquet")
    gone = pq.iloc[-1]
    pq.iloc[:-1].to_parquet(exp / "trials.parquet", index=False)
    df = analyze.load(exp).set_index("trial_id")
    assert len(df) == len(pq)
    r = df.loc[gone["trial_id"]]
    assert r["state"] == "RUNNING"
    last = json.loads((exp / f"trial_{gone['trial_id']}" / "metrics.jsonl")
                      .read_text().splitlines()[-1])
    assert r["epochs"] == last["epoch"] and r[f"last/{METRIC}"] == last[METRIC]
    assert r["config/lr"] == gone["config/lr"] and r["config/M"] == gone["config/M"]


# ------------------------------------------------------------------------------ importances
def test_importance_rows_are_exactly_the_searched_parameters(experiment, analysis):
    exp, _ = experiment
    out, stdout = analysis
    imp = pd.read_csv(out / "importances.csv")
    assert set(imp["group"]) == {"monet"}
    assert sorted(imp["param"]) == sorted(searched(exp))       # k included (range 1..M)
    assert (imp["evaluator"] == "fanova").all()
    assert (imp["importance"] >= 0).all() and imp["importance"].sum() == pytest.approx(1.0)
    assert "skipped" not in stdout


def test_ped_anova_gives_the_same_rows(experiment):
    exp, db = experiment
    study = optuna.load_study(study_name="tiny", storage=db)
    imps, notes = analyze.importances(study, ["monet"], "ped-anova")
    assert not notes and sorted(imps["monet"]) == sorted(searched(exp))


def test_importances_per_family_on_a_multi_family_study():
    """``--family all``: one table per family over its own parameters (k's range grows with M),
    and ``all`` over the family and the shared parameters."""
    from monet.tasks import TaskSpec
    from search.spaces import SearchSpace

    space = SearchSpace.build(["vmnc", "monet"], TaskSpec.binary("abc"), max_epochs=4)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(24):
        t = study.ask()
        space(t)
        study.tell(t, float(np.sin(7.0 * i) + t.params.get("lr", 0) * 10))
    assert len({t.distributions["k"] for t in study.trials if "k" in t.params}) > 1
    imps, notes = analyze.importances(study, ["vmnc", "monet"], "fanova")
    assert not notes and set(imps) == {"vmnc", "monet", "all"}
    for fam in ("vmnc", "monet"):
        own = {n for t in study.trials if t.params["family"] == fam for n in t.params} - {"family"}
        assert set(imps[fam]) == own
    shared = set.intersection(*(set(t.params) for t in study.trials))
    assert set(imps["all"]) == shared and "family" in shared


# ------------------------------------------------------------------------------ figures
def test_every_png_is_a_readable_nonblank_image(analysis):
    out, _ = analysis
    pngs = sorted((out / "figures").glob("*.png"))
    names = {p.stem for p in pngs}
    assert {"history", "intermediate", "importances", "slice", "parallel", "omega",
            "order_vs_score"} <= names
    for p in pngs:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            rgb = im.convert("RGB")
        assert rgb.width >= 200 and rgb.height >= 200, p.name
        colours = len(rgb.getcolors(maxcolors=rgb.width * rgb.height))
        assert colours > 20, f"{p.name}: {colours} colours"


def test_report_md_gathers_table_importances_and_figures(experiment, analysis):
    exp, _ = experiment
    out, stdout = analysis
    md = (out / "report.md").read_text()
    best = yaml.safe_load((exp / "best_config.yaml").read_text())
    assert "## Top 5 trials" in md and f"| 1 | {best['trial_id']} |" in md
    assert "## Parameter importances" in md and "| k |" in md
    links = [ln.split("](")[1].rstrip(")") for ln in md.splitlines() if ln.startswith("![")]
    assert len(links) >= 7 and all((out / ln).is_file() for ln in links)
    assert "Soft order Omega of the best MONET trial" in md and "Consensus order" in md
    assert "report.html" in stdout
    # the consensus order is a permutation of the task names
    orders = pd.read_csv(out / "orders.csv")
    assert sorted(orders["task"]) == ["task1", "task2", "task3"]
    assert orders["mean_position"].is_monotonic_increasing


def test_omega_is_the_models_soft_order(experiment):
    """Omega rebuilt from the checkpoint = the model's own soft_order(); its distance to the
    identity = the trial's last order/dist_to_identity."""
    from monet.config import TrainConfig
    from monet.models import create_model
    from monet.tasks import TaskSpec

    exp, _ = experiment
    df = analyze.load(exp)
    oa = analyze.order_analysis(exp, df, METRIC, "max", top=6)
    assert oa.best is not None and len(oa.consensus_trials) >= 1
    assert oa.best["trial_id"] == analyze.ranked(df, METRIC, "max").iloc[0]["trial_id"]
    for _, r in df.iterrows():
        ck = torch.load(exp / f"trial_{r['trial_id']}" / "checkpoint" / "checkpoint.pt",
                        weights_only=True)
        model = create_model(TrainConfig.from_dict(ck["config"]), TaskSpec.from_dict(ck["spec"]),
                             (2,))
        model.load_state_dict(ck["model"])
        omega, pi, orders = analyze.soft_order(ck["model"])
        assert np.allclose(omega, model.soft_order().numpy(), atol=1e-6)
        assert np.allclose(omega.sum(0), 1) and np.allclose(omega.sum(1), 1)
        dist = float(((omega - np.eye(3)) ** 2).sum())
        assert dist == pytest.approx(r["last/order/dist_to_identity"], abs=1e-5)


def test_report_html_opens_offline_in_headless_chromium(analysis, tmp_path):
    out, _ = analysis
    page = (out / "report.html").read_text()
    assert "<script src" not in page.lower() and "<link" not in page.lower()   # all inline
    assert page.count("Plotly.newPlot") >= 7
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (CI installs it: apt-get install chromium)")
    shot = tmp_path / "report.png"
    p = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1400,2400", "--virtual-time-budget=10000",
         (out / "report.html").resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert shot.is_file(), p.stderr[-2000:]
    with Image.open(shot) as im:
        colours = len(im.convert("RGB").getcolors(maxcolors=1400 * 2400))
        rgb = np.asarray(im.convert("RGB"))
    assert rgb.shape[:2] == (2400, 1400)
    plot_area = int((rgb == PLOTLY_BG).all(-1).sum())
    non_white = float((rgb < 250).any(-1).mean())
    assert colours > 500, colours
    assert plot_area > 100_000, f"{plot_area} pixels of plot area: the plots were not drawn"
    assert non_white > 0.2, non_white


# ------------------------------------------------------------------------------ study lookup
def test_study_found_in_the_folder_or_skipped_with_one_line(experiment, tmp_path, capsys):
    exp0, db = experiment
    exp = copy_experiment(exp0, tmp_path / "tiny")
    assert analyze.main([str(exp), "--out", str(tmp_path / "a")]) == 0     # with the study
    assert (tmp_path / "a" / "figures" / "history.png").is_file()
    capsys.readouterr()
    cfg = yaml.safe_load((exp / "config.yaml").read_text())
    cfg["search"]["optuna_storage"] = None
    (exp / "config.yaml").write_text(yaml.safe_dump(cfg))
    # no study anywhere: the table and the order analytics, no importances, one line why; the
    # figures the first run wrote and this one did not are gone
    assert analyze.main([str(exp), "--out", str(tmp_path / "a")]) == 0
    stdout = capsys.readouterr().out
    lines = [ln for ln in stdout.splitlines() if ln.startswith("skipped importances")]
    assert len(lines) == 1 and "no Optuna study" in lines[0], stdout
    assert pd.read_csv(tmp_path / "a" / "importances.csv").empty
    assert (tmp_path / "a" / "figures" / "omega.png").is_file()
    assert not (tmp_path / "a" / "figures" / "history.png").exists()
    assert "history.png" not in (tmp_path / "a" / "report.md").read_text()
    # <exp>/study.db, then <exp>/study.journal
    shutil.copy(db[len("sqlite:///"):], exp / "study.db")
    study, where = analyze.open_study(exp, cfg)
    assert study is not None and where.startswith(f"sqlite:///{exp / 'study.db'}")
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    optuna.copy_study(from_study_name="tiny", from_storage=f"sqlite:///{exp / 'study.db'}",
                      to_storage=JournalStorage(JournalFileBackend(str(exp / "study.journal"))))
    (exp / "study.db").unlink()
    study, where = analyze.open_study(exp, cfg)
    assert study is not None and "study.journal" in where
    assert len(study.trials) == len(pd.read_parquet(exp / "trials.parquet"))


# ------------------------------------------------------------------------------ bad input
def _bad(kind, exp0, tmp_path):
    d = tmp_path / "exp"
    if kind == "missing":
        return tmp_path / "nope", []
    d.mkdir()
    if kind == "not an experiment":
        (d / "notes.txt").write_text("hello")
        return d, []
    shutil.copy(exp0 / "config.yaml", d / "config.yaml")
    if kind == "no trials.parquet":
        return d, []
    pq = pd.read_parquet(exp0 / "trials.parquet")
    if kind == "no finished trial":
        pq["state"] = "ERROR"
        pq.to_parquet(d / "trials.parquet", index=False)
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        cfg["search"]["optuna_storage"] = None       # the real study says COMPLETE
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    elif kind == "corrupt trials.parquet":
        (d / "trials.parquet").write_bytes((exp0 / "trials.parquet").read_bytes()[:300])
    elif kind == "out is a file":
        pq.to_parquet(d / "trials.parquet", index=False)
        (tmp_path / "out.txt").write_text("x")
        return d, ["--out", tmp_path / "out.txt"]
    return d, []


@pytest.mark.parametrize("kind", ["missing", "not an experiment", "no trials.parquet",
                                  "no finished trial", "corrupt trials.parquet", "out is a file"])
def test_bad_input_one_line_exit_2_nothing_written(kind, experiment, tmp_path, capsys):
    exp, extra = _bad(kind, experiment[0], tmp_path)
    before = files_under(tmp_path)
    rc = analyze.main([str(exp)] + [str(a) for a in extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert files_under(tmp_path) == before


def test_bad_input_from_the_command_line(tmp_path):
    p = run_analyze(tmp_path / "nope")
    assert p.returncode == 2 and p.stderr.strip().startswith("error: ")
    assert len(p.stderr.strip().splitlines()) == 1 and "no such experiment" in p.stderr
    assert list(tmp_path.iterdir()) == []
