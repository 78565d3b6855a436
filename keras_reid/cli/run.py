"""keras-reid run / validate."""
from __future__ import annotations

import os
from pathlib import Path

import click

from keras_reid import io, repeats, runlock, runner
from keras_reid.cli.app import handle_user_errors, main
from keras_reid.errors import RecipeError
from keras_reid.recipe import load_recipe
from keras_reid.report import write_report
from keras_reid.run_summary import closing_lines

_SET_HELP = ("override a recipe value, e.g. --set stages.train.epochs=2 (values are YAML-typed: "
             "2 is an int, [64,32] a list, null None); repeatable")


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="this run's folder itself (default: <runs_dir>/<name> from the recipe, i.e. "
                   "runs/<name>; the recipe's runs_dir: is the folder that holds run folders); "
                   "with --seeds/--sweep the folder that holds the repeats")
@click.option("--dry-run", is_flag=True, help="validate and show which stages would run, then stop")
@click.option("--stage", "only", multiple=True, metavar="NAME",
              help="run only this stage (repeatable); earlier stages must be complete")
@click.option("--shard", default=None, metavar="I/N",
              help="do only part I of N (0-based) of the augment stages, e.g. --shard 0/4 on one "
                   "machine and 1/4 on another over a shared run folder; the run continues past "
                   "augment once every part is done")
@click.option("--seeds", default=None, metavar="S1,S2,...",
              help="repeat the run once per seed (the recipe's seed replaced), each in "
                   "<run folder>/seed-<s>/, then write the aggregate metrics.json (mean, std, "
                   "per-seed values, paired differences of the recipe's compare: pairs) there")
@click.option("--sweep", "sweeps", multiple=True, metavar="KEY=V1,V2,...",
              help="repeat the run once per value of a recipe key (YAML-typed like --set), e.g. "
                   "--sweep datasets.lima.test_session=1,2,3,4; repeatable; with --seeds every "
                   "combination, in <run folder>/test_session-1/seed-0/")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="how repeats run: local = one after the other; ray = as Ray tasks (pip install "
                   "'keras-reid[ray]'; a cluster when RAY_ADDRESS is set)")
@click.option("--ray-cpus", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="CPUs Ray reserves per repeat (--engine ray)")
@click.option("--ray-gpus", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="GPUs Ray reserves per repeat (--engine ray)")
@handle_user_errors
def run(recipe: str, overrides: tuple[str, ...], run_dir: str | None, dry_run: bool,
        only: tuple[str, ...], shard: str | None, seeds: str | None, sweeps: tuple[str, ...],
        engine: str, ray_cpus: float, ray_gpus: float) -> None:
    """Run RECIPE: every stage in order, results in a run folder and TensorBoard.

    Completed stages with an unchanged config are skipped; an interrupted stage resumes
    from its last checkpoint. Open the results with: tensorboard --logdir runs

    \b
    Repeated runs (--seeds 0,1,2 and/or --sweep KEY=V1,V2): each repeat is an ordinary run in
    its own folder (runs/<name>/seed-0/, ...); rerunning the command skips complete repeats and
    resumes the unfinished one; stages whose config does not change between repeats run once.
    tensorboard --logdir runs/<name> shows the repeats side by side.
    """

    if seeds is not None or sweeps:
        return _run_repeats(recipe, overrides, run_dir, dry_run, only, shard, seeds, sweeps,
                            engine, ray_cpus, ray_gpus)
    if engine != "local":
        raise RecipeError(f"--engine {engine} runs repeats; add --seeds and/or --sweep")
    rec = load_recipe(recipe, overrides)
    part = parse_shard(shard) if shard else None
    target = Path(run_dir) if run_dir else runner.default_run_dir(rec)
    _check_stages(rec, only)
    repeats.check_single_run_folder(target)
    if dry_run:
        return _dry_run(rec, target, only)
    results = runner.run(rec, target, only=list(only) or None, shard=part)
    if "_incomplete" in results:
        click.echo(click.style(f"stopped after stage '{results['_incomplete']['stage']}' (shard "
                               f"{shard} done); the run folder is {target}", fg="yellow", bold=True))
        return
    if not runlock.is_chief_process(rec.model.strategy.type):
        click.echo(f"done: this worker's part of the run; the chief wrote the results to {target}")
        return
    _print_results(rec, target, results)


def _dry_run(rec, target: Path, only: tuple[str, ...]) -> None:
    """``run --dry-run``: check the dataset folders, then list what each stage would do."""

    check_dataset_roots(rec)
    click.echo(f"recipe '{rec.name}' is valid; run folder: {target}")
    steps = runner.plan(rec, target)
    if only:   # what the run would refuse (a stage read that is not done), said now
        runner.check_only(rec, steps, list(only))
    for step in steps:
        if only and step.name not in only:
            continue
        what = {"done": "skip (done, same config)", "resume": "resume", "run": "run"}[step.status]
        click.echo(f"  {step.name:<20} {step.type:<18} {what}")


