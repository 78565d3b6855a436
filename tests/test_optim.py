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
