"""The stage runner: run folder, completion markers, skip, resume, stale outputs moved aside."""
import json

import pytest
from pydantic import BaseModel, ConfigDict

from keras_reid import runner
from keras_reid.recipe import load_recipe
from keras_reid.registry import Registry

CALLS = []


class CountCfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: int = 1
    fail_at: int | None = None


class CountStage:
    def __init__(self, config):
        self.config = config

    def run(self, ctx):
        CALLS.append(ctx.stage_name)
        done = ctx.stage_dir / "progress.txt"
        start = int(done.read_text()) if done.exists() else 0
        for i in range(start, 3):
            if self.config.fail_at is not None and i == self.config.fail_at:
                raise KeyboardInterrupt("simulated interruption")
            done.write_text(str(i + 1))
        ctx.record_metrics({ctx.stage_name: {"value": self.config.value}})
        return {"value": self.config.value, "resumed_from": start}


@pytest.fixture
def reg():
    r = Registry()
    r._loaded = True
    r.register("stage", "count", config=CountCfg)(CountStage)
    return r


def recipe(tmp_path, reg, *overrides):
    p = tmp_path / "r.yaml"
    p.write_text("name: t\nstages:\n  a: {type: count}\n  b: {type: count, value: 2}\n")
    return load_recipe(p, overrides, registry=reg)


def test_run_writes_folder_and_skips_done_stages(tmp_path, reg):
    CALLS.clear()
    run_dir = tmp_path / "run"
    out = runner.run(recipe(tmp_path, reg), run_dir, registry=reg, echo=lambda s: None)
    assert out["b"]["value"] == 2 and CALLS == ["a", "b"]
    assert (run_dir / "recipe.resolved.yaml").read_text().startswith("name: t")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["models"] == {"a": {"value": 1}, "b": {"value": 2}}
    marker = json.loads((run_dir / "a" / ".complete.json").read_text())
    assert marker["summary"]["value"] == 1
    CALLS.clear()
    runner.run(recipe(tmp_path, reg), run_dir, registry=reg, echo=lambda s: None)
    assert CALLS == []
    # changing b re-runs b only; its old outputs are moved aside, not deleted
    runner.run(recipe(tmp_path, reg, "stages.b.value=5"), run_dir, registry=reg, echo=lambda s: None)
    assert CALLS == ["b"]
    assert list(run_dir.glob("b.stale-*/progress.txt"))


def test_interrupted_stage_resumes(tmp_path, reg):
    CALLS.clear()
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        runner.run(recipe(tmp_path, reg, "stages.b.fail_at=1"), run_dir, registry=reg, echo=lambda s: None)
    assert not (run_dir / "b" / ".complete.json").exists()
    assert (run_dir / "b" / "progress.txt").read_text() == "1"
    steps = {s.name: s.status for s in runner.plan(recipe(tmp_path, reg, "stages.b.fail_at=1"), run_dir)}
    assert steps == {"a": "done", "b": "resume"}
    # same config, no failure this time (fail_at only triggers at i == 1; resume starts at 1)
    r = recipe(tmp_path, reg, "stages.b.fail_at=1")
    r.stage_configs["b"] = CountCfg(value=2)  # same hash, interruption gone
    out = runner.run(r, run_dir, registry=reg, echo=lambda s: None)
    assert out["b"]["resumed_from"] == 1


def test_one_process_owns_a_run_folder_and_a_killed_owner_leaves_no_lock(tmp_path, reg):
    """A second run into a folder in use stops at once naming the owner; SIGKILL of the owner
    frees it (the OS drops the flock) and the next run removes the killed run's temporary files."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from keras_reid.errors import UserError

    run_dir = tmp_path / "run"
    (run_dir / "a").mkdir(parents=True)
    (run_dir / "a" / ".tmp-model.keras-abc.keras").write_text("half-written")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from keras_reid import runlock\n"
        f"with runlock.hold({str(run_dir)!r}):\n"
        "    print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert not (run_dir / "a" / ".tmp-model.keras-abc.keras").exists()   # cleaned by the owner
        (run_dir / "a" / ".tmp-other.json-x.json").write_text("{")          # the owner's own write
        with pytest.raises(UserError, match=f"in use by process {holder.pid} .*another --run-dir"):
            runner.run(recipe(tmp_path, reg), run_dir, registry=reg, echo=lambda s: None)
        assert not (run_dir / "a" / ".complete.json").exists()
        assert (run_dir / "a" / ".tmp-other.json-x.json").exists()          # not touched by the loser
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    out = runner.run(recipe(tmp_path, reg), run_dir, registry=reg, echo=lambda s: None)
    assert out["b"]["value"] == 2
    assert not list(run_dir.rglob(".tmp-*"))
