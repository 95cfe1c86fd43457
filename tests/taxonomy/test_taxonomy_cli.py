"""mseg-taxonomy: list, show, validate, export, summary, import-mseg; exit codes and stderr."""

import csv
import io

import pytest

from mseg_semantic.taxonomy import load_class_names
from mseg_semantic.tool.taxonomy import main

GOOD = "taxonomy\tmy-ds\nrole\ttrain\nid\tname\tuniversal\n0\tstreet\troad\n1\tblur\tunlabeled\n"
BAD = "taxonomy\tmy-ds\nrole\ttrain\nid\tname\tuniversal\n0\tstreet\traod\n"


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    assert "camvid-11" in out and "pascal-context-460" in out and "universal" in out
    code, out, _ = run(capsys, "list", "--role", "test")
    assert code == 0 and "camvid-11" in out and "bdd " not in out


def test_show_train_test_and_naive(capsys):
    code, out, _ = run(capsys, "show", "mapillary-public65")
    assert code == 0
    assert any(line.split()[:4] == ["21", "Motorcyclist", "128", "motorcyclist"] for line in out.splitlines())
    code, out, _ = run(capsys, "show", "camvid-11")
    assert code == 0 and "bicyclist, bicycle" in out
    code, out, _ = run(capsys, "show", "camvid-11", "--kind", "naive")
    assert code == 0 and "building" in out


def test_show_unknown_dataset_fails_on_stderr(capsys):
    code, out, err = run(capsys, "show", "camvid-12")
    assert code == 2 and out == ""
    assert "unknown taxonomy 'camvid-12'" in err and "did you mean" in err


def test_validate(capsys, tmp_path):
    good = tmp_path / "good.tsv"
    good.write_text(GOOD)
    bad = tmp_path / "bad.tsv"
    bad.write_text(BAD)
    code, out, _ = run(capsys, "validate", str(good))
    assert code == 0 and "0 error(s)" in out
    code, _, err = run(capsys, "validate", str(bad))
    assert code == 2 and f"{bad}:4: error" in err and "did you mean 'road'" in err
    code, out, _ = run(capsys, "--taxonomy-file", str(good), "show", "my-ds")
    assert code == 0 and "street" in out


def test_export_csv_and_markdown(capsys, tmp_path):
    target = tmp_path / "mapping.csv"
    code, _, _ = run(capsys, "export", "--format", "csv", "-o", str(target))
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert {"taxonomy": "ade20k-150", "role": "train", "class_id": "78", "class_name": "minibike",
            "model_id": "178", "model_class": "motorcycle"} in rows
    ade = [r for r in rows if r["taxonomy"] == "ade20k-150"]
    assert len(ade) == len(load_class_names("ade20k-150"))
    flower = [r for r in rows if r["taxonomy"] == "pascal-context-60" and r["class_name"] == "flower"]
    assert flower == [dict(flower[0], model_id="", model_class="")]
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temporary file
    code, out, _ = run(capsys, "export", "--format", "md")
    assert code == 0 and "## camvid-11 (test)" in out and "| 10 | Bicyclist | 127 | bicyclist |" in out
    code, out, _ = run(capsys, "export", "--format", "csv", "--kind", "naive")
    assert code == 0 and "ade20k-150,train,0,airplane,0,airplane" in out


def test_summary(capsys):
    code, out, _ = run(capsys, "summary")
    assert code == 0
    assert "universal classes: 194" in out and "316 logits" in out and "0 error(s)" in out


def test_import_mseg_layout(capsys, tmp_path):
    """A tiny mseg-api-shaped folder: master TSV (CRLF) + names files -> our files, which then validate."""
    root = tmp_path / "mseg-api-data"
    (root / "class_remapping_files").mkdir(parents=True)
    master = ["Parent Category\tmini-train\tuniversal\tWordNet 3.1 Synset\t"
              "Defn (Most of the meanings are derived from WordNet 3.1)\tModification of WordNet Node\tcamvid-11",
              "road\t{street, lane}\troad\troad.n.01\ta way\tno\tRoad",
              "vehicle\tauto\tcar\tcar.n.01\ta car\tno\tCar",
              "unlabeled\tblur\tunlabeled\t\t\t\t"]
    (root / "class_remapping_files" / "MSeg_master.tsv").write_bytes("\r\n".join(master).encode())
    for name, classes in {"mini-train": ["street", "lane", "auto", "blur"], "camvid-11": ["Road", "Car"]}.items():
        (root / "dataset_lists" / name).mkdir(parents=True)
        (root / "dataset_lists" / name / f"{name}_names.txt").write_bytes("\r\n".join(classes).encode())
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "import-mseg", str(root), "-o", str(out_dir))
    assert code == 0, err
    text = (out_dir / "mini-train.tsv").read_text()
    assert "0\tstreet\troad" in text and "1\tlane\troad" in text and "3\tblur\tunlabeled" in text
    assert "1\tCar\tcar" in (out_dir / "camvid-11.tsv").read_text()
    # mini-train maps to road/car, which MSeg's built-in universal taxonomy has
    code, _, err = run(capsys, "validate", str(out_dir / "mini-train.tsv"))
    assert code == 0, err
    # the imported universal taxonomy clashes with the built-in one by name
    code, _, err = run(capsys, "validate", str(out_dir / "universal.tsv"))
    assert code == 2 and "'universal' already exists (built in)" in err
