"""``keras-reid report``: one self-contained HTML page per run folder, for a person to read.

Built only from what a run folder holds (``recipe.resolved.yaml``, each stage's
``.complete.json``, ``metrics.json``, the evaluate stages' ``cmc_<model>.npy`` and
``ranked_<model>.json``, and the pictures and scalars in ``tensorboard/``), so it can be made
at any time after a run, for a repeated run's parent folder (``repeats.json``, ``seed-*/``) too.
Everything is inline: pictures as base64 PNG, plots as SVG, the style sheet in the page; it
opens without a network.

Sections: results (metrics with the chance level; for repeats mean +- std, per-repeat values
and paired differences), CMC curves, training curves, ranked lists, generator samples,
generated images (quality, identity preservation, semantic filters, diversity), stages (time
and summary), the recipe, provenance (versions, seeds, stage ids, model checksums).
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io as _io
import json
import platform
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterable

import numpy as np
import yaml

from keras_reid import __version__, io, repeats, tb_events
from keras_reid.errors import InputError
from keras_reid.model_files import sha256_file
from keras_reid.run_summary import MEANING as CLOSING, describe_model
from keras_reid.stages.base import COMPLETE_MARKER

REPORT_FILE = "report.html"
CONFIG_MARKER = ".config.json"
RETRIEVAL = (("mAP", "mAP"), ("rank1", "rank-1"), ("rank5", "rank-5"), ("rank10", "rank-10"),
             ("mINP", "mINP"))
CLOSED_SET = (("prec1_all", "prec@1"), ("prec1_pid", "p-ID prec@1"), ("mAP_all", "mAP"),
              ("mAP_pid", "p-ID mAP"))
GAN_SAMPLE_TAGS = ("gan/samples", "generator/samples")   # the second: runs before the gan/ prefix
VERSIONED = ("keras-reid", "keras", "tensorflow", "numpy", "tensorboard", "mediapipe",
             "opencv-python-headless", "albumentations", "pydantic", "ray")
MEANING = ("rank-k: share of queries whose k closest gallery images from other cameras include the "
           "same person; mAP: how high all of that person's images rank on average; mINP: how high "
           "the hardest one ranks (Market-1501 protocol). Chance: a random ranking of the gallery.")


# ---------------------------------------------------------------------------- reading a run
@dataclass
class StageInfo:
    """One stage of a run: its recipe entry and what its folder says."""

    name: str
    type: str
    spec: dict
    marker: dict | None
    started: dict | None

    @property
    def summary(self) -> dict:
        return (self.marker or {}).get("summary") or {}

    @property
    def status(self) -> str:
        if self.marker:
            return "done"
        return "not complete" if self.started else "not run"


@dataclass
class RunData:
    """What one run folder holds."""

    folder: Path
    recipe_text: str
    recipe: dict
    stages: list[StageInfo]
    metrics: dict
    label: str = ""
    current: str | None = None
    """The report stage writing this page (shown as running, not as not run)."""

    @property
    def name(self) -> str:
        return str(self.recipe.get("name") or self.folder.name)

    def of_type(self, *types: str) -> list[StageInfo]:
        return [s for s in self.stages if s.type in types]

    def tensorboard(self, *parts: str) -> Path:
        return self.folder.joinpath("tensorboard", *parts)


def read_run(folder: str | Path, label: str = "", current: str | None = None) -> RunData:
    """Read one (not repeated) run folder; raises InputError when ``folder`` is none."""
    folder = Path(folder)
    recipe_path = folder / "recipe.resolved.yaml"
    if not recipe_path.is_file():
        raise InputError(f"{folder} is not a run folder (no recipe.resolved.yaml); give the folder "
                         "`keras-reid run` wrote, e.g. runs/quickstart")
    text = recipe_path.read_text(encoding="utf-8")
    recipe = yaml.safe_load(text) or {}
    stages = []
    for name, spec in (recipe.get("stages") or {}).items():
        spec = spec if isinstance(spec, dict) else {}
        stages.append(StageInfo(name, str(spec.get("type", "?")), spec,
                                _read_json(folder / name / COMPLETE_MARKER),
                                _read_json(folder / name / CONFIG_MARKER)))
    return RunData(folder, text, recipe, stages, _read_json(folder / "metrics.json") or {},
                   label=label, current=current)


def _read_json(path: Path) -> Any:
    try:
        return io.read_json(path)
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------- entry points
def write_report(run: str | Path, out: str | Path | None = None, *, queries: int = 6,
                 top: int = 10, current_stage: str | None = None,
                 echo: Callable[[str], None] | None = None) -> Path:
    """Write the HTML report of run folder ``run`` (a single run, or the parent folder of a
    repeated run) to ``out`` (default ``<run>/report.html``), atomically; returns its path.

    ``queries``: ranked lists shown per model (query + ``top`` gallery images).
    ``current_stage``: the report stage calling this (shown as running)."""
    run = Path(run)
    if not run.is_dir():
        raise InputError(f"{run} does not exist or is not a folder; give a run folder, e.g. "
                         "runs/quickstart")
    page = build_report(run, queries=queries, top=top, current_stage=current_stage)
    target = Path(out) if out else run / REPORT_FILE
    io.write_text(target, page)
    if echo:
        echo(f"report: {target} ({target.stat().st_size / 1e6:.1f} MB, self-contained)")
    return target


def build_report(run: str | Path, *, queries: int = 6, top: int = 10,
                 current_stage: str | None = None) -> str:
    """Returns the HTML text of the report of ``run`` (see :func:`write_report`)."""
    run = Path(run)
    if (run / "repeats.json").is_file():
        return _repeated_page(run, queries, top)
    data = read_run(run, current=current_stage)
    return _page(f"{data.name}", _single_sections(data, queries, top))


# ---------------------------------------------------------------------------- single run
def _single_sections(data: RunData, queries: int, top: int) -> list[tuple[str, str, str]]:
    """``[(anchor, title, html)]`` of a single run's page (empty sections left out)."""
    sections = [("results", "Results", _results_single(data)),
                ("cmc", "CMC curves", _cmc_section([data])),
                ("training", "Training curves", _training_section(data)),
                ("ranked", "Ranked lists", _ranked_section(data, queries, top)),
                ("generator", "Generator samples", _gan_section(data)),
                ("generated", "Generated images", _generated_section(data)),
                ("stages", "Stages", _stages_section(data)),
                ("recipe", "Recipe", _recipe_section(data)),
                ("provenance", "Provenance", _provenance_section([data]))]
    head = _run_head(data)
    return [("top", "", head)] + [s for s in sections if s[2]]


