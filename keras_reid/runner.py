"""Runs a recipe's stages in order in a run folder, with skip-if-done and provenance.

Run folder (``<runs_dir>/<name>/`` unless given)::

    recipe.resolved.yaml     the recipe after base:, --set and ${ENV} resolution
    <stage>/                 one folder per stage: its outputs and .complete.json
    tensorboard/<stage>/     TensorBoard logs
    metrics.json             {"models": {NAME: {"mAP": .., "rank1": .., ...}}}

A stage's identity is its config hash (:meth:`keras_reid.recipe.Recipe.stage_hash`) plus what it
consumed: the completion ids of the stages it reads (their ``.complete.json`` records a fresh
``completion_id`` each time they complete, and each marker records the ``inputs`` it read). A
stage is skipped only when its marker has the same hash, every stage it reads is done, and the
inputs it recorded are theirs; so any change upstream (config, or a rerun) invalidates
everything downstream. A stage folder left by an interrupted run of the same identity is reused,
so the stage resumes from its checkpoints; one left by another identity is moved aside, never
deleted. ``metrics.json`` is rebuilt from what the done stages recorded, so it only ever holds
the models of the current evaluation.

Markers written before completion ids existed (no ``inputs``) count as done when their hash
matches, every stage they read is done, and those finished no later than they did.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import shutil
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from keras_reid import io, runlock, tb_events
from keras_reid.distribute import barrier, is_chief, make_strategy, worker_index
from keras_reid.errors import RecipeError, UserError
from keras_reid.recipe import Recipe, walk_fields
from keras_reid.registry import REGISTRY, Registry
from keras_reid.stages.base import COMPLETE_MARKER, RECORDED_METRICS, StageContext, StageIncomplete

CONFIG_MARKER = ".config.json"


@dataclass
class StagePlan:
    name: str
    type: str
    hash: str
    status: str  # "done" (will be skipped), "resume", "run"
    inputs: dict | None = None
    """``{stage read: its completion id}`` when every stage this one reads is done, else None."""
    why: str = ""
    """Why a stage that has outputs is not done: "config changed", "input changed", ..."""


def default_run_dir(recipe: Recipe) -> Path:
    """The run folder when ``--run-dir`` does not name one: ``<recipe runs_dir>/<recipe name>``."""
    return Path(recipe.model.runs_dir) / recipe.name


def completion_id(marker: dict) -> str:
    """The id of one completion of a stage (what a stage reading it records as its input);
    a marker written before completion ids existed is identified by its hash and finish time."""
    return marker.get("completion_id") or f"{marker.get('hash')}@{marker.get('finished')}"


def _consumed(marker: dict, inputs: dict, upstream: list[dict]) -> bool:
    """Did the completion ``marker`` read exactly ``inputs``? (Old markers: did everything it
    reads finish no later than it?)"""
    if "inputs" in marker:
        return marker["inputs"] == inputs
    return all(str(u.get("finished", "")) <= str(marker.get("finished", "")) for u in upstream)


def plan(recipe: Recipe, run_dir: Path) -> list[StagePlan]:
    """What ``run`` would do with each stage, without doing it (a stage reading one that is not
    done will run: its input is not there yet)."""
    out = []
    done: dict[str, dict] = {}
    for name, spec in recipe.model.stages.items():
        h = recipe.stage_hash(name)
        reads = recipe.references(name, "stages")
        ready = all(r in done for r in reads)
        inputs = {r: completion_id(done[r]) for r in reads} if ready else None
        marker = io.read_json(run_dir / name / COMPLETE_MARKER)
        started = io.read_json(run_dir / name / CONFIG_MARKER)
        why = ""
        if ready and marker and marker.get("hash") == h and _consumed(marker, inputs,
                                                                      [done[r] for r in reads]):
            status = "done"
            done[name] = marker
        elif ready and started and started.get("hash") == h and started.get("inputs", inputs) == inputs:
            status = "resume"
        else:
            status = "run"
            last = marker or started
            if last:
                changed = [r for r in reads if r not in done]
                why = ("config changed" if last.get("hash") != h else
                       f"stage '{changed[0]}' it reads must run first" if changed else
                       "input changed (a stage it reads ran again)")
        out.append(StagePlan(name, spec.type, h, status, inputs, why))
    return out


def check_only(recipe: Recipe, steps: list[StagePlan], only: list[str]) -> None:
    """``--stage`` runs only the stages named: every stage they read must be done with its current
    identity, else one line naming what to run first (never the old outputs under a new config)."""
    status = {s.name: s for s in steps}
    for name in [n for n in recipe.model.stages if n in only]:
        direct = [r for r in recipe.references(name, "stages")
                  if r not in only and status[r].status != "done"]
        if not direct:
            continue
        missing = [n for n in recipe.upstream(name) if n not in only and status[n].status != "done"]
        first = direct[0]
        step = status[first]
        why = ("whose interrupted run has not finished" if step.status == "resume" else
               "which has not completed" if not step.why else
               "whose config changed since it ran" if step.why == "config changed" else
               "whose inputs changed since it ran")
        flags = " ".join(f"--stage {n}" for n in recipe.model.stages if n in missing or n in only)
        raise RecipeError(f"stage '{name}' reads stage '{first}', {why}: its outputs are not "
                          f"those of this recipe; run it first: keras-reid run "
                          f"{recipe.source or '<recipe>'} {flags} (with the same --set options), "
                          "or run without --stage")


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
    shared: dict = {"datasets": {}, "strategy": {}}
    if recipe.model.strategy.type != "multi_worker":
        owns = shard is None
        with runlock.hold(run_dir) if owns else contextlib.nullcontext():
            return _run(recipe, run_dir, registry=registry, echo=echo, only=only, shard=shard,
                        shared=shared)
    # multi-worker: the strategy first, before any other TensorFlow op (collectives are
    # configured when the runtime starts); the chief owns the folder, the others write nothing
    import tensorflow as tf  # deferred: TensorFlow, only multi-worker runs need it here

    strategy = shared["strategy"]["strategy"] = make_strategy(recipe.model.strategy)
    chief = is_chief(strategy)
    if not chief:
        worker, plain_echo = worker_index(strategy), echo
        echo = lambda line: plain_echo(f"worker {worker}: {line}")   # noqa: E731
    try:
        with runlock.hold(run_dir) if chief and shard is None else contextlib.nullcontext():
            return _run(recipe, run_dir, registry=registry, echo=echo, only=only, shard=shard,
                        shared=shared)
    except (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.InternalError,
            tf.errors.DeadlineExceededError, tf.errors.AbortedError) as exc:
        text = " ".join(str(getattr(exc, "message", exc)).split())
        reason = ("a worker stopped sending heartbeats" if "unhealthy" in text or "aborted" in text
                  else re.sub(r"\{\{[^}]*\}\}\s*", "", text)[:120])
        raise UserError(f"the multi-worker run lost a worker ({type(exc).__name__}: {reason}); "
                        "start every worker again with the same command: it resumes from the "
                        "last checkpoint") from None


@dataclass
class _Workers:
    """This process's part in a run: the chief (always, except on the other workers of a
    multi-worker run) writes the run folder; :meth:`sync` waits for every worker at the points
    the multi-worker protocol needs (a no-op in a one-process run)."""

    strategy: Any = None     # set for multi-worker runs only

    @property
    def chief(self) -> bool:
        return self.strategy is None or is_chief(self.strategy)

    def sync(self) -> None:
        if self.strategy is not None:
            barrier(self.strategy)


def _run(recipe: Recipe, run_dir: Path, *, registry: Registry, echo: Callable[[str], None],
         only: list[str] | None, shard: tuple[int, int] | None, shared: dict) -> dict:
    workers = _Workers(shared["strategy"].get("strategy"))
    steps = plan(recipe, run_dir)
    if only:
        check_only(recipe, steps, only)
    if workers.chief:
        _write_run_files(recipe, run_dir, registry, steps)
    echo(click.style(f"run '{recipe.name}' -> {run_dir}", bold=True))
    if workers.chief:      # the chief writes missing synthetic data; the others read it afterwards
        _preflight(recipe, steps, run_dir, registry, echo, shared, only, shard)
        workers.sync()
    else:
        workers.sync()
        _preflight(recipe, steps, run_dir, registry, echo, shared, only, shard)
    results: dict = {}
    for i, name in enumerate([s.name for s in steps], 1):
        if only and name not in only:
            continue
        step = next(s for s in plan(recipe, run_dir) if s.name == name)  # upstream may just have run
        workers.sync()     # every worker has planned the stage before the chief touches its folder
        head = f"[{i}/{len(steps)}] {step.name} ({step.type})"
        if step.status == "done":
            marker = io.read_json(run_dir / step.name / COMPLETE_MARKER)
            echo(f"{head}: done before with the same config and inputs, skipped")
            results[step.name] = marker.get("summary", {})
            continue
        try:
            results[step.name] = _run_stage(recipe, run_dir, step, head, workers, registry, echo,
                                            shared, shard)
        except StageIncomplete as exc:
            echo(click.style(f"{head}: not complete: {exc}", fg="yellow"))
            results["_incomplete"] = {"stage": step.name, "reason": str(exc)}
            return results
    return results


def _write_run_files(recipe: Recipe, run_dir: Path, registry: Registry, steps: list) -> None:
    """The resolved recipe (file and TensorBoard text) and the run's metrics.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    io.write_text(run_dir / "recipe.resolved.yaml", recipe.to_yaml())
    tb_events.write_text(run_dir / "tensorboard" / "recipe", "recipe/resolved",
                         textwrap.indent(recipe.to_yaml(), "    "))   # TensorBoard's Text tab
    write_metrics(recipe, run_dir, registry, steps)


