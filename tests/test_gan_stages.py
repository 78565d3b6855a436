"""train_generator -> augment -> train_reid (with generated sets) -> evaluate, on tiny synthetic data.

Also: recipe and dataset errors before any work starts, an interrupted augment resumed without
duplicates or half-written files, ``--shard i/N`` parts whose union equals a single-process run
file for file, and the Ray engine against a local Ray instance (same files again).
"""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from keras_reid import runner, testing
from keras_reid.errors import DatasetError, RecipeError
from keras_reid.recipe import load_recipe

DATA = {"ids": 16, "cameras": 3, "size": (64, 32), "seed": 1, "images_per_id_camera": 2}


def _synth(root):
    return {"synth": testing.SyntheticData(root, DATA).spec}


def _recipe(tmp, root, *overrides, variant="model4", masker={"type": "synthetic"}, engine="local"):
    """gan (pix2pix ``variant``) -> augment -> augmented (train_reid with LSRO) -> evaluate."""
    stages = {
        "gan": {"type": "train_generator", "dataset": "synth", "source_camera": 1, "target_camera": 2,
                "generator": {"type": "pix2pix", "variant": variant, "filters": 4, "max_filters": 16},
                "masker": masker, "image_size": [32, 16], "targets_per_source": 2, "batch_size": 4,
                "epochs": 1, "steps_per_epoch": 3, "sample_every": 2, "verbose": 0},
        "augment": {"type": "augment", "generator": "gan", "images": "all", "batch_size": 5, "engine": engine},
        "augmented": {"type": "train_reid", "dataset": "synth", "cameras": [1], "image_size": [32, 16],
                      "backbone": {"type": "tiny", "width": 8, "blocks": 2, "embedding_dim": 16},
                      "optimizer": {"type": "adam", "lr": 0.001}, "batch_size": 8, "instances_per_id": 2,
                      "epochs": 1, "bn_recalibration_batches": 2, "verbose": 0,
                      "generated": [{"stage": "augment", "labels": "lsro"}], "generated_ratio": 0.5},
        "evaluate": {"type": "evaluate", "dataset": "synth", "models": ["augmented"], "generated": ["augment"],
                     "ranked_lists": 0, "projector_samples": 0},
    }
    return testing.build_recipe(Path(tmp) / "r.yaml", name="gan_stages", seed=2, datasets=_synth(root),
                                stages=stages, overrides=overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_data):
    """A run folder whose gan stage is complete (trained once per module)."""
    base = tmp_path_factory.mktemp("gan")
    root = synthetic_data(**DATA).root
    rec = _recipe(base, root)
    run_dir = base / "run"
    runner.run(rec, run_dir, only=["gan"], echo=lambda *_: None)
    return rec, root, run_dir


def _run_copy(trained, tmp_path, name="run", engine="local"):
    rec, root, run_dir = trained
    if engine != "local":
        rec = _recipe(tmp_path, root, engine=engine)
    target = tmp_path / name
    shutil.copytree(run_dir, target)
    return rec, target


def _files(run_dir: Path) -> dict:
    folder = run_dir / "augment" / "data" / "bounding_box_train"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.jpg"))}


def test_gan_stage_saves_generator_samples_and_every_loss_term(trained):
    _, _, run_dir = trained
    summary = json.loads((run_dir / "gan" / ".complete.json").read_text())["summary"]
    assert summary["pairing"] == "random_target" and summary["pairs"]["pairs"] > 0
    assert {"d_loss", "g_loss", "g_gan", "g_fg", "g_bg"} <= set(summary["final"])
    assert (run_dir / summary["model"]).is_file()
    assert summary["masks"]["person_fraction"] > 0.05
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard" / "gan"), size_guidance={"tensors": 0})
    acc.Reload()
    assert "gan/samples" in acc.Tags()["tensors"]
    steps = [e.step for e in acc.Tensors("gan/samples")]
    assert steps[0] == 0 and max(steps) == 3  # before training and at the end
    assert {"gan/epoch/d_loss", "gan/epoch/g_fg"} <= set(acc.Tags()["tensors"])


