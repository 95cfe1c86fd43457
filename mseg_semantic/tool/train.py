"""``mseg-train --config FILE [key=value ...]``: train a segmentation model from a YAML config.

Single process: ``python -m mseg_semantic.tool.train --config config/train/demo.yaml``.
Several GPUs / nodes: ``torchrun --nproc_per_node 8 -m mseg_semantic.tool.train --config ...``.

The run itself (plan, stages, resume, output layout) is :mod:`mseg_semantic.training.run`.
Exit codes: 0 done, 2 config or input error, 3 non-finite loss.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from mseg_semantic.config import ConfigError, load_config
from mseg_semantic.model import CheckpointMismatchError
from mseg_semantic.model.weights import WeightsError
from mseg_semantic.training.distributed import init_distributed, shutdown_distributed
from mseg_semantic.training.loop import NonFiniteLossError
from mseg_semantic.training.run import plan_run, run_training

log = logging.getLogger("mseg_semantic.training")

EXIT_CONFIG_ERROR = 2
EXIT_NON_FINITE = 3


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mseg-train",
        description="Train an MSeg segmentation model from a YAML config. Override any key as key=value "
        "(SECTION.key or a bare key when unique), e.g. max_iters=1000 batch_size=16 output_dir=output/run1.",
    )
    parser.add_argument("--config", required=True, help="YAML config, e.g. config/train/1080_release/mseg-relabeled-1m.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        plan_run(cfg, int(os.environ.get("WORLD_SIZE", "1")))  # fail on a bad config before any process group
    except ConfigError as exc:
        print(f"mseg-train: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    info = init_distributed(cfg.Distributed.dist_backend)
    try:
        final = run_training(cfg, info)
        if info.is_main:
            print(f"final model: {final}")
        return 0
    except NonFiniteLossError as exc:
        log.error(str(exc))
        return EXIT_NON_FINITE
    except (ConfigError, FileNotFoundError, CheckpointMismatchError, WeightsError) as exc:
        print(f"mseg-train: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    finally:
        shutdown_distributed(info)


if __name__ == "__main__":
    sys.exit(main())