def _run_head(data: RunData) -> str:
    desc = data.recipe.get("description") or ""
    done = [s.marker.get("finished") for s in data.stages if s.marker and s.marker.get("finished")]
    seconds = sum(float(s.marker.get("seconds") or 0) for s in data.stages if s.marker)
    bits = [f"run folder <code>{_e(data.folder)}</code>", f"seed {_e(data.recipe.get('seed', 0))}",
            f"{sum(1 for s in data.stages if s.marker)} of {len(data.stages)} stages done"
            + (f" in {_fmt_seconds(seconds)}" if seconds else ""),
            f"last finished {_e(max(done))}" if done else "nothing finished yet"]
    return (f"<p class='desc'>{_e(desc)}</p>" if desc else "") + \
        f"<p class='meta'>{' &middot; '.join(bits)}</p>"


def _columns(models: dict) -> tuple[tuple[str, str], ...]:
    closed = any(isinstance(m, dict) and "prec1_all" in m for m in models.values())
    cols = CLOSED_SET if closed else RETRIEVAL
    return tuple(c for c in cols if any(isinstance(m, dict) and c[0] in m for m in models.values()))


def _results_single(data: RunData) -> str:
    models = data.metrics.get("models") or {}
    if not models:
        return "<p class='note'>No metrics yet: the run has no completed evaluate stage.</p>"
    cols = _columns(models)
    summaries = {s.name: s.summary for s in data.stages}
    recipe = SimpleNamespace(data=data.recipe)
    rows = []
    for name, m in models.items():
        trained = describe_model(recipe, name, summaries)
        rows.append(_metric_row(name, m, cols, trained))
        if isinstance(m.get("rerank"), dict):
            rows.append(_metric_row(name, m["rerank"], cols, "k-reciprocal re-ranking of the row "
                                    "above", label=f"{name} + re-ranking", variant="rerank"))
        if isinstance(m.get("multi_query"), dict):
            rows.append(_metric_row(name, m["multi_query"], cols, "multi-query: each query pooled "
                                    f"({m['multi_query'].get('pooling')}) with its person's images in "
                                    "its camera", label=f"{name} multi-query", variant="multi_query"))
    chance = data.metrics.get("chance")
    if isinstance(chance, dict):
        rows.append(_metric_row("chance", chance, cols, "a random ranking of the gallery",
                                variant="chance", klass="chance"))
    table = _table(["model"] + [label for _, label in cols] + ["trained on"], rows, klass="metrics")
    out = [table, f"<p class='note'>{_e(_meaning(cols))}</p>", _deploy_table(models)]
    compare = data.recipe.get("compare") or []
    if compare:
        comps = repeats.aggregate([data.metrics], [tuple(p) for p in compare])["comparisons"]
        out.append(_comparisons(comps, cols, single=True))
    return "".join(out)


def _deploy_table(models: dict) -> str:
    """Size and latency of the models that have a ``deploy`` entry (a model and its deploy form,
    e.g. the converted CondenseNet); empty when none has."""
    rows = []
    for name, m in models.items():
        d = m.get("deploy") if isinstance(m, dict) else None
        if not isinstance(d, dict):
            continue
        base = (models.get(m.get("converted_from")) or {}).get("deploy") or {}

        def cell(key: str, text) -> str:
            v = d.get(key)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                return "<td class='num'>&ndash;</td>"
            std = d.get(f"{key}_std")
            extra = f" &plusmn; {_e(text(std))}" if isinstance(std, (int, float)) and std else ""
            return (f"<td class='num' data-model='{_e(name)}' data-metric='{_e(key)}' "
                    f"data-value='{v!r}'>{_e(text(v))}{extra}</td>")
        notes = []
        if isinstance(base.get("ms_per_image"), (int, float)) and d.get("ms_per_image"):
            notes.append(f"{base['ms_per_image'] / d['ms_per_image']:.2f}x as fast")
        if isinstance(base.get("params"), (int, float)) and base["params"] and \
                isinstance(d.get("params"), (int, float)):
            notes.append(f"{d['params'] / base['params']:.2f}x the parameters")
        if m.get("converted_from"):
            notes.insert(0, f"deploy form of {m['converted_from']}")
        rows.append(f"<tr><th>{_e(name)}</th>" + cell("params", lambda v: f"{v:,.0f}")
                    + cell("bytes", lambda v: f"{v / 1e6:.2f} MB")
                    + cell("ms_per_image", lambda v: f"{v:.2f}")
                    + f"<td class='desc'>{_e(', '.join(notes))}</td></tr>")
    if not rows:
        return ""
    runs = next((m["deploy"].get("runs") for m in models.values() if isinstance(m, dict)
                 and isinstance(m.get("deploy"), dict) and m["deploy"].get("runs")), None)
    note = ("Parameters, file size on disk and milliseconds per image at batch 1 (one forward "
            "pass as a compiled graph" + (f", median of {runs:.0f} calls" if runs else "")
            + ", models timed in turn on the machine that evaluated them).")
    return ("<h3>Size and latency</h3>" + _table(["model", "parameters", "on disk", "ms/image", ""],
                                                 rows, klass="metrics")
            + f"<p class='note'>{_e(note)}</p>")


