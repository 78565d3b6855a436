"""The background-transfer thesis recipes (recipes/market_model1..4.yaml and the Tables 8-12
recipes) carry the thesis's own settings (docs/papers.md), validate, and every one of them
(market_model1..4, market_model4_c6_to_c3, market_model4_c5c6, market_all_cameras; c3_to_c2 is
c6_to_c3's twin on other cameras) runs end to end on tiny synthetic data in the Market-1501
layout."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

from keras_reid import runner
from keras_reid.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["market_model1", "market_model2", "market_model3", "market_model4"]
REID_STAGES = {"market_model1": ["baseline_c5", "c5_g6", "baseline_c5c6", "c5c6_g6"],
               "market_model4": ["baseline", "augmented"]}
REID_STAGES["market_model2"] = REID_STAGES["market_model3"] = REID_STAGES["market_model1"]


def _load(name, overrides=(), data="/data"):
    return load_recipe(ROOT / "recipes" / f"{name}.yaml", overrides, env={"KERAS_REID_DATA": data})


@pytest.mark.parametrize("name", RECIPES)
def test_thesis_recipe_validates_with_the_thesis_reid_protocol(name):
    rec = _load(name)
    for stage in REID_STAGES[name]:
        cfg = rec.stage_configs[stage]
        assert cfg.backbone == {"type": "resnet50", "weights": "imagenet", "last_stride": 2,
                                "bn_neck": False, "classifier_bias": True, "classifier_std": 0.01}
        assert cfg.loss == {"type": "softmax", "label_smoothing": 0.1}
        opt = cfg.optimizer
        assert (opt.type, opt.lr, opt.weight_decay, opt.weight_decay_mode) == ("adam", 3e-4, 5e-4, "coupled")
        assert (opt.beta_1, opt.beta_2) == (0.9, 0.999)
        sched = cfg.schedule
        assert (sched.type, sched.milestones, sched.gamma, sched.warmup_epochs) == ("step", [20, 40], 0.1, 0)
        assert (cfg.sampler, cfg.batch_size, cfg.epochs, tuple(cfg.image_size)) == ("random", 32, 60, (256, 128))
        assert [t.type for t in cfg.augment] == ["random_translate", "flip"]  # no random erasing
        assert cfg.bn_recalibration_batches == 0
    assert rec.stage_configs["evaluate"].flip is False
    assert rec.model.seed == 0


@pytest.mark.parametrize("name,batch", [("market_model1", 1), ("market_model2", 1),
                                        ("market_model3", 1), ("market_model4", 32)])
def test_thesis_gan_batch_epochs_and_authors_generation(name, batch):
    """Thesis 4.2: the authors' defaults, batch size 1, 10 epochs; 4.7: Model 4 alike but batch 32."""
    gan = _load(name).stage_configs["gan"]
    assert (gan.batch_size, gan.epochs, gan.flip) == (batch, 10, True)
    gen = gan.generator
    assert gen["variant"] == f"model{name[-1]}"
    assert gen["dropout_at_generation"] is True and gen["batch_stats_at_generation"] is True
    from keras_reid.stages.train_generator import generator_factory

    cfg = generator_factory(gen).config
    assert (cfg.lr, cfg.beta_1, cfg.norm, cfg.dropout, cfg.decay_epochs) == (2e-4, 0.5, "batch", 0.5, 0)
    if name == "market_model4":
        assert (cfg.lambda_fg, cfg.lambda_bg, cfg.d_image_mask) == (70, 30, "none")
        assert gan.targets_per_source == 10
    else:
        assert cfg.lambda_l1 == 100


@pytest.mark.parametrize("name", RECIPES)
def test_thesis_recipe_headers_point_to_docs_papers_and_list_their_differences(name):
    header = (ROOT / "recipes" / f"{name}.yaml").read_text().split("\nname:")[0]
    assert "docs/papers.md" in header and "Remaining differences" in header
    for item in ("256x256", "jitter", "ImageNet", "L2-normalised"):
        assert item in header, item
    papers = (ROOT / "docs" / "papers.md").read_text()
    assert re.search(r"^## .*thesis", papers, re.M | re.I)


