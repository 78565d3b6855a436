"""Runs a recipe's stages in order in a run folder, with skip-if-done and provenance.

Run folder (``<run_dir>/<name>/`` unless given)::

    recipe.resolved.yaml     the recipe after base:, --set and ${ENV} resolution
    <stage>/                 one folder per stage: its outputs and .complete.json
    tensorboard/<stage>/     TensorBoard logs
    metrics.json             {"models": {NAME: {"mAP": .., "rank1": .., ...}}}

A stage whose ``.complete.json`` records the same config hash is skipped. A stage
folder left by an interrupted run of the same config is reused, so the stage resumes
from its checkpoints; one left by a different config is moved aside, never deleted.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click

from keras_reid import io, runlock
from keras_reid.recipe import Recipe
from keras_reid.registry import REGISTRY, Registry
from keras_reid.stages.base import COMPLETE_MARKER, StageContext, StageIncomplete

CONFIG_MARKER = ".config.json"


@dataclass
class StagePlan:
    name: str
    type: str
    hash: str
    status: str  # "done" (will be skipped), "resume", "run"


def default_run_dir(recipe: Recipe) -> Path:
    """``<recipe run_dir>/<recipe name>``."""
    return Path(recipe.model.run_dir) / recipe.name


def plan(recipe: Recipe, run_dir: Path) -> list[StagePlan]:
    """What ``run`` would do with each stage, without doing it."""
    out = []
    for name, spec in recipe.model.stages.items():
        h = recipe.stage_hash(name)
        marker = io.read_json(run_dir / name / COMPLETE_MARKER)
        started = io.read_json(run_dir / name / CONFIG_MARKER)
        if marker and marker.get("hash") == h:
            status = "done"
        elif started and started.get("hash") == h:
            status = "resume"
        else:
            status = "run"
        out.append(StagePlan(name, spec.type, h, status))
    return out


def run(recipe: Recipe, run_dir: str | Path | None = None, *, registry: Registry = REGISTRY,
        echo: Callable[[str], None] = click.echo, only: list[str] | None = None,
        shard: tuple[int, int] | None = None) -> dict:
    """Run every stage of ``recipe`` in ``run_dir``; returns ``{stage: summary}``.

    ``only`` restricts the run to the named stages (their inputs must be complete).
    ``shard=(i, N)`` makes shardable stages (augment) do only their i-th part; the run stops
    after the first stage left incomplete that way (``results["_incomplete"]`` says which).
    The process owns the run folder while it runs (:mod:`keras_reid.runlock`): a second run
    into it raises UserError naming this one; shards of one augment stage (``shard``) and
    non-chief workers of a multi-worker run share the folder and do not take the lock.
    """
    run_dir = Path(run_dir) if run_dir else default_run_dir(recipe)
    owns = shard is None and runlock.is_chief_process(recipe.model.strategy.type)
    with runlock.hold(run_dir) if owns else contextlib.nullcontext():
        return _run(recipe, run_dir, registry=registry, echo=echo, only=only, shard=shard)


def _run(recipe: Recipe, run_dir: Path, *, registry: Registry, echo: Callable[[str], None],
         only: list[str] | None, shard: tuple[int, int] | None) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    io.write_text(run_dir / "recipe.resolved.yaml", recipe.to_yaml())
    shared: dict = {"datasets": {}, "strategy": {}}
    results: dict = {}
    steps = plan(recipe, run_dir)
    echo(click.style(f"run '{recipe.name}' -> {run_dir}", bold=True))
    _preflight(recipe, steps, run_dir, registry, echo, shared, only, shard)
    for i, step in enumerate(steps, 1):
        if only and step.name not in only:
            continue
        head = f"[{i}/{len(steps)}] {step.name} ({step.type})"
        stage_dir = run_dir / step.name
        if step.status == "done":
            marker = io.read_json(stage_dir / COMPLETE_MARKER)
            echo(f"{head}: done before with the same config, skipped")
            results[step.name] = marker.get("summary", {})
            continue
        if step.status == "run" and stage_dir.exists() and any(stage_dir.iterdir()):
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            aside = run_dir / f"{step.name}.stale-{stamp}"
            shutil.move(str(stage_dir), str(aside))
            echo(f"{head}: config changed; previous outputs moved to {aside.name}/")
        if step.status == "resume":
            echo(f"{head}: resuming an interrupted run")
        else:
            echo(f"{head}: starting")
        stage_dir.mkdir(parents=True, exist_ok=True)
        io.write_json(stage_dir / CONFIG_MARKER, {"hash": step.hash, "stage": step.name,
                                                  "config": recipe.data["stages"][step.name]})
        context = _context(recipe, step.name, run_dir, registry, echo, shared, shard)
        stage = registry.get("stage", step.type).create(recipe.stage_configs[step.name])
        t0 = time.time()
        try:
            summary = stage.run(context) or {}
        except StageIncomplete as exc:
            echo(click.style(f"{head}: not complete: {exc}", fg="yellow"))
            results["_incomplete"] = {"stage": step.name, "reason": str(exc)}
            return results
        elapsed = time.time() - t0
        if context.is_chief:
            io.write_json(stage_dir / COMPLETE_MARKER, {
                "hash": step.hash, "stage": step.name, "type": step.type,
                "finished": _dt.datetime.now().isoformat(timespec="seconds"),
                "seconds": round(elapsed, 2), "summary": summary, "pid": os.getpid(),
            })
        echo(f"{head}: finished in {_fmt_seconds(elapsed)}")
        results[step.name] = summary
    return results


def _preflight(recipe: Recipe, steps: list[StagePlan], run_dir: Path, registry: Registry,
               echo: Callable[[str], None], shared: dict, only: list[str] | None,
               shard: tuple[int, int] | None = None) -> None:
    """Load the datasets of the stages that will run before any of them starts, so a missing
    or malformed dataset root fails in seconds, not after an hour of training; then run each
    such stage's ``preflight(config, context)`` check (camera ids, shared identities, ...)."""
    todo = [s for s in steps if s.status != "done" and (not only or s.name in only)]
    names = []
    for step in todo:
        names += [n for n in recipe.references(step.name, "datasets") if n not in names]
    if names:
        context = _context(recipe, todo[0].name, run_dir, registry, echo, shared, shard)
    for name in names:
        splits = context.dataset(name)
        sizes = ", ".join(f"{split} {len(recs):,}" for split, recs in splits.splits.items())
        echo(f"dataset '{name}': {sizes} images")
    for step in todo:
        check = getattr(registry.get("stage", step.type).obj, "preflight", None)
        if check is not None:
            check(recipe.stage_configs[step.name],
                  _context(recipe, step.name, run_dir, registry, echo, shared, shard))


def _context(recipe: Recipe, stage: str, run_dir: Path, registry: Registry,
             echo: Callable[[str], None], shared: dict, shard: tuple[int, int] | None) -> StageContext:
    """A StageContext for ``stage`` sharing the run's loaded datasets and strategy."""
    return StageContext(recipe=recipe, stage_name=stage, run_dir=run_dir, registry=registry,
                        echo=echo, shard=shard, _datasets=shared["datasets"],
                        _strategy_holder=shared["strategy"])


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"
