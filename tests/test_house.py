"""House rules of the code base, checked over the source (issue 14).

- No import cycles in ``keras_reid/`` and ``plugins/``, also when the package ``__init__`` every
  import runs first is counted (``tools/code_stats.py --parents``), and the modules that read
  ``stages.base`` import first in a fresh interpreter.
- Imports sit at the top of the module; a function-local import is allowed only where it defers
  a heavy dependency on purpose and says so with ``# deferred: WHAT, WHY`` on the statement
  (``tools/code_stats.py --undeclared`` lists the others).
- The light paths stay light: the CLI's ``--help``, ``validate`` and ``plugins`` import neither
  TensorFlow nor Keras nor any other heavy dependency.

The AST checks import none of the code; the others run subprocesses.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_spec = importlib.util.spec_from_file_location("code_stats", ROOT / "tools" / "code_stats.py")
code_stats = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(code_stats)

HEAVY = ("tensorflow", "keras", "mediapipe", "ray", "ai_edge_litert", "albumentations",
         "tensorboard", "scipy", "cv2")


def _undeclared() -> list[str]:
    return [f"{u['where']}: {' '.join(u['statement'].split())}"
            for u in code_stats.stats(ROOT)["undeclared_local_imports"]]


def test_no_import_cycles():
    assert code_stats.import_cycles(ROOT) == []


def test_no_import_cycles_through_package_inits():
    """Counting the package ``__init__`` every import runs first: ``keras_reid/stages/__init__``
    imports no stage (the entry point's ``stages.builtin`` does), so importing ``stages.base``
    from the runner, the report or inference cannot loop back through the stages."""
    assert code_stats.import_cycles(ROOT, parents=True) == []


_IMPORT_FIRST = """
import importlib, json, sys
failed = {}
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("keras_reid", "keras_reid_plugins")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(failed))
"""


@pytest.mark.slow
def test_the_modules_that_import_stages_base_import_first():
    """The modules outside the stages that take names from ``stages.base`` (the loop of
    ``--parents`` went through them before ``stages.builtin``) import cleanly when each is the
    first one imported in a fresh interpreter."""
    entering = ["keras_reid.stages.base", "keras_reid.runner", "keras_reid.repeats",
                "keras_reid.report", "keras_reid.inference", "keras_reid.stages.builtin"]
    run = subprocess.run([sys.executable, "-c", _IMPORT_FIRST, *entering], capture_output=True,
                         text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {}


def test_function_local_imports_are_declared_deferrals():
    undeclared = _undeclared()
    assert not undeclared, (
        f"{len(undeclared)} function-local import(s) without '{code_stats.MARKER}': move them to "
        "the top of the module, or, where one defers a heavy dependency on purpose, say so on "
        "the statement (e.g. 'import tensorflow as tf  # deferred: TensorFlow, keeps CLI startup "
        "light'):\n" + "\n".join(undeclared))


def test_the_marker_is_recognised_and_required():
    """The check itself: an unmarked local import is caught, a marked one passes, a top-level
    import and a comment on the line above do not count."""
    source = ("import os\n"
              "def f():\n"
              "    import json\n"
              "    import tensorflow as tf  # deferred: TensorFlow, keeps f's callers light\n"
              "    # deferred: a comment above is not on the statement\n"
              "    from keras_reid import (\n"
              "        inference)  # deferred: Keras\n"
              "    # deferred: neither is this one\n"
              "    import yaml\n")
    statements = code_stats.local_import_statements(ast.parse(source))
    assert [s.lineno for s in statements] == [3, 4, 6, 9]
    assert [code_stats.declared(source, s) for s in statements] == [False, True, True, False]


_LOADED_BY = """
import contextlib, io, json, sys
from keras_reid.cli import main
if sys.argv[1] == "help":
    commands = [["--help"]] + [[name, "--help"] for name in sorted(main.commands)]
    for group in sorted(main.commands):
        sub = getattr(main.commands[group], "commands", {})
        commands += [[group, name, "--help"] for name in sorted(sub)]
else:
    commands = [["validate", sys.argv[1]], ["plugins"]]
codes = []
for args in commands:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args)
        except SystemExit as exc:
            codes.append([args, exc.code])
print(json.dumps({"codes": codes, "loaded": sorted(set(sys.modules) & set(sys.argv[2:]))}))
"""


def _loaded_by(what: str, modules: tuple[str, ...]) -> tuple[list, list]:
    run = subprocess.run([sys.executable, "-c", _LOADED_BY, what, *modules], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert all(code in (0, None) for _, code in out["codes"]), out["codes"]
    return out["codes"], out["loaded"]


def test_cli_help_stays_light():
    """``keras-reid --help`` and every command's ``--help`` load none of TensorFlow, Keras,
    MediaPipe, Ray, LiteRT, albumentations, TensorBoard, SciPy or OpenCV, nor the stage classes
    (``keras_reid.stages.builtin``: about 2 s of CPU for their schemas)."""
    codes, loaded = _loaded_by("help", HEAVY + ("keras_reid.stages.builtin",))
    assert len(codes) > 10
    assert loaded == []


def test_validate_and_plugins_stay_light():
    """``keras-reid validate`` (the stages and every plugin's schema) and ``keras-reid plugins``
    (plugin discovery) load none of the heavy dependencies."""
    codes, loaded = _loaded_by(str(ROOT / "recipes" / "quickstart.yaml"), HEAVY)
    assert len(codes) == 2
    assert loaded == []
