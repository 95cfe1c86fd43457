"""``mseg-train --config FILE [key=value ...]``: train a segmentation model from a YAML config.

Single process: ``python -m mseg_semantic.tool.train --config config/train/demo.yaml``.
Several GPUs / nodes: ``torchrun --nproc_per_node 8 -m mseg_semantic.tool.train --config ...``.

The run itself (resolution, stages, resume, output layout) is :mod:`mseg_semantic.training.run`.
Exit codes: 0 done, 2 bad input (config, data, weights), 3 non-finite loss, 75 stopped by SIGTERM/SIGINT after a
checkpoint (run it again to resume).
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from mseg_semantic.config import Config
from mseg_semantic.errors import EXIT_BAD_INPUT
from mseg_semantic.tool.cli import config_tool

EXIT_CONFIG_ERROR = EXIT_BAD_INPUT


def train(cfg: Config) -> int:
    from mseg_semantic.distributed import init_distributed, shutdown_distributed
    from mseg_semantic.training.run import plan_run, run_training

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    plan = plan_run(cfg, world_size, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))  # a bad config fails before any process group
    info = init_distributed(cfg.Distributed.dist_backend)
    finished = False
    try:
        final = run_training(cfg, info, plan)
        finished = True
        if info.is_main:
            print(f"final model: {final}")
        return 0
    finally:
        shutdown_distributed(info, finished=finished)


def plan_summary(cfg: Config) -> list[str]:
    """``--print-config``: the run resolved as ``mseg-train`` would (every refusal), in a few lines."""
    from mseg_semantic.training.report import active_loggers, check_loggers
    from mseg_semantic.training.run import default_output_dir, plan_run

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    plan = plan_run(cfg, world_size, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    output_dir = cfg.TRAIN.output_dir or default_output_dir(cfg.TRAIN.exp_id)
    loggers = active_loggers(cfg.TRAIN)
    check_loggers(loggers)
    lines = [f"plan: {world_size} process(es), output_dir {output_dir}, loggers {', '.join(loggers) or '(none)'}"]
    for stage, setup in plan.items():
        weights = cfg.TRAIN.weights if stage is None else None
        lines.append(f"{'stage ' + stage if stage else 'run'}: datasets {', '.join(setup.datasets)}; {setup.model_taxonomy} taxonomy "
                     f"({setup.converter.num_classes} classes); {setup.max_iters} iterations; batch {setup.batch_size} "
                     f"({setup.batch_per_rank} per process); method {setup.method}, loss {setup.loss}, {setup.precision}"
                     f"{'; weights ' + weights if weights else ''}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    return config_tool(
        "mseg-train",
        "Train an MSeg segmentation model from a YAML config. Override any key as key=value (SECTION.key or a bare key "
        "when unique), e.g. max_iters=1000 batch_size=16 output_dir=output/run1.",
        "config/train/1080_release/mseg-relabeled-1m.yaml or demo",
        "key=value overrides",
        train,
        argv,
        kind="train",
        describe=plan_summary,
    )


if __name__ == "__main__":
    sys.exit(main())
