"""Weights files: read them (MSeg releases, official HRNet ImageNet checkpoints, Meta's DINOv2 backbones, this
project's files), load them into a model, and write this project's final-weights file.

Files are read with ``torch.load(weights_only=True)``: no pickled code from a downloaded file ever runs. Key
names are translated to this project's (:func:`mseg_semantic.compat.translate_state_dict`: MSeg's positional
head keys, ``module.`` / ``_orig_mod.`` prefixes). The file kind is detected from its layout:

=========================  ==================================================================================
kind                       layout
=========================  ==================================================================================
``project_training``       ``{"model": state_dict, "optimizer": ..., "iteration": ..., ...}`` (a training checkpoint,
                           :mod:`mseg_semantic.training.checkpoint`; only its model part is read here)
``project_final``          ``{"state_dict": state_dict, "meta": {"model": name, "num_classes": K, ...}}``
``mseg_release``           ``{"state_dict": state_dict, ...}`` without ``meta`` (keys may start with ``module.``)
``imagenet_classification`` official HRNet-Image-Classification weights: a bare state dict that also holds the
                           classification head (``incre_modules``, ``downsamp_modules``, ``final_layer``,
                           ``classifier``). Those keys are skipped; the segmentation head keeps its initialisation.
``dinov2_backbone``        Meta's DINOv2 backbone checkpoints: a bare state dict in the official ViT layout
                           (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.*``, ``norm.*``). It is
                           loaded into ``model.backbone`` with ``load_state_dict(strict=True)``; the head (and any LoRA
                           adapters) keep their initialisation and are reported as missing.
``state_dict``             any other bare state dict with this model's key names
=========================  ==================================================================================

Every key of the model must come from the file (an ImageNet file: every backbone key), except the BatchNorm
``num_batches_tracked`` counters, which older PyTorch versions did not save. A key with a different shape is an
error, unless it belongs to the head and ``reinit_head=True``. LoRA adapter keys (``.attn.lora.``) the file lacks
keep their initialisation (reported as missing): adapters inserted for training start from any plain checkpoint.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from mseg_semantic import compat
from mseg_semantic.atomic import atomic_write
from mseg_semantic.errors import UserError
from mseg_semantic.model.dinov2 import ADAPTER_KEY, DINOV2_SPECS, DinoV2Backbone
from mseg_semantic.model.hrnet import HRNET_SPECS, init_weights

__all__ = ["CheckpointMismatchError", "LoadReport", "WeightsFileError", "guess_variant", "load_weights", "load_weights_only",
           "read_state_dict", "save_weights", "unwrap_model", "weights_only_problem"]

logger = logging.getLogger(__name__)

HEAD_PREFIX = "head."
CLASSIFIER_PREFIX = "head.classifier."
IMAGENET_ONLY_PREFIXES = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")
KINDS = ("project_training", "project_final", "mseg_release", "imagenet_classification", "dinov2_backbone", "state_dict")
DINOV2_BACKBONE_KEYS = ("cls_token", "pos_embed", "patch_embed.proj.weight")  # all present, at the top level
BACKBONE_PREFIX = "backbone."
TRAINING_MODEL_KEY = "model"  # where a training checkpoint keeps the model's state dict


class WeightsFileError(UserError):
    """A file that is not a readable weights file; the message names it and what was expected."""


class CheckpointMismatchError(UserError):
    """The file's keys or shapes do not fit the model; the message names the file, the key and what to do."""


@dataclass
class LoadReport:
    path: str
    kind: str  # one of KINDS
    loaded: list[str] = field(default_factory=list)  # model keys set from the file
    skipped: list[str] = field(default_factory=list)  # file keys not used (ImageNet classification head, strict=False)
    missing: list[str] = field(default_factory=list)  # model keys the file lacks: they keep their current values
    reinitialised: list[str] = field(default_factory=list)  # head keys re-initialised (reinit_head=True)
    meta: dict = field(default_factory=dict)  # the file's "meta" (project checkpoints), else {}

    def summary(self) -> str:
        lines = [
            f"loaded {len(self.loaded)} tensors from {self.path} ({self.kind})",
            f"  skipped {len(self.skipped)} keys of the file{_examples(self.skipped)}",
            f"  missing {len(self.missing)} model keys (kept as initialised){_examples(self.missing)}",
            f"  re-initialised {len(self.reinitialised)} head keys{_examples(self.reinitialised)}",
        ]
        return "\n".join(lines)

    def __str__(self) -> str:  # the counts and a few names, not thousands of keys
        return self.summary()


