"""Repeated runs: one recipe run once per seed and/or sweep value, each an ordinary resumable run
in its own folder under the recipe's run folder, and the aggregate of their metrics.

Layout (``runs/<name>/`` unless ``--run-dir`` says otherwise)::

    repeats.json                 what was asked: seeds, sweeps, every repeat and its folder
    metrics.json                 the aggregate (:func:`aggregate`)
    seed-0/                      an ordinary run folder (recipe.resolved.yaml, one folder per
    seed-1/                        stage, tensorboard/, metrics.json) with the recipe's seed replaced
    test_session-1/seed-0/       with --sweep: one folder level per swept key, then the seed

``tensorboard --logdir runs/<name>`` therefore shows every repeat's stages as separate runs
(``seed-0/tensorboard/train``, ``seed-1/tensorboard/train``, ...).

A stage whose hash is the same in two repeats (a seed-free stage, see
:meth:`keras_reid.recipe.Recipe.seed_free`, or any stage before the swept one) runs once: the
other repeats get a hard-linked copy of its completed folder (and its TensorBoard logs), and
its completion marker records ``shared_from``.
"""
from __future__ import annotations

import copy
import difflib
import itertools
import json
import math
import os
import re
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import click
import yaml

from keras_reid import io, runner
from keras_reid.errors import RecipeError, UserError
from keras_reid.recipe import (LoadedYaml, Recipe, apply_override, interpolate, load_with_bases,
                               set_value, validate)
from keras_reid.registry import REGISTRY, Registry
from keras_reid.stages.base import COMPLETE_MARKER

REPEATS_MARKER = "repeats.json"
"""The file in a parent run folder that says it holds repeats (and which)."""

ENGINES = ("local", "ray")

SUMMARY_METRICS = ("mAP", "rank1", "rank5", "rank10", "mINP",
                   "prec1_all", "prec1_pid", "mAP_all", "mAP_pid")
"""Metrics shown in the printed tables (as percentages), when the models report them."""

_NOT_SWEEPABLE = {"seed": "use --seeds to repeat over seeds",
                  "name": "the repeats share the recipe's run folder; use --run-dir to move it",
                  "runs_dir": "use --run-dir to choose the folder of the repeats",
                  "run_dir": "use --run-dir to choose the folder of the repeats"}


@dataclass
class Repeat:
    """One run of a repeated run: its folder (relative to the parent), seed, swept values and
    validated recipe."""

    label: str
    seed: int
    sweep: dict[str, Any]
    recipe: Recipe


@dataclass
class RepeatPlan:
    """Every repeat of ``keras-reid run --seeds/--sweep``, validated, and where they go."""

    source: str
    run_dir: Path
    seeds: list[int] | None
    sweeps: list[tuple[str, list]]
    repeats: list[Repeat] = field(default_factory=list)

    @property
    def compare(self) -> list[tuple[str, str]]:
        """The recipe's ``compare:`` pairs."""
        return [tuple(p) for p in self.repeats[0].recipe.model.compare] if self.repeats else []

    def folder(self, repeat: Repeat) -> Path:
        """Returns the repeat's run folder."""
        return self.run_dir / repeat.label

    def describe(self) -> dict:
        """Returns the JSON description of the plan written to ``repeats.json``."""
        return {"recipe": self.repeats[0].recipe.name if self.repeats else None,
                "source": self.source, "seeds": self.seeds,
                "sweep": {key: values for key, values in self.sweeps},
                "repeats": [{"folder": r.label, "seed": r.seed, "sweep": r.sweep} for r in self.repeats]}


