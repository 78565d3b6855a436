"""A stage's identity covers what it consumed (issue 15, item 1): the completion ids of the
upstream outputs it read, so a change upstream invalidates everything downstream, ``--stage``
never runs a stage on outputs made under another configuration, and ``metrics.json`` holds only
the models of the current evaluation. Tiny fake stages, no TensorFlow."""
import json

import pytest
from pydantic import BaseModel, ConfigDict

from keras_reid import io, runner
from keras_reid.errors import UserError
from keras_reid.recipe import load_recipe, ref
from keras_reid.registry import Registry
from keras_reid.stages.base import COMPLETE_MARKER

CALLS: list[str] = []
TRAINED = {"n": 0}


class TrainCfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: int = 1


class Train:
    """Writes model.txt: its value and a counter of every training in the process (so a retrain
    with the same config still makes a different model, as real training may)."""

    def __init__(self, config):
        self.config = config

    def run(self, ctx):
        CALLS.append(ctx.stage_name)
        TRAINED["n"] += 1
        io.write_text(ctx.stage_dir / "model.txt", f"{self.config.value} {TRAINED['n']}")
        return {"value": self.config.value}


class EvalCfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[str] = ref("stages")


class Eval:
    def __init__(self, config):
        self.config = config

    @classmethod
    def reported_models(cls, config):
        return list(config.models)

    def run(self, ctx):
        CALLS.append(ctx.stage_name)
        models = {}
        for stage in self.config.models:
            ctx.output_of(stage)
            models[stage] = {"model": (ctx.stage_dir_of(stage) / "model.txt").read_text()}
        ctx.record_metrics(models)
        return {"models": models}


@pytest.fixture
def reg():
    r = Registry()
    r._loaded = True
    r.register("stage", "train", config=TrainCfg)(Train)
    r.register("stage", "eval", config=EvalCfg)(Eval)
    return r


RECIPE = ("name: t\nstages:\n  baseline: {type: train}\n  augmented: {type: train, value: 2}\n"
          "  evaluate: {type: eval, models: [baseline, augmented]}\n")


def _run(tmp_path, reg, *overrides, only=None):
    p = tmp_path / "r.yaml"
    p.write_text(RECIPE)
    CALLS.clear()
    lines = []
    rec = load_recipe(p, overrides, registry=reg)
    runner.run(rec, tmp_path / "run", registry=reg, echo=lines.append, only=only)
    return lines


def _metrics(tmp_path):
    return json.loads((tmp_path / "run" / "metrics.json").read_text())["models"]


def _model(tmp_path, stage):
    return (tmp_path / "run" / stage / "model.txt").read_text()


def test_an_upstream_change_reruns_everything_downstream_and_metrics_follow(tmp_path, reg):
    _run(tmp_path, reg)
    _run(tmp_path, reg, "stages.baseline.value=7")
    assert CALLS == ["baseline", "augmented", "evaluate"]   # augmented: it comes after baseline
    assert _metrics(tmp_path)["baseline"]["model"] == _model(tmp_path, "baseline")
    assert _model(tmp_path, "baseline").startswith("7 ")


def test_stage_only_after_an_upstream_change_refuses_in_one_line(tmp_path, reg):
    """``--stage evaluate`` after a --set on a training stage must not evaluate the old model under
    the new configuration: it stops before any work, naming the stage to run first."""
    _run(tmp_path, reg)
    before = (tmp_path / "run" / "metrics.json").read_text()
    # augmented is hashed over every stage before it (a seed-using stage), so it changed too
    with pytest.raises(UserError, match=r"stage 'evaluate' reads stage 'baseline', .*config changed.*"
                       r"--stage baseline --stage augmented --stage evaluate") as err:
        _run(tmp_path, reg, "stages.baseline.value=7", only=["evaluate"])
    assert err.value.exit_code == 2 and "\n" not in str(err.value)
    assert CALLS == [] and (tmp_path / "run" / "metrics.json").read_text() == before
    with pytest.raises(UserError, match=r"reads stage 'augmented', whose config changed"):
        _run(tmp_path, reg, "stages.baseline.value=7", only=["baseline", "evaluate"])
    assert CALLS == []
    # what the message says to do works, and a full run afterwards has nothing stale to skip
    _run(tmp_path, reg, "stages.baseline.value=7", only=["baseline", "augmented", "evaluate"])
    assert CALLS == ["baseline", "augmented", "evaluate"]
    _run(tmp_path, reg, "stages.baseline.value=7")
    assert CALLS == []
    assert _metrics(tmp_path)["baseline"]["model"] == _model(tmp_path, "baseline")


