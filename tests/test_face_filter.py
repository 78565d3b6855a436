"""The ``face`` filter: real MediaPipe face detection on a photograph and on synthetic front and
back views at 128x64 and 256x128 (its defaults on labelled real pedestrian crops, the committed
PETS 2009 crops of tools/face_filter_data, are tested in test_face_filter_real.py)."""
import cv2
import numpy as np
import pytest
from matplotlib import cbook

from keras_reid.registry import REGISTRY, RegistryError

pytestmark = pytest.mark.usefixtures("face_models")


@pytest.fixture(scope="module")
def photo():
    """Grace Hopper's portrait (shipped with matplotlib), RGB uint8 600x512."""
    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def face_filter():
    with REGISTRY.create("filter", {"type": "face"}) as f:
        yield f


def test_face_in_a_photograph(face_filter, photo):
    no_face = np.ascontiguousarray(photo[430:, :])          # her uniform, below the face
    small = cv2.resize(photo, (128, 150), interpolation=cv2.INTER_AREA)
    scores = face_filter(np.stack([photo, cv2.resize(no_face, (512, 600))]))
    assert scores.dtype == np.float32 and scores.shape == (2,)
    assert scores[0] >= 0.75 and scores[1] == 0.0
    assert face_filter(small)[0] >= 0.75
    faces = face_filter.detect(photo)
    x, y, w, h = faces[0][1]
    assert 150 < x + w / 2 < 380 and 150 < y + h / 2 < 350     # on her face


def test_short_range_and_min_face_size(photo):
    with REGISTRY.create("filter", {"type": "face", "model": "short_range"}) as f:
        assert f(photo)[0] >= 0.75
    with REGISTRY.create("filter", {"type": "face", "min_face_size": 300}) as f:
        assert f(photo)[0] == 0.0


def _views(size, n=24):
    from keras_reid.data.synthetic_render import Renderer, make_cameras, make_identities

    cams = make_cameras(6, np.random.default_rng(11))
    ids = make_identities(range(1, n + 1), np.random.default_rng(12))
    r = Renderer(size, cams, seed=3)
    return {v: np.stack([r.render(ident, 1 + i % 6, np.random.default_rng([7, i]), view=v,
                                  occlude=False).image for i, ident in enumerate(ids)])
            for v in ("front", "back")}


@pytest.mark.parametrize("size", [(128, 64), (256, 128)])
def test_synthetic_front_faces_found_backs_not(face_filter, size):
    # The synthetic world's setting (top square, threshold 0.6), measured with
    # tools/bench_synthetic.py on 120 identities: front 0.96-0.97, back 0.02-0.03.
    views = _views(size)
    with REGISTRY.create("filter", {"type": "face", "crop": "auto", "threshold": 0.6}) as synth:
        front = (synth(views["front"]) > 0).mean()
        back = (synth(views["back"]) > 0).mean()
    assert front >= 0.85, front
    assert back <= 0.15, back
    # The defaults (whole image, 0.55; chosen on real crops) find the synthetic fronts too.
    assert (face_filter(views["front"]) > 0).mean() >= 0.85


def test_lifetime_and_bad_input(photo):
    f = REGISTRY.create("filter", {"type": "face"})
    with f:
        assert f._task is not None
    assert f._task is None
    assert f(photo[None])[0] > 0          # re-opened lazily
    f.close()
    f.close()                             # closing twice is fine
    with pytest.raises(ValueError, match="uint8"):
        f(photo.astype(np.float32))
    with pytest.raises(ValueError, match="RGB"):
        f(photo[..., 0][None])
    del f                                 # garbage collection closes it quietly


def test_config_is_validated():
    with pytest.raises((RegistryError, ValueError)):
        REGISTRY.create("filter", {"type": "face", "treshold": 0.5})
    with pytest.raises((RegistryError, ValueError)):
        REGISTRY.create("filter", {"type": "face", "model": "long_range"})


def test_filter_command_scores_image_files(tmp_path):
    import json

    from click.testing import CliRunner

    from keras_reid.cli import main

    photo_path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((128, 64, 3), 120, np.uint8))
    res = CliRunner().invoke(main, ["filter", "face", "--json", str(photo_path), str(blank)])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output[res.output.index("["):])
    assert [r["path"] for r in rows] == [str(photo_path), str(blank)]
    assert rows[0]["score"] >= 0.75 and rows[1]["score"] == 0.0
    res = CliRunner().invoke(main, ["filter", "face", "--set", "threshold=0.99", str(photo_path)])
    assert res.exit_code == 0 and res.output.strip().endswith("0.0000")
    res = CliRunner().invoke(main, ["filter", "face", str(tmp_path / "missing.jpg")])
    assert res.exit_code == 1 and "cannot read image" in res.output
    res = CliRunner().invoke(main, ["filter", "fac", str(blank)])
    assert res.exit_code == 2 and "did you mean 'face'" in res.output
