"""Repeated runs (--seeds, --sweep): expansion and validation before any work, one resumable run
folder per repeat, stages shared between repeats, the aggregate metrics.json (mean, std, paired
differences with standard errors) checked against the per-repeat files, and the Ray engine."""
import json
import math
import os

import numpy as np
import pytest
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict

from keras_reid import repeats, testing
from keras_reid.cli import main
from keras_reid.errors import RecipeError
from keras_reid.recipe import load_recipe, ref
from keras_reid.registry import Registry

# ---------------------------------------------------------------------------- tiny stages (no TF)
CALLS = []
FAIL_SEEDS = set()


class CountCfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: int = 1
    after: str | None = ref("stages", None)
    report: str | None = None


class CountStage:
    """Three steps with a progress file (resumable); fails at step 1 for a seed in FAIL_SEEDS;
    records ``value + seed`` as its model's metric (the model: ``report`` or the stage name)."""

    def __init__(self, config):
        self.config = config

    @classmethod
    def reported_models(cls, config):
        return [config.report] if config.report else []

    def run(self, ctx):
        CALLS.append((ctx.run_dir.name, ctx.stage_name))
        done = ctx.stage_dir / "progress.txt"
        start = int(done.read_text()) if done.exists() else 0
        for i in range(start, 3):
            if i == 1 and ctx.seed in FAIL_SEEDS:
                raise RuntimeError("simulated crash")
            done.write_text(str(i + 1))
        ctx.record_metrics({self.config.report or ctx.stage_name: {"value": self.config.value + ctx.seed}})
        return {"resumed_from": start}


class SeedFreeStage(CountStage):
    @classmethod
    def uses_seed(cls, config):
        return False

    def run(self, ctx):
        CALLS.append((ctx.run_dir.name, ctx.stage_name))
        (ctx.stage_dir / "out.txt").write_text(str(self.config.value))
        ctx.record_metrics({ctx.stage_name: {"value": self.config.value}})
        return {}


@pytest.fixture
def reg():
    r = Registry()
    r._loaded = True
    r.register("stage", "count", config=CountCfg)(CountStage)
    r.register("stage", "free", config=CountCfg)(SeedFreeStage)
    CALLS.clear()
    FAIL_SEEDS.clear()
    yield r
    FAIL_SEEDS.clear()


def _write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------- aggregation units
def test_aggregate_means_sample_std_per_seed_and_nesting():
    runs = [{"models": {"a": {"mAP": 0.2, "rank1": 0.5, "rerank": {"mAP": 0.3}, "note": "x"},
                        "b": {"mAP": 0.1, "rank1": 0.25}}},
            {"models": {"a": {"mAP": 0.4, "rank1": 0.7, "rerank": {"mAP": 0.5}, "note": "x"},
                        "b": {"mAP": 0.1, "rank1": 0.5}}},
            {"models": {"a": {"mAP": 0.3, "rank1": 0.9, "rerank": {"mAP": 0.1}, "note": "x"}}}]
    agg = repeats.aggregate(runs, [("a", "b")])
    a, b = agg["models"]["a"], agg["models"]["b"]
    assert a["mAP"] == pytest.approx(0.3) and a["mAP_std"] == pytest.approx(0.1)
    assert a["rank1_std"] == pytest.approx(np.std([0.5, 0.7, 0.9], ddof=1))
    assert a["per_seed"]["mAP"] == [0.2, 0.4, 0.3] and a["n"] == 3 and a["note"] == "x"
    assert a["rerank"]["mAP"] == pytest.approx(0.3) and a["rerank"]["per_seed"]["mAP"] == [0.3, 0.5, 0.1]
    # b is missing from the third repeat: aggregated over the two that have it
    assert b["n"] == 2 and b["per_seed"]["mAP"] == [0.1, 0.1, None] and b["mAP_std"] == 0.0
    diff = agg["comparisons"]["a-b"]["mAP"]
    assert diff["n"] == 2 and diff["per_seed"][2] is None
    assert diff["per_seed"][:2] == pytest.approx([0.1, 0.3])
    assert diff["mean"] == pytest.approx(0.2)
    assert diff["se"] == pytest.approx(np.std([0.1, 0.3], ddof=1) / math.sqrt(2))
    assert "chance" not in agg


