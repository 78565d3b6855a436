"""The condensenet backbone: contract, learned group conv condensation and schedule, group
lasso, conversion to the compact model (same outputs, fewer parameters), training steps."""
import numpy as np
import pytest
import tensorflow as tf
from pydantic import ValidationError

from keras_reid.registry import REGISTRY
from keras_reid.testing import check_backbone

SHAPE = (32, 16, 3)


def _images(n=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, *SHAPE)).astype("float32")


def _backbone(**kw):
    return REGISTRY.create("backbone", {"type": "condensenet", "preset": "small", **kw})


def _lgc(cin=16, filters=8, **kw):
    from keras_reid_plugins.backbones._condensenet_model import LearnedGroupConv

    layer = LearnedGroupConv(filters, **{"groups": 4, "condense_factor": 4, **kw})
    layer.build((None, 2, 2, cin))
    rng = np.random.default_rng(1)
    layer.kernel.assign(rng.normal(size=(1, 1, cin, filters)).astype("float32"))
    return layer


def _group_masks(layer):
    mask = np.asarray(layer.mask).reshape(layer.in_channels, layer.filters // layer.groups, layer.groups)
    # every output of a group (o mod G) shares one input set
    assert np.all(mask == mask[:, :1, :])
    return mask[:, 0, :]  # [in, G]


def test_plugin_module_does_not_import_tensorflow():
    import subprocess
    import sys

    code = ("import sys, keras_reid_plugins.backbones.condensenet; "
            "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_registered_and_config_validated():
    assert REGISTRY.get("backbone", "condensenet").description
    cfg = REGISTRY.create("backbone", {"type": "condensenet"}).config
    assert cfg.layout() == ([4, 6, 8, 10, 8], [8, 16, 32, 64, 128])
    assert (cfg.groups, cfg.condense_factor) == (4, 4)
    with pytest.raises(ValidationError, match="divisible"):
        _backbone(growth=[4, 6, 16])
    with pytest.raises(ValidationError, match="same length"):
        _backbone(stages=[1, 1])
    with pytest.raises(ValidationError):
        _backbone(condense_steps=3)  # fewer than 2 (C - 1)
    with pytest.raises(ValidationError):
        _backbone(unknown=1)


def test_contract():
    check_backbone(_backbone(), SHAPE, num_classes=3)
    check_backbone(_backbone(embedding_dim=8, pooling="gem", bn_neck=False, dropout=0.2), SHAPE, 3)


def test_condense_drops_in_over_c_lowest_l1_per_group():
    layer = _lgc(cin=16, filters=8)
    assert _group_masks(layer).sum(0).tolist() == [16] * 4
    kernel = np.abs(np.asarray(layer.kernel)[0, 0])  # [in, out]
    expected_first = []
    for g in range(4):
        l1 = kernel[:, g::4].sum(1)  # group g = outputs o with o mod 4 == g
        expected_first.append(set(np.argsort(l1, kind="stable")[:4].tolist()))
    layer.condense()
    masks = _group_masks(layer)
    assert masks.sum(0).tolist() == [12] * 4  # 16 / C = 4 dropped per group
    for g in range(4):
        assert set(np.flatnonzero(masks[:, g] == 0).tolist()) == expected_first[g]
    # later stages rank the remaining inputs by the masked weights' L1 norm
    before = masks.copy()
    layer.condense()
    masks = _group_masks(layer)
    assert masks.sum(0).tolist() == [8] * 4
    for g in range(4):
        alive = np.flatnonzero(before[:, g] > 0)
        l1 = kernel[alive][:, g::4].sum(1)
        dropped = set(alive[np.argsort(l1, kind="stable")[:4]].tolist())
        assert set(np.flatnonzero((before[:, g] > 0) & (masks[:, g] == 0)).tolist()) == dropped
    layer.condense()
    assert _group_masks(layer).sum(0).tolist() == [4] * 4  # 1/C kept
    layer.condense()  # no more than C - 1 condensations
    assert _group_masks(layer).sum(0).tolist() == [4] * 4
    assert float(layer.condensed) == 3


def test_schedule_driven_by_training_calls():
    layer = _lgc(condense_steps=12)  # C = 4: condensations at steps 2, 4, 6 (half of 12)
    x = tf.constant(np.random.default_rng(0).normal(size=(1, 2, 2, 16)), tf.float32)
    step = tf.function(lambda v: layer(v, training=True))
    seen = []
    for _ in range(10):
        step(x)
        seen.append(int(float(layer.condensed)))
    assert seen == [0, 1, 1, 2, 2, 3, 3, 3, 3, 3]
    layer(x, training=False)  # inference never advances the schedule
    assert float(layer.step) == 10


def test_group_lasso_only_in_the_stage_before_the_last():
    layer = _lgc(group_lasso=0.5)
    x = np.ones((1, 2, 2, 16), np.float32)
    values = []
    for _ in range(4):
        layer(x, training=True)
        values.append(float(sum(np.asarray(v) for v in layer.losses)))
        layer.condense()
    assert values[0] == 0 and values[1] == 0 and values[3] == 0
    assert values[2] > 0  # after C - 2 = 2 condensations


def test_group_lasso_adds_a_model_loss():
    bb = _backbone(group_lasso=1e-3)
    model = bb.build(SHAPE, 3)
    model(_images(), training=True)
    assert float(sum(np.asarray(v) for v in model.losses)) == 0  # stage 0
    bb.condense(model)
    bb.condense(model)  # stage C - 2
    model(_images(), training=True)
    assert len(model.losses) > 0 and float(sum(np.asarray(v) for v in model.losses)) > 0


def test_default_layout_per_block_count():
    """dense for the first two blocks, split_native (compact 1x1) for the last two, native
    between (CondenseNet-74: dense 1-2, native 3, split_native 4-5)."""
    from keras_reid_plugins.backbones._condensenet_model import block_layouts

    assert block_layouts(None, 5) == ["dense", "dense", "native", "split_native", "split_native"]
    assert block_layouts(None, 3) == ["dense", "dense", "split_native"]
    assert block_layouts(None, 2) == ["dense", "dense"]
    assert block_layouts("native", 2) == ["native", "native"]


def test_batchnorm_relu_equals_batchnorm_then_relu_and_refuses_training():
    """The converted model's BatchNormReLU (TensorFlow's fused batch norm + ReLU) computes
    relu(BatchNormalization(x)) in inference with the same weights, and says it cannot train."""
    import keras

    from keras_reid_plugins.backbones._condensenet_model import BatchNormReLU

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 4, 6)).astype("float32")
    bn, fused = keras.layers.BatchNormalization(), BatchNormReLU()
    bn.build(x.shape)
    fused.build(x.shape)
    weights = [rng.uniform(0.5, 1.5, 6), rng.normal(0, 0.5, 6), rng.normal(0, 0.5, 6), rng.uniform(0.2, 2, 6)]
    bn.set_weights([w.astype("float32") for w in weights])
    fused.set_weights(bn.get_weights())
    expected = np.maximum(np.asarray(bn(x, training=False)), 0)
    assert (expected == 0).any() and (expected > 0).any()
    np.testing.assert_allclose(np.asarray(fused(x, training=False)), expected, atol=1e-6)
    with pytest.raises(ValueError, match="inference-only"):
        fused(x, training=True)
    with pytest.raises(ValueError, match="4-D channels-last"):
        BatchNormReLU().build((2, 6))


