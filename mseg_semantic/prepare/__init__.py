"""Dataset preparation: download, safe extraction, remap to the semseg taxonomies, MSeg relabeling, verification.

The command line is ``mseg-prepare`` (``mseg_semantic.tool.prepare``); the steps are importable:
``download_dataset``, ``extract_dataset``, ``remap_dataset``, ``relabel_dataset``, ``verify_dataset`` and
``run_all``. Dataset facts live in ``specs.SPECS``; remap tables in ``prepare/data/remap/``. Nothing outside
this package and its command line imports it.
"""

from mseg_semantic.prepare.specs import SPECS, DatasetSpec, get_spec, parse_dataset_list

__all__ = ["SPECS", "DatasetSpec", "get_spec", "parse_dataset_list"]