def _meaning(cols) -> str:
    """What the table's metrics mean (retrieval or closed-set)."""
    if any(key == "prec1_all" for key, _ in cols):
        return CLOSING["closed_set"]
    return MEANING


def _metric_row(model: str, values: dict, cols, trained: str = "", *, label: str | None = None,
                variant: str = "", klass: str = "") -> str:
    cells = [f"<th>{_e(label or model)}</th>"]
    for key, _ in cols:
        v = values.get(key) if isinstance(values, dict) else None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            std = values.get(f"{key}_std")
            text = f"{100 * v:.2f}%" + (f" &plusmn; {100 * std:.2f}" if isinstance(std, (int, float)) else "")
            cells.append(f"<td class='num' data-model='{_e(model)}' data-metric='{_e(key)}' "
                         f"data-variant='{_e(variant)}' data-value='{v!r}'>{text}</td>")
        else:
            cells.append("<td class='num'>&ndash;</td>")
    cells.append(f"<td class='desc'>{_e(trained)}</td>")
    return f"<tr class='{klass}'>" + "".join(cells) + "</tr>"


def _comparisons(comps: dict, cols, single: bool) -> str:
    rows = []
    for pair, metrics in comps.items():
        a, _, b = pair.partition("-")
        cells = [f"<th>{_e(a)} &minus; {_e(b)}</th>"]
        n = 0
        for key, _ in cols:
            m = metrics.get(key)
            if not isinstance(m, dict) or m.get("mean") is None:
                cells.append("<td class='num'>&ndash;</td>")
                continue
            n = max(n, int(m.get("n") or 0))
            se = m.get("se")
            text = f"{100 * m['mean']:+.2f}" + ("" if se is None or single else f" &plusmn; {100 * se:.2f}")
            seeds = ", ".join(f"{100 * v:+.2f}" for v in m.get("per_seed") or [] if v is not None)
            cells.append(f"<td class='num' data-pair='{_e(pair)}' data-metric='{_e(key)}' "
                         f"data-value='{m['mean']!r}' title='per repeat: {_e(seeds)}'>{text}</td>")
        cells.append(f"<td class='num'>{n}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    if not rows:
        return ""
    what = ("one run: the difference itself (run the recipe with --seeds for its standard error)"
            if single else "mean &plusmn; standard error over the repeats (paired by seed)")
    return (f"<h3>Paired differences a &minus; b, in points</h3><p class='note'>{what}</p>"
            + _table(["a &minus; b"] + [label for _, label in cols] + ["n"], rows, klass="metrics",
                     escape_head=False))


# ---------------------------------------------------------------------------- plots
def _svg(fig) -> str:
    """The matplotlib figure as inline SVG (text as text, no metadata); closes it."""
    import matplotlib.pyplot as plt  # deferred: matplotlib, the CLI imports this module

    buf = _io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buf.getvalue()
    text = re.sub(r"<\?xml[^>]*\?>|<!DOCTYPE[^>]*>", "", text)
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    return f"<div class='plot'>{text.strip()}</div>"


def _pyplot():
    import matplotlib  # deferred: matplotlib, the CLI imports this module

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: matplotlib, the CLI imports this module

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt


def _cmc_files(data: RunData) -> dict[str, np.ndarray]:
    """``{model: CMC}`` of every evaluate stage of ``data`` (recipe order)."""
    out = {}
    for stage in data.of_type("evaluate"):
        for path in sorted((data.folder / stage.name).glob("cmc_*.npy")):
            try:
                out[path.stem[len("cmc_"):]] = np.load(path)
            except (OSError, ValueError):
                continue
    models = list((data.metrics.get("models") or {}))
    return dict(sorted(out.items(), key=lambda kv: models.index(kv[0]) if kv[0] in models else 99))


def _cmc_section(runs: list[RunData]) -> str:
    curves: dict[str, list[np.ndarray]] = {}
    for data in runs:
        for name, cmc in _cmc_files(data).items():
            curves.setdefault(name, []).append(np.asarray(cmc, np.float64))
    if not curves:
        return ""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, (name, cmcs) in enumerate(curves.items()):
        n = min(len(c) for c in cmcs)
        stack = np.stack([c[:n] for c in cmcs])
        ranks = np.arange(1, n + 1)
        color = f"C{i}"
        if len(cmcs) > 1:
            for c in stack:
                ax.plot(ranks, 100 * c, color=color, alpha=0.25, lw=0.8)
        ax.plot(ranks, 100 * stack.mean(0), color=color, lw=2,
                label=f"{name}: rank-1 {100 * stack[:, 0].mean():.1f}%"
                + (f" (mean of {len(cmcs)})" if len(cmcs) > 1 else ""))
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 100)
    ax.set_xscale("log")
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100) if t <= max(len(c) for cs in curves.values() for c in cs)]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", frameon=False)
    note = ("Share of queries with the same person among the first k gallery images (other cameras), "
            "k on a log scale." + (" Thin lines: the single repeats; thick: their mean."
                                    if any(len(c) > 1 for c in curves.values()) else ""))
    return _svg(fig) + f"<p class='note'>{note}</p>"


def _training_section(data: RunData) -> str:
    blocks, curves = [], False
    for stage in data.of_type("train_reid", "train_generator"):
        losses, unit, evals = _stage_curves(data, stage)
        if not losses and not evals:
            continue
        curves = curves or bool(evals)
        blocks.append(_svg(_training_figure(stage.name, losses, unit, evals)))
    if not blocks:
        return ""
    return ("<div class='plots'>" + "".join(blocks) + "</div><p class='note'>Epoch means of the "
            "training losses (TensorBoard <code>reid/epoch/*</code>, <code>gan/epoch/*</code>)."
            + (" Right: mAP and rank-1 of the model in training on the query and gallery splits "
               "(<code>eval_every</code>; before the precise-BN pass of the saved model)." if curves
               else " Set <code>eval_every: N</code> on a train_reid stage to follow mAP and rank-1 "
               "during training.") + "</p>")


