"""The end of a run: the HTML report (command and stage), the closing lines, and TensorBoard
(tag prefixes, eval_every curves, re-ranked metrics, the recipe as text, no duplicate points).

One tiny run (two re-ID models of 2 epochs on a small synthetic set, evaluated with re-ranking,
then a report stage) is trained once for the module."""
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from keras_reid import runner, tb_events, testing
from keras_reid.cli import main
from keras_reid.recipe import load_recipe

REID = {"type": "train_reid", "dataset": "synth", "image_size": [64, 32],
        "backbone": {"type": "tiny", "width": 8, "blocks": 2, "embedding_dim": 16},
        "optimizer": {"type": "adam", "lr": 0.001}, "batch_size": 12, "instances_per_id": 2, "epochs": 2,
        "eval_every": 1, "log_every": 1, "bn_recalibration_batches": 2, "verbose": 0}
STAGES = {
    "a": REID,
    "b": dict(REID, cameras=[1, 2], epochs=1, eval_every=None),
    "evaluate": {"type": "evaluate", "dataset": "synth", "models": ["a", "b"], "rerank": True, "k1": 6,
                 "k2": 2, "ranked_lists": 3, "projector_samples": 0},
    "report": {"type": "report", "queries": 2, "top": 5},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_data):
    """``(recipe path, run folder, stage summaries)`` of the tiny run."""
    base = tmp_path_factory.mktemp("report")
    data = synthetic_data(images_per_id_camera=3)  # ids 12, cameras 3, 64x32, seed 1
    recipe = testing.build_recipe(base / "recipe.yaml", name="report", seed=1, stages=STAGES,
                                  datasets={"synth": data.spec}, compare=[["a", "b"]])
    out = runner.run(recipe, base / "run", echo=lambda *_: None)
    return Path(recipe.source), base / "run", out


class _Cells(HTMLParser):
    """Every element's attributes, plus the text of the page."""

    def __init__(self):
        super().__init__()
        self.elements: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Cells:
    p = _Cells()
    p.feed(page)
    return p


def _metric_cells(parsed: _Cells) -> dict:
    return {(a["data-model"], a.get("data-variant", ""), a["data-metric"]): float(a["data-value"])
            for tag, a in parsed.elements if tag == "td" and "data-model" in a and "data-repeat" not in a}


def test_report_stage_shows_the_metrics_of_metrics_json(run):
    _, run_dir, out = run
    assert out["report"]["report"] == "report/report.html"
    page = (run_dir / "report" / "report.html").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cells = _metric_cells(_parse(page))
    for model in ("a", "b"):
        for key in ("mAP", "rank1", "rank5", "mINP"):
            assert cells[(model, "", key)] == metrics["models"][model][key]
            assert cells[(model, "rerank", key)] == metrics["models"][model]["rerank"][key]
    for key, value in metrics["chance"].items():
        assert cells[("chance", "chance", key)] == value
    diff = metrics["models"]["a"]["mAP"] - metrics["models"]["b"]["mAP"]
    pair = [a for tag, a in _parse(page).elements if a.get("data-pair") == "a-b" and a.get("data-metric") == "mAP"]
    assert pair and abs(float(pair[0]["data-value"]) - diff) < 1e-12
    text = " ".join(_parse(page).text)
    for needed in ("CMC curves", "Ranked lists", "Training curves", "Recipe", "Provenance",
                   "a random ranking of the gallery", "sha256"):
        assert needed in text


