"""MediaPipe model files: a table of known models, a local cache, and provisioning.

keras-reid never downloads a model at run time. ``keras-reid models fetch`` (or
:func:`fetch_models`) fills the cache once: for each model it tries the official
MediaPipe asset URL, and if that is not reachable it takes the file out of the
``mediapipe==0.10.21`` wheel from PyPI (which ships these ``.tflite`` files under
``mediapipe/modules/``). Every file is checked against its sha256 and written
atomically (temporary name, then rename). :func:`model_path` is what components call:
it returns the cached file or raises :class:`~keras_reid.errors.ModelFileError`
naming the command that fixes it.

The cache folder is ``$KERAS_REID_MODELS`` or ``~/.cache/keras_reid/models``.
"""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from keras_reid.errors import ModelFileError

WHEEL_VERSION = "0.10.21"
"""The mediapipe release whose wheel ships the legacy ``mediapipe/modules`` model files."""

ASSET_URL = "https://storage.googleapis.com/mediapipe-assets/"
"""MediaPipe's public asset bucket (the one its legacy solutions download from)."""

FETCH_HINT = "run `keras-reid models fetch`"


@dataclass(frozen=True)
class ModelInfo:
    """A known model file: cache name, official URL (or None), path in the wheel, sha256."""

    name: str
    url: str | None
    wheel_path: str
    sha256: str
    description: str


MODELS: dict[str, ModelInfo] = {m.name: m for m in (
    ModelInfo("face_detection_full_range_sparse.tflite",
              ASSET_URL + "face_detection_full_range_sparse.tflite",
              "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
              "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
              "BlazeFace full range (192x192 input, faces up to ~5 m)"),
    ModelInfo("face_detection_short_range.tflite",
              ASSET_URL + "face_detection_short_range.tflite",
              "mediapipe/modules/face_detection/face_detection_short_range.tflite",
              "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
              "BlazeFace short range (128x128 input, faces within ~2 m)"),
    ModelInfo("selfie_segmentation.tflite",
              ASSET_URL + "selfie_segmentation.tflite",
              "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
              "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
              "person segmentation (256x256 input)"),
    ModelInfo("pose_detection.tflite",
              ASSET_URL + "pose_detection.tflite",
              "mediapipe/modules/pose_detection/pose_detection.tflite",
              "9ba9dd3d42efaaba86b4ff0122b06f29c4122e756b329d89dca1e297fd8f866c",
              "BlazePose person detector (224x224 input)"),
    ModelInfo("pose_landmark_full.tflite",
              ASSET_URL + "pose_landmark_full.tflite",
              "mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
              "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f",
              "BlazePose full landmarks (33 keypoints, 256x256 input)"),
)}
"""Known models by cache file name (sha256 values are those of the mediapipe 0.10.21 wheel)."""


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The model cache folder: ``path``, else ``$KERAS_REID_MODELS``, else
    ``~/.cache/keras_reid/models`` (not created here)."""
    if path:
        return Path(os.path.expanduser(str(path)))
    env = os.environ.get("KERAS_REID_MODELS")
    if env:
        return Path(os.path.expanduser(env))
    return Path.home() / ".cache" / "keras_reid" / "models"


_resolve_cache = cache_dir  # fetch_models has a parameter called cache_dir


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _info(name: str) -> ModelInfo:
    if name in MODELS:
        return MODELS[name]
    if name + ".tflite" in MODELS:
        return MODELS[name + ".tflite"]
    import difflib

    close = difflib.get_close_matches(name, list(MODELS), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ModelFileError(f"unknown model '{name}'{hint}; known: {', '.join(MODELS)}")


def model_status(name: str, cache: str | os.PathLike | None = None) -> str:
    """``present``, ``missing`` or ``bad checksum`` for a known model in the cache."""
    info = _info(name)
    path = cache_dir(cache) / info.name
    if not path.is_file():
        return "missing"
    return "present" if sha256_file(path) == info.sha256 else "bad checksum"


def model_path(name: str, cache: str | os.PathLike | None = None, *, verify: bool = True) -> Path:
    """Path of a provisioned model (name with or without ``.tflite``).

    Raises ModelFileError naming ``keras-reid models fetch`` when the file is missing or
    (with ``verify``) its sha256 does not match.
    """
    info = _info(name)
    folder = cache_dir(cache)
    path = folder / info.name
    if not path.is_file():
        raise ModelFileError(f"model file {info.name} is missing from {folder}; {FETCH_HINT}"
                             + (f" --cache-dir {folder}" if cache else ""))
    if verify and sha256_file(path) != info.sha256:
        raise ModelFileError(f"model file {path} does not match its sha256 (corrupt or a different "
                             f"version); delete it and {FETCH_HINT}")
    return path


def wheel_platform() -> str:
    """The pip ``--platform`` tag of a mediapipe 0.10.21 wheel for this machine."""
    machine = platform.machine().lower()
    if sys.platform == "darwin":
        return "macosx_11_0_arm64" if machine in ("arm64", "aarch64") else "macosx_10_15_x86_64"
    if sys.platform.startswith("win"):
        return "win_amd64"
    return "manylinux_2_28_aarch64" if machine in ("arm64", "aarch64") else "manylinux_2_28_x86_64"


def download_wheel(dest: str | os.PathLike, timeout: float = 300.0) -> Path:
    """Download the mediapipe 0.10.21 wheel (no dependencies) from PyPI into ``dest`` with
    pip; returns its path. Any wheel will do (only its model files are used), so the
    Python version tag is 3.11, which that release was built for."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"mediapipe=={WHEEL_VERSION}",
           "--only-binary=:all:", "--python-version", "3.11", "--platform", wheel_platform(),
           "-d", str(dest), "-q", "--disable-pip-version-check"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ModelFileError(f"pip download of mediapipe=={WHEEL_VERSION} timed out after "
                             f"{timeout:.0f} s; pass --wheel PATH to a downloaded wheel") from None
    wheels = sorted(Path(dest).glob("mediapipe-*.whl"))
    if proc.returncode != 0 or not wheels:
        reason = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise ModelFileError(f"could not download mediapipe=={WHEEL_VERSION} from PyPI "
                             f"({reason[0]}); pass --wheel PATH to a downloaded wheel")
    return wheels[0]


