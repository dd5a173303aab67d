"""`python -m runtree_pipeline +sweep=NAME key=value ...`: Hydra composes the config, we plan, run and report.

User errors are one line each on stderr with a non-zero exit (2: bad config or unknown `resume`, 3: tracking store
unusable, 4: a result could not be recorded, 130: interrupted, 1: a stage produced no result); bugs keep their
traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .errors import ConfigErrors, Interrupted
from .plan import build_plan

log = logging.getLogger("runtree_pipeline")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def _fail(code: int, message: str) -> None:
    for line in message.splitlines():
        print(f"runtree: error: {line}", file=sys.stderr)
    sys.stderr.flush()
    sys.exit(code)


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    sweep_name = hydra_cfg.runtime.choices.get("sweep") or "runtree"
    try:
        plan = build_plan(cfg, default_experiment=sweep_name)
    except ConfigErrors as e:
        _fail(2, str(e))
    if cfg.get("dry_run"):
        print(plan.describe())
        return

    from hydra.utils import instantiate

    from .api import run_plan
    from .progress import make_progress
    from .provenance import cli_command
    from .summary import render, write_json
    from .tracking import TrackingFailed, TrackingUnavailable, UnknownPipeline

    executor = instantiate(cfg.executor) if cfg.get("executor") else None
    try:
        result = run_plan(
            plan,
            executor=executor,
            progress=make_progress(bool(cfg.get("progress", True))),
            command=cli_command(sys.argv, list(hydra_cfg.overrides.task)),
            plots=bool(cfg.get("plots", True)),
        )
    except TrackingUnavailable as e:
        _fail(3, str(e))
    except ConfigErrors as e:
        _fail(2, str(e))
    except UnknownPipeline as e:
        _fail(2, str(e))
    except TrackingFailed as e:
        _fail(4, str(e))
    except Interrupted as e:
        _fail(130, str(e))
    where = f"experiment '{result.experiment}' in {result.tracking_uri}"
    if not result.tracking_uri.startswith(("http://", "https://")):
        where += f" — run `mlflow ui --backend-store-uri {result.tracking_uri}` and open that experiment"
    print(render(result, plan, where=where))
    summary = write_json(result, Path(hydra_cfg.runtime.output_dir) / "summary.json")
    log.info("summary written to %s", summary)
    if not result.ok:
        failed = [f"{n}: {s.reason}" for n, s in result.stages.items() if s.status != "FINISHED"]
        _fail(1, "pipeline did not complete: " + "; ".join(failed))
