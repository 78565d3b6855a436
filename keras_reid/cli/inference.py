"""keras-reid extract, search and export: use a trained model outside its run.

MODEL is a ``.keras`` file (its ``.preprocessing.json`` record beside it), a trained stage's
folder (``runs/quickstart/baseline``) or a run folder with ``--model`` naming the stage.
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from keras_reid import export as model_export, io
from keras_reid.cli.app import handle_user_errors, main
from keras_reid.errors import InputError
from keras_reid.inference import ImageRecord, list_images, load_model, parse_identity
from keras_reid.search import rank, render_html, render_png, text_lines


def model_options(func):
    """``--model NAME`` and ``--batch-size``: shared by the commands that load a model."""
    func = click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
                        help="images per forward pass")(func)
    return click.option("--model", "stage", metavar="NAME",
                        help="the train stage whose model to use when MODEL is a run folder")(func)


def load_extractor(model: str, stage: str | None):
    """The :class:`keras_reid.inference.FeatureExtractor` of MODEL, with one line saying what it is."""
    extractor = load_model(model, stage)
    p = extractor.preprocessing
    h, w = p.image_size
    old = "" if p.source.endswith(".preprocessing.json") else f"; preprocessing from {p.source}"
    click.echo(f"model: {extractor.path} ({h}x{w} RGB in [0, 255], "
               f"{'flip-averaged, ' if p.flip else ''}L2-normalised {extractor.feature_dim}-d features{old})")
    return extractor


def readable(paths: list[str]) -> list[str]:
    """The image files TensorFlow can decode; warns about (and drops) the others."""
    from keras_reid.data.pipeline import scan_images, skipped_message  # deferred: TensorFlow, keeps CLI startup light

    good, bad = scan_images([ImageRecord(p) for p in paths])
    if bad:
        click.secho(f"warning: {skipped_message(bad, len(paths))}", fg="yellow", err=True)
    if not good:
        raise InputError(f"none of the {len(paths)} images could be decoded (first: {bad[0]}); "
                         "give image files (.jpg, .png, .bmp)")
    return [r.path for r in good]


@main.command("extract")
@click.argument("model")
@click.argument("images", nargs=-1, required=True)
@click.option("--out", required=True, metavar="FEATS.npz",
              help="where to write features [N, D], paths, pids and cameras")
@model_options
@handle_user_errors
def extract(model: str, images: tuple[str, ...], out: str, stage: str | None, batch_size: int) -> None:
    """Features of IMAGES (files, or folders searched recursively) with the trained MODEL.

    Writes an .npz with features (float32 [N, D], L2-normalised, exactly the features the
    evaluate stage ranks), paths, and pids and cameras parsed from Market-style names
    (0002_c1s1_000451_03.jpg: person 2, camera 1; -1 where a name carries none).

    \b
    MODEL: a .keras file or a trained stage's folder (e.g. runs/quickstart/baseline)
    Example:
      keras-reid extract runs/quickstart/baseline data/synthetic-quickstart/query --out query.npz
      python -c "import numpy as np; d = np.load('query.npz'); print(d['features'].shape)"
    """
    if not out.endswith(".npz"):
        raise InputError(f"--out {out}: name an .npz file, e.g. --out feats.npz")
    paths = list_images(images)
    extractor = load_extractor(model, stage)
    paths = readable(paths)
    feats = extractor.files(paths, batch_size=batch_size, verbose=1)
    ids = np.array([parse_identity(p) for p in paths], np.int64).reshape(-1, 2)
    with io.atomic_path(out, suffix=".npz") as tmp:
        np.savez(tmp, features=feats, paths=np.array(paths), pids=ids[:, 0], cameras=ids[:, 1],
                 model=np.array(str(extractor.path)), image_size=np.array(extractor.image_size))
    named = int((ids[:, 0] >= 0).sum())
    click.echo(f"wrote {out}: features {feats.shape[0]} x {feats.shape[1]}, paths, pids and cameras "
               f"({named} of {len(paths)} names carry a person id and camera; -1 elsewhere)")


def _gallery(items: tuple[str, ...], extractor, batch_size: int):
    """``(paths, features)`` of the gallery: images and folders, or one .npz written by extract."""
    if len(items) == 1 and items[0].endswith(".npz"):
        try:
            with np.load(items[0], allow_pickle=False) as data:
                feats, paths = data["features"], [str(p) for p in data["paths"]]
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"--gallery {items[0]} is not an .npz written by keras-reid extract ({exc})") from None
        if feats.ndim != 2 or feats.shape[1] != extractor.feature_dim:
            raise InputError(f"--gallery {items[0]} holds {feats.shape[-1]}-d features, this model makes "
                             f"{extractor.feature_dim}-d ones; extract the gallery with the same model")
        click.echo(f"gallery: {len(paths)} features from {items[0]}")
        return paths, feats
    paths = readable(list_images(items))
    click.echo(f"gallery: {len(paths)} images")
    return paths, extractor.files(paths, batch_size=batch_size, verbose=1)


@main.command("search")
@click.argument("model")
@click.option("--query", "queries", multiple=True, required=True, metavar="IMG",
              help="a query image, or a folder of them (repeatable)")
@click.option("--gallery", "gallery", multiple=True, required=True, metavar="DIR",
              help="gallery images: a folder (searched recursively), image files (repeatable), "
                   "or one .npz written by keras-reid extract")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="gallery images listed per query")
@click.option("--out", metavar="RANKED.png|.html",
              help="also draw the ranked lists: a PNG, or a self-contained HTML page")
@model_options
@handle_user_errors
def search(model: str, queries: tuple[str, ...], gallery: tuple[str, ...], top: int, out: str | None,
           stage: str | None, batch_size: int) -> None:
    """Rank a gallery for query images with the trained MODEL.

    Lists, per query, the TOP closest gallery images: rank, distance (Euclidean between
    L2-normalised features) and, where Market-style names carry them, person and camera and
    whether it is the query's person. Nothing is left out: a query that is also in the gallery
    comes first at distance 0. --out draws the lists with green (same person), red (another)
    or grey (unknown) frames.

    \b
    MODEL: a .keras file or a trained stage's folder (e.g. runs/quickstart/baseline)
    Example:
      keras-reid search runs/quickstart/augmented --query data/synthetic-quickstart/query/0001_c1s1_000154_00.jpg \\
          --gallery data/synthetic-quickstart/bounding_box_test --top 5 --out ranked.html
    """
    if out and Path(out).suffix.lower() not in (".png", ".html", ".htm"):
        raise InputError(f"--out {out}: name a .png or .html file")
    query_paths = list_images(queries)
    extractor = load_extractor(model, stage)
    query_paths = readable(query_paths)
    g_paths, gf = _gallery(gallery, extractor, batch_size)
    qf = extractor.files(query_paths, batch_size=batch_size)
    lists = rank(query_paths, qf, g_paths, gf, top)
    for line in text_lines(lists):
        click.echo(line)
    if out:
        if Path(out).suffix.lower() == ".png":
            render_png(lists, out)
        else:
            render_html(lists, out, model=str(extractor.path))
        click.echo(f"ranked lists drawn in {out}")


@main.command("export")
@click.argument("model")
@click.option("--format", "fmt", required=True, metavar="savedmodel|tflite|onnx",
              help="savedmodel (a folder), tflite or onnx (a file; pip install 'keras-reid[onnx]')")
@click.option("--out", required=True, metavar="PATH", help="where to write the exported model")
@click.option("--sample", "sample", multiple=True, metavar="IMG",
              help="images (or a folder) for the parity check (default: 8 seeded random images)")
@click.option("--model", "stage", metavar="NAME",
              help="the train stage whose model to use when MODEL is a run folder")
@handle_user_errors
def export(model: str, fmt: str, out: str, sample: tuple[str, ...], stage: str | None) -> None:
    """Export the trained MODEL for serving, checked against the Keras model.

    The exported graph takes float32 RGB images [N, H, W, 3] in [0, 255] at the model's size
    and returns its L2-normalised (flip-averaged) features, the ones keras-reid extract
    computes; the preprocessing record written beside it says the size. The export and the
    Keras model embed a sample batch; their largest difference is printed, and an export off by
    more than 1e-3 fails (exit 1) without writing anything. Backbones with a compact inference
    form (CondenseNet) are exported in it.

    \b
    MODEL: a .keras file or a trained stage's folder (e.g. runs/quickstart/baseline)
    Examples:
      keras-reid export runs/quickstart/baseline --format savedmodel --out exported/baseline
      keras-reid export runs/quickstart/baseline --format onnx --out baseline.onnx
    """
    fmt = fmt.lower()   # checked before the model loads
    if fmt not in model_export.FORMATS:
        raise InputError(f"--format {fmt}: unknown format; use one of {', '.join(model_export.FORMATS)}")
    missing = model_export.missing_onnx_packages() if fmt == "onnx" else []
    if missing:
        raise InputError(f"--format onnx needs {' and '.join(missing)}, which are not "
                         f"installed: {model_export.ONNX_EXTRA}")
    images = list_images(sample) if sample else None
    extractor = load_extractor(model, stage)
    click.echo(f"exporting to {fmt} ...")
    result = model_export.export_model(extractor, out, fmt,
                                       sample_images=readable(images) if images else None)
    if result.compact:
        click.echo(result.compact)
    click.echo(f"parity: max |exported - Keras| = {result.max_abs_diff:.2e} over {result.sample_images} "
               f"{'sample' if images else 'random'} images (limit {model_export.TOLERANCE:g}): ok")
    h, w = extractor.image_size
    click.echo(f"wrote {result.path} (input float32 [N, {h}, {w}, 3] RGB in [0, 255]; output "
               f"L2-normalised features) and {result.record}")
