"""Contract checks for plugin authors (and for keras-reid's own built-ins).

Use them in your plugin package's tests::

    from keras_reid import testing
    from keras_reid.registry import REGISTRY

    def test_my_backbone_honours_the_contract():
        testing.check_entry(REGISTRY.get("backbone", "tinynet"))

Each check raises ``AssertionError`` with a message saying which part of the contract
(see ``keras_reid.interfaces``) was broken. Beyond the interface checks, ``check_generator_saving``
/ ``check_backbone_saving`` (save, load in a fresh process, same outputs) and
``check_generator_replicas`` / ``check_backbone_replicas`` (two replicas train like one device)
are the behaviour every training stage relies on; call them with a configuration of your plugin.

End-to-end tests build recipes from dicts and share synthetic datasets::

    # conftest.py of your plugin's tests
    pytest_plugins = ["keras_reid.pytest_plugin"]   # the synthetic_data fixture, 2 logical CPUs

    def test_my_backbone_in_a_recipe(tmp_path, synthetic_data):
        data = synthetic_data(ids=8, cameras=2, size=(32, 16))
        recipe = testing.build_recipe(
            tmp_path, datasets={"d": data.spec},
            stages={"train": {"type": "train_reid", "dataset": "d", "image_size": [32, 16],
                              "backbone": {"type": "tinynet"}, "epochs": 1}})
        pipeline.run(recipe, tmp_path / "run")
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import yaml

from keras_reid.data.synthetic import parse_size, synthesize
from keras_reid.errors import UserError
from keras_reid.interfaces import GENERATOR_KEYS
from keras_reid.io import write_text
from keras_reid.recipe import load_recipe
from keras_reid.registry import REGISTRY, Entry


def check_config_schema(entry: Entry) -> None:
    """The plugin's config rejects unknown keys (so recipe typos are caught) and has a description."""
    extra = entry.config.model_config.get("extra")
    assert extra == "forbid", (
        f"{entry.kind} '{entry.name}': its config {entry.config.__name__} must set "
        "model_config = ConfigDict(extra='forbid') so that misspelt recipe keys are errors")
    assert entry.description, f"{entry.kind} '{entry.name}' has no description (first docstring line)"


def _default_instance(entry: Entry, **params: Any) -> Any:
    return entry.create(params)


def check_backbone(backbone: Any, input_shape=(32, 16, 3), num_classes: int = 3) -> None:
    """``build`` returns a model whose outputs follow the Backbone contract."""
    model = backbone.build(input_shape, num_classes)
    x = np.random.default_rng(0).uniform(0, 255, (2,) + tuple(input_shape)).astype("float32")
    out = model(x, training=False)
    assert isinstance(out, dict), "a backbone model must return a dict"
    for key in ("embedding", "features", "logits"):
        assert key in out, f"backbone output lacks '{key}'"
        arr = np.asarray(out[key])
        assert arr.ndim == 2 and arr.shape[0] == 2, f"'{key}' must be [B, D], got {arr.shape}"
        assert np.all(np.isfinite(arr)), f"'{key}' has non-finite values"
    assert np.asarray(out["logits"]).shape[1] == num_classes, "logits must be [B, num_classes]"


def check_loss(loss: Any) -> None:
    """A loss maps (labels [B], outputs) to a finite, non-negative per-example loss [B]."""
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1], np.int32)
    outputs = {
        "embedding": rng.normal(size=(8, 6)).astype("float32"),
        "features": rng.normal(size=(8, 6)).astype("float32"),
        "logits": rng.normal(size=(8, 3)).astype("float32"),
    }
    per_example = np.asarray(loss(labels, outputs))
    assert per_example.shape == (8,), f"a loss must return per-example values [B], got {per_example.shape}"
    assert np.all(np.isfinite(per_example)) and np.all(per_example >= -1e-6), "loss must be finite and >= 0"


def check_masker(masker: Any, paths: list[str], size: tuple[int, int] = (64, 32)) -> None:
    """A masker's ``masks_for(paths, size)`` returns float32 [N, H, W, 1] in [0, 1]; maskers that
    do not read files (``reads_files`` false) also take bare uint8 images."""
    out = np.asarray(masker.masks_for(list(paths), size))
    assert out.shape == (len(paths), *size, 1) and out.dtype == np.float32, \
        f"masks_for must return float32 [N, H, W, 1], got {out.shape} {out.dtype}"
    assert np.all((out >= 0) & (out <= 1)), "masks must be in [0, 1]"
    if not getattr(masker, "reads_files", False):
        check_image_scorer(masker, "masker")