def test_full_pipeline_writes_labelled_images_trains_with_them_and_scores_them(trained, tmp_path):
    rec, run_dir = _run_copy(trained, tmp_path)
    results = runner.run(rec, run_dir, echo=lambda *_: None)
    aug = results["augment"]
    assert aug["generated"] == aug["source_images"] > 0 and aug["kept"] == aug["generated"]
    rows = [json.loads(l) for l in (run_dir / "augment" / "manifest-0-of-1.jsonl").read_text().splitlines()]
    assert len(rows) == aug["generated"] and len({r["file"] for r in rows}) == len(rows)
    for r in rows:
        assert r["camera"] == 2 and r["source_camera"] == 1
        assert "_c2s" in r["file"] and r["file"].endswith("_g1k0.jpg")
        assert r["file"].startswith(f"{r['pid']:04d}_")
        assert r["checkpoint"] == "gan/generator.keras" and isinstance(r["seed"], int)
        assert (run_dir / "augment" / "data" / "bounding_box_train" / r["file"]).is_file()
    # written with colour at every pixel (jpeg_chroma: full, JPEG 4:4:4; PIL: 0 = 4:4:4, 2 = 4:2:0)
    from PIL import Image, JpegImagePlugin

    with Image.open(run_dir / "augment" / "data" / "bounding_box_train" / rows[0]["file"]) as im:
        assert JpegImagePlugin.get_sampling(im) == 0
    # the generated folder reads as a Market-1501 training folder
    from keras_reid_plugins.datasets.market import parse_market_name

    assert all(parse_market_name(r["file"])[:2] == (r["pid"], 2) for r in rows)
    assert results["augmented"]["generated_images"] == {"augment": aug["kept"]}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ip = metrics["models"]["augmented"]["identity_preservation"]["augment"]
    assert 0.0 <= ip["rank1"] <= 1.0 and ip["valid_queries"] > 0
    quality = metrics["stages"]["evaluate"]["generated_quality"]["augment"]
    assert 0.0 < quality["ssim_vs_source"] <= 1.0 and "person_ssim_vs_source" in quality


def test_interrupted_augment_resumes_without_duplicates_or_half_written_files(trained, tmp_path, monkeypatch):
    rec, clean = _run_copy(trained, tmp_path, "clean")
    runner.run(rec, clean, only=["augment"], echo=lambda *_: None)
    rec, run_dir = _run_copy(trained, tmp_path, "killed")
    from keras_reid.stages.augment import worker as augment_worker

    real = augment_worker.Worker.process
    calls = {"n": 0}

    def dying(self, items):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(self, items)

    monkeypatch.setattr(augment_worker.Worker, "process", dying)
    with pytest.raises(KeyboardInterrupt):
        runner.run(rec, run_dir, only=["augment"], echo=lambda *_: None)
    manifest = run_dir / "augment" / "manifest-0-of-1.jsonl"
    done = manifest.read_text().splitlines()
    assert len(done) == 10  # two batches of 5
    with open(manifest, "a") as fh:  # a line cut short by the kill
        fh.write('{"file": "0001_c2s1_')
    (run_dir / "augment" / "data" / "bounding_box_train" / ".tmp-x.jpg-abc.jpg").write_bytes(b"\xff")
    monkeypatch.setattr(augment_worker.Worker, "process", real)
    assert runner.plan(rec, run_dir)[1].status == "resume"
    runner.run(rec, run_dir, only=["augment"], echo=lambda *_: None)
    lines = manifest.read_text().splitlines()
    names = [json.loads(l)["file"] for l in lines]
    assert len(names) == len(set(names))  # no duplicates, the cut line is gone
    got, want = _files(run_dir), _files(clean)
    assert got == want  # same names, same bytes as an uninterrupted run


def test_shards_union_equals_a_single_process_run_file_for_file(trained, tmp_path):
    rec, single = _run_copy(trained, tmp_path, "single")
    runner.run(rec, single, only=["augment"], echo=lambda *_: None)
    rec, sharded = _run_copy(trained, tmp_path, "sharded")
    first = runner.run(rec, sharded, only=["augment"], shard=(0, 2), echo=lambda *_: None)
    assert first["_incomplete"]["stage"] == "augment"
    assert not (sharded / "augment" / ".complete.json").exists()
    second = runner.run(rec, sharded, only=["augment"], shard=(1, 2), echo=lambda *_: None)
    assert "_incomplete" not in second and (sharded / "augment" / ".complete.json").exists()
    assert _files(sharded) == _files(single)
    parts = sorted(p.name for p in (sharded / "augment").glob("manifest-*.jsonl"))
    assert parts == ["manifest-0-of-2.jsonl", "manifest-1-of-2.jsonl"]


