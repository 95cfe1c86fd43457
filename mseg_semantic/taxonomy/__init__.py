"""MSeg's universal taxonomy as project data, the datasets this project knows (the Catalog), and converters between
label spaces.

Taxonomy facts from MSeg (Lambert et al., CVPR 2020), mseg-api, CC BY 4.0.
"""

from mseg_semantic.taxonomy.catalog import (
    DATA_DIR,
    DATA_ROOT_ENV,
    DEFAULT_TEST_DATASETS,
    DEFAULT_TRAIN_DATASETS,
    NUM_UNIVERSAL_CLASSES,
    RELABELED_TRAIN_DATASETS,
    UNRELABELED_TRAIN_DATASETS,
    ZERO_SHOT_DATASETS,
    Catalog,
    DatasetLocation,
    DatasetRecord,
    get_taxonomy,
    load_class_colors,
    load_class_names,
    naive_class_names,
    taxonomy_names,
    validate_file,
)
from mseg_semantic.taxonomy.converter import (
    MODEL_TAXONOMIES,
    NaiveTaxonomyConverter,
    OracleTaxonomyConverter,
    Projection,
    TaxonomyConverter,
    UnknownLabelError,
    build_taxonomy_converter,
)
from mseg_semantic.taxonomy.files import DEFAULT_UNIVERSAL, IGNORE_INDEX, Problem, Taxonomy, TaxonomyFileError, ValidationReport, palette
from mseg_semantic.taxonomy.label_sets import LabelSets

__all__ = [
    "DATA_DIR", "DATA_ROOT_ENV", "DEFAULT_TEST_DATASETS", "DEFAULT_TRAIN_DATASETS", "DEFAULT_UNIVERSAL", "IGNORE_INDEX", "LabelSets",
    "MODEL_TAXONOMIES", "NUM_UNIVERSAL_CLASSES", "RELABELED_TRAIN_DATASETS", "UNRELABELED_TRAIN_DATASETS", "ZERO_SHOT_DATASETS",
    "Catalog", "DatasetLocation", "DatasetRecord", "NaiveTaxonomyConverter", "OracleTaxonomyConverter", "Problem", "Projection",
    "Taxonomy", "TaxonomyConverter", "TaxonomyFileError", "UnknownLabelError", "ValidationReport", "build_taxonomy_converter",
    "get_taxonomy", "load_class_colors", "load_class_names", "naive_class_names", "palette", "taxonomy_names", "validate_file",
]
