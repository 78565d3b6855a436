"""Atomic output: files appear whole under their name, with the permissions of the user's umask."""
import os
import stat

import pytest

from keras_reid import io


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_follow_the_umask_not_mkstemps_0600(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = io.write_json(tmp_path / "sub" / "m.json", {"a": 1})
        with io.atomic_path(tmp_path / "model.keras") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    for p in (path, tmp_path / "model.keras"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
    assert io.read_json(path) == {"a": 1}
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_a_failed_write_leaves_neither_the_target_nor_a_temporary_file(tmp_path):
    with pytest.raises(RuntimeError):
        with io.atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