def _stage_curves(data: RunData, stage) -> tuple[dict[str, list], str, dict[str, list]]:
    """``(losses, unit, evals)`` of a training stage: its loss curves from TensorBoard and the
    mAP/rank-1 of its ``eval_every`` evaluations (TensorBoard, else its summary's history)."""
    scalars = tb_events.scalars(data.tensorboard(stage.name))
    losses, unit = _loss_curves(scalars, ("loss",) if stage.type == "train_reid"
                                else ("d_loss", "g_loss"))
    evals = {k.rsplit("/", 1)[-1]: v for k, v in scalars.items()
             if "/eval/" in f"/{k}" and k.rsplit("/", 1)[-1] in ("mAP", "rank1")}
    if not evals and stage.summary.get("eval_history"):
        hist = stage.summary["eval_history"]
        evals = {k: [(h["epoch"], h[k]) for h in hist if k in h] for k in ("mAP", "rank1")}
    return losses, unit, evals


def _training_figure(name: str, losses: dict[str, list], unit: str, evals: dict[str, list]):
    """The figure of stage ``name``: its training losses, and beside them its evaluations."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator  # deferred: matplotlib, the CLI imports this module

    panels = 1 + bool(evals)
    fig, axes = plt.subplots(1, panels, figsize=(3.4 * panels, 2.4), squeeze=False)
    ax = axes[0][0]
    for label, points in losses.items():
        ax.plot(*zip(*points), label=label, lw=1.5, marker="o" if len(points) <= 5 else None, ms=3)
    ax.set_xlabel(unit)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{name}: training loss", fontsize=9)
    if losses:
        ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    if evals:
        ax = axes[0][1]
        for metric, points in evals.items():
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, [100 * y for y in ys], marker="o", ms=3,
                        label={"rank1": "rank-1"}.get(metric, metric))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("%")
        ax.set_title(f"{name}: query/gallery during training", fontsize=9)
        ax.legend(frameon=False)
        ax.grid(alpha=0.3)
    return fig


def _loss_curves(scalars: dict, names: Iterable[str]) -> tuple[dict[str, list], str]:
    """``({name: [(x, value)]}, "epoch" | "step")``: the epoch means of ``names``, or their step
    values when there are fewer than 3 epochs and more steps were logged."""
    def find(kind: str) -> dict[str, list]:
        out = {}
        for name in names:
            old = "train_step" if kind == "step" else "epoch"   # tags before the reid/ and gan/ prefixes
            for tag in (f"reid/{kind}/{name}", f"gan/{kind}/{name}", f"{old}/{name}"):
                if scalars.get(tag):
                    out[name] = scalars[tag]
                    break
        return out

    epochs, steps = find("epoch"), find("step")
    most = max((len(v) for v in epochs.values()), default=0)
    if most < 3 and max((len(v) for v in steps.values()), default=0) > most:
        return steps, "step"
    return epochs, "epoch"


# ---------------------------------------------------------------------------- pictures
class _Thumbs:
    """Images read from disk, scaled to a height, as PNG data URIs (cached per path)."""

    def __init__(self, height: int = 128) -> None:
        self.height = height
        self._cache: dict[str, str] = {}

    def uri(self, path: str) -> str | None:
        if path not in self._cache:
            self._cache[path] = self._load(path)
        return self._cache[path] or None

    def _load(self, path: str) -> str:
        import cv2  # deferred: OpenCV, the CLI imports this module

        img = cv2.imread(str(path), cv2.IMREAD_COLOR) if Path(path).is_file() else None
        if img is None:
            return ""
        h, w = img.shape[:2]
        if h > self.height:
            img = cv2.resize(img, (max(1, round(w * self.height / h)), self.height),
                             interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".png", img)
        return _data_uri(buf.tobytes()) if ok else ""


def _data_uri(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(png).decode('ascii')}"


def _mime(data: bytes) -> str:
    return "image/jpeg" if data[:2] == b"\xff\xd8" else "image/png"


def _img(data: bytes, alt: str, klass: str = "") -> str:
    """An inline picture; a small grid (under 560 pixels wide) is shown at twice its size."""
    size = _png_size(data)
    style = ""
    if size and klass == "grid" and size[0] < 560:
        style = f" style='width:{2 * size[0]}px'"
    return f"<img class='{klass}' alt='{_e(alt)}'{style} src='{_data_uri(data, _mime(data))}'>"


def _png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG header, or None."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 24:
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _ranked_section(data: RunData, queries: int, top: int) -> str:
    if queries <= 0:
        return ""
    thumbs = _Thumbs()
    blocks, labelled = [], False
    for stage in data.of_type("evaluate"):
        models = list((stage.summary.get("models") or {}))
        files = sorted((data.folder / stage.name).glob("ranked_*.json"))
        names = [p.stem[len("ranked_"):] for p in files]
        for name in sorted(set(models) | set(names), key=lambda n: models.index(n) if n in models else 99):
            record = _read_json(data.folder / stage.name / f"ranked_{name}.json")
            if record and record.get("queries"):
                blocks.append(_ranked_html(name, record, queries, top, thumbs))
                labelled = True
                continue
            pictures = tb_events.images(data.tensorboard(stage.name, name)).get("eval/ranked_lists")
            if pictures:
                blocks.append(f"<h3>{_e(name)}</h3>" + _img(pictures[-1][1], f"ranked lists of {name}",
                                                           "grid")
                              + "<p class='note'>From TensorBoard (this run predates the labelled "
                              "lists): each row a query (dark border) and its closest gallery "
                              "images, green = same person, red = not.</p>")
    if not blocks:
        return ""
    if not labelled:
        return "".join(blocks)
    return ("<p class='note'>Each row: a query (grey) and its closest gallery images from left to right; "
            "<span class='ok'>green</span> = the same person, <span class='bad'>red</span> = someone "
            "else. Below each: rank, identity, camera and distance. Gallery images of the query's person "
            "from the query's own camera are left out (Market-1501 protocol).</p>" + "".join(blocks))


def _ranked_html(name: str, record: dict, queries: int, top: int, thumbs: _Thumbs) -> str:
    rows = []
    for q in record["queries"][:queries]:
        cells = [_tile(thumbs.uri(q["path"]), "query", f"query<br>{_who(q['pid'])} &middot; c{q['camid']}",
                       Path(q["path"]).name)]
        for rank, g in enumerate(q.get("top", [])[:top], 1):
            cells.append(_tile(thumbs.uri(g["path"]), "ok" if g.get("match") else "bad",
                               f"{rank}. {_who(g['pid'])} &middot; c{g['camid']}<br>d {g['distance']:.3f}",
                               Path(g["path"]).name))
        hits = sum(1 for g in q.get("top", [])[:top] if g.get("match"))
        rows.append(f"<div class='ranked' data-model='{_e(name)}' data-hits='{hits}'>{''.join(cells)}</div>")
    return f"<h3>{_e(name)}</h3>" + "".join(rows)


def _who(pid: int) -> str:
    """A gallery identity as shown: ``id 12``, or ``distractor`` (pid 0, Market-1501's people
    outside the identity set)."""
    return "distractor" if pid == 0 else f"id {pid}"


def _tile(uri: str | None, klass: str, caption: str, title: str) -> str:
    img = (f"<img src='{uri}' alt='{_e(title)}' title='{_e(title)}'>" if uri
           else f"<div class='missing' title='{_e(title)}'>image not found</div>")
    return f"<figure class='tile {klass}'>{img}<figcaption>{caption}</figcaption></figure>"


def _gan_section(data: RunData) -> str:
    blocks = []
    for stage in data.of_type("train_generator"):
        folders = [data.tensorboard(stage.name)]
        folders += sorted(p for p in data.tensorboard(stage.name).glob("identity_*") if p.is_dir())[:3]
        for folder in folders:
            pics = {}
            for tag in GAN_SAMPLE_TAGS:
                pics = tb_events.images(folder).get(tag) or {}
                if pics:
                    break
            if not pics:
                continue
            first_step, first = pics[0]
            step, last = pics[-1]
            who = stage.name + ("" if folder.name == stage.name else f" ({folder.name})")
            gen = (stage.summary.get("generator") or stage.spec.get("generator") or {})
            kind = " ".join(str(gen.get(k)) for k in ("type", "variant") if gen.get(k))
            blocks.append(
                f"<h3>{_e(who)}{(' &middot; ' + _e(kind)) if kind else ''}</h3>"
                + (f"<p class='note'>Before training (step {first_step}):</p>" + _img(first, "samples", "grid")
                   if len(pics) > 1 else "")
                + f"<p class='note'>After step {step}:</p>" + _img(last, f"samples of {who}", "grid"))
    if not blocks:
        return ""
    return ("<p class='note'>A fixed set of examples run through the generator (no noise). Rows, top "
            "to bottom, as named on their left: source, source mask, target pose, generated, target "
            "mask, target (only those this generator uses).</p>" + "".join(blocks))


def _generated_section(data: RunData) -> str:
    out = []
    for stage in data.of_type("augment"):
        pics = tb_events.images(data.tensorboard(stage.name)).get("augment/source_vs_generated")
        s = stage.summary
        facts = [f"{s.get('kept', '?'):,} of {s.get('generated', '?'):,} generated images kept"
                 if isinstance(s.get("kept"), int) and isinstance(s.get("generated"), int) else ""]
        if s.get("source_camera") is not None and s.get("target_camera") is not None:
            facts.append(f"camera {s['source_camera']} &rarr; camera {s['target_camera']}")
        if s.get("identities"):
            facts.append(f"{s['identities']} identities")
        out.append(f"<h3>{_e(stage.name)}</h3><p class='meta'>{' &middot; '.join(f for f in facts if f)}</p>")
        if pics:
            out.append(_img(pics[-1][1], f"source and generated images of {stage.name}", "grid"))
    quality = _quality_tables(data)
    filters = _filter_table(data)
    if not out and not quality and not filters:
        return ""
    return "".join(out) + quality + filters


def _quality_tables(data: RunData) -> str:
    quality: dict[str, dict] = {}
    for stage_extra in (data.metrics.get("stages") or {}).values():
        if isinstance(stage_extra, dict):
            quality.update(stage_extra.get("generated_quality") or {})
    models = data.metrics.get("models") or {}
    html_parts = []
    if quality:
        cols = [("images", "images", "{:,.0f}"), ("ssim_vs_source", "SSIM vs source", "{:.3f}"),
                ("person_ssim_vs_source", "person SSIM vs source", "{:.3f}"),
                ("ssim_vs_target", "SSIM vs target camera", "{:.3f}"),
                ("ssim_source_vs_target", "SSIM source vs target (baseline)", "{:.3f}"),
                ("with_target", "images with a target", "{:,.0f}")]
        cols = [c for c in cols if any(isinstance(q, dict) and c[0] in q for q in quality.values())]
        rows = []
        for name, q in quality.items():
            cells = "".join(f"<td class='num' data-quality='{_e(name)}' data-metric='{k}'>"
                            + (fmt.format(q[k]) if isinstance(q.get(k), (int, float)) else "&ndash;")
                            + "</td>" for k, _, fmt in cols)
            rows.append(f"<tr><th>{_e(name)}</th>{cells}</tr>")
        html_parts.append("<h3>Image quality</h3>" + _table(["generated set"] + [c[1] for c in cols], rows)
                          + "<p class='note'>SSIM (1 = identical) of each generated image with its "
                          "source and, where the target camera has a picture of the same person, with "
                          "that; the last column is what the source itself scores against it.</p>")
    ip_rows = []
    for model, m in models.items():
        for gen, v in ((m or {}).get("identity_preservation") or {}).items():
            if isinstance(v, dict):
                ip_rows.append(
                    f"<tr><th>{_e(model)}</th><td>{_e(gen)}</td>" + "".join(
                        f"<td class='num'>{100 * v[k]:.1f}%</td>" if isinstance(v.get(k), (int, float))
                        else "<td class='num'>&ndash;</td>" for k in ("rank1", "mAP"))
                    + f"<td class='num'>{_e(v.get('num_queries', ''))}</td></tr>")
    if ip_rows:
        html_parts.append("<h3>Identity preservation</h3>" + _table(
            ["model", "generated set", "rank-1", "mAP", "queries"], ip_rows)
            + "<p class='note'>Each generated image as a query against the real training images "
            "(other cameras): does the model still find its person?</p>")
    return "".join(html_parts)


def _filter_table(data: RunData) -> str:
    rows = []
    for stage in data.stages:
        s = stage.summary
        sem = s.get("semantic_filter") if stage.type == "train_generator" else None
        if isinstance(sem, dict) and sem.get("real_images"):
            ftype = (sem.get("filter") or {}).get("type", "filter")
            rows.append((stage.name, f"{ftype} on the real training images",
                         f"accepts {sem.get('accepted', 0):,} of {sem['real_images']:,} "
                         f"({sem.get('accepted', 0) / sem['real_images']:.1%}) at min_score "
                         f"{sem.get('min_score')}"))
        for name, frac in (s.get("accepted_fraction_by_filter") or {}).items():
            rows.append((stage.name, f"{name} filter", f"keeps {frac:.1%} of the generated images"))
        for name, frac in (s.get("measured_fraction") or {}).items():
            rows.append((stage.name, f"{name} (measured)", f"{frac:.1%} of the generated images pass"))
        div = s.get("sample_diversity")
        if isinstance(div, dict) and div.get("pixel_std") is not None:
            extra = ", ".join(f"{k}: {v}" for k, v in (div.get("pixel_std_by_generator") or {}).items())
            rows.append((stage.name, "sample diversity", f"per-pixel std {div['pixel_std']} over "
                         f"{div.get('images')} samples" + (f" ({_e(extra)})" if extra else "")))
    if not rows:
        return ""
    return ("<h3>Semantic filters and diversity</h3>" + _table(
        ["stage", "what", "figure"], [f"<tr><th>{_e(a)}</th><td>{_e(b)}</td><td>{_e(c)}</td></tr>"
                                      for a, b, c in rows])
        + "<p class='note'>Per-pixel std across samples: 0 = all alike; a collapsed generator scores "
        "far below its real images.</p>")


# ---------------------------------------------------------------------------- stages, recipe, provenance
def _stages_section(data: RunData) -> str:
    rows = []
    for s in data.stages:
        status = "writing this report" if s.name == data.current else s.status
        m = s.marker or {}
        details = ""
        if s.summary:
            text = json.dumps(s.summary, indent=1, default=str)
            details = (f"<details><summary>summary</summary><pre>{_e(text[:20000])}"
                       f"{'...' if len(text) > 20000 else ''}</pre></details>")
        rows.append(f"<tr class='{'' if s.marker else 'pending'}'><th>{_e(s.name)}</th>"
                    f"<td>{_e(s.type)}</td><td>{_e(status)}</td>"
                    f"<td class='num' data-stage='{_e(s.name)}' data-seconds='{m.get('seconds', '')}'>"
                    f"{_fmt_seconds(m['seconds']) if isinstance(m.get('seconds'), (int, float)) else ''}</td>"
                    f"<td>{_e(m.get('finished', ''))}</td><td class='desc'>{_e(_stage_line(s))}{details}</td></tr>")
    return _table(["stage", "type", "status", "time", "finished", "summary"], rows, klass="stages")


def _stage_line(s: StageInfo) -> str:
    """One line of the stage summary's main figures."""
    x = s.summary
    if not x:
        return ""
    if s.type == "train_reid":
        final = x.get("final") or {}
        parts = [f"{x.get('num_images', 0):,} real images"]
        parts += [f"{n:,} generated ({g})" for g, n in (x.get("generated_images") or {}).items()]
        parts.append(_plural(x.get("epochs"), "epoch"))
        if "loss" in final:
            parts.append(f"final loss {final['loss']:.3f}")
        if x.get("images_per_second"):
            parts.append(f"{x['images_per_second']} images/s")
        if x.get("resumed_from_epoch"):
            parts.append(f"resumed from epoch {x['resumed_from_epoch']}")
        return ", ".join(parts)
    if s.type == "train_generator":
        pairs = (x.get("pairs") or {}).get("pairs")
        parts = [f"{pairs:,} pairs" if isinstance(pairs, int) else "",
                 _plural(x.get("epochs"), "epoch"),
                 f"{x.get('steps_per_second')} steps/s" if x.get("steps_per_second") else ""]
        return ", ".join(p for p in parts if p)
    if s.type == "augment":
        return f"{x.get('kept', 0):,} of {x.get('generated', 0):,} generated images kept"
    if s.type == "evaluate":
        return "models: " + ", ".join(x.get("models") or {})
    if s.type == "report":
        return str(x.get("report", ""))
    return ""


