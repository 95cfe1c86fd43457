"""The Python API: a released model (or a checkpoint) run with MSeg's inference procedure, labels in any taxonomy.

    from mseg_semantic import Segmenter
    seg = Segmenter.from_pretrained("mseg-3m-480p", output_taxonomy="cityscapes-19")  # or a .pth path
    result = seg("photo.jpg")          # result.labels (H x W), result.class_names
    seg.predict_folder("images/", out="masks/")

A :class:`Segmenter` is what ``mseg-demo`` runs (``mseg-demo`` builds one from its config): the same config keys
(default: the packaged ``test/default_config_360_ss``, MSeg's single-scale procedure at short side 360), the same
model preparation and output space, so it gives the same labels for the same settings. Images go through the model
``batch_size`` at a time, on the GPU when there is one (``test_device=auto``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from mseg_semantic.config import DEFAULT_INFERENCE_CONFIG, Config, find_config, load_config, parse_override
from mseg_semantic.data.lists import read_image_rgb
from mseg_semantic.errors import UserError
from mseg_semantic.evaluation.inference import InferenceModel, InferenceSettings, predict_image_probabilities
from mseg_semantic.evaluation.model_space import LoadedModel, OutputSpace, display_space, load_model_from_config, pick_device
from mseg_semantic.evaluation.outputs import PixelOutputs, pixel_outputs, write_confidence, write_probabilities
from mseg_semantic.evaluation.visualize import colorize, write_png

__all__ = ["Segmentation", "Segmenter", "as_rgb_image"]

ImageLike = Any  # a path (str / os.PathLike), an H x W x 3 uint8 RGB numpy array (or H x W, H x W x 4) or a PIL image


@dataclass
class Segmentation:
    """One image's result, as numpy arrays at the image's size."""

    labels: np.ndarray  # H x W class ids into class_names: uint8 (uint16 over 255 classes); 255 = 'other' (uncovered_classes=ignore)
    class_names: list[str]
    colors: np.ndarray  # K x 3 uint8: the taxonomy's colour of each class
    taxonomy: str
    probabilities: np.ndarray | None = None  # K x H x W float32 (probabilities=True)
    confidence: np.ndarray | None = None  # H x W float32: the largest probability (confidence=True)
    entropy: np.ndarray | None = None  # H x W float32 in [0, 1]: entropy / its maximum (confidence=True)

    def colorized(self) -> np.ndarray:
        """H x W x 3 uint8 RGB: each pixel in its class's colour (255 black)."""
        return colorize(self.labels, self.colors)

    def class_fractions(self) -> dict[str, float]:
        """The classes present, with the fraction of the image each covers, largest first."""
        ids, counts = np.unique(self.labels, return_counts=True)
        total = float(self.labels.size)
        found = {("other" if i >= len(self.class_names) else self.class_names[i]): c / total for i, c in zip(ids.tolist(), counts.tolist())}
        return dict(sorted(found.items(), key=lambda item: -item[1]))


def as_rgb_image(image: ImageLike) -> np.ndarray:
    """An H x W x 3 uint8 RGB array from a path, a numpy array (H x W grey, H x W x 3 RGB, H x W x 4 RGBA) or a PIL
    image; anything else is a one-line UserError."""
    if isinstance(image, (str, os.PathLike)):
        return read_image_rgb(image)
    if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image, without importing PIL here
        return np.array(image.convert("RGB"))  # a writable copy: torch refuses to wrap read-only memory
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise UserError(f"image array of dtype {image.dtype}: expected uint8 RGB values 0..255 "
                            f"(e.g. np.clip(x * 255, 0, 255).astype(np.uint8) for floats in [0, 1])")
        if image.ndim == 2:
            return np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim == 3 and image.shape[2] in (3, 4):
            return np.ascontiguousarray(image[:, :, :3])
        raise UserError(f"image array of shape {image.shape}: expected H x W x 3 (RGB), H x W x 4 (RGBA) or H x W (grey)")
    raise UserError(f"cannot segment a {type(image).__name__}: give a file path, a numpy uint8 array or a PIL image")


def _config(config: str | os.PathLike | Config | None, overrides: Mapping[str, Any] | Sequence[str]) -> Config:
    """The config a Segmenter runs with: a Config as is, else a file or packaged name (default: MSeg's 360 single
    scale), with ``overrides`` (``{'key': value}`` or ``['key=value']``) applied and validated."""
    if isinstance(config, Config):
        cfg = config
    else:
        cfg = load_config(find_config(config or DEFAULT_INFERENCE_CONFIG, "test"))
    pairs = [parse_override(o) for o in overrides] if not isinstance(overrides, Mapping) else list(overrides.items())
    return cfg.updated(pairs, where="Segmenter") if pairs else cfg