def test_a_rerun_upstream_with_the_same_config_invalidates_downstream(tmp_path, reg):
    """The identity holds the completion id of what was read, not only configs: an upstream stage
    rerun on its own (same config, a different model) makes evaluate run again."""
    _run(tmp_path, reg)
    (tmp_path / "run" / "baseline" / COMPLETE_MARKER).unlink()
    _run(tmp_path, reg, only=["baseline"])
    assert CALLS == ["baseline"]
    steps = {s.name: s.status for s in runner.plan(load_recipe(tmp_path / "r.yaml", registry=reg),
                                                      tmp_path / "run")}
    assert steps == {"baseline": "done", "augmented": "done", "evaluate": "run"}
    _run(tmp_path, reg)
    assert CALLS == ["evaluate"]
    assert _metrics(tmp_path)["baseline"]["model"] == _model(tmp_path, "baseline")


def test_metrics_hold_only_the_models_of_the_current_evaluation(tmp_path, reg):
    _run(tmp_path, reg)
    assert set(_metrics(tmp_path)) == {"baseline", "augmented"}
    _run(tmp_path, reg, "stages.evaluate.models=[augmented]")
    assert CALLS == ["evaluate"]
    assert set(_metrics(tmp_path)) == {"augmented"}


def test_stale_metrics_are_dropped_at_once_when_a_run_stops_before_evaluating(tmp_path, reg):
    """A run killed after retraining baseline must not leave the old baseline's numbers in
    metrics.json: they are dropped when the run starts."""
    _run(tmp_path, reg)
    p = tmp_path / "r.yaml"
    rec = load_recipe(p, ["stages.baseline.value=7"], registry=reg)
    runner.run(rec, tmp_path / "run", registry=reg, echo=lambda s: None, only=["baseline"])
    assert _metrics(tmp_path) == {}


def test_a_folder_completed_before_completion_ids_is_read_and_reused(tmp_path, reg):
    """Markers written before this change (no completion_id / inputs) count as done when their
    upstream completed before them; one whose upstream finished later is rerun."""
    _run(tmp_path, reg)
    run = tmp_path / "run"
    for stage, finished in (("baseline", "2024-01-01T10:00:00"), ("augmented", "2024-01-01T11:00:00"),
                            ("evaluate", "2024-01-01T12:00:00")):
        marker = io.read_json(run / stage / COMPLETE_MARKER)
        marker.pop("completion_id"), marker.pop("inputs")
        marker["finished"] = finished
        io.write_json(run / stage / COMPLETE_MARKER, marker)
    _run(tmp_path, reg)
    assert CALLS == []
    marker = io.read_json(run / "augmented" / COMPLETE_MARKER)
    marker["finished"] = "2024-01-01T13:00:00"   # augmented rerun after evaluate read it
    io.write_json(run / "augmented" / COMPLETE_MARKER, marker)
    _run(tmp_path, reg)
    assert CALLS == ["evaluate"]


def test_repeats_share_a_stage_only_with_the_inputs_it_was_made_from(tmp_path, reg):
    """The repeat runner hard-links stages another repeat completed with the same hash: the
    linked copies keep their completion ids, so what reads them stays done; a donor's stage made
    from another completion of its input is not linked (it would be stale at once)."""
    from keras_reid import repeats

    class SeedFree(Train):
        @classmethod
        def uses_seed(cls, config):
            return False

    class SeedFreeEval(Eval):
        @classmethod
        def uses_seed(cls, config):
            return False

    reg.register("stage", "train_sf", config=TrainCfg)(SeedFree)
    reg.register("stage", "eval_sf", config=EvalCfg)(SeedFreeEval)
    p = tmp_path / "r.yaml"
    p.write_text("name: t\nstages:\n  y: {type: train_sf}\n  x: {type: eval_sf, models: [y]}\n")
    donor = tmp_path / "seed-0"
    runner.run(load_recipe(p, ["seed=0"], registry=reg), donor, registry=reg, echo=lambda s: None)
    rec = load_recipe(p, ["seed=1"], registry=reg)
    assert rec.stage_hash("x") == load_recipe(p, ["seed=0"], registry=reg).stage_hash("x")
    fresh = tmp_path / "seed-1"
    assert repeats.link_shared_stages(rec, fresh, [donor], registry=reg, echo=lambda s: None) == ["y", "x"]
    CALLS.clear()
    runner.run(rec, fresh, registry=reg, echo=lambda s: None)
    assert CALLS == []
    own = tmp_path / "seed-2"           # y made here: the donor's x read another y
    runner.run(load_recipe(p, ["seed=2"], registry=reg), own, registry=reg, echo=lambda s: None,
                 only=["y"])
    assert repeats.link_shared_stages(load_recipe(p, ["seed=2"], registry=reg), own, [donor],
                                      registry=reg, echo=lambda s: None) == []
