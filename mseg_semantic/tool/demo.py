"""mseg-demo: segment an image, a folder of images or a video; write masks, overlays and a legend.

    mseg-demo --config config/test/default_config_360_ms.yaml model_path=mseg-3m.pth input=street.jpg
    mseg-demo --config config/test/default_config_360_ss.yaml model_path=m.pth input=clip.mp4 \\
        output_taxonomy=cityscapes-19 save_folder=out/ TEST.batch_size_val=4 test_device=cpu

``output_taxonomy`` unset: the model's own classes (universal, naive, or an oracle's dataset); any test or
training taxonomy (cityscapes-19, ade20k-150, camvid-11, ...) or one of ``DATA.taxonomy_files``: the
probabilities summed into it (rules: mseg_semantic/evaluation/model_space.py). ``save_confidence`` /
``save_probabilities`` add the confidence maps and the class probabilities of each image.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mseg_semantic.config import Config
from mseg_semantic.tool.cli import config_tool

__all__ = ["main", "run"]


def run(cfg: Config) -> list[Path]:
    from mseg_semantic.evaluation.run import run_demo_from_config

    return run_demo_from_config(cfg)


def main(argv: list[str] | None = None) -> int:
    return config_tool(
        "mseg-demo",
        "Segment an image, a folder of images, or a video.",
        "config/test/default_config_360_ms.yaml",
        "key=value overrides: model_path=... input=... [output_taxonomy=cityscapes-19 save_confidence=true save_folder=DIR]",
        run,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