def test_aggregate_of_one_repeat_has_no_spread_and_chance_is_carried():
    agg = repeats.aggregate([{"models": {"a": {"mAP": 0.2}, "b": {"mAP": 0.1}}, "chance": {"rank1": 0.01}}],
                            [("a", "b")])
    assert agg["models"]["a"]["mAP"] == 0.2 and agg["models"]["a"]["mAP_std"] is None
    diff = agg["comparisons"]["a-b"]["mAP"]
    assert diff["mean"] == pytest.approx(0.1) and diff["se"] is None and diff["n"] == 1
    assert agg["chance"] == {"rank1": 0.01}
    # a chance level that differs between repeats (a sweep over the test set) is aggregated
    agg = repeats.aggregate([{"models": {}, "chance": {"rank1": 0.1}}, {"models": {}, "chance": {"rank1": 0.3}}])
    assert agg["chance"]["rank1"] == pytest.approx(0.2) and agg["chance"]["per_seed"]["rank1"] == [0.1, 0.3]
    assert repeats.single_run_comparison_lines({"models": {"a": {"mAP": 0.2}, "b": {"mAP": 0.1}}},
                                               [("a", "b")])[-1] == "  a - b: mAP +10.00 (n=1)"


def test_parse_seeds_and_sweeps():
    assert repeats.parse_seeds("0,1,2") == [0, 1, 2]
    assert repeats.parse_sweep("stages.t.image_size=[64,32],[128,64]") == (
        "stages.t.image_size", ("stages", "t", "image_size"), [[64, 32], [128, 64]])
    for bad in ("0,x", "1,1"):
        with pytest.raises(RecipeError, match="--seeds"):
            repeats.parse_seeds(bad)
    for bad in ("stages.t.epochs", "stages.t.epochs=", "seed=1,2", "stages..a=1", "stages.t.epochs=1,1"):
        with pytest.raises(RecipeError, match="--sweep"):
            repeats.parse_sweep(bad)


# ---------------------------------------------------------------------------- the hash rule
def test_a_seed_free_stage_is_hashed_without_the_seed_and_what_it_does_not_read(tmp_path, reg):
    path = _write(tmp_path, "name: t\nstages:\n  dep: {type: count}\n  free: {type: free}\n"
                            "  free_after: {type: free, after: dep}\n  last: {type: count}\n")
    r0, r1 = (load_recipe(path, [f"seed={s}"], registry=reg) for s in (0, 1))
    assert r0.stage_hash("free") == r1.stage_hash("free")          # after a seed-dependent stage
    assert r0.seed_free("free") and not r0.seed_free("free_after")  # reads a seed-dependent one
    for name in ("dep", "free_after", "last"):
        assert r0.stage_hash(name) != r1.stage_hash(name)
    changed = load_recipe(path, ["seed=0", "stages.dep.value=5"], registry=reg)
    assert changed.stage_hash("free") == r0.stage_hash("free")     # it does not read dep
    assert changed.stage_hash("last") != r0.stage_hash("last")


def test_builtin_stages_use_the_seed_except_canonical_poses_with_its_own(tmp_path):
    path = _write(tmp_path, """
name: t
datasets: {d: {type: synthetic, root: unused, ids: 4}}
stages:
  poses: {type: canonical_poses, dataset: d, pose: {type: synthetic}, seed: 0}
  poses_recipe_seed: {type: canonical_poses, dataset: d, pose: {type: synthetic}}
  train: {type: train_reid, dataset: d, backbone: {type: tiny}}
  evaluate: {type: evaluate, dataset: d, models: [train]}
""")
    r0, r1 = (load_recipe(path, [f"seed={s}"]) for s in (0, 1))
    assert r0.stage_hash("poses") == r1.stage_hash("poses")
    for name in ("poses_recipe_seed", "train", "evaluate"):
        assert r0.stage_hash(name) != r1.stage_hash(name)


