"""One worker of the two-process MultiWorkerMirroredStrategy test (run by tests/test_training_loop.py).

Usage: TF_CONFIG=... python multi_worker_train.py OUT_DIR CKPT_DIR EPOCHS STEPS_PER_EPOCH

Creates the strategy first (before any other TensorFlow op), then for each target epoch in
1..EPOCHS builds a FRESH toy classifier (other initial weights), restores the newest checkpoint
from CKPT_DIR and trains it to that epoch with a checkpoint every epoch: every phase after the
first is a resume. Writes ``OUT_DIR/worker<i>-epoch<e>.npz`` per phase (weights, optimizer
iterations, resumed-from epoch, history). One process per worker keeps TensorFlow start-up
costs down.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tensorflow as tf  # noqa: E402

from keras_reid.distribute import StrategyConfig, is_chief, make_strategy, worker_index  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(1)  # two workers share a small machine
tf.config.threading.set_inter_op_parallelism_threads(2)
strategy = make_strategy(StrategyConfig(type="multi_worker"))  # before any other TF op

import numpy as np  # noqa: E402

from keras_reid.training.checkpoint import EpochCheckpoint, restore_latest  # noqa: E402
from keras_reid.training.loop import train  # noqa: E402
from toy_training import dataset_fn, make_model  # noqa: E402


def main() -> None:
    out_dir, ckpt_dir, epochs, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    index = worker_index(strategy)
    for target in range(1, epochs + 1):
        # fresh weights (seed 0 as the reference run, then others): a resume must restore them
        model = make_model(strategy, seed=0 if target == 1 else 100 + target)
        initial_epoch = restore_latest(model, ckpt_dir)
        history = train(model, dataset_fn, strategy=strategy, epochs=target, steps_per_epoch=steps,
                        initial_epoch=initial_epoch,
                        callbacks=[EpochCheckpoint(ckpt_dir, max_to_keep=2)], verbose=0)
        np.savez(os.path.join(out_dir, f"worker{index}-epoch{target}.npz"),
                 *model.get_weights(),
                 iterations=int(model.optimizer.iterations.numpy()),
                 initial_epoch=initial_epoch,
                 chief=is_chief(strategy),
                 replicas=strategy.num_replicas_in_sync,
                 history=json.dumps(history))


if __name__ == "__main__":
    main()
