"""Optimisers and learning-rate schedules from the recipe's configs."""
import math

import numpy as np
import pytest
from pydantic import ValidationError

from keras_reid.training.optim import OptimizerConfig, ScheduleConfig, make_optimizer, make_schedule

BASE = 1e-3


def lr_at(schedule, step):
    return float(np.asarray(schedule(step)))


def test_linear_warmup_values():
    s = make_schedule(ScheduleConfig(type="constant", warmup_epochs=2, warmup_factor=0.1), 10, BASE)
    assert lr_at(s, 0) == pytest.approx(BASE * 0.1)
    assert lr_at(s, 10) == pytest.approx(BASE * (0.1 + 0.9 * 0.5))
    assert lr_at(s, 15) == pytest.approx(BASE * (0.1 + 0.9 * 0.75))
    assert lr_at(s, 20) == pytest.approx(BASE)
    assert lr_at(s, 1000) == pytest.approx(BASE)


def test_step_drops_at_milestones():
    s = make_schedule({"type": "step", "milestones": [2, 4], "gamma": 0.1}, 10, BASE)
    assert lr_at(s, 0) == pytest.approx(BASE)
    assert lr_at(s, 19) == pytest.approx(BASE)
    assert lr_at(s, 20) == pytest.approx(BASE * 0.1)
    assert lr_at(s, 39) == pytest.approx(BASE * 0.1)
    assert lr_at(s, 40) == pytest.approx(BASE * 0.01)
    s = make_schedule({"type": "step", "milestones": [3], "warmup_epochs": 1, "warmup_factor": 0.5}, 4, BASE)
    assert lr_at(s, 2) == pytest.approx(BASE * 0.75)
    assert lr_at(s, 12) == pytest.approx(BASE * 0.1)


def test_cosine_after_warmup_ends_at_min_lr():
    cfg = ScheduleConfig(type="cosine", warmup_epochs=1, min_lr=1e-5)
    s = make_schedule(cfg, 10, BASE, epochs=5)
    assert lr_at(s, 0) == pytest.approx(BASE * 0.01)
    assert lr_at(s, 10) == pytest.approx(BASE)
    assert lr_at(s, 30) == pytest.approx(1e-5 + (BASE - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(s, 50) == pytest.approx(1e-5)
    assert lr_at(s, 80) == pytest.approx(1e-5)
    values = [lr_at(s, i) for i in range(10, 51)]
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="epochs"):
        make_schedule(cfg, 10, BASE)


def test_schedule_serialises():
    import keras

    s = make_schedule({"type": "step", "milestones": [1, 3], "warmup_epochs": 0.5}, 7, BASE)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(s))
    assert type(again) is type(s)
    for step in (0, 3, 7, 20, 30):
        assert lr_at(again, step) == pytest.approx(lr_at(s, step))


def test_schedule_config_is_validated():
    with pytest.raises(ValidationError):
        ScheduleConfig(milestones=[40, 20])
    with pytest.raises(ValidationError):
        ScheduleConfig(type="linear")
    with pytest.raises(ValidationError):
        OptimizerConfig(type="rmsprop")


def test_make_optimizer():
    import keras

    adamw = make_optimizer(OptimizerConfig(lr=0.01, weight_decay=5e-4, clipnorm=1.0))
    assert isinstance(adamw, keras.optimizers.AdamW)
    assert adamw.weight_decay == pytest.approx(5e-4) and adamw.clipnorm == 1.0
    assert float(np.asarray(adamw.learning_rate)) == pytest.approx(0.01)
    adam = make_optimizer({"type": "adam", "weight_decay": 0})
    assert type(adam) is keras.optimizers.Adam
    sched = make_schedule(ScheduleConfig(), 5, 0.1)
    sgd = make_optimizer(OptimizerConfig(type="sgd", lr=0.1), sched)
    assert isinstance(sgd, keras.optimizers.SGD)
    assert sgd.nesterov and sgd.momentum == pytest.approx(0.9) and sgd.weight_decay == pytest.approx(5e-4)
    assert sgd._learning_rate is sched


# ---------------------------------------------------------------- coupled weight decay (torch)
def _torch_adam(w, grads, lr, wd, beta_1=0.9, beta_2=0.999, eps=1e-8):
    """``torch.optim.Adam(weight_decay=wd)`` written out in numpy: returns w after the steps."""
    w = np.array(w, np.float64)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64) + wd * w  # L2 added to the gradient
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        denom = np.sqrt(v) / np.sqrt(1 - beta_2 ** t) + eps
        w = w - lr / (1 - beta_1 ** t) * m / denom
    return w