def _run_stage(recipe: Recipe, run_dir: Path, step, head: str, workers: _Workers, registry: Registry,
               echo: Callable[[str], None], shared: dict, shard: tuple[int, int] | None) -> dict:
    """Run one stage that is not done (or, on a worker that takes no part, wait for the chief
    to run it); returns its summary. Raises StageIncomplete from the stage."""
    stage_dir = run_dir / step.name
    if workers.chief and step.status == "run" and stage_dir.exists() and any(stage_dir.iterdir()):
        _move_aside(run_dir, step, head, echo)
    entry = registry.get("stage", step.type)
    takes_part = workers.chief or getattr(entry.obj, "distributed", False)
    echo(f"{head}: " + ("the chief runs it; waiting" if not takes_part else
                        "resuming an interrupted run" if step.status == "resume" else "starting"))
    if workers.chief:
        stage_dir.mkdir(parents=True, exist_ok=True)
        io.write_json(stage_dir / CONFIG_MARKER, {"hash": step.hash, "stage": step.name,
                                                  "inputs": step.inputs,
                                                  "config": recipe.data["stages"][step.name]})
    workers.sync()     # the chief has set the stage's folder up (stale outputs moved aside)
    if not takes_part:
        workers.sync()  # until the chief has finished it and written its marker
        return (io.read_json(stage_dir / COMPLETE_MARKER) or {}).get("summary", {})
    context = _context(recipe, step.name, run_dir, registry, echo, shared, shard)
    t0 = time.time()
    summary = entry.create(recipe.stage_configs[step.name]).run(context) or {}
    elapsed = time.time() - t0
    if workers.chief:
        io.write_json(stage_dir / COMPLETE_MARKER, {
            "hash": step.hash, "stage": step.name, "type": step.type,
            "completion_id": uuid.uuid4().hex, "inputs": step.inputs,
            "finished": _dt.datetime.now().isoformat(timespec="seconds"),
            "seconds": round(elapsed, 2), "summary": summary, "pid": os.getpid(),
        })
        write_metrics(recipe, run_dir, registry)
    workers.sync()      # the chief's marker is written: the waiting workers go on together
    echo(f"{head}: finished in {_fmt_seconds(elapsed)}")
    return summary


