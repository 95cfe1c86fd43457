"""A taxonomy file's metadata errors point at the line of the key that is wrong, not at the block's first line."""

from __future__ import annotations

from mseg_semantic.taxonomy.files import parse_taxonomy_text

TEXT = """\
# comment
taxonomy\tmine
description\ta block whose role line comes third
role\ttrian
id\tname\tuniversal
0\troad\troad

taxonomy\tmy-universe
maps_to\tuniversal
role\tuniversal
id\tname\tcolor
0\troad\t1 2 3

taxonomy\tmy-raw
role\traw
extends\tcityscapes-19
id\tname
0\troad
"""


def test_role_maps_to_and_extends_errors_name_their_own_line():
    _, report = parse_taxonomy_text(TEXT, source="user.tsv")
    lines = {p.message.split(";")[0].split(" (")[0]: p.line for p in report.errors}
    assert lines["unknown role 'trian'"] == 4  # the block starts on line 2
    assert lines["'maps_to' applies to train/test taxonomies, not to a universal one"] == 9
    assert lines["'extends' applies to universal, train and test taxonomies, not to a raw one"] == 16