def test_thesis_recipes_share_one_reid_protocol():
    def reid(name, stage):
        cfg = _load(name).stage_configs[stage].model_dump()
        return {k: v for k, v in cfg.items() if k not in ("cameras", "generated")}

    assert reid("market_model1", "baseline_c5") == reid("market_model4", "baseline")


def test_market_model4_runs_end_to_end_on_tiny_synthetic_data(tmp_path, thesis_market):
    """The shipped recipe, shrunk with --set overrides only: synthetic Market-1501-style data,
    exact masks, 32x16 images, a narrow GAN, one epoch each, and the tiny backbone in place of
    ResNet-50 (a ResNet-50 step traces for minutes on a busy 2-core CPU; its thesis configuration
    is tested in test_backbones). Everything else is the recipe's: coupled weight decay, step
    schedule, random_translate + flip, Model 4's whole-image discriminator, the authors'
    generation, evaluation without flip."""
    data = thesis_market
    overrides = [
        "stages.gan.masker={type: synthetic}", "stages.gan.image_size=[32,16]",
        "stages.gan.generator.filters=4", "stages.gan.generator.max_filters=8",
        "stages.gan.targets_per_source=2", "stages.gan.batch_size=4", "stages.gan.epochs=1",
        "stages.gan.steps_per_epoch=2", "stages.gan.sample_every=2", "stages.gan.verbose=0",
        "stages.augment.batch_size=8",
        "stages.evaluate.ranked_lists=0", "stages.evaluate.projector_samples=0",
        "stages.evaluate.quality_images=8",
    ]
    for stage in ("baseline", "augmented"):
        overrides += [f"stages.{stage}.image_size=[32,16]",
                      f"stages.{stage}.backbone={{type: tiny, width: 8, blocks: 2, embedding_dim: 16}}",
                      f"stages.{stage}.epochs=1", f"stages.{stage}.batch_size=4",
                      f"stages.{stage}.verbose=0"]
    rec = _load("market_model4", overrides, data=str(data))
    results = runner.run(rec, tmp_path / "run", echo=lambda *_: None)
    gan = json.loads((tmp_path / "run" / "gan" / ".complete.json").read_text())["summary"]
    assert gan["pairing"] == "random_target" and {"g_fg", "g_bg", "g_gan"} <= set(gan["final"])
    aug = results["augment"]
    assert aug["generated"] == aug["kept"] == aug["source_images"] > 0
    assert results["augmented"]["generated_images"] == {"augment": aug["kept"]}
    # the augment stage generated as the generator says: per-image BatchNorm statistics (and
    # dropout noise): the loaded GAN carries both settings
    from keras_reid.registry import REGISTRY

    loaded = REGISTRY.create("generator", gan["generator"]).load(str(tmp_path / "run" / gan["model"]))
    assert loaded.batch_stats_at_generation and loaded.dropout_at_generation
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for model in ("baseline", "augmented"):
        assert 0.0 <= metrics["models"][model]["mAP"] <= 1.0
    assert np.isfinite(metrics["models"]["augmented"]["rank1"])


