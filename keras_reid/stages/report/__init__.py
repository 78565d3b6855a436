"""Stage ``report``: the run's HTML report (``keras-reid report``) as the last stage of a recipe."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from keras_reid import report as html_report  # the module, not its names: keras_reid.report
# imports stages.base, whose package imports this one, so its names may not exist yet here
from keras_reid.recipe import ref
from keras_reid.registry import register
from keras_reid.stages.base import Stage, StageContext

REPORT_NAME = "report.html"


class ReportConfig(BaseModel):
    """Parameters of the ``report`` stage."""

    model_config = ConfigDict(extra="forbid")

    stages: list[str] | None = ref(
        "stages", None, description="the stages whose outputs the report reads (it shows the "
        "whole run either way); null = every stage before it, so the report is made again "
        "whenever any of them runs again")
    queries: int = Field(6, ge=0, le=100, description="ranked lists shown per evaluated model "
                         "(from the evaluate stage's ranked_<model>.json)")
    top: int = Field(10, gt=0, le=50, description="gallery images shown per ranked list")


@register("stage", "report", config=ReportConfig)
class Report(Stage):
    """Write one self-contained HTML page about the run (metrics with the chance level, CMC
    curves, ranked lists, generator samples, generated-image quality, stage times, the recipe,
    provenance) to ``<run>/<stage>/report.html``; takes seconds."""

    @classmethod
    def check_config(cls, config: ReportConfig, recipe) -> tuple | None:
        """Fills ``stages`` (null) with every stage before this one, so that the report's identity
        covers all of them (a stage's inputs are the stages its config names)."""
        if config.stages is None:   # validation goes in recipe order: these are the ones before
            config.stages = list(recipe.stage_configs)
        return None

    def run(self, context: StageContext) -> dict:
        path = html_report.write_report(context.run_dir, context.stage_dir / REPORT_NAME,
                                        queries=self.config.queries, top=self.config.top,
                                        current_stage=context.stage_name, echo=context.echo)
        return {"report": str(path.relative_to(context.run_dir)), "bytes": path.stat().st_size}