def check_image_scorer(component: Any, kind: str) -> None:
    """Filters, maskers and pose estimators accept uint8 [N, H, W, 3] and return the right shapes."""
    images = np.random.default_rng(0).integers(0, 255, (2, 64, 32, 3), dtype=np.uint8)
    out = np.asarray(component(images))
    if kind == "filter":
        assert out.shape == (2,) and out.dtype == np.float32, f"filter must return float32 [N], got {out.shape} {out.dtype}"
        assert np.all((out >= 0) & (out <= 1)), "filter scores must be in [0, 1]"
    elif kind == "masker":
        assert out.shape == (2, 64, 32, 1), f"masker must return [N, H, W, 1], got {out.shape}"
        assert np.all((out >= 0) & (out <= 1)), "masks must be in [0, 1]"
    elif kind == "pose":
        assert out.shape == (2, 18, 3), f"pose estimator must return [N, 18, 3], got {out.shape}"


def _generator_batch(keys, image_size: tuple[int, int], n: int = 2, z_dim: int = 0) -> dict:
    """Random example dicts of the generator contract (``keras_reid.interfaces.GENERATOR_KEYS``)."""
    rng = np.random.default_rng(0)
    h, w = image_size
    out = {}
    for key in keys:
        if key == "noise":
            out[key] = rng.uniform(-1, 1, (n, z_dim)).astype("float32")
        elif key.endswith("_mask"):
            out[key] = (rng.random((n, h, w, 1)) > 0.5).astype("float32")
        else:
            out[key] = rng.uniform(-1, 1, (n, h, w, 3)).astype("float32")
    return out


def check_generator(factory: Any, image_size: tuple[int, int] = (32, 16)) -> None:
    """A generator factory declares valid keys and pairing; its GAN builds at ``image_size``,
    compiles with ``factory.optimizers``, runs one ``train_step`` returning finite scalars, and
    ``generate`` returns float32 [B, H, W, 3] in [-1, 1]."""
    assert factory.pairing in ("camera_pairs", "random_target", "identity_pairs", "unpaired"), (
        f"unknown pairing {factory.pairing!r}")
    needs, gen_needs = set(factory.needs), set(factory.generation_needs)
    assert "source" in needs and needs | gen_needs <= set(GENERATOR_KEYS), (
        f"needs {sorted(needs)} / generation_needs {sorted(gen_needs)} must be keys of "
        f"GENERATOR_KEYS and needs must include 'source'")
    assert gen_needs <= needs | {"noise"}, "generation_needs must be a subset of needs (or noise)"
    gan = factory.build(tuple(image_size))
    for method in ("train_step", "generate", "compile", "build_optimizers"):
        assert callable(getattr(gan, method, None)), f"the built GAN has no {method}()"
    assert getattr(gan, "step_logs_reduction", "mean") in ("mean", "sum")
    optimizers = factory.optimizers(steps_per_epoch=2, epochs=1)
    assert set(optimizers) == {"d_optimizer", "g_optimizer"}, (
        f"optimizers() must return d_optimizer and g_optimizer, got {sorted(optimizers)}")
    gan.compile(**optimizers)
    gan.build_optimizers()
    logs = gan.train_step(_generator_batch(sorted(needs), image_size))
    assert isinstance(logs, dict) and logs, "train_step must return a dict of scalars"
    for name, value in logs.items():
        arr = np.asarray(value)
        assert arr.ndim == 0 and np.isfinite(arr), f"train_step log '{name}' is not a finite scalar"
    # ``source`` is in every example dict (GENERATOR_KEYS), needed or not
    out = np.asarray(gan.generate(_generator_batch(sorted(gen_needs | {"source"}), image_size,
                                                   z_dim=int(getattr(gan, "z_dim", 0)))))
    assert out.shape == (2, *image_size, 3) and out.dtype == np.float32, (
        f"generate must return float32 [B, H, W, 3], got {out.shape} {out.dtype}")
    assert np.all(out >= -1) and np.all(out <= 1), "generated images must be in [-1, 1]"


