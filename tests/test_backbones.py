"""Backbones ``tiny`` and ``resnet50``: output contract, last stride, weights, lightness."""
import subprocess
import sys
import time

import numpy as np
import pytest
from pydantic import ValidationError

from keras_reid.errors import ModelFileError
from keras_reid.registry import REGISTRY


def all_layers(model):
    """Every layer of a model, nested models included."""
    out = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out.extend(all_layers(layer))
    return out


def check_contract(model, input_shape, num_classes, dim):
    import keras

    batch = np.random.default_rng(0).uniform(0, 255, (3, *input_shape)).astype("float32")
    out = model(batch, training=False)
    assert set(out) == {"embedding", "features", "logits"}
    assert tuple(out["embedding"].shape) == (3, dim)
    assert tuple(out["features"].shape) == (3, dim)
    assert tuple(out["logits"].shape) == (3, num_classes)
    for v in out.values():
        assert keras.backend.standardize_dtype(v.dtype) == "float32"
        assert np.all(np.isfinite(np.asarray(v)))
    return out


def test_plugin_modules_do_not_import_tensorflow():
    code = ("import sys, keras_reid_plugins.backbones, keras_reid_plugins.losses; "
            "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_registered_with_descriptions():
    assert REGISTRY.get("backbone", "resnet50").description
    assert REGISTRY.get("backbone", "tiny").description


@pytest.mark.parametrize("params,dim", [({}, 128), ({"embedding_dim": None, "width": 4}, 32),
                                        ({"pooling": "gem", "bn_neck": False, "dropout": 0.5}, 128)])
def test_tiny_output_contract(params, dim):
    model = REGISTRY.create("backbone", {"type": "tiny", **params}).build((32, 16, 3), 5)
    out = check_contract(model, (32, 16, 3), 5, dim)
    names = [l.name for l in all_layers(model)]
    if params.get("bn_neck") is False:
        np.testing.assert_array_equal(np.asarray(out["embedding"]), np.asarray(out["features"]))
        assert "bn_neck" not in names
    else:
        assert "bn_neck" in names


def test_tiny_without_batch_norm_has_no_batch_normalization():
    import keras

    model = REGISTRY.create("backbone", {"type": "tiny", "batch_norm": False}).build((32, 16, 3), 3)
    check_contract(model, (32, 16, 3), 3, 128)
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in all_layers(model))
    with_bn = REGISTRY.create("backbone", {"type": "tiny"}).build((32, 16, 3), 3)
    assert any(isinstance(l, keras.layers.BatchNormalization) for l in all_layers(with_bn))
    with pytest.raises(ValidationError, match="bn_neck"):
        REGISTRY.create("backbone", {"type": "tiny", "batch_norm": False, "bn_neck": True})


def test_resnet50_config_is_validated():
    with pytest.raises(ValidationError):
        REGISTRY.create("backbone", {"type": "resnet50", "last_stride": 3})
    with pytest.raises(ValidationError):
        REGISTRY.create("backbone", {"type": "resnet50", "pooling": "sum"})


def test_resnet50_preprocessing_is_keras_caffe_style():
    import keras

    model = REGISTRY.create("backbone", {"type": "resnet50", "last_stride": 2}).build((64, 32, 3), 4)
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 32, 3)).astype("float32")
    pre = keras.Model(model.inputs[0], model.get_layer("caffe_preprocess").output)
    expected = keras.applications.resnet50.preprocess_input(x.copy())
    np.testing.assert_allclose(np.asarray(pre(x)), expected, atol=1e-4)
    check_contract(model, (64, 32, 3), 4, 2048)
    assert tuple(model.get_layer("resnet50").output.shape[1:3]) == (None, None)
    assert tuple(model.get_layer("resnet50")(x).shape) == (2, 2, 1, 2048)


def test_resnet50_as_torchreid_built_it_for_the_thesis():
    """deep-person-reid's resnet50 (2018-2019): last stride 2, no BN-neck, the 2048-d average-pooled
    feature is the retrieval feature and feeds an nn.Linear classifier (bias, N(0, 0.01))."""
    import keras

    model = REGISTRY.create("backbone", {
        "type": "resnet50", "last_stride": 2, "bn_neck": False, "classifier_bias": True,
        "classifier_std": 0.01}).build((64, 32, 3), 7)
    out = check_contract(model, (64, 32, 3), 7, 2048)
    np.testing.assert_array_equal(np.asarray(out["embedding"]), np.asarray(out["features"]))
    names = [l.name for l in all_layers(model)]
    assert "bn_neck" not in names and "reduction" not in names
    assert isinstance(model.get_layer("pool"), keras.layers.GlobalAveragePooling2D)
    base = model.get_layer("resnet50")
    x = np.random.default_rng(3).uniform(0, 255, (2, 64, 32, 3)).astype("float32")
    assert tuple(base(x).shape) == (2, 2, 1, 2048)  # 64x32 / 32: the last stage halves the map
    assert tuple(base.get_layer("conv5_block1_0_conv").strides) == (2, 2)
    head = model.get_layer("classifier")
    kernel, bias = head.get_weights()
    assert kernel.shape == (2048, 7) and 0.008 < kernel.std() < 0.012
    np.testing.assert_array_equal(bias, np.zeros(7))
    # the defaults stay the modern (BoT) head
    default = REGISTRY.create("backbone", {"type": "resnet50"}).config
    assert (default.last_stride, default.bn_neck, default.classifier_bias) == (1, True, False)


