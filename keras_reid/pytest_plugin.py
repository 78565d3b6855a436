"""pytest fixtures for keras-reid plugin tests (and keras-reid's own).

Load it from your tests' ``conftest.py``::

    pytest_plugins = ["keras_reid.pytest_plugin"]

Loading it splits the CPU into two logical devices before TensorFlow starts, for
``keras_reid.testing.check_*_replicas``, and gives the session-scoped fixture ``synthetic_data``.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from keras_reid import testing  # noqa: E402

testing.use_logical_cpus(2)


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """``synthetic_data(**params) -> keras_reid.testing.SyntheticData``: the synthetic re-ID
    dataset with ``params`` (``ids``, ``cameras``, ``size``, ``seed``, ``images_per_id_camera``;
    ``testing.SYNTHETIC_DEFAULTS`` for the rest), written once per test session and shared by
    every test asking for the same parameters. ``.root`` is its folder, ``.spec`` its recipe
    entry. Read-only: copy it before changing files."""
    folder = tmp_path_factory.mktemp("synthetic_data")
    return lambda **params: testing.synthetic_data(folder, **params)
