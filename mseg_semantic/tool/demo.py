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

from mseg_semantic.config import Config, ConfigError
from mseg_semantic.tool.cli import config_tool

__all__ = ["main", "run"]


def run(cfg: Config) -> list[Path]:
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
    written = run_demo(engine, space, settings, source, out_dir, batch_size=t.batch_size_val, progress=sys.stderr.isatty(),
                       confidence=t.save_confidence, probabilities=t.save_probabilities)
    for note in space.notes:
        print(f"{space.name}: {note}")
    print(f"{len(written)} files in {out_dir} (taxonomy {space.name})")
    return written


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