def test_report_is_self_contained_with_labelled_ranked_lists(run):
    _, run_dir, _ = run
    page = (run_dir / "report" / "report.html").read_text()
    parsed = _parse(page)
    for tag, attrs in parsed.elements:
        for key in ("src", "href"):
            value = attrs.get(key)
            if value is not None:
                assert value.startswith(("data:", "#")), (tag, key, value[:80])
        assert not (tag == "link" or (tag == "script" and "src" in attrs))
    assert "url(http" not in page and "@import" not in page
    ranked = json.loads((run_dir / "evaluate" / "ranked_a.json").read_text())
    rows = [a for tag, a in parsed.elements if tag == "div" and a.get("class") == "ranked"
            and a["data-model"] == "a"]
    assert len(rows) == 2   # queries: 2
    for row, q in zip(rows, ranked["queries"]):
        assert int(row["data-hits"]) == sum(g["match"] for g in q["top"][:5])
    tiles = [a["class"] for tag, a in parsed.elements if tag == "figure"]
    assert tiles.count("tile query") == 4 and tiles.count("tile ok") + tiles.count("tile bad") == 20
    assert all(a["src"].startswith("data:image/png;base64,") for tag, a in parsed.elements if tag == "img")
    # the last query row's text names identity, camera and distance of the gallery images
    first = ranked["queries"][0]["top"][0]
    assert f"id {first['pid']}" in page and f"d {first['distance']:.3f}" in page


