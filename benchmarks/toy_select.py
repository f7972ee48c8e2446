"""Table 2 with each family's setting chosen on validation, as the paper tuned its models.

Given several result folders of ``benchmarks/toy_tables.py`` (each one setting, e.g. the paper's
lr 5e-4 and lr 2e-3), pick for every reading and family the folder whose runs have the highest
mean validation accuracy over the seeds (test accuracy is never looked at), then print Table 2
from the picked runs, with the targets.

    python benchmarks/toy_select.py benchmarks/results/toy_tables benchmarks/results/toy_tables_lr2e-3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from toy_tables import FAMILIES, _load, table2  # noqa: E402


def _runs(folder: Path, reading: str, fam: str, seeds: int):
    """The runs of one family for seeds 0..seeds-1, or None when any is missing (an incomplete
    setting is not a candidate)."""
    recs = [_load(folder / "table2" / reading / f"{fam}_s{s}.json") for s in range(seeds)]
    return None if None in recs else recs


def _label(rec: dict) -> str:
    c = rec["config"]
    lab = f"lr {c['lr']:g}"
    if c["family"] == "monet":
        lab += f", warmup {c['warmup']:g} ({c['warmup_loss']}), k {c['k']}"
    if c["family"] in ("mrnn", "monet", "oracle"):
        lab += f", feedback {c['feedback']}"
    return lab


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="+", help="result folders of benchmarks/toy_tables.py")
    p.add_argument("--readings", nargs="+", default=["bits", "printed"])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "toy_select"))
    a = p.parse_args(argv)
    folders = [Path(f) for f in a.folders]
    for f in folders:
        if not (f / "table2").is_dir():
            print(f"toy_select: {f}: expected a toy_tables result folder (with table2/)",
                  file=sys.stderr)
            return 2
    summary = {}
    for reading in a.readings:
        print(f"\nTable 2 (toy T=5, reading '{reading}'), each family at the setting with the best "
              f"mean validation accuracy over {a.seeds} seeds")
        chosen = {}
        for fam in FAMILIES:
            cands = []
            for f in folders:
                rs = _runs(f, reading, fam, a.seeds)
                if rs:
                    val = statistics.mean(100 * r["val_mean_acc"] for r in rs)
                    cands.append((val, f, rs))
            if not cands:
                print(f"  {fam}: no complete setting")
                continue
            val, f, rs = max(cands, key=lambda c: c[0])
            others = ", ".join(f"{c[1].name} {c[0]:.1f}" for c in cands if c[1] != f)
            print(f"  {fam:7s} {f.name} ({_label(rs[0])}): val {val:.1f}"
                  + (f"; not chosen: {others}" if others else ""))
            chosen[fam] = rs
            summary[f"{reading}/{fam}/setting"] = {"folder": f.name, "val_mean_acc": val}
        summary.update(table2(reading, chosen))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out / "summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
