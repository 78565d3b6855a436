"""Recipes: base inheritance, --set, ${ENV}, schema validation with file:line errors."""
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field

from keras_reid.errors import RecipeError
from keras_reid.recipe import component, load_recipe, parse_override, ref
from keras_reid.registry import Registry


class ToyBackboneCfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = 8
    last_stride: int = Field(2, ge=1, le=2)


class ToyStageCfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str = ref("datasets")
    epochs: int = 1
    lr: float = 0.1
    backbone: dict = component("backbone", {"type": "toy"})


class ToyEvalCfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[str] = ref("stages")


class ToyDataCfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str


@pytest.fixture
def reg():
    r = Registry()
    r._loaded = True
    r.register("backbone", "toy", config=ToyBackboneCfg)(type("Toy", (), {}))
    r.register("stage", "train", config=ToyStageCfg)(type("Train", (), {}))
    r.register("stage", "evalx", config=ToyEvalCfg)(type("Ev", (), {}))
    r.register("dataset", "folder", config=ToyDataCfg)(type("D", (), {}))
    return r


BASE = """\
name: base
seed: 1
datasets:
  d: {type: folder, root: /data}
stages:
  train:
    type: train
    dataset: d
    epochs: 3
    backbone: {type: toy, width: 16}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_base_inheritance_and_overrides(tmp_path, reg):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "base: base.yaml\nname: child\nstages:\n  train:\n    epochs: 5\n"
                  "  ev: {type: evalx, models: [train]}\n")
    rec = load_recipe(child, ["stages.train.lr=0.5", "seed=7"], registry=reg)
    assert rec.name == "child"
    assert rec.model.seed == 7
    cfg = rec.stage_configs["train"]
    assert cfg.epochs == 5 and cfg.lr == 0.5 and cfg.backbone == {"type": "toy", "width": 16}
    assert list(rec.model.stages) == ["train", "ev"]
    assert "name: child" in rec.to_yaml()


def test_base_component_with_another_type_is_replaced_not_merged(tmp_path, reg):
    class OtherCfg(BaseModel):
        model_config = ConfigDict(extra="forbid")
        depth: int = 3

    reg.register("backbone", "other", config=OtherCfg)(type("Other", (), {}))
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "base: base.yaml\nstages:\n  train:\n"
                  "    backbone: {type: other, depth: 5}\n")
    assert load_recipe(child, registry=reg).stage_configs["train"].backbone == {"type": "other", "depth": 5}
    same = write(tmp_path, "same.yaml", "base: base.yaml\nstages:\n  train:\n    backbone: {type: toy}\n")
    assert load_recipe(same, registry=reg).stage_configs["train"].backbone == {"type": "toy", "width": 16}


def test_set_coerces_types():
    assert parse_override("a.b=2") == (("a", "b"), 2)
    assert parse_override("a.0.c=[64, 32]") == (("a", 0, "c"), [64, 32])
    assert parse_override("x=null") == (("x",), None)
    assert parse_override("x=true") == (("x",), True)
    assert parse_override("x=abc") == (("x",), "abc")
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        parse_override("novalue")


def test_env_interpolation(tmp_path, reg):
    p = write(tmp_path, "r.yaml", BASE.replace("/data", "\"${MY_DATA:-/fallback}/x\""))
    assert load_recipe(p, registry=reg, env={}).data["datasets"]["d"]["root"] == "/fallback/x"
    assert load_recipe(p, registry=reg, env={"MY_DATA": "/e"}).data["datasets"]["d"]["root"] == "/e/x"
    q = write(tmp_path, "q.yaml", BASE.replace("/data", "\"${NEEDED_VAR}\""))
    with pytest.raises(RecipeError) as err:
        load_recipe(q, registry=reg, env={})
    assert "q.yaml:4" in str(err.value) and "NEEDED_VAR is not set" in str(err.value)


@pytest.mark.parametrize("value", ["${}", "${UNCLOSED", "${A-B}/x", "a ${OK} ${"])
def test_malformed_variable_references_are_errors_not_literal_text(tmp_path, reg, value):
    p = write(tmp_path, "m.yaml", BASE.replace("/data", f'"{value}"'))
    with pytest.raises(RecipeError) as err:
        load_recipe(p, registry=reg, env={"OK": "1"})
    assert "m.yaml:4" in str(err.value) and "is not a variable reference" in str(err.value)


def test_double_dollar_is_a_literal_reference(tmp_path, reg):
    p = write(tmp_path, "l.yaml", BASE.replace("/data", '"/d/$${HOME}/${X:-x}"'))
    assert load_recipe(p, registry=reg, env={}).data["datasets"]["d"]["root"] == "/d/${HOME}/x"


def test_base_that_is_a_folder_says_so(tmp_path, reg):
    (tmp_path / "common").mkdir()
    p = write(tmp_path, "c.yaml", "base: common\n" + BASE)
    with pytest.raises(RecipeError, match=r"c.yaml:1: base: 'common' is a folder, not a recipe file"):
        load_recipe(p, registry=reg)
    with pytest.raises(RecipeError, match="is a folder, not a recipe file"):
        load_recipe(tmp_path / "common", registry=reg)


@pytest.mark.parametrize("patch, line, expect", [
    ("    epochs: 3\n", "    epochs: three\n", ["r.yaml:9", "stages.train.epochs", "'three'", "integer"]),
    ("    epochs: 3\n", "    epoch: 3\n", ["r.yaml:9", "stages.train.epoch", "did you mean 'epochs'"]),
    ("{type: toy, width: 16}", "{type: toy, width: 16, last_stride: 3}",
     ["r.yaml:10", "stages.train.backbone.last_stride", "got 3", "less than or equal to 2"]),
    ("{type: toy, width: 16}", "{type: tyo}", ["r.yaml:10", "unknown backbone 'tyo'", "did you mean 'toy'"]),
    ("    dataset: d\n", "    dataset: e\n", ["r.yaml:8", "stages.train.dataset", "'e' is not a name"]),
    ("    type: train\n", "    type: trian\n", ["r.yaml:7", "unknown stage 'trian'", "did you mean 'train'"]),
])
def test_errors_have_location_path_value_and_expectation(tmp_path, reg, patch, line, expect):
    p = write(tmp_path, "r.yaml", BASE.replace(patch, line))
    with pytest.raises(RecipeError) as err:
        load_recipe(p, registry=reg)
    for fragment in expect:
        assert fragment in str(err.value), (fragment, str(err.value))
    assert err.value.exit_code == 2


def test_error_location_points_into_base_file(tmp_path, reg):
    write(tmp_path, "base.yaml", BASE.replace("epochs: 3", "epochs: -x"))
    child = write(tmp_path, "child.yaml", "base: base.yaml\nname: child\n")
    with pytest.raises(RecipeError, match=r"base\.yaml:9"):
        load_recipe(child, registry=reg)


def test_set_error_location(tmp_path, reg):
    p = write(tmp_path, "r.yaml", BASE)
    with pytest.raises(RecipeError, match=r"--set stages.train.epochs=many"):
        load_recipe(p, ["stages.train.epochs=many"], registry=reg)


def test_stage_refs_must_point_backwards(tmp_path, reg):
    p = write(tmp_path, "r.yaml", BASE + "  ev: {type: evalx, models: [trian]}\n")
    with pytest.raises(RecipeError, match="did you mean 'train'"):
        load_recipe(p, registry=reg)


def test_yaml_syntax_error_and_missing_file(tmp_path, reg):
    p = write(tmp_path, "bad.yaml", "name: [unclosed\n")
    with pytest.raises(RecipeError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_recipe(p, registry=reg)
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml", registry=reg)


def test_unsafe_yaml_tags_are_rejected(tmp_path, reg):
    p = write(tmp_path, "evil.yaml", "name: !!python/object/apply:os.system ['echo hi']\nstages: {}\n")
    with pytest.raises(RecipeError):
        load_recipe(p, registry=reg)


def test_stage_hash_changes_with_config_and_upstream(tmp_path, reg):
    write(tmp_path, "base.yaml", BASE + "  ev: {type: evalx, models: [train]}\n")
    a = load_recipe(tmp_path / "base.yaml", registry=reg)
    b = load_recipe(tmp_path / "base.yaml", ["stages.train.epochs=4"], registry=reg)
    c = load_recipe(tmp_path / "base.yaml", ["stages.ev.models=[train]"], registry=reg)
    assert a.stage_hash("train") != b.stage_hash("train")
    assert a.stage_hash("ev") != b.stage_hash("ev")  # upstream changed
    assert a.stage_hash("ev") == c.stage_hash("ev")


@pytest.mark.parametrize("text, override", [
    (BASE.replace("  train:\n", "  ../../../victim:\n", 1), None),
    (BASE.replace("  d: {type", "  ../d: {type", 1).replace("dataset: d", "dataset: ../d"), None),
    (BASE, "name=../../escape"),
    (BASE, "name=a/b"),
    (BASE.replace("name: base", "name: ''"), None),
])
def test_names_are_identifiers_so_nothing_is_written_outside_the_run_folder(tmp_path, reg, text, override):
    path = write(tmp_path, "r.yaml", text)
    with pytest.raises(RecipeError, match="letters, digits, '_' and '-'"):
        load_recipe(path, [override] if override else [], registry=reg)


def test_hostile_yaml_is_refused_quickly_in_one_line(tmp_path, reg):
    """An alias bomb once took a minute and 4 GB; a list as a key and non-UTF-8 bytes were
    tracebacks; a huge file was parsed in full."""
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
    cases = {
        "bomb.yaml": ("\n".join(bomb) + "\n").encode(), "key.yaml": b"name: x\n? [a, b]\n: 1\n",
        "latin1.yaml": b"name: caf\xe9\n", "huge.yaml": b"name: x\n" + b"# padding\n" * 120_000,
    }
    messages = {"bomb.yaml": "expands to more than", "key.yaml": "a list cannot be a key",
                "latin1.yaml": "not UTF-8", "huge.yaml": "a recipe is at most"}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(RecipeError, match=messages[name]) as err:
            load_recipe(path, registry=reg)
        assert "\n" not in str(err.value)


def test_a_boolean_is_not_a_number(tmp_path, reg):
    path = write(tmp_path, "r.yaml", BASE)
    with pytest.raises(RecipeError, match="stages.train.epochs: got True, expected a number"):
        load_recipe(path, ["stages.train.epochs=true"], registry=reg)
    assert load_recipe(path, ["stages.train.epochs=4"], registry=reg).stage_configs["train"].epochs == 4


def test_runs_dir_holds_run_folders_and_old_run_dir_key_means_the_same(tmp_path, reg):
    """One concept: the recipe's runs_dir (old name run_dir) is the parent of run folders;
    `keras-reid run --run-dir` names the run folder itself."""
    from keras_reid.runner import default_run_dir

    write(tmp_path, "base.yaml", BASE)
    assert default_run_dir(load_recipe(tmp_path / "base.yaml", registry=reg)) == Path("runs/base")
    for key in ("runs_dir", "run_dir"):
        rec = load_recipe(tmp_path / "base.yaml", [f"{key}={tmp_path}/parent"], registry=reg)
        assert default_run_dir(rec) == tmp_path / "parent" / "base"
