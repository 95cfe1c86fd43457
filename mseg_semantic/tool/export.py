"""mseg-export: a trained checkpoint as ONNX and/or TorchScript.

    mseg-export --config config/test/default_config_360_ss.yaml model_path=output/run/model_final.pth \\
        export_format=both export_dynamic=true save_folder=exported/

Writes ``<save_folder>/<model stem>.onnx`` / ``.torchscript.pt`` (input: normalised float32 image
``N x 3 x H x W``, output: logits ``N x C x H x W``); the example / fixed size is ``test_h x test_w``. Each file
is checked against eager PyTorch (onnxruntime for ONNX) and the largest difference printed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mseg_semantic.config import Config
from mseg_semantic.tool.cli import config_tool

__all__ = ["main", "run"]

def run(cfg: Config) -> list:
    import torch

    from mseg_semantic.evaluation.export import check_onnx, check_torchscript, export_onnx, export_torchscript
    from mseg_semantic.evaluation.model_space import load_model_from_config
    from mseg_semantic.taxonomy import add_taxonomy_files

    t = cfg.TEST
    add_taxonomy_files(cfg.DATA.taxonomy_files)  # an oracle of a user dataset is recognised by its class count
    dataset = cfg.DATA.dataset if isinstance(cfg.DATA.dataset, str) else None
    loaded = load_model_from_config(cfg, torch.device("cpu"), oracle_dataset=dataset)
    stem = Path(t.model_path).stem
    out_dir = Path(t.save_folder) if t.save_folder else Path(t.model_path).parent
    # a different size than the example shows that dynamic axes really are dynamic
    check_shape = (2, 3, t.test_h + 8, t.test_w + 16) if t.export_dynamic else (1, 3, t.test_h, t.test_w)
    reports = []
    if t.export_format in ("onnx", "both"):
        report = export_onnx(loaded.model, out_dir / f"{stem}.onnx", t.test_h, t.test_w, dynamic=t.export_dynamic, opset=t.export_opset, dynamo=t.export_dynamo)
        report.max_abs_diff = check_onnx(loaded.model, report.path, check_shape)
        reports.append(report)
    if t.export_format in ("torchscript", "both"):
        report = export_torchscript(loaded.model, out_dir / f"{stem}.torchscript.pt", t.test_h, t.test_w)
        report.max_abs_diff = check_torchscript(loaded.model, report.path, check_shape)
        reports.append(report)
    for r in reports:
        opset = f", opset {r.opset}" if r.opset is not None else ""
        print(f"{r.format}: {r.path} ({r.exporter}{opset}, input {r.input_shape}, {loaded.num_classes} classes in the {loaded.model_taxonomy} taxonomy); "
              f"max |exported - eager| on {check_shape}: {r.max_abs_diff:.3g}")
    return reports


def main(argv: list[str] | None = None) -> int:
    return config_tool(
        "mseg-export",
        "Export a checkpoint to ONNX and/or TorchScript.",
        "config/test/default_config_360_ss.yaml (test_h/test_w give the example size)",
        "key=value: model_path=... [export_format=onnx|torchscript|both export_dynamic=true export_opset=17 save_folder=DIR]",
        run,
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