# ---------------------------------------------------------------------------- parsing and expansion
def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; raises RecipeError (exit 2) on anything else."""
    try:
        seeds = [int(v) for v in text.split(",")]
    except ValueError:
        raise RecipeError(f"--seeds {text}: expected integers separated by commas, e.g. --seeds 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise RecipeError(f"--seeds {text}: a seed is repeated; give each seed once")
    return seeds


def parse_sweep(text: str) -> tuple[str, tuple, list]:
    """``"datasets.lima.test_session=1,2,3"`` -> ``(key, key path, [1, 2, 3])``; values are
    YAML-typed like --set (``[64,32],[128,64]`` is two lists). Raises RecipeError on bad syntax."""
    if "=" not in text:
        raise RecipeError(f"--sweep {text}: expected KEY=V1,V2,..., e.g. --sweep stages.train.epochs=10,20")
    key, raw = (part.strip() for part in text.split("=", 1))
    if not key or any(not p for p in key.split(".")):
        raise RecipeError(f"--sweep {text}: the key '{key}' is not a dotted path like stages.train.epochs")
    try:
        values = yaml.safe_load(f"[{raw}]")
    except yaml.YAMLError:
        raise RecipeError(f"--sweep {text}: the values are not a comma-separated list of YAML values, "
                          "e.g. 1,2,3 or [64,32],[128,64]") from None
    if not values:
        raise RecipeError(f"--sweep {text}: give at least one value, e.g. --sweep {key}=1,2")
    texts = [_value_text(v) for v in values]
    if len(set(texts)) != len(texts):
        raise RecipeError(f"--sweep {text}: a value is repeated; give each value once")
    path = tuple(int(p) if p.isdigit() else p for p in key.split("."))
    if path[0] in _NOT_SWEEPABLE:
        raise RecipeError(f"--sweep {text}: '{path[0]}' cannot be swept; {_NOT_SWEEPABLE[path[0]]}")
    return key, path, values


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _folder_part(key_label: str, value: Any) -> str:
    text = re.sub(r"[^A-Za-z0-9.+-]+", "_", _value_text(value)).strip("_") or "_"
    return f"{key_label}-{text}"


def _key_labels(paths: list[tuple]) -> list[str]:
    """Shortest dotted suffixes of the swept key paths that tell them apart."""
    longest = max(len(p) for p in paths)
    for n in range(1, longest + 1):
        labels = [".".join(str(x) for x in p[-n:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [".".join(str(x) for x in p) for p in paths]


def _check_key_path(data: dict, key: str, path: tuple) -> None:
    """Every mapping on the way to a swept key must exist in the recipe (the last key may be a
    parameter the recipe leaves at its default: validation checks that one)."""
    node: Any = data
    for i, part in enumerate(path[:-1]):
        here = ".".join(str(p) for p in path[:i + 1])
        if isinstance(node, list):
            if isinstance(part, int) and part < len(node):
                node = node[part]
                continue
            raise RecipeError(f"--sweep {key}: {here} is not an index of a list of {len(node)} items")
        if not isinstance(node, dict):
            raise RecipeError(f"--sweep {key}: {'.'.join(str(p) for p in path[:i])} is a value, not a mapping")
        if part not in node:
            close = difflib.get_close_matches(str(part), [str(k) for k in node], n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ";"
            under = ".".join(str(p) for p in path[:i]) or "the top level"
            raise RecipeError(f"--sweep {key}: {here} is not in the recipe{hint} keys under {under}: "
                              f"{', '.join(str(k) for k in node) or '(none)'}")
        node = node[part]


def expand(recipe_path: str | Path, overrides: Iterable[str] = (), *, seeds: Sequence[int] | None = None,
           sweeps: Sequence[str] = (), run_dir: str | Path | None = None, env: dict | None = None,
           registry: Registry = REGISTRY) -> RepeatPlan:
    """Load the recipe once per repeat (every sweep combination x every seed, sweep-major) with
    ``--set`` overrides, the swept values and the seed applied, and validate each; returns the
    :class:`RepeatPlan`. Nothing is written: a bad sweep key or value is a RecipeError before any
    work starts."""
    if not seeds and not sweeps:
        raise RecipeError("repeats need --seeds and/or --sweep, e.g. --seeds 0,1,2")
    parsed = [parse_sweep(s) for s in sweeps]
    keys = [k for k, _, _ in parsed]
    if len(set(keys)) != len(keys):
        raise RecipeError(f"--sweep: a key is swept twice ({', '.join(keys)}); give each key once "
                          "with all its values")
    base = load_with_bases(recipe_path)
    for text in overrides:
        apply_override(base, text)
    for key, path, _ in parsed:
        _check_key_path(base.data, key, path)
    labels = _key_labels([p for _, p, _ in parsed]) if parsed else []
    plan = RepeatPlan(source=str(recipe_path), run_dir=Path("."), seeds=list(seeds) if seeds else None,
                      sweeps=[(k, list(v)) for k, _, v in parsed])
    for combo in itertools.product(*[v for _, _, v in parsed]):
        for seed in (seeds or [None]):
            loaded = LoadedYaml(copy.deepcopy(base.data), dict(base.locations))
            parts = []
            for (key, path, _), label, value in zip(parsed, labels, combo):
                set_value(loaded, path, copy.deepcopy(value), f"--sweep {key}={_value_text(value)}")
                parts.append(_folder_part(label, value))
            if seed is not None:
                set_value(loaded, ("seed",), seed, f"--seeds {seed}")
            data = interpolate(loaded.data, loaded.locations, env)
            recipe = validate(data, loaded.locations, registry, source=str(recipe_path))
            if seed is not None:
                parts.append(f"seed-{seed}")
            plan.repeats.append(Repeat("/".join(parts), recipe.model.seed,
                                       dict(zip(keys, combo)), recipe))
    plan.run_dir = Path(run_dir) if run_dir else runner.default_run_dir(plan.repeats[0].recipe)
    if (plan.run_dir / "recipe.resolved.yaml").exists():
        raise RecipeError(f"{plan.run_dir} holds a single run (recipe.resolved.yaml); give the repeats "
                          "a folder of their own with --run-dir DIR")
    return plan


def check_single_run_folder(run_dir: str | Path) -> None:
    """Raises RecipeError when ``run_dir`` holds repeats (a single run there would mix its stage
    folders with theirs and overwrite their aggregate metrics.json)."""
    if (Path(run_dir) / REPEATS_MARKER).exists():
        raise RecipeError(f"{run_dir} holds repeated runs ({REPEATS_MARKER}); run them with the same "
                          "--seeds/--sweep, or give a single run its own folder with --run-dir DIR")


# ---------------------------------------------------------------------------- sharing stages
def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy) the folder ``src`` to ``dst`` under a temporary name, then rename it."""
    tmp = dst.parent / f".tmp-{dst.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, tmp, symlinks=True, copy_function=_link_or_copy)
    if dst.exists():
        dst.rmdir()  # only an empty folder is ever replaced
    os.replace(tmp, dst)


