"""The deploy form of a model in the ``evaluate`` stage: a train stage that saved its backbone's
converted model (``train_reid`` option ``convert``, see ``keras_reid.deploy``) gets a second
row, ``"<name> (converted)"``, ranked with the same protocol, and both rows get their size
(parameters, bytes on disk) and latency (ms per image at batch 1) under ``deploy``."""
from __future__ import annotations

import numpy as np

from keras_reid.data.pipeline import eval_dataset
from keras_reid.data.records import Record
from keras_reid.deploy import converted_name, latency_ms, model_size
from keras_reid.errors import UserError
from keras_reid.inference import extract_features
from keras_reid.stages.base import StageContext
from keras_reid.stages.evaluate.common import load_saved, multi_query_entry, publish, score
from keras_reid.stages.outputs import ReIDOutput


def evaluate_converted(ctx: StageContext, cfg, stage: str, name: str, loaded: tuple,
                       features: tuple[np.ndarray, np.ndarray], entry: dict, query: list[Record],
                       gallery: list[Record], pooled: tuple | None) -> dict[str, dict]:
    """``{"<name> (converted)": its metrics.json entry}`` for the converted model of train stage
    ``stage`` (evaluated as ``name``; ``loaded`` = (trained model, stage summary), ``features`` =
    the trained model's (query, gallery) features, ``entry`` = its entry, which gets its own
    ``deploy`` part here). Raises UserError when the converted file is missing."""
    model, out = loaded
    path, trained_path = ctx.run_dir / out.converted.model, ctx.run_dir / out.model
    compact = _load_converted(ctx, stage, name, path, "model")
    size, cname = out.image_size, converted_name(name)
    qf = extract_features(compact, query, size, cfg.batch_size, cfg.flip, normalise=cfg.normalise)
    gf = extract_features(compact, gallery, size, cfg.batch_size, cfg.flip, normalise=cfg.normalise)
    centry, res, dist = score(qf, gf, query, gallery, cfg)
    if pooled is not None:
        centry["multi_query"] = multi_query_entry(compact, size, cfg, qf, gf, query, gallery, pooled)
    trained_qf, trained_gf = features
    centry["converted_from"] = name
    centry["feature_max_abs_diff"] = float(max(np.max(np.abs(qf - trained_qf), initial=0.0),
                                               np.max(np.abs(gf - trained_gf), initial=0.0)))
    centry["parity_max_abs_diff"] = out.converted.max_abs_diff
    entry["deploy"], centry["deploy"] = measure(cfg, (model, trained_path), (compact, path),
                                                query[0], size)
    if ctx.is_chief:
        publish(ctx, cfg, cname, res, dist, query, gallery, gf, size, centry)
    return {cname: centry}


def measure(cfg, trained: tuple, converted: tuple, record: Record, size) -> tuple[dict, dict]:
    """``(deploy entry of the trained model, of the converted one)``: parameters, bytes of each
    ``(model, path)`` and, unless ``cfg.latency_runs`` is 0, their latency at batch 1 on the
    image of ``record`` (timed in turn, see ``keras_reid.deploy.latency_ms``)."""

    a, b = model_size(*trained), model_size(*converted)
    if cfg.latency_runs:
        image = np.asarray(next(iter(eval_dataset([record], image_size=tuple(size), batch_size=1))),
                           np.float32)
        timed = latency_ms({"trained": trained[0], "converted": converted[0]}, image, cfg.latency_runs)
        a.update(timed["trained"])
        b.update(timed["converted"])
    return a, b


def _load_converted(ctx: StageContext, stage: str, name: str, path, what: str):
    """Loads the converted ``what`` (model or classifier) of train stage ``stage`` from ``path``;
    raises UserError naming the stage to re-run when the file is missing."""
    if not path.exists():
        raise UserError(f"converted {what} {path} of stage '{stage}' is missing; re-run that stage "
                        f"(delete {ctx.stage_dir_of(stage)}/.complete.json)")
    ctx.echo(f"evaluating '{converted_name(name)}': the deploy form of '{name}' ({path.name})")
    return load_saved(ctx, stage, path)


def closed_set_converted(ctx: StageContext, cfg, stage: str, name: str, out: ReIDOutput, classifier,
                         entry: dict, score_fn, test: list[Record]) -> dict[str, dict]:
    """``{"<name> (converted)": entry}`` for the converted classifier of train stage ``stage``
    (closed-set data): ``score_fn(model) -> (metrics entry, confusion, classes)`` gives the same
    metrics as the trained classifier's ``entry``, which gets its ``deploy`` part here."""
    path, trained_path = ctx.run_dir / out.converted.classifier, ctx.run_dir / out.classifier
    compact = _load_converted(ctx, stage, name, path, "classifier")
    centry = score_fn(compact)
    centry["converted_from"] = name
    centry["parity_max_abs_diff"] = out.converted.max_abs_diff
    entry["deploy"], centry["deploy"] = measure(cfg, (classifier, trained_path), (compact, path),
                                                test[0], out.image_size)
    return {converted_name(name): centry}
