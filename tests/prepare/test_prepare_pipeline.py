"""verify, and `mseg-prepare all` end to end against a local server: markers, resume after a failure, dry run."""

from __future__ import annotations

import dataclasses
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from mseg_semantic.prepare.specs import SPECS
from mseg_semantic.prepare.verify import verify_dataset
from mseg_semantic.tool.prepare import main

from prepare_helpers import write_png

BUILDING, TREE, VOID, BAD = (128, 0, 0), (128, 128, 0), (0, 0, 0), (1, 2, 3)
STEMS = ("0016E5_07959", "0001TP_006690", "Seq05VD_f00000")  # one val, one train, one test image


def png_bytes(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_bytes(files: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def camvid_server(http_server, monkeypatch):
    label = np.array([[BUILDING, TREE], [VOID, TREE]], np.uint8)
    http_server.files["/stills.zip"] = zip_bytes({f"701_StillsRaw_full/{s}.png": png_bytes(np.zeros((2, 2, 3), np.uint8)) for s in STEMS})
    http_server.files["/labels.zip"] = zip_bytes({f"{s}_L.png": png_bytes(label) for s in STEMS})
    spec = SPECS["camvid"]
    urls = {"701_StillsRaw_full.zip": f"{http_server.base}/stills.zip", "LabeledApproved_full.zip": f"{http_server.base}/labels.zip"}
    archives = tuple(dataclasses.replace(a, url=urls[a.filename]) for a in spec.archives)
    monkeypatch.setitem(SPECS, "camvid", dataclasses.replace(spec, archives=archives, splits={"train": 1, "val": 1, "test": 1}))
    return http_server


def test_all_runs_the_chain_then_resumes_from_markers(camvid_server, tmp_path, capsys):
    root = str(tmp_path)
    broken = tmp_path / "Camvid" / "Labels32-RGB" / "0001TP_006690_L.png"
    assert main(["all", "--datasets", "camvid", "--root", root, "--no-progress", "--workers", "1"]) == 0
    done = sorted(p.name for p in (tmp_path / ".mseg_prepare" / "done").iterdir())
    assert done == ["camvid.download", "camvid.extract", "camvid.remap", "camvid.verify"]
    lines = (tmp_path / "dataset_lists/camvid-11/list/test.txt").read_text().split()
    assert lines == ["701_StillsRaw_full/Seq05VD_f00000.png", "semseg11/Seq05VD_f00000_L.png"]
    requests = len(camvid_server.requests)
    capsys.readouterr()

    # second run: every step is skipped, nothing is fetched
    assert main(["all", "--datasets", "camvid", "--root", root, "--no-progress"]) == 0
    assert len(camvid_server.requests) == requests
    assert capsys.readouterr().err.count("already done") == 4

    # interrupted chain: redo from remap with a label that has a colour CamVid lacks
    (tmp_path / ".mseg_prepare/done/camvid.remap").unlink()
    (tmp_path / ".mseg_prepare/done/camvid.verify").unlink()
    write_png(broken, np.array([[BAD, TREE], [TREE, TREE]], np.uint8))
    (tmp_path / "Camvid/semseg11/0001TP_006690_L.png").unlink()
    assert main(["all", "--datasets", "camvid", "--root", root, "--no-progress", "--workers", "1"]) == 1
    out = capsys.readouterr()
    assert "failed at remap" in out.out and "1 2 3" in (tmp_path / ".mseg_prepare/reports/remap_camvid.json").read_text()
    assert not (tmp_path / ".mseg_prepare/done/camvid.remap").exists()
    write_png(broken, np.array([[BUILDING, TREE], [TREE, TREE]], np.uint8))  # fixed by hand: the chain goes on where it stopped
    assert main(["all", "--datasets", "camvid", "--root", root, "--no-progress", "--workers", "1"]) == 0
    assert len(camvid_server.requests) == requests
    assert (tmp_path / ".mseg_prepare/done/camvid.verify").exists()


def test_dry_run_prints_the_plan_and_touches_nothing(tmp_path, capsys):
    assert main(["all", "--datasets", "camvid,bdd", "--root", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "camvid" in out and "download:todo -> extract:todo -> remap:todo -> verify:todo" in out
    assert "relabel:todo" in out  # bdd is a training set
    assert "bdd100k_seg.zip" in out and "manual" in out
    assert not (tmp_path / ".mseg_prepare").exists()


def test_manual_dataset_stops_its_chain_only(camvid_server, tmp_path, capsys):
    assert main(["all", "--datasets", "bdd,camvid", "--root", str(tmp_path), "--no-progress", "--workers", "1"]) == 1
    captured = capsys.readouterr()
    assert "bdd100k_seg.zip" in captured.err
    assert "manual step needed before download" in captured.out
    assert (tmp_path / ".mseg_prepare/done/camvid.verify").exists()


def test_verify_reports_counts_missing_files_and_out_of_range_ids(camvid_server, tmp_path):
    assert main(["all", "--datasets", "camvid", "--root", str(tmp_path), "--no-progress", "--workers", "1"]) == 0
    assert verify_dataset("camvid", tmp_path, workers=1, progress=False).ok
    write_png(tmp_path / "Camvid/semseg11/0016E5_07959_L.png", np.array([[0, 11], [255, 3]], np.uint8))
    (tmp_path / "Camvid/701_StillsRaw_full/Seq05VD_f00000.png").unlink()
    with open(tmp_path / "dataset_lists/camvid-11/list/train.txt", "a") as handle:
        handle.write("701_StillsRaw_full/0001TP_006690.png semseg11/0001TP_006690_L.png\n")
    result = verify_dataset("camvid", tmp_path, workers=1, progress=False)
    text = "\n".join(result.problems)
    assert "camvid-11/train: 2 images, expected 1" in text
    assert "Seq05VD_f00000.png (line 1) does not exist" in text
    assert "ids [11] outside 0..10" in text
    assert result.counts["camvid-11"] == {"train": 2, "val": 1, "test": 1}


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    assert main(["remap", "cityscape", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown dataset 'cityscape' (did you mean 'cityscapes'?)" in err
    monkeypatch.delenv("MSEG_DATA_ROOT", raising=False)
    assert main(["verify", "camvid"]) == 2
    assert "MSEG_DATA_ROOT" in capsys.readouterr().err
    assert main(["remap", "camvid", "--root", str(tmp_path)]) == 2  # nothing there: download, or --source (never "extract")
    assert "--source PATH" in capsys.readouterr().err
    assert main(["list"]) == 0 and "wilddash" in capsys.readouterr().out


def test_every_dataset_has_a_thin_download_script():
    from pathlib import Path

    scripts = Path(__file__).resolve().parents[2] / "download_scripts"
    for key in SPECS:
        text = (scripts / f"prepare_{key}.sh").read_text()
        assert f'mseg-prepare all --datasets {key} --root "${{MSEG_DATA_ROOT:?set MSEG_DATA_ROOT}}"' in text
        assert (scripts / f"prepare_{key}.sh").stat().st_mode & 0o111
