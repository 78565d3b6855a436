"""`keras-reid run` with strategy multi_worker: two local worker processes (TF_CONFIG) run a whole
recipe through the CLI, give the model one process gives, only the chief writes the run folder,
a worker killed mid-run fails the others with one line, and a rerun resumes (issue 15, item 8)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keras_reid import testing

# lr 0.02: at 0.05 this tiny net trains chaotically enough that on an AVX-512 host (Zen 4) the
# two processes' synchronised BatchNorm moments (E[x^2] - E[x]^2, all-reduced) and one process's
# two-pass moments, 8e-5 apart after epoch 1, ended epoch 2 0.04 apart with no worker killed; at
# 0.02 they end 8e-7 apart, and a wrong split of the data stream (every worker reading shard 0)
# ends 0.18 apart, so the comparison below still catches what it is for.
STAGES = {
    "train": {"type": "train_reid", "dataset": "synth", "image_size": [32, 16], "backbone": {"type": "tiny"},
              "loss": {"type": "softmax"},
              "optimizer": {"type": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 0.0},
              "schedule": {"type": "step", "milestones": [100]}, "sampler": "random", "batch_size": 8,
              "epochs": 2, "bn_recalibration_batches": 2},
    "evaluate": {"type": "evaluate", "dataset": "synth", "models": ["train"]},
}


def _cli(recipe: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "keras_reid.cli", "run", str(recipe), "--run-dir", str(run_dir)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_data):
    tmp = tmp_path_factory.mktemp("mw")
    data = synthetic_data(ids=16, cameras=2, size=(128, 64), images_per_id_camera=2, seed=0)
    recipes = {strategy: testing.write_recipe(tmp / f"{strategy}.yaml", name="mw", stages=STAGES,
                                              strategy={"type": strategy}, datasets={"synth": data.spec})
               for strategy in ("one_device", "multi_worker")}
    return tmp, recipes


def _workers(recipe: Path, run_dir: Path, logs: Path, kill_worker1_at: str | None = None):
    """Start two local workers; returns their (exit code, output) after both end."""
    return testing.run_workers(_cli(recipe, run_dir), logs, env=lambda index: {
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "KERAS_REID_TEST_KILL_AT": kill_worker1_at if index == 1 and kill_worker1_at else None})


def _weights(path: Path) -> list[np.ndarray]:
    import keras

    return keras.saving.load_model(path, compile=False).get_weights()


def _files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
            if "tensorboard" not in p.parts and p.name not in (".lock",)}


@pytest.mark.slow
def test_two_workers_through_the_cli_kill_resume_and_match_one_process(setup):
    tmp, recipes = setup
    single = tmp / "single"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    done = subprocess.run(_cli(recipes["one_device"], single), env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    run_dir = tmp / "run"
    # worker 1 dies (SIGKILL) right after the checkpoint of epoch 1: worker 0 fails with one line
    (tmp / "logs1").mkdir()
    (c0, out0), (c1, out1) = _workers(recipes["multi_worker"], run_dir, tmp / "logs1", "train:1")
    assert c1 == -9, out1[-2000:]
    assert c0 == 1, out0[-3000:]
    errors = [line for line in out0.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "lost a worker" in errors[0] and "resumes" in errors[0], out0[-3000:]
    assert "Traceback" not in out0
    assert not (run_dir / "train" / ".complete.json").exists()

    # both again: the run resumes from the epoch-1 checkpoint and completes on both workers
    (tmp / "logs2").mkdir()
    (c0, out0), (c1, out1) = _workers(recipes["multi_worker"], run_dir, tmp / "logs2")
    assert (c0, c1) == (0, 0), out0[-3000:] + out1[-3000:]
    assert "resuming from the checkpoint of epoch 1" in out0
    assert "worker 1: [2/2] evaluate (evaluate): the chief runs it; waiting" in out1
    assert out1.strip().splitlines()[-1].startswith("done: this worker's part of the run")
    assert "model" in out0 and "chance" in out0          # the chief prints the table

    # the same model as one process (synchronised BatchNorm, one global data stream)
    for a, b in zip(_weights(run_dir / "train" / "model.keras"), _weights(single / "train" / "model.keras")):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-3)
    m_run = json.loads((run_dir / "metrics.json").read_text())["models"]["train"]
    m_single = json.loads((single / "metrics.json").read_text())["models"]["train"]
    assert abs(m_run["mAP"] - m_single["mAP"]) < 0.01
    # only the chief wrote: the same files as the one-process run, no worker scratch left
    assert _files(run_dir) == _files(single)
