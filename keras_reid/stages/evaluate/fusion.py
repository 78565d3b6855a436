"""PN-GAN fused evaluation for the ``evaluate`` stage: model A on each query/gallery image and
model B on its pose-normalised versions (written by augment stages), fused into one vector per
image before ranking."""
from __future__ import annotations

import os

import numpy as np

from keras_reid.data import generated
from keras_reid.data.records import Record
from keras_reid.errors import UserError
from keras_reid.inference import extract_features
from keras_reid.metrics import pairwise_distance
from keras_reid.metrics.retrieval import fuse_features
from keras_reid.stages.base import StageContext
from keras_reid.stages.evaluate.common import RealFeatures, _retrieval, metrics_entry, publish, score


def _source_key(path) -> str:
    return os.path.normcase(os.path.realpath(str(path)))


def pose_versions(ctx: StageContext, cfg, images: list[Record]) -> tuple[list[Record], np.ndarray, dict]:
    """The pose-normalised versions of ``images`` written by the augment stages ``cfg.fusion.views``.

    A kept manifest row belongs to the image whose path equals its ``source``; rows of other
    sources are ignored (counted), and with ``fusion.poses`` only rows whose ``pose_index`` is
    listed are used. Returns ``(version records, owners [M] = index into images, counts)``,
    version records carrying their owner's pid and camera, ordered by owner, pose, file.
    Raises UserError when a view has not completed, when no row belongs to any of the images,
    or when a requested pose occurs in no row."""

    fusion = cfg.fusion
    index: dict[str, list[int]] = {}
    for i, r in enumerate(images):
        index.setdefault(_source_key(r.path), []).append(i)
    where = f"stage '{ctx.stage_name}': fusion.views"
    found, rows_seen, other, poses_present = _version_rows(ctx, fusion, index, where)
    if other == rows_seen:
        raise UserError(f"{where}: none of the {rows_seen} kept images of {fusion.views} was generated "
                        f"from the '{cfg.query_split}'/'{cfg.gallery_split}' images of "
                        f"dataset '{cfg.dataset}' (matched by their source path); run those "
                        "augment stages over the query and gallery images")
    if fusion.poses is not None and not set(fusion.poses) <= poses_present:
        missing = sorted(set(fusion.poses) - poses_present)
        raise UserError(f"{where}: pose {missing[0]} of fusion.poses occurs in no manifest row; poses "
                        f"present: {sorted(poses_present)}")
    found.sort()
    records, owners, skipped = _decodable_versions(ctx, found, images)
    return records, owners, {"rows": rows_seen, "other_sources": other, "used": len(records),
                             "skipped": skipped}


def _version_rows(ctx: StageContext, fusion, index: dict[str, list[int]], where: str
                  ) -> tuple[list[tuple[int, int, str, str]], int, int, set[int]]:
    """The kept manifest rows of the views whose source is one of the images (``index``: source
    key -> image indices) and whose pose ``fusion.poses`` lists. Returns ``(found: [(owner,
    pose, file, path)], rows seen, rows of other sources, poses present)``."""
    found: list[tuple[int, int, str, str]] = []  # (owner, pose, file, path)
    other = rows_seen = 0
    poses_present: set[int] = set()
    for view in fusion.views:
        ctx.output_of(view)  # clear error when the augment stage has not completed
        for row in generated.kept_rows(ctx.stage_dir_of(view)):
            rows_seen += 1
            owners = index.get(_source_key(row["source"])) if row.get("source") else None
            if owners is None:
                other += 1
                continue
            pose = row.get("pose_index")
            if fusion.poses is not None:
                if pose is None:
                    raise UserError(f"{where}: manifest rows of '{view}' have no pose_index, so "
                                    f"fusion.poses {fusion.poses} cannot choose among them; set "
                                    "poses: null or use a PN-GAN augment stage")
                poses_present.add(int(pose))
                if int(pose) not in fusion.poses:
                    continue
            found += [(i, -1 if pose is None else int(pose), row["file"], str(generated.image_path(ctx.stage_dir_of(view), row)))
                      for i in owners]
    return found, rows_seen, other, poses_present


def _decodable_versions(ctx: StageContext, found: list[tuple[int, int, str, str]],
                        images: list[Record]) -> tuple[list[Record], np.ndarray, int]:
    """The ``found`` versions that decode as records with their owner's pid and camera, their
    owners (index into ``images``) and how many were skipped (with a warning)."""
    records = [Record(path, images[i].pid, images[i].camid) for i, _, _, path in found]
    good = ctx.decodable(records, "pose-normalised images", allow_empty=True)
    skipped = len(records) - len(good)
    if skipped:
        kept = {str(r.path) for r in good}
        found = [f for f in found if f[3] in kept]
        records = good
    owners = np.array([i for i, _, _, _ in found], np.int64)
    return records, owners, skipped