def _examples(keys: list[str], limit: int = 4) -> str:
    if not keys:
        return ""
    shown = ", ".join(keys[:limit])
    return f": {shown}" + (f", ... (+{len(keys) - limit})" if len(keys) > limit else "")


_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation", "In PyTorch 2.6")


def _first_useful_line(error: BaseException) -> str:
    """torch's own message without its paragraphs of advice (one of which is to turn the safety off)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(_TORCH_ADVICE)]
    text = (useful[0] if useful else "").split(". ")[0].rstrip(".")
    text = re.sub(r"^WeightsUnpickler error:\s*", "", text)
    return f"{type(error).__name__}: {text[:160]}" if text else type(error).__name__


def weights_only_problem(error: BaseException, path: Path) -> str:
    """One line on why ``torch.load(path, weights_only=True)`` refused the file: objects a weights file has no use
    for (pickled code, custom classes), or not a checkpoint at all (text, HTML, a cut or damaged file)."""
    blocked = re.search(r"GLOBAL\s+([\w.]+)", str(error))
    if blocked:
        return f"{path} holds objects a weights file does not need ({blocked.group(1)}): refused"
    with open(path, "rb") as handle:
        head = handle.read(8)
    if not head:
        return f"{path} is not a PyTorch checkpoint (it is empty)"
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format
        return f"{path} is not a PyTorch checkpoint: a truncated or damaged file ({_first_useful_line(error)})"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # a pickle: torch's legacy format, or another one
        return f"{path} is not a PyTorch checkpoint ({_first_useful_line(error)})"
    return f"{path} is not a PyTorch checkpoint (it starts with {head!r})"


def load_weights_only(path: str | Path, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` on the CPU; a file it refuses is a :class:`WeightsFileError` of one line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. the pickle protocol of a file that is refused anyway
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # noqa: BLE001 - whatever torch.load trips on, the file is not a readable checkpoint
        raise WeightsFileError(weights_only_problem(error, path)) from error


def _as_state_dict(obj: Any, path: Path, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsFileError(f"{path}: {where} is not a non-empty state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsFileError(f"{path}: {where} has entries that are not tensors: {_examples([str(b) for b in bad])}")
    return compat.translate_state_dict(obj, str(path))


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str, dict]:
    """``(state_dict, kind, meta)`` of a checkpoint file, prefixes ``module.`` / ``_orig_mod.`` removed."""
    path = Path(path)
    obj = load_weights_only(path)
    if not isinstance(obj, Mapping):
        raise WeightsFileError(f"{path}: expected a dict of weights, found {type(obj).__name__}")
    if TRAINING_MODEL_KEY in obj and isinstance(obj[TRAINING_MODEL_KEY], Mapping) and "state_dict" not in obj:
        state, kind = _as_state_dict(obj[TRAINING_MODEL_KEY], path, f"{TRAINING_MODEL_KEY!r}"), "project_training"
    elif "state_dict" in obj:
        kind = "project_final" if isinstance(obj.get("meta"), Mapping) else "mseg_release"
        state = _as_state_dict(obj["state_dict"], path, "'state_dict'")
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, kind = _as_state_dict(obj, path, "the file"), "state_dict"
    else:
        top = ", ".join(repr(k) for k in list(obj)[:8])
        raise WeightsFileError(
            f"{path}: unrecognised checkpoint layout (top-level keys: {top}); expected a state dict, "
            "{'state_dict': ...} (MSeg release / project final weights) or {'model': ...} (training checkpoint)"
        )
    if kind in ("state_dict", "mseg_release") and any(k.startswith(IMAGENET_ONLY_PREFIXES) for k in state):
        kind = "imagenet_classification"
    if kind == "state_dict" and all(k in state for k in DINOV2_BACKBONE_KEYS):
        kind = "dinov2_backbone"
    meta = compat.translate_meta(obj["meta"]) if kind.startswith("project_") and isinstance(obj.get("meta"), Mapping) else {}
    return state, kind, meta


def save_weights(state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any], path: str | Path) -> Path:
    """This project's final-weights file ``{"state_dict": ..., "meta": {...}}`` (what evaluation and fine-tuning
    read; ``meta`` names the model, its class count and model taxonomy), written atomically and durably."""
    return atomic_write(path, lambda handle: torch.save({"state_dict": dict(state_dict), "meta": dict(meta)}, handle), durable=True)


def _guess_dinov2(state: Mapping[str, torch.Tensor]) -> str | None:
    """The DINOv2 variant (width, depth, registers) of a model's state dict or of an official backbone file."""
    for prefix in (BACKBONE_PREFIX, ""):
        cls_token = state.get(prefix + "cls_token")
        if cls_token is None:
            continue
        depth = len({k[len(prefix):].split(".")[1] for k in state if k.startswith(prefix + "blocks.")})
        registers = state.get(prefix + "register_tokens")
        found = (cls_token.shape[-1], depth, 0 if registers is None else registers.shape[1])
        for name, spec in DINOV2_SPECS.items():
            if (spec.embed_dim, spec.depth, spec.num_register_tokens) == found:
                return name
    return None


