"""The recipe's ``precision`` (float32 | mixed_float16 | mixed_bfloat16): validation, stage
identity, and training stages that run under it and restore the previous Keras policy.

One tiny run (module fixture) trains a pix2pix Model 4 and a tiny re-ID model under the recipe's
mixed_bfloat16 and a second re-ID model whose own ``precision: mixed_float16`` overrides it; a
spy on the core loop records what each stage trained with.
"""
import json
import math
import re

import keras
import numpy as np
import pytest

from keras_reid import runner, testing
from keras_reid.errors import RecipeError
from keras_reid.training.precision import PRECISIONS, precision_policy

REID = {"type": "train_reid", "dataset": "synth", "image_size": [32, 16],
        "backbone": {"type": "tiny", "width": 4, "blocks": 2, "embedding_dim": 8},
        "optimizer": {"type": "adam", "lr": 0.001}, "batch_size": 8, "instances_per_id": 2, "epochs": 1,
        "bn_recalibration_batches": 0, "augment": [], "verbose": 0}
STAGES = {
    "gan": {"type": "train_generator", "dataset": "synth", "source_camera": 1, "target_camera": 2,
            "generator": {"type": "pix2pix", "variant": "model4", "filters": 4, "max_filters": 8},
            "masker": {"type": "synthetic"}, "image_size": [32, 16], "targets_per_source": 1,
            "batch_size": 4, "epochs": 1, "steps_per_epoch": 2, "sample_every": 100, "verbose": 0},
    "reid_bf16": REID,
    "reid_f16": dict(REID, precision="mixed_float16"),
}
DATA = {"ids": 8, "cameras": 3, "size": (64, 32), "seed": 1, "images_per_id_camera": 2}


def _recipe(tmp_path, root="data", precision="mixed_bfloat16", overrides=()):
    """The recipe with the top-level ``precision`` (None: not written)."""
    return testing.build_recipe(tmp_path, name="precision", stages=STAGES, overrides=overrides,
                                datasets={"synth": testing.SyntheticData(root, DATA).spec},
                                **({"precision": precision} if precision else {}))


def _dtype(x) -> str:
    return keras.backend.standardize_dtype(x.dtype)


# ------------------------------------------------------------------------------ policy


def test_precision_policy_sets_and_restores_the_global_policy():
    assert keras.mixed_precision.global_policy().name == "float32"
    with precision_policy("mixed_bfloat16") as name:
        assert name == "mixed_bfloat16"
        assert keras.mixed_precision.global_policy().compute_dtype == "bfloat16"
        assert keras.layers.Dense(2).compute_dtype == "bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(RuntimeError):
        with precision_policy("mixed_float16"):
            raise RuntimeError("a stage failed")
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(ValueError, match="mixed_bfloat16"):
        with precision_policy("bfloat16"):
            pass
    assert PRECISIONS == ("float32", "mixed_float16", "mixed_bfloat16")


# ------------------------------------------------------------------------------ recipe


@pytest.mark.parametrize("override, message", [
    ("precision=mixed_foat16", re.escape(
        "precision: got 'mixed_foat16', expected one of 'float32', 'mixed_float16' or "
        "'mixed_bfloat16' (the recipe); did you mean 'mixed_float16'?")),
    ("stages.gan.precision=bfloat16", "stages.gan.precision: got 'bfloat16'.*did you mean "
                                      "'mixed_bfloat16'\\?"),
    ("stages.reid_f16.precision=fp16", "stages.reid_f16.precision: got 'fp16', expected one of"),
])
def test_a_bad_precision_is_one_line_with_a_suggestion(tmp_path, override, message):
    with pytest.raises(RecipeError, match=message) as err:
        _recipe(tmp_path, overrides=[override])
    assert "\n" not in str(err.value) and str(err.value).startswith("--set ")


def test_precision_is_part_of_every_stage_identity(tmp_path):
    base = _recipe(tmp_path, precision=None)
    explicit = _recipe(tmp_path, precision="float32")
    bf16 = _recipe(tmp_path)
    assert base.model.precision == "float32" and bf16.model.precision == "mixed_bfloat16"
    stages = list(base.model.stages)
    # float32 written out or left out is the same identity (run folders of earlier versions too)
    assert [base.stage_hash(s) for s in stages] == [explicit.stage_hash(s) for s in stages]
    assert all(base.stage_hash(s) != bf16.stage_hash(s) for s in stages)
    # a stage's own precision: that stage and the stages after it change, not those before
    own = _recipe(tmp_path, precision=None, overrides=["stages.reid_bf16.precision=mixed_float16"])
    assert own.stage_hash("gan") == base.stage_hash("gan")
    assert own.stage_hash("reid_bf16") != base.stage_hash("reid_bf16")
    assert own.stage_hash("reid_f16") != base.stage_hash("reid_f16")


