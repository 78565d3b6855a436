"""keras-reid plugins: list registered components."""
from __future__ import annotations

import json

import click

from keras_reid.cli import handle_user_errors, main
from keras_reid.registry import KINDS


@main.command()
@click.argument("kind", required=False, type=click.Choice(KINDS))
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@handle_user_errors
def plugins(kind: str | None, as_json: bool) -> None:
    """List the registered components (optionally only those of KIND): name, kind,
    description and the package that provides it, plus plugin modules that failed to
    import and why. Third-party packages add components through the
    'keras_reid.plugins' entry-point group."""
    from keras_reid.registry import REGISTRY

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
    for f in failures:
        click.secho(f"failed to import {f.module} (from {f.provider}): {f.reason}", fg="yellow", err=True)