def guess_variant(state: Mapping[str, torch.Tensor]) -> str | None:
    """The HRNet width (first-branch width and stage-1 depth) or DINOv2 variant that matches the state dict, if any."""
    dinov2 = _guess_dinov2(state)
    if dinov2 is not None:
        return dinov2
    first = state.get("transition1.0.0.weight")
    if first is None:
        return None
    stage1_blocks = len({k.split(".")[1] for k in state if k.startswith("layer1.")})
    for name, spec in HRNET_SPECS.items():
        if first.shape[0] == spec.widths[0] and stage1_blocks == spec.stage1_blocks:
            return name
    return None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


def _mismatch_message(path: Path, key: str, file_shape, model_shape, state, model: nn.Module) -> str:
    msg = (
        f"{path}: key {key!r} has shape {tuple(file_shape)} in the file but {tuple(model_shape)} in the model"
    )
    if key.startswith(HEAD_PREFIX):
        classifier = state.get(CLASSIFIER_PREFIX + "weight")
        if classifier is not None and key.startswith(CLASSIFIER_PREFIX):
            ours = getattr(model, "num_classes", model_shape[0])
            msg += (
                f". The file has {classifier.shape[0]} classes, the model {ours}: build the model with "
                f"num_classes={classifier.shape[0]}, or pass reinit_head=True to start a new classifier."
            )
        else:
            msg += ". Pass reinit_head=True to re-initialise the head, or build the model that matches the file."
    else:
        guess = guess_variant(state)
        ours = getattr(model, "name", "") or "this model"
        if guess and guess != ours:
            msg += f". The file looks like {guess!r}, the model is {ours!r}: build_model({guess!r}, ...)."
        else:
            msg += ". The backbone does not match this model; check the model name."
    return msg


def _load_dinov2_backbone(target: nn.Module, path: Path, state: dict[str, torch.Tensor], report: LoadReport, strict: bool) -> None:
    """An official DINOv2 backbone file into ``target.backbone`` (strictly unless ``strict=False``)."""
    backbone = getattr(target, "backbone", None)
    guess = guess_variant(state)
    name = getattr(target, "name", "") or type(target).__name__
    if not isinstance(backbone, DinoV2Backbone):
        raise CheckpointMismatchError(
            f"{path}: a DINOv2 backbone file ({guess or 'unknown width'}), but the model {name!r} has no DINOv2 backbone: "
            f"build_model({guess or 'dinov2_vitb14'!r}, num_classes=...)"
        )
    own = backbone.state_dict()
    hint = f" The file looks like {guess!r}, the model is {name!r}: build_model({guess!r}, ...)." if guess and guess != name else ""
    for key, value in state.items():
        if key in own and value.shape != own[key].shape:
            raise CheckpointMismatchError(
                f"{path}: backbone key {key!r} has shape {tuple(value.shape)} in the file but {tuple(own[key].shape)} in the model.{hint}"
            )
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and ADAPTER_KEY not in "." + k]
    if strict and (unexpected or missing):
        raise CheckpointMismatchError(
            f"{path} (dinov2_backbone): {len(unexpected)} file keys are not in the model's backbone{_examples(unexpected)}; "
            f"{len(missing)} backbone keys are missing from the file{_examples(missing)}.{hint} strict=False loads the rest."
        )
    backbone.load_state_dict(state, strict=strict)
    report.loaded = [BACKBONE_PREFIX + k for k in state if k in own]
    report.skipped = unexpected
    report.missing = [k for k in target.state_dict() if not k.startswith(BACKBONE_PREFIX) or ADAPTER_KEY in k]
    report.missing += [BACKBONE_PREFIX + k for k in missing]


