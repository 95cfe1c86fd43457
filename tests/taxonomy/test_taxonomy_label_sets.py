"""Label sets: the built-in data authored from MSeg's relabeling records, set codes, set-valued converters,
user files with sets and extensions, and the CLI that shows them."""

import numpy as np
import pytest

from mseg_semantic.taxonomy import (
    IGNORE_INDEX,
    RELABELED_TRAIN_DATASETS,
    UNRELABELED_TRAIN_DATASETS,
    LabelSets,
    TaxonomyConverter,
    Catalog,
    TaxonomyFileError,
    build_taxonomy_converter,
    get_taxonomy,
    validate_file,
)
from mseg_semantic.taxonomy.mseg_import import import_mseg
from mseg_semantic.tool.taxonomy import main
from tests.taxonomy.test_taxonomy_parity import REFERENCE, needs_reference


def write(tmp_path, text, name="user.tsv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---- the built-in data -------------------------------------------------------------------------------------------

def test_builtin_sets_keep_mseg_target_first_and_add_what_records_move_to():
    rider = get_taxonomy("cityscapes-19").class_names.index("rider")
    assert get_taxonomy("cityscapes-19").universal[rider][0] == "bicyclist"  # MSeg's one-hot mapping, unchanged
    # the rule keeps the rider subclasses and drops the corrections (person 15, bicycle 3 of 1,805 segments)
    assert set(get_taxonomy("cityscapes-19").universal[rider]) == {"bicyclist", "rider_other", "motorcyclist"}
    rider = get_taxonomy("bdd").class_names.index("rider")
    assert get_taxonomy("bdd").universal[rider] == ("rider_other", "bicyclist", "motorcyclist")  # extras in universal-id order
    for name in RELABELED_TRAIN_DATASETS:  # relabeling resolved the ambiguity: all singletons
        tax = get_taxonomy(name)
        assert not any(tax.is_set_valued(i) for i in range(tax.num_classes)), name
    assert all(any(get_taxonomy(n).is_set_valued(i) for i in range(get_taxonomy(n).num_classes))
               for n in UNRELABELED_TRAIN_DATASETS)


@needs_reference
def test_reimporting_mseg_data_reproduces_the_builtin_files(tmp_path):
    from mseg_semantic.taxonomy.catalog import DATA_DIR
    from mseg_semantic.taxonomy.mseg_import import DATA_HEADER, write_taxonomy_files

    from mseg_semantic.taxonomy.label_set_rule import EVIDENCE_PATH, format_evidence
    from mseg_semantic.taxonomy.mseg_import import import_mseg_with_evidence

    taxonomies, evidence, report = import_mseg_with_evidence(REFERENCE)
    assert report.ok, report.format()
    for path in write_taxonomy_files(taxonomies, tmp_path, DATA_HEADER):
        assert path.read_text() == (DATA_DIR / path.name).read_text(), path.name
    assert format_evidence(evidence) == EVIDENCE_PATH.read_text()  # the label sets' evidence table too
    assert [t.universal for t in taxonomies] == [t.universal for t in import_mseg(REFERENCE)[0]]


def test_import_derives_sets_from_non_empty_records(tmp_path):
    """A tiny mseg-api folder with records: moves to `unlabeled` and empty segment lists add nothing; a record's
    original class is found through the remap table, or through the rider alias."""
    root = tmp_path / "mseg-api-data"
    (root / "class_remapping_files").mkdir(parents=True)
    head = ("Parent Category\tcityscapes-19\tcityscapes-19-relabeled\tuniversal\tWordNet 3.1 Synset\t"
            "Defn (Most of the meanings are derived from WordNet 3.1)\tModification of WordNet Node")
    rows = [("person", "person", "person", "person"), ("person", "", "rider_other", "rider_other"),
            ("person", "rider", "bicyclist", "bicyclist"), ("person", "", "motorcyclist", "motorcyclist"),
            ("vehicle", "car", "car", "car"), ("vehicle", "", "truck", "truck"), ("", "blur", "", "unlabeled")]
    master = [head] + ["\t".join([*r, "x.n.01", "d", "no"]) for r in rows]
    (root / "class_remapping_files" / "MSeg_master.tsv").write_bytes("\r\n".join(master).encode())
    names = {"cityscapes-19": ["person", "rider", "car", "blur"],
             "cityscapes-19-relabeled": ["person", "rider_other", "bicyclist", "motorcyclist", "car", "truck"]}
    for name, classes in names.items():
        (root / "dataset_lists" / name).mkdir(parents=True)
        (root / "dataset_lists" / name / f"{name}_names.txt").write_text("\n".join(classes))
    (root / "class_remapping_files" / "cityscapes-19_to_cityscapes-19-relabeled.tsv").write_text(
        "cityscapes-19\tcityscapes-19-relabeled\nperson\tperson\nrider\tbicyclist\ncar\tcar\nblur\tunlabeled\n")
    lists = root / "relabeled_data" / "cs"
    lists.mkdir(parents=True)
    records = ["record_group\tdataset\tsplit\torig_universal_class\tnew_universal_class\tsegment_list_file"]
    for original, new, entries in [("rider_other", "motorcyclist", "a_1.png\n"), ("rider_other", "unlabeled", "a_2.png\n"),
                                   ("car", "truck", ""), ("person", "rider_other", "b_3.png\n")]:
        (lists / f"{original}_{new}.txt").write_text(entries)
        records.append(f"g\tcityscapes\ttrain\t{original}\t{new}\tcs/{original}_{new}.txt")
    (root / "relabeling_update_records.tsv").write_text("\n".join(records) + "\n")

    taxonomies, report = import_mseg(root)
    assert report.ok, report.format()
    city = {t.name: t for t in taxonomies}["cityscapes-19"]
    assert city.universal == [("person", "rider_other"), ("bicyclist", "motorcyclist"), ("car",), ("unlabeled",)]
    assert all(len(s) == 1 for s in {t.name: t for t in taxonomies}["cityscapes-19-relabeled"].universal)


# ---- set codes ---------------------------------------------------------------------------------------------------

def test_set_codes_follow_the_classes_skip_255_and_dedupe():
    sets = LabelSets.for_sets(253, [(3,), (5, 2), (2, 5), (7, 8, 9), (1, 2), (4, 6)])
    assert sets.members[:253] == LabelSets.singletons(253).members[:253]
    assert sets.code_of((2, 5)) == 253 and sets.code_of((9, 8, 7)) == 254
    assert sets.members[IGNORE_INDEX] == () and sets.code_of((1, 2)) == 256  # 255 stays ignore
    assert sets.code_of((4, 6)) == 257 and sets.max_label_id == 257 and sets.max_set_size == 3
    assert sets.code_of([3]) == 3 and sets.code_of(()) == IGNORE_INDEX
    assert sets.set_codes == [253, 254, 256, 257]
    ids, valid = sets.member_table()
    assert ids.shape == valid.shape == (258, 3)
    assert ids[254].tolist() == [7, 8, 9] and valid[254].all()
    assert ids[253].tolist() == [2, 5, 2] and valid[253].tolist() == [True, True, False]  # padding repeats a member
    assert ids[3].tolist() == [3, 3, 3] and valid[3].tolist() == [True, False, False]
    assert not valid[IGNORE_INDEX].any()
    with pytest.raises(KeyError):
        sets.code_of((1, 3))
    with pytest.raises(ValueError, match="outside"):
        LabelSets.for_sets(10, [(1, 12)])


def test_set_valued_converter_writes_codes_and_keeps_one_hot_maps():
    one_hot = TaxonomyConverter(UNRELABELED_TRAIN_DATASETS, [])
    partial = build_taxonomy_converter("universal", UNRELABELED_TRAIN_DATASETS, [], set_valued=True)
    assert partial.num_classes == one_hot.num_classes == 194 and partial.label_maps == one_hot.label_maps
    ids = np.array([list(range(19)) + [255]], dtype=np.uint8)
    codes = partial.transform_label(ids, "cityscapes-19")
    assert codes.dtype == np.uint8  # MSeg's 194 classes + 27 sets still fit
    rider = get_taxonomy("cityscapes-19").class_names.index("rider")
    names = set(get_taxonomy("cityscapes-19").universal[rider])
    assert {partial.class_names[m] for m in partial.label_sets.members[codes[0, rider]]} == names
    singles = [i for i in range(19) if i != rider]
    assert np.array_equal(codes[0, singles], one_hot.transform_label(ids, "cityscapes-19")[0, singles])
    assert codes[0, -1] == IGNORE_INDEX
    # the same set in two datasets has one code; the one-hot converter's ids are all singletons
    assert len(partial.label_sets.set_codes) == len({frozenset(s) for d in UNRELABELED_TRAIN_DATASETS
                                                     for s in partial.class_sets[d] if len(s) > 1})
    assert one_hot.label_sets.set_codes == []
    with pytest.raises(ValueError, match="universal taxonomy only"):
        build_taxonomy_converter("naive", None, None, set_valued=True)


def test_codes_past_255_make_the_labels_uint16(tmp_path):
    """A label space whose set codes pass 255 travels as uint16 (int16 in a batch), like the naive taxonomy."""
    classes = "".join(f"{i}\tc{i}\n" for i in range(250))
    rows = "".join(f"{k}\tpair{k}\tc{2 * k}, c{2 * k + 1}\n" for k in range(8))
    catalog = Catalog([write(tmp_path, f"taxonomy\twide\nrole\tuniversal\nid\tname\n{classes}\n"
                                       f"taxonomy\twide-a\nrole\ttrain\nmaps_to\twide\nid\tname\tuniversal\n{rows}")])
    conv = TaxonomyConverter(["wide-a"], [], set_valued=True, catalog=catalog)
    codes = conv.transform_label(np.arange(8, dtype=np.uint8), "wide-a")
    assert codes.dtype == np.uint16 and codes.tolist() == [250, 251, 252, 253, 254, 256, 257, 258]
    assert conv.label_sets.members[256] == (10, 11)
    assert TaxonomyConverter(["wide-a"], [], catalog=catalog).transform_label(np.arange(8, dtype=np.uint8), "wide-a").dtype == np.uint8


# ---- user files ----------------------------------------------------------------------------------------------------

SETS_FILE = """\
taxonomy\tmy-street
role\ttrain
id\tname\tuniversal
0\tstreet\troad, sidewalk_pavement
1\tcyclist\tbicyclist, person, bicycle
2\twalker\tperson
3\tbike\tbicycle
4\tblur\tunlabeled
"""


def test_user_sets_validate_and_overlaps_are_information(tmp_path):
    catalog = Catalog([write(tmp_path, SETS_FILE)])
    report = catalog.warnings
    assert report.ok and not report.warnings
    info = [p for p in report.infos if p.line == 5]
    assert info and "'person'" not in info[0].message and "2 'walker': person" in info[0].message
    conv = TaxonomyConverter(["my-street"], [], set_valued=True, catalog=catalog)
    label = conv.transform_label(np.array([0, 1, 2, 3, 4, 255], dtype=np.uint8), "my-street")
    assert [sorted(conv.class_names[m] for m in conv.label_sets.members[c]) for c in label[:4]] == \
        [["road", "sidewalk_pavement"], ["bicycle", "bicyclist", "person"], ["person"], ["bicycle"]]
    assert label[4:].tolist() == [255, 255]
    assert TaxonomyConverter(["my-street"], [], catalog=catalog).transform_label(np.array([1], np.uint8), "my-street")[0] == \
        conv.name_to_id["bicyclist"]  # one-hot: the first class


def test_user_set_errors_name_line_and_class(tmp_path):
    text = SETS_FILE.replace("road, sidewalk_pavement", "road, unlabeled").replace(
        "bicyclist, person, bicycle", "bicyclist, persn, bicyclist")
    _, report = validate_file(write(tmp_path, text))
    messages = [(p.line, p.message) for p in report.errors]
    assert any(line == 4 and "'unlabeled' (ignore, 255) cannot be part of a label set" in m for line, m in messages)
    assert any(line == 5 and "'bicyclist' is listed twice" in m for line, m in messages)
    assert any(line == 5 and "unknown universal class 'persn' (did you mean 'person'?)" in m for line, m in messages)
    assert len(report.errors) == 3


CROSSWALK_FILE = """\
taxonomy\tuniversal-crosswalk
role\tuniversal
extends\tuniversal
id\tname\tcolor
194\tcrosswalk\t200 128 128

taxonomy\tcityscapes-19-crosswalk
role\ttrain
maps_to\tuniversal-crosswalk
extends\tcityscapes-19
id\tname\tuniversal
0\troad\troad, crosswalk

taxonomy\tmapillary-public65-crosswalk
role\ttrain
maps_to\tuniversal-crosswalk
extends\tmapillary-public65
id\tname\tuniversal
23\tLane Marking - Crosswalk\tcrosswalk

taxonomy\tcamvid-11-crosswalk
role\ttest
maps_to\tuniversal-crosswalk
extends\tcamvid-11
id\tname\tuniversal
5\tRoad\troad, crosswalk
"""


def test_extensions_add_a_universal_class_and_change_mappings(tmp_path):
    catalog = Catalog([write(tmp_path, CROSSWALK_FILE)])
    uni = catalog.taxonomy("universal-crosswalk")
    assert uni.num_classes == 195 and uni.class_names[:194] == get_taxonomy("universal").class_names
    assert tuple(uni.colors[194]) == (200, 128, 128) and uni.extra["parent"][194] == ""
    conv = TaxonomyConverter(["cityscapes-19-crosswalk", "mapillary-public65-crosswalk"], ["camvid-11-crosswalk"],
                             set_valued=True, catalog=catalog)  # the universal taxonomy is the one the datasets map to
    assert conv.universal == "universal-crosswalk" and conv.num_classes == 195
    crosswalk = conv.name_to_id["crosswalk"]
    assert conv.transform_label(np.array([23], np.uint8), "mapillary-public65-crosswalk")[0] == crosswalk
    road = conv.transform_label(np.array([0], np.uint8), "cityscapes-19-crosswalk")[0]
    assert conv.label_sets.members[road] == (conv.name_to_id["road"], crosswalk)
    mapillary = catalog.taxonomy("mapillary-public65")
    extended = catalog.taxonomy("mapillary-public65-crosswalk")
    assert extended.class_names == mapillary.class_names
    assert [u for i, u in enumerate(extended.universal) if i != 23] == [u for i, u in enumerate(mapillary.universal) if i != 23]
    road_test = conv.projection("camvid-11-crosswalk").members[5]
    assert road_test == (conv.name_to_id["road"], crosswalk)
    with pytest.raises(ValueError, match="different universal taxonomies"):
        TaxonomyConverter(["cityscapes-19-crosswalk", "bdd"], [], catalog=catalog)
    # adding the same file again is a no-op; a catalog keeps what it read when the file changes afterwards
    path = tmp_path / "user.tsv"
    assert catalog.with_taxonomy_files([path]).taxonomy_files == catalog.taxonomy_files
    path.write_text(CROSSWALK_FILE.replace("200 128 128", "1 2 3"))
    assert tuple(catalog.taxonomy("universal-crosswalk").colors[194]) == (200, 128, 128)
    assert tuple(Catalog([path]).taxonomy("universal-crosswalk").colors[194]) == (1, 2, 3)


def test_extension_errors(tmp_path):
    text = (CROSSWALK_FILE.replace("194\tcrosswalk", "195\tcrosswalk")
            .replace("23\tLane Marking - Crosswalk", "23\tLane Marking Crosswalk")
            .replace("extends\tcamvid-11", "extends\tcamvid-12")
            + "\ntaxonomy\tx\nrole\ttrain\nextends\tcamvid-11\nid\tname\tuniversal\n")
    _, report = validate_file(write(tmp_path, text))
    messages = "\n".join(p.message for p in report.errors)
    assert "id 195: the classes an extension of 'universal' adds continue after its 194 classes, so this row's id is 194" in messages
    assert "id 23 is 'Lane Marking - Crosswalk' in 'mapillary-public65', not 'Lane Marking Crosswalk'" in messages
    assert "extends 'camvid-12', which is not known" in messages and "did you mean 'camvid-11'?" in messages
    assert "extends 'camvid-11', which has role 'test'" in messages


# ---- coverage and the CLI ------------------------------------------------------------------------------------------

def test_a_class_only_inside_sets_is_reported_as_never_supervised(tmp_path):
    text = ("taxonomy\ttiny\nrole\tuniversal\nid\tname\n0\troad\n1\tcrosswalk\n\n"
            "taxonomy\ttiny-a\nrole\ttrain\nmaps_to\ttiny\nid\tname\tuniversal\n0\tstreet\troad, crosswalk\n")
    _, report = validate_file(write(tmp_path, text))
    assert report.ok
    assert any("'crosswalk' is only an extra member of label sets (tiny-a 'street')" in p.message for p in report.warnings)


def test_cli_sets_and_show_mark_set_valued_classes(capsys):
    assert main(["sets", "cityscapes-19"]) == 0
    out = capsys.readouterr().out
    rider = next(line for line in out.splitlines() if line.split()[:2] == ["12", "rider"])
    assert rider.split()[2] == "3" and rider.split()[3] == "bicyclist," and "rider_other" in rider
    assert "1 with a label set of several universal classes" in out
    assert main(["show", "bdd"]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[:2] == ["12", "rider"] and line.endswith("3 classes") for line in out.splitlines())
    assert "1 set-valued class(es)" in out
    assert main(["sets", "camvid-11"]) == 2
    assert "label sets belong to training taxonomies" in capsys.readouterr().err
