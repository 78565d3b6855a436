"""keras-reid plugins: list registered components, or show one component's parameters."""
from __future__ import annotations

import json
import types
import typing
from typing import Any

import click
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from keras_reid.cli.app import handle_user_errors, main
from keras_reid.registry import KINDS, REGISTRY, Entry


@main.command()
@click.argument("kind", required=False, type=click.Choice(KINDS))
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@handle_user_errors
def plugins(kind: str | None, name: str | None, as_json: bool) -> None:
    """List the registered components (optionally only those of KIND): name, kind,
    description and the package that provides it, plus plugin modules that failed to
    import and why. With KIND NAME (e.g. `keras-reid plugins backbone resnet50`): that
    component's description and its recipe parameters with types, defaults and meaning.
    Third-party packages add components through the 'keras_reid.plugins' entry-point
    group."""
    if name is not None:   # an unknown name is a RegistryError: one line with a did-you-mean, exit 2
        _show_component(REGISTRY.get(kind, name), as_json)
        return
    entries = REGISTRY.entries(kind)
    failures = REGISTRY.failures
    if as_json:
        click.echo(json.dumps({
            "plugins": [{"kind": e.kind, "name": e.name, "description": e.description,
                         "provider": e.provider, "module": e.module} for e in entries],
            "failed": [{"module": f.module, "provider": f.provider, "reason": f.reason}
                       for f in failures],
        }, indent=2))
        return
    rows = [(e.kind, e.name, e.provider, e.description) for e in entries]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(("KIND", "NAME", "PROVIDER"))]
    header = f"{'KIND':<{widths[0]}}  {'NAME':<{widths[1]}}  {'PROVIDER':<{widths[2]}}  DESCRIPTION"
    click.echo(click.style(header, bold=True))
    for r in rows:
        click.echo(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    if not rows:
        click.echo(f"(no {kind or ''} plugins registered)")
    else:
        click.echo(f"parameters of one: keras-reid plugins KIND NAME (e.g. plugins {rows[0][0]} {rows[0][1]})")
    for f in failures:
        click.secho(f"failed to import {f.module} (from {f.provider}): {f.reason}", fg="yellow", err=True)


def parameters(config: type[BaseModel]) -> list[dict[str, Any]]:
    """The recipe parameters of a component's pydantic config: name, type, default (``None``
    under ``required``), constraints and description, in declaration order."""
    out = []
    for field_name, field in config.model_fields.items():
        required = field.is_required()
        default = None
        if not required:
            default = field.default_factory() if field.default is PydanticUndefined else field.default
            if isinstance(default, BaseModel):
                default = default.model_dump()
        constraints = []
        for meta in field.metadata:
            for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="),
                              ("min_length", "min length"), ("max_length", "max length")):
                value = getattr(meta, attr, None)
                if value is not None:
                    constraints.append(f"{sym} {value}")
        out.append({"name": field.alias or field_name, "type": type_name(field.annotation),
                    "required": required, "default": default, "constraints": constraints,
                    "description": " ".join((field.description or "").split())})
    return out


def type_name(annotation: Any) -> str:
    """A short readable form of a type annotation: ``int | None``, ``'avg' | 'max'``, ``list[int]``."""
    if annotation is None or annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is not None:
        base = getattr(origin, "__name__", str(origin))
        return f"{base}[{', '.join(type_name(a) for a in args)}]" if args else base
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _show_component(entry: Entry, as_json: bool) -> None:
    params = parameters(entry.config)
    doc = (entry.obj.__doc__ or entry.description).strip()
    if as_json:
        click.echo(json.dumps({"kind": entry.kind, "name": entry.name, "provider": entry.provider,
                               "module": entry.module, "description": entry.description,
                               "parameters": params}, indent=2, default=str))
        return
    click.echo(click.style(f"{entry.kind} '{entry.name}'", bold=True)
               + f"  ({entry.module}, from {entry.provider})")
    click.echo(" ".join(doc.split("\n\n", 1)[0].split()))
    if not params:
        click.echo("parameters: none")
        return
    click.echo(click.style("parameters (recipe keys beside 'type'):", bold=True))
    for p in params:
        default = "required" if p["required"] else f"default {json.dumps(p['default'], default=str)}"
        limits = f", {', '.join(p['constraints'])}" if p["constraints"] else ""
        click.echo(f"  {p['name']}: {p['type']}  ({default}{limits})")
        if p["description"]:
            click.echo(f"      {p['description']}")