def link_shared_stages(recipe: Recipe, run_dir: str | Path, donors: Iterable[str | Path], *,
                       registry: Registry = REGISTRY,
                       echo: Callable[[str], None] = click.echo) -> list[str]:
    """Give ``run_dir`` a hard-linked copy of every stage that another repeat (a folder in
    ``donors``) completed with the same hash from the same inputs (the completion ids of the
    stages it read, as ``run_dir`` has them), when ``run_dir`` has nothing of that stage yet;
    the copy's marker records ``shared_from`` and its TensorBoard logs come along. Models an
    evaluating stage reported are carried into ``run_dir/metrics.json``. Returns the names of
    the stages linked."""
    run_dir = Path(run_dir)
    donors = [Path(d) for d in donors if Path(d).resolve() != run_dir.resolve()]
    linked = []
    for name in recipe.model.stages:
        # planned again after each link: a linked stage's completion id is what later ones read
        step = next(s for s in runner.plan(recipe, run_dir) if s.name == name)
        dst = run_dir / step.name
        if step.status == "done" or (dst.exists() and any(dst.iterdir())):
            continue
        donor = next((d for d in donors
                      if _same_output(io.read_json(d / step.name / COMPLETE_MARKER) or {}, step)),
                     None)
        if donor is None:
            continue
        _link_tree(donor / step.name, dst)
        tb_src, tb_dst = donor / "tensorboard" / step.name, run_dir / "tensorboard" / step.name
        if tb_src.is_dir() and not tb_dst.exists():
            _link_tree(tb_src, tb_dst)
        marker = io.read_json(dst / COMPLETE_MARKER)
        marker["shared_from"] = os.path.relpath(donor / step.name, run_dir)
        io.write_json(dst / COMPLETE_MARKER, marker)  # a new file: the donor's marker is untouched
        _carry_metrics(recipe, step.name, donor, run_dir, registry)
        echo(f"stage '{step.name}': same config as in {os.path.relpath(donor, run_dir.parent)}, "
             f"shared (hard-linked) from there")
        linked.append(step.name)
    return linked


