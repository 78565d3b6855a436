"""keras-reid report."""
from __future__ import annotations

import click

from keras_reid.cli.app import handle_user_errors, main
from keras_reid.report import write_report


@main.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="the HTML file to write (default: RUN/report.html)")
@click.option("--queries", type=click.IntRange(min=0, max=100), default=6, show_default=True,
              help="ranked lists shown per evaluated model")
@click.option("--top", type=click.IntRange(min=1, max=50), default=10, show_default=True,
              help="gallery images shown per ranked list")
@handle_user_errors
def report(run: str, out: str | None, queries: int, top: int) -> None:
    """Write one self-contained HTML page about run folder RUN (e.g. runs/quickstart, or the
    parent folder of a repeated run): the metrics with the chance level (for repeats mean +- std,
    each repeat and the paired differences), CMC curves, training curves, labelled ranked lists,
    the GAN sample grids, generated-image quality, face filter and diversity figures, each
    stage's time and summary, the recipe and provenance (versions, seeds, model checksums).

    Pictures and plots are inside the file: it opens in any browser without a network.
    """

    write_report(run, out, queries=queries, top=top, echo=click.echo)