def _print_results(rec, target: Path, results: dict) -> None:
    """The closing lines of a finished single run and its named comparisons."""

    click.echo(click.style(f"done: {target}", fg="green", bold=True))
    for line in closing_lines(rec, target, results):
        click.echo(line)
    for line in repeats.single_run_comparison_lines(
            io.read_json(target / "metrics.json"), rec.model.compare):
        click.echo(line)


def _run_repeats(recipe: str, overrides: tuple[str, ...], run_dir: str | None, dry_run: bool,
                 only: tuple[str, ...], shard: str | None, seeds: str | None,
                 sweeps: tuple[str, ...], engine: str, ray_cpus: float, ray_gpus: float) -> None:
    """``run --seeds/--sweep``: expand and validate every repeat, run them, print the aggregate."""

    if shard:
        raise RecipeError("--shard splits the augment stage of one run; it cannot be combined with "
                          "--seeds/--sweep; shard one repeat as a single run: --set seed=S --run-dir "
                          "runs/<name>/seed-S --shard I/N")
    plan = repeats.expand(recipe, overrides, seeds=repeats.parse_seeds(seeds) if seeds else None,
                          sweeps=sweeps, run_dir=run_dir)
    _check_stages(plan.repeats[0].recipe, only)
    if dry_run:
        for line in repeats.describe_lines(plan, only):
            click.echo(line)
        return
    agg = repeats.run_repeats(plan, engine=engine, only=list(only) or None,
                              ray_cpus=ray_cpus, ray_gpus=ray_gpus)
    for line in repeats.summary_lines(agg):
        click.echo(line)
    click.echo(click.style(f"done: {plan.run_dir} ({len(plan.repeats)} repeats)", fg="green", bold=True))
    click.echo(f"metrics: {plan.run_dir / 'metrics.json'}")
    click.echo(f"TensorBoard (every repeat side by side): tensorboard --logdir {plan.run_dir}")
    rec = plan.repeats[0].recipe
    if agg.get("models") and any(spec.type == "report" for spec in rec.model.stages.values()):
        write_report(plan.run_dir, echo=click.echo)   # the recipe ends with a report: the repeats' one
    else:
        click.echo(f"report (every repeat on one page): keras-reid report {plan.run_dir}")


def _check_stages(rec, only: tuple[str, ...]) -> None:
    for name in only:
        if name not in rec.model.stages:
            raise RecipeError(f"--stage {name}: no such stage; stages: {', '.join(rec.model.stages)}")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with 0 <= i < N; raises a UserError (exit 2) otherwise."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise RecipeError(f"--shard {text}: expected I/N with integers, e.g. --shard 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise RecipeError(f"--shard {text}: expected 0 <= I < N, e.g. --shard 0/{max(n, 1)}")
    return i, n


def check_dataset_roots(rec) -> None:
    """Raise RecipeError (exit 2) naming the first dataset whose ``root`` folder does not exist
    and that its plugin would not create (``create_if_missing``), with the fix."""
    for name, cfg in rec.dataset_configs.items():
        root = getattr(cfg, "root", None)
        if not isinstance(root, str) or getattr(cfg, "create_if_missing", False):
            continue
        if not Path(os.path.expanduser(root)).exists():
            raise RecipeError(f"datasets.{name}.root: {root} does not exist; put the dataset there, "
                              "point KERAS_REID_DATA (or the root) to the folder that holds it, or "
                              "pass --no-data to check the recipe alone")


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--print", "show", is_flag=True, help="print the resolved recipe")
@click.option("--no-data", is_flag=True, help="do not check that the dataset folders exist")
@handle_user_errors
def validate(recipe: str, overrides: tuple[str, ...], show: bool, no_data: bool) -> None:
    """Check RECIPE without running it: syntax, base: files, ${ENV} values, every
    component's parameters against its plugin's schema, and that every dataset folder it
    reads exists (synthetic datasets are written on first use). Exit code 2 when invalid."""
    rec = load_recipe(recipe, overrides)
    if not no_data:
        check_dataset_roots(rec)
    if show:
        click.echo(rec.to_yaml(), nl=False)
    stages = ", ".join(f"{n} ({s.type})" for n, s in rec.model.stages.items())
    click.echo(f"{recipe}: valid recipe '{rec.name}': {len(rec.model.stages)} stages: {stages}")
