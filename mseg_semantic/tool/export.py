"""mseg-export: a trained checkpoint as ONNX and/or TorchScript.

    mseg-export --config config/test/default_config_360_ss.yaml model_path=output/run/model_final.pth \\
        export_format=both export_dynamic=true save_folder=exported/

Writes ``<save_folder>/<model stem>.onnx`` / ``.torchscript.pt`` (input: normalised float32 image
``N x 3 x H x W``, output: logits ``N x C x H x W``); the example / fixed size is ``test_h x test_w``. Each file
is checked against eager PyTorch (onnxruntime for ONNX) and the largest difference printed.
"""

from __future__ import annotations

import sys

from mseg_semantic.config import DEFAULT_INFERENCE_CONFIG, Config
from mseg_semantic.tool.cli import config_tool, inference_plan

__all__ = ["main", "run"]

def run(cfg: Config) -> list:
    from mseg_semantic.evaluation.run import run_export_from_config

    return run_export_from_config(cfg)


def main(argv: list[str] | None = None) -> int:
    return config_tool(
        "mseg-export",
        "Export a checkpoint to ONNX and/or TorchScript.",
        "default_config_360_ss or a file (test_h/test_w give the example size)",
        "key=value: model_path=... [export_format=onnx|torchscript|both export_dynamic=true export_opset=17 save_folder=DIR]",
        run,
        argv,
        kind="test",
        default_config=DEFAULT_INFERENCE_CONFIG,
        describe=inference_plan,
    )


if __name__ == "__main__":
    sys.exit(main())
