"""The last lines of a run: what each evaluated model is, its metrics next to the chance level,
what the metrics mean, where the models are and what to run next.

Built from the recipe, the stage summaries and the run's ``metrics.json`` only, so a run whose
stages were all skipped prints the same table as the run that computed it.
"""
from __future__ import annotations

from pathlib import Path

from keras_reid import io
from keras_reid.deploy import deploy_lines
from keras_reid.recipe import Recipe

RETRIEVAL_COLUMNS = (("mAP", "mAP"), ("rank1", "rank-1"), ("rank5", "rank-5"))
CLOSED_SET_COLUMNS = (("prec1_all", "prec@1"), ("prec1_pid", "p-ID"), ("mAP_all", "mAP"))
MEANING = {
    "retrieval": ("rank-1: share of queries whose closest gallery image from another camera shows "
                  "the same person; mAP: how high all of that person's images rank on average "
                  "(Market-1501 protocol)"),
    "closed_set": ("prec@1: share of test images whose top class is right (ALL classes; p-ID: "
                   "known people only); mAP: mean average precision of the class scores"),
}


def describe_model(recipe: Recipe, name: str, summaries: dict) -> str:
    """One phrase saying what model ``name`` was trained on (empty when it is not a train stage)."""
    spec = recipe.data.get("stages", {}).get(name)
    if not isinstance(spec, dict) or spec.get("type") != "train_reid":
        return ""
    summary = summaries.get(name) or {}
    cams = spec.get("cameras")
    where = f"camera {', '.join(map(str, cams))}" if cams else "all cameras"
    parts = []
    if spec.get("real", True):
        n = summary.get("num_images")
        parts.append(f"{n:,} real images ({where})" if isinstance(n, int) else f"real images ({where})")
    for gen_name, count in (summary.get("generated_images") or {}).items():
        parts.append(f"{count:,} generated ({gen_name})")
    if not summary.get("generated_images"):
        for g in spec.get("generated") or []:
            parts.append(f"generated ({g.get('stage') or g.get('dataset')})")
    backbone = (spec.get("backbone") or {}).get("type", "")
    return f"{backbone} on " + " + ".join(parts) if parts else backbone


def closing_lines(recipe: Recipe, run_dir: str | Path, summaries: dict) -> list[str]:
    """The lines printed at the end of a run (empty when the run wrote no metrics)."""
    run_dir = Path(run_dir)
    metrics = io.read_json(run_dir / "metrics.json") or {}
    models = metrics.get("models") or {}
    lines: list[str] = []
    if models:
        closed = any("prec1_all" in m for m in models.values())
        columns = CLOSED_SET_COLUMNS if closed else RETRIEVAL_COLUMNS
        descriptions = {n: describe_model(recipe, n, summaries) for n in models}
        width = max([len("model"), len("chance")] + [len(n) for n in models]) + 2
        lines.append(f"{'model':<{width}}" + "".join(f"{label:>9}" for _, label in columns)
                     + "   trained on")
        for name, values in models.items():
            lines.append(f"{name:<{width}}" + "".join(
                f"{100 * values[k]:>8.2f}%" if isinstance(values.get(k), (int, float)) else f"{'-':>9}"
                for k, _ in columns) + (f"   {descriptions[name]}" if descriptions[name] else ""))
        chance = metrics.get("chance")
        if isinstance(chance, dict):
            lines.append(f"{'chance':<{width}}" + "".join(
                f"{100 * chance[k]:>8.2f}%" if isinstance(chance.get(k), (int, float)) else f"{'':>9}"
                for k, _ in columns) + "   a random ranking of the gallery")
        lines.append(MEANING["closed_set" if closed else "retrieval"])

        lines += deploy_lines(models)   # a model and its deploy form (e.g. converted CondenseNet)
    saved = [str(run_dir / m) for s in summaries.values() if isinstance(s, dict)
             for m in (s.get("model"), (s.get("converted") or {}).get("model"))
             if isinstance(m, str) and m.endswith(".keras")]
    if saved:
        lines.append("models: " + ", ".join(saved))
    lines.append(f"run folder: {run_dir} (recipe.resolved.yaml, metrics.json, one folder per stage)")
    report = next((s["report"] for s in summaries.values() if isinstance(s, dict)
                   and isinstance(s.get("report"), str) and s["report"].endswith(".html")), None)
    if report:
        lines.append(f"report: {run_dir / report}   (one self-contained page; open it in a browser)")
    lines.append(f"next: tensorboard --logdir {run_dir / 'tensorboard'}   (losses, GAN samples, "
                 "ranked lists, CMC curves)")
    if not report:
        lines.append(f"      keras-reid report {run_dir}   (one HTML page: metrics, CMC curves, "
                     "ranked lists, GAN samples, provenance)")
    reid = [s["model"] for s in summaries.values() if isinstance(s, dict)
            and str(s.get("model", "")).endswith("/model.keras")]
    if reid:   # the last re-ID model trained: rank the user's own images with it
        lines.append(f"      keras-reid search {run_dir / Path(reid[-1]).parent} --query IMAGE "
                     "--gallery FOLDER   (rank your own images; also extract, evaluate, export)")
    return lines