def test_coupled_adam_equals_adam_on_the_gradient_plus_l2():
    import keras

    rng = np.random.default_rng(0)
    kernel = keras.Variable(rng.normal(size=(3, 4)).astype("f4"), name="kernel")
    bias = keras.Variable(rng.normal(size=(4,)).astype("f4"), name="bias")  # decayed too, as in torch
    start = [np.asarray(kernel).copy(), np.asarray(bias).copy()]
    grads = [[rng.normal(size=(3, 4)).astype("f4"), rng.normal(size=(4,)).astype("f4")] for _ in range(3)]
    opt = make_optimizer(OptimizerConfig(type="adam", lr=3e-4, weight_decay=5e-4,
                                         weight_decay_mode="coupled"))
    opt.apply(grads[0], [kernel, bias])  # one step
    for got, w0, g in zip((kernel, bias), start, grads[0]):
        np.testing.assert_allclose(np.asarray(got), _torch_adam(w0, [g], 3e-4, 5e-4), rtol=1e-6, atol=1e-7)
    for step in grads[1:]:
        opt.apply(step, [kernel, bias])
    for i, (got, w0) in enumerate(zip((kernel, bias), start)):
        np.testing.assert_allclose(np.asarray(got), _torch_adam(w0, [g[i] for g in grads], 3e-4, 5e-4),
                                   rtol=1e-6, atol=1e-7)
    # a large decay shows that it goes through the moments: a zero gradient still moves w by
    # lr * sign(w) on the first step (the decoupled form moves it by lr * wd * w)
    w = keras.Variable(np.array([2.0, -3.0], "f4"))
    make_optimizer({"lr": 0.1, "weight_decay": 0.5, "weight_decay_mode": "coupled"}).apply(
        [np.zeros(2, "f4")], [w])
    np.testing.assert_allclose(np.asarray(w), [1.9, -2.9], rtol=1e-5)
    w = keras.Variable(np.array([2.0, -3.0], "f4"))
    make_optimizer({"lr": 0.1, "weight_decay": 0.5}).apply([np.zeros(2, "f4")], [w])
    np.testing.assert_allclose(np.asarray(w), [1.9, -2.85], rtol=1e-5)


def test_coupled_sgd_adds_the_l2_term_to_the_gradient():
    import keras

    w = keras.Variable(np.array([1.0, -2.0], "f4"))
    g = np.array([0.5, 0.25], "f4")
    opt = make_optimizer(OptimizerConfig(type="sgd", lr=0.1, weight_decay=0.01, nesterov=False,
                                         weight_decay_mode="coupled"))
    opt.apply([g], [w])  # first step: no momentum yet
    np.testing.assert_allclose(np.asarray(w), np.array([1.0, -2.0]) - 0.1 * (g + 0.01 * np.array([1.0, -2.0])),
                               rtol=1e-6)


def test_coupled_optimizers_are_chosen_and_serialise():
    import keras

    from keras_reid.training.l2_optimizers import AdamL2, SGDL2

    adam = make_optimizer(OptimizerConfig(weight_decay=5e-4, weight_decay_mode="coupled", clipnorm=2.0))
    assert type(adam) is AdamL2 and adam.l2 == pytest.approx(5e-4) and adam.weight_decay is None
    assert adam.epsilon == pytest.approx(1e-8) and adam.clipnorm == 2.0
    again = keras.optimizers.deserialize(keras.optimizers.serialize(adam))
    assert type(again) is AdamL2 and again.l2 == pytest.approx(5e-4)
    sgd = make_optimizer(OptimizerConfig(type="sgd", weight_decay_mode="coupled"))
    assert type(sgd) is SGDL2 and sgd.l2 == pytest.approx(5e-4) and sgd.weight_decay is None
    assert type(keras.optimizers.deserialize(keras.optimizers.serialize(sgd))) is SGDL2
    assert type(make_optimizer(OptimizerConfig(weight_decay=5e-4))) is keras.optimizers.AdamW
    with pytest.raises(ValidationError):
        OptimizerConfig(weight_decay_mode="l2")
    with pytest.raises(ValueError, match="decay twice"):
        AdamL2(l2=1e-4, weight_decay=1e-4)
