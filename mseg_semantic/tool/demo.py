"""mseg-demo: segment an image, a folder of images or a video; write masks, overlays and a legend.

    mseg-demo model_path=mseg-3m-480p input=street.jpg      # a released model by name, the default config
    mseg-demo --config default_config_360_ms model_path=mseg-3m.pth input=street.jpg
    mseg-demo --config config/test/default_config_360_ss.yaml model_path=m.pth input=clip.mp4 \\
        output_taxonomy=cityscapes-19 save_folder=out/ TEST.batch_size_val=4 test_device=cpu

``output_taxonomy`` unset: the model's own classes (universal, naive, or an oracle's dataset); any test or
training taxonomy (cityscapes-19, ade20k-150, camvid-11, ...) or one of ``DATA.taxonomy_files``: the
probabilities summed into it (rules: mseg_semantic/evaluation/model_space.py). ``save_confidence`` /
``save_probabilities`` add the confidence maps and the class probabilities of each image.

Without ``--config`` the packaged ``test/default_config_360_ss`` is read (``--list-configs``, ``--print-config``).

Exit codes: 0 done; 1 some images of a folder could not be read (each named on stderr; the others are segmented),
or a released model could not be downloaded;
2 bad input (the config, the model, an input that is not an image, folder or video, a single unreadable image).
"""

from __future__ import annotations

import sys
from pathlib import Path

from mseg_semantic.config import DEFAULT_INFERENCE_CONFIG, Config
from mseg_semantic.errors import EXIT_CHECKS_FAILED
from mseg_semantic.tool.cli import config_tool, inference_plan

__all__ = ["main", "run"]


def run(cfg: Config, unreadable: list[str] | None = None) -> list[Path]:
    """The demo of ``cfg``; returns the files written. ``unreadable``: in a folder, images that cannot be read are
    reported on stderr (one line each), appended to it and skipped, instead of stopping the run."""
    from mseg_semantic.evaluation.run import run_demo_from_config

    return run_demo_from_config(cfg, unreadable)


def _demo(cfg: Config) -> int:
    unreadable: list[str] = []
    run(cfg, unreadable)
    if unreadable:
        print(f"mseg-demo: {len(unreadable)} image(s) could not be read (listed above); the others were segmented",
              file=sys.stderr)
        return EXIT_CHECKS_FAILED
    return 0


def main(argv: list[str] | None = None) -> int:
    return config_tool(
        "mseg-demo",
        "Segment an image, a folder of images, or a video.",
        "default_config_360_ms (multi-scale) or a file",
        "key=value overrides: model_path=... input=... [output_taxonomy=cityscapes-19 save_confidence=true save_folder=DIR]",
        _demo,
        argv,
        kind="test",
        default_config=DEFAULT_INFERENCE_CONFIG,
        describe=inference_plan,
    )


if __name__ == "__main__":
    sys.exit(main())