@pytest.mark.parametrize("condensations,layout", [
    (2, None), (3, "split"), (3, "native"), (3, ["dense", "grouped", "split"]),
    (3, ["native", "dense", "dense"]), (3, ["dense", "split_native", "native"])])
def test_converted_model_equals_trained_model(condensations, layout):
    import keras

    from keras_reid_plugins.backbones._condensenet_model import (BatchNormReLU, CondensedPointwise,
                                                                 CondensingDense)

    bb = _backbone()
    model = bb.build(SHAPE, 5)
    rng = np.random.default_rng(3)
    # random weights and BN statistics, so the comparison is not trivially near zero
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") if i in (0, 3)
                               else rng.normal(0, 0.2, w.shape).astype("float32")
                               for i, w in enumerate(layer.get_weights())])
        elif isinstance(layer, CondensingDense):
            layer.kernel.assign(rng.normal(size=layer.kernel.shape).astype("float32"))
    for _ in range(condensations):
        bb.condense(model)
    clf = model.get_layer("classifier")
    assert float(clf.condensed) == (1 if condensations == 3 else 0)
    converted = bb.convert(model, layout=layout)
    x = _images(3)
    a = model(x, training=False)
    b = converted(x, training=False)
    for key in ("embedding", "features", "logits"):
        np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), atol=1e-4, rtol=1e-4)
    if layout is None:  # dense 1-2, the last block split_native (of 3 here)
        assert isinstance(converted.get_layer("block1_layer1_bn1"), BatchNormReLU)
        assert isinstance(converted.get_layer("block3_layer1_lgc_split"), CondensedPointwise)
        assert converted.get_layer("block3_layer1_conv2_native").groups == 4
    if layout in ("split", "grouped"):  # compact everywhere (dense blocks store the zeros)
        assert converted.count_params() < model.count_params()
    names = {l.name for l in converted.layers}
    block2 = "dense" if layout is None else layout if isinstance(layout, str) else layout[1]
    lgc = model.get_layer("block2_layer1_lgc")
    kept = lgc.in_channels - condensations * (lgc.in_channels // 4)
    if block2 == "grouped":  # gather + grouped conv + shuffle
        gconv = converted.get_layer("block2_layer1_lgc_gconv")
        assert gconv.kernel.shape == (1, 1, kept, lgc.filters) and gconv.groups == 4
    elif block2 in ("split", "split_native"):  # compact weights: each group's kept inputs only
        assert ("block2_layer1_conv2_native" in names) == (block2 == "split_native")
        split = converted.get_layer("block2_layer1_lgc_split")
        assert split.kernel.shape == (4, 1, 1, kept, lgc.filters // 4)
        assert [len(i) for i in split.indices] == [kept] * 4
    else:  # dense/native: gather, shuffle and BatchNorm folded into one plain conv
        if block2 == "native":  # + the trained 3x3 kernel in one TensorFlow grouped conv
            conv2 = converted.get_layer("block2_layer1_conv2_native")
            assert conv2.groups == 4 and conv2.kernel.shape == model.get_layer(
                "block2_layer1_conv2").kernel.shape
        else:
            assert "block2_layer1_conv2_native" not in names
        assert converted.get_layer("block2_layer1_lgc_dense").kernel.shape == (1, 1, lgc.in_channels,
                                                                             lgc.filters)
        assert "block2_layer1_bn2" not in names and "block2_layer1_lgc_gather" not in names
    if condensations == 3:
        assert converted.get_layer("classifier").kernel.shape[0] == clf.in_features // 2


def test_converted_layout_rejected_with_the_choices():
    bb = _backbone()
    model = bb.build(SHAPE, 3)
    with pytest.raises(ValueError, match="dense, native, split_native, split, grouped"):
        bb.convert(model, layout="fast")
    with pytest.raises(ValueError, match="one per dense block"):
        bb.convert(model, layout=["dense", "split"])  # the small preset has 3 blocks


def test_converted_model_saves_and_loads(tmp_path):
    from keras_reid_plugins.backbones.condensenet import load_model

    bb = _backbone()
    model = bb.build(SHAPE, 3)
    for _ in range(3):
        bb.condense(model)
    converted = bb.convert(model, layout=["native", "split_native", "grouped"])
    converted.save(tmp_path / "c.keras")
    again = load_model(str(tmp_path / "c.keras"))
    x = _images()
    np.testing.assert_allclose(np.asarray(converted(x)["features"]), np.asarray(again(x)["features"]),
                               atol=1e-6)


def test_training_steps_condense_and_convert():
    from keras_reid.training.reid_model import ReIDModel

    bb = _backbone(condense_steps=6, group_lasso=1e-3)  # condensations at steps 1, 2, 3
    net = bb.build(SHAPE, 3)
    model = ReIDModel(net, {"type": "softmax"})
    model.compile(optimizer="sgd")
    x = _images(4)
    y = np.array([0, 1, 2, 0], np.int32)
    model.fit(x, y, batch_size=4, epochs=4, verbose=0)
    lgcs = [l for l in net.layers if l.name.endswith("_lgc")]
    assert all(float(l.condensed) == 3 for l in lgcs)
    assert float(net.get_layer("classifier").condensed) == 1
    converted = bb.convert(net)
    np.testing.assert_allclose(np.asarray(net(x, training=False)["logits"]),
                               np.asarray(converted(x, training=False)["logits"]), atol=1e-4)


def test_converted_model_keeps_the_weights_of_synchronised_batchnorm_layers():
    """train_reid's sync_batchnorm (more than one replica) turns the trained BatchNormalization
    layers into SyncBatchNormalization; the converted model still carries their statistics
    (before, the layers of another class were skipped and the converted model kept fresh BN
    weights: outputs off by 0.09 after a 2-replica run)."""
    import keras

    from keras_reid.training.batchnorm import synchronise_batchnorm

    bb = _backbone()
    model = bb.build(SHAPE, 3)
    rng = np.random.default_rng(5)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # by name: a BatchNorm without beta (bn_neck) has its variance third
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                               if w.path.endswith(("gamma", "moving_variance"))
                               else rng.normal(0, 0.2, w.shape).astype("float32")
                               for w in layer.weights])
    assert synchronise_batchnorm(model) > 0
    converted = bb.convert(model)
    x = _images(2)
    expected = np.asarray(model(x, training=False)["features"])
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(expected, np.asarray(converted(x, training=False)["features"]), atol=1e-4)


