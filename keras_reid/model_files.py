"""MediaPipe model files: a table of known models, a local cache, and provisioning.

keras-reid never downloads a model at run time. ``keras-reid models fetch`` (or
:func:`fetch_models`) fills the cache once: for each model it tries the official
MediaPipe asset URL, and if that is not reachable it takes the file out of the
``mediapipe==0.10.21`` wheel from PyPI (which ships these ``.tflite`` files under
``mediapipe/modules/``). Every file is checked against its sha256 and written
atomically (temporary name, then rename). :func:`model_path` is what components call:
it returns the cached file or raises :class:`~keras_reid.errors.ModelFileError`
naming the command that fixes it.

Some MediaPipe Tasks need a ``.task`` bundle (a zip of several models) that the wheel does not
ship: :data:`BUNDLES`. ``pose_landmarker_full.task`` (PoseLandmarker) is taken from its official
URL when reachable (trusted over https; its sha256 is recorded on download), else built from
the two wheel models: the landmark model gets the input-normalisation metadata Tasks requires,
written with the metadata writers of the installed mediapipe, and both are zipped with
mediapipe's own bundle writer. A bundle is recorded in ``<bundle>.json`` beside it (source,
sha256 of the bundle and of its inputs, recipe version), which ``model_path`` checks.

The cache folder is ``$KERAS_REID_MODELS`` or ``~/.cache/keras_reid/models``.
"""
from __future__ import annotations

import difflib
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import types
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


@dataclass(frozen=True)
class BundleInfo:
    """A MediaPipe Tasks ``.task`` bundle: cache name, official URL, the zip members it must hold,
    the known models it is built from, and the builder (``inputs {name: path} -> {member: bytes}``)."""

    name: str
    url: str | None
    members: tuple[str, ...]
    inputs: tuple[str, ...]
    build: Callable[[dict[str, Path]], dict[str, bytes]]
    description: str
    recipe: int = 1


def _pose_landmarker_members(inputs: dict[str, Path]) -> dict[str, bytes]:
    """The members of ``pose_landmarker_full.task``: the wheel's person detector (it already
    carries image metadata: RGB, (x - 127.5) / 127.5) and the full landmark model with the metadata
    Tasks requires added (RGB input in [0, 1], i.e. (x - 0) / 255; five feature outputs in the
    model's order: landmarks, presence flag, segmentation, heatmap, world landmarks)."""
    metadata_writer = _metadata_writers()[0]
    writer = metadata_writer.MetadataWriter.create(bytearray(inputs["pose_landmark_full.tflite"].read_bytes()))
    writer.add_general_info("pose_landmarks_detector",
                            "BlazePose GHUM full: 33 body landmarks of a 256x256 person crop")
    writer.add_image_input(norm_mean=[0.0], norm_std=[255.0])
    for name in ("landmarks", "pose_presence", "segmentation", "heatmap", "world_landmarks"):
        writer.add_feature_output(name=name)
    landmarks, _ = writer.populate()
    del writer  # removes its temporary folder now, not at interpreter exit
    return {"pose_detector.tflite": inputs["pose_detection.tflite"].read_bytes(),
            "pose_landmarks_detector.tflite": bytes(landmarks)}


BUNDLES: dict[str, BundleInfo] = {b.name: b for b in (
    BundleInfo("pose_landmarker_full.task",
               "https://storage.googleapis.com/mediapipe-models/pose_landmarker/pose_landmarker_full/"
               "float16/latest/pose_landmarker_full.task",
               ("pose_detector.tflite", "pose_landmarks_detector.tflite"),
               ("pose_detection.tflite", "pose_landmark_full.tflite"),
               _pose_landmarker_members,
               "PoseLandmarker bundle (BlazePose detector + full landmarks, 33 keypoints)"),
)}
"""Known Tasks bundles by cache file name (downloaded, or built from known models)."""


def _metadata_writers():
    """Returns mediapipe's (metadata_writer, model_asset_bundle_utils) modules.

    Some mediapipe wheels (1.2.x) ship the Python metadata writers without their compiled helper
    ``mediapipe.tasks.cc.metadata.python._pywrap_metadata_version``, whose only job is the minimum
    metadata-parser version recorded in the model. When it is missing, a stand-in is installed
    that returns "1.0.0" for metadata using only the features of schema 1.0.0 (tensor metadata,
    image properties and normalisation: what is written here) and refuses anything newer."""
    name = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"
    try:
        import mediapipe.tasks.cc.metadata.python._pywrap_metadata_version  # noqa: F401  # deferred: MediaPipe, the CLI and plugin discovery import this module
    except ImportError:
        stub = types.ModuleType(name)
        stub.GetMinimumMetadataParserVersion = _minimum_parser_version
        for parent in ("mediapipe.tasks.cc", "mediapipe.tasks.cc.metadata",
                       "mediapipe.tasks.cc.metadata.python"):
            sys.modules.setdefault(parent, types.ModuleType(parent))
        sys.modules[name] = stub
    try:
        from mediapipe.tasks.python.metadata.metadata_writers import (  # deferred: MediaPipe, the CLI and plugin discovery import this module
            metadata_writer, model_asset_bundle_utils)
    except Exception as exc:  # noqa: BLE001 - any import problem means: cannot build here
        raise ModelFileError(f"cannot build MediaPipe .task bundles: mediapipe's metadata writers do not "
                             f"import ({type(exc).__name__}: {exc}); install mediapipe>=0.10.30 or "
                             "download the official bundle (see `keras-reid models list`)") from None
    return metadata_writer, model_asset_bundle_utils