def prepare_fusion(ctx: StageContext, cfg, features: RealFeatures,
                    images: list[Record]) -> tuple[list[Record], np.ndarray]:
    """The versions of ``images`` (see :func:`pose_versions`), after checking that A and B give
    vectors the fusion method can combine (when the models declare their output size)."""
    fusion = cfg.fusion
    records, owners, counts = pose_versions(ctx, cfg, images)
    if counts["other_sources"]:
        ctx.echo(f"fusion: {counts['other_sources']} of {counts['rows']} generated images are versions "
                 "of no query/gallery image; ignored")
    _check_sizes(ctx, fusion, _embedding_size(features.model(fusion.real)[0]),
                 _embedding_size(features.model(fusion.normalised)[0]))
    return records, owners


def evaluate_fusion(ctx: StageContext, cfg, features: RealFeatures, query: list[Record],
                     gallery: list[Record], versions: tuple[list[Record], np.ndarray],
                     pooled: tuple | None = None) -> dict[str, dict]:
    """The fused entry (and, with ``normalised_name``, model B alone on the fused versions).

    With ``pooled`` (``multi_query_set``'s ``(records, query index, record index)``; ``versions``
    then covers query + gallery + those records, in that order) each entry also gets
    ``multi_query``: the multi-query images are fused like the query and gallery images (A on the
    image + B on its versions, or B alone) and each query's fused vector is pooled with theirs."""

    fusion = cfg.fusion
    images = query + gallery
    model_b, out_b = features.model(fusion.normalised)
    records, owners = versions
    real = np.concatenate(features.get(fusion.real), 0)
    ctx.echo(f"evaluating '{fusion.name}': '{fusion.real}' on the real images + '{fusion.normalised}' "
             f"on {len(records)} pose-normalised versions, fused by {fusion.method}")
    vf = extract_features(model_b, records, out_b.image_size, cfg.batch_size, cfg.flip)
    _check_sizes(ctx, fusion, real.shape[1], vf.shape[1])
    mq = None
    if pooled is not None:   # the multi-query images' versions come after the query/gallery's
        mine = owners < len(images)
        mq = _MultiQueryVectors(ctx, cfg, features, pooled, vf[~mine], owners[~mine] - len(images))
        vf, owners = vf[mine], owners[mine]
        records = [r for r, m in zip(records, mine) if m]
    have = np.bincount(owners, minlength=len(images)) > 0
    without = int((~have).sum())
    info = _fusion_info(fusion, without, len(records), len(images))
    nq = len(query)
    out: dict[str, dict] = {}
    size = features.model(fusion.real)[1].image_size
    fused = fuse_features(real, vf, owners, len(images), fusion.method, normalise=fusion.normalise_fused)
    out[fusion.name] = _fused_entry(ctx, cfg, fusion.name, fused[:nq], fused[nq:], query, gallery,
                                    size, info)
    if mq is not None:
        out[fusion.name]["multi_query"] = mq.entry(fused[:nq], fused[nq:], query, gallery, real=True)
    if fusion.normalised_name:
        out[fusion.normalised_name] = _normalised_only(ctx, cfg, features, query, gallery, vf, owners,
                                                       have, info, mq, out_b.image_size)
    if without:
        ctx.echo(f"fusion: {without} of {len(images)} query/gallery images have no pose-normalised "
                 "version; they use the vectors they have")
    return out


def _fusion_info(fusion, without: int, versions: int, images: int) -> dict:
    """The fused entry's account of its inputs: images without versions, counts, the settings."""
    return {"images_without_versions": without, "versions": int(versions),
            "vectors": int(images + versions),
            "fusion": {"real": fusion.real, "normalised": fusion.normalised, "views": list(fusion.views),
                       "method": fusion.method, "poses": fusion.poses,
                       "normalise_fused": fusion.normalise_fused}}


def _normalised_only(ctx: StageContext, cfg, features: RealFeatures, query: list[Record],
                     gallery: list[Record], vf: np.ndarray, owners: np.ndarray, have: np.ndarray,
                     info: dict, mq, size_b) -> dict:
    """The ``normalised_name`` entry: model B alone, its versions fused; images without versions
    fall back to model B on the real image."""
    fusion = cfg.fusion
    images = query + gallery
    nq = len(query)
    fallback = np.flatnonzero(~have)
    vb, owners_b = vf, owners
    if fallback.size:
        real_b = np.concatenate(features.get(fusion.normalised), 0)
        vb = np.concatenate([vf, real_b[fallback]], 0)
        owners_b = np.concatenate([owners, fallback])
    only = fuse_features(None, vb, owners_b, len(images), fusion.method,
                         normalise=fusion.normalise_fused)
    info_b = {**info, "vectors": int(info["versions"] + fallback.size),
              "fusion": {**info["fusion"], "real": None}}
    entry = _fused_entry(ctx, cfg, fusion.normalised_name, only[:nq], only[nq:],
                         query, gallery, size_b, info_b)
    if mq is not None:
        entry["multi_query"] = mq.entry(only[:nq], only[nq:], query, gallery, real=False)
    return entry


