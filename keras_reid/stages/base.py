"""What every stage gets: its folder, the recipe, datasets, the strategy, TensorBoard."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, TypeVar

import click
from pydantic import AfterValidator

from keras_reid import io
from keras_reid.data.records import DatasetSplits
from keras_reid.distribute import is_chief, make_strategy
from keras_reid.errors import DatasetError, UserError
from keras_reid.registry import REGISTRY, Registry
from keras_reid.stages.outputs import StageOutput

T = TypeVar("T", bound=StageOutput)

log = logging.getLogger("keras_reid")

COMPLETE_MARKER = ".complete.json"
RECORDED_METRICS = ".recorded_metrics.json"
"""In a stage folder: the models (and extra) the stage merged into the run's metrics.json."""


def _min_side(size: tuple[int, int]) -> tuple[int, int]:
    if min(size) < 16:
        raise ValueError("height and width of at least 16 pixels")
    return size


ImageSize = Annotated[tuple[int, int], AfterValidator(_min_side)]
"""A stage config's (height, width), each side at least 16 pixels."""

_metrics_lock = threading.Lock()


@dataclass
class StageContext:
    """Handed to ``Stage.run``: where to write, what the recipe says, shared services."""

    recipe: Any  # keras_reid.recipe.Recipe
    stage_name: str
    run_dir: Path
    registry: Registry = REGISTRY
    echo: Callable[[str], None] = click.echo
    shard: tuple[int, int] | None = None
    """``(i, N)`` from ``keras-reid run --shard i/N``: shardable stages (augment) do only their
    i-th part of N and report the stage incomplete until every part is done."""
    _datasets: dict[str, DatasetSplits] = field(default_factory=dict)
    _strategy_holder: dict = field(default_factory=dict)

    @property
    def stage_dir(self) -> Path:
        """The stage's own output folder (created)."""
        d = self.run_dir / self.stage_name
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def tensorboard_dir(self) -> Path:
        """``<run>/tensorboard/<stage>``: the stage's TensorBoard log folder."""
        d = self.run_dir / "tensorboard" / self.stage_name
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def seed(self) -> int:
        return self.recipe.model.seed

    @property
    def jit_compile(self) -> bool:
        return self.recipe.model.jit_compile

    @property
    def precision(self) -> str:
        """The dtype policy of this stage: its config's ``precision`` if it has one set, else
        the recipe's (``float32``, ``mixed_float16`` or ``mixed_bfloat16``)."""
        return getattr(self.config, "precision", None) or self.recipe.model.precision

    @property
    def config(self) -> Any:
        """This stage's validated config."""
        return self.recipe.stage_configs[self.stage_name]

    def dataset(self, name: str) -> DatasetSplits:
        """Load (once per run) the recipe dataset called ``name``."""
        if name not in self._datasets:
            cfg = self.recipe.dataset_configs.get(name)
            if cfg is None:
                raise UserError(f"stage '{self.stage_name}' asks for dataset '{name}', which the recipe "
                                f"does not define under datasets:")
            entry = self.registry.get("dataset", self.recipe.model.datasets[name].type)
            splits = entry.create(cfg).load()
            if not splits.name:
                splits.name = name
            self._datasets[name] = splits
        return self._datasets[name]

    @property
    def strategy(self) -> Any:
        """The tf.distribute strategy the recipe names (created once per run)."""
        if "strategy" not in self._strategy_holder:
            self._strategy_holder["strategy"] = make_strategy(self.recipe.model.strategy)
        return self._strategy_holder["strategy"]

    @property
    def is_chief(self) -> bool:
        """False on the non-chief workers of a multi-worker run (they must not write results)."""
        if self.recipe.model.strategy.type != "multi_worker":
            return True
        return is_chief(self.strategy)

    def decodable(self, records, what: str = "images", *, allow_empty: bool = False) -> list:
        """The ``records`` whose image files exist and decode (``scan_images``); a warning line
        counts the others (``skipped 3 of 120 <what> that could not be decoded (first: PATH)``).
        Raises DatasetError when none is left, unless ``allow_empty`` (an optional set)."""
        # the scanner decodes with TensorFlow
        from keras_reid.data.pipeline import (  # deferred: TensorFlow, validation stays light
            scan_images, skipped_message)

        records = list(records)
        good, bad = scan_images(records)
        if bad:
            self.echo(f"warning: {skipped_message(bad, len(records), what)}")
        if not good and not allow_empty:
            raise DatasetError(f"stage '{self.stage_name}': none of the {len(records)} {what} could be "
                               "decoded; check the dataset root and the files")
        return good

    def stage_dir_of(self, stage: str) -> Path:
        """Output folder of an earlier stage."""
        return self.run_dir / stage

    def output_of(self, stage: str, kind: type[T] | None = None) -> Any:
        """The summary an earlier stage returned (from its completion marker): a dict, or with
        ``kind`` (a :class:`keras_reid.stages.outputs.StageOutput`) that typed view of it."""
        path = self.stage_dir_of(stage) / COMPLETE_MARKER
        marker = io.read_json(path)
        if marker is None:
            raise UserError(f"stage '{self.stage_name}' needs the output of stage '{stage}', which has "
                            "not completed; run the recipe from the start")
        summary = marker.get("summary", {})
        return summary if kind is None else kind.read(summary, stage, str(path))

    def record_metrics(self, models: dict[str, dict], extra: dict | None = None,
                       chance: dict | None = None) -> Path:
        """Merge per-model metrics into ``<run>/metrics.json`` (atomically); returns its path.
        ``chance`` (the metrics of a random ranking) is kept at the top level as ``chance``.

        The stage folder keeps what this stage recorded (``.recorded_metrics.json``), so a copy
        of the completed stage in another run folder (a repeat sharing it) can record it there."""
        path = self.run_dir / "metrics.json"
        own = self.stage_dir / RECORDED_METRICS
        with _metrics_lock:
            mine = io.read_json(own, default={}) or {}
            mine.setdefault("models", {}).update(models)
            if extra:
                mine["extra"] = extra
            if chance:
                mine["chance"] = chance
            io.write_json(own, mine)
            current = io.read_json(path, default={}) or {}
            current.setdefault("recipe", self.recipe.name)
            current.setdefault("models", {})
            for name, values in models.items():
                current["models"][name] = values
            if extra:
                current.setdefault("stages", {})[self.stage_name] = extra
            if chance:
                current["chance"] = chance
            io.write_json(path, current)
        return path


