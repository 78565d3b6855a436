"""keras-reid run / validate."""
from __future__ import annotations

from pathlib import Path

import click

from keras_reid.cli import handle_user_errors, main

_SET_HELP = ("override a recipe value, e.g. --set stages.train.epochs=2 (values are YAML-typed: "
             "2 is an int, [64,32] a list, null None); repeatable")


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="run folder (default: <recipe run_dir>/<recipe name>, i.e. runs/<name>)")
@click.option("--dry-run", is_flag=True, help="validate and show which stages would run, then stop")
@click.option("--stage", "only", multiple=True, metavar="NAME",
              help="run only this stage (repeatable); earlier stages must be complete")
@click.option("--shard", default=None, metavar="I/N",
              help="do only part I of N (0-based) of the augment stages, e.g. --shard 0/4 on one "
                   "machine and 1/4 on another over a shared run folder; the run continues past "
                   "augment once every part is done")
@handle_user_errors
def run(recipe: str, overrides: tuple[str, ...], run_dir: str | None, dry_run: bool,
        only: tuple[str, ...], shard: str | None) -> None:
    """Run RECIPE: every stage in order, results in a run folder and TensorBoard.

    Completed stages with an unchanged config are skipped; an interrupted stage resumes
    from its last checkpoint. Open the results with: tensorboard --logdir runs
    """
    from keras_reid import pipeline
    from keras_reid.errors import RecipeError
    from keras_reid.recipe import load_recipe

    rec = load_recipe(recipe, overrides)
    part = parse_shard(shard) if shard else None
    target = Path(run_dir) if run_dir else pipeline.default_run_dir(rec)
    for name in only:
        if name not in rec.model.stages:
            raise RecipeError(f"--stage {name}: no such stage; stages: {', '.join(rec.model.stages)}")
    if dry_run:
        click.echo(f"recipe '{rec.name}' is valid; run folder: {target}")
        for step in pipeline.plan(rec, target):
            if only and step.name not in only:
                continue
            what = {"done": "skip (done, same config)", "resume": "resume", "run": "run"}[step.status]
            click.echo(f"  {step.name:<20} {step.type:<18} {what}")
        return
    results = pipeline.run(rec, target, only=list(only) or None, shard=part)
    if "_incomplete" in results:
        click.echo(click.style(f"stopped after stage '{results['_incomplete']['stage']}' (shard "
                               f"{shard} done); the run folder is {target}", fg="yellow", bold=True))
        return
    metrics = target / "metrics.json"
    click.echo(click.style(f"done: {target}", fg="green", bold=True))
    if metrics.exists():
        click.echo(f"metrics: {metrics}")
    click.echo(f"TensorBoard: tensorboard --logdir {target / 'tensorboard'}")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with 0 <= i < N; raises a UserError (exit 2) otherwise."""
    from keras_reid.errors import RecipeError

    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise RecipeError(f"--shard {text}: expected I/N with integers, e.g. --shard 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise RecipeError(f"--shard {text}: expected 0 <= I < N, e.g. --shard 0/{max(n, 1)}")
    return i, n


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=_SET_HELP)
@click.option("--print", "show", is_flag=True, help="print the resolved recipe")
@handle_user_errors
def validate(recipe: str, overrides: tuple[str, ...], show: bool) -> None:
    """Check RECIPE without running it: syntax, base: files, ${ENV} values, every
    component's parameters against its plugin's schema. Exit code 2 when invalid."""
    from keras_reid.recipe import load_recipe

    rec = load_recipe(recipe, overrides)
    if show:
        click.echo(rec.to_yaml(), nl=False)
    stages = ", ".join(f"{n} ({s.type})" for n, s in rec.model.stages.items())
    click.echo(f"{recipe}: valid recipe '{rec.name}': {len(rec.model.stages)} stages: {stages}")