@pytest.mark.slow
def test_ray_engine_on_a_local_instance_gives_the_same_files(trained, tmp_path):
    pytest.importorskip("ray", reason="the test extra installs ray")
    rec, single = _run_copy(trained, tmp_path, "single")
    runner.run(rec, single, only=["augment"], echo=lambda *_: None)
    rec_ray, on_ray = _run_copy(trained, tmp_path, "ray", engine="ray")
    (on_ray / "recipe.resolved.yaml").unlink()
    out = runner.run(rec_ray, on_ray, only=["augment"], echo=lambda *_: None)
    assert out["augment"]["engine"] == "ray"
    assert _files(on_ray) == _files(single)


@pytest.mark.slow
def test_ray_actor_killed_mid_shard_is_retried_file_for_file(trained, tmp_path, monkeypatch):
    """An actor process SIGKILLed on its second batch (after writing the first) is restarted by
    Ray Data and the batch retried: the same files as one process, each listed once."""
    pytest.importorskip("ray", reason="the test extra installs ray")
    from keras_reid.stages.augment import worker as augment_worker

    rec, single = _run_copy(trained, tmp_path, "single")
    runner.run(rec, single, only=["augment"], echo=lambda *_: None)
    rec_ray, on_ray = _run_copy(trained, tmp_path, "ray", engine="ray")
    (on_ray / "recipe.resolved.yaml").unlink()
    marker = tmp_path / "killed-once"
    monkeypatch.setenv(augment_worker.KILL_ENV, f"{marker}:2")
    out = runner.run(rec_ray, on_ray, only=["augment"], echo=lambda *_: None)
    assert marker.exists(), "no actor was killed: the hook did not reach the Ray workers"
    assert out["augment"]["engine"] == "ray"
    leftovers = list((on_ray / "augment").rglob(".tmp-*"))
    for tmp in leftovers:       # what a kill mid-write leaves; the next run would remove it
        tmp.unlink()
    assert _files(on_ray) == _files(single)
    names = [json.loads(l)["file"] for p in (on_ray / "augment").glob("manifest*.jsonl")
             for l in p.read_text().splitlines()]
    assert len(names) == len(set(names))


def test_model4_without_masker_is_rejected_at_validation(tmp_path):
    with pytest.raises(RecipeError, match=r"stages\.gan\.masker.*needs person masks.*mediapipe_selfie"):
        _recipe(tmp_path, tmp_path / "data", masker=None)


def test_unknown_camera_fails_before_any_stage_runs(trained, tmp_path):
    _, root, _ = trained
    rec = _recipe(tmp_path, root, "stages.gan.target_camera=7")
    with pytest.raises(DatasetError, match="camera 7 does not occur.*1, 2, 3"):
        runner.run(rec, tmp_path / "run", echo=lambda *_: None)
    assert not (tmp_path / "run" / "gan" / "checkpoints").exists()


def test_camera_pair_without_shared_identities_is_a_clear_error(tmp_path, synthetic_data):
    root = tmp_path / "data"
    shutil.copytree(synthetic_data(**DATA).root, root)
    # drop every camera-2 image of identities that camera 1 also saw
    cam1 = {p.name.split("_")[0] for p in (root / "bounding_box_train").glob("*_c1s*.jpg")}
    for p in (root / "bounding_box_train").glob("*_c2s*.jpg"):
        if p.name.split("_")[0] in cam1:
            p.unlink()
    rec = _recipe(tmp_path, root, variant="model1", masker=None)
    with pytest.raises(DatasetError, match="cameras 1 and 2 share no identity.*model4"):
        runner.run(rec, tmp_path / "run", echo=lambda *_: None)


