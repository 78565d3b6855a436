"""keras-reid filter: score image files with a semantic filter from the shell."""
from __future__ import annotations

import json

import click
import yaml

from keras_reid.cli.app import handle_user_errors, main
from keras_reid.data.images import read_image
from keras_reid.errors import RecipeError
from keras_reid.registry import REGISTRY


@main.command(name="filter")
@click.argument("name")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--set", "params", multiple=True, metavar="KEY=VALUE",
              help="a filter parameter, e.g. --set threshold=0.5 (YAML-typed); repeatable")
@click.option("--json", "as_json", is_flag=True, help='print [{"path": .., "score": ..}, ...]')
@handle_user_errors
def filter_command(name: str, images: tuple[str, ...], params: tuple[str, ...], as_json: bool) -> None:
    """Score IMAGE... with the semantic filter NAME (e.g. face): one score in [0, 1] per image.

    \b
    keras-reid filter face photo.jpg crops/*.jpg
    keras-reid filter face --set model=short_range --json photo.jpg
    """
    spec: dict = {"type": name}
    for text in params:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set {text}: expected KEY=VALUE, e.g. --set threshold=0.5")
        spec[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    flt = REGISTRY.create("filter", spec)
    rows = []
    try:
        for path in images:
            image = read_image(path, None)
            rows.append({"path": path, "score": round(float(flt(image[None])[0]), 4)})
    finally:
        close = getattr(flt, "close", None)
        if callable(close):
            close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        width = max(len(r["path"]) for r in rows)
        for r in rows:
            click.echo(f"{r['path']:<{width}}  {r['score']:.4f}")