# Thesis Tables 8-12: recipes/market_model4_c5c6.yaml, market_model4_c6_to_c3.yaml,
# market_model4_c3_to_c2.yaml (base: market_model4.yaml) and market_all_cameras.yaml (Table 10)
TABLE_RECIPES = {  # recipe: {re-ID stage: (cameras, generated augment stages)}
    "market_model4_c5c6": {"baseline": ([5, 6], []), "augmented": ([5, 6], ["augment"])},
    "market_model4_c6_to_c3": {"baseline": ([6], []), "augmented": ([6], ["augment"]),
                               "baseline_c3c6": ([3, 6], []), "c3c6_g3": ([3, 6], ["augment"])},
    "market_model4_c3_to_c2": {"baseline": ([3], []), "augmented": ([3], ["augment"]),
                               "baseline_c2c3": ([2, 3], []), "c2c3_g2": ([2, 3], ["augment"])},
    "market_all_cameras": {"baseline": (None, []), "all_g3_g5_m1": (None, ["g3_m1", "g5_m1"]),
                           "all_g6_m3": (None, ["g6_m3"]), "all_g2_g3_m4": (None, ["g2_m4", "g3_m4"])},
}
TABLE_GANS = {  # recipe: {gan stage: (recipe whose gan it repeats, source, target, augment stage, images)}
    "market_model4_c5c6": {"gan": ("market_model4", 5, 6, "augment", "all")},
    "market_model4_c6_to_c3": {"gan": ("market_model4", 6, 3, "augment", "all")},
    "market_model4_c3_to_c2": {"gan": ("market_model4", 3, 2, "augment", "all")},
    "market_all_cameras": {"gan_m1_g3": ("market_model1", 6, 3, "g3_m1", "test"),
                           "gan_m1_g5": ("market_model1", 6, 5, "g5_m1", "test"),
                           "gan_m3_g6": ("market_model3", 5, 6, "g6_m3", "test"),
                           "gan_m4_g2": ("market_model4", 3, 2, "g2_m4", "all"),
                           "gan_m4_g3": ("market_model4", 6, 3, "g3_m4", "all")},
}


@pytest.mark.parametrize("name", sorted(TABLE_RECIPES))
def test_thesis_table_recipes_repeat_the_thesis_settings_on_their_cameras(name):
    """Every re-ID stage is market_model1's protocol on the table's cameras and generated sets;
    every GAN is its model's recipe's GAN on the table's camera pair; evaluation without flip."""
    rec = _load(name)

    def reid(r, stage):
        return {k: v for k, v in r.stage_configs[stage].model_dump().items() if k not in ("cameras", "generated")}

    protocol = reid(_load("market_model1"), "baseline_c5")
    for stage, (cameras, generated) in TABLE_RECIPES[name].items():
        assert reid(rec, stage) == protocol, stage
        cfg = rec.stage_configs[stage]
        assert cfg.cameras == cameras
        assert [(g.stage, g.labels) for g in cfg.generated] == [(g, "keep") for g in generated]
    for stage, (source, src, dst, aug, images) in TABLE_GANS[name].items():
        def gan(r, s):
            return {k: v for k, v in r.stage_configs[s].model_dump().items()
                    if k not in ("source_camera", "target_camera")}
        assert gan(rec, stage) == gan(_load(source), "gan"), stage
        cfg = rec.stage_configs[stage]
        assert (cfg.source_camera, cfg.target_camera) == (src, dst)
        assert (rec.stage_configs[aug].generator, rec.stage_configs[aug].images) == (stage, images)
    evaluated = set()
    for s, spec in rec.model.stages.items():
        if spec.type == "evaluate":
            assert rec.stage_configs[s].flip is False
            evaluated |= set(rec.stage_configs[s].models)
    assert evaluated == set(TABLE_RECIPES[name])
    header = (ROOT / "recipes" / f"{name}.yaml").read_text().split("\nname:")[0]
    assert "docs/papers.md" in header and "Remaining differences" in header and "(paper)" in header


