"""MSeg at the door: MSeg's config files and checkpoints translated into this project's terms at load time.

Nothing below this module knows MSeg's spellings. What is translated:

Config files (:func:`translate_config_pairs`, called by :func:`mseg_semantic.config.load_config`)
- keys MSeg's files carry that mean nothing here (apex, its launcher, its head options, ...) are dropped, and the
  run logs one line listing them;
- renamed keys: ``weight`` -> ``weights``, ``manual_seed`` -> ``seed``, ``save_path`` -> ``output_dir``,
  ``input_file`` -> ``input``;
- ``Distributed.opt_level`` (apex) -> ``TRAIN.precision``: O0 fp32, O1/O2/O3 fp16 autocast with loss scaling
  (the weights and optimizer state always stay fp32, which is what O1/O2 did and O3 lacked);
- the strings MSeg writes for "not set" (``None``, ``default``, an empty value) -> null;
- MSeg's single-dataset placeholder (``dataset: single``, ``dataset_gpu_mapping: {single: [...]}``): the
  mapping becomes null (one dataset is read by every process) and the dataset must be named on the command line;
- the method switches ``DATA.use_mgda`` (MSeg's) and ``CCSA.use_ccsa`` (this project's older configs) ->
  ``TRAIN.method``: a switch set True selects its method; set False it switches its method off (back to ``ce``) if
  that method was selected, and changes nothing otherwise.

Checkpoints (:func:`translate_state_dict`, :func:`translate_meta`, called by :mod:`mseg_semantic.model.loading`)
- the segmentation head, which MSeg's HRNet indexes by position (``last_layer.0/1/3``), is this project's
  ``head.conv`` / ``head.bn`` / ``head.classifier``;
- wrapper prefixes ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) are removed;
- older project checkpoints' ``meta["taxonomy"]`` is ``meta["model_taxonomy"]``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple

from mseg_semantic.errors import UserError

__all__ = [
    "DROPPED_KEYS",
    "METHOD_KEY",
    "METHOD_SWITCHES",
    "MSEG_UNSET_STRINGS",
    "MethodOff",
    "OPT_LEVELS",
    "RENAMED_KEYS",
    "SINGLE_DATASET_PLACEHOLDER",
    "is_mseg_unset",
    "translate_config_pairs",
    "translate_meta",
    "translate_state_dict",
]

# section -> keys of MSeg's files that this project accepts and ignores (each with why, for the docs)
DROPPED_KEYS: dict[str, dict[str, str]] = {
    "DATA": {
        "finetune": "fine-tuning is TRAIN.weights",
        "version": "a format version of MSeg's test configs",
    },
    "TRAIN": {
        "arch": "the architecture is TRAIN.model",
        "network_name": "the architecture is TRAIN.model",
        "layers": "ResNet depth of MSeg's PSPNet; HRNet is TRAIN.model",
        "zoom_factor": "PSPNet's output stride; HRNet always upsamples to the input",
        "aux_weight": "PSPNet's auxiliary loss; HRNet has no auxiliary head",
        "train_gpu": "GPUs are chosen with CUDA_VISIBLE_DEVICES and torchrun --nproc_per_node",
        "batch_size_val": "TEST.batch_size_val is used",
        "epochs": "training is counted in iterations (max_iters / num_examples)",
        "start_epoch": "resume restores the iteration",
        "save_freq": "checkpoints are TRAIN.checkpoint_every",
        "evaluate": "validation during training is TRAIN.val_every",
    },
    "Distributed": {
        "dist_url": "torchrun sets the rendezvous",
        "multiprocessing_distributed": "torchrun starts the processes",
        "world_size": "torchrun sets it",
        "rank": "torchrun sets it",
        "use_apex": "native torch.autocast replaces apex (opt_level is translated to TRAIN.precision)",
        "keep_batchnorm_fp32": "native autocast keeps BatchNorm in fp32",
        "loss_scale": "GradScaler scales the loss dynamically",
    },
    "TEST": {
        "vis_freq": "every prediction is written with TEST.save_predictions",
        "img_name_unique": "predictions keep the image's relative path",
        "small": "MSeg's switch for its small test images",
        "native_img_h": "the image's own size is used",
        "native_img_w": "the image's own size is used",
        "has_prediction": "predictions are always recomputed",
        "test_gpu": "the device is TEST.test_device",
    },
}

# MSeg's key -> this project's key
RENAMED_KEYS: dict[tuple[str, str], tuple[str, str]] = {
    ("TRAIN", "weight"): ("TRAIN", "weights"),
    ("TRAIN", "manual_seed"): ("TRAIN", "seed"),
    ("TRAIN", "save_path"): ("TRAIN", "output_dir"),
    ("TEST", "input_file"): ("TEST", "input"),
}

OPT_LEVEL_KEY = ("Distributed", "opt_level")
OPT_LEVELS = {"O0": "fp32", "O1": "fp16", "O2": "fp16", "O3": "fp16"}
PRECISION_KEY = ("TRAIN", "precision")

# the old method switches -> the method they select (TRAIN.method)
METHOD_KEY = ("TRAIN", "method")
METHOD_SWITCHES: dict[tuple[str, str], str] = {("DATA", "use_mgda"): "mgda", ("CCSA", "use_ccsa"): "ccsa"}


class MethodOff(NamedTuple):
    """A method switch set False: ``TRAIN.method`` goes back to ``ce`` if it was one of ``methods``."""

    methods: tuple[str, ...]


MSEG_UNSET_STRINGS = frozenset({"None", "none", "default", ""})
SINGLE_DATASET_PLACEHOLDER = "single"


def is_mseg_unset(value: Any) -> bool:
    """Whether ``value`` is one of the strings MSeg's files use for "not set"."""
    return isinstance(value, str) and value.strip() in MSEG_UNSET_STRINGS


