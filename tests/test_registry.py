"""Registry: registration, lookup errors, clashes, entry-point discovery, laziness."""
import subprocess
import sys

import pytest
from pydantic import BaseModel, ConfigDict

from keras_reid.registry import KINDS, REGISTRY, Registry, RegistryError


class Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = 4


def fresh() -> Registry:
    reg = Registry()
    reg._loaded = True  # no entry-point discovery for these unit tests
    return reg


def test_kinds_cover_the_design():
    for kind in ("dataset", "generator", "filter", "masker", "pose", "backbone", "loss", "stage"):
        assert kind in KINDS


def test_register_and_create_validates_config():
    reg = fresh()

    @reg.register("backbone", "toy", config=Cfg)
    class Toy:
        """A toy backbone.

        More text."""

        def __init__(self, config):
            self.config = config

    entry = reg.get("backbone", "toy")
    assert entry.description == "A toy backbone."
    obj = reg.create("backbone", {"type": "toy", "width": 8})
    assert obj.config.width == 8
    with pytest.raises(Exception):
        reg.create("backbone", {"type": "toy", "widht": 8})


def test_unknown_name_gives_kind_did_you_mean_and_list():
    reg = fresh()
    for name in ("resnet50", "condensenet"):
        reg.register("backbone", name)(type(name, (), {"__init__": lambda self, c: None}))
    with pytest.raises(RegistryError) as err:
        reg.get("backbone", "resnet5O", path="stages.train.backbone.type")
    msg = str(err.value)
    assert "unknown backbone 'resnet5O'" in msg
    assert "did you mean 'resnet50'" in msg
    assert "condensenet, resnet50" in msg
    assert "stages.train.backbone.type" in msg


def test_a_kind_nothing_registers_points_at_stale_entry_points():
    """An older install's entry points (e.g. ``stages = keras_reid.stages`` before the built-in
    stages moved to ``keras_reid.stages.builtin``) register nothing: the error says to reinstall."""
    with pytest.raises(RegistryError, match=r"available stages: \(none\).*reinstall keras-reid"):
        fresh().get("stage", "train_reid")
    reg = fresh()
    reg.register("stage", "other")(type("Other", (), {"__init__": lambda self, c: None}))
    with pytest.raises(RegistryError) as err:
        reg.get("stage", "train_reid")
    assert "reinstall" not in str(err.value)


def test_unknown_kind():
    with pytest.raises(RegistryError, match="did you mean 'backbone'"):
        fresh().get("backbones", "x")


def test_name_clash_names_both_providers_and_override_is_explicit():
    reg = fresh()

    class A:
        def __init__(self, c):
            pass

    class B:
        def __init__(self, c):
            pass

    B.__module__ = "other_pkg.mod"
    reg.register("loss", "dup")(A)
    with pytest.raises(RegistryError) as err:
        reg.register("loss", "dup")(B)
    assert __name__ in str(err.value) and "other_pkg.mod" in str(err.value)
    reg.register("loss", "dup", override=True)(B)
    assert reg.get("loss", "dup").obj is B


def test_builtins_are_discovered_through_entry_points():
    REGISTRY.load()
    assert not REGISTRY.failures, REGISTRY.failures
    assert "train_reid" in REGISTRY.names("stage")
    assert "evaluate" in REGISTRY.names("stage")
    for kind, name in [("backbone", "resnet50"), ("loss", "softmax_triplet"), ("dataset", "market1501"),
                       ("dataset", "synthetic"), ("filter", "face")]:
        assert name in REGISTRY.names(kind), (kind, name)
        assert REGISTRY.get(kind, name).provider == "keras-reid"


def test_listing_plugins_does_not_import_tensorflow():
    code = ("import sys; from keras_reid.registry import REGISTRY; REGISTRY.load(); "
            "assert REGISTRY.entries(); heavy = [m for m in ('tensorflow', 'keras', 'mediapipe') "
            "if m in sys.modules]; print(heavy); assert not heavy, heavy")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
