"""tools/lima_samples.py: its image sets, the real face filter on a small synthetic closed set
(fronts are found, backs and 4x-downsampled people mostly not; shuffling keeps the colours) and
the view classifier's plumbing."""
import cv2
import numpy as np
import pytest

from keras_reid.data.synthetic_closed_set import synthesize_closed_set

pytestmark = pytest.mark.usefixtures("face_models")


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("lima_samples")


@pytest.fixture(scope="module")
def rows(tool, tmp_path_factory):
    root = tmp_path_factory.mktemp("lima") / "lima"
    synthesize_closed_set(root, ids=3, sessions=2, images_per_session=12, unknown_per_session=4)
    return tool.read_labels(root)


@pytest.fixture(scope="module")
def sets(tool, rows):
    return tool.image_sets(rows, 2)


@pytest.fixture(scope="module")
def flat(tool, tmp_path_factory):
    folder = tmp_path_factory.mktemp("samples")
    for i in range(2):
        cv2.imwrite(str(folder / f"s{i}.jpg"), np.full((128, 64, 3), 90 + i, np.uint8))
    return tool.sample_sets([f"flat={folder}/*.jpg"])


def test_image_sets(tool, sets, flat):
    people = sum(len(sets[f"real, {v} views"]) for v in ("front", "back", "side"))
    assert people == 3 * 12                          # session 2 left out
    assert len(sets["real, class 0 (no single person)"]) == 4
    assert flat["flat"].shape == (2, 128, 64, 3)
    for name in ("people, down x2 and up", "people, down x4 and up", "people, gaussian blur sigma 2",
                 "people, pixels shuffled"):
        assert sets[name].shape == (people, 128, 64, 3) and sets[name].dtype == np.uint8
    real = np.concatenate([sets[f"real, {v} views"] for v in ("front", "back", "side")])
    shuffled = sets["people, pixels shuffled"]
    # the same colours per image (order of people differs: compare sorted pixel sums)
    assert np.array_equal(np.sort(real.reshape(people, -1).sum(1)), np.sort(shuffled.reshape(people, -1).sum(1)))

    def roughness(x):  # mean difference of horizontally adjacent pixels: structure gone -> larger
        return np.abs(np.diff(x.astype(np.int32), axis=2)).mean()
    assert roughness(shuffled) > 3 * roughness(real)
    with pytest.raises(SystemExit, match="NAME=GLOB"):
        tool.sample_sets(["nothing=/no/such/*.jpg"])


def test_filter_rates(tool, sets, flat):
    keep = ["real, front views", "real, back views", "people, down x4 and up"]
    rates = tool.face_rates({**{k: sets[k] for k in keep}, **flat}, threshold=0.5, crop="auto")
    front, back = rates["real, front views"]["face_rate"], rates["real, back views"]["face_rate"]
    assert front >= 0.7 and back <= 0.3, rates
    assert rates["people, down x4 and up"]["face_rate"] < front - 0.4, rates
    assert rates["flat"] == {"images": 2, "face_rate": 0.0, "mean_score": 0.0}


def test_view_classifier_plumbing(tool, rows, sets):
    predict, accuracy = tool.view_classifier(rows, 2, epochs=1)
    assert set(accuracy) == {"real", "people, down x2 and up", "people, down x4 and up",
                             "people, gaussian blur sigma 1", "people, gaussian blur sigma 2"}
    assert all(0.0 <= a <= 1.0 for a in accuracy.values())
    shares = tool.view_shares(predict, {"fronts": sets["real, front views"]})
    assert set(shares["fronts"]) == {"front", "back", "side"}
    assert abs(sum(shares["fronts"].values()) - 1.0) < 1e-9