def _minimum_parser_version(metadata_buffer: bytes) -> str:
    """"1.0.0" for metadata that uses only schema 1.0.0 features; raises ModelFileError otherwise."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb  # deferred: MediaPipe, the CLI and plugin discovery import this module

    md = fb.ModelMetadata.GetRootAsModelMetadata(bytearray(metadata_buffer), 0)
    newer = md.AssociatedFilesLength() > 0
    for i in range(md.SubgraphMetadataLength()):
        sg = md.SubgraphMetadata(i)
        newer |= any((sg.InputProcessUnitsLength(), sg.OutputProcessUnitsLength(),
                      sg.InputTensorGroupsLength(), sg.OutputTensorGroupsLength(),
                      sg.CustomMetadataLength(), sg.AssociatedFilesLength()))
        tensors = [sg.InputTensorMetadata(j) for j in range(sg.InputTensorMetadataLength())] + \
                  [sg.OutputTensorMetadata(j) for j in range(sg.OutputTensorMetadataLength())]
        newer |= any(t.AssociatedFilesLength() for t in tensors)
    if newer:
        raise ModelFileError("this mediapipe lacks its metadata version helper and the metadata uses "
                             "features newer than schema 1.0.0; install a mediapipe whose metadata "
                             "writers import")
    return "1.0.0"


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


def known_names() -> list[str]:
    """Names of every known model file and bundle, in table order."""
    return list(MODELS) + list(BUNDLES)


def _info(name: str) -> ModelInfo | BundleInfo:
    for candidate in (name, name + ".tflite", name + ".task"):
        if candidate in MODELS:
            return MODELS[candidate]
        if candidate in BUNDLES:
            return BUNDLES[candidate]
    close = difflib.get_close_matches(name, known_names(), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ModelFileError(f"unknown model '{name}'{hint}; known: {', '.join(known_names())}")


def record_path(bundle: str | os.PathLike) -> Path:
    """The record of a bundle file: ``<bundle>.json`` beside it."""
    bundle = Path(bundle)
    return bundle.with_name(bundle.name + ".json")


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(record_path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _expected_inputs(info: BundleInfo) -> dict[str, str]:
    return {n: MODELS[n].sha256 for n in info.inputs}


def _bundle_status(info: BundleInfo, path: Path) -> str:
    record = _read_record(path)
    if record is None or record.get("sha256") != sha256_file(path):
        return "bad checksum"
    if record.get("source") == "built" and (record.get("inputs") != _expected_inputs(info)
                                            or record.get("recipe") != info.recipe):
        return "outdated"
    return "present"


def model_status(name: str, cache: str | os.PathLike | None = None) -> str:
    """``present``, ``missing``, ``bad checksum`` (or, for a bundle built from models that have
    changed since, ``outdated``) for a known model or bundle in the cache."""
    info = _info(name)
    path = cache_dir(cache) / info.name
    if not path.is_file():
        return "missing"
    if isinstance(info, BundleInfo):
        return _bundle_status(info, path)
    return "present" if sha256_file(path) == info.sha256 else "bad checksum"


def model_path(name: str, cache: str | os.PathLike | None = None, *, verify: bool = True) -> Path:
    """Path of a provisioned model or bundle (name with or without ``.tflite`` / ``.task``).

    Raises ModelFileError naming ``keras-reid models fetch`` when the file is missing or
    (with ``verify``) its sha256 does not match (for a bundle: its record, see :data:`BUNDLES`).
    """
    info = _info(name)
    folder = cache_dir(cache)
    path = folder / info.name
    fix = FETCH_HINT + (f" --cache-dir {folder}" if cache else "")
    if not path.is_file():
        raise ModelFileError(f"model file {info.name} is missing from {folder}; {fix}")
    if not verify:
        return path
    if isinstance(info, BundleInfo):
        status = _bundle_status(info, path)
        if status == "outdated":
            raise ModelFileError(f"bundle {path} was built from other model files than the known "
                                 f"ones; delete it and {fix}")
        if status != "present":
            raise ModelFileError(f"bundle {path} does not match the sha256 in its record "
                                 f"{record_path(path).name} (corrupt, replaced or unrecorded); "
                                 f"delete it and {fix}")
    elif sha256_file(path) != info.sha256:
        raise ModelFileError(f"model file {path} does not match its sha256 (corrupt or a different "
                             f"version); delete it and {fix}")
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
    """Put the named models and bundles (default: all known ones) into the cache; returns their
    paths, in the order asked.

    Models already present with the right sha256 are kept. The others come from the
    official URL (``timeout`` seconds per request; skipped with ``try_urls=False``), else
    from ``wheel`` (a mediapipe 0.10.21 wheel file), else from that wheel downloaded from
    PyPI with pip. A bundle (:data:`BUNDLES`) comes from its official URL, else it is built
    from its input models (fetched as above) and checked by loading it; either way its record
    is written beside it. Raises ModelFileError when a model cannot be obtained or verified.
    """
    folder = _resolve_cache(cache_dir)
    infos = [_info(n) for n in (names or known_names())]
    say = log or (lambda msg: None)
    files = [i for i in infos if isinstance(i, ModelInfo)]
    bundles: list[BundleInfo] = []
    for info in infos:
        if not isinstance(info, BundleInfo) or info in bundles:
            continue
        target = folder / info.name
        if target.is_file() and _bundle_status(info, target) == "present":
            say(f"{info.name}: present")
        elif not (try_urls and _bundle_from_url(info, folder, timeout, say)):
            bundles.append(info)
    for info in bundles:
        files += [MODELS[n] for n in info.inputs if MODELS[n] not in files]
    _fetch_files(list(dict.fromkeys(files)), folder, wheel, timeout, try_urls, say)
    for info in bundles:
        build_bundle(info.name, folder, log=say)
    return [folder / info.name for info in infos]


def _write_record(path: Path, record: dict) -> None:
    _write_atomic((json.dumps(record, indent=2) + "\n").encode(), record_path(path))


def _bundle_from_url(info: BundleInfo, folder: Path, timeout: float,
                     say: Callable[[str], None]) -> bool:
    """Download the official bundle; True when it was written (a zip holding its members)."""
    if not info.url:
        return False
    try:
        with urllib.request.urlopen(info.url, timeout=timeout) as resp:  # noqa: S310 (fixed https URL)
            data = resp.read()
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = {m: hashlib.sha256(zf.read(m)).hexdigest() for m in info.members}
    except Exception:  # offline, blocked, HTTP error, not a bundle: build it instead
        return False
    target = folder / info.name
    _write_atomic(data, target)
    _write_record(target, {"name": info.name, "source": info.url, "recipe": info.recipe,
                           "sha256": hashlib.sha256(data).hexdigest(), "members": members})
    say(f"{info.name}: downloaded from {info.url}")
    return True


def build_bundle(name: str, cache: str | os.PathLike | None = None, *,
                 log: Callable[[str], None] | None = None) -> Path:
    """Build the bundle ``name`` (see :data:`BUNDLES`) from its input models, which must be in the
    cache; check that MediaPipe Tasks loads it, write it atomically with its record and return
    its path. Raises ModelFileError when an input is missing or the bundle does not load."""
    info = _info(name)
    if not isinstance(info, BundleInfo):
        raise ModelFileError(f"{info.name} is a model file, not a bundle; {FETCH_HINT}")
    folder = cache_dir(cache)
    inputs = {n: model_path(n, folder) for n in info.inputs}
    members = info.build(inputs)
    if sorted(members) != sorted(info.members):
        raise ModelFileError(f"building {info.name} gave members {sorted(members)}, expected "
                             f"{sorted(info.members)}")
    bundle_utils = _metadata_writers()[1]
    target = folder / info.name
    tmp = folder / f".{info.name}.{os.getpid()}.part"
    try:
        bundle_utils.create_model_asset_bundle(members, str(tmp))
        _check_bundle(info, tmp)
        digest = sha256_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    import mediapipe  # deferred: MediaPipe, the CLI and plugin discovery import this module

    _write_record(target, {
        "name": info.name, "source": "built", "recipe": info.recipe,
        "built_with": f"mediapipe {getattr(mediapipe, '__version__', '?')} metadata writers",
        "inputs": {n: sha256_file(p) for n, p in inputs.items()},
        "members": {m: hashlib.sha256(b).hexdigest() for m, b in members.items()},
        "sha256": digest})
    (log or (lambda msg: None))(f"{info.name}: built from {', '.join(info.inputs)}")
    return target


def _check_bundle(info: BundleInfo, path: Path) -> None:
    """Raise ModelFileError unless MediaPipe Tasks can create its task from the bundle at ``path``."""
    if info.name.startswith("pose_landmarker"):
        try:
            from mediapipe.tasks.python import BaseOptions, vision  # deferred: MediaPipe, the CLI and plugin discovery import this module

            options = vision.PoseLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=str(path)),
                running_mode=vision.RunningMode.IMAGE)
            vision.PoseLandmarker.create_from_options(options).close()
        except Exception as exc:  # noqa: BLE001 - report any failure as a model problem
            raise ModelFileError(f"the built {info.name} does not load in MediaPipe Tasks "
                                 f"({type(exc).__name__}: {exc}); download the official bundle "
                                 f"from {info.url} and give its path as the estimator's model") from None


def _fetch_files(infos: list[ModelInfo], folder: Path, wheel: str | os.PathLike | None,
                 timeout: float, try_urls: bool, say: Callable[[str], None]) -> None:
    """Put the model files ``infos`` into ``folder`` (see :func:`fetch_models`)."""
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