def check_entry(entry: Entry) -> None:
    """Run every check that applies to a registered component (backbones, losses, generators,
    filters, maskers, pose estimators); returns None or raises AssertionError."""
    check_config_schema(entry)
    if entry.kind == "backbone":
        check_backbone(_default_instance(entry))
    elif entry.kind == "loss":
        check_loss(_default_instance(entry))
    elif entry.kind == "generator":
        check_generator(_default_instance(entry))
    elif entry.kind in ("filter", "masker", "pose"):
        component = _default_instance(entry)
        try:
            check_image_scorer(component, entry.kind)
        finally:
            close = getattr(component, "close", None)
            if close:
                close()


def check_pose(estimator: Any, paths: list[str], size: tuple[int, int] = (64, 32)) -> None:
    """A pose estimator's ``keypoints_for(paths, size)`` returns float32 [N, 18, 3] (y, x, score)
    in pixels of ``size``: present points inside the image with scores in [0, 1], missing points
    -1 in every column. Estimators that do not read files (``reads_files`` false) also take bare
    uint8 images [N, H, W, 3]; those that do refuse them with a UserError."""
    def valid(out: np.ndarray, n: int, hw: tuple[int, int], what: str) -> None:
        assert out.shape == (n, 18, 3) and out.dtype == np.float32, \
            f"{what} must return float32 [N, 18, 3], got {out.shape} {out.dtype}"
        present = (out[..., 0] >= 0) & (out[..., 1] >= 0)
        assert np.all(out[~present] == -1), f"{what}: missing keypoints must be -1 in every column"
        yx, score = out[present][:, :2], out[present][:, 2]
        assert np.all((yx[:, 0] <= hw[0] - 1) & (yx[:, 1] <= hw[1] - 1)), \
            f"{what}: present keypoints must lie inside the {hw[0]}x{hw[1]} image"
        assert np.all((score >= 0) & (score <= 1)), f"{what}: scores of present keypoints must be in [0, 1]"

    assert hasattr(estimator, "keypoints_for"), "a pose estimator must offer keypoints_for(paths, size)"
    valid(np.asarray(estimator.keypoints_for(list(paths), size)), len(paths), size, "keypoints_for")
    images = np.random.default_rng(0).integers(0, 255, (2, *size, 3), dtype=np.uint8)
    if getattr(estimator, "reads_files", False):
        try:
            estimator(images)
        except UserError:
            pass
        else:
            raise AssertionError("a file-based pose estimator (reads_files) must raise UserError "
                                 "on bare images: it cannot know which image it sees")
    else:
        check_image_scorer(estimator, "pose")
        valid(np.asarray(estimator(images)), 2, size, "__call__")


# ---------------------------------------------------------------------------- recipes from dicts
def _plain(value: Any) -> Any:
    """``value`` with paths as strings and tuples as lists (what YAML can write)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def recipe_data(*, stages: dict, datasets: dict | None = None, name: str = "test", seed: int = 0,
                **top: Any) -> dict:
    """A recipe as a dict: ``name``, ``seed``, one-device strategy and no XLA unless ``top`` sets
    them (``strategy=``, ``jit_compile=``, ``precision=``, ``compare=``, ...), then ``datasets``
    and ``stages`` (each ``{name: {"type": ..., ...}}``). Paths may be ``Path`` objects."""
    data = {"name": name, "seed": seed, "strategy": {"type": "one_device"}, "jit_compile": False}
    data.update(top)
    data["datasets"] = datasets or {}
    data["stages"] = stages
    return _plain(data)


def write_recipe(path: str | os.PathLike, **recipe: Any) -> Path:
    """Write ``recipe_data(**recipe)`` as YAML to ``path`` (a folder: ``<path>/recipe.yaml``)
    atomically; returns the file (for ``keras-reid run <file>`` in a subprocess)."""
    path = Path(path)
    if path.is_dir():
        path = path / "recipe.yaml"
    write_text(path, yaml.safe_dump(recipe_data(**recipe), sort_keys=False))
    return path


def build_recipe(path: str | os.PathLike, *, overrides: Iterable[str] = (), **recipe: Any):
    """Write the recipe (see ``write_recipe``) and load it as ``keras-reid run`` does: overrides
    (``"stages.train.epochs=1"``), interpolation, validation. Returns the validated
    ``keras_reid.recipe.Recipe`` (its file is ``recipe.source``); a bad recipe raises
    ``RecipeError`` as the CLI would report it."""
    return load_recipe(write_recipe(path, **recipe), list(overrides))


# ---------------------------------------------------------------------------- synthetic data
#: the small synthetic re-ID set most end-to-end tests train on (seconds to write)
SYNTHETIC_DEFAULTS = {"ids": 12, "cameras": 3, "size": (64, 32), "seed": 1, "images_per_id_camera": 2}


@dataclass(frozen=True)
class SyntheticData:
    """A synthetic dataset written at ``root`` with ``params``; ``spec`` is its recipe entry."""

    root: Path
    params: dict

    @property
    def spec(self) -> dict:
        """``{"type": "synthetic", "root": ..., **params}`` for a recipe's ``datasets``."""
        size = self.params["size"]
        return {"type": "synthetic", "root": str(self.root),
                **dict(self.params, size=f"{size[0]}x{size[1]}")}