def load_weights(
    model: nn.Module,
    path: str | Path,
    reinit_head: bool = False,
    strict: bool = True,
    log: bool = True,
    contents: tuple[dict[str, torch.Tensor], str, dict] | None = None,
) -> LoadReport:
    """Load a checkpoint into ``model`` in place and return what was loaded, skipped, missing, re-initialised.

    ``reinit_head=True``: the final classifier (``head.classifier``) is re-initialised whatever the file holds, and
    any other head key whose shape differs or that the file lacks is re-initialised instead of an error (for
    fine-tuning to another taxonomy). ``strict=False``: keys the model lacks, or backbone keys the file lacks, are
    reported instead of raised. Shape mismatches outside the head are always an error. ``contents``: what
    :func:`read_state_dict` returned for ``path``, when the caller has already read the file (no second read).
    """
    path = Path(path)
    target = unwrap_model(model)
    state, kind, meta = contents if contents is not None else read_state_dict(path)
    report = LoadReport(path=str(path), kind=kind, meta=meta)
    if kind == "dinov2_backbone":
        _load_dinov2_backbone(target, path, state, report, strict)
        if log:
            logger.info(report.summary())
        return report

    model_name = getattr(target, "name", "")
    if meta.get("model") and model_name and meta["model"] != model_name:
        raise CheckpointMismatchError(
            f"{path}: the file holds a {meta['model']!r} model but the model is {model_name!r}: "
            f"build_model({meta['model']!r}, num_classes={meta.get('num_classes', '...')})"
        )

    own = target.state_dict()
    to_load: dict[str, torch.Tensor] = {}
    reinit_modules: set[str] = set()
    unexpected: list[str] = []
    for key, value in state.items():
        if key not in own:
            if kind == "imagenet_classification" and key.startswith(IMAGENET_ONLY_PREFIXES):
                report.skipped.append(key)
            else:
                unexpected.append(key)
            continue
        if reinit_head and key.startswith(CLASSIFIER_PREFIX):
            reinit_modules.add(key.rsplit(".", 1)[0])
            continue
        if value.shape != own[key].shape:
            if reinit_head and key.startswith(HEAD_PREFIX):
                reinit_modules.add(key.rsplit(".", 1)[0])
                continue
            raise CheckpointMismatchError(_mismatch_message(path, key, value.shape, own[key].shape, state, target))
        to_load[key] = value

    if unexpected:
        if strict:
            guess = guess_variant(state)
            hint = f" The file looks like {guess!r}." if guess and guess != model_name else ""
            lora = [k for k in unexpected if ADAPTER_KEY in k]
            if lora:
                rank = state[lora[0]].shape[0] if lora[0].endswith(".down") else state[lora[0]].shape[1]
                hint += (f" The file has LoRA adapters (rank {rank}): set_backbone_mode(model, 'adapters', lora_rank={rank}) "
                         "before loading, or save weights merged with merge_lora.")
            raise CheckpointMismatchError(
                f"{path}: {len(unexpected)} keys of the file are not in the model{_examples(unexpected)}."
                f"{hint} Is it another architecture (e.g. HRNet-OCR) or width? strict=False skips them."
            )
        report.skipped.extend(unexpected)

    absent = [k for k in own if k not in to_load and k.rsplit(".", 1)[0] not in reinit_modules]
    blocking = []
    for key in absent:
        if key.startswith(HEAD_PREFIX) and reinit_head:
            reinit_modules.add(key.rsplit(".", 1)[0])
        elif key.endswith("num_batches_tracked") or ADAPTER_KEY in key:
            report.missing.append(key)
        elif key.startswith(HEAD_PREFIX) and kind == "imagenet_classification":
            report.missing.append(key)
        else:
            blocking.append(key)
    # a re-initialised head module (a tensor mismatched or is absent) takes none of the file's tensors
    to_load = {k: v for k, v in to_load.items() if k.rsplit(".", 1)[0] not in reinit_modules}
    if blocking:
        if strict:
            raise CheckpointMismatchError(
                f"{path} ({kind}): {len(blocking)} model keys are missing from the file{_examples(blocking)}. "
                "Is it a checkpoint of another model? strict=False keeps their initialisation."
            )
        report.missing.extend(blocking)

    target.load_state_dict(to_load, strict=False)
    report.loaded = list(to_load)

    for module_name in sorted(reinit_modules):
        module = target.get_submodule(module_name)
        init_weights(module)
        report.reinitialised.extend(f"{module_name}.{k}" for k in module.state_dict())

    if log:
        logger.info(report.summary())
    return report