# ---------------------------------------------------------------------------- running (tiny stages)
def test_interrupted_repeat_resumes_and_complete_ones_are_skipped(tmp_path, reg):
    path = _write(tmp_path, "name: t\nstages:\n  a: {type: count}\n  b: {type: count, value: 10}\n")
    out = tmp_path / "out"

    def plan():
        return repeats.expand(path, seeds=[0, 1], run_dir=out, registry=reg)

    FAIL_SEEDS.add(1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        repeats.run_repeats(plan(), registry=reg, echo=lambda s: None)
    assert CALLS == [("seed-0", "a"), ("seed-0", "b"), ("seed-1", "a")]
    assert (out / "seed-0" / "b" / ".complete.json").exists()
    assert (out / "seed-1" / "a" / "progress.txt").read_text() == "1"
    assert not (out / "seed-1" / "a" / ".complete.json").exists()
    assert not (out / "metrics.json").exists()
    FAIL_SEEDS.clear()
    CALLS.clear()
    lines = []
    agg = repeats.run_repeats(plan(), registry=reg, echo=lines.append)
    assert CALLS == [("seed-1", "a"), ("seed-1", "b")]          # seed-0 untouched
    assert any("'seed-0'" in line and "skipped" in line for line in lines)
    marker = json.loads((out / "seed-1" / "a" / ".complete.json").read_text())
    assert marker["summary"]["resumed_from"] == 1               # resumed, not restarted
    assert agg["models"]["b"]["per_seed"]["value"] == [10, 11]
    assert json.loads((out / "metrics.json").read_text())["models"] == agg["models"]
    assert [r["folder"] for r in agg["repeats"]] == ["seed-0", "seed-1"]


def test_seed_free_and_unswept_stages_run_once_and_are_shared(tmp_path, reg):
    path = _write(tmp_path, "name: t\nstages:\n  dep: {type: count, report: dep}\n  free: {type: free, value: 7}\n"
                            "  last: {type: count, report: last}\ncompare: [[last, dep]]\n")
    plan = repeats.expand(path, seeds=[0, 1], sweeps=["stages.last.value=1,3"], run_dir=tmp_path / "o",
                          registry=reg)
    assert [r.label for r in plan.repeats] == ["value-1/seed-0", "value-1/seed-1", "value-3/seed-0",
                                               "value-3/seed-1"]
    dry = "\n".join(repeats.describe_lines(plan))
    assert "share from value-1/seed-0" in dry and not (tmp_path / "o").exists()
    agg = repeats.run_repeats(plan, registry=reg, echo=lambda s: None)
    # free once; dep once per seed (the sweep changes only the stage after it); last every time
    assert sorted(CALLS) == sorted([("seed-0", "dep"), ("seed-0", "free"), ("seed-0", "last"),
                                    ("seed-1", "dep"), ("seed-1", "last"),
                                    ("seed-0", "last"), ("seed-1", "last")])
    shared = tmp_path / "o" / "value-3" / "seed-1"
    marker = json.loads((shared / "free" / ".complete.json").read_text())
    assert marker["shared_from"] == os.path.join("..", "..", "value-1", "seed-0", "free")
    donor = tmp_path / "o" / "value-1" / "seed-0" / "free" / "out.txt"
    assert os.path.samefile(shared / "free" / "out.txt", donor)     # hard-linked, not recomputed
    # what the shared stages recorded reaches the repeat's metrics.json, hence the aggregate
    assert agg["models"]["free"]["per_seed"]["value"] == [7, 7, 7, 7]
    assert agg["models"]["dep"]["per_seed"]["value"] == [1, 2, 1, 2]
    assert agg["comparisons"]["last-dep"]["value"]["per_seed"] == [0, 0, 2, 2]
    assert agg["sweep"] == {"stages.last.value": [1, 3]}
    assert agg["repeats"][3] == {"folder": "value-3/seed-1", "seed": 1,
                                 "sweep": {"stages.last.value": 3}, "metrics": True}


# ---------------------------------------------------------------------------- a tiny real run
BASE = {"type": "train_reid", "dataset": "synth", "image_size": [64, 32],
        "backbone": {"type": "tiny", "width": 8, "blocks": 2, "embedding_dim": 16},
        "loss": {"type": "softmax_triplet"}, "optimizer": {"type": "adam", "lr": 0.001}, "batch_size": 12,
        "instances_per_id": 2, "epochs": 1, "bn_recalibration_batches": 2, "verbose": 0}
DATA = dict(testing.SYNTHETIC_DEFAULTS, images_per_id_camera=3)  # ids 12, cameras 3, 64x32, seed 1


def _real_recipe(tmp_path, root, two_models=True, compare=("wide", "base")):
    stages = {"poses": {"type": "canonical_poses", "dataset": "synth", "pose": {"type": "synthetic"},
                        "image_size": [64, 32], "k": 2, "restarts": 2, "seed": 0},
              "base": BASE}
    if two_models:
        stages["wide"] = dict(BASE, backbone={"type": "tiny", "width": 12, "blocks": 2, "embedding_dim": 16})
    stages["evaluate"] = {"type": "evaluate", "dataset": "synth", "models": list(stages)[1:],
                          "ranked_lists": 0, "projector_samples": 0}
    return testing.write_recipe(tmp_path / "rep.yaml", name="rep", stages=stages,
                                datasets={"synth": testing.SyntheticData(root, DATA).spec},
                                **({"compare": [list(compare)]} if two_models else {}))


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def real(tmp_path_factory, synthetic_data):
    """One 2-seed run of two tiny models through the CLI, reused by the tests below."""
    tmp = tmp_path_factory.mktemp("repeats")
    root = synthetic_data(**DATA).root
    recipe = _real_recipe(tmp, root)
    out = tmp / "runs"
    res = _invoke("run", recipe, "--seeds", "0,1", "--run-dir", out)
    assert res.exit_code == 0, res.output
    return {"recipe": recipe, "out": out, "output": res.output, "root": root}


def test_aggregate_matches_a_recomputation_from_the_per_seed_files(real):
    out = real["out"]
    agg = json.loads((out / "metrics.json").read_text())
    per = [json.loads((out / f"seed-{s}" / "metrics.json").read_text())["models"] for s in (0, 1)]
    assert agg["seeds"] == [0, 1] and [r["folder"] for r in agg["repeats"]] == ["seed-0", "seed-1"]
    for model in ("base", "wide"):
        entry = agg["models"][model]
        for metric in ("mAP", "rank1", "rank5", "mINP", "valid_queries"):
            values = [p[model][metric] for p in per]
            assert entry["per_seed"][metric] == values
            assert entry[metric] == pytest.approx(np.mean(values))
            assert entry[f"{metric}_std"] == pytest.approx(np.std(values, ddof=1))
    assert per[0]["base"]["mAP"] != per[1]["base"]["mAP"]  # the seed reached the training
    for metric in ("mAP", "rank1", "mINP"):
        d = np.array([p["wide"][metric] - p["base"][metric] for p in per])
        diff = agg["comparisons"]["wide-base"][metric]
        assert diff["per_seed"] == pytest.approx(list(d)) and diff["n"] == 2
        assert diff["mean"] == pytest.approx(d.mean())
        assert diff["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(2))
    # the printed table: mean +- std per model, then the paired difference with its SE
    mean, std = agg["models"]["base"]["mAP"], agg["models"]["base"]["mAP_std"]
    assert f"{100 * mean:.2f} +- {100 * std:.2f}" in real["output"]
    d = agg["comparisons"]["wide-base"]["mAP"]
    assert f"wide - base: mAP {100 * d['mean']:+.2f} +- {100 * d['se']:.2f}" in real["output"]


def test_each_repeat_is_an_ordinary_run_with_its_own_tensorboard_and_shares_seed_free_stages(real):
    out = real["out"]
    assert json.loads((out / repeats.REPEATS_MARKER).read_text())["seeds"] == [0, 1]
    for s in (0, 1):
        run = out / f"seed-{s}"
        assert f"seed: {s}" in (run / "recipe.resolved.yaml").read_text()
        # tensorboard --logdir <out> finds one run per repeat and stage
        assert list((run / "tensorboard" / "base").glob("events.out.tfevents*"))
        assert list((run / "tensorboard" / "evaluate").rglob("events.out.tfevents*"))
    poses = json.loads((out / "seed-1" / "poses" / ".complete.json").read_text())
    assert poses["shared_from"] == os.path.join("..", "seed-0", "poses")
    assert os.path.samefile(out / "seed-1" / "poses" / "canonical_poses.json",
                            out / "seed-0" / "poses" / "canonical_poses.json")
    assert "shared_from" not in json.loads((out / "seed-1" / "base" / ".complete.json").read_text())


def test_rerun_skips_complete_repeats_and_a_single_run_cannot_reuse_the_folder(real):
    before = (real["out"] / "seed-0" / "base" / ".complete.json").read_text()
    res = _invoke("run", real["recipe"], "--seeds", "0,1", "--run-dir", real["out"])
    assert res.exit_code == 0, res.output
    assert res.output.count("every stage done before with the same config, skipped") == 2
    assert (real["out"] / "seed-0" / "base" / ".complete.json").read_text() == before
    res = _invoke("run", real["recipe"], "--run-dir", real["out"])
    assert res.exit_code == 2 and "holds repeated runs" in res.output


@pytest.mark.parametrize("sweep, message", [
    ("stages.bse.epochs=1,2", "stages.bse is not in the recipe; did you mean 'base'?"),
    ("stages.base.epoch=1,2", "did you mean 'epochs'?"),
    ("stages.base.epochs=1,-2", "--sweep stages.base.epochs=-2: stages.base.epochs: got -2"),
])
def test_bad_sweep_is_a_recipe_error_before_any_work(tmp_path, sweep, message):
    recipe = _real_recipe(tmp_path, tmp_path / "data")
    res = _invoke("run", recipe, "--seeds", "0,1", "--sweep", sweep, "--run-dir", tmp_path / "out")
    assert res.exit_code == 2
    errors = [line for line in res.output.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and message in errors[0], res.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


def test_bad_compare_name_is_a_recipe_error_with_did_you_mean(tmp_path):
    recipe = _real_recipe(tmp_path, tmp_path / "data")
    res = _invoke("validate", recipe, "--set", "compare=[[wide,bsae]]")
    assert res.exit_code == 2
    assert res.output.startswith("error: --set compare=[[wide,bsae]]: compare[0][1]: 'bsae' is not a "
                                 "model an evaluate stage reports; did you mean 'base'?")
    with pytest.raises(RecipeError, match=r"rep.yaml:\d+: compare\[0\]: compares 'base' with itself"):
        load_recipe(_real_recipe(tmp_path, tmp_path / "data", compare=("base", "base")))


def test_options_that_make_no_sense_with_repeats_are_rejected(tmp_path):
    recipe = _real_recipe(tmp_path, tmp_path / "data")
    for args, message in ((["--seeds", "0,1", "--shard", "0/2"], "--shard"),
                          (["--engine", "ray"], "add --seeds and/or --sweep")):
        res = _invoke("run", recipe, "--run-dir", tmp_path / "out", *args)
        assert res.exit_code == 2 and message in res.output
    assert not (tmp_path / "out").exists()


def test_ray_engine_without_ray_is_one_line_naming_the_extra(tmp_path, reg, monkeypatch):
    import sys

    from keras_reid.errors import UserError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    path = _write(tmp_path, "name: t\nstages:\n  a: {type: count}\n")
    plan = repeats.expand(path, seeds=[0, 1], run_dir=tmp_path / "out", registry=reg)
    with pytest.raises(UserError, match=r"pip install 'keras-reid\[ray\]'"):
        repeats.run_repeats(plan, engine="ray", registry=reg, echo=lambda s: None)
    assert not (tmp_path / "out").exists() and CALLS == []


@pytest.mark.slow
def test_ray_engine_runs_the_repeats_as_tasks(tmp_path, real):
    ray = pytest.importorskip("ray")
    recipe = _real_recipe(tmp_path, real["root"], two_models=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        plan = repeats.expand(recipe, seeds=[0, 1], run_dir=tmp_path / "out")
        lines = []
        agg = repeats.run_repeats(plan, engine="ray", echo=lines.append)
    finally:
        ray.shutdown()
    assert any("stages shared with later repeats first: poses" in line for line in lines)
    per = [json.loads((tmp_path / "out" / f"seed-{s}" / "metrics.json").read_text())["models"]["base"]
           for s in (0, 1)]
    assert agg["models"]["base"]["per_seed"]["mAP"] == [p["mAP"] for p in per]
    assert agg["models"]["base"]["mAP"] == pytest.approx(np.mean([p["mAP"] for p in per]))
    marker = json.loads((tmp_path / "out" / "seed-1" / "poses" / ".complete.json").read_text())
    assert marker["shared_from"] == os.path.join("..", "seed-0", "poses")
