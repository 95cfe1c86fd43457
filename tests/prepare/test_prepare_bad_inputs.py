"""mseg-prepare refusals: a cut or random --records file or folder, a missing data root, a --root that is a file.
Each is exit 2 with one line naming the file or the option."""

from __future__ import annotations

import gzip
import os

import pytest

from mseg_semantic.prepare.records import HEADER
from mseg_semantic.tool.prepare import main


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mseg-prepare: error: "), err
    return lines[0]


def _compiled(lines: list[str]) -> bytes:
    return gzip.compress(("\n".join(["\t".join(HEADER), *lines]) + "\n").encode("utf-8"), mtime=0)


GOOD = _compiled(["train\tperson\trider\tlist.txt\t000000000139_1.png"] * 200)


@pytest.mark.parametrize("content,expected", [
    (GOOD[: len(GOOD) // 2], "coco.tsv.gz: not a complete gzip file (EOFError"),
    (GOOD[:-3], "coco.tsv.gz: not a complete gzip file"),
    (os.urandom(400), "coco.tsv.gz: not a complete gzip file (BadGzipFile"),
    (gzip.compress(b"\xff\xfe not text\n"), "coco.tsv.gz:1: not UTF-8 text (byte 0xff at offset 0)"),
], ids=["cut in the middle", "trailer cut", "random bytes", "not text inside"])
def test_a_damaged_compiled_records_file_is_one_line(tmp_path, capsys, content, expected):
    records = tmp_path / "records"
    records.mkdir()
    (records / "coco.tsv.gz").write_bytes(content)
    assert main(["relabel", "coco", "--root", str(tmp_path / "data"), "--records", str(records), "-q", "--no-progress"]) == 2
    assert expected in _one_error_line(capsys.readouterr().err)


def test_a_reference_records_table_that_is_not_text_or_a_records_path_that_is_a_file_is_one_line(tmp_path, capsys):
    records = tmp_path / "records"
    records.mkdir()
    (records / "relabeling_update_records.tsv").write_bytes(os.urandom(300) + b"\xff")
    assert main(["relabel", "coco", "--root", str(tmp_path / "data"), "--records", str(records), "-q"]) == 2
    assert "relabeling_update_records.tsv:" in _one_error_line(capsys.readouterr().err)
    a_file = tmp_path / "records.tsv.gz"
    a_file.write_bytes(GOOD)
    assert main(["relabel", "coco", "--root", str(tmp_path / "data"), "--records", str(a_file), "-q"]) == 2
    assert f"--records {a_file}: is a file; give a directory" in _one_error_line(capsys.readouterr().err)


def test_no_data_root_names_the_option_and_a_root_that_is_a_file_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MSEG_DATA_ROOT", raising=False)
    assert main(["relabel", "coco", "-q"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "no data root: pass --root DIR or set the MSEG_DATA_ROOT environment variable" in line
    assert "DATA.data_root" not in line
    a_file = tmp_path / "root"
    a_file.write_text("x")
    for argv in (["list", "--root", str(a_file)], ["extract", "camvid", "--root", str(a_file)]):
        assert main(argv) == 2
        assert f"--root {a_file}: is a file, not a directory" in _one_error_line(capsys.readouterr().err)
    monkeypatch.setenv("MSEG_DATA_ROOT", str(a_file))
    assert main(["list"]) == 2
    assert f"MSEG_DATA_ROOT={a_file}: is a file" in _one_error_line(capsys.readouterr().err)
