"""tools/lima_class0.py: class-0 rates from the LIMA runs' confusion matrices, over runs."""
import json

import pytest


def _run(folder, matrices):
    (folder / "evaluate").mkdir(parents=True)
    for model, matrix in matrices.items():
        (folder / "evaluate" / f"confusion_{model}.json").write_text(
            json.dumps({"classes": list(range(len(matrix))), "matrix": matrix}))


def test_rates_means_and_paired_differences(load_tool, tmp_path, capsys):
    tool = load_tool("lima_class0")
    # rows: true class 0, 1, 2; columns: predicted
    _run(tmp_path / "a" / "seed-0", {"r": [[4, 0, 0], [1, 3, 0], [0, 1, 3]],        # 1/8 people -> 0
                                     "r_g": [[2, 1, 1], [3, 1, 0], [2, 0, 2]],       # 5/8, recall 2/4
                                     "r (converted)": [[0, 4, 0], [4, 0, 0], [4, 0, 0]]})
    _run(tmp_path / "a" / "seed-1", {"r": [[3, 1, 0], [0, 4, 0], [0, 0, 4]],        # 0/8, recall 3/4
                                     "r_g": [[3, 0, 1], [2, 2, 0], [1, 1, 2]]})      # 3/8, recall 3/4
    assert tool.class0_rates([[4, 0, 0], [1, 3, 0], [0, 1, 3]]) == (12.5, 100.0)
    res = tool.table(tool.run_folders([tmp_path / "a"]), ["r", "r_g"], "r")
    r, g = res["models"]["r"], res["models"]["r_g"]
    assert r["n"] == 2 and r["people_to_0"] == pytest.approx(6.25) and r["class0_recall"] == pytest.approx(87.5)
    assert g["people_to_0"] == pytest.approx(50.0) and g["people_to_0_std"] == pytest.approx(17.67767, rel=1e-5)
    p = g["paired"]                                   # differences: +50, +37.5 and -50, 0
    assert p["n"] == 2 and p["people_to_0"] == pytest.approx(43.75) and p["people_to_0_se"] == pytest.approx(6.25)
    assert p["class0_recall"] == pytest.approx(-25.0) and p["class0_recall_se"] == pytest.approx(25.0)
    assert "paired" not in r
    assert tool.main([str(tmp_path / "a")]) == 0
    assert "+43.8 +- 6.2 / -25.0 +- 25.0 (n=2)" in capsys.readouterr().out


def test_a_folder_without_confusion_matrices_is_a_one_line_error(load_tool, tmp_path, capsys):
    tool = load_tool("lima_class0")
    assert tool.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no evaluate/confusion_")
