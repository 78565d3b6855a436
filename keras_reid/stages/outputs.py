"""What a stage hands to the stages after it: typed views of the summaries in completion markers.

A stage's ``run`` returns a summary (JSON, kept in ``<run>/<stage>/.complete.json``). The fields
later stages read are declared here, so a reader gets attributes checked when the marker is
read (``ctx.output_of(stage, GeneratorOutput)``) instead of string keys that fail deep inside
the work. Fields the report or a person reads only (training figures, counts) stay in the
summary as extra fields, untyped.

A marker written by an older version that lacks a field a reader needs is refused with a
one-line :class:`keras_reid.errors.UserError` naming the stage and how to re-run it.
"""
from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from keras_reid.errors import UserError

T = TypeVar("T", bound="StageOutput")


class StageOutput(BaseModel):
    """Base of the typed stage outputs: unknown summary fields are kept, not checked."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @classmethod
    def read(cls: type[T], summary: dict[str, Any], stage: str, marker: str) -> T:
        """Returns ``summary`` (stage ``stage``'s, from the file ``marker``) as this type."""
        try:
            return cls.model_validate(summary)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "summary"
            raise UserError(f"stage '{stage}' recorded an output this version cannot read ({where}: "
                            f"{first['msg']}); re-run that stage (delete {marker})") from None

    def dump(self, only_set: bool = False) -> dict[str, Any]:
        """The summary to return from a stage's ``run`` (JSON-ready, extra fields included);
        ``only_set``: without the fields left at their defaults (an optional part the stage did
        not produce is absent, not null)."""
        return self.model_dump(mode="json", exclude_unset=only_set)


class GeneratorOutput(StageOutput):
    """``train_generator``: the trained generator(s) and how to feed them (read by augment and
    evaluate's generated-set checks)."""

    model: str | None = Field(description="the generator file (run-relative); None when there is "
                              "one generator per identity (see generators)")
    generators: dict[str, str] | None = Field(
        None, description="per identity (pid as a string): its generator file (run-relative)")
    generator: dict[str, Any] = Field(description="the generator's registry spec")
    pairing: str
    generation_needs: list[str] = Field(["source"], description="what generate() takes")
    image_size: tuple[int, int]
    source_camera: int | None = None
    target_camera: int | None = None
    dataset: str | None = None
    split: str = "train"
    masker: dict[str, Any] | None = None

    def files(self) -> dict[str, str]:
        """``{"": model}`` for one generator, else ``{pid: its file}`` (run-relative)."""
        if self.model:
            return {"": self.model}
        return dict(self.generators or {})


class CanonicalPosesOutput(StageOutput):
    """``canonical_poses``: the k canonical poses (read by augment for pose generators)."""

    poses: str = Field(description="the poses file (JSON: image_size, features and per pose its "
                       "index, members and keypoints [18, 3]), relative to the run folder")
    k: int
    image_size: tuple[int, int]
    features: str


class HoldoutOutput(BaseModel):
    """The training images a ``train_reid`` stage withheld per class."""

    model_config = ConfigDict(extra="allow", frozen=True)

    fraction: float
    images: int
    file: str = Field(description="the withheld records (JSON), relative to the run folder")


class ConvertedOutput(BaseModel):
    """The deploy form a ``train_reid`` stage wrote (its backbone's ``convert``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    model: str = Field(description="the converted embedding model (run-relative)")
    classifier: str | None = Field(None, description="the converted classifier (run-relative)")
    max_abs_diff: float | None = Field(None, description="parity with the trained model")


class ReIDOutput(StageOutput):
    """``train_reid``: the trained model files (read by evaluate and by model loading)."""

    model: str = Field(description="the trained embedding model (run-relative)")
    image_size: tuple[int, int]
    num_classes: int | None = None
    classifier: str | None = Field(None, description="closed-set / holdout classifier (run-relative)")
    holdout: HoldoutOutput | None = None
    converted: ConvertedOutput | None = Field(None, description="the deploy form, when converted")
    eval_history: list[dict[str, Any]] | None = None
