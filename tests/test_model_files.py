"""MediaPipe model provisioning: cache, checksums, wheel extraction, one-line errors, CLI."""
import zipfile

import pytest
from click.testing import CliRunner

from keras_reid import model_files
from keras_reid.cli import main
from keras_reid.errors import ModelFileError

FACE = "face_detection_full_range_sparse.tflite"


def test_missing_model_names_the_fetch_command(tmp_path):
    with pytest.raises(ModelFileError, match="keras-reid models fetch") as err:
        model_files.model_path(FACE, tmp_path)
    assert FACE in str(err.value) and "\n" not in str(err.value)
    assert model_files.model_status(FACE, tmp_path) == "missing"


def test_checksum_mismatch_is_detected(tmp_path):
    (tmp_path / FACE).write_bytes(b"not a model")
    assert model_files.model_status(FACE, tmp_path) == "bad checksum"
    with pytest.raises(ModelFileError, match="sha256.*keras-reid models fetch"):
        model_files.model_path(FACE, tmp_path)
    assert model_files.model_path(FACE, tmp_path, verify=False) == tmp_path / FACE


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_REID_MODELS", str(tmp_path / "env"))
    assert model_files.cache_dir() == tmp_path / "env"
    assert model_files.cache_dir(tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv("KERAS_REID_MODELS")
    assert model_files.cache_dir().parts[-3:] == (".cache", "keras_reid", "models")


def test_unknown_model_suggests_a_name():
    with pytest.raises(ModelFileError, match="did you mean face_detection_short_range.tflite"):
        model_files.model_path("face_detection_short_rang")


def _fake_wheel(path, contents: dict):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in contents.items():
            zf.writestr(name, data)
    return path


def test_wheel_with_wrong_bytes_is_rejected(tmp_path):
    info = model_files.MODELS[FACE]
    wheel = _fake_wheel(tmp_path / "mediapipe-0.10.21-fake.whl", {info.wheel_path: b"evil"})
    with pytest.raises(ModelFileError, match="does not match its sha256"):
        model_files.fetch_models([FACE], cache_dir=tmp_path / "cache", wheel=wheel, try_urls=False)
    assert not (tmp_path / "cache" / FACE).exists()
    with pytest.raises(ModelFileError, match="has no"):
        model_files.fetch_models([FACE], cache_dir=tmp_path / "cache",
                            wheel=_fake_wheel(tmp_path / "empty.whl", {"x": b""}), try_urls=False)
    with pytest.raises(ModelFileError, match="does not exist"):
        model_files.fetch_models([FACE], cache_dir=tmp_path / "cache", wheel=tmp_path / "nope.whl",
                            try_urls=False)


def test_extracts_verified_models_from_a_wheel(tmp_path, face_models):
    """Build a wheel-shaped zip from the provisioned files and extract into a new cache."""
    names = ["face_detection_full_range_sparse.tflite", "face_detection_short_range.tflite"]
    contents = {model_files.MODELS[n].wheel_path: (face_models / n).read_bytes() for n in names}
    wheel = _fake_wheel(tmp_path / "mediapipe-0.10.21-test.whl", contents)
    cache = tmp_path / "cache"
    paths = model_files.fetch_models(names, cache_dir=cache, wheel=wheel, try_urls=False)
    assert paths == [cache / n for n in names]
    assert all(model_files.model_status(n, cache) == "present" for n in names)
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]   # no temporary files left
    # a present, intact model is kept: the (now missing) wheel is not needed
    wheel.unlink()
    assert model_files.fetch_models(names[:1], cache_dir=cache, wheel=wheel, try_urls=False)


def test_cli_list_and_fetch_errors(tmp_path):
    res = CliRunner().invoke(main, ["models", "list", "--cache-dir", str(tmp_path)])
    assert res.exit_code == 0
    for name in model_files.MODELS:
        assert name in res.output
    assert "missing" in res.output
    res = CliRunner().invoke(main, ["models", "fetch", "nonsense", "--cache-dir", str(tmp_path)])
    assert res.exit_code == 1 and "unknown model" in res.output and "Traceback" not in res.output
