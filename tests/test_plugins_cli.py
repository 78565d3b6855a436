"""`keras-reid plugins [KIND [NAME]]`: descriptions and the parameters of one component."""
import json

from click.testing import CliRunner

from keras_reid.cli import main
from keras_reid.cli.plugins import parameters, type_name
from keras_reid.registry import REGISTRY


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_component_parameters_have_types_defaults_constraints_and_descriptions():
    res = invoke("plugins", "backbone", "resnet50")
    assert res.exit_code == 0, res.output
    assert "backbone 'resnet50'" in res.output
    assert "last_stride: 1 | 2  (default 1)" in res.output
    assert "dropout: float  (default 0.0, >= 0.0, < 1.0)" in res.output
    assert "stride of the last stage" in res.output          # the field's description
    as_json = json.loads(invoke("plugins", "backbone", "resnet50", "--json").output)
    by_name = {p["name"]: p for p in as_json["parameters"]}
    assert by_name["pooling"]["type"] == "'avg' | 'max' | 'gem'" and by_name["pooling"]["default"] == "avg"
    assert by_name["embedding_dim"]["constraints"] == ["> 0"]


def test_required_parameters_and_nested_defaults():
    params = {p["name"]: p for p in parameters(REGISTRY.get("stage", "train_reid").config)}
    assert params["dataset"]["required"] and params["dataset"]["default"] is None
    assert params["optimizer"]["default"]["type"] == "adam"      # a nested model, dumped
    assert not params["epochs"]["required"] and params["epochs"]["default"] == 60


def test_type_names_are_readable():
    from typing import Literal
    assert type_name(int | None) == "int | null"
    assert type_name(list[int]) == "list[int]"
    assert type_name(Literal["a", "b"]) == "'a' | 'b'"


def test_unknown_component_is_one_line_with_a_suggestion_and_exit_2():
    res = invoke("plugins", "backbone", "resnet5")
    assert res.exit_code == 2
    assert "did you mean 'resnet50'" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_every_builtin_description_is_a_whole_first_paragraph():
    """Descriptions come from the whole first docstring paragraph (not its first line cut
    mid-sentence) and say what the component is."""
    for entry in REGISTRY.entries():
        d = entry.description
        assert d and not d.startswith("The registered component"), (entry.kind, entry.name, d)
        assert d.rstrip().endswith((".", ")")), (entry.kind, entry.name, d)


def test_bad_component_parameters_on_the_command_line_are_one_line_exit_2(tmp_path):
    """`keras-reid filter face --set threshold=abc` raised pydantic's traceback."""
    import cv2
    import numpy as np

    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    res = invoke("filter", "face", str(image), "--set", "threshold=abc", "--set", "crop=middle")
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "threshold: got 'abc'" in lines[0] and "crop: got 'middle'" in lines[0]
    assert "keras-reid plugins KIND NAME" in lines[0]
