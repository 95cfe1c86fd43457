"""mseg_semantic: multi-dataset semantic segmentation through MSeg's universal taxonomy.

    from mseg_semantic import Segmenter
    seg = Segmenter.from_pretrained("mseg-3m-480p", output_taxonomy="cityscapes-19")
    result = seg("photo.jpg")

``Segmenter`` and ``Segmentation`` (:mod:`mseg_semantic.evaluation.api`) are imported on first use: importing the
package stays cheap (no torch) for the command-line tools' ``--help`` and for tools that only read the taxonomies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Segmentation", "Segmenter", "__version__"]

if TYPE_CHECKING:
    from mseg_semantic.evaluation.api import Segmentation, Segmenter


def __getattr__(name: str) -> Any:
    if name in ("Segmenter", "Segmentation"):
        from mseg_semantic.evaluation import api

        return getattr(api, name)
    raise AttributeError(f"module 'mseg_semantic' has no attribute {name!r}")