class Segmenter:
    """A model ready for inference in one output taxonomy. Build it with :meth:`from_pretrained` (or
    :meth:`from_config`); call it on an image or a list of images."""

    def __init__(self, loaded: LoadedModel, space: OutputSpace, settings: InferenceSettings, batch_size: int = 1,
                 config: Config | None = None):
        self.loaded = loaded
        self.space = space
        self.settings = settings
        self.engine = InferenceModel(loaded.model, settings, inplace=True)  # the loaded model is ours: no copy
        self.batch_size = max(1, int(batch_size))
        self.config = config

    @classmethod
    def from_config(cls, cfg: Config) -> "Segmenter":
        """What ``mseg-demo`` runs for ``cfg``: ``TEST.model_path`` (a file or a released name, downloaded on first
        use), ``TEST.output_taxonomy`` / ``uncovered_classes``, the inference keys, ``TEST.batch_size_val`` images
        per call on ``TEST.test_device``."""
        t = cfg.TEST
        settings = InferenceSettings.from_config(t)
        oracle_dataset = cfg.DATA.dataset if isinstance(cfg.DATA.dataset, str) else None  # an oracle checkpoint without meta
        loaded = load_model_from_config(cfg, pick_device(t.test_device), oracle_dataset)
        space = display_space(loaded, t.output_taxonomy, t.uncovered_classes)
        return cls(loaded, space, settings, t.batch_size_val, cfg)

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, output_taxonomy: str | None = None, *,
                        config: str | os.PathLike | Config | None = None, device: str | None = None,
                        batch_size: int | None = None, overrides: Mapping[str, Any] | Sequence[str] = ()) -> "Segmenter":
        """``model``: a released name (``mseg-weights list``; downloaded into the cache on first use, checked by its
        SHA-256) or a checkpoint file. ``output_taxonomy``: the classes to predict (a test or training taxonomy such
        as ``cityscapes-19``; default: the model's own). ``config``: a config file or packaged name (default
        ``test/default_config_360_ss``); ``overrides`` any of its keys (``{"base_size": 720}``); ``device``:
        ``auto`` (default), ``cpu``, ``cuda``; ``batch_size``: images per forward call (default ``batch_size_val``)."""
        chosen: dict[str, Any] = {"TEST.model_path": str(model), "TEST.output_taxonomy": output_taxonomy}
        if device is not None:
            chosen["TEST.test_device"] = device
        if batch_size is not None:
            chosen["TEST.batch_size_val"] = batch_size
        cfg = _config(config, overrides)
        return cls.from_config(cfg.updated(chosen, where="Segmenter.from_pretrained"))

    @property
    def class_names(self) -> list[str]:
        return list(self.space.class_names)

    @property
    def taxonomy(self) -> str:
        return self.space.name

    @property
    def device(self) -> torch.device:
        return self.engine.device

    def __repr__(self) -> str:
        return (f"Segmenter({Path(self.loaded.path).name}: {self.loaded.name}, {self.loaded.model_taxonomy} model -> "
                f"{self.taxonomy} ({len(self.class_names)} classes), {self.device})")

    def _outputs(self, images: Sequence[np.ndarray], probabilities: bool, confidence: bool) -> list[PixelOutputs]:
        probs = predict_image_probabilities(self.engine, images, self.settings, self.space.projection)
        return [pixel_outputs(p, self.space, confidence=confidence, probabilities=probabilities) for p in probs]

    def _result(self, pixels: PixelOutputs) -> Segmentation:
        def numpy(t: torch.Tensor | None) -> np.ndarray | None:
            return None if t is None else t.float().cpu().numpy()

        return Segmentation(pixels.label_array(), self.class_names, self.space.colors.copy(), self.taxonomy,
                            numpy(pixels.probabilities), numpy(pixels.max_probability), numpy(pixels.entropy))

    def predict(self, images: Iterable[ImageLike], probabilities: bool = False, confidence: bool = False) -> list[Segmentation]:
        """Segment each image (``batch_size`` per forward call); results in the same order."""
        results: list[Segmentation] = []
        batch: list[np.ndarray] = []
        for image in images:
            batch.append(as_rgb_image(image))
            if len(batch) == self.batch_size:
                results += [self._result(p) for p in self._outputs(batch, probabilities, confidence)]
                batch = []
        if batch:
            results += [self._result(p) for p in self._outputs(batch, probabilities, confidence)]
        return results

    def __call__(self, image: ImageLike | Sequence[ImageLike], probabilities: bool = False,
                 confidence: bool = False) -> Segmentation | list[Segmentation]:
        """One image -> a :class:`Segmentation`; a list or tuple of images -> a list of them."""
        if isinstance(image, (list, tuple)):
            return self.predict(image, probabilities, confidence)
        return self.predict([image], probabilities, confidence)[0]

    def predict_folder(self, folder: str | os.PathLike, out: str | os.PathLike, colored: bool = False,
                       confidence: bool = False, probabilities: bool = False) -> list[Path]:
        """Segment every image of ``folder`` into ``out``: ``<stem>.png`` label ids (as ``mseg-demo``'s
        ``_label.png``), with ``colored`` also ``<stem>_color.png``, with ``confidence`` ``<stem>_maxprob.png`` /
        ``<stem>_entropy.png``, with ``probabilities`` ``<stem>_probs.npz``. Returns the files written."""
        from mseg_semantic.evaluation.demo import list_images, output_stems

        folder, out = Path(folder), Path(out)
        if not folder.is_dir():
            raise UserError(f"{folder}: not a folder of images")
        paths = list_images(folder)
        if not paths:
            raise UserError(f"{folder} holds no images (.png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp)")
        stems = output_stems(paths)
        written: list[Path] = []
        for start in range(0, len(paths), self.batch_size):
            chunk = paths[start : start + self.batch_size]
            for path, pixels in zip(chunk, self._outputs([read_image_rgb(p) for p in chunk], probabilities, confidence)):
                stem = out / stems[path]
                label = pixels.label_array()
                written.append(write_png(stem.with_name(stem.name + ".png"), label))
                if colored:
                    written.append(write_png(stem.with_name(stem.name + "_color.png"), colorize(label, self.space.colors), rgb=True))
                if confidence:
                    written += write_confidence(stem, pixels)
                if probabilities:
                    written.append(write_probabilities(stem, pixels, self.space.class_names))
        return written