def _same_output(marker: dict, step: runner.StagePlan) -> bool:
    """Is the completion ``marker`` (another repeat's) what ``step`` would produce here: the same
    hash, and the same inputs (a marker written before inputs were recorded: the hash alone)?"""
    if marker.get("hash") != step.hash:
        return False
    return "inputs" not in marker or (step.inputs is not None and marker["inputs"] == step.inputs)


def _carry_metrics(recipe: Recipe, stage: str, donor: Path, run_dir: Path, registry: Registry) -> None:
    """Record in ``run_dir/metrics.json`` what the shared stage recorded in the donor's: from the
    stage folder's ``.recorded_metrics.json``, or else (a folder written before that file existed)
    the donor's entries of the models its stage type reports."""
    recorded = runner.recorded_metrics(recipe, stage, run_dir / stage,
                                         io.read_json(donor / "metrics.json") or {}, registry)
    if recorded is None:
        return
    current = io.read_json(run_dir / "metrics.json", default={}) or {}
    current.setdefault("recipe", recipe.name)
    current.setdefault("models", {}).update(recorded.get("models", {}))
    if recorded.get("extra"):
        current.setdefault("stages", {})[stage] = recorded["extra"]
    io.write_json(run_dir / "metrics.json", current)


def shared_stages(plan: RepeatPlan) -> dict[int, list[str]]:
    """``{repeat index: stage names}``: the stages of each repeat that a later repeat would share
    (same hash), i.e. what to run first when the repeats run in parallel."""
    first: dict[tuple[str, str], int] = {}
    out: dict[int, list[str]] = {}
    for i, rep in enumerate(plan.repeats):
        for name in rep.recipe.model.stages:
            key = (name, rep.recipe.stage_hash(name))
            if key in first and first[key] != i:
                stages = out.setdefault(first[key], [])
                if name not in stages:
                    stages.append(name)
            first.setdefault(key, i)
    order = {n: k for k, n in enumerate(plan.repeats[0].recipe.model.stages)} if plan.repeats else {}
    return {i: sorted(names, key=lambda n: order.get(n, 0)) for i, names in out.items()}


# ---------------------------------------------------------------------------- running
def repeat_complete(recipe: Recipe, run_dir: str | Path, only: Sequence[str] | None = None) -> bool:
    """True when every stage (of ``only``, if given) is complete in ``run_dir`` with its hash."""
    return all(s.status == "done" for s in runner.plan(recipe, Path(run_dir))
               if not only or s.name in only)


def run_repeat(recipe: Recipe, run_dir: str | Path, *, donors: Iterable[str | Path] = (),
               only: Sequence[str] | None = None, registry: Registry = REGISTRY,
               echo: Callable[[str], None] = click.echo) -> dict:
    """One repeat: link the stages other repeats (``donors``) completed with the same hash, then
    an ordinary :func:`keras_reid.runner.run` (skipping done stages, resuming an interrupted
    one). Returns ``{"folder", "linked": [stage names], "incomplete": None | {...}}``."""
    linked = link_shared_stages(recipe, run_dir, donors, registry=registry, echo=echo)
    results = runner.run(recipe, run_dir, registry=registry, echo=echo,
                           only=list(only) if only else None)
    return {"folder": str(run_dir), "linked": linked, "incomplete": results.get("_incomplete")}


