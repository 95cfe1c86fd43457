"""Run a model on an image, a folder of images or a video and write what it sees.

Per image: ``<stem>_demo.png`` = ``[input | colour mask | overlay | legend of the classes present]`` and
``<stem>_label.png`` (the predicted ids, uint8, or uint16 when the taxonomy has more than 255 classes; 255 =
'other' with ``uncovered_classes=ignore``); with ``confidence`` ``<stem>_maxprob.png`` and ``<stem>_entropy.png``,
with ``probabilities`` ``<stem>_probs.npz`` (formats: :mod:`mseg_semantic.evaluation.outputs`).
A video gives ``<stem>_demo.mp4`` (mp4v, same frame rate and frame count) of the same side-by-side frames.
Images (or frames) go through inference ``batch_size`` at a time.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
import torch
from mseg_semantic.data.lists import BadSampleError, read_image_rgb
from mseg_semantic.atomic import renamed_into_place
from mseg_semantic.errors import UserError
from mseg_semantic.evaluation.inference import InferenceModel, InferenceSettings, predict_image_probabilities
from mseg_semantic.evaluation.model_space import OutputSpace
from mseg_semantic.evaluation.outputs import PixelOutputs, pixel_outputs, write_confidence, write_probabilities
from mseg_semantic.evaluation.progress import Progress
from mseg_semantic.evaluation.visualize import compose_demo_frame, write_png

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "run_demo", "list_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


@contextlib.contextmanager
def _opencv_quiet():
    """OpenCV's own log lines off while reading user files: a corrupt file is reported once, by us, with its name."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _predict(engine: InferenceModel, images, settings, space, confidence: bool = False, probabilities: bool = False) -> list[PixelOutputs]:
    probs = predict_image_probabilities(engine, images, settings, space.projection)
    return [pixel_outputs(p, space, confidence=confidence, probabilities=probabilities) for p in probs]


def run_demo(
    model: torch.nn.Module | InferenceModel,
    space: OutputSpace,
    settings: InferenceSettings,
    input_path: str | Path,
    out_dir: str | Path,
    batch_size: int = 1,
    progress: bool = True,
    confidence: bool = False,
    probabilities: bool = False,
    on_unreadable: Callable[[BadSampleError], None] | None = None,
) -> list[Path]:
    """Segment ``input_path`` (image, folder of images, or video) into ``out_dir``; returns the files written.
    ``progress``: a bar on a terminal, else a line every few images (:class:`~mseg_semantic.evaluation.progress.Progress`).
    ``confidence`` / ``probabilities``: also the confidence maps / the class probabilities (images only).
    ``on_unreadable``: in a folder, an image that cannot be read is passed to it and skipped (the others are
    still segmented) instead of stopping the run."""
    input_path = Path(input_path)
    out_dir = Path(out_dir)
    batch_size = max(1, int(batch_size))
    engine = model if isinstance(model, InferenceModel) else InferenceModel(model, settings)
    extras = {"confidence": confidence, "probabilities": probabilities}
    if input_path.is_dir():
        images = list_images(input_path)
        if not images:
            raise FileNotFoundError(f"{input_path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return _run_images(engine, space, settings, images, out_dir, batch_size, progress, on_unreadable=on_unreadable, **extras)
    if not input_path.exists():
        raise FileNotFoundError(f"demo input {input_path} does not exist (give an image, a folder of images, or a video)")
    suffix = input_path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return _run_images(engine, space, settings, [input_path], out_dir, batch_size, progress, **extras)
    if suffix in VIDEO_SUFFIXES:
        if confidence or probabilities:
            raise UserError(f"demo input {input_path} is a video: save_confidence / save_probabilities write one file per image; "
                            f"give a folder of frames, or leave them false")
        return [_run_video(engine, space, settings, input_path, out_dir, batch_size, progress)]
    raise UserError(f"demo input {input_path}: unknown file type {suffix!r}; images: {', '.join(IMAGE_SUFFIXES)}; videos: {', '.join(VIDEO_SUFFIXES)}")


def output_stems(paths: Sequence[Path]) -> dict[Path, str]:
    """The name each image's outputs start with: its stem, or its whole name where stems clash (``a.jpg`` and
    ``a.png`` give ``a.jpg_demo.png`` and ``a.png_demo.png`` rather than one overwriting the other)."""
    stems = Counter(p.stem for p in paths)
    return {p: p.stem if stems[p.stem] == 1 else p.name for p in paths}


def _readable(paths: Sequence[Path], on_unreadable: Callable[[BadSampleError], None] | None) -> tuple[list[Path], list[np.ndarray]]:
    kept, images = [], []
    with _opencv_quiet():
        for path in paths:
            try:
                images.append(read_image_rgb(path))
            except BadSampleError as exc:
                if on_unreadable is None:
                    raise
                on_unreadable(exc)
                continue
            kept.append(path)
    return kept, images


def _run_images(engine, space, settings, paths: list[Path], out_dir: Path, batch_size: int, progress: bool,
                confidence: bool = False, probabilities: bool = False,
                on_unreadable: Callable[[BadSampleError], None] | None = None) -> list[Path]:
    written = []
    names = output_stems(paths)
    bar = Progress(len(paths), "demo", enabled=progress)
    for batch in _batches(paths, batch_size):
        chunk, images = _readable(batch, on_unreadable)
        if not chunk:
            bar.update(len(batch))
            continue
        for path, image, pixels in zip(chunk, images, _predict(engine, images, settings, space, confidence, probabilities)):
            label = pixels.label_array()
            frame = compose_demo_frame(image, label, space.class_names, space.colors)
            name = names[path]
            written.append(write_png(out_dir / f"{name}_demo.png", frame, rgb=True))
            written.append(write_png(out_dir / f"{name}_label.png", label))
            if confidence:
                written += write_confidence(out_dir / name, pixels)
            if probabilities:
                written.append(write_probabilities(out_dir / name, pixels, space.class_names))
        bar.update(len(batch))
    bar.close()
    return written


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad to even height and width (video encoders drop an odd last row/column)."""
    h, w = frame.shape[:2]
    return cv2.copyMakeBorder(frame, 0, h % 2, 0, w % 2, cv2.BORDER_CONSTANT, value=(255, 255, 255))


def _run_video(engine, space, settings, path: Path, out_dir: Path, batch_size: int, progress: bool) -> Path:
    reader = cv2.VideoCapture(str(path))
    if not reader.isOpened():
        raise UserError(f"{path}: cannot be opened as a video (corrupt, or a codec this OpenCV lacks)")
    fps = reader.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(reader.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    final = out_dir / f"{path.stem}_demo.mp4"
    writer = None
    bar = Progress(total, "demo", unit="frames", enabled=progress)
    try:
        with renamed_into_place(final) as tmp:
            while True:
                frames = []
                for _ in range(batch_size):
                    ok, bgr = reader.read()
                    if not ok:
                        break
                    frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                if not frames:
                    break
                for image, pixels in zip(frames, _predict(engine, frames, settings, space)):
                    frame = _even(compose_demo_frame(image, pixels.label_array(), space.class_names, space.colors))
                    if writer is None:
                        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frame.shape[1], frame.shape[0]))
                        if not writer.isOpened():
                            raise RuntimeError(f"cannot write the video {tmp} (OpenCV without an mp4v encoder?)")
                    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
                bar.update(len(frames))
            if writer is None:
                raise UserError(f"{path}: no frame could be read (an empty or corrupt video)")
            writer.release()  # the file is complete before it is renamed
    finally:
        bar.close()
        reader.release()
        if writer is not None:
            writer.release()  # after an error; a second release does nothing
    return final
