"""User taxonomy files: adding a dataset, adding a whole taxonomy, and the validation report's errors."""

import numpy as np
import pytest
import torch

from mseg_semantic.taxonomy import (
    Catalog,
    TaxonomyConverter,
    TaxonomyFileError,
    load_class_names,
    validate_file,
)
from mseg_semantic.taxonomy.files import palette

DATASET_FILE = """\
# a dataset labelled in its own 4 classes, mapped onto MSeg's universal taxonomy
taxonomy\tmy-roads-4
role\ttrain
id\tname\tuniversal
0\tasphalt\troad
1\tauto\tcar
2\ttree\tvegetation
3\tblur\tunlabeled
"""

WHOLE_TAXONOMY_FILE = """\
taxonomy\ttiny-universal
role\tuniversal
id\tname\tcolor
0\troad\t10 10 10
1\tcar\t20 20 20
2\tperson\t30 30 30

taxonomy\ttiny-a
role\ttrain
maps_to\ttiny-universal
id\tname\tuniversal
0\tstreet\troad
1\tvehicle\tcar
2\tpedestrian\tperson

taxonomy\ttiny-test
role\ttest
maps_to\ttiny-universal
id\tname\tuniversal
0\tground\troad
1\tmovers\tcar, person
"""


def write(tmp_path, text, name="user.tsv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_add_a_dataset_and_train_with_it(tmp_path):
    catalog = Catalog([write(tmp_path, DATASET_FILE)])
    report = catalog.warnings
    assert report.ok
    assert catalog.class_names("my-roads-4") == ["asphalt", "auto", "tree", "blur"]
    np.testing.assert_array_equal(catalog.class_colors("my-roads-4"), palette(4))
    conv = TaxonomyConverter(train_datasets=["bdd", "my-roads-4"], test_datasets=["camvid-11"], catalog=catalog)
    label = torch.tensor([[0, 1, 2, 3, 255]], dtype=torch.uint8)
    expected = [conv.uname2uid[n] for n in ("road", "car", "vegetation")] + [255, 255]
    assert conv.transform_label(label, "my-roads-4").tolist() == [expected]
    with pytest.raises(ValueError, match="my-roads-4.*4"):
        conv.transform_label(np.array([[4]], dtype=np.uint8), "my-roads-4")


def test_add_a_whole_taxonomy(tmp_path):
    catalog = Catalog([write(tmp_path, WHOLE_TAXONOMY_FILE)])
    assert catalog.warnings.ok
    conv = TaxonomyConverter(["tiny-a"], ["tiny-test"], universal="tiny-universal", catalog=catalog)
    assert conv.num_uclasses == 3 and conv.class_names == ["road", "car", "person"]
    assert conv.transform_label(np.array([2, 0, 255], dtype=np.uint8), "tiny-a").tolist() == [2, 0, 255]
    logits = torch.randn(1, 3, 2, 2)
    probs = torch.softmax(logits, 1)
    out = conv.transform_predictions_test(logits, "tiny-test")
    torch.testing.assert_close(out[:, 1], probs[:, 1] + probs[:, 2])
    assert tuple(catalog.class_colors("tiny-universal")[2]) == (30, 30, 30)
    # a built-in dataset maps to MSeg's universal taxonomy, not to this one
    with pytest.raises(ValueError, match="maps to 'universal'"):
        TaxonomyConverter(["bdd"], [], universal="tiny-universal", catalog=catalog)


def test_validation_lists_every_problem_with_lines_and_suggestions(tmp_path):
    text = """\
taxonomy\tbad-train
role\ttrain
id\tname\tuniversal\tcolor
0\tasphalt\traod
1\tcar\tcar, truck, car
2\tcar\tcar
3\ttree\t\t300 0 0
5\tsky\tsky

taxonomy\tbad-test
role\ttest
id\tname\tuniversal
0\tvehicle\tcar, bus
1\tbig\tbus
2\tnothing\t
"""
    path = write(tmp_path, text)
    _, report = validate_file(path)

    def reported(line, severity, text):
        return any(p.line == line and p.severity == severity and text in p.message for p in report.problems)

    assert reported(4, "error", "unknown universal class 'raod' (did you mean 'road'?)")
    assert reported(5, "error", "'car' is listed twice in its label set")  # a label set, but 'car' twice
    assert reported(6, "error", "used by 2 ids")
    assert reported(7, "error", "color '300 0 0'") and reported(7, "error", "has no universal class")
    assert reported(8, "error", "expected 4")
    assert reported(14, "error", "universal class 'bus' is mapped twice")
    assert reported(15, "warning", "no universal class maps to it")
    assert len(report.errors) == 7 and len(report.warnings) == 1
    assert all(str(path) in str(p) for p in report.problems)
    with pytest.raises(TaxonomyFileError) as info:
        Catalog([path])
    assert "raod" in str(info.value) and "bus" in str(info.value)
    with pytest.raises(KeyError):
        load_class_names("bad-train")  # nothing was registered


def test_structural_errors(tmp_path):
    text = """\
taxonomy\tbdd
role\ttrain
id\tname\tuniversal
0\troad\troad

taxonomy\tmine
role\ttrian
id\tname\tuniversal
0\troad\troad

taxonomy\tmine2
role\ttest
colour\tred
maps_to\tmy-universe
id\tname\tuniversal\tcolour
0\troad\troad

taxonomy\tmine3
role\ttest
role\ttrain
id\tname\tuniversal
0\troad\troad
"""
    _, report = validate_file(write(tmp_path, text))
    messages = "\n".join(str(p) for p in report.errors)
    assert "'bdd' already exists (built in)" in messages
    assert "unknown role 'trian' (did you mean 'train'?)" in messages
    assert "unknown key 'colour' (did you mean 'color'?)" not in messages  # keys suggest among keys
    assert "unknown key 'colour'" in messages
    assert "unknown column 'colour' (did you mean 'color'?)" in messages
    assert any(p.line == 20 and "key 'role' is given twice in this block (first 'test')" in p.message for p in report.errors)


def test_maps_to_and_universal_coverage(tmp_path):
    text = WHOLE_TAXONOMY_FILE.replace("2\tpedestrian\tperson\n", "").replace(
        "taxonomy\ttiny-test\nrole\ttest\nmaps_to\ttiny-universal", "taxonomy\ttiny-test\nrole\ttest\nmaps_to\ttiny")
    _, report = validate_file(write(tmp_path, text))
    assert any("maps_to 'tiny' is not a universal taxonomy (did you mean 'tiny-universal'?)" in p.message
               for p in report.errors)
    assert any("universal class 2 'person' is supplied by no training dataset" in p.message and p.line == 6
               for p in report.warnings)


def test_unreadable_and_empty_files(tmp_path):
    _, report = validate_file(tmp_path / "missing.tsv")
    assert not report.ok and "cannot read" in report.errors[0].message
    _, report = validate_file(write(tmp_path, "# only a comment\n"))
    assert "no taxonomy block" in report.errors[0].message
    _, report = validate_file(write(tmp_path, "0\troad\troad\n"))
    assert "expected 'taxonomy<TAB>NAME'" in report.errors[0].message


def test_a_row_with_a_wrong_id_is_still_checked_and_later_rows_stay_in_step(tmp_path):
    from mseg_semantic.taxonomy import validate_file

    path = write(tmp_path, "taxonomy\tbroken-3\nrole\ttrain\nid\tname\tuniversal\tcolor\n"
                           "0\troad\troad\t1 2 3\n7\t\tcaar\t1 2\n2\ttree\tvegetation\t4 5 6\n")
    _, report = validate_file(path)
    messages = [p.message for p in report.errors]
    assert any("id '7': expected 1" in m for m in messages)
    assert any("class 1 has an empty name" in m for m in messages)  # the row's other problems are reported too
    assert any("color '1 2'" in m for m in messages)
    assert any("'caar'" in m and "did you mean 'car'" in m for m in messages)
    assert not any("id '2'" in m for m in messages)  # the next row is not a second id error