def run_repeats(plan: RepeatPlan, *, engine: str = "local", only: Sequence[str] | None = None,
                registry: Registry = REGISTRY, echo: Callable[[str], None] = click.echo,
                ray_cpus: float = 1.0, ray_gpus: float = 0.0) -> dict:
    """Run every repeat of ``plan`` (skipping complete ones) with ``engine`` (``local``: one
    after the other in this process; ``ray``: as Ray tasks), then write the aggregate
    ``metrics.json`` in the parent folder; returns the aggregate."""
    if engine not in ENGINES:
        raise RecipeError(f"--engine {engine}: expected one of {', '.join(ENGINES)}")
    if engine == "ray":
        ray = _import_ray()
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    io.write_json(plan.run_dir / REPEATS_MARKER, plan.describe())
    if engine == "ray":
        _run_ray(ray, plan, only, echo, ray_cpus, ray_gpus)
    else:
        _run_local(plan, only, registry, echo)
    return write_aggregate(plan, echo=echo)


def _head(plan: RepeatPlan, i: int) -> str:
    rep = plan.repeats[i]
    what = ", ".join([f"seed {rep.seed}"] + [f"{k}={_value_text(v)}" for k, v in rep.sweep.items()])
    return f"repeat {i + 1}/{len(plan.repeats)} '{rep.label}' ({what})"


def _run_local(plan: RepeatPlan, only, registry: Registry, echo: Callable[[str], None]) -> None:
    folders = [plan.folder(r) for r in plan.repeats]
    for i, rep in enumerate(plan.repeats):
        head = _head(plan, i)
        if repeat_complete(rep.recipe, folders[i], only):
            echo(f"{head}: every stage done before with the same config, skipped")
            continue
        echo(click.style(head, bold=True))
        try:
            run_repeat(rep.recipe, folders[i], donors=folders, only=only, registry=registry, echo=echo)
        except BaseException:
            echo(click.style(f"{head} stopped; run the same command again to resume it", fg="yellow"))
            raise


def _import_ray():
    try:
        import ray  # deferred: Ray, optional extra [ray]
    except ImportError:
        raise UserError("--engine ray needs Ray; install it with: pip install 'keras-reid[ray]'") from None
    return ray


def _ray_task(data: dict, source: str, run_dir: str, donors: list[str], only: list[str] | None,
              label: str, cwd: str) -> dict:
    """What a Ray worker runs: validate the resolved recipe again and run one repeat."""
    if os.path.isdir(cwd):  # relative paths of the recipe mean what they meant to the driver
        os.chdir(cwd)
    recipe = validate(data, {}, REGISTRY, source=source)
    return run_repeat(recipe, run_dir, donors=donors, only=only,
                      echo=lambda s: click.echo(f"[{label}] {s}"))


