"""Where the LIMA twin's re-ID models put the test people: class 0 or a person.

Reads ``evaluate/confusion_<model>.json`` of every run folder given (a repeat's folder such as
``runs/lima/test_session-3/seed-0``, or a recipe's run folder, searched for them) and prints per
run and model the share of person test images (labels 1..) predicted as class 0 ('unknown') and
class 0's recall; then per model the mean +- sample std over runs and, against ``--baseline``
(default ``r``), the paired difference mean +- standard error.

    python tools/lima_class0.py runs/lima runs/lima4 [--models r,r_g,r_face,r_g0_gj] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def class0_rates(matrix) -> tuple[float, float]:
    """(% of person images predicted class 0, % of class-0 images predicted class 0) of a
    confusion matrix [true, predicted] whose class 0 is 'unknown'."""
    m = np.asarray(matrix, dtype=np.float64)
    people, unknown = m[1:], m[0]
    return 100.0 * people[:, 0].sum() / people.sum(), 100.0 * unknown[0] / unknown.sum()


def run_folders(paths: list[Path]) -> list[Path]:
    """Folders holding ``evaluate/confusion_*.json``: each path itself or those below it."""
    found = []
    for p in paths:
        hits = sorted({c.parent.parent for c in p.rglob("evaluate/confusion_*.json")})
        if not hits:
            raise FileNotFoundError(f"no evaluate/confusion_*.json under {p} (a finished LIMA run?)")
        found.extend(hits)
    return found


def table(runs: list[Path], models: list[str], baseline: str) -> dict:
    """Per run and model the two rates; per model their mean and sample std over the runs that
    have it (``keras_reid.repeats.aggregate_mapping``) and the paired difference to ``baseline``
    (``keras_reid.repeats.paired_differences``: mean, standard error, n)."""
    from keras_reid.repeats import aggregate_mapping, paired_differences

    per_run = {}
    for run in runs:
        rates = {}
        for model in models:
            f = run / "evaluate" / f"confusion_{model}.json"
            if f.exists():
                rates[model] = class0_rates(json.loads(f.read_text())["matrix"])
        per_run[str(run)] = rates

    def metrics(model: str) -> list[dict | None]:
        return [dict(zip(("people_to_0", "class0_recall"), r[model])) if model in r else None
                for r in per_run.values()]

    summary = {}
    for model in models:
        values = metrics(model)
        if not any(values):
            continue
        entry = aggregate_mapping(values)
        if model != baseline:
            diff = paired_differences(values, metrics(baseline))
            if diff:
                entry["paired"] = {"n": diff["people_to_0"]["n"]}
                for key, d in diff.items():
                    entry["paired"][key], entry["paired"][f"{key}_se"] = d["mean"], d["se"]
        summary[model] = entry
    return {"runs": per_run, "models": summary, "baseline": baseline}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (searched for evaluate/)")
    ap.add_argument("--models", default="r,r_g,r_face,r_g0_gj")
    ap.add_argument("--baseline", default="r")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    try:
        res = table(run_folders(a.runs), [m for m in a.models.split(",") if m], a.baseline)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(res, indent=1, default=float))
        return 0
    for run, rates in res["runs"].items():
        print(run + ": " + "  ".join(f"{m} {p:.1f}% / {c:.1f}%" for m, (p, c) in rates.items()))
    print(f"{'model':10s} {'people -> class 0':>20s} {'class-0 recall':>18s}   paired vs {res['baseline']} "
          "(mean +- SE)")
    def pm(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    for model, e in res["models"].items():
        line = (f"{model:10s} {e['people_to_0']:9.1f} +- {pm(e['people_to_0_std']):>4s}% "
                f"{e['class0_recall']:9.1f} +- {pm(e['class0_recall_std']):>4s}%")
        if "paired" in e:
            p = e["paired"]
            line += (f"   {p['people_to_0']:+.1f} +- {pm(p['people_to_0_se'])} / "
                     f"{p['class0_recall']:+.1f} +- {pm(p['class0_recall_se'])} (n={p['n']})")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