def test_model4_camera_transfer_recipe_runs_end_to_end_on_tiny_synthetic_data(tmp_path, thesis_market):
    """market_model4_c6_to_c3.yaml (Tables 11 and 9), shrunk with --set only as the Model 4 test
    above: its base's stages on the new cameras and the two stages it adds after them train and
    are evaluated by both evaluate stages."""
    data = thesis_market
    overrides = [
        "stages.gan.masker={type: synthetic}", "stages.gan.image_size=[32,16]",
        "stages.gan.generator.filters=4", "stages.gan.generator.max_filters=8",
        "stages.gan.targets_per_source=2", "stages.gan.batch_size=4", "stages.gan.epochs=1",
        "stages.gan.steps_per_epoch=1", "stages.gan.sample_every=2", "stages.gan.verbose=0",
        "stages.augment.batch_size=8",
    ]
    for ev in ("evaluate", "evaluate_c3c6"):
        overrides += [f"stages.{ev}.ranked_lists=0", f"stages.{ev}.projector_samples=0"]
    overrides += ["stages.evaluate.quality_images=8"]
    for stage in ("baseline", "augmented", "baseline_c3c6", "c3c6_g3"):
        overrides += [f"stages.{stage}.image_size=[32,16]",
                      f"stages.{stage}.backbone={{type: tiny, width: 8, blocks: 2, embedding_dim: 16}}",
                      f"stages.{stage}.epochs=1", f"stages.{stage}.batch_size=4",
                      f"stages.{stage}.verbose=0"]
    rec = _load("market_model4_c6_to_c3", overrides, data=str(data))
    results = runner.run(rec, tmp_path / "run", echo=lambda *_: None)
    gan = json.loads((tmp_path / "run" / "gan" / ".complete.json").read_text())["summary"]
    assert (gan["source_camera"], gan["target_camera"]) == (6, 3)
    aug = results["augment"]
    assert aug["generated"] == aug["source_images"] > 0
    assert results["c3c6_g3"]["generated_images"] == {"augment": aug["kept"]}
    assert results["augmented"]["num_images"] < results["baseline_c3c6"]["num_images"]   # c6 < c3c6
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["models"]
    assert {"baseline", "augmented", "baseline_c3c6", "c3c6_g3"} <= set(metrics)


@pytest.fixture(scope="module")
def thesis_market(tmp_path_factory):
    """One tiny synthetic Market-1501 folder (6 cameras) for the Table 8 and 10 runs below
    (``$KERAS_REID_DATA``: the folder holding Market-1501-v15.09.15; read only)."""
    from keras_reid.data.synthetic import synthesize

    data = tmp_path_factory.mktemp("thesis_market")
    synthesize(data / "Market-1501-v15.09.15", ids=12, cameras=6, size=(64, 32), seed=0,
               images_per_id_camera=2, distractors=4, junk=2)
    return data


def _tiny(gans=(), augments=(), reid=(), evaluate="evaluate"):
    """--set overrides shrinking the named stages as the Model 4 test does: narrow pix2pix at
    32x16 with exact masks and one step, the tiny backbone for one epoch, no pictures."""
    out = []
    for g in gans:
        out += [f"stages.{g}.masker={{type: synthetic}}", f"stages.{g}.image_size=[32,16]",
                f"stages.{g}.generator.filters=4", f"stages.{g}.generator.max_filters=8",
                f"stages.{g}.batch_size=4", f"stages.{g}.epochs=1", f"stages.{g}.steps_per_epoch=1",
                f"stages.{g}.sample_every=2", f"stages.{g}.verbose=0"]
    out += [f"stages.{a}.batch_size=8" for a in augments]
    for stage in reid:
        out += [f"stages.{stage}.image_size=[32,16]",
                f"stages.{stage}.backbone={{type: tiny, width: 8, blocks: 2, embedding_dim: 16}}",
                f"stages.{stage}.epochs=1", f"stages.{stage}.batch_size=4", f"stages.{stage}.verbose=0"]
    return out + [f"stages.{evaluate}.ranked_lists=0", f"stages.{evaluate}.projector_samples=0",
                  f"stages.{evaluate}.quality_images=8"]


