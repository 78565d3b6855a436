"""Maskers: exact synthetic masks, a folder of precomputed masks, MediaPipe selfie segmentation."""
import cv2
import numpy as np
import pytest

from keras_reid.data.synthetic import synthesize
from keras_reid.errors import DatasetError, UserError
from keras_reid.registry import REGISTRY


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("maskers") / "data"
    synthesize(root, ids=8, cameras=2, size=(128, 64), seed=3, images_per_id_camera=2)
    return root, sorted(str(p) for p in (root / "bounding_box_train").glob("*.jpg"))[:12]


def test_synthetic_masker_returns_the_written_masks(synth):
    root, paths = synth
    masks = REGISTRY.create("masker", {"type": "synthetic"}).masks_for(paths, (128, 64))
    assert masks.shape == (len(paths), 128, 64, 1) and masks.dtype == np.float32
    for m, p in zip(masks, paths):
        name = p.split("/")[-1][:-4] + ".png"
        truth = cv2.imread(str(root / "masks" / "bounding_box_train" / name), cv2.IMREAD_GRAYSCALE) > 127
        np.testing.assert_array_equal(m[..., 0] > 0.5, truth)
    small = REGISTRY.create("masker", {"type": "synthetic"}).masks_for(paths[:2], (32, 16))
    assert small.shape == (2, 32, 16, 1) and set(np.unique(small)) <= {0.0, 1.0}


def test_synthetic_masker_on_other_images_names_the_file(tmp_path):
    img = tmp_path / "x" / "a.jpg"
    img.parent.mkdir()
    cv2.imwrite(str(img), np.zeros((8, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match="no mask for image .*a.jpg.*synthetic dataset"):
        REGISTRY.create("masker", {"type": "synthetic"}).masks_for([str(img)], (8, 4))
    with pytest.raises(UserError, match="masks_for"):
        REGISTRY.create("masker", {"type": "synthetic"})(np.zeros((1, 8, 4, 3), np.uint8))


def test_precomputed_masks_in_both_layouts(tmp_path):
    masks = tmp_path / "masks"
    (masks / "bounding_box_train").mkdir(parents=True)
    m = np.zeros((16, 8), np.uint8)
    m[4:12, 2:6] = 255
    cv2.imwrite(str(masks / "bounding_box_train" / "0001_c1s1_000001_01.png"), m)
    cv2.imwrite(str(masks / "0002_c1s1_000001_01.png"), 255 - m)
    cv2.imwrite(str(masks / "0004_c1s1_000001_01.jpg"), cv2.resize(m, (16, 32), interpolation=cv2.INTER_NEAREST))
    masker = REGISTRY.create("masker", {"type": "precomputed", "root": str(masks)})
    got = masker.masks_for(["/d/bounding_box_train/0001_c1s1_000001_01.jpg",
                            "/d/query/0002_c1s1_000001_01.jpg",
                            "/d/query/0004_c1s1_000001_01.jpg"], (16, 8))
    np.testing.assert_array_equal(got[0, ..., 0], m / 255)
    np.testing.assert_array_equal(got[1, ..., 0], 1 - m / 255)
    # a .jpg mask at twice the size: resized (nearest) and thresholded back to the same 0/1 mask
    np.testing.assert_array_equal(got[2, ..., 0], m / 255)
    with pytest.raises(DatasetError, match="no mask for image .*0003.*put a mask"):
        masker.masks_for(["/d/query/0003_c1s1_000001_01.jpg"], (16, 8))
    with pytest.raises(DatasetError, match="mask folder .* does not exist"):
        REGISTRY.create("masker", {"type": "precomputed", "root": str(tmp_path / "nope")})


@pytest.mark.usefixtures("selfie_model")
def test_mediapipe_selfie_segments_synthetic_people_and_not_an_empty_wall(synth):
    from keras_reid.data.images import load_images

    _, paths = synth
    truth = REGISTRY.create("masker", {"type": "synthetic"}).masks_for(paths, (128, 64)) > 0.5
    with REGISTRY.create("masker", {"type": "mediapipe_selfie"}) as masker:
        pred = masker(load_images(paths, (128, 64))) > 0.5
        blank = masker(np.full((2, 128, 64, 3), 128, np.uint8))
    inter = np.logical_and(pred, truth).sum(axis=(1, 2, 3))
    union = np.logical_or(pred, truth).sum(axis=(1, 2, 3))
    # measured: mean IoU 0.745 on these 12 images (tools/masker_iou.py: 0.72 over 300 at 128x64)
    assert (inter / union).mean() > 0.65
    assert blank.mean() < 0.05
    assert masker._task is None  # closed by the context manager
    masker.close()  # closing twice is harmless


@pytest.mark.usefixtures("selfie_model")
def test_mediapipe_selfie_soft_masks_model_option_and_masks_for(synth):
    from keras_reid.errors import ModelFileError
    from keras_reid.model_files import model_path

    _, paths = synth
    by_file = {"type": "mediapipe_selfie", "threshold": None,
               "model": str(model_path("selfie_segmentation.tflite"))}
    with REGISTRY.create("masker", by_file) as masker:
        soft = masker.masks_for(paths[:2], (128, 64))
    assert soft.shape == (2, 128, 64, 1) and soft.dtype == np.float32
    assert 0.0 <= soft.min() and soft.max() <= 1.0 and len(np.unique(soft)) > 2  # not thresholded
    with pytest.raises(ModelFileError, match="did you mean selfie_segmentation.tflite"):
        REGISTRY.create("masker", {"type": "mediapipe_selfie", "model": "selfie_segmentaton"}).task
    with pytest.raises(Exception, match="pad_fill"):
        REGISTRY.create("masker", {"type": "mediapipe_selfie", "pad_fill": "grey"})