# ------------------------------------------------------------------------------ training stages


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_data):
    """Runs the recipe once; returns (run_dir, results, {stage: what the loop saw})."""
    import keras_reid.training.loop as loop

    base = tmp_path_factory.mktemp("precision")
    rec = _recipe(base, root=synthetic_data(**DATA).root)
    seen: dict[str, dict] = {}
    original = loop.train

    def spy(model, *args, **kwargs):
        history = original(model, *args, **kwargs)
        if hasattr(model, "backbone"):  # ReIDModel
            outputs = {k: _dtype(v) for k, v in model.backbone.output.items()}
            compute = {layer.compute_dtype for layer in model.backbone.layers
                       if isinstance(layer, keras.layers.Conv2D)}
        else:  # a GAN
            outputs = {"generator": _dtype(model.generator.output),
                       "discriminator": _dtype(model.discriminator.output)}
            compute = {layer.compute_dtype for layer in model.generator.layers
                       if isinstance(layer, keras.layers.Conv2D)}
        seen[model.name] = {
            "policy": keras.mixed_precision.global_policy().name,
            "optimizers": {name: type(opt).__name__
                           for name, opt in loop.model_optimizers(model, built_only=True).items()},
            "loss_scale": [float(opt.dynamic_scale.numpy())
                           for opt in loop.model_optimizers(model, built_only=True).values()
                           if isinstance(opt, keras.optimizers.LossScaleOptimizer)],
            "outputs": outputs, "compute": compute, "history": history,
            "variables": {_dtype(v) for v in model.trainable_variables},
        }
        return history

    mp = pytest.MonkeyPatch()
    mp.setattr(loop, "train", spy)
    try:
        results = runner.run(rec, base / "run", echo=lambda *_: None)
    finally:
        mp.undo()
    return base / "run", results, seen


def _by_kind(seen):
    gan = next(v for k, v in seen.items() if k.startswith("pix2pix"))
    reid = [v for k, v in seen.items() if not k.startswith("pix2pix")]
    return gan, reid


def test_each_training_stage_trains_under_its_precision_and_restores_float32(trained):
    run_dir, results, seen = trained
    assert keras.mixed_precision.global_policy().name == "float32"  # nothing leaked
    assert len(seen) == 3
    gan, reid = _by_kind(seen)
    bf16 = next(r for r in reid if r["policy"] == "mixed_bfloat16")
    f16 = next(r for r in reid if r["policy"] == "mixed_float16")
    assert gan["policy"] == "mixed_bfloat16"
    for run in (gan, bf16, f16):
        assert run["variables"] == {"float32"}  # float32 master weights
        for values in run["history"].values():
            assert all(math.isfinite(v) for v in values)
    # the layers compute in the half type, outputs and losses are float32
    assert gan["compute"] == {"bfloat16"} and bf16["compute"] == {"bfloat16"}
    assert f16["compute"] == {"float16"}
    assert set(gan["outputs"].values()) == {"float32"}
    assert set(bf16["outputs"].values()) == set(f16["outputs"].values()) == {"float32"}
    assert set(bf16["outputs"]) == {"embedding", "features", "logits"}
    # bfloat16 needs no loss scaling; float16 trains through a LossScaleOptimizer
    assert set(gan["optimizers"]) == {"d_optimizer", "g_optimizer"}
    assert "LossScaleOptimizer" not in {*gan["optimizers"].values(), *bf16["optimizers"].values()}
    assert bf16["loss_scale"] == [] and len(bf16["optimizers"]) == 1
    assert f16["optimizers"] == {"optimizer": "LossScaleOptimizer"}
    assert len(f16["loss_scale"]) == 1 and f16["loss_scale"][0] > 1.0
    assert f16["history"]["loss"][0] > 0
    # recorded in the stage summaries (.complete.json)
    for stage, precision in (("gan", "mixed_bfloat16"), ("reid_bf16", "mixed_bfloat16"),
                             ("reid_f16", "mixed_float16")):
        assert results[stage]["precision"] == precision
        marker = json.loads((run_dir / stage / ".complete.json").read_text())
        assert marker["summary"]["precision"] == precision


