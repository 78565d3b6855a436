"""The closing lines of a run: metrics per model with what it was trained on, the chance level,
what the metrics mean, where the models are and what to run next."""
import json

from keras_reid.recipe import load_recipe
from keras_reid.run_summary import closing_lines

RECIPE = """
name: demo
datasets:
  synth: {type: synthetic, root: %s, ids: 10}
stages:
  baseline: &reid
    type: train_reid
    dataset: synth
    cameras: [1]
    backbone: {type: tiny}
  augmented:
    <<: *reid
    generated: [{dataset: synth}]
  evaluate: {type: evaluate, dataset: synth, models: [baseline, augmented]}
"""


def test_closing_lines_table_chance_meaning_models_and_next_steps(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE % (tmp_path / "data"))
    recipe = load_recipe(path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({
        "models": {"baseline": {"mAP": 0.1234, "rank1": 0.2, "rank5": 0.4},
                   "augmented": {"mAP": 0.25, "rank1": 0.3125, "rank5": 0.5}},
        "chance": {"rank1": 0.007, "mAP": 0.0139}}))
    summaries = {"baseline": {"model": "baseline/model.keras", "num_images": 176, "generated_images": {}},
                 "augmented": {"model": "augmented/model.keras", "num_images": 176,
                               "generated_images": {"augment": 176}}}
    lines = closing_lines(recipe, run, summaries)
    text = "\n".join(lines)
    base = next(line for line in lines if line.startswith("baseline"))
    assert "12.34%" in base and "20.00%" in base and "176 real images (camera 1)" in base
    aug = next(line for line in lines if line.startswith("augmented"))
    assert "31.25%" in aug and "176 generated (augment)" in aug
    chance = next(line for line in lines if line.startswith("chance"))
    assert "1.39%" in chance and "0.70%" in chance
    assert "rank-1:" in text and "mAP:" in text
    assert str(run / "baseline" / "model.keras") in text
    assert f"tensorboard --logdir {run / 'tensorboard'}" in text
    assert f"keras-reid report {run}" in text
    assert f"keras-reid search {run / 'augmented'} --query IMAGE --gallery FOLDER" in text


def test_closing_lines_without_metrics_still_say_where_to_look(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE % (tmp_path / "data"))
    lines = closing_lines(load_recipe(path), tmp_path / "run", {})
    assert not any(line.startswith("model") for line in lines)
    assert any("tensorboard --logdir" in line for line in lines)