def synthetic_data(folder: str | os.PathLike, **params: Any) -> SyntheticData:
    """The synthetic dataset with ``params`` (``SYNTHETIC_DEFAULTS`` for those not given) in a
    folder of ``folder`` named after the parameters, written on first use only: tests that ask
    for the same parameters share one copy. Treat it as read-only (copy it to change files)."""
    p = dict(SYNTHETIC_DEFAULTS, **params)
    p["size"] = tuple(parse_size(p["size"]))
    name = "synth-" + "-".join(f"{k}{p[k][0]}x{p[k][1]}" if k == "size" else f"{k}{p[k]}"
                               for k in sorted(p))
    root = Path(folder) / name
    synthesize(root, **p)  # skipped when root holds it already
    return SyntheticData(root, p)


# ---------------------------------------------------------------------------- devices
def use_logical_cpus(n: int = 2) -> None:
    """Split the CPU into ``n`` logical devices (``/cpu:0`` .. ``/cpu:{n-1}``) for the replica
    checks; call it before TensorFlow runs its first op (a no-op afterwards)."""
    import tensorflow as tf  # deferred: TensorFlow, must not start before use_logical_cpus()

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:  # the runtime is initialised: keep what it has
        pass


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a local cluster's TF_CONFIG)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(argv: list[str], logs: str | os.PathLike, *, n: int = 2, env=None,
                timeout: float = 420.0) -> list[tuple[int, str]]:
    """Run ``argv`` as ``n`` local workers of one ``MultiWorkerMirroredStrategy`` cluster on
    loopback (each with its ``TF_CONFIG``; output to ``<logs>/worker<i>.log``), wait for all
    (killing those left after ``timeout`` s) and return ``[(exit code, output)]`` per worker.
    ``env(index)`` may return extra variables for a worker (a value None removes one)."""
    logs = Path(logs)
    logs.mkdir(parents=True, exist_ok=True)
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(n)]}
    procs, files = [], []
    try:
        for index in range(n):
            environ = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster,
                                                             "task": {"type": "worker", "index": index}}))
            for key, value in ((env(index) if env else None) or {}).items():
                if value is None:
                    environ.pop(key, None)
                else:
                    environ[key] = value
            files.append(open(logs / f"worker{index}.log", "w"))
            procs.append(subprocess.Popen(list(argv), env=environ, stdout=files[-1], stderr=subprocess.STDOUT))
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for f in files:
            f.close()
    return [(c, (logs / f"worker{i}.log").read_text()) for i, c in enumerate(codes)]


def _two_replicas(devices: tuple[str, str]):
    import tensorflow as tf  # deferred: TensorFlow, must not start before use_logical_cpus()

    available = {d.name.split("device:")[-1].lower() for d in tf.config.list_logical_devices()}
    missing = [d for d in devices if d.lstrip("/").lower() not in available]
    assert not missing, (f"the replica check needs the devices {list(devices)} (missing {missing}): "
                         "call keras_reid.testing.use_logical_cpus(2) before TensorFlow starts, or "
                         "load the pytest plugin keras_reid.pytest_plugin")
    return (tf.distribute.OneDeviceStrategy(devices[0]),
            tf.distribute.MirroredStrategy(list(devices),
                                           cross_device_ops=tf.distribute.ReductionToOneDevice()))