def test_models_trained_in_mixed_precision_load_and_give_float32_features(trained):
    from keras_reid.training.reid_model import load_inference_model

    run_dir, _, _ = trained
    images = np.random.default_rng(0).uniform(0, 255, (3, 32, 16, 3)).astype(np.float32)
    for stage in ("reid_bf16", "reid_f16"):
        model = load_inference_model(run_dir / stage / "model.keras")
        features = model(images, training=False)
        assert _dtype(features) == "float32" and np.isfinite(np.asarray(features)).all()
    assert keras.mixed_precision.global_policy().name == "float32"


# ------------------------------------------------------------------------------ float16 on 2 replicas


def _mirrored():
    from keras_reid.distribute import make_strategy

    strategy = make_strategy({"type": "mirrored"})
    assert strategy.num_replicas_in_sync == 2, "tests/conftest.py must configure 2 logical CPUs"
    return strategy


def _replica_batches(batch, per_replica):
    """A dataset_fn giving replica 0 the first half of ``batch`` and replica 1 the second, twice."""
    import tensorflow as tf

    def fn(ctx, epoch):
        split = {k: np.stack([v[:per_replica], v[per_replica:]]) for k, v in batch.items()} \
            if isinstance(batch, dict) else tuple(np.stack([v[:per_replica], v[per_replica:]]) for v in batch)
        return tf.data.Dataset.from_tensor_slices(split).repeat()

    return fn


def test_float16_overflow_on_one_replica_skips_the_step_on_every_replica():
    """Keras' LossScaleOptimizer decides from replica 0's gradients alone; an overflow on replica
    1 made the weights NaN before keras_reid.training.precision.agree_on_finite."""
    from keras_reid.registry import REGISTRY
    from keras_reid.training.loop import train
    from keras_reid.training.reid_model import ReIDModel

    strategy = _mirrored()
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (8, 32, 16, 3)).astype(np.float32)
    labels = np.repeat(np.arange(4), 2)
    with precision_policy("mixed_float16"):
        with strategy.scope():
            net = REGISTRY.create("backbone", {"type": "tiny", "width": 4, "blocks": 2,
                                               "embedding_dim": 8, "batch_norm": False}).build((32, 16, 3), 4)
            model = ReIDModel(net, REGISTRY.create("loss", {"type": "softmax", "label_smoothing": 0.0}))
            model.compile(keras.optimizers.SGD(1e-3))
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        fine = train(model, _replica_batches((images, labels), 4), strategy=strategy, epochs=1,
                     steps_per_epoch=2, verbose=0)
        assert math.isfinite(fine["loss"][0]) and int(model.optimizer.iterations.numpy()) == 2
        scale = float(model.optimizer.dynamic_scale.numpy())
        images[4:] *= 1e6  # replica 1's images overflow float16; replica 0's are fine
        train(model, _replica_batches((images, labels), 4), strategy=strategy, epochs=1,
              steps_per_epoch=2, verbose=0)
    assert all(np.isfinite(w).all() for w in model.get_weights())
    assert int(model.optimizer.iterations.numpy()) == 2  # both steps skipped
    assert float(model.optimizer.dynamic_scale.numpy()) == scale / 4  # halved for each


def test_float16_gan_overflow_on_one_replica_skips_the_step_on_every_replica():
    from keras_reid.registry import REGISTRY
    from keras_reid.training.loop import model_optimizers, train

    strategy = _mirrored()
    rng = np.random.default_rng(0)
    batch = {k: rng.uniform(-1, 1, (4, 32, 16, 3)).astype(np.float32) for k in ("source", "target")}
    batch.update({k: (rng.uniform(0, 1, (4, 32, 16, 1)) > 0.5).astype(np.float32)
                  for k in ("source_mask", "target_mask")})
    factory = REGISTRY.create("generator", {"type": "pix2pix", "variant": "model4", "filters": 4,
                                            "max_filters": 8, "norm": "instance", "dropout": 0.0})
    with precision_policy("mixed_float16"):
        with strategy.scope():
            gan = factory.build((32, 16))
            gan.compile(**factory.optimizers(steps_per_epoch=2, epochs=1))
        batch["source"][2:] *= 1e6
        batch["target"][2:] *= 1e6
        train(gan, _replica_batches(batch, 2), strategy=strategy, epochs=1, steps_per_epoch=2,
              verbose=0)
    optimizers = model_optimizers(gan, built_only=True)
    assert {type(o).__name__ for o in optimizers.values()} == {"LossScaleOptimizer"}
    assert all(np.isfinite(w).all() for w in gan.get_weights())
    assert [int(o.iterations.numpy()) for o in optimizers.values()] == [0, 0]
    assert keras.mixed_precision.global_policy().name == "float32"