def _write_atomic(data: bytes, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _from_url(info: ModelInfo, timeout: float) -> bytes | None:
    if not info.url:
        return None
    try:
        with urllib.request.urlopen(info.url, timeout=timeout) as resp:  # noqa: S310 (fixed https URL)
            data = resp.read()
    except Exception:  # offline, blocked, HTTP error: fall back to the wheel
        return None
    return data if hashlib.sha256(data).hexdigest() == info.sha256 else None


def fetch_models(names: Iterable[str] | None = None, cache_dir: str | os.PathLike | None = None,
                 wheel: str | os.PathLike | None = None, timeout: float = 5.0, *,
                 try_urls: bool = True, log: Callable[[str], None] | None = None) -> list[Path]:
    """Put the named models (default: all known ones) into the cache; returns their paths.

    Models already present with the right sha256 are kept. The others come from the
    official URL (``timeout`` seconds per request; skipped with ``try_urls=False``), else
    from ``wheel`` (a mediapipe 0.10.21 wheel file), else from that wheel downloaded from
    PyPI with pip. Raises ModelFileError when a model cannot be obtained or verified.
    """
    folder = _resolve_cache(cache_dir)
    infos = [_info(n) for n in (names or MODELS)]
    say = log or (lambda msg: None)
    paths: list[Path] = []
    todo: list[ModelInfo] = []
    for info in infos:
        target = folder / info.name
        if target.is_file() and sha256_file(target) == info.sha256:
            say(f"{info.name}: present")
        else:
            todo.append(info)
    if try_urls:
        for info in list(todo):
            data = _from_url(info, timeout)
            if data is not None:
                _write_atomic(data, folder / info.name)
                say(f"{info.name}: downloaded from {info.url}")
                todo.remove(info)
    if todo:
        with tempfile.TemporaryDirectory(prefix="keras_reid_wheel_") as tmp:
            if wheel is None:
                say(f"downloading mediapipe=={WHEEL_VERSION} from PyPI to extract "
                    f"{len(todo)} model(s)")
                wheel_file = download_wheel(tmp)
            else:
                wheel_file = Path(os.path.expanduser(str(wheel)))
                if not wheel_file.is_file():
                    raise ModelFileError(f"wheel {wheel_file} does not exist; give the path of "
                                         f"a mediapipe-{WHEEL_VERSION}-*.whl file")
            try:
                with zipfile.ZipFile(wheel_file) as zf:
                    for info in todo:
                        try:
                            data = zf.read(info.wheel_path)
                        except KeyError:
                            raise ModelFileError(
                                f"{wheel_file} has no {info.wheel_path}; use the mediapipe=="
                                f"{WHEEL_VERSION} wheel") from None
                        if hashlib.sha256(data).hexdigest() != info.sha256:
                            raise ModelFileError(
                                f"{info.wheel_path} in {wheel_file.name} does not match its sha256; "
                                f"use the mediapipe=={WHEEL_VERSION} wheel")
                        _write_atomic(data, folder / info.name)
                        say(f"{info.name}: extracted from {wheel_file.name}")
            except zipfile.BadZipFile:
                raise ModelFileError(f"{wheel_file} is not a wheel (zip) file") from None
    for info in infos:
        paths.append(folder / info.name)
    return paths

