"""Dataset ``synthetic``: the built-in synthetic re-ID dataset, written on first use."""
from __future__ import annotations

import os
from pathlib import Path

import click
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from keras_reid.data.records import DatasetSplits
from keras_reid.data.synthetic import make_params, parse_size, read_params, synthesize
from keras_reid.data.synthetic_closed_set import (make_closed_set_params, read_closed_set_params,
                                                  synthesize_closed_set)
from keras_reid.errors import DatasetError
from keras_reid.registry import register

from .closed_set import ClosedSet, ClosedSetConfig
from .market import read_market_layout


class SyntheticConfig(BaseModel):
    """Parameters of the synthetic dataset (see ``keras-reid data synth --help``)."""

    model_config = ConfigDict(extra="forbid")
    root: str = Field(description="folder of the dataset (written there if absent)")
    ids: int = Field(50, ge=2, le=9999, description="identities (half train, half test)")
    cameras: int = Field(6, ge=2, le=9, description="cameras")
    size: tuple[int, int] = Field((128, 64), description='crop size "HxW" or [h, w]')
    seed: int = Field(0, description="random seed (same seed, same files)")
    images_per_id_camera: int = Field(4, ge=2, description="images per identity and camera (mean)")
    create_if_missing: bool = Field(True, description="synthesise the dataset when root has none")

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, value):
        return parse_size(value)


def ensure_synthesised(root: Path, wanted: dict, found: dict | None, create: bool, synthesise,
                       *, what: str, command: str) -> None:
    """Make sure ``root`` holds the synthetic dataset with parameters ``wanted``: call
    ``synthesise()`` when there is none (``create``), else raise DatasetError naming the
    command to run; parameters ``found`` there that differ are an error (never overwritten)."""
    if found is None:
        if not create:
            raise DatasetError(f"no {what} at {root}; run `{command}` or set create_if_missing: true")
        written = synthesise()
        if isinstance(written, dict):
            images = written.get("images")
            n = sum(images.values()) if isinstance(images, dict) else images
            click.echo(f"wrote the {what} to {root}" + (f": {n:,} images" if isinstance(n, int) else "")
                       + f" in {float(written.get('seconds') or 0):.0f} s")
            if written.get("leftovers_removed"):
                click.echo(f"removed {written['leftovers_removed']} unfinished folder(s) a killed "
                           "synthesis had left beside it")
    elif found.get("version") != wanted.get("version"):
        raise DatasetError(
            f"{root} holds a {what} written by another keras-reid version (format "
            f"{found.get('version')}, this one writes {wanted.get('version')}: the pictures differ); "
            f"delete that folder to have it written again, or point root to another folder")
    elif found != wanted:
        diff = ", ".join(f"{k}={found.get(k)!r} (recipe: {wanted.get(k)!r})"
                         for k in sorted(set(found) | set(wanted)) if found.get(k) != wanted.get(k))
        raise DatasetError(f"{root} holds a {what} made with other parameters: {diff}; "
                           "point root to another folder or delete this one")


@register("dataset", "synthetic", config=SyntheticConfig)
class SyntheticDataset:
    """Built-in synthetic people in 6 camera styles (Market-1501 layout, masks, keypoints)."""

    def __init__(self, config: SyntheticConfig):
        self.config = config

    def load(self) -> DatasetSplits:
        """Synthesise the dataset at root if it has none, then read it as Market-1501.

        Raises DatasetError if root holds a synthetic dataset with other parameters (it
        is never overwritten), holds other files, or is missing with create_if_missing off.
        """
        c = self.config
        root = Path(os.path.expanduser(c.root)).absolute()
        wanted = make_params(ids=c.ids, cameras=c.cameras, size=c.size, seed=c.seed,
                             images_per_id_camera=c.images_per_id_camera).to_json()
        ensure_synthesised(
            root, wanted, read_params(root) if root.is_dir() else None, c.create_if_missing,
            lambda: synthesize(root, ids=c.ids, cameras=c.cameras, size=c.size, seed=c.seed,
                               images_per_id_camera=c.images_per_id_camera, progress=True),
            what="synthetic dataset",
            command=f"keras-reid data synth {root} --ids {c.ids} --cameras {c.cameras} "
                    f"--size {c.size[0]}x{c.size[1]} --seed {c.seed}")
        return read_market_layout(root, "synthetic")


class SyntheticClosedSetConfig(BaseModel):
    """Parameters of the synthetic closed-set dataset (see ``keras-reid data synth-closed-set --help``)."""

    model_config = ConfigDict(extra="forbid")
    root: str = Field(description="folder of the dataset (written there if absent)")
    ids: int = Field(6, ge=2, le=999, description="people (classes 1..ids; class 0 is 'unknown')")
    sessions: int = Field(4, ge=2, le=9, description="sessions; clothes change between sessions")
    size: tuple[int, int] = Field((128, 64), description='crop size "HxW" or [h, w]')
    seed: int = Field(0, description="random seed (same seed, same files)")
    images_per_session: int = Field(20, ge=2, description="images per person and session")
    unknown_per_session: int = Field(16, ge=0, description="class-0 images per session (background, "
                                     "groups, badly framed strangers)")
    cameras: int = Field(2, ge=1, le=9, description="camera styles")
    test_session: int | None = Field(None, description="leave-one-session-out: this session is "
                                     "'test', the others 'train'")
    create_if_missing: bool = Field(True, description="synthesise the dataset when root has none")

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, value):
        return parse_size(value)

    @model_validator(mode="after")
    def _session(self) -> "SyntheticClosedSetConfig":
        if self.test_session is not None and not 1 <= self.test_session <= self.sessions:
            raise ValueError(f"test_session {self.test_session} is not one of the sessions 1..{self.sessions}")
        return self


@register("dataset", "synthetic_closed_set", config=SyntheticClosedSetConfig)
class SyntheticClosedSet:
    """Built-in LIMA-style closed-set data: few people over sessions with clothing changes,
    front/back views, an 'unknown' class 0 (read by the closed_set reader)."""

    def __init__(self, config: SyntheticClosedSetConfig):
        self.config = config

    def load(self) -> DatasetSplits:
        """Synthesise the dataset at root if it has none, then read it with ``closed_set``
        (``train``/``test`` by ``test_session``, plus ``session_<k>`` splits)."""
        c = self.config
        root = Path(os.path.expanduser(c.root)).absolute()
        kwargs = dict(ids=c.ids, sessions=c.sessions, size=c.size, seed=c.seed,
                      images_per_session=c.images_per_session,
                      unknown_per_session=c.unknown_per_session, cameras=c.cameras)
        wanted = make_closed_set_params(**kwargs).to_json()
        ensure_synthesised(
            root, wanted, read_closed_set_params(root) if root.is_dir() else None, c.create_if_missing,
            lambda: synthesize_closed_set(root, **kwargs, progress=True),
            what="synthetic closed-set dataset",
            command=f"keras-reid data synth-closed-set {root} --ids {c.ids} --sessions {c.sessions} "
                    f"--size {c.size[0]}x{c.size[1]} --seed {c.seed} --images-per-session "
                    f"{c.images_per_session} --unknown-per-session {c.unknown_per_session} "
                    f"--cameras {c.cameras}")
        splits = ClosedSet(ClosedSetConfig(root=str(root), test_session=c.test_session)).load()
        return DatasetSplits(name="synthetic_closed_set", splits=splits.splits, root=splits.root,
                             kind="closed_set", num_skipped=splits.num_skipped)
