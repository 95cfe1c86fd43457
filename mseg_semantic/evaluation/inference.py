"""Sliding-window and whole-image inference, with flip and multi-scale averaging, batched.

The procedure follows MSeg's evaluation (mseg_semantic/tool/inference_task.py), done in batches:

1. For each scale ``s``: resize the image so its short side is ``round(s * base_size)`` (aspect kept, bilinear).
2. Pad it to at least the crop size with the ImageNet mean (0 after normalisation), the extra split between
   top/bottom and left/right as MSeg does (``pad // 2`` before).
3. Windows of the crop size with stride ``ceil(crop * 2/3)``; the last window of a row/column is shifted back
   so it ends at the border. Each window and, when ``flip``, its horizontal mirror go through the model in the
   same pass; ``window_batch`` items (a window and its mirror are two) per pass, all images of the call sharing
   the passes.
4. The logits are upsampled to the window (bilinear, ``align_corners=True``: HRNet's last step), turned into
   softmax probabilities and, given a :class:`~mseg_semantic.taxonomy.Projection`, summed into the output
   classes (exactly as TaxonomyConverter does). When the projection reads only some model classes (``subset``):
   ``exact`` computes only those at full resolution, the softmax normaliser accumulated over every class in
   chunks (never a full-resolution tensor of every class; equal up to float rounding); ``fast`` takes the
   normaliser at the logits' resolution, so that the full-resolution work touches those classes only
   (``upsample(l_c - logsumexp(l)) = upsample(l_c) - upsample(logsumexp(l))``, and logsumexp of the upsampled
   logits is at most the upsampled logsumexp: the probabilities come out slightly lower where the classes
   change within a few pixels, the same elsewhere). A window's result is the mean of its plain and mirrored
   probabilities; overlapping windows are averaged.

   MSeg's numbers in a cheaper order (equal up to float rounding; ``reference_order.py`` keeps MSeg's order, which
   the tests and benchmarks compare against): the mirrored pass's logits are mirrored back at 1/4 resolution (the
   upsampling, with ``align_corners=True``, and the softmax commute with a mirror), upsampled into N x H x W x C
   (exact x4 arithmetic for windows of 4k + 1 pixels: :mod:`mseg_semantic.model.upsample`), the softmax runs along
   the contiguous class dimension, the plain and mirrored probabilities are averaged before the projection (which is
   linear), and each image's canvas is H x W x K, so a window's sum adds contiguous rows. The canvas holds sums:
   the division by the number of windows covering a pixel, which cannot change the argmax, is done only where
   probabilities are read or resized (:class:`ImageProbabilities`). Projecting before the upsampling would *not*
   be equivalent (the softmax of the upsampled logits is not the upsampled softmax), so it is not done.
5. The padding is cut off and the probabilities resized (bilinear) to the original image size; the scales
   are averaged there and the label is the argmax. With one scale the resize is left to the consumer
   (:class:`ImageProbabilities`): labels alone resize only the classes that can win somewhere
   (:func:`resized_argmax`, the same labels), which matters when the image is much larger than ``base_size``.

Whole-image mode replaces step 3 by one forward of the whole padded image (padded to a multiple of
``size_divisor``; for a ViT, of its patch size). A ViT takes inputs whose sides are multiples of its patch size (14):
sliding windows must be (``test_h = test_w = 714`` instead of MSeg's 713), which :class:`InferenceModel` checks. Images are uint8 RGB ``H x W x 3`` numpy arrays (or ``3 x H x W`` uint8 tensors).

The model runs as :class:`InferenceModel` prepares it (:mod:`mseg_semantic.evaluation.engine`): BatchNorm folded,
convolution weights cast once for bf16, channels_last, CUDA graphs of the fixed-shape window batch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mseg_semantic.data.transforms import normalize_images
from mseg_semantic.errors import UserError
from mseg_semantic.evaluation.engine import FixedBatchRunner, input_multiple, low_res_logits, prepared_copy
from mseg_semantic.model import autocast_context
from mseg_semantic.model.upsample import upsample_logits, upsample_logits_nhwc
from mseg_semantic.taxonomy import Projection

__all__ = [
    "ImageProbabilities",
    "InferenceModel",
    "InferenceSettings",
    "class_probabilities",
    "window_starts",
    "resized_hw",
    "predict_image_probabilities",
    "predict_probabilities",
    "resized_argmax",
    "segment_images",
    "window_probabilities_nhwc",
]

PRECISIONS = ("fp32", "bf16")
MODES = ("sliding", "whole")
SUBSET_MODES = ("full", "exact", "fast")  # not "off": YAML reads off as false
SOFTMAX_CHUNK = 32  # classes upsampled at a time while the softmax normaliser is accumulated (subset path)
# items per forward pass when TEST.window_batch is unset: a GPU keeps busy with more (two 1080p windows' worth of
# 713 crops with their mirrors), a CPU gains nothing from them
DEFAULT_WINDOW_BATCH = {"cuda": 16, "cpu": 8}


@dataclass(frozen=True)
class InferenceSettings:
    """How an image is run through the model; the config's TEST keys (their defaults live in the schema)."""

    crop_h: int  # TEST.test_h
    crop_w: int  # TEST.test_w
    base_size: int | None  # short side before scaling; None keeps the image's own size
    scales: tuple[float, ...]
    flip: bool
    mode: str  # TEST.inference_mode: sliding | whole
    window_batch: int | None  # items (windows or flipped windows) per forward pass; None: DEFAULT_WINDOW_BATCH
    precision: str | None  # TEST.test_precision: fp32 | bf16 (autocast); None: bf16 on CUDA, fp32 elsewhere
    channels_last: bool | None  # TEST.test_channels_last; None: on CUDA only
    fold_bn: bool  # TEST.fold_bn
    cuda_graphs: bool  # TEST.test_cuda_graphs
    subset: str  # TEST.subset_inference: full | exact | fast
    stride_rate: float = 2.0 / 3.0  # MSeg's, not a config key
    size_divisor: int = 32  # whole-image mode pads to a multiple of this
    fused_postprocess: bool = False  # torch.compile the window post-processing (window_probabilities_nhwc)

    @classmethod
    def from_config(cls, test: Mapping[str, Any]) -> "InferenceSettings":
        """From a config's TEST section."""
        return cls(crop_h=test["test_h"], crop_w=test["test_w"], base_size=test["base_size"], scales=tuple(test["scales"]),
                   flip=test["flip"], mode=test["inference_mode"], window_batch=test["window_batch"], precision=test["test_precision"],
                   channels_last=test["test_channels_last"], fold_bn=test["fold_bn"], cuda_graphs=test["test_cuda_graphs"],
                   subset=test["subset_inference"], fused_postprocess=test["fused_postprocess"])

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"inference mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UserError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        if self.crop_h <= 0 or self.crop_w <= 0:
            raise UserError(f"crop size must be positive, got {self.crop_h} x {self.crop_w}")
        if self.base_size is not None and self.base_size <= 0:
            raise UserError(f"base_size must be positive or None, got {self.base_size}")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise UserError(f"scales must be a non-empty list of positive numbers, got {list(self.scales)}")
        if self.window_batch is not None and self.window_batch <= 0:
            raise UserError(f"window_batch must be positive, got {self.window_batch}")
        if self.subset not in SUBSET_MODES:
            raise UserError(f"subset_inference {self.subset!r} is not one of {', '.join(SUBSET_MODES)}")
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))

    def for_device(self, device: torch.device) -> "InferenceSettings":
        """The unset device-dependent choices made: bf16, channels_last and a window batch of 16 on CUDA; fp32, NCHW
        and 8 elsewhere."""
        cuda = device.type == "cuda"
        return replace(self, precision=self.precision or ("bf16" if cuda else "fp32"),
                       channels_last=cuda if self.channels_last is None else self.channels_last,
                       window_batch=self.window_batch or DEFAULT_WINDOW_BATCH["cuda" if cuda else "cpu"])

    @property
    def stride_h(self) -> int:
        return int(math.ceil(self.crop_h * self.stride_rate))

    @property
    def stride_w(self) -> int:
        return int(math.ceil(self.crop_w * self.stride_rate))

    @property
    def windows_per_pass(self) -> int:
        """Whole windows per forward pass: a window and its mirror are two of the ``window_batch`` items."""
        if self.window_batch is None:
            raise ValueError("window_batch is unset: resolve the settings for a device first (for_device)")
        return max(1, self.window_batch // (2 if self.flip else 1))


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis of a (padded) length >= crop, MSeg's placement."""
    if length < crop:
        raise ValueError(f"length {length} is smaller than the crop {crop}; pad first")
    count = int(math.ceil((length - crop) / stride)) + 1
    return [min(i * stride + crop, length) - crop for i in range(count)]


def resized_hw(h: int, w: int, base_size: int | None, scale: float) -> tuple[int, int]:
    """Size after resizing the short side to ``round(scale * base_size)`` (``base_size`` None: the short side)."""
    short = round(scale * (base_size if base_size is not None else min(h, w)))
    if h > w:
        return round(short / w * h), short
    return short, round(short / h * w)


def _to_chw_tensor(image: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 RGB image, got shape {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a 3 x H x W image tensor, got shape {tuple(image.shape)}")
    return image.to(device, non_blocking=True)


def _prepare(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8/float 3 x H x W -> normalised float 3 x h x w at ``size``."""
    x = image.float().unsqueeze(0)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return normalize_images(x)[0]


# ---------------------------------------------------------------------------------------------------------------
# logits -> class probabilities


@functools.lru_cache(maxsize=64)
def _subset_plan(num_inputs: int, members: tuple[tuple[int, ...], ...]) -> tuple[list[int], Projection]:
    """(model classes in the order used-first-then-the-rest, the projection re-indexed to the used classes)."""
    used = sorted({m for group in members for m in group})
    position = {m: i for i, m in enumerate(used)}
    rest = [c for c in range(num_inputs) if c not in position]
    return used + rest, Projection(len(used), [[position[m] for m in group] for group in members])


@functools.lru_cache(maxsize=64)
def _subset_order(num_inputs: int, members: tuple[tuple[int, ...], ...], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_subset_plan`'s order (and its used classes) as index tensors, made once per device: a CUDA graph
    cannot capture the host-to-device copy that making them costs."""
    order, compact = _subset_plan(num_inputs, members)
    full = torch.as_tensor(order, device=device)
    return full, full[: compact.num_inputs]


def _upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """HRNet's last step (fp32, ``align_corners=True``), where the logits are not at ``size`` already."""
    return logits if tuple(logits.shape[-2:]) == tuple(size) else upsample_logits(logits, size)


def _subset_probabilities(logits: torch.Tensor, size: tuple[int, int], projection: Projection) -> torch.Tensor:
    """``projection(softmax(upsample(logits)))`` computing full-resolution probabilities of the used classes only.

    The softmax normaliser (log-sum-exp over every class) is accumulated chunk by chunk at full resolution, so no
    tensor of all classes at full resolution is ever held; the used classes come first and their upsampled logits
    are kept from that pass.
    """
    _, compact = _subset_plan(projection.num_inputs, projection.members)
    num_used = compact.num_inputs
    ordered = logits.index_select(1, _subset_order(projection.num_inputs, projection.members, str(logits.device))[0])
    kept, top, total = [], None, None
    for start in range(0, ordered.shape[1], SOFTMAX_CHUNK):
        part = _upsample(ordered[:, start : start + SOFTMAX_CHUNK], size)
        if start < num_used:
            kept.append(part[:, : num_used - start])
        part_max = part.amax(1)
        if top is None:
            top, total = part_max, (part - part_max.unsqueeze(1)).exp_().sum(1)
            continue
        new_top = torch.maximum(top, part_max)
        total = total.mul_((top - new_top).exp_()).add_((part - new_top.unsqueeze(1)).exp_().sum(1))
        top = new_top
    log_normaliser = top.add_(total.log_()).unsqueeze(1)
    used = torch.cat(kept, dim=1) if len(kept) > 1 else kept[0]
    return compact(used.sub(log_normaliser).exp_())


def _fast_subset_probabilities(logits: torch.Tensor, size: tuple[int, int], projection: Projection) -> torch.Tensor:
    """Like :func:`_subset_probabilities` with the normaliser taken at the logits' resolution: only the used classes'
    log-probabilities are upsampled (module docstring, step 4)."""
    _, compact = _subset_plan(projection.num_inputs, projection.members)
    used = _subset_order(projection.num_inputs, projection.members, str(logits.device))[1]
    log_probs = logits.index_select(1, used).sub_(torch.logsumexp(logits, dim=1, keepdim=True))
    return compact(_upsample(log_probs, size).exp_())


def _check_projection(projection: Projection | None, num_classes: int) -> None:
    if projection is not None and projection.num_inputs != num_classes:
        raise ValueError(f"the projection takes {projection.num_inputs} classes but the model outputs {num_classes}")


def _reads_a_subset(projection: Projection | None, subset: str) -> bool:
    return projection is not None and subset != "full" and len(projection.used_inputs) < projection.num_inputs


def class_probabilities(logits: torch.Tensor, size: tuple[int, int], projection: Projection | None, subset: str) -> torch.Tensor:
    """N x C logits (at ``size`` or lower) -> N x K probabilities at ``size``: bilinear upsampling
    (``align_corners=True``), softmax over the C classes, then ``projection`` (K = C without one). ``subset``
    (exact | fast | full): how a projection that reads only some classes is computed (module docstring, step 4)."""
    logits = logits.float()
    _check_projection(projection, logits.shape[1])
    if _reads_a_subset(projection, subset):
        if subset == "fast":
            return _fast_subset_probabilities(logits, size, projection)
        return _subset_probabilities(logits, size, projection)
    probs = torch.softmax(_upsample(logits, size), dim=1)
    return projection(probs) if projection is not None else probs


def window_probabilities_nhwc(logits: torch.Tensor, windows: int, size: tuple[int, int], projection: Projection | None,
                              subset: str, flip: bool) -> torch.Tensor:
    """The post-processing of one forward pass: B x C logits (at ``size`` or lower; with ``flip`` the first
    ``windows`` items are the windows, the rest their mirrors) -> ``windows`` x H x W x K probabilities, each the mean
    of a window's plain and mirrored pass, in the reordered procedure of the module docstring (step 4)."""
    _check_projection(projection, logits.shape[1])
    if flip:  # the mirrored passes mirrored back while they are small (upsampling and softmax commute with it)
        logits = torch.cat([logits[:windows], logits[windows:].flip(-1)])
    if _reads_a_subset(projection, subset):
        # the subset paths never hold every class at full resolution; their N x K x H x W result, read as NHWC
        probs = class_probabilities(logits, size, projection, subset).permute(0, 2, 3, 1)
        return probs[:windows].add(probs[windows:]).mul_(0.5) if flip else probs
    if torch.compiler.is_compiling():  # TEST.fused_postprocess: ops a compiler fuses into few kernels
        probs = torch.softmax(upsample_logits_nhwc(logits, size, fusable=True), dim=-1)
        if flip:
            probs = (probs[:windows] + probs[windows:]) * 0.5
        return _project_by_columns(probs, projection) if projection is not None else probs
    probs = torch.softmax(upsample_logits_nhwc(logits, size), dim=-1)
    if flip:
        probs = probs[:windows].add_(probs[windows:]).mul_(0.5)
    return projection(probs, dim=-1) if projection is not None else probs


def _project_by_columns(probs: torch.Tensor, projection: Projection) -> torch.Tensor:
    """``projection(probs, dim=-1)`` as one sum of class columns per output class, in the members' order (as
    :class:`Projection` adds them): pointwise reads a compiler fuses with the softmax that makes ``probs``."""
    columns = []
    for group in projection.members:
        total = torch.zeros_like(probs[..., 0])
        for member in group:
            total = total + probs[..., member]
        columns.append(total)
    return torch.stack(columns, dim=-1)


# ---------------------------------------------------------------------------------------------------------------
# the prepared model


class InferenceModel:
    """A model made ready for inference on its device, once: BatchNorm folded (``fold_bn``), convolution weights
    cast to bf16 (``precision``), channels_last, and the window batch replayed as a CUDA graph (``cuda_graphs``).

    ``inplace=False`` (default) transforms a copy, so the caller's model (e.g. the one being trained) is left as it
    is; ``fixed_batches`` pads every pass to the full window batch, as CUDA graphs need (default: ``cuda_graphs``).
    Pass it to :func:`predict_probabilities` / :func:`segment_images` instead of the plain model.
    """

    def __init__(self, model: torch.nn.Module, settings: InferenceSettings, inplace: bool = False, fixed_batches: bool | None = None):
        parameter = next(iter(model.parameters()), None)
        self.device = parameter.device if parameter is not None else torch.device("cpu")
        self.settings = settings.for_device(self.device)
        if self.settings.cuda_graphs and self.device.type != "cuda":
            raise UserError(f"TEST.test_cuda_graphs=true needs the model on a CUDA device; it is on {self.device} "
                            f"(set test_device=cuda, or test_cuda_graphs=false)")
        self.fixed_batches = self.settings.cuda_graphs if fixed_batches is None else fixed_batches
        self.multiple = input_multiple(model)
        self.model_name = getattr(model, "name", "")
        self.check_window(self.settings)
        modes = _module_modes(model)
        model.eval()  # folding reads the running statistics
        cast_to = torch.bfloat16 if self.settings.precision == "bf16" else None
        self.module = prepared_copy(model, self.settings.fold_bn, cast_to, self.settings.channels_last, inplace)
        _restore_modes(modes)  # a copy stays in eval mode; the caller's model gets its own modes back
        self.original = model
        self._runners: dict[tuple, FixedBatchRunner] = {}
        self._postprocess = window_probabilities_nhwc
        if self.settings.fused_postprocess:
            self._postprocess = torch.compile(window_probabilities_nhwc, dynamic=False)

    def check_window(self, settings: InferenceSettings) -> None:
        """A ViT's sliding windows must be multiples of its patch size (whole images are padded to one)."""
        multiple = self.multiple
        if multiple is None or settings.mode != "sliding" or not (settings.crop_h % multiple or settings.crop_w % multiple):
            return
        nearest = [max(multiple, (side + multiple // 2) // multiple * multiple) for side in (settings.crop_h, settings.crop_w)]
        raise UserError(f"TEST.test_h x test_w = {settings.crop_h} x {settings.crop_w}: {self.model_name or 'this ViT'} "
                        f"takes windows whose sides are multiples of its patch size {multiple}; use test_h={nearest[0]} test_w={nearest[1]}")

    def divisor(self, settings: InferenceSettings) -> int:
        """What whole-image mode pads to a multiple of."""
        return self.multiple or settings.size_divisor

    def check(self, settings: InferenceSettings) -> None:
        """``settings`` must agree with what this model was prepared for (geometry may differ: base size, crop)."""
        self.check_window(settings)
        wanted = settings.for_device(self.device)
        for name in ("precision", "channels_last", "fold_bn", "cuda_graphs", "fused_postprocess"):
            if getattr(wanted, name) != getattr(self.settings, name):
                raise ValueError(f"this InferenceModel was prepared with {name}={getattr(self.settings, name)!r}, "
                                 f"the call asks for {getattr(wanted, name)!r}; prepare another one")

    def window_logits(self, crops: torch.Tensor, flip: bool) -> torch.Tensor:
        """W x 3 x h x w normalised windows -> the model's logits (at 1/4 resolution for an HRNet) of the windows,
        then (``flip``) of their mirrors, in one forward pass."""
        batch = torch.cat([crops, crops.flip(-1)]) if flip else crops
        if self.settings.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast_context(self.settings.precision, self.device.type):  # the forward only: the sums stay fp32
            return low_res_logits(self.module, batch)

    def window_probabilities(self, crops: torch.Tensor, projection: Projection | None, settings: InferenceSettings) -> torch.Tensor:
        """W x 3 x h x w normalised windows -> W x h x w x K probabilities (mean of the plain and mirrored pass)."""
        logits = self.window_logits(crops, settings.flip)
        return self._postprocess(logits, crops.shape[0], tuple(crops.shape[-2:]), projection, settings.subset, settings.flip)

    def runner(self, projection: Projection | None, settings: InferenceSettings) -> FixedBatchRunner | None:
        """The fixed-shape runner of these settings (None: run each chunk as it is)."""
        if not self.fixed_batches:
            return None
        # by content: each dataset of a benchmark builds its own Projection, and a graph per object would pile up
        projection_key = None if projection is None else (projection.num_inputs, projection.members)
        key = (projection_key, settings.flip, settings.subset, settings.windows_per_pass)
        if key not in self._runners:
            fn = functools.partial(self.window_probabilities, projection=projection, settings=settings)
            self._runners[key] = FixedBatchRunner(fn, settings.windows_per_pass, cuda_graph=self.settings.cuda_graphs)
        return self._runners[key]


# ---------------------------------------------------------------------------------------------------------------
# windows over images


@dataclass
class _Canvas:
    """One image at one scale: the padded input, the accumulated probabilities and how many windows cover a pixel."""

    image_index: int
    inner_hw: tuple[int, int]
    pad_top: int
    pad_left: int
    padded: torch.Tensor  # 3 x PH x PW normalised
    windows: list[tuple[int, int, int, int]]  # y, x, h, w
    probs: torch.Tensor | None = None  # PH x PW x K: the sums of the windows' probabilities


def _pad(x: torch.Tensor, target_h: int, target_w: int) -> tuple[torch.Tensor, int, int]:
    pad_h = max(target_h - x.shape[1], 0)
    pad_w = max(target_w - x.shape[2], 0)
    top, left = pad_h // 2, pad_w // 2
    if pad_h or pad_w:
        # zero after normalisation == the ImageNet mean before it, MSeg's padding value
        x = F.pad(x, (left, pad_w - left, top, pad_h - top), value=0.0)
    return x, top, left


def _windows(ph: int, pw: int, settings: InferenceSettings) -> list[tuple[int, int, int, int]]:
    if settings.mode == "whole":
        return [(0, 0, ph, pw)]
    return [
        (y, x, settings.crop_h, settings.crop_w)
        for y in window_starts(ph, settings.crop_h, settings.stride_h)
        for x in window_starts(pw, settings.crop_w, settings.stride_w)
    ]


def _coverage(canvas: _Canvas, device: torch.device) -> torch.Tensor:
    """How many windows cover each pixel of the padded canvas (the same for every class: computed once)."""
    counts = torch.zeros(canvas.padded.shape[1:], device=device)
    for y, x, h, w in canvas.windows:
        counts[y : y + h, x : x + w] += 1
    return counts


def _chunks(canvases: Sequence[_Canvas], size: int) -> Iterator[list[tuple[int, int, int, int, int]]]:
    """(canvas index, y, x, h, w) of consecutive windows of equal shape, at most ``size`` per chunk."""
    chunk: list[tuple[int, int, int, int, int]] = []
    for ci, canvas in enumerate(canvases):
        for window in canvas.windows:
            if chunk and (len(chunk) == size or chunk[-1][3:5] != window[2:4]):
                yield chunk
                chunk = []
            chunk.append((ci, *window))
    if chunk:
        yield chunk


def _module_modes(module: torch.nn.Module) -> list[tuple[torch.nn.Module, bool]]:
    return [(m, m.training) for m in module.modules()]


def _restore_modes(modes: list[tuple[torch.nn.Module, bool]]) -> None:
    """Each module's own training flag back (``model.train(flag)`` would unfreeze frozen BatchNorm layers)."""
    for module, training in modes:
        module.training = training


@dataclass
class ImageProbabilities:
    """One image's class probabilities before the last step: ``values / coverage`` (K x h x w) stand for their
    bilinear resize (``align_corners=False``) to the image's ``size``; with several scales they are already at
    ``size``.

    ``values`` may be sums over the ``coverage`` (h x w) windows that cover each pixel (None: 1, they are
    probabilities), and a K x h x w view of h x w x K memory. :meth:`probabilities` divides once; :meth:`full` is the
    resize (what :func:`predict_probabilities` returns); :meth:`labels` its argmax computed exactly while resizing
    only the classes that can win somewhere (a few near each boundary instead of all 194: this is what makes a
    12-megapixel photo take seconds at a small base size), and without any division where nothing is resized.
    """

    values: torch.Tensor
    size: tuple[int, int]
    coverage: torch.Tensor | None = None

    def probabilities(self) -> torch.Tensor:
        """K x h x w probabilities at the resolution of ``values``."""
        return self.values if self.coverage is None else self.values / self.coverage

    def full(self) -> torch.Tensor:
        probs = self.probabilities()
        if tuple(probs.shape[-2:]) == tuple(self.size):
            return probs
        return F.interpolate(probs.unsqueeze(0), size=self.size, mode="bilinear", align_corners=False)[0]

    def labels(self, other: bool = False) -> torch.Tensor:
        """int64 H x W: ``full().argmax(0)``, the same labels (ties to the lowest id) without resizing every class.

        ``other``: with one more value, 1 - the sum of the K (the model classes no output class receives); where
        it is the largest the label is K.
        """
        if self.coverage is not None and tuple(self.values.shape[-2:]) == tuple(self.size):
            # a pixel's values all share its coverage, which cannot change which of them is largest
            values = self.values
            if other:
                values = torch.cat([values, (self.coverage - values.sum(0)).clamp_(min=0.0).unsqueeze(0)])
            return values.argmax(0)
        values = self.probabilities()
        if other:
            values = torch.cat([values, (1.0 - values.sum(0, keepdim=True)).clamp_(min=0.0)])
        return resized_argmax(values, self.size)


def resized_argmax(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(values[None], size, bilinear, align_corners=False)[0].argmax(0)``, resizing candidates only.

    Each resized pixel is a convex combination of a 2 x 2 block of ``values`` pixels (clamped at the border), so a
    class's value there lies between its minimum and its maximum over that block. In a block where some class's
    minimum is T, a class whose maximum stays below T can win at no pixel; every other class is a candidate.
    """
    if tuple(values.shape[-2:]) == tuple(size):
        return values.argmax(0)
    padded = F.pad(values.unsqueeze(0), (0, 1, 0, 1), mode="replicate")  # the clamped neighbour of the last row/column
    block_max = F.max_pool2d(padded, kernel_size=2, stride=1)[0]
    block_min = -F.max_pool2d(-padded, kernel_size=2, stride=1)[0]
    threshold = block_min.amax(0, keepdim=True)
    # a margin of float rounding: a class within it of the threshold stays a candidate
    candidates = torch.nonzero((block_max >= threshold - 1e-6).flatten(1).any(1)).flatten()
    if candidates.numel() == values.shape[0]:
        return F.interpolate(values.unsqueeze(0), size=size, mode="bilinear", align_corners=False)[0].argmax(0)
    resized = F.interpolate(values.index_select(0, candidates).unsqueeze(0), size=size, mode="bilinear", align_corners=False)[0]
    return candidates[resized.argmax(0)]


@torch.inference_mode()
def predict_image_probabilities(
    model: torch.nn.Module | InferenceModel,
    images: Sequence[np.ndarray | torch.Tensor],
    settings: InferenceSettings,
    projection: Projection | None = None,
) -> list[ImageProbabilities]:
    """Per image, its probabilities before the resize to the image's size (:class:`ImageProbabilities`); the
    arguments as for :func:`predict_probabilities`."""
    if len(images) == 0:
        return []
    engine = model if isinstance(model, InferenceModel) else InferenceModel(model, settings)
    engine.check(settings)
    settings = replace(settings, precision=engine.settings.precision, channels_last=engine.settings.channels_last,
                       window_batch=settings.window_batch or engine.settings.window_batch)
    device = engine.device
    tensors = [_to_chw_tensor(im, device) for im in images]
    totals: list[torch.Tensor | None] = [None] * len(tensors)
    # every module's own mode comes back afterwards (a training model may keep frozen BatchNorm layers in eval)
    modes = _module_modes(engine.module) + (_module_modes(engine.original) if engine.original is not engine.module else [])
    engine.module.eval()
    runner = engine.runner(projection, settings)
    try:
        for scale in settings.scales:
            canvases = []
            for index, image in enumerate(tensors):
                h, w = image.shape[1:]
                inner = resized_hw(h, w, settings.base_size, scale)
                x = _prepare(image, inner)
                if settings.mode == "whole":
                    d = engine.divisor(settings)
                    target = (math.ceil(inner[0] / d) * d, math.ceil(inner[1] / d) * d)
                else:
                    target = (settings.crop_h, settings.crop_w)
                padded, top, left = _pad(x, *target)
                canvases.append(_Canvas(index, inner, top, left, padded, _windows(*padded.shape[1:], settings)))
            for chunk in _chunks(canvases, settings.windows_per_pass):
                crops = torch.stack([canvases[ci].padded[:, y : y + h, x : x + w] for ci, y, x, h, w in chunk])
                probs = runner(crops) if runner is not None else engine.window_probabilities(crops, projection, settings)
                for (ci, y, x, h, w), p in zip(chunk, probs):
                    canvas = canvases[ci]
                    if canvas.probs is None:
                        canvas.probs = torch.zeros((*canvas.padded.shape[1:], p.shape[-1]), device=device)
                    canvas.probs[y : y + h, x : x + w] += p
            for canvas in canvases:
                ih, iw = canvas.inner_hw
                inner = (slice(canvas.pad_top, canvas.pad_top + ih), slice(canvas.pad_left, canvas.pad_left + iw))
                sums = canvas.probs[inner]
                if not sums.is_contiguous():  # padded: keep the image's part only
                    sums = sums.contiguous()
                coverage = _coverage(canvas, device)[inner].contiguous()
                scaled = ImageProbabilities(sums.permute(2, 0, 1), tuple(tensors[canvas.image_index].shape[1:]), coverage)
                i = canvas.image_index
                if len(settings.scales) == 1:
                    totals[i] = scaled  # resized by the consumer: fully, or only the classes it needs
                elif totals[i] is None:  # several scales average at the image's size
                    totals[i] = ImageProbabilities(scaled.full(), scaled.size)
                else:
                    totals[i].values.add_(scaled.full())
                canvas.probs = None  # free before the next scale
    finally:
        _restore_modes(modes)
    if len(settings.scales) > 1:
        for total in totals:
            total.values.div_(len(settings.scales))
    return totals  # type: ignore[return-value]


def predict_probabilities(
    model: torch.nn.Module | InferenceModel,
    images: Sequence[np.ndarray | torch.Tensor],
    settings: InferenceSettings,
    projection: Projection | None = None,
) -> list[torch.Tensor]:
    """Per image, float32 ``K x H x W`` class probabilities at the image's own resolution, on the model's device.

    ``model``: a plain model (prepared for this call) or an :class:`InferenceModel` (prepared once: pass one when
    calling repeatedly). ``projection``: how the C softmax probabilities of the model become K output classes
    (e.g. ``TaxonomyConverter.projection(dataset)``); without it K = C.
    """
    return [p.full().contiguous() for p in predict_image_probabilities(model, images, settings, projection)]




def segment_images(
    model: torch.nn.Module | InferenceModel,
    images: Sequence[np.ndarray | torch.Tensor],
    settings: InferenceSettings,
    projection: Projection | None = None,
) -> list[torch.Tensor]:
    """Per image, the int64 ``H x W`` label map (argmax of :func:`predict_probabilities`), on the model's device."""
    return [p.labels() for p in predict_image_probabilities(model, images, settings, projection)]