def _train_twice(build, batch, global_batch: int, steps: int, devices) -> list:
    """Train ``build(strategy)`` for ``steps`` steps on the same global batches on one device and
    on two replicas; returns ``[(history, weights), ...]`` for both."""
    import keras  # deferred: TensorFlow, must not start before use_logical_cpus()
    import tensorflow as tf  # deferred: TensorFlow, must not start before use_logical_cpus()

    from keras_reid.training.loop import train  # deferred: TensorFlow, must not start before use_logical_cpus()

    runs = []
    for strategy in _two_replicas(devices):
        keras.utils.set_random_seed(0)
        model = build(strategy)

        def ds(ctx, epoch):
            per = ctx.get_per_replica_batch_size(global_batch)
            d = tf.data.Dataset.from_tensor_slices(batch).shard(ctx.num_input_pipelines,
                                                                ctx.input_pipeline_id)
            return d.batch(per).repeat(steps)

        hist = train(model, ds, strategy=strategy, epochs=1, steps_per_epoch=steps, verbose=0)
        runs.append((hist, [np.asarray(w) for w in model.weights]))
    return runs


def _same_training(runs: list, what: str, rel: float, atol: float) -> dict:
    (one, w_one), (two, w_two) = runs
    assert set(one) == set(two), f"{what}: the logs differ: {sorted(one)} vs {sorted(two)}"
    for key in one:
        assert np.isclose(one[key][0], two[key][0], rtol=rel, atol=0), (
            f"{what}: '{key}' is {one[key][0]} on one device and {two[key][0]} on two replicas")
    assert len(w_one) == len(w_two), f"{what}: the two models have different weights"
    for i, (a, b) in enumerate(zip(w_one, w_two)):
        assert np.allclose(a, b, rtol=0, atol=atol), (
            f"{what}: weight {i} differs by {np.abs(a - b).max():.2g} after training on one device "
            "and on two replicas (does a layer depend on how the batch is split, e.g. unsynchronised "
            "batch norm or dropout?)")
    return one


def check_generator_replicas(factory: Any, batch: dict | None = None, image_size: tuple[int, int] = (32, 16),
                             *, steps: int = 2, rel: float = 1e-4, atol: float = 1e-5,
                             devices: tuple[str, str] = ("/cpu:0", "/cpu:1")) -> dict:
    """Two replicas train like one device: the GAN of ``factory`` (a configuration where nothing
    depends on how a batch is split: no batch norm, no dropout) trained for ``steps`` steps on the
    same global batch (``batch``: a dict of arrays, default random examples of its ``needs``) under
    ``MirroredStrategy`` over two devices logs the same epoch means (relative ``rel``) and ends with
    the same generator and discriminator weights (``atol``) as on one device. Returns the history."""
    batch = batch if batch is not None else _generator_batch(sorted(factory.needs), image_size, n=4)
    n = len(next(iter(batch.values())))

    def build(strategy):
        with strategy.scope():
            gan = factory.build(tuple(image_size))
            gan.compile(**factory.optimizers(steps_per_epoch=10, epochs=1))
        return gan

    return _same_training(_train_twice(build, batch, n, steps, devices), "generator", rel, atol)