class StageIncomplete(Exception):
    """Raised by a stage that did its part (e.g. one shard of N) but is not complete yet: the
    run stops after it without marking it complete; the message says what remains to be done."""


class Stage:
    """Base class for stages: ``Stage(config)``, then ``run(context) -> dict``.

    The dict returned is recorded in the stage's completion marker and is what later
    stages read with ``context.output_of(name)``. Subclasses may define a classmethod
    ``check_config(config, recipe) -> (key_path, message) | None`` for checks that
    need the whole recipe; it runs at validation time, before any work starts, and a
    classmethod ``preflight(config, context)`` for checks against the loaded datasets (camera
    ids, identities shared by two cameras, ...); it runs after the datasets are loaded and
    before the first stage starts, and raises ``UserError`` with the fix.

    ``uses_seed(config) -> bool`` says whether the stage's work depends on the recipe's seed
    (default: it does). A stage that does not, and reads only stages that do not, is hashed
    without the seed, so the repeats of ``keras-reid run --seeds`` share one run of it.
    Evaluating stages define ``reported_models(config) -> list[str]``: the model names they
    write to metrics.json (what a recipe's ``compare:`` may name).

    ``distributed``: the stage trains under the recipe's strategy, so every worker of a
    multi-worker run takes part in it (``train_reid``, ``train_generator``); any other stage
    runs on the chief alone while the other workers wait for it.
    """

    distributed: bool = False

    def __init__(self, config: Any) -> None:
        self.config = config

    @classmethod
    def uses_seed(cls, config: Any) -> bool:
        """Returns True when the stage's outputs depend on the recipe's seed (the default:
        initialisers, data order, noise, subsets drawn with it)."""
        return True

    def run(self, context: StageContext) -> dict:  # pragma: no cover - interface
        raise NotImplementedError