def _move_aside(run_dir: Path, step, head: str, echo: Callable[[str], None]) -> None:
    """A stage that must run again keeps its previous outputs (and curves) in
    ``<stage>.stale-<time>/`` rather than losing them."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    aside = run_dir / f"{step.name}.stale-{stamp}"
    shutil.move(str(run_dir / step.name), str(aside))
    if (run_dir / "tensorboard" / step.name).is_dir():   # its curves go with it
        shutil.move(str(run_dir / "tensorboard" / step.name), str(aside / "tensorboard"))
    echo(f"{head}: {step.why or 'config changed'}; previous outputs moved to {aside.name}/")


def recorded_metrics(recipe: Recipe, stage: str, stage_dir: Path, source: dict,
                     registry: Registry = REGISTRY) -> dict | None:
    """What the completed ``stage`` (its folder ``stage_dir``) recorded in metrics.json:
    ``{"models", "extra"?, "chance"?}`` from the folder's ``.recorded_metrics.json``, or else (a
    folder written before that file existed) the entries of the models its stage type reports
    taken from the metrics.json contents ``source``; None when it recorded nothing."""
    recorded = io.read_json(stage_dir / RECORDED_METRICS)
    if recorded is not None:
        return recorded
    fn = getattr(registry.get("stage", recipe.stage_type(stage)).obj, "reported_models", None)
    if fn is None or not source:
        return None
    models = source.get("models", {})
    recorded = {"models": {n: models[n] for n in fn(recipe.stage_configs[stage]) if n in models}}
    if stage in source.get("stages", {}):
        recorded["extra"] = source["stages"][stage]
    return recorded


def write_metrics(recipe: Recipe, run_dir: Path, registry: Registry = REGISTRY,
                  steps: list[StagePlan] | None = None) -> None:
    """Rewrite ``<run>/metrics.json`` from what the stages that are done (same identity) recorded,
    so it never holds a model of an earlier configuration or one no longer evaluated. Written
    only when that changes it (a read-only, complete run folder is left alone)."""
    path = run_dir / "metrics.json"
    old = io.read_json(path, default=None)
    new: dict = {"recipe": recipe.name, "models": {}}
    for step in steps if steps is not None else plan(recipe, run_dir):
        if step.status != "done":
            continue
        got = recorded_metrics(recipe, step.name, run_dir / step.name, old or {}, registry)
        if not got:
            continue
        new["models"].update(got.get("models", {}))
        if got.get("extra"):
            new.setdefault("stages", {})[step.name] = got["extra"]
        if got.get("chance"):
            new["chance"] = got["chance"]
    if old is None and not new["models"] and len(new) == 2:
        return
    if new != old:
        io.write_json(path, new)


def _preflight(recipe: Recipe, steps: list[StagePlan], run_dir: Path, registry: Registry,
               echo: Callable[[str], None], shared: dict, only: list[str] | None,
               shard: tuple[int, int] | None = None) -> None:
    """Check the model files (MediaPipe) the stages that will run need, load their datasets
    before any of them starts, so a missing model or a missing or malformed dataset root fails
    in seconds, not after an hour of training; then run each
    such stage's ``preflight(config, context)`` check (camera ids, shared identities, ...)."""
    todo = [s for s in steps if s.status != "done" and (not only or s.name in only)]
    for step in todo:
        check_model_files(recipe, step.name, registry)
    names = []
    for step in todo:
        names += [n for n in recipe.references(step.name, "datasets") if n not in names]
    if names:
        context = _context(recipe, todo[0].name, run_dir, registry, echo, shared, shard)
    for name in names:
        splits = context.dataset(name)
        sizes = ", ".join(f"{split} {len(recs):,}" for split, recs in splits.splits.items())
        ignored = (f"; {splits.num_ignored:,} files ignored: their names are not like the "
                   "dataset's layout (`keras-reid data info ROOT`)" if splits.num_ignored else "")
        echo(f"dataset '{name}': {sizes} images{ignored}")
    for step in todo:
        check = getattr(registry.get("stage", step.type).obj, "preflight", None)
        if check is not None:
            check(recipe.stage_configs[step.name],
                  _context(recipe, step.name, run_dir, registry, echo, shared, shard))


def check_model_files(recipe: Recipe, stage: str, registry: Registry) -> None:
    """Raise the component's ModelFileError (naming ``keras-reid models fetch``) when a component
    of ``stage`` needs a model file (it has ``model_file()``: MediaPipe filters, maskers, pose
    estimators) that is missing or corrupt, so that it fails before the stages before it run."""
    for _, extra, spec in walk_fields(recipe.stage_configs[stage]):
        kind = extra.get("plugin_kind")
        if not kind or not isinstance(spec, dict):
            continue
        component = registry.create(kind, spec)
        if callable(getattr(component, "model_file", None)):
            try:
                component.model_file()
            except UserError as exc:
                raise type(exc)(f"stage '{stage}' ({kind} '{spec.get('type')}'): {exc}") from None


def _context(recipe: Recipe, stage: str, run_dir: Path, registry: Registry,
             echo: Callable[[str], None], shared: dict, shard: tuple[int, int] | None) -> StageContext:
    """A StageContext for ``stage`` sharing the run's loaded datasets and strategy."""
    return StageContext(recipe=recipe, stage_name=stage, run_dir=run_dir, registry=registry,
                        echo=echo, shard=shard, _datasets=shared["datasets"],
                        _strategy_holder=shared["strategy"])


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"
