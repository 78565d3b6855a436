"""keras-reid models commands: fetch and list the MediaPipe model files."""
from __future__ import annotations

import click

from keras_reid.cli.app import handle_user_errors, main
from keras_reid.model_files import cache_dir as resolve, fetch_models, known_names, model_status


@main.group()
def models() -> None:
    """MediaPipe model files (face detector, segmentation, pose) and Tasks bundles in the local cache.

    The cache is $KERAS_REID_MODELS or ~/.cache/keras_reid/models. Nothing is
    downloaded at run time: fetch the models once with `keras-reid models fetch`.
    """


@models.command()
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="cache folder (default: $KERAS_REID_MODELS or ~/.cache/keras_reid/models)")
@click.option("--wheel", type=click.Path(dir_okay=False), default=None,
              help="a mediapipe-0.10.21 wheel file to extract the models from (skips the download)")
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="seconds to wait for each official model URL before using the wheel")
@handle_user_errors
def fetch(names: tuple[str, ...], cache_dir: str | None, wheel: str | None, timeout: float) -> None:
    """Put the MediaPipe models NAME... (default: all) into the cache.

    Each model is taken from MediaPipe's official asset URL when it is reachable,
    otherwise from the mediapipe==0.10.21 wheel (given with --wheel, or downloaded
    from PyPI with pip), and checked against its sha256. Models already present
    and intact are kept. Tasks bundles (pose_landmarker_full.task) come from their
    official URL, or are built from the wheel's models with the installed mediapipe's
    metadata writers; a record of their sha256 and inputs is kept beside them.

    \b
    Examples:
      keras-reid models fetch
      keras-reid models fetch face_detection_full_range_sparse --wheel mediapipe-0.10.21-*.whl
    """
    paths = fetch_models(names or None, cache_dir=cache_dir, wheel=wheel, timeout=timeout,
                         log=click.echo)
    click.echo(f"{len(paths)} model(s) ready in {paths[0].parent if paths else cache_dir}")


@models.command(name="list")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="cache folder (default: $KERAS_REID_MODELS or ~/.cache/keras_reid/models)")
@handle_user_errors
def list_(cache_dir: str | None) -> None:
    """List the known models and bundles: name, status (present, missing, bad checksum,
    outdated) and path."""
    folder = resolve(cache_dir)
    rows = [(name, model_status(name, cache_dir), str(folder / name)) for name in known_names()]
    w0 = max(len(r[0]) for r in rows + [("NAME", "", "")])
    w1 = max(len(r[1]) for r in rows + [("", "STATUS", "")])
    click.secho(f"{'NAME'.ljust(w0)}  {'STATUS'.ljust(w1)}  PATH", bold=True)
    colour = {"present": "green", "missing": "yellow", "bad checksum": "red", "outdated": "yellow"}
    for name, status, path in rows:
        click.echo(f"{name.ljust(w0)}  " + click.style(status.ljust(w1), fg=colour[status])
                   + f"  {path}")