def dropped_key_names() -> set[str]:
    return {f"{section}.{key}" for section, keys in DROPPED_KEYS.items() for key in keys}


def mseg_key_names() -> list[str]:
    """Every MSeg spelling this module translates, for "did you mean" and the docs."""
    return sorted(dropped_key_names() | {f"{s}.{k}" for s, k in RENAMED_KEYS} | {".".join(OPT_LEVEL_KEY)}
                  | {f"{s}.{k}" for s, k in METHOD_SWITCHES})


def _opt_level_to_precision(value: Any, where: str) -> Any:
    if value is None or is_mseg_unset(value):
        return None
    level = str(value).strip().upper()
    if level not in OPT_LEVELS:
        raise UserError(f"{where}: Distributed.opt_level={value!r} is not one of {', '.join(OPT_LEVELS)} "
                        f"(MSeg's apex levels; or set TRAIN.precision=fp32|bf16|fp16)")
    return OPT_LEVELS[level]


def translate_config_pairs(pairs: Iterable[tuple[tuple[str, str], str, Any]], where: str) -> tuple[list[tuple[tuple[str, str], str, Any]], list[str]]:
    """``((section, key), name as written, value)`` -> the same in this project's keys, and the keys dropped.

    ``name as written`` travels along so that errors name what the user wrote.
    """
    out = []
    dropped = []
    switches = []
    for (section, key), written, value in pairs:
        if (section, key) in METHOD_SWITCHES:
            switches.append((METHOD_SWITCHES[(section, key)], written, _switch_value(value, f"{where}: {section}.{key}")))
            continue
        if key in DROPPED_KEYS.get(section, {}):
            dropped.append(f"{section}.{key}")
            continue
        if (section, key) in RENAMED_KEYS:
            out.append((RENAMED_KEYS[(section, key)], written, value))
        elif (section, key) == OPT_LEVEL_KEY:
            precision = _opt_level_to_precision(value, where)
            if precision is not None:
                out.append((PRECISION_KEY, written, precision))
        elif (section, key) == ("TRAIN", "dataset_gpu_mapping") and isinstance(value, Mapping) and list(value) == [SINGLE_DATASET_PLACEHOLDER]:
            out.append(((section, key), written, None))  # "every GPU reads the one dataset": the default
        else:
            out.append(((section, key), written, value))
    return out + _method_from_switches(switches, out, where), dropped


def _switch_value(value: Any, where: str) -> bool | None:
    if value is None or is_mseg_unset(value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise UserError(f"{where}={value!r}: expected True or False (or set TRAIN.method=ce|mgda|ccsa)")


def _method_from_switches(switches: list[tuple[str, str, bool | None]], translated: list, where: str) -> list:
    """The method switches of one file or command line as one ``TRAIN.method`` assignment (or none)."""
    if not switches:
        return []
    on = [(method, written) for method, written, value in switches if value]
    if len(on) > 1:
        raise UserError(f"{where}: {' and '.join(w for _, w in on)} are both True; pick one baseline (TRAIN.method=mgda or ccsa)")
    explicit = [value for key, _, value in translated if key == METHOD_KEY]
    if explicit:
        if on and explicit[0] != on[0][0]:
            raise UserError(f"{where}: {on[0][1]}=True and TRAIN.method={explicit[0]} disagree; keep TRAIN.method")
        return []
    if on:
        return [(METHOD_KEY, on[0][1], on[0][0])]
    return [(METHOD_KEY, switches[0][1], MethodOff(tuple(method for method, _, value in switches if value is False)))]


# ---- checkpoints -------------------------------------------------------------------------------------------
HEAD_KEY_MAP = {"last_layer.0.": "head.conv.", "last_layer.1.": "head.bn.", "last_layer.3.": "head.classifier."}
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                changed = True
    return key


def translate_key(key: str) -> str:
    key = _strip_wrappers(key)
    for old, new in HEAD_KEY_MAP.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def translate_state_dict(state: Mapping[str, Any], source: str) -> dict[str, Any]:
    """MSeg's (or an older project file's) key names -> this project's; a key that lands twice is an error."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        new = translate_key(key)
        if new in out:
            raise UserError(f"{source}: key {new!r} appears twice (as {key!r} and another spelling of it)")
        out[new] = value
    return out


def translate_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    meta = dict(meta)
    if "taxonomy" in meta and "model_taxonomy" not in meta:
        meta["model_taxonomy"] = meta.pop("taxonomy")
    return meta