def _run_ray(ray, plan: RepeatPlan, only, echo: Callable[[str], None], cpus: float, gpus: float) -> None:
    """Stages shared between repeats first (one task per repeat that holds some), then every
    incomplete repeat as a Ray task; a repeat that fails does not stop the others."""
    started = False
    if not ray.is_initialized():
        ray.init(include_dashboard=False)  # a cluster when RAY_ADDRESS is set, else a local one
        started = True
    try:
        task = ray.remote(_ray_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
        folders = [str(plan.folder(r).resolve()) for r in plan.repeats]
        cwd = os.getcwd()

        def submit(i: int, stages: list[str] | None, donors: list[str]):
            rep = plan.repeats[i]
            return task.remote(rep.recipe.data, rep.recipe.source, folders[i], donors, stages,
                               rep.label, cwd)

        first = {}
        for i, names in shared_stages(plan).items():
            names = [n for n in names if not only or n in only]
            if names and not repeat_complete(plan.repeats[i].recipe, folders[i], names):
                echo(f"{_head(plan, i)}: stages shared with later repeats first: {', '.join(names)}")
                first[submit(i, names, [])] = i
        _wait(ray, first, plan, echo, "shared stages of ")
        todo = {}
        for i, rep in enumerate(plan.repeats):
            if repeat_complete(rep.recipe, folders[i], only):
                echo(f"{_head(plan, i)}: every stage done before with the same config, skipped")
                continue
            echo(f"{_head(plan, i)}: submitted to Ray")
            todo[submit(i, list(only) if only else None, folders)] = i
        _wait(ray, todo, plan, echo, "")
    finally:
        if started:
            ray.shutdown()


def _wait(ray, pending: dict, plan: RepeatPlan, echo: Callable[[str], None], what: str) -> None:
    """Wait for every task; report each as it ends; raise the first failure after all ended."""
    failures = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            i = pending.pop(ref)
            try:
                ray.get(ref)
                echo(f"{what}{_head(plan, i)}: finished")
            except Exception as exc:  # noqa: BLE001 - reported, then re-raised below
                echo(click.style(f"{what}{_head(plan, i)}: failed ({type(exc).__name__})", fg="red"))
                failures.append((i, exc))
    if failures:
        i, exc = failures[0]
        cause = getattr(exc, "cause", None)
        echo(click.style("run the same command again to resume the unfinished repeats", fg="yellow"))
        if isinstance(cause, UserError):
            err = type(cause)(f"repeat '{plan.repeats[i].label}': {cause}")
            raise err from None
        raise exc


# ---------------------------------------------------------------------------- aggregation
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: float | None) -> float | None:
    return v if v is None or math.isfinite(v) else None


def _stats(values: list) -> tuple[float | None, float | None, int]:
    """``(mean, sample std (ddof=1) or None below 2 values, n)`` of the numbers in ``values``."""
    nums = [float(v) for v in values if _is_number(v)]
    if not nums:
        return None, None, 0
    mean = _finite(statistics.fmean(nums))
    std = _finite(statistics.stdev(nums)) if len(nums) > 1 else None
    return mean, std, len(nums)


def _ordered_keys(dicts: Iterable[Any]) -> list:
    keys: list = []
    for d in dicts:
        if isinstance(d, dict):
            keys += [k for k in d if k not in keys]
    return keys


def aggregate_mapping(values: Sequence[dict | None]) -> dict:
    """Aggregate one mapping of metrics over repeats (``None`` = absent from that repeat).

    Returns, per numeric key ``k``: ``k`` (the mean over the repeats that have it) and ``k_std``
    (sample standard deviation, ddof=1; None with fewer than two values); nested mappings (e.g.
    ``rerank``) aggregated the same way; other values kept when every repeat agrees; then
    ``n`` (repeats holding the mapping) and ``per_seed: {k: [value per repeat, None if absent]}``.
    """
    out: dict = {}
    per: dict = {}
    for key in _ordered_keys(values):
        vals = [d.get(key) if isinstance(d, dict) else None for d in values]
        present = [v for v in vals if v is not None]
        if any(isinstance(v, dict) for v in present):
            out[key] = aggregate_mapping([v if isinstance(v, dict) else None for v in vals])
        elif present and all(_is_number(v) for v in present):
            mean, std, _ = _stats(vals)
            out[key], out[f"{key}_std"] = mean, std
            per[key] = vals
        elif present and all(v == present[0] for v in present):
            out[key] = present[0]
        else:
            per[key] = vals
    out["n"] = sum(isinstance(d, dict) for d in values)
    out["per_seed"] = per
    return out


def paired_differences(a: Sequence[dict | None], b: Sequence[dict | None]) -> dict:
    """Paired differences a - b per repeat of every numeric metric both mappings hold (nested
    mappings likewise). Returns ``{metric: {"mean", "se", "n", "per_seed"}}``: the mean difference,
    its standard error (sample std ddof=1 / sqrt(n); None when n < 2), the repeats where both
    have the metric, and the difference per repeat (None where either lacks it)."""
    out: dict = {}
    for key in _ordered_keys(a):
        va = [d.get(key) if isinstance(d, dict) else None for d in a]
        vb = [d.get(key) if isinstance(d, dict) else None for d in b]
        if any(isinstance(v, dict) for v in va) and any(isinstance(v, dict) for v in vb):
            sub = paired_differences([v if isinstance(v, dict) else None for v in va],
                                     [v if isinstance(v, dict) else None for v in vb])
            if sub:
                out[key] = sub
            continue
        diffs = [float(x) - float(y) if _is_number(x) and _is_number(y) else None for x, y in zip(va, vb)]
        mean, std, n = _stats(diffs)
        if n:
            out[key] = {"mean": mean, "se": None if std is None else std / math.sqrt(n), "n": n,
                        "per_seed": [_finite(d) if d is not None else None for d in diffs]}
    return out