@pytest.mark.parametrize("kernel_size,strides", [(3, 1), (1, 1), (3, 2)])
def test_group_conv_equals_keras_grouped_conv_with_its_gradients(kernel_size, strides):
    """GroupConv2D (G plain convs on channel slices, the trained form's 3x3 group conv) computes
    what Conv2D(groups=G) computes, forward and backward, with the same kernel."""
    import keras

    from keras_reid_plugins.backbones._condensenet_model import GroupConv2D

    kw = dict(filters=8, kernel_size=kernel_size, strides=strides, padding="same", groups=4)
    ours, ref = GroupConv2D(**kw), keras.layers.Conv2D(**kw)
    x = tf.constant(np.random.default_rng(2).normal(size=(2, 6, 5, 12)).astype("float32"))
    ours.build(x.shape)
    ref.build(x.shape)
    assert ours.kernel.shape == ref.kernel.shape == (kernel_size, kernel_size, 3, 8)
    ref.set_weights(ours.get_weights())
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        a, b = ours(x), ref(x)
        la, lb = tf.reduce_sum(a * a), tf.reduce_sum(b * b)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    for ga, gb in zip(tape.gradient(la, [x, ours.kernel]), tape.gradient(lb, [x, ref.kernel])):
        np.testing.assert_allclose(np.asarray(ga), np.asarray(gb), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel_size,strides", [(3, 1), (1, 1), (3, 2)])
def test_native_group_conv_equals_keras_grouped_conv(kernel_size, strides):
    """NativeGroupConv2D (the converted ``native`` layout's 3x3 conv: TensorFlow's own grouped
    convolution) computes what Conv2D(groups=G) computes, eagerly and in a graph (where
    TensorFlow's optimizer rewrites convolutions), with the same kernel; a bias is refused."""
    import keras

    from keras_reid_plugins.backbones._condensenet_model import NativeGroupConv2D

    kw = dict(filters=8, kernel_size=kernel_size, strides=strides, padding="same", groups=4)
    ours, ref = NativeGroupConv2D(use_bias=False, **kw), keras.layers.Conv2D(use_bias=False, **kw)
    x = tf.constant(np.random.default_rng(4).normal(size=(2, 6, 5, 12)).astype("float32"))
    ours.build(x.shape)
    ref.build(x.shape)
    ref.set_weights(ours.get_weights())
    graph = tf.function(lambda v: tf.nn.relu(ours(v)))
    np.testing.assert_allclose(np.asarray(ours(x)), np.asarray(ref(x)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(graph(x)), np.maximum(np.asarray(ref(x)), 0), atol=1e-5)
    with pytest.raises(ValueError, match="use_bias=False"):
        NativeGroupConv2D(**kw)


def test_model_trained_with_keras_grouped_conv_still_converts():
    """A model trained before GroupConv2D (its 3x3 group convs plain Conv2D(groups)) converts to
    every layout with its weights."""
    import keras

    from keras_reid_plugins.backbones._condensenet_model import GroupConv2D

    bb = _backbone()
    model = bb.build(SHAPE, 3)
    for _ in range(3):
        bb.condense(model)

    def as_keras_conv(layer):
        if isinstance(layer, GroupConv2D):
            return keras.layers.Conv2D.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    old = keras.models.clone_model(model, clone_function=as_keras_conv)
    old.set_weights(model.get_weights())
    assert any(type(l) is keras.layers.Conv2D and l.groups > 1 for l in old.layers)
    x = _images()
    for layout in ("grouped", "split", "dense", "native", "split_native"):
        converted = bb.convert(old, layout=layout)
        np.testing.assert_allclose(np.asarray(old(x, training=False)["features"]),
                                   np.asarray(converted(x, training=False)["features"]), atol=1e-4)
