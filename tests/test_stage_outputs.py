"""Typed stage outputs (keras_reid.stages.outputs): what later stages read from a completion
marker is checked when it is read, and an old or damaged marker is a one-line UserError."""
import json

import pytest

from keras_reid.errors import UserError
from keras_reid.stages.base import COMPLETE_MARKER, StageContext
from keras_reid.stages.outputs import GeneratorOutput, ReIDOutput


def _ctx(tmp_path, stage, summary):
    (tmp_path / stage).mkdir(parents=True)
    (tmp_path / stage / COMPLETE_MARKER).write_text(json.dumps({"stage": stage, "summary": summary}))
    return StageContext(recipe=None, stage_name="reader", run_dir=tmp_path)


GEN = {"model": "g/generator.keras", "generator": {"type": "pix2pix"}, "pairing": "camera_pairs",
       "generation_needs": ["source", "source_mask"], "image_size": [32, 16], "source_camera": 1,
       "target_camera": 2, "dataset": "market", "split": "train", "masker": None,
       "epochs": 3, "final": {"g_loss": 1.5}}


def test_generator_output_is_typed_and_keeps_the_other_figures(tmp_path):
    ctx = _ctx(tmp_path, "g", GEN)
    out = ctx.output_of("g", GeneratorOutput)
    assert out.image_size == (32, 16) and out.target_camera == 2
    assert out.files() == {"": "g/generator.keras"}
    assert out.model_extra["final"] == {"g_loss": 1.5}  # untyped figures stay
    assert ctx.output_of("g") == GEN  # without a type: the summary as written
    per_id = GeneratorOutput.model_validate({**GEN, "model": None, "generators": {"3": "g/3.keras"}})
    assert per_id.files() == {"3": "g/3.keras"}
    again = GeneratorOutput.model_validate(out.dump())
    assert again == out


def test_reid_output_types_the_files_evaluate_reads(tmp_path):
    summary = {"model": "r/model.keras", "image_size": [64, 32], "num_classes": 5,
               "classifier": "r/classifier.keras",
               "holdout": {"fraction": 0.15, "images": 9, "file": "r/holdout.json"},
               "converted": {"model": "r/model_converted.keras", "max_abs_diff": 2e-6}}
    out = _ctx(tmp_path, "r", summary).output_of("r", ReIDOutput)
    assert out.holdout.file == "r/holdout.json" and out.converted.classifier is None
    assert out.converted.max_abs_diff == pytest.approx(2e-6)


@pytest.mark.parametrize("broken", [{k: v for k, v in GEN.items() if k != "image_size"},
                                    {**GEN, "image_size": "large"}])
def test_a_marker_this_version_cannot_read_is_a_one_line_error(tmp_path, broken):
    ctx = _ctx(tmp_path, "g", broken)
    with pytest.raises(UserError) as err:
        ctx.output_of("g", GeneratorOutput)
    msg = str(err.value)
    assert "\n" not in msg and "stage 'g'" in msg and "image_size" in msg
    assert str(tmp_path / "g" / COMPLETE_MARKER) in msg and "re-run" in msg


def test_a_stage_that_has_not_completed_is_named(tmp_path):
    ctx = StageContext(recipe=None, stage_name="reader", run_dir=tmp_path)
    with pytest.raises(UserError, match="stage 'g', which has not completed"):
        ctx.output_of("g", GeneratorOutput)