def aggregate(runs: Sequence[dict | None], compare: Iterable[Sequence[str]] = ()) -> dict:
    """Aggregate the per-repeat ``metrics.json`` contents ``runs`` (in repeat order; None for a
    repeat without one). Returns ``{"models": {name: aggregate_mapping(...)}, "comparisons":
    {"a-b": paired_differences(...)}}`` plus ``chance`` when the runs carry one (the value when
    all agree, else aggregated like a model)."""
    entries = [(r or {}).get("models", {}) if isinstance(r, dict) else {} for r in runs]
    models = {name: aggregate_mapping([e.get(name) for e in entries]) for name in _ordered_keys(entries)}
    comparisons = {}
    for a, b in compare:
        comparisons[f"{a}-{b}"] = paired_differences([e.get(a) for e in entries], [e.get(b) for e in entries])
    out: dict = {"models": models, "comparisons": comparisons}
    chances = [r.get("chance") if isinstance(r, dict) else None for r in runs]
    present = [c for c in chances if c is not None]
    if present:
        if all(c == present[0] for c in present):
            out["chance"] = present[0]
        elif all(isinstance(c, dict) for c in present):
            out["chance"] = aggregate_mapping(chances)
        else:
            out["chance"] = aggregate_mapping([{"chance": c} if c is not None else None for c in chances])
    return out


def write_aggregate(plan: RepeatPlan, *, echo: Callable[[str], None] = click.echo) -> dict:
    """Read every repeat's metrics.json, write the aggregate to ``<parent>/metrics.json``
    (atomically) and return it: ``recipe``, ``seeds``, ``sweep``, ``repeats`` (folder, seed,
    swept values, whether it has metrics), then :func:`aggregate`'s keys."""
    runs = [io.read_json(plan.folder(r) / "metrics.json") for r in plan.repeats]
    desc = plan.describe()
    for entry, run in zip(desc["repeats"], runs):
        entry["metrics"] = run is not None
    agg = {"recipe": desc["recipe"], "seeds": desc["seeds"], "sweep": desc["sweep"],
           "repeats": desc["repeats"], **aggregate(runs, plan.compare)}
    path = io.write_json(plan.run_dir / "metrics.json", agg)
    if any(r is None for r in runs):
        missing = [r.label for r, run in zip(plan.repeats, runs) if run is None]
        echo(click.style(f"no metrics.json in {', '.join(missing)}: aggregated over the others",
                         fg="yellow"))
    echo(f"aggregate metrics written to {path}")
    return agg


# ---------------------------------------------------------------------------- printing
def _columns(models: dict) -> list[str]:
    cols = [c for c in SUMMARY_METRICS if any(c in m for m in models.values())]
    if cols:
        return cols
    first = next(iter(models.values()), {})
    return [k for k, v in first.items() if _is_number(v) and not k.endswith("_std") and k != "n"][:6]


def _fmt(v: float | None, metric: str, sign: bool = False) -> str:
    """A value for the tables: the summary metrics (fractions) as percent, others as they are."""
    if v is None:
        return "-"
    if metric in SUMMARY_METRICS:
        v = 100 * v
        return f"{v:+.2f}" if sign else f"{v:.2f}"
    return f"{v:+.4g}" if sign else f"{v:.4g}"