def _recipe_section(data: RunData) -> str:
    return (f"<p class='note'>As run (<code>recipe.resolved.yaml</code>: after <code>base:</code>, "
            f"<code>--set</code> and <code>${{ENV}}</code>).</p><pre class='recipe'>{_e(data.recipe_text)}</pre>")


def _versions() -> list[tuple[str, str]]:
    out = [("python", platform.python_version())]
    for name in VERSIONED:
        try:
            out.append((name, version(name)))
        except PackageNotFoundError:
            continue
    return out


def _model_files(data: RunData) -> list[tuple[str, Path]]:
    """``(stage, file)`` of every model file the stage summaries name."""
    out = []
    for s in data.stages:
        x = s.summary
        names = [x.get(k) for k in ("model", "classifier")] + [(x.get("converted") or {}).get("model")]
        names += list((x.get("generators") or {}).values())[:20]
        for rel in names:
            if isinstance(rel, str) and rel.endswith(".keras"):
                out.append((s.name, data.folder / rel))
    return out


def _provenance_section(runs: list[RunData]) -> str:
    many = len(runs) > 1

    def lab(data: RunData) -> str:
        return f"<td>{_e(data.label)}</td>" if many else ""

    rows = []
    for data in runs:
        for stage, path in _model_files(data):
            digest = sha256_file(path)[:16] if path.is_file() else "missing"
            rows.append(f"<tr>{lab(data)}<th>{_e(stage)}</th><td><code>"
                        f"{_e(path.relative_to(data.folder) if path.is_relative_to(data.folder) else path)}"
                        f"</code></td><td><code>{digest}</code></td></tr>")
    ids = []
    for data in runs:
        for s in data.stages:
            if s.marker:
                cid = s.marker.get("completion_id")
                ids.append(f"<tr>{lab(data)}<th>{_e(s.name)}</th><td><code>"
                           f"{_e(s.marker.get('hash', ''))}</code></td>"
                           + (f"<td><code>{_e(cid)}</code></td>" if cid else "<td>&ndash;</td>") + "</tr>")
    versions = ", ".join(f"{_e(n)} {_e(v)}" for n, v in _versions())
    seeds = sorted({str(d.recipe.get("seed", 0)) for d in runs})
    datasets = []
    for name, spec in (runs[0].recipe.get("datasets") or {}).items():
        spec = spec if isinstance(spec, dict) else {}
        datasets.append(f"{_e(name)}: {_e(spec.get('type', '?'))} at <code>{_e(spec.get('root', ''))}</code>")
    first = ["repeat"] if many else []
    out = [f"<p>Software (when this report was made): {versions}; {_e(platform.platform())}.</p>",
           f"<p>Seed{'s' if len(seeds) > 1 else ''}: {', '.join(seeds)}. Datasets: "
           f"{'; '.join(datasets) or 'none'}.</p>"]
    if rows:
        out.append("<h3>Model files (sha256, first 16 hex digits)</h3>"
                   + _table(first + ["stage", "file", "sha256"], rows))
    if ids:
        out.append("<h3>Stage identities</h3><p class='note'>The config hash a stage is skipped by, "
                   "and the id of its completion (what later stages record as their input).</p>"
                   + _table(first + ["stage", "config hash", "completion"], ids))
    return "".join(out)