def test_tensorboard_prefixes_eval_curves_rerank_and_recipe_text(run):
    path, run_dir, out = run
    tb = run_dir / "tensorboard"
    scalars = tb_events.scalars(tb / "a")
    assert {"reid/epoch/loss", "reid/step/loss", "reid/epoch/lr"} <= set(scalars)
    assert not any(t.startswith(("train_step/", "epoch/")) for t in scalars)
    assert [s for s, _ in scalars["reid/eval/mAP"]] == [1, 2]     # eval_every: 1, 2 epochs
    history = out["a"]["eval_history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert scalars["reid/eval/rank1"][-1][1] == pytest.approx(history[-1]["rank1"])
    assert json.loads((run_dir / "a" / "eval_history.json").read_text()) == history
    assert "eval_history" not in out["b"] and "reid/eval/mAP" not in tb_events.scalars(tb / "b")
    ev = tb_events.scalars(tb / "evaluate" / "a")
    metrics = json.loads((run_dir / "metrics.json").read_text())["models"]["a"]
    assert ev["eval/rerank/mAP"][0][1] == pytest.approx(metrics["rerank"]["mAP"])
    assert ev["eval/mAP"][0][1] == pytest.approx(metrics["mAP"])
    assert "reid/input_batch" in tb_events.images(tb / "a")
    text = tb_events.texts(tb / "recipe")["recipe/resolved"]
    assert len(text) == 1 and "name: report" in text[0][1] and "eval_every: 1" in text[0][1]


def test_a_run_with_every_stage_done_prints_the_table_and_the_report_again(run):
    path, run_dir, _ = run
    res = CliRunner().invoke(main, ["run", str(path), "--run-dir", str(run_dir)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert res.output.count("skipped") == 4
    lines = res.output.splitlines()
    assert any(line.startswith("a ") and "%" in line for line in lines)
    assert any(line.startswith("chance") for line in lines)
    assert f"report: {run_dir / 'report' / 'report.html'}" in res.output
    assert "tensorboard --logdir" in res.output
    assert len(tb_events.texts(run_dir / "tensorboard" / "recipe")["recipe/resolved"]) == 1


def test_a_stage_run_again_moves_its_tensorboard_aside_and_the_report_follows(run, tmp_path):
    path, run_dir, out = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = (copy / "report" / ".complete.json").read_text()
    rec = load_recipe(path, ["stages.evaluate.rerank=false"])
    again = runner.run(rec, copy, echo=lambda *_: None)
    assert [p.name for p in copy.glob("evaluate.stale-*/tensorboard/a")]
    assert len(tb_events.scalars(copy / "tensorboard" / "evaluate" / "a")["eval/mAP"]) == 1
    assert "eval/rerank/mAP" not in tb_events.scalars(copy / "tensorboard" / "evaluate" / "a")
    assert (copy / "report" / ".complete.json").read_text() != before   # made again
    page = (copy / "report" / "report.html").read_text()
    assert not [k for k in _metric_cells(_parse(page)) if k[1] == "rerank"]
    assert again["a"] == out["a"]   # training was not repeated


def test_report_command_on_a_repeated_run_shows_mean_std_each_repeat_and_differences(run, tmp_path):
    from keras_reid.repeats import aggregate

    _, run_dir, _ = run
    parent = tmp_path / "repeats"
    runs = []
    for seed, shift in ((0, 0.0), (1, 0.05)):
        folder = parent / f"seed-{seed}"
        shutil.copytree(run_dir, folder)
        m = json.loads((folder / "metrics.json").read_text())
        m["models"]["a"]["mAP"] += shift
        (folder / "metrics.json").write_text(json.dumps(m))
        runs.append(m)
    agg = {"recipe": "report", "seeds": [0, 1], "sweep": {},
           "repeats": [{"folder": f"seed-{s}", "seed": s, "sweep": {}} for s in (0, 1)],
           **aggregate(runs, [("a", "b")])}
    (parent / "metrics.json").write_text(json.dumps(agg))
    (parent / "repeats.json").write_text(json.dumps({k: agg[k] for k in ("recipe", "seeds", "sweep", "repeats")}))
    out = tmp_path / "r.html"
    res = CliRunner().invoke(main, ["report", str(parent), "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0 and str(out) in res.output
    page = out.read_text()
    parsed = _parse(page)
    cells = _metric_cells(parsed)
    assert cells[("a", "", "mAP")] == pytest.approx(np.mean([r["models"]["a"]["mAP"] for r in runs]))
    assert f"&plusmn; {100 * agg['models']['a']['mAP_std']:.2f}" in page
    per_repeat = {(a["data-repeat"], a["data-metric"]): float(a["data-value"]) for tag, a in parsed.elements
                  if a.get("data-repeat") and a.get("data-model") == "a"}
    assert per_repeat[("seed-1", "mAP")] == pytest.approx(runs[1]["models"]["a"]["mAP"])
    diff = [a for tag, a in parsed.elements if a.get("data-pair") == "a-b" and a.get("data-metric") == "mAP"]
    assert float(diff[0]["data-value"]) == pytest.approx(agg["comparisons"]["a-b"]["mAP"]["mean"])
    assert "3 repeats" not in page and "2 repeats" in page


def test_report_command_errors_are_one_line_with_exit_code_2(tmp_path):
    res = CliRunner().invoke(main, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.output
    res = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "not a run folder" in res.output and "Traceback" not in res.output


def test_report_opens_in_a_headless_browser_without_errors(run, tmp_path, load_tool):
    """tools/report_screenshot.py: Chromium with every host name unresolvable renders the page,
    writes the screenshot and logs no error or network request."""
    tool = load_tool("report_screenshot")
    if tool.find_browser() is None:
        pytest.skip("no Chromium/Chrome binary (apt-get install chromium, or set $CHROME)")
    _, run_dir, _ = run
    result = tool.check(run_dir / "report" / "report.html", tmp_path / "shot.png", height=3000)
    assert result["rendered"] and result["screenshot_written"], result
    assert result["errors"] == [] and result["network_requests"] == 0, result
    assert {"results", "cmc", "ranked", "stages", "recipe", "provenance"} <= set(result["sections"])


def test_purge_beyond_keeps_what_a_resumed_stage_will_not_write_again(tmp_path):
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        for step in range(1, 31):
            tf.summary.scalar("gan/step/d_loss", 1.0 / step, step=step)
        for epoch in range(1, 4):
            tf.summary.scalar("gan/epoch/d_loss", 1.0 / epoch, step=epoch)
            tf.summary.scalar("reid/eval/mAP", 0.1 * epoch, step=epoch)
        tf.summary.image("gan/samples", np.zeros((1, 4, 4, 3), np.uint8), step=0)
        tf.summary.image("gan/samples", np.zeros((1, 4, 4, 3), np.uint8), step=25)
    writer.flush()
    assert tb_events.purge_beyond(tmp_path, step=20, epoch=2) == 10 + 1 + 1 + 1
    s = tb_events.scalars(tmp_path)
    assert [p for p, _ in s["gan/step/d_loss"]] == list(range(1, 21))
    assert [p for p, _ in s["gan/epoch/d_loss"]] == [1, 2] == [p for p, _ in s["reid/eval/mAP"]]
    assert [p for p, _ in tb_events.images(tmp_path)["gan/samples"]] == [0]
    assert tb_events.purge_beyond(tmp_path, step=20, epoch=2) == 0     # nothing more to drop
    tb_events.purge_beyond(tmp_path, step=0, epoch=0)                  # a fresh start
    assert tb_events.scalars(tmp_path) == {} and tb_events.event_files(tmp_path) == []


def test_writing_a_synthetic_dataset_prints_a_line(tmp_path, capsys):
    from keras_reid_plugins.datasets.synthetic import ensure_synthesised

    ensure_synthesised(tmp_path / "d", {"version": 2}, None, True,
                       lambda: {"images": {"train": 10, "query": 3}, "seconds": 4.2},
                       what="synthetic dataset", command="keras-reid data synth")
    assert f"wrote the synthetic dataset to {tmp_path / 'd'}: 13 images in 4 s" in capsys.readouterr().out


def test_a_resumed_training_leaves_no_duplicate_points(run, tmp_path, monkeypatch):
    """Killed in the middle of epoch 2 (after its first step scalars were written), resumed from
    the epoch-1 checkpoint: every step and epoch appears once, as in the uninterrupted run."""
    from keras_reid.training.callbacks import ScalarLogger

    path, straight, _ = run
    original = ScalarLogger.on_train_batch_end

    def interrupt_in_epoch_2(self, batch, logs=None):
        original(self, batch, logs)
        if self._epoch == 1 and batch == 1:
            self.writer.flush()
            raise KeyboardInterrupt("simulated Ctrl-C in epoch 2")

    monkeypatch.setattr(ScalarLogger, "on_train_batch_end", interrupt_in_epoch_2)
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        runner.run(load_recipe(path), resumed, echo=lambda *_: None, only=["a"])
    cut = tb_events.scalars(resumed / "tensorboard" / "a")["reid/step/loss"]
    monkeypatch.setattr(ScalarLogger, "on_train_batch_end", original)
    out = runner.run(load_recipe(path), resumed, echo=lambda *_: None, only=["a"])
    assert out["a"]["resumed_from_epoch"] == 1
    again, before = (tb_events.scalars(d / "tensorboard" / "a") for d in (resumed, straight))
    for tag in ("reid/step/loss", "reid/epoch/loss", "reid/eval/mAP"):
        steps = [s for s, _ in again[tag]]
        assert steps == [s for s, _ in before[tag]], tag
        raw = [e.step for e in tb_events.read_events(resumed / "tensorboard" / "a") if e.HasField("summary")
               and e.summary.value[0].tag == tag]
        assert sorted(raw) == steps, f"{tag}: a step written twice"
    assert cut[-1][0] > before["reid/epoch/loss"][0][0]   # the attempt had written past epoch 1
    assert [h["epoch"] for h in out["a"]["eval_history"]] == [1, 2]


def test_report_shows_face_filter_and_diversity_figures_where_the_run_has_them(tmp_path):
    run = tmp_path / "run"
    (run / "gan").mkdir(parents=True)
    (run / "aug").mkdir()
    (run / "recipe.resolved.yaml").write_text(
        "name: faces\nstages:\n  gan: {type: train_generator}\n  aug: {type: augment}\n")
    (run / "gan" / ".complete.json").write_text(json.dumps({"hash": "h1", "seconds": 3.0, "summary": {
        "semantic_filter": {"filter": {"type": "face"}, "min_score": 0.5, "real_images": 400,
                            "accepted": 227}}}))
    (run / "aug" / ".complete.json").write_text(json.dumps({"hash": "h2", "seconds": 2.0, "summary": {
        "generated": 100, "kept": 40, "accepted_fraction_by_filter": {"face": 0.4},
        "measured_fraction": {"face": 0.35},
        "sample_diversity": {"pixel_std": 36.8, "images": 100}}}))
    page = (CliRunner().invoke(main, ["report", str(run)], catch_exceptions=False), run / "report.html")[1].read_text()
    text = " ".join(_parse(page).text)
    assert "accepts 227 of 400 (56.8%)" in text
    assert "keeps 40.0% of the generated images" in text and "35.0% of the generated images pass" in text
    assert "per-pixel std 36.8 over 100 samples" in text
    assert "No metrics yet" in text and "40 of 100 generated images kept" in text
