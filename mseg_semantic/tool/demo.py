"""mseg-demo: segment an image, a folder of images or a video; write masks, overlays and a legend.

    mseg-demo --config config/test/default_config_360_ms.yaml model_path=mseg-3m.pth input=street.jpg
    mseg-demo --config config/test/default_config_360_ss.yaml model_path=m.pth input=clip.mp4 \\
        output_taxonomy=cityscapes-19 save_folder=out/ TEST.batch_size_val=4 test_device=cpu

``output_taxonomy`` unset: the model's own classes (universal, naive, or an oracle's dataset); any test or
training taxonomy (cityscapes-19, ade20k-150, camvid-11, ...) or one of ``DATA.taxonomy_files``: the
probabilities summed into it (rules: mseg_semantic/evaluation/model_space.py). ``save_confidence`` /
``save_probabilities`` add the confidence maps and the class probabilities of each image.

Exit codes: 0 done; 1 some images of a folder could not be read (each named on stderr; the others are segmented);
2 bad input (the config, the model, an input that is not an image, folder or video, a single unreadable image).
"""

from __future__ import annotations

import sys
from pathlib import Path

from mseg_semantic.config import Config, ConfigError
from mseg_semantic.errors import EXIT_CHECKS_FAILED
from mseg_semantic.tool.cli import config_tool

__all__ = ["main", "run"]


def run(cfg: Config, unreadable: list[str] | None = None) -> list[Path]:
    """The demo of ``cfg``; returns the files written. ``unreadable``: in a folder, images that cannot be read are
    reported on stderr (one line each), appended to it and skipped, instead of stopping the run."""
    from mseg_semantic.evaluation.demo import run_demo
    from mseg_semantic.evaluation.inference import InferenceModel, InferenceSettings
    from mseg_semantic.evaluation.model_space import display_space, load_model_from_config, pick_device
    from mseg_semantic.taxonomy import add_taxonomy_files

    t = cfg.TEST
    source = t.input
    if not source:
        raise ConfigError("no demo input: pass input=IMAGE | FOLDER | VIDEO")
    add_taxonomy_files(cfg.DATA.taxonomy_files)
    device = pick_device(t.test_device)
    dataset = cfg.DATA.dataset if isinstance(cfg.DATA.dataset, str) else None
    settings = InferenceSettings.from_config(t)
    loaded = load_model_from_config(cfg, device, oracle_dataset=dataset)
    space = display_space(loaded, t.output_taxonomy, t.uncovered_classes)
    engine = InferenceModel(loaded.model, settings, inplace=True)  # the loaded model is ours: no copy
    if t.save_folder:
        out_dir = Path(t.save_folder)
    else:
        model = Path(t.model_path)
        out_dir = model.parent / f"{model.stem}_demo"
    def report(error: Exception) -> None:
        print(f"mseg-demo: skipped {error}", file=sys.stderr)
        unreadable.append(str(error))

    written = run_demo(engine, space, settings, source, out_dir, batch_size=t.batch_size_val, progress=sys.stderr.isatty(),
                       confidence=t.save_confidence, probabilities=t.save_probabilities,
                       on_unreadable=report if unreadable is not None else None)
    for note in space.notes:
        print(f"{space.name}: {note}")
    print(f"{len(written)} files in {out_dir} (taxonomy {space.name})")
    return written


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
        "config/test/default_config_360_ms.yaml",
        "key=value overrides: model_path=... input=... [output_taxonomy=cityscapes-19 save_confidence=true save_folder=DIR]",
        _demo,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
