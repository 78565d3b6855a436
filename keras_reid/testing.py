"""Contract checks for plugin authors (and for keras-reid's own built-ins).

Use them in your plugin package's tests::

    from keras_reid import testing
    from keras_reid.registry import REGISTRY

    def test_my_backbone_honours_the_contract():
        testing.check_entry(REGISTRY.get("backbone", "tinynet"))

Each check raises ``AssertionError`` with a message saying which part of the contract
(see ``keras_reid.interfaces``) was broken.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from keras_reid.registry import Entry


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
    from keras_reid.interfaces import GENERATOR_KEYS

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
    from keras_reid.errors import UserError

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