class _MultiQueryVectors:
    """Market-1501 multi-query on fused vectors: the multi-query images (``pooled``) fused as the
    query and gallery images are, then pooled into each query's fused vector."""

    def __init__(self, ctx: StageContext, cfg, features: RealFeatures, pooled: tuple,
                 vf: np.ndarray, owners: np.ndarray) -> None:
        self.ctx, self.cfg, self.features = ctx, cfg, features
        self.records, self.q_idx, self.m_idx = pooled
        self.vf, self.owners = vf, owners

    def _real(self, stage: str) -> np.ndarray:
        """L2-normalised features of the multi-query images under ``stage``'s model."""
        model, out = self.features.model(stage)
        return extract_features(model, self.records, out.image_size, self.cfg.batch_size, self.cfg.flip)

    def vectors(self, real: bool) -> np.ndarray:
        """The fused vector of every multi-query image: A on it + B on its versions (``real``),
        else B on its versions, or on the image itself where it has none."""

        fusion, n = self.cfg.fusion, len(self.records)
        if n == 0:
            return np.zeros((0, self.vf.shape[1] if self.vf.size else 1), np.float32)
        if real:
            return fuse_features(self._real(fusion.real), self.vf, self.owners, n, fusion.method,
                                 normalise=fusion.normalise_fused)
        without = np.flatnonzero(np.bincount(self.owners, minlength=n) == 0)
        vb, owners = self.vf, self.owners
        if without.size:
            vb = np.concatenate([vb, self._real(fusion.normalised)[without]], 0)
            owners = np.concatenate([owners, without])
        return fuse_features(None, vb, owners, n, fusion.method, normalise=fusion.normalise_fused)

    def entry(self, qf: np.ndarray, gf: np.ndarray, query: list[Record], gallery: list[Record],
              real: bool) -> dict:
        """Metrics of each query's fused vector pooled (``multi_query``: mean or max) with those
        of its multi-query images, ranked against the fused gallery vectors. Unit vectors
        (``normalise_fused``) are pooled and normalised again, as for one model; raw fused
        vectors are pooled as they are, so they stay on the gallery vectors' scale."""

        method, extra = self.cfg.multi_query, self.vectors(real)[self.m_idx]
        if self.cfg.fusion.normalise_fused:
            pooled = fuse_features(qf, extra, self.q_idx, n=len(query), method=method)
        else:
            pooled = qf.astype(np.float64, copy=True)
            if method == "max":
                np.maximum.at(pooled, self.q_idx, extra)
            else:
                np.add.at(pooled, self.q_idx, extra)
                pooled /= (1 + np.bincount(self.q_idx, minlength=len(query)))[:, None]
            pooled = pooled.astype(np.float32)
        ids = (np.array([r.pid for r in query]), np.array([r.pid for r in gallery]),
               np.array([r.camid for r in query]), np.array([r.camid for r in gallery]))
        out = metrics_entry(_retrieval(pairwise_distance(pooled, gf, metric=self.cfg.metric), ids, self.cfg))
        out["pooling"] = method
        out["pooled_images"] = int(len(self.m_idx))
        return out


def _embedding_size(model) -> int | None:
    """The last dimension of the model's (first) output, when the model declares it."""
    try:
        return int(model.outputs[0].shape[-1])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


def _check_sizes(ctx: StageContext, fusion, real: int | None, normalised: int | None) -> None:
    if fusion.method != "concat" and None not in (real, normalised) and real != normalised:
        raise UserError(f"stage '{ctx.stage_name}': fusion.method {fusion.method} needs vectors of one "
                        f"size, but '{fusion.real}' gives {real} and '{fusion.normalised}' "
                        f"{normalised}; use method: concat or models with one embedding size")


def _fused_entry(ctx: StageContext, cfg, name: str, qf: np.ndarray, gf: np.ndarray,
                 query: list[Record], gallery: list[Record], size, info: dict) -> dict:
    entry, res, dist = score(qf, gf, query, gallery, cfg)
    entry.update(info)
    if ctx.is_chief:
        publish(ctx, cfg, name, res, dist, query, gallery, gf, size, entry)
    return entry