def summary_lines(agg: dict) -> list[str]:
    """The table printed after a repeated run: mean +- std per model and metric (percent), then
    the paired differences of the compared models (percentage points, mean +- SE, n)."""
    models = agg.get("models", {})
    if not models:
        return ["no metrics to aggregate (no evaluate stage ran)"]
    n = len(agg.get("repeats", [])) or max((m.get("n", 0) for m in models.values()), default=0)
    cols = _columns(models)
    width = max([len("model")] + [len(name) for name in models]) + 2
    lines = [f"{n} repeats: mean +- sample std (mAP, rank-k, mINP, prec@1 in %)",
             f"{'model':<{width}}" + "".join(f"{c:>18}" for c in cols)]
    for name, m in models.items():
        cells = []
        for c in cols:
            if c not in m:
                cells.append(f"{'-':>18}")
                continue
            std = m.get(f"{c}_std")
            cells.append(f"{_fmt(m[c], c) + ('' if std is None else ' +- ' + _fmt(std, c)):>18}")
        lines.append(f"{name:<{width}}" + "".join(cells))
    lines += comparison_lines(agg.get("comparisons", {}), cols)
    chance = agg.get("chance")
    if isinstance(chance, dict) and all(isinstance(v, (int, float)) for v in chance.values()):
        lines.append("chance (a random ranking): " + ", ".join(
            f"{k} {_fmt(v, k)}%" for k, v in chance.items()))
    elif chance is not None:
        lines.append(f"chance level: {json.dumps(chance, default=str)[:200]}")
    return lines


def comparison_lines(comparisons: dict, cols: Sequence[str] | None = None) -> list[str]:
    """Lines for paired differences: ``a - b: mAP +1.23 +- 0.40, ... (n=3)`` in percentage points
    (SE left out when n = 1)."""
    lines = []
    for pair, metrics in comparisons.items():
        leaves = [c for c, v in metrics.items() if isinstance(v, dict) and "mean" in v]
        use = [c for c in (cols or SUMMARY_METRICS) if c in leaves] or ([] if cols else leaves[:6])
        if not use:
            continue
        if not lines:
            lines.append("paired differences a - b (mean +- standard error; % metrics in points)")
        n = max(metrics[c]["n"] for c in use)
        parts = [f"{c} {_fmt(metrics[c]['mean'], c, sign=True)}"
                 + ("" if metrics[c]["se"] is None else f" +- {_fmt(metrics[c]['se'], c)}") for c in use]
        lines.append(f"  {pair.replace('-', ' - ', 1) if pair.count('-') == 1 else pair}: "
                     f"{', '.join(parts)} (n={n})")
    return lines


def single_run_comparison_lines(metrics: dict | None, compare: Iterable[Sequence[str]]) -> list[str]:
    """The differences a - b that a single run's ``metrics.json`` gives for ``compare:`` (n = 1,
    no standard error); returns the lines to print (none without metrics or comparisons)."""
    compare = list(compare)
    if not metrics or not compare:
        return []
    return comparison_lines(aggregate([metrics], compare)["comparisons"])


def describe_lines(plan: RepeatPlan, only: Sequence[str] | None = None) -> list[str]:
    """What ``--dry-run`` prints for repeats: each repeat, its folder and what each stage would do
    (run, resume, skip, or share from another repeat)."""
    lines = [f"recipe '{plan.repeats[0].recipe.name}' is valid for all {len(plan.repeats)} repeats; "
             f"parent folder: {plan.run_dir}"]
    seen: dict[tuple[str, str], str] = {}
    for i, rep in enumerate(plan.repeats):
        folder = plan.folder(rep)
        lines.append(f"{_head(plan, i)} -> {folder}")
        for step in runner.plan(rep.recipe, folder):
            key = (step.name, step.hash)
            if only and step.name not in only:
                continue
            if step.status == "done":
                what = "skip (done, same config)"
            elif step.status == "resume":
                what = "resume"
            elif key in seen:
                what = f"share from {seen[key]}"
            else:
                what = "run"
            seen.setdefault(key, rep.label)
            lines.append(f"  {step.name:<20} {step.type:<18} {what}")
    return lines
