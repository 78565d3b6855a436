"""The augment stage's worker: loads a generator, its masker and the filters once, and turns
work items into image files and manifest rows. Used in the stage's own process and, with the
Ray engine, inside each actor (so it imports nothing from the stage module)."""
from __future__ import annotations

import inspect
import os
import signal
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from keras_reid import io
from keras_reid.data.generated import ManifestRow
from keras_reid.data.images import load_images, to_uint8, to_unit
from keras_reid.data.masks import masks_for
from keras_reid.data.poses import skeleton_images
from keras_reid.errors import DatasetError, UserError
from keras_reid.keypoints import scale_keypoints
from keras_reid.registry import REGISTRY
from keras_reid.stages.outputs import GeneratorOutput

KILL_ENV = "KERAS_REID_TEST_KILL_AUGMENT"
"""Test hook: ``<marker file>:<n>`` SIGKILLs the process on its n-th :meth:`Worker.process` call
unless the marker file exists (it is created first, so a restarted worker goes on): the Ray
tests kill an actor in the middle of its shard without sleeps."""


def _maybe_kill(spec: str, call: int) -> None:
    """The :data:`KILL_ENV` test hook."""
    marker, _, n = spec.rpartition(":")
    if call == int(n) and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)


class Worker:
    """Loads the generator, its masker and the filters once; turns work items into files and
    manifest rows (used in this process and, with Ray, inside each actor)."""

    def __init__(self, *, generators: dict[str, dict], gen_summary: dict, filters: list[dict],
                 measure: list[dict] | None = None, min_score: float, noise: bool | None, out_dir: str, target_paths: list[str],
                 jpeg_quality: int, jpeg_chroma: str, provenance: dict,
                 canonical: list | None = None) -> None:
        gen = GeneratorOutput.model_validate(gen_summary)  # a plain dict: Ray pickles it
        self.factory = REGISTRY.create("generator", gen.generator)
        # {"": one generator} or {pid: its identity's generator}: {"path", "checkpoint",
        # "checkpoint_sha256"} each, loaded when first needed
        self.generators = generators
        self.gans: dict = {}
        self.size = gen.image_size
        self.needs = set(gen.generation_needs)
        self.masker = REGISTRY.create("masker", gen.masker) \
            if self.needs & {"source_mask", "target_mask"} else None
        self.filter_specs = filters
        self.filters = [REGISTRY.create("filter", f) for f in filters]
        self.measure_specs = list(measure or [])
        self.measures = [REGISTRY.create("filter", f) for f in self.measure_specs]
        self.min_score = float(min_score)
        self.noise = noise
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.target_paths = target_paths
        self.jpeg_params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
        if jpeg_chroma == "full":
            self.jpeg_params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
        self.provenance = provenance
        self.skeletons = None
        if "target_pose" in self.needs:  # one skeleton image per canonical pose, at the generator's size
            kps = [scale_keypoints(np.asarray(p["keypoints"], np.float32), tuple(p["size"]), self.size)
                   for p in canonical or []]
            self.skeletons = skeleton_images(np.stack(kps), self.size) if kps else None

    def close(self) -> None:
        """Release native resources (MediaPipe Tasks objects)."""
        for obj in [self.masker, *self.filters, *self.measures]:
            close = getattr(obj, "close", None)
            if callable(close):
                close()

    def _masks(self, paths: list[str], images: np.ndarray | None = None) -> np.ndarray:
        return masks_for(self.masker, paths, self.size, images=images).astype(np.float32) / 255.0

    def process(self, items: list[dict]) -> list[ManifestRow]:
        """Generate, filter and write the images of ``items``; returns their manifest rows (the
        items of each identity go to its own generator when there is one per identity)."""
        self._calls = getattr(self, "_calls", 0) + 1
        if os.environ.get(KILL_ENV):
            _maybe_kill(os.environ[KILL_ENV], self._calls)
        rows = []
        key_of = (lambda it: "") if "" in self.generators else (lambda it: str(int(it["pid"])))
        for key in dict.fromkeys(key_of(it) for it in items):
            if key not in self.gans:
                self.gans[key] = self.factory.load(self.generators[key]["path"])
            group = [it for it in items if key_of(it) == key]
            checkpoint = {k: v for k, v in self.generators[key].items() if k != "path"}
            rows += [{**r, **checkpoint} for r in self._process(group, self.gans[key])]
        return rows

    def _process(self, items: list[dict], gan) -> list[ManifestRow]:
        """Generate, filter and write the images of ``items`` (dicts of :class:`WorkItem` fields
        with ``source_path``); returns their manifest rows."""
        batch, target_files = self._inputs(items, gan)
        generated = to_uint8(_generate(gan, batch, self.noise, [int(it["seed"]) for it in items]))
        scores = {}
        for spec, flt in zip(self.filter_specs, self.filters):
            scores[spec["type"]] = np.asarray(flt(generated), np.float32)
        measured = {spec["type"]: np.asarray(flt(generated), np.float32)
                    for spec, flt in zip(self.measure_specs, self.measures)}
        return [self._write(it, generated[j], {k: round(float(v[j]), 4) for k, v in scores.items()},
                            {k: round(float(v[j]), 4) for k, v in measured.items()}, target_files[j])
                for j, it in enumerate(items)]

    def _inputs(self, items: list[dict], gan) -> tuple[dict[str, Any], list[str | None]]:
        """The generator's batch for ``items`` (noise from each item's seed, or the source images;
        masks, target poses as it needs them) and each item's target-mask image (or None)."""
        paths = [it["source_path"] for it in items]
        if "noise" in self.needs:  # z from each item's own seed: the same file whatever the batch
            z_dim = int(gan.z_dim)
            batch: dict[str, Any] = {"noise": np.stack([
                np.random.default_rng(it["seed"]).uniform(-1, 1, z_dim) for it in items]).astype(np.float32)}
            src = None
        else:
            src = load_images(paths, self.size)
            batch = {"source": to_unit(src)}
        if "source_mask" in self.needs:
            batch["source_mask"] = self._masks(paths, src)
        if "target_pose" in self.needs:
            if self.skeletons is None:
                raise UserError("the generator needs target poses; give the augment stage poses: "
                                "<a canonical_poses stage>")
            batch["target_pose"] = to_unit(self.skeletons[[int(it["copy"]) for it in items]])
        target_files = [None] * len(items)
        if "target_mask" in self.needs:
            if not self.target_paths:
                raise DatasetError("the generator needs target masks but the target camera has no images")
            target_files = [self.target_paths[np.random.default_rng(it["seed"]).integers(len(self.target_paths))]
                            for it in items]
            batch["target_mask"] = self._masks(target_files)
        return batch, target_files

    def _write(self, it: dict, image: np.ndarray, item_scores: dict[str, float],
               measured: dict[str, float], target_file: str | None) -> ManifestRow:
        """Writes the generated ``image`` of item ``it`` (JPEG, atomically) when every filter
        score reaches ``min_score``; returns its manifest row (kept or not)."""
        kept = all(v >= self.min_score for v in item_scores.values())
        if kept:
            ok, data = cv2.imencode(".jpg", image[..., ::-1], self.jpeg_params)
            if not ok:  # pragma: no cover - OpenCV failure
                raise UserError(f"could not encode {it['name']} as JPEG")
            with io.atomic_path(self.out_dir / it["name"]) as tmp:
                tmp.write_bytes(data.tobytes())
        return {"file": it["name"], "kept": kept, "scores": item_scores, "measured": measured,
                "source": it["source_path"], "pid": it["pid"], "camera": it["camera"],
                "source_camera": it["source_camera"], "sequence": it["sequence"],
                "frame": it["frame"], "copy": it["copy"], "seed": it["seed"],
                "target_mask_of": target_file,
                **({"pose_index": int(it["copy"])} if self.skeletons is not None else {}),
                **self.provenance}


def _generate(gan, batch: dict, noise: bool | None, seeds: list[int]):
    """``gan.generate(batch, noise=...)``, with each item's own seed when the generator takes
    ``seeds`` (its random draws at generation, e.g. pix2pix's dropout noise, then depend on the
    item only: not on the batch, the shard or what the process did before)."""
    if "seeds" in inspect.signature(gan.generate).parameters:
        return gan.generate(batch, noise=noise, seeds=seeds)
    return gan.generate(batch, noise=noise)
