"""The PN-GAN and LSRO paper recipes (recipes/market_pngan.yaml, market_to_duke_pngan.yaml,
duke_dcgan_lsro.yaml) carry the papers' own settings (docs/papers.md) and validate."""
from pathlib import Path

import numpy as np
import pytest

from keras_reid.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
PNGAN = ["market_pngan", "market_to_duke_pngan"]


def _load(name, overrides=()):
    return load_recipe(ROOT / "recipes" / f"{name}.yaml", overrides, env={"KERAS_REID_DATA": "/tmp/x"})


@pytest.mark.parametrize("name", PNGAN)
def test_pngan_recipes_follow_the_paper(name):
    rec = _load(name)
    gan = rec.stage_configs["gan"]
    assert gan.generator["gan_loss"] == "log" and gan.generator["l1_weight"] == 10
    canonical = rec.stage_configs["canonical"]
    assert (canonical.features, canonical.cnn_weights, canonical.k) == ("vgg19", "imagenet", 8)
    for stage in ("A", "B"):
        cfg = rec.stage_configs[stage]
        bb = cfg.backbone
        assert (bb["head"], bb["embedding_dim"], bb["dropout"], bb["weights"]) == ("pngan", 1024, 0.5, "imagenet")
        assert cfg.loss == {"type": "softmax", "label_smoothing": 0.0}
        opt = cfg.optimizer
        assert (opt.type, opt.lr, opt.beta_1) == ("adam", 0.00035, 0.9)
        assert cfg.batch_size == 16 and 0 < cfg.freeze_backbone_epochs < cfg.epochs
        assert tuple(cfg.image_size) == (256, 128)
    assert rec.stage_configs["B"].real is False
    ev = rec.stage_configs["evaluate"]
    assert ev.fusion.method == "max" and ev.fusion.normalise_fused is False
    assert ev.metric == "euclidean" and ev.flip is False
    header = (ROOT / "recipes" / f"{name}.yaml").read_text().split("\nname:")[0]
    assert "docs/papers.md" in header and "Remaining differences" in header


def test_lsro_recipe_pools_real_and_generated_images_without_a_forced_share():
    rec = _load("duke_dcgan_lsro")
    for stage in ("r_g", "r_market_g"):
        cfg = rec.stage_configs[stage]
        assert cfg.generated_ratio is None and cfg.real
        assert [g.labels for g in cfg.generated] == ["lsro"]
    header = (ROOT / "recipes" / "duke_dcgan_lsro.yaml").read_text().split("\nname:")[0]
    assert "docs/papers.md" in header and "Remaining differences" in header


def test_lsro_recipe_trains_real_images_on_one_hot_targets(tmp_path):
    """In duke_dcgan_lsro.yaml's r_g stage the real images' targets reach the loss one-hot (no
    label smoothing), the LSRO images' as the uniform distribution (Zheng et al. 2017)."""
    import cv2
    import keras

    from keras_reid.data.pipeline import ReIDInput
    from keras_reid.data.records import Record
    from keras_reid.registry import REGISTRY

    cfg = _load("duke_dcgan_lsro").stage_configs["r_g"]
    records, labels, eps = [], [], []
    for i in range(8):  # 4 real images of 4 classes, 4 generated (LSRO) ones, as train_reid pools them
        path = tmp_path / f"{i}.jpg"
        cv2.imwrite(str(path), np.full((16, 8, 3), 20 * i, np.uint8))
        records.append(Record(str(path), i % 4 + 1 if i < 4 else 0, 1))
        labels.append(i % 4 if i < 4 else 0)
        eps.append(0.0 if i < 4 else 1.0)  # load_generated: lsro -> 1, the real images -> 0
    inp = ReIDInput(records, np.array(labels), image_size=(16, 8), global_batch_size=8,
                    sampler=cfg.sampler, transforms=[], epsilons=np.array(eps, np.float32),
                    num_classes=4)
    _, targets = next(iter(inp.dataset(0)))
    targets = np.asarray(targets)
    real = targets.max(axis=1) > 0.5
    assert real.sum() == 4
    np.testing.assert_array_equal(np.sort(targets[real], axis=1)[:, -1], 1.0)  # one-hot rows
    np.testing.assert_allclose(targets[~real], 0.25)  # uniform over the 4 real classes
    loss = REGISTRY.create("loss", cfg.loss)
    logits = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    got = np.asarray(loss(keras.ops.convert_to_tensor(targets), {"logits": logits,
                                                                 "embedding": logits}))
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(got[real], -log_p[real][targets[real] == 1.0], rtol=1e-5)
    np.testing.assert_allclose(got[~real], -log_p[~real].mean(axis=1), rtol=1e-5)
