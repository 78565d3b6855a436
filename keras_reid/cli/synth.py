"""keras-reid data synth: write the built-in synthetic dataset."""
from __future__ import annotations

import click

from keras_reid.cli.app import handle_user_errors
from keras_reid.cli.data import data
from keras_reid.data.synthetic import synthesize
from keras_reid.data.synthetic_closed_set import synthesize_closed_set


@data.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=str))
@click.option("--ids", type=click.IntRange(2, 9999), default=50, show_default=True,
              help="identities; half train, half test (query + gallery)")
@click.option("--cameras", type=click.IntRange(2, 9), default=6, show_default=True,
              help="cameras, each with its own scene, light, colour cast, blur and view mix")
@click.option("--size", default="128x64", show_default=True, metavar="HxW",
              help="crop size, height x width")
@click.option("--seed", type=int, default=0, show_default=True, help="random seed (same seed, same files)")
@click.option("--images-per-id-camera", type=click.IntRange(2, None), default=4, show_default=True,
              help="mean images per identity and camera (each visit has 0.5x..1.5x)")
@click.option("--distractors", type=click.IntRange(0, None), default=None,
              help="distractor boxes (pid 0000) in the gallery [default: --ids]")
@click.option("--junk", type=click.IntRange(0, None), default=None,
              help="junk boxes (pid -1) in the gallery [default: --ids / 2]")
@click.option("--force", is_flag=True, help="replace OUT if it holds anything else")
@handle_user_errors
def synth(out: str, ids: int, cameras: int, size: str, seed: int, images_per_id_camera: int,
          distractors: int | None, junk: int | None, force: bool) -> None:
    """Write the synthetic re-ID dataset to OUT in the Market-1501 layout.

    OUT gets bounding_box_train/, query/ and bounding_box_test/ with Market-1501
    file names (0002_c1s3_000451_01.jpg; junk -1_..., distractors 0000_...), the
    exact person mask of every image (masks/<folder>/<name>.png), COCO-18 keypoints
    in the Pose-Transfer CSV format and view/occlusion attributes (annotations/),
    and synthetic.json with the parameters. People differ by body shape, skin,
    hair, clothing colours and patterns and bags; front views show a face that
    MediaPipe's face detector finds. The same parameters give the same files; a
    re-run with them does nothing. The tree is written under a temporary name and
    renamed when complete.

    \b
    Examples:
      keras-reid data synth data/synth
      keras-reid data synth data/synth-256 --ids 200 --size 256x128 --seed 1
    """
    summary = synthesize(out, ids=ids, cameras=cameras, size=size, seed=seed,
                         images_per_id_camera=images_per_id_camera, distractors=distractors,
                         junk=junk, force=force, progress=True)
    images = summary["images"]
    if summary["skipped"]:
        click.echo(f"{summary['root']}: already holds this synthetic dataset (nothing to do)")
    else:
        total = sum(images.values())
        click.echo(f"wrote {total:,} images to {summary['root']} in {summary['seconds']:.1f} s "
                   f"({total / max(summary['seconds'], 1e-9):.0f} images/s)")
        if summary.get("leftovers_removed"):
            click.echo(f"removed {summary['leftovers_removed']} unfinished folder(s) a killed "
                       "synthesis had left beside it")
    ident = summary["identities"]
    click.echo(f"  train    {images['train']:>7,} images  {ident['train']:>5} identities")
    click.echo(f"  query    {images['query']:>7,} images  {ident['test']:>5} identities")
    click.echo(f"  gallery  {images['gallery']:>7,} images  {ident['test']:>5} identities "
               f"+ {summary['distractors']} distractors, {summary['junk']} junk")


@data.command("synth-closed-set")
@click.argument("out", type=click.Path(file_okay=False, path_type=str))
@click.option("--ids", type=click.IntRange(2, 999), default=6, show_default=True,
              help="people: classes 1..ids (class 0 is 'unknown')")
@click.option("--sessions", type=click.IntRange(2, 9), default=4, show_default=True,
              help="sessions; everyone changes clothes between sessions")
@click.option("--size", default="128x64", show_default=True, metavar="HxW", help="crop size, height x width")
@click.option("--seed", type=int, default=0, show_default=True, help="random seed (same seed, same files)")
@click.option("--images-per-session", type=click.IntRange(2, None), default=20, show_default=True,
              help="images per person and session")
@click.option("--unknown-per-session", type=click.IntRange(0, None), default=16, show_default=True,
              help="class-0 images per session: background, two people, badly framed strangers")
@click.option("--cameras", type=click.IntRange(1, 9), default=2, show_default=True, help="camera styles")
@click.option("--force", is_flag=True, help="replace OUT if it holds anything else")
@handle_user_errors
def synth_closed_set(out: str, ids: int, sessions: int, size: str, seed: int, images_per_session: int,
                     unknown_per_session: int, cameras: int, force: bool) -> None:
    """Write a LIMA-style synthetic closed-set dataset to OUT.

    A handful of people filmed over several sessions: each keeps body, skin, hair
    and face but wears other clothes from session 2 on; views are front, back or
    side per image (front views show a face the face filter finds); class 0
    'unknown' holds empty scenes, two people at once and badly framed strangers.
    OUT gets labels.csv (path, identity, session, camera, frame, view, kind) and
    <session>/<class>/<name>.jpg, read by the closed_set dataset reader (use
    test_session for leave-one-session-out), plus exact person masks under masks/.

    \b
    Examples:
      keras-reid data synth-closed-set data/lima-synth
      keras-reid data info data/lima-synth -o test_session=4
    """
    s = synthesize_closed_set(out, ids=ids, sessions=sessions, size=size, seed=seed,
                              images_per_session=images_per_session,
                              unknown_per_session=unknown_per_session, cameras=cameras, force=force,
                              progress=True)
    if s["skipped"]:
        click.echo(f"{s['root']}: already holds this synthetic closed-set dataset (nothing to do)")
    else:
        click.echo(f"wrote {s['images']:,} images to {s['root']} in {s['seconds']:.1f} s")
    click.echo(f"  {ids} people x {sessions} sessions: {s['people']:,} images "
               f"(front {s['front']:,}, back {s['back']:,}, side {s['side']:,})")
    click.echo(f"  class 0 'unknown': {s['background']:,} background, {s['group']:,} two people, "
               f"{s['misframed']:,} badly framed")
