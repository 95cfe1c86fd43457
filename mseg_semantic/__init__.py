"""mseg_semantic: multi-dataset semantic segmentation through MSeg's universal taxonomy."""

__version__ = "0.1.0"