def test_resnet50_pngan_head_merges_res5a_5b_5c_into_1024_with_dropout_in_training_only():
    """PN-GAN's ResNet-50-A/B: the three res5 block outputs, each average-pooled, concatenated,
    a Dense layer to 1024-d (the retrieval feature), dropout 0.5 before the classifier."""
    import keras

    model = REGISTRY.create("backbone", {"type": "resnet50", "last_stride": 2, "head": "pngan",
                                         "bn_neck": False, "dropout": 0.5}).build((64, 32, 3), 5)
    out = check_contract(model, (64, 32, 3), 5, 1024)
    np.testing.assert_array_equal(np.asarray(out["embedding"]), np.asarray(out["features"]))
    trunk = model.get_layer("resnet50_res5")
    read = [t._keras_history[0].name for t in trunk.outputs]
    assert read == ["conv5_block1_out", "conv5_block2_out", "conv5_block3_out"]
    merged = model.get_layer("res5_concat")
    assert isinstance(merged, keras.layers.Concatenate)
    assert tuple(merged.output.shape) == (None, 3 * 2048)
    for c in "abc":
        assert isinstance(model.get_layer(f"pool_res5{c}"), keras.layers.GlobalAveragePooling2D)
    assert model.get_layer("reduction").kernel.shape == (3 * 2048, 1024)
    drop = model.get_layer("dropout")
    assert isinstance(drop, keras.layers.Dropout) and drop.rate == 0.5
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 32, 3)).astype("float32")
    test_a, test_b = (np.asarray(model(x, training=False)["logits"]) for _ in range(2))
    np.testing.assert_array_equal(test_a, test_b)
    train_a, train_b = (np.asarray(model(x, training=True)["logits"]) for _ in range(2))
    assert not np.allclose(train_a, train_b)  # dropout draws a new mask each training call
    # the default head stays the last block pooled
    assert REGISTRY.create("backbone", {"type": "resnet50"}).config.head == "default"


@pytest.mark.slow
def test_resnet50_last_stride_1_doubles_the_map_and_local_weights_round_trip(tmp_path):
    import keras

    backbone = REGISTRY.create("backbone", {"type": "resnet50", "last_stride": 1, "pooling": "gem",
                                            "embedding_dim": 32})
    model = backbone.build((64, 32, 3), 6)
    check_contract(model, (64, 32, 3), 6, 32)
    x = np.random.default_rng(2).uniform(0, 255, (2, 64, 32, 3)).astype("float32")
    base = model.get_layer("resnet50")
    assert tuple(base(x).shape) == (2, 4, 2, 2048)  # 64x32 / 16 (stride 2 gives 2x1)
    strides = {l.name: tuple(l.strides) for l in base.layers if l.name.startswith("conv5_block1_")
               and l.name.endswith("conv")}
    assert strides["conv5_block1_0_conv"] == (1, 1) and strides["conv5_block1_1_conv"] == (1, 1)

    path = tmp_path / "trunk.weights.h5"
    base.save_weights(path)
    reloaded = REGISTRY.create("backbone", {"type": "resnet50", "weights": str(path)}).base_model()
    for a, b in zip(base.get_weights(), reloaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.asarray(reloaded(x)), np.asarray(base(x)), atol=1e-4, rtol=1e-4)

    small = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    wrong = tmp_path / "other.weights.h5"
    small.save_weights(wrong)
    with pytest.raises(ModelFileError, match="does not fit ResNet50"):
        REGISTRY.create("backbone", {"type": "resnet50", "weights": str(wrong)}).base_model()


def test_resnet50_missing_weights_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(ModelFileError, match="does not exist") as err:
        REGISTRY.create("backbone", {"type": "resnet50", "weights": str(missing)}).build((64, 32, 3), 2)
    assert str(missing) in str(err.value) and "\n" not in str(err.value)


def test_resnet50_imagenet_download_failure_is_one_clear_line(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://example: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    t0 = time.time()
    with pytest.raises(ModelFileError) as err:
        REGISTRY.create("backbone", {"type": "resnet50", "weights": "imagenet"}).build((64, 32, 3), 2)
    message = str(err.value)
    assert "\n" not in message
    assert "downloading the ImageNet weights failed" in message
    assert "weights: null" in message and "weights: /path/to" in message
    assert time.time() - t0 < 30
