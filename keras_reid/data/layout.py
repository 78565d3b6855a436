"""Find which dataset reader fits a folder, and load a dataset from a root and a type name.

Detection asks the registry: every dataset plugin whose class has a classmethod
``layout_score(root: str) -> int`` scores the folder (0 = not this layout, higher = surer;
the built-ins use 10 for a layout recognised by its folders and file names). The
highest score wins; ties go to the name that sorts first. Third-party dataset plugins
take part by defining ``layout_score`` too. (Filters and pose estimators have a
``detect(image)`` that finds things in an image; a dataset's method scores a folder, hence
the different name.)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from pydantic import ValidationError

from keras_reid.data.records import DatasetSplits
from keras_reid.errors import DatasetError, UserError
from keras_reid.registry import REGISTRY


@dataclass
class LoadedDataset:
    """A loaded dataset with the reader type used and whether it was autodetected."""

    splits: DatasetSplits
    type: str
    detected: bool


def detect_layout(root: str | os.PathLike, registry: Any = None) -> str:
    """Return the name of the dataset plugin that best recognises ``root``.

    Raises DatasetError if ``root`` is missing or no registered reader recognises it.
    """
    registry = registry or REGISTRY
    root = os.path.abspath(os.path.expanduser(str(root)))
    if not os.path.isdir(root):
        raise DatasetError(f"dataset root {root} does not exist or is not a folder; "
                           "give the folder that holds the dataset")
    scores = []
    for entry in registry.entries("dataset"):
        layout_score = getattr(entry.obj, "layout_score", None)
        if layout_score is None:
            continue
        try:
            score = int(layout_score(root))
        except Exception:  # a third-party reader must not break detection
            score = 0
        if score > 0:
            scores.append((-score, entry.name))
    if not scores:
        raise DatasetError(
            f"cannot tell which dataset layout {root} holds (looked for bounding_box_train/ query/ "
            "bounding_box_test/ (Market-1501, DukeMTMC-reID), detected/ labeled/ (CUHK03-NP), "
            "list_*.txt (MSMT17), labels.csv or class folders (closed set)); pass --type")
    return sorted(scores)[0][1]


def load_dataset(root: str | os.PathLike, type: str | None = None,
                 options: Mapping[str, Any] | None = None, registry: Any = None) -> LoadedDataset:
    """Load the dataset at ``root`` with reader ``type`` (autodetected when None) and extra
    reader ``options``; returns a :class:`LoadedDataset`.

    Raises DatasetError/UserError (one line) for a bad root, type or option.
    """
    registry = registry or REGISTRY
    detected = type is None
    name = detect_layout(root, registry) if detected else type
    entry = registry.get("dataset", name)
    params = {**dict(options or {}), "root": str(root)}
    try:
        config = entry.config.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(config)'}: {e['msg']}"
                             for e in exc.errors())
        raise UserError(f"invalid option for dataset '{name}': {problems}") from None
    return LoadedDataset(entry.create(config).load(), name, detected)