def check_backbone_replicas(backbone: Any, input_shape=(32, 16, 3), num_classes: int = 3, *,
                            steps: int = 2, rel: float = 1e-4, atol: float = 1e-5,
                            devices: tuple[str, str] = ("/cpu:0", "/cpu:1")) -> dict:
    """Two replicas train like one device: the backbone in a ``ReIDModel`` (softmax loss, SGD, its
    batch norms synchronised as train_reid does with ``sync_batchnorm``) trained for ``steps``
    steps on the same global batch of 8 on one device and on two replicas logs the same loss
    and ends with the same weights. Returns the history."""
    import keras  # deferred: TensorFlow, must not start before use_logical_cpus()

    from keras_reid.training.batchnorm import batchnorm_layers  # deferred: TensorFlow, must not start before use_logical_cpus()
    from keras_reid.training.reid_model import ReIDModel  # deferred: TensorFlow, must not start before use_logical_cpus()

    rng = np.random.default_rng(0)
    batch = (rng.uniform(0, 255, (8, *input_shape)).astype("float32"),
             (np.arange(8) // 2 % num_classes).astype("int64"))

    def build(strategy):
        with strategy.scope():
            net = backbone.build(tuple(input_shape), num_classes)
            if strategy.num_replicas_in_sync > 1:  # as train_reid's sync_batchnorm: true
                for layer in batchnorm_layers(net):
                    layer.synchronized = True
            model = ReIDModel(net, REGISTRY.create("loss", {"type": "softmax"}))
            model.compile(keras.optimizers.SGD(0.01))
            model(np.zeros((1, *input_shape), np.float32), training=False)
        return model

    return _same_training(_train_twice(build, batch, 8, steps, devices), "backbone", rel, atol)


# ---------------------------------------------------------------------------- saving
_FRESH_GENERATOR = """\
import importlib, json, sys
import numpy as np
spec, module = json.loads(sys.argv[1]), sys.argv[2]
importlib.import_module(module)
print(json.dumps(sorted(m for m in ("keras", "tensorflow") if m in sys.modules)))
from keras_reid.registry import REGISTRY
REGISTRY.load()
b = dict(np.load(sys.argv[4]))
np.save(sys.argv[5], np.asarray(REGISTRY.create("generator", spec).load(sys.argv[3]).generate(b)))
"""

_FRESH_BACKBONE = """\
import json, sys
import numpy as np
from keras_reid.inference import load_keras_model
out = load_keras_model(sys.argv[2], backbone=json.loads(sys.argv[1]))(np.load(sys.argv[3]), training=False)
np.savez(sys.argv[4], **{k: np.asarray(v) for k, v in out.items()})
"""


def _fresh_process(code: str, *args: str) -> str:
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"loading in a fresh process failed:\n{res.stderr[-3000:]}"
    return res.stdout


def check_generator_saving(spec: dict, folder: str | os.PathLike, batch: dict | None = None,
                           image_size: tuple[int, int] = (32, 16), *, steps: int = 2,
                           atol: float = 0.0, lazy_tensorflow: bool = True) -> tuple[Any, Any]:
    """Save, load in a fresh process, same outputs: the GAN of the registry ``spec`` trained for
    ``steps`` steps and saved to ``<folder>/g.keras`` loads with ``factory.load`` (what the augment
    stage and its Ray workers use) here and in a fresh Python process, and both generate exactly
    what the trained GAN generates (within ``atol``; 0: bit for bit); ``keras.saving.load_model`` (how train_generator resumes) gives
    back both optimizers with their step counts, learning rates and state. With
    ``lazy_tensorflow`` importing the plugin's module in the fresh process loads neither Keras nor
    TensorFlow. Returns ``(trained GAN, GAN loaded by factory.load)`` for plugin-specific checks."""
    import keras  # deferred: TensorFlow, must not start before use_logical_cpus()

    factory = REGISTRY.create("generator", spec)
    batch = batch if batch is not None else _generator_batch(sorted(factory.needs), image_size, n=4)
    gan = _trained_gan(factory, batch, image_size, steps)
    folder = Path(folder)
    path = folder / "g.keras"
    gan.save(path)
    gen = _generation_batch(factory, gan, batch, image_size)
    expected = np.asarray(gan.generate(gen))

    again = factory.load(str(path))
    np.testing.assert_allclose(np.asarray(again.generate(gen)), expected, rtol=0, atol=atol,
                               err_msg="factory.load(path).generate differs from the saved GAN's")
    _check_optimizers_restored(gan, keras.saving.load_model(path), steps)
    _check_fresh_generation(spec, factory, path, gen, expected, atol, lazy_tensorflow)
    return gan, again


def _trained_gan(factory: Any, batch: dict, image_size: tuple[int, int], steps: int):
    """The factory's GAN built at ``image_size``, compiled and trained ``steps`` steps on ``batch``."""
    import tensorflow as tf  # deferred: TensorFlow, must not start before use_logical_cpus()

    from keras_reid.training.loop import train  # deferred: TensorFlow, must not start before use_logical_cpus()

    gan = factory.build(tuple(image_size))
    gan.compile(**factory.optimizers(steps_per_epoch=steps, epochs=2))
    train(gan, lambda ctx, epoch: tf.data.Dataset.from_tensors(batch).repeat(steps),
          strategy=tf.distribute.get_strategy(), epochs=1, steps_per_epoch=steps, verbose=0)
    return gan


def _generation_batch(factory: Any, gan: Any, batch: dict, image_size: tuple[int, int]) -> dict:
    """What ``generate`` takes: the ``generation_needs`` of ``batch`` and ``source`` (plus noise)."""
    gen = {k: v for k, v in batch.items() if k in set(factory.generation_needs) | {"source"}}
    if "noise" in factory.generation_needs:
        gen["noise"] = _generator_batch(["noise"], image_size, n=len(gen["source"]),
                                        z_dim=int(getattr(gan, "z_dim", 0)))["noise"]
    return gen


def _check_optimizers_restored(gan: Any, resumed: Any, steps: int) -> None:
    """Both optimizers of ``resumed`` (the saved ``gan`` loaded by Keras) have ``gan``'s step
    count (``steps``), learning rate and state."""
    for name in ("d_optimizer", "g_optimizer"):
        old, new = getattr(gan, name), getattr(resumed, name)
        assert int(new.iterations.numpy()) == int(old.iterations.numpy()) == steps, (
            f"{name}: {int(new.iterations.numpy())} steps after loading, {steps} trained")
        assert np.isclose(float(new.learning_rate), float(old.learning_rate)), f"{name}: learning rate"
        for a, c in zip(old.variables, new.variables):
            np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=1e-7,
                                       err_msg=f"{name}'s state differs after loading")


def _check_fresh_generation(spec: dict, factory: Any, path: Path, gen: dict, expected: np.ndarray,
                            atol: float, lazy_tensorflow: bool) -> None:
    """A fresh Python process loads ``path`` through the registry and generates ``expected``
    from ``gen``; with ``lazy_tensorflow`` importing the plugin's module there loads neither
    Keras nor TensorFlow."""
    folder = path.parent
    np.savez(folder / "in.npz", **gen)
    out = _fresh_process(_FRESH_GENERATOR, json.dumps(spec), type(factory).__module__, str(path),
                         str(folder / "in.npz"), str(folder / "out.npy"))
    if lazy_tensorflow:
        heavy = json.loads(out.strip().splitlines()[0])
        assert heavy == [], (f"importing {type(factory).__module__} loads {heavy}: import them inside "
                             "build()/load() so that reading recipes stays light")
    np.testing.assert_allclose(np.load(folder / "out.npy"), expected, rtol=0, atol=atol,
                               err_msg="a fresh process generates other images from the saved GAN")


def check_backbone_saving(spec: Any, folder: str | os.PathLike, input_shape=(32, 16, 3),
                          num_classes: int = 3, *, atol: float = 1e-5) -> None:
    """Save, load in a fresh process, same outputs: the backbone of the registry ``spec`` (or a
    backbone object, then loaded by Keras alone) built,
    saved to ``<folder>/model.keras`` and loaded in a fresh Python process as the evaluate stage
    loads a trained model (``keras_reid.inference.load_keras_model``: the backbone's ``load`` if
    it has one, else Keras with keras-reid's layers registered) gives the same embedding, features
    and logits in inference mode."""
    backbone = REGISTRY.create("backbone", spec) if isinstance(spec, dict) else spec
    model = backbone.build(tuple(input_shape), num_classes)
    x = np.random.default_rng(1).uniform(0, 255, (2, *input_shape)).astype("float32")
    expected = {k: np.asarray(v) for k, v in model(x, training=False).items()}
    folder = Path(folder)
    model.save(folder / "model.keras")
    np.save(folder / "x.npy", x)
    _fresh_process(_FRESH_BACKBONE, json.dumps(spec if isinstance(spec, dict) else None), str(folder / "model.keras"), str(folder / "x.npy"),
                   str(folder / "out.npz"))
    got = np.load(folder / "out.npz")
    for key, value in expected.items():
        assert key in got, f"the reloaded backbone has no '{key}' output"
        np.testing.assert_allclose(got[key], value, atol=atol, err_msg=(
            f"'{key}' differs after saving and loading in a fresh process"))
