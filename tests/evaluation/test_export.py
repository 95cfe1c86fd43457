import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from eval_helpers import TinySegNet
from mseg_semantic.evaluation.export import check_torchscript, export_onnx, export_torchscript
from mseg_semantic.model import build_model
from mseg_semantic.tool import export as mseg_export

CONFIG = Path(__file__).resolve().parents[2] / "config" / "test" / "default_config_360_ss.yaml"


def tiny_hrnet(num_classes=5):
    torch.manual_seed(0)
    model = build_model("hrnet_tiny", num_classes).eval()
    with torch.no_grad():  # weights far from init so the logits are O(1) and a wrong graph shows
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def ort_run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x.numpy()})[0]


def test_onnx_dynamic_hrnet_matches_eager_at_another_size(tmp_path):
    model = tiny_hrnet()
    report = export_onnx(model, tmp_path / "m.onnx", 48, 64, dynamic=True, dynamo=False)
    assert report.opset is not None and report.input_shape == (-1, 3, -1, -1)
    x = torch.randn(2, 3, 40, 72)
    with torch.no_grad():
        eager = model(x).numpy()
    assert np.abs(eager).mean() > 0.1
    out = ort_run(report.path, x)
    assert out.shape == (2, 5, 40, 72)
    np.testing.assert_allclose(out, eager, atol=1e-4, rtol=1e-4)
    assert oct(os.stat(report.path).st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_onnx_fixed_size_rejects_another_size(tmp_path):
    model = TinySegNet(num_classes=5).eval()
    report = export_onnx(model, tmp_path / "f.onnx", 32, 48, dynamic=False, dynamo=False)
    dims = [d.dim_value for d in onnx.load(str(report.path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 32, 48]
    np.testing.assert_allclose(ort_run(report.path, torch.ones(1, 3, 32, 48)), model(torch.ones(1, 3, 32, 48)).detach().numpy(), atol=1e-4, rtol=1e-4)
    with pytest.raises(Exception):
        ort_run(report.path, torch.ones(1, 3, 40, 48))


def test_dynamo_exporter_on_a_small_conv_net(tmp_path):
    model = TinySegNet(num_classes=3).eval()
    report = export_onnx(model, tmp_path / "d.onnx", 32, 32, dynamic=True, dynamo=True)
    x = torch.randn(1, 3, 24, 40)
    np.testing.assert_allclose(ort_run(report.path, x), model(x).detach().numpy(), atol=1e-5, rtol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.onnx"]  # one self-contained file, no temporaries


def test_torchscript_trace_runs_at_other_sizes(tmp_path):
    model = TinySegNet(num_classes=4).eval()
    report = export_torchscript(model, tmp_path / "m.pt", 32, 32)
    assert check_torchscript(model, report.path, (1, 3, 32, 32)) < 1e-5
    assert check_torchscript(model, report.path, (2, 3, 40, 56)) < 1e-5


def test_failed_export_leaves_no_file(tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("cannot trace this")

    with pytest.raises(RuntimeError, match="cannot trace"):
        export_torchscript(Broken(), tmp_path / "b.pt", 8, 8)
    assert list(tmp_path.iterdir()) == []


def test_mseg_export_tool_writes_both_formats(tmp_path, capsys):
    model = tiny_hrnet(194)
    ckpt = tmp_path / "model_final.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"model": "hrnet_tiny", "num_classes": 194, "taxonomy": "universal"}}, ckpt)
    args = ["--config", str(CONFIG), f"model_path={ckpt}", "test_h=32", "test_w=48", "export_format=both", "export_dynamic=true", "export_dynamo=false", f"save_folder={tmp_path / 'x'}"]
    assert mseg_export.main(args) == 0
    assert (tmp_path / "x" / "model_final.onnx").is_file() and (tmp_path / "x" / "model_final.torchscript.pt").is_file()
    printed = capsys.readouterr().out
    assert "onnx:" in printed and "torchscript:" in printed and "(2, 3, 40, 64)" in printed
    assert not list((tmp_path / "x").glob(".*"))
    assert mseg_export.main([a if a != "export_format=both" else "export_format=tflite" for a in args]) == 2
    assert "tflite" in capsys.readouterr().err
