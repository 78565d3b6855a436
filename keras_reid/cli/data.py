"""keras-reid data commands: synth, info, pairs."""
from __future__ import annotations

import json

import click
import yaml

from keras_reid.cli.app import handle_user_errors, main
from keras_reid.data.camera_split import camera_pair_split
from keras_reid.data.layout import load_dataset
from keras_reid.errors import DatasetError, UserError


@main.group()
def data() -> None:
    """Datasets: write the synthetic dataset, summarise a dataset, camera-pair splits."""


_TYPE_HELP = ("dataset reader: market1501, dukemtmc, msmt17, cuhk03_np, closed_set or any registered "
              "dataset plugin (default: detect it from the folder)")
_OPTION_HELP = ("reader parameter KEY=VALUE (repeatable; value read as YAML), e.g. variant=labeled "
                "for cuhk03_np, test_session=2 for closed_set, include_junk=true for market1501")


def _parse_options(pairs: tuple[str, ...]) -> dict:
    """``("variant=labeled", "test_session=2")`` -> ``{"variant": "labeled", "test_session": 2}``."""
    out = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--option expects KEY=VALUE, got {item!r}")
        if key.strip() == "root":
            raise UserError("--option root=... is not allowed: ROOT is the command's argument")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def _table(rows: list[dict], columns: tuple[str, ...]) -> list[str]:
    """Left-aligned text table (first column) with right-aligned numbers."""
    widths = [max([len(c)] + [len(str(r[c])) for r in rows]) for c in columns]
    head = "  ".join(c.upper().ljust(w) if i == 0 else c.upper().rjust(w)
                     for i, (c, w) in enumerate(zip(columns, widths)))
    lines = [click.style(head, bold=True)]
    for r in rows:
        lines.append("  ".join(str(r[c]).ljust(w) if i == 0 else str(r[c]).rjust(w)
                               for i, (c, w) in enumerate(zip(columns, widths))))
    return lines


@data.command()
@click.argument("root", type=click.Path(file_okay=False, path_type=str))
@click.option("--type", "type_", metavar="NAME", help=_TYPE_HELP)
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE", help=_OPTION_HELP)
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@handle_user_errors
def info(root: str, type_: str | None, options: tuple[str, ...], as_json: bool) -> None:
    """Summarise the dataset at ROOT: identities, images and cameras per split.

    The layout is detected from the folder unless --type is given (Market-1501 and
    DukeMTMC-reID folders and file names, CUHK03-NP detected/ and labeled/, MSMT17
    list files, closed-set labels.csv or class folders). Only file names are read.
    Identities exclude distractors (pid 0000, counted separately) and junk (pid -1,
    dropped when loading); for closed-set data the last column counts the 'unknown'
    class 0. A missing or malformed ROOT is an error (exit code 1).

    \b
    Examples:
      keras-reid data info ~/data/Market-1501-v15.09.15
      keras-reid data info ~/data/cuhk03-np --option variant=labeled --json
    """
    loaded = load_dataset(root, type_, _parse_options(options))
    ds = loaded.splits
    rows = ds.summary()
    last = "distractors"
    if ds.kind == "closed_set":  # pid 0 is the 'unknown' class there, not a distractor
        last = "unknown"
        rows = [{**{k: v for k, v in r.items() if k != "distractors"}, "unknown": r["distractors"]}
                for r in rows]
    if as_json:
        click.echo(json.dumps({"type": loaded.type, "detected": loaded.detected, "root": ds.root,
                               "kind": ds.kind, "num_skipped": ds.num_skipped,
                               "num_ignored": ds.num_ignored, "splits": rows},
                              indent=2))
        return
    how = "detected" if loaded.detected else "given"
    click.echo(f"{ds.root}: {loaded.type} ({how}), {ds.kind}")
    cols = ("split", "identities", "images", "cameras", last)
    for line in _table(rows, cols):
        click.echo(line)
    if ds.num_skipped:
        click.secho(f"skipped {ds.num_skipped} listed images that do not exist", fg="yellow")
    if ds.num_ignored:
        click.secho(f"ignored {ds.num_ignored} files whose names are not like the {loaded.type} "
                    "layout's (not read; rename them to use them)", fg="yellow")


@data.command()
@click.argument("root", type=click.Path(file_okay=False, path_type=str))
@click.option("--a", "cam_a", type=int, required=True, help="source camera A (1-based, as in the names)")
@click.option("--b", "cam_b", type=int, required=True, help="target camera B (1-based)")
@click.option("--split", default="train", show_default=True, help="split of the dataset to use")
@click.option("--type", "type_", metavar="NAME", help=_TYPE_HELP)
@click.option("--option", "-o", "options", multiple=True, metavar="KEY=VALUE", help=_OPTION_HELP)
@click.option("--json", "as_json", is_flag=True,
              help='print {"train_pairs": .., "test_images": .., "new_id_images": ..}')
@handle_user_errors
def pairs(root: str, cam_a: int, cam_b: int, split: str, type_: str | None,
          options: tuple[str, ...], as_json: bool) -> None:
    """Count the camera-pair split A -> B of ROOT's training set (thesis DataSplit).

    Images are grouped by (pid, sequence). Train pairs: every (a, b) with a in
    camera A and b in camera B of the same pid and sequence. Test images: camera-A
    images whose (pid, sequence) never occurs in camera B. New-id images: camera-A
    images whose pid never occurs in camera B. Only file names are parsed.
    Layouts without sequences (DukeMTMC-reID, MSMT17, CUHK03-NP) use sequence 1.

    \b
    Example (the thesis counts 14,133 train pairs and 695 test images):
      keras-reid data pairs ~/data/Market-1501-v15.09.15 --a 5 --b 6
    """
    loaded = load_dataset(root, type_, _parse_options(options))
    if split not in loaded.splits:
        raise DatasetError(f"dataset {loaded.type} at {loaded.splits.root} has no split '{split}'; "
                           f"splits: {', '.join(loaded.splits.splits)}")
    result = camera_pair_split(loaded.splits[split], cam_a, cam_b,
                               source=f"split '{split}' of {loaded.type} at {loaded.splits.root}")
    counts = result.counts()
    if as_json:
        click.echo(json.dumps(counts))
        return
    click.echo(f"{loaded.splits.root}: {loaded.type}, split '{split}', camera {cam_a} -> {cam_b}")
    for key, label in (("train_pairs", "train pairs"), ("test_images", "test images"),
                       ("new_id_images", "new-id images")):
        click.echo(f"  {label:<14} {counts[key]:>8,}")
