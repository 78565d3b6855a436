"""CLI: run/validate/plugins behaviour, exit codes, one-line errors, README/CI consistency."""
import re
from pathlib import Path

from click.testing import CliRunner

from keras_reid.cli import main

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_every_command_has_help():
    for args in (["--help"], ["run", "--help"], ["validate", "--help"], ["plugins", "--help"],
                 ["data", "--help"], ["evaluate", "--help"], ["models", "--help"]):
        res = invoke(*args)
        assert res.exit_code == 0 and "Usage:" in res.output, args


def test_shipped_recipes_validate(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_REID_DATA", str(tmp_path))
    for recipe in sorted((ROOT / "recipes").glob("*.yaml")):
        res = invoke("validate", str(recipe), "--no-data")
        assert res.exit_code == 0, (recipe, res.output)


def test_validate_and_dry_run_check_that_dataset_folders_exist(monkeypatch, tmp_path):
    """An empty data folder made every recipe 'valid', then `run` failed; synthetic datasets,
    which are written on first use, are not missing."""
    monkeypatch.setenv("KERAS_REID_DATA", str(tmp_path))
    for args in (("validate",), ("run", "--dry-run")):
        res = invoke(*args, str(ROOT / "recipes" / "market_model4.yaml"))
        assert res.exit_code == 2, res.output
        assert f"datasets.market.root: {tmp_path}" in res.output and "does not exist" in res.output
        assert len(res.output.strip().splitlines()) == 1
    assert invoke("validate", str(ROOT / "recipes" / "quickstart.yaml")).exit_code == 0
    (tmp_path / "Market-1501-v15.09.15").mkdir()
    assert invoke("validate", str(ROOT / "recipes" / "market_model4.yaml")).exit_code == 0


def test_bad_recipe_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    text, n = re.subn(r"\n    epochs: \d+", "\n    epochs: six",
                      (ROOT / "recipes" / "quickstart_resnet50.yaml").read_text())
    assert n == 1
    bad.write_text(text)
    res = CliRunner().invoke(main, ["validate", str(bad)])
    assert res.exit_code == 2
    line = f"{bad}:{text.splitlines().index('    epochs: six') + 1}"
    assert line in res.output and "stages.train.epochs" in res.output and "'six'" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(main, ["run", str(bad), "--dry-run"])
    assert res.exit_code == 2


def test_unknown_plugin_in_recipe(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = (ROOT / "recipes" / "synthetic_model4.yaml").read_text()
    assert "{type: tiny," in text
    bad.write_text(text.replace("{type: tiny,", "{type: tinny,"))
    res = CliRunner().invoke(main, ["validate", str(bad)])
    assert res.exit_code == 2 and "unknown backbone 'tinny'" in res.output and "did you mean 'tiny'" in res.output


def test_dry_run_shows_plan(tmp_path):
    res = invoke("run", str(ROOT / "recipes" / "quickstart.yaml"), "--dry-run", "--run-dir", str(tmp_path / "r"))
    assert res.exit_code == 0
    assert re.search(r"gan\s+train_generator\s+run", res.output)
    assert re.search(r"augmented\s+train_reid\s+run", res.output) and "evaluate" in res.output
    assert not (tmp_path / "r").exists()


def test_plugins_lists_kinds_and_providers():
    res = invoke("plugins", "stage")
    assert res.exit_code == 0
    assert re.search(r"stage\s+train_reid\s+keras-reid\s+\S", res.output)
    res = invoke("plugins", "--json")
    assert '"failed": []' in res.output


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Run the tests\s+```bash\n(.+?)\n```", readme, re.S).group(1).strip()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1].strip() == block


def test_interrupt_exits_130_and_os_errors_are_one_line():
    import click

    from keras_reid.cli import handle_user_errors

    @click.command()
    @click.argument("what")
    @handle_user_errors
    def cmd(what):
        if what == "interrupt":
            raise KeyboardInterrupt
        raise PermissionError(13, "Permission denied", "/runs/x/metrics.json")

    res = CliRunner().invoke(cmd, ["interrupt"])
    assert res.exit_code == 130 and "run the same command again to resume" in res.output
    res = CliRunner().invoke(cmd, ["write"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip() == ("error: cannot use /runs/x/metrics.json: Permission denied; check the "
                                  "path, its permissions and free space (KERAS_REID_DEBUG=1 shows the "
                                  "traceback)")