def test_model4_c5c6_recipe_runs_end_to_end_on_tiny_synthetic_data(tmp_path, thesis_market):
    """market_model4_c5c6.yaml (Table 8), shrunk with --set only: Model 4 learns camera 6 from
    camera 5, and both re-ID models train on cameras 5 and 6 (the augmented one + G6)."""
    overrides = _tiny(["gan"], ["augment"], ["baseline", "augmented"]) + ["stages.gan.targets_per_source=2"]
    rec = _load("market_model4_c5c6", overrides, data=str(thesis_market))
    results = runner.run(rec, tmp_path / "run", echo=lambda *_: None)
    gan = results["gan"]
    assert (gan["source_camera"], gan["target_camera"]) == (5, 6)
    aug = results["augment"]
    assert aug["generated"] == aug["source_images"] > 0
    assert results["augmented"]["generated_images"] == {"augment": aug["kept"]}
    assert results["augmented"]["num_images"] == results["baseline"]["num_images"] > 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["models"]
    assert set(metrics) == {"baseline", "augmented"}
    assert all(0.0 <= m["mAP"] <= 1.0 for m in metrics.values())


@pytest.mark.slow
def test_all_cameras_recipe_runs_end_to_end_on_tiny_synthetic_data(tmp_path, thesis_market):
    """market_all_cameras.yaml (Table 10), shrunk with --set only: the five GANs of Models 1, 3
    and 4 on their camera pairs, their kept sets, and c_all with and without them (five GAN
    trainings: the slowest recipe test, 4.4 min at load 7-8 on the shared 2-core CPU, each GAN's
    first step tracing for 25-45 s of it)."""
    gans = TABLE_GANS["market_all_cameras"]
    overrides = _tiny(list(gans), [g[3] for g in gans.values()], list(TABLE_RECIPES["market_all_cameras"]))
    overrides += [f"stages.{g}.targets_per_source=2" for g in ("gan_m4_g2", "gan_m4_g3")]
    rec = _load("market_all_cameras", overrides, data=str(thesis_market))
    results = runner.run(rec, tmp_path / "run", echo=lambda *_: None)
    for stage, (_, src, dst, aug, _) in gans.items():
        assert (results[stage]["source_camera"], results[stage]["target_camera"]) == (src, dst), stage
        assert results[aug]["generated"] == results[aug]["source_images"], aug
    for stage, (_, generated) in TABLE_RECIPES["market_all_cameras"].items():
        assert results[stage]["generated_images"] == {a: results[a]["kept"] for a in generated}, stage
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["models"]) == set(TABLE_RECIPES["market_all_cameras"])
    assert all(0.0 <= m["mAP"] <= 1.0 for m in metrics["models"].values())
    quality = metrics["stages"]["evaluate"]["generated_quality"]
    assert set(quality) == {g[3] for g in gans.values()}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["market_model1", "market_model2", "market_model3"])
def test_thesis_models_1_to_3_run_end_to_end_on_tiny_synthetic_data(name, tmp_path, thesis_market):
    """market_model1/2/3.yaml (thesis Models 1-3, c5 -> c6), shrunk with --set only: the camera-
    pair pix2pix (Model 2/3 with exact masks in place of MediaPipe's), its 'test' images of camera
    5 in camera 6's style, and the four re-ID models (c5, c5 + G6, c5c6, c5c6 + G6) evaluated."""
    gan_sets = _tiny(["gan"], ["augment"], REID_STAGES[name])
    if name == "market_model1":   # Model 1 takes no masks: the recipe's masker: null stays
        gan_sets = [o for o in gan_sets if not o.startswith("stages.gan.masker=")]
    rec = _load(name, gan_sets, data=str(thesis_market))
    results = runner.run(rec, tmp_path / "run", echo=lambda *_: None)
    gan = results["gan"]
    assert (gan["source_camera"], gan["target_camera"], gan["pairing"]) == (5, 6, "camera_pairs")
    assert gan["generator"]["variant"] == name[-6:]
    aug = results["augment"]
    assert aug["images_from"] == "test" and aug["generated"] == aug["source_images"] > 0
    for stage in ("c5_g6", "c5c6_g6"):
        assert results[stage]["generated_images"] == {"augment": aug["kept"]}
    assert results["baseline_c5"]["num_images"] < results["baseline_c5c6"]["num_images"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["models"]) == set(REID_STAGES[name])
    assert all(0.0 <= m["mAP"] <= 1.0 for m in metrics["models"].values())