# ---------------------------------------------------------------------------- repeated runs
def _repeated_page(parent: Path, queries: int, top: int) -> str:
    desc = _read_json(parent / "repeats.json") or {}
    agg = _read_json(parent / "metrics.json") or {}
    runs = []
    for rep in desc.get("repeats") or []:
        folder = parent / str(rep.get("folder", ""))
        if (folder / "recipe.resolved.yaml").is_file():
            runs.append((rep, read_run(folder, label=str(rep.get("folder")))))
    if not runs:
        raise InputError(f"{parent} holds repeats.json but no finished repeat folder; run the "
                         "repeats first (keras-reid run RECIPE --seeds ...)")
    first = runs[0][1]
    name = str(desc.get("recipe") or first.name)
    sweep = desc.get("sweep") or {}
    head = (f"<p class='desc'>{_e(first.recipe.get('description', ''))}</p>"
            f"<p class='meta'>{len(runs)} repeats in <code>{_e(parent)}</code> &middot; seeds "
            f"{_e(', '.join(map(str, desc.get('seeds') or [])))}"
            + (" &middot; swept: " + _e("; ".join(f"{k} = {', '.join(map(str, v))}" for k, v in sweep.items()))
               if sweep else "") + "</p>")
    first_note = (f"<p class='note'>Pictures and figures from the first repeat, <code>{_e(first.label)}</code>; "
                  "its own report: <code>keras-reid report " + _e(first.folder) + "</code>.</p>")
    sections = [("top", "", head),
                ("results", "Results", _results_repeated(agg, runs)),
                ("cmc", "CMC curves", _cmc_section([r for _, r in runs])),
                ("ranked", "Ranked lists", _wrap(first_note, _ranked_section(first, queries, top))),
                ("generator", "Generator samples", _wrap(first_note, _gan_section(first))),
                ("generated", "Generated images", _wrap(first_note, _generated_section(first))),
                ("stages", "Stages", _stage_times(runs)),
                ("recipe", "Recipe", _wrap(f"<p class='note'>Of the first repeat, "
                                           f"<code>{_e(first.label)}</code>; the others differ in "
                                           "the seed" + (" and the swept keys" if sweep else "")
                                           + ".</p>", _recipe_section(first))),
                ("provenance", "Provenance", _provenance_section([r for _, r in runs]))]
    return _page(f"{name} ({len(runs)} repeats)", [s for s in sections if s[2]])