def test_interrupted_generator_training_resumes_from_its_checkpoint(trained, tmp_path, monkeypatch):
    _, root, _ = trained
    rec = _recipe(tmp_path, root, "stages.gan.epochs=2")
    from keras_reid.training import checkpoint

    real = checkpoint.EpochCheckpoint.on_epoch_end

    def save_then_die(self, epoch, logs=None):
        real(self, epoch, logs)
        raise KeyboardInterrupt("killed after the first epoch")

    monkeypatch.setattr(checkpoint.EpochCheckpoint, "on_epoch_end", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        runner.run(rec, tmp_path / "run", only=["gan"], echo=lambda *_: None)
    monkeypatch.setattr(checkpoint.EpochCheckpoint, "on_epoch_end", real)
    out = runner.run(rec, tmp_path / "run", only=["gan"], echo=lambda *_: None)
    assert out["gan"]["resumed_from_epoch"] == 1 and out["gan"]["epochs"] == 2
    assert (tmp_path / "run" / "gan" / "generator.keras").is_file()


def test_model3_generation_takes_the_pose_of_a_recorded_target_camera_mask(trained, tmp_path):
    _, root, _ = trained
    rec = _recipe(tmp_path, root, "stages.augment.copies=2", "stages.augment.max_images=3", variant="model3")
    out = runner.run(rec, tmp_path / "run", only=["gan", "augment"], echo=lambda *_: None)
    assert out["gan"]["pairing"] == "camera_pairs"
    assert out["gan"]["generation_needs"] == ["source", "source_mask", "target_mask"]
    rows = [json.loads(l) for l in (tmp_path / "run" / "augment" / "manifest-0-of-1.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["copy"] for r in rows} == {0, 1}
    assert all("_c2s" in Path(r["target_mask_of"]).name for r in rows)  # a camera-2 image's mask
    assert len({r["file"] for r in rows}) == 6


DCGAN = {"type": "dcgan", "z_dim": 8, "filters": 4, "max_filters": 16}


def _dcgan(root, semantic_filter={"type": "face"}, semantic_control=True, **more_stages):
    """A guided DCGAN whose training the face filter steers (``None``: no key written)."""
    gan = {"type": "train_generator", "dataset": "synth", "generator": dict(DCGAN, guided=True),
           "semantic_filter": semantic_filter, "semantic_control": semantic_control, "image_size": [64, 32],
           "batch_size": 4, "epochs": 1, "steps_per_epoch": 2, "verbose": 0}
    gan = {k: v for k, v in gan.items() if v is not None}
    return {"name": "dcgan_stage", "seed": 1, "datasets": _synth(root), "stages": {"gan": gan, **more_stages}}


@pytest.mark.usefixtures("face_models")
def test_dcgan_with_semantic_control_trains_on_the_images_the_face_filter_accepts(trained, tmp_path):
    _, root, _ = trained
    rec = testing.build_recipe(tmp_path / "d.yaml", **_dcgan(root))
    out = runner.run(rec, tmp_path / "run", echo=lambda *_: None)["gan"]
    sem = out["semantic_filter"]
    assert 0 < sem["accepted"] < sem["real_images"]  # front views yes, backs no
    assert out["pairs"]["pairs"] == sem["accepted"] and out["pairing"] == "unpaired"
    assert "fake_no_face" in out["final"]
    rec = testing.build_recipe(tmp_path / "d.yaml", **_dcgan(root, {"type": "face", "threshold": 1.0}))
    with pytest.raises(DatasetError, match=r"accepted none of the \d+ real images"):
        runner.run(rec, tmp_path / "run2", echo=lambda *_: None)


def test_guided_generator_without_a_semantic_filter_is_rejected(tmp_path):
    with pytest.raises(RecipeError, match="semantic_control needs a semantic filter"):
        testing.build_recipe(tmp_path, **_dcgan(tmp_path, semantic_filter=None))
    with pytest.raises(RecipeError, match="guided generator needs a semantic filter"):
        testing.build_recipe(tmp_path, **_dcgan(tmp_path, semantic_filter=None, semantic_control=None))


@pytest.mark.parametrize("policy,extra_classes", [("unknown", 1), ("fixed", 0), ("keep", 0)])
def test_label_policies_for_generated_sets(trained, tmp_path, policy, extra_classes):
    _, root, _ = trained
    rec, run_dir = _run_copy(trained, tmp_path)
    g = {"stage": "augment", "labels": policy}
    if policy == "fixed":  # an identity of camera 1's training images
        g["fixed_pid"] = int(sorted((root / "bounding_box_train").glob("*_c1s*.jpg"))[0].name[:4])
    rec = _recipe(tmp_path, root, f"stages.augmented.generated=[{json.dumps(g)}]",
                  "stages.augmented.generated_ratio=null")
    out = runner.run(rec, run_dir, only=["augment", "augmented"], echo=lambda *_: None)
    labels = json.loads((run_dir / "augmented" / "labels.json").read_text())
    real_ids = {p.name[:4] for p in (root / "bounding_box_train").glob("*_c1s*.jpg")}
    assert out["augmented"]["num_classes"] == len(labels) == len(real_ids) + extra_classes
    assert ("-100" in labels) == (policy == "unknown")
    # the labels each generated image trains with
    from keras_reid.stages.train_reid.run import load_generated
    from keras_reid.stages.base import StageContext

    mapping = {int(pid): i for pid, i in labels.items() if pid != "-100"}
    gen = load_generated(rec.stage_configs["augmented"].generated[0],
                         StageContext(recipe=rec, stage_name="augmented", run_dir=run_dir), mapping)
    if policy == "keep":
        expect = [mapping[r.pid] for r in gen.records]
    else:
        expect = [mapping[-100 if policy == "unknown" else g["fixed_pid"]]] * len(gen.records)
    assert gen.labels.tolist() == expect and not gen.epsilons.any()
    assert len({r.pid for r in gen.records}) > 1  # several identities, so fixed differs from keep


def test_real_false_trains_on_the_generated_images_only(trained, tmp_path, monkeypatch):
    """PN-GAN's model B: no real image enters a batch; the classes stay the real identities'."""
    from keras_reid.data import pipeline as data_pipeline

    _, root, _ = trained
    rec, run_dir = _run_copy(trained, tmp_path)
    rec = _recipe(tmp_path, root, "stages.augmented.generated=[{stage: augment}]",
                  "stages.augmented.generated_ratio=null", "stages.augmented.real=false")
    seen = []

    class Recording(data_pipeline.ReIDInput):
        def __init__(self, records, *args, **kwargs):
            seen.append(list(records))
            super().__init__(records, *args, **kwargs)

    monkeypatch.setattr(data_pipeline, "ReIDInput", Recording)
    out = runner.run(rec, run_dir, only=["augment", "augmented"], echo=lambda *_: None)
    generated = (run_dir / "augment").resolve()
    assert len(seen) == 1 and seen[0]
    assert all(generated in Path(r.path).resolve().parents for r in seen[0])
    assert out["augmented"]["num_images"] == 0
    assert out["augmented"]["generated_images"] == {"augment": len(seen[0])}
    real_ids = {p.name[:4] for p in (root / "bounding_box_train").glob("*_c1s*.jpg")}
    assert out["augmented"]["num_classes"] == len(real_ids)
    for bad, match in [("stages.augmented.generated=[]", "real: false leaves nothing to train on"),
                       ("stages.augmented.generated_ratio=0.5", "generated_ratio: shares a batch"),
                       ("stages.augmented.generated=[{stage: augment, labels: lsro}]",
                        r"labels: lsro images need real classes")]:
        with pytest.raises(RecipeError, match=match):
            load_recipe(tmp_path / "r.yaml", ["stages.augmented.real=false", bad]
                        + (["stages.augmented.generated_ratio=null"] if "ratio" not in bad else
                           ["stages.augmented.generated=[{stage: augment}]"]))


@pytest.mark.usefixtures("face_models")
def test_dcgan_samples_are_generated_filtered_counted_and_trained_on_with_lsro(trained, tmp_path):
    _, root, _ = trained
    rec = testing.build_recipe(tmp_path / "d.yaml", **_dcgan(
        root,
        augment={"type": "augment", "generator": "gan", "samples": 12, "batch_size": 5,
                 "filters": [{"type": "face", "threshold": 0.0}], "min_score": 0.0},
        reid={"type": "train_reid", "dataset": "synth", "image_size": [32, 16],
              "backbone": {"type": "tiny", "width": 8, "blocks": 2, "embedding_dim": 16}, "batch_size": 8,
              "instances_per_id": 2, "epochs": 1, "bn_recalibration_batches": 1, "verbose": 0,
              "generated": [{"stage": "augment", "labels": "lsro"}], "generated_ratio": 0.25}))
    out = runner.run(rec, tmp_path / "run", echo=lambda *_: None)
    aug = out["augment"]
    assert aug["generated"] == aug["kept"] == 12 and "face" in aug["accepted_fraction_by_filter"]
    rows = [json.loads(l) for l in (tmp_path / "run" / "augment" / "manifest-0-of-1.jsonl").read_text().splitlines()]
    assert len({r["seed"] for r in rows}) == 12 and all(r["source"] == "" for r in rows)
    assert out["reid"]["generated_images"] == {"augment": 12}
    with pytest.raises(RecipeError, match="samples: missing"):
        load_recipe(rec.source, ["stages.augment.samples=null"])


def test_per_identity_generators_start_from_g_and_sample_their_identity(trained, tmp_path):
    _, root, _ = trained
    pids = sorted({int(p.name[:4]) for p in (root / "bounding_box_train").glob("*.jpg")})[:2]
    gen = {"type": "train_generator", "dataset": "synth", "generator": DCGAN, "image_size": [32, 16],
           "batch_size": 4, "epochs": 1, "steps_per_epoch": 2, "verbose": 0}
    rec = testing.build_recipe(tmp_path / "g.yaml", name="per_identity", seed=4, datasets=_synth(root), stages={
        "g0": gen,
        "gj": dict(gen, per_identity=True, init_from="g0", identities=pids, steps_per_epoch=1),
        "samples": {"type": "augment", "generator": "gj", "samples": 3}})
    run_dir = tmp_path / "run"
    out = runner.run(rec, run_dir, echo=lambda *_: None)
    assert sorted(out["gj"]["generators"]) == sorted(str(p) for p in pids)
    from keras_reid.registry import REGISTRY

    factory = REGISTRY.create("generator", {"type": "dcgan", "z_dim": 8, "filters": 4, "max_filters": 16})
    g0 = factory.load(str(run_dir / out["g0"]["model"])).generator.get_weights()
    gj = factory.load(str(run_dir / out["gj"]["generators"][str(pids[0])])).generator.get_weights()
    fresh = factory.build((32, 16)).generator.get_weights()
    # one step from G: far closer to G's weights than a fresh initialisation is
    near = max(np.abs(a - b).max() for a, b in zip(g0, gj))
    far = max(np.abs(a - b).max() for a, b in zip(g0, fresh))
    assert near < far / 2
    rows = [json.loads(l) for l in (run_dir / "samples" / "manifest-0-of-1.jsonl").read_text().splitlines()]
    assert sorted(r["pid"] for r in rows) == sorted(pids * 3)
    assert all(r["checkpoint"] == out["gj"]["generators"][str(r["pid"])] for r in rows)
    # pixel diversity of the samples, overall and per generator, recomputed from the files
    from keras_reid.data.images import read_image
    from keras_reid.metrics.quality import pixel_diversity

    div = out["samples"]["sample_diversity"]
    folder = run_dir / "samples" / "data" / "bounding_box_train"
    images = {r["file"]: read_image(str(folder / r["file"]), None) for r in rows}
    assert div["images"] == len(rows) == 6
    assert div["pixel_std"] == pytest.approx(pixel_diversity(np.stack(list(images.values()))), abs=0.01)
    assert sorted(div["pixel_std_by_generator"]) == sorted(out["gj"]["generators"].values())
    first = out["gj"]["generators"][str(pids[0])]
    assert div["pixel_std_by_generator"][first] == pytest.approx(pixel_diversity(np.stack(
        [images[r["file"]] for r in rows if r["checkpoint"] == first])), abs=0.01)
    assert all(r["file"].startswith(f"{r['pid']:04d}_") for r in rows)
    with pytest.raises(RecipeError, match="init_from.*different generator"):
        load_recipe(rec.source, ["stages.gj.generator.z_dim=16"])
