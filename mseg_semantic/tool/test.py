"""mseg-test: evaluate a checkpoint on one dataset, or run MSeg's zero-shot benchmark.

    mseg-test model_path=mseg-3m-480p dataset=camvid-11     # a released model by name, the default config (360 ss)
    python -m mseg_semantic.tool.test --config config/test/default_config_360_ss.yaml \\
        model_path=mseg-3m.pth dataset=camvid-11 [base_size=720 scales=[0.5,1.0] save_predictions=true]
    python -m mseg_semantic.tool.test --config config/test/default_config_1080_ss.yaml \\
        model_path=mseg-3m.pth benchmark=zero_shot

The run itself (outputs, the zero-shot table, ranks) is :mod:`mseg_semantic.evaluation.run`.
"""

from __future__ import annotations

import sys

from mseg_semantic.config import DEFAULT_INFERENCE_CONFIG, Config
from mseg_semantic.tool.cli import config_tool, inference_plan

__all__ = ["main", "run"]


def run(cfg: Config) -> dict:
    from mseg_semantic.evaluation.run import run_evaluation

    return run_evaluation(cfg)


def main(argv: list[str] | None = None) -> int:
    return config_tool(
        "mseg-test",
        "Evaluate a segmentation checkpoint on one dataset (dataset=NAME) or run the zero-shot benchmark (benchmark=zero_shot).",
        "default_config_720_ss or a file",
        "key=value overrides, e.g. model_path=m.pth dataset=camvid-11 base_size=720",
        run,
        argv,
        kind="test",
        default_config=DEFAULT_INFERENCE_CONFIG,
        describe=inference_plan,
    )


if __name__ == "__main__":
    sys.exit(main())