def _wrap(note: str, body: str) -> str:
    return note + body if body else ""


def _results_repeated(agg: dict, runs: list[tuple[dict, RunData]]) -> str:
    models = agg.get("models") or {}
    if not models:
        return "<p class='note'>No aggregate metrics yet (no repeat has a completed evaluate stage).</p>"
    cols = _columns(models)
    rows = [_metric_row(name, m, cols, f"n = {m.get('n', '?')}") for name, m in models.items()]
    chance = agg.get("chance")
    if isinstance(chance, dict):
        rows.append(_metric_row("chance", chance, cols, "a random ranking of the gallery",
                                variant="chance", klass="chance"))
    out = ["<p class='note'>Mean &plusmn; sample standard deviation over the repeats.</p>",
           _table(["model"] + [label for _, label in cols] + [""], rows, klass="metrics"),
           _deploy_table(models)]
    comps = agg.get("comparisons") or {}
    if comps:
        out.append(_comparisons(comps, cols, single=False))
    # every repeat's own figures
    key_cols = [c for c in cols if c[0] in ("mAP", "rank1", "prec1_all", "mAP_all")]
    head = ["repeat"] + [f"{m} {label}" for m in models for _, label in key_cols]
    rows = []
    for rep, data in runs:
        ms = data.metrics.get("models") or {}
        cells = [f"<th>{_e(data.label)}</th>"]
        for m in models:
            for key, _ in key_cols:
                v = (ms.get(m) or {}).get(key)
                cells.append(f"<td class='num' data-repeat='{_e(data.label)}' data-model='{_e(m)}' "
                             f"data-metric='{key}' data-value='{v!r}'>{100 * v:.2f}%</td>"
                             if isinstance(v, (int, float)) else "<td class='num'>&ndash;</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    out.append("<h3>Each repeat</h3>" + _table(head, rows, klass="metrics"))
    out.append(f"<p class='note'>{_e(_meaning(cols))}</p>")
    return "".join(out)


def _stage_times(runs: list[tuple[dict, RunData]]) -> str:
    names = [s.name for s in runs[0][1].stages]
    rows = []
    for name in names:
        cells = [f"<th>{_e(name)}</th>"]
        for _, data in runs:
            s = next((x for x in data.stages if x.name == name), None)
            m = (s.marker if s else None) or {}
            shared = " (shared)" if m.get("shared_from") else ""
            cells.append(f"<td class='num'>{_fmt_seconds(m['seconds']) + shared if isinstance(m.get('seconds'), (int, float)) else (s.status if s else '')}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return ("<p class='note'>Time per stage and repeat (a stage whose config is the same in every "
            "repeat runs once and is shared).</p>"
            + _table(["stage"] + [d.label for _, d in runs], rows, klass="stages"))


# ---------------------------------------------------------------------------- html
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _plural(n: Any, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _fmt_seconds(s: float) -> str:
    s = float(s)
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _table(head: list[str], rows: list[str], klass: str = "", escape_head: bool = True) -> str:
    cells = "".join(f"<th>{_e(h) if escape_head else h}</th>" for h in head)
    return f"<table class='{klass}'><thead><tr>{cells}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d2430;margin:0;background:#f6f7f9}
header{background:#1d2430;color:#fff;padding:14px 28px}
header h1{margin:0;font-size:20px;font-weight:600}
header .sub{color:#aeb8c6;font-size:12px}
nav{background:#fff;border-bottom:1px solid #dde1e7;padding:6px 28px;position:sticky;top:0;z-index:2}
nav a{color:#35507a;margin-right:16px;text-decoration:none;font-size:13px}
main{padding:8px 28px 40px;max-width:1280px}
section{background:#fff;border:1px solid #e1e5eb;border-radius:6px;padding:12px 18px;margin:14px 0}
h2{font-size:17px;margin:2px 0 10px}
h3{font-size:14px;margin:14px 0 6px;color:#35507a}
p.note{color:#5b6575;font-size:12.5px;margin:6px 0}
p.meta{color:#3a4452}
p.desc{font-size:15px;margin:6px 0 2px}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border-bottom:1px solid #e6e9ee;padding:4px 10px;text-align:left;vertical-align:top}
thead th{background:#f0f2f5;font-weight:600;border-bottom:1px solid #cfd5dd}
tbody th{font-weight:600;white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.desc{color:#4a5362}
tr.chance td,tr.chance th{color:#7a8494;font-style:italic}
tr.pending th,tr.pending td{color:#9aa3b0}
pre{background:#f5f6f8;border:1px solid #e3e6ea;padding:8px 10px;overflow:auto;font-size:12px;max-height:520px}
details summary{cursor:pointer;color:#35507a;font-size:12px}
.plot svg{max-width:100%;height:auto}
.plots{display:flex;flex-wrap:wrap;gap:10px}
img.grid{image-rendering:pixelated;max-width:100%;border:1px solid #e1e5eb;min-height:80px}
.ranked{display:flex;gap:6px;margin:4px 0 10px;overflow-x:auto;padding-bottom:2px}
figure.tile{margin:0;text-align:center;font-size:10.5px;line-height:1.25;color:#3a4452}
figure.tile img,figure.tile .missing{height:128px;border:4px solid #888;display:block;image-rendering:auto;
  box-sizing:content-box}
figure.tile .missing{width:64px;background:#eee;color:#999;font-size:10px}
figure.tile.query img{border-color:#3a4452}
figure.tile.ok img{border-color:#1f9d3a}
figure.tile.bad img{border-color:#d6312b}
figure.tile.query{margin-right:10px}
span.ok{color:#1f9d3a;font-weight:600} span.bad{color:#d6312b;font-weight:600}
code{font-size:12px}
"""


def _page(title: str, sections: list[tuple[str, str, str]]) -> str:
    nav = "".join(f"<a href='#{a}'>{_e(t)}</a>" for a, t, _ in sections if t)
    body = "".join(f"<section id='{a}'>" + (f"<h2>{_e(t)}</h2>" if t else "") + f"{h}</section>"
                   for a, t, h in sections)
    made = _dt.datetime.now().isoformat(timespec="seconds")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>keras-reid report: {_e(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>keras-reid report: {_e(title)}</h1><div class='sub'>made {made} by "
            f"keras-reid {_e(__version__)} &middot; self-contained: no network needed</div></header>"
            f"<nav>{nav}</nav><main>{body}</main></body></html>\n")
