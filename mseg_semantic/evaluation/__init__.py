"""Inference (sliding window, flip, multi-scale, batched, prepared models), metrics, the zero-shot benchmark,
outputs in any taxonomy, pictures, validation during training, demo and export.

The dataset loop, demo, export and validation import the model/data/taxonomy packages: import them from their
modules (``mseg_semantic.evaluation.evaluate``, ``.demo``, ``.export``, ``.model_space``, ``.outputs``,
``.figures``, ``.validation``).
"""

from mseg_semantic.evaluation.inference import (
    InferenceModel,
    InferenceSettings,
    class_probabilities,
    predict_probabilities,
    resized_hw,
    segment_images,
    window_starts,
)
from mseg_semantic.evaluation.metrics import ConfusionMatrix, SegmentationMetrics, class_status, harmonic_mean
from mseg_semantic.evaluation.visualize import colorize, compose_demo_frame, legend_panel, overlay, present_classes, write_png
from mseg_semantic.evaluation.zero_shot import ZeroShotEntry, column_label, format_zero_shot_table, zero_shot_summary

__all__ = [
    "ConfusionMatrix",
    "InferenceModel",
    "InferenceSettings",
    "SegmentationMetrics",
    "ZeroShotEntry",
    "class_probabilities",
    "class_status",
    "colorize",
    "column_label",
    "compose_demo_frame",
    "format_zero_shot_table",
    "harmonic_mean",
    "legend_panel",
    "overlay",
    "predict_probabilities",
    "present_classes",
    "resized_hw",
    "segment_images",
    "window_starts",
    "write_png",
]
