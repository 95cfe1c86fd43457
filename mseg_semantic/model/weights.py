"""Released weights: a registry of MSeg's checkpoints, the ImageNet HRNet-W48 backbone and Meta's DINOv2 backbones
(Apache-2.0), and a download cache.

Cache: ``$MSEG_CACHE`` (default ``~/.cache/mseg_semantic``), files under ``<cache>/weights/``.
- A download goes to a partial file beside its target and is renamed into place (``os.replace``) only when
  complete, so a file at the target path is always whole. An interrupted download resumes: HTTP with a
  ``Range`` request on ``NAME.pth.part`` (``mseg_semantic.download.fetch``, shared with
  ``mseg-prepare``), Google Drive through gdown's own resume (``NAME.pth.gdown``).
- Before a digest is recorded the file must be a PyTorch checkpoint (zip with ``data.pkl``, or the legacy
  pickle format): a login page or a truncated file is moved to ``NAME.pth.invalid`` and never recorded. Every
  check (download, verify, use) also loads it with ``torch.load(weights_only=True)``: a file holding pickled
  objects a weights file does not need is moved aside the same way.
- The SHA-256 of every file is recorded in ``<cache>/weights/checksums.json`` the first time it is seen and
  checked on every later use, with the one policy of ``mseg_semantic.download.ChecksumManifest``: a file
  that differs from a published digest is moved to ``NAME.pth.sha256-mismatch``; one that differs from the
  recorded digest is kept and refused until ``download --force`` (fetch again) or ``verify --rerecord``
  (trust the file on disk).
- Offline, the error names the URL and the path to place a hand-downloaded file at.

MSeg's models are HRNetV2-W48; their Google Drive ids and published zero-shot mIoU come from the MSeg release.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from mseg_semantic.download import (
    ChecksumManifest,
    DigestMismatch,
    DownloadError,
    InvalidContent,
    content_problem,
    fetch,
    move_aside,
    part_path,
)
from mseg_semantic.errors import EXIT_BAD_INPUT, EXIT_CHECKS_FAILED, did_you_mean
from mseg_semantic.model.loading import WeightsFileError, load_weights_only
from mseg_semantic.taxonomy import ZERO_SHOT_DATASETS, load_class_names

__all__ = [
    "ChecksumMismatchError",
    "InvalidWeightsFile",
    "OfflineError",
    "UnknownWeightsError",
    "WEIGHTS",
    "WeightsEntry",
    "WeightsError",
    "cache_dir",
    "cached_status",
    "download_weights",
    "resolve_weights",
    "verify_weights",
    "weights_path",
]



def _num_classes(taxonomy: str) -> int:
    """Logits of a released model: 194 (universal), 316 (naive), or the test dataset's classes ("oracle:NAME")."""
    return len(load_class_names(taxonomy.removeprefix("oracle:")))


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    filename: str
    model: str  # a name for mseg_semantic.model.build_model
    num_classes: int | None  # None: a backbone without the segmentation head
    taxonomy: str  # "universal" | "naive" | "oracle:<test dataset>" | "imagenet" | "lvd142m" (self-supervised, no classes)
    gdrive_id: str | None = None
    url: str | None = None  # a direct HTTP(S) link
    manual_url: str | None = None  # a page to download from by hand when no direct link is known
    sha256: str | None = None  # a published checksum; otherwise the first download's is recorded
    zero_shot_miou: dict[str, float] = field(default_factory=dict, compare=False, hash=False)
    harmonic_mean: float | None = None  # of the zero-shot mIoU over the six test datasets, as published
    note: str = ""
    licence: str = ""  # the weights' licence, where the publisher states one

    @property
    def source(self) -> str:
        if self.url:
            return self.url
        if self.gdrive_id:
            return f"https://drive.google.com/uc?id={self.gdrive_id}"
        return self.manual_url or ""


# name, Google Drive id, taxonomy, zero-shot mIoU on ZERO_SHOT_DATASETS (None: not published), harmonic mean
_MSEG_RELEASES = (
    ("mseg-1m", "1g-D6PtXV-UhoIYFcQbiqcXWU2Q2M-zo9", "universal", (70.7, 42.7, 83.3, 62.0, 67.0, 48.2), 59.2),
    ("mseg-3m-480p", "1BeZt6QXLwVQJhOVd_NTnVTmtAO1zJYZ-", "universal", (76.4, 45.9, 81.2, 62.7, 68.2, 49.5), 61.2),
    ("mseg-3m-720p", "1Y9rHOn_8e_qLuOnl4NeOeueU-MXRi3Ft", "universal", (74.7, 44.0, 83.5, 60.4, 67.9, 47.7), 59.8),
    ("mseg-3m-1080p", "1iobea9IW2cWPF6DtM04OvKtDRVNggSb5", "universal", (72.0, 44.0, 84.5, 59.9, 66.5, 49.5), 59.8),
    ("mseg-unrelabeled-1m", "1PHQNttQVn2dZW7ScUvaagc-OmB4eCRRy", "universal", (70.2, 42.7, 82.0, 62.7, 65.5, 43.2), 57.6),
    ("mseg-mgda-1m", "1kqbEPr7LxjMZX_f2Mtieluj1OPu4eLE2", "universal", (68.5, 41.7, 82.9, 61.1, 66.7, 46.7), 58.0),
    ("mseg-naive-1m", "1t4u0C3Li6_4mxLs032EuafKgmpONo3Ws", "naive", (None,) * 6, None),
    ("ade20k-1m", "1xZ72nDuRc53u_WBWO_MazdHxR5HsO68I", "universal", (35.4, 23.9, 52.6, 38.6, 41.6, 42.9), 36.9),
    ("bdd-1m", "1lTrejH7Agg1T61igCFWBpdUrrGs7EBf-", "universal", (14.4, 7.1, 70.7, 52.2, 54.5, 1.4), 6.1),
    ("cityscapes-1m", "18v6yH6mx4zksozn2ap5mCgKo-4ekayCO", "universal", (13.3, 6.8, 76.1, 30.1, 57.6, 1.7), 6.8),
    ("coco-1m", "18H6lfHQTPUyDge_TU1uqoedUFRUyGTuJ", "universal", (73.4, 43.3, 58.7, 38.2, 47.6, 33.4), 45.8),
    ("idd-1m", "1I6Fo5eUXrNBhWzC0BrApGAuKMGuxsrM7", "universal", (14.6, 6.5, 72.1, 41.2, 51.0, 1.6), 6.5),
    ("mapillary-1m", "1TPIFGZWuJXipDI9ceRMS-OdPbeVOi32u", "universal", (22.5, 13.6, 82.1, 55.4, 67.7, 2.1), 9.3),
    ("sunrgbd-1m", "1YRyJGe4gz4IHAKhuDUATqvaKRdR7gyAn", "universal", (10.0, 4.3, 0.1, 1.9, 1.1, 42.6), 0.3),
    ("oracle-voc2012-1m", "1S5DuNCiRlaqTdXJ1TGups0kYEiEohZqC", "oracle:voc2012", (77.8, None, None, None, None, None), None),
    ("oracle-pascal-context-60-1m", "1-V4OOst1Ud9ohPWb-tSFNY2W44fMyZ_i", "oracle:pascal-context-60", (None, 45.8, None, None, None, None), None),
    ("oracle-camvid-11-1m", "1023eornZ2LP5NjDqIeunCIH35Ue38W8d", "oracle:camvid-11", (None, None, 78.8, None, None, None), None),
    ("oracle-kitti-19-1m", "14OkwxoaPK5mrxyL8CeUqGQOFW5U33b8J", "oracle:kitti-19", (None, None, None, None, 58.4, None), None),
    ("oracle-scannet-20-1m", "1njQkFTQ6F9p0nFTBLs2C4LGjAvm0Hydd", "oracle:scannet-20", (None, None, None, None, None, 62.3), None),
)  # fmt: skip


def _mseg_entry(name: str, drive_id: str, taxonomy: str, miou: tuple, harmonic: float | None) -> WeightsEntry:
    return WeightsEntry(
        name=name,
        filename=f"{name}.pth",
        model="hrnet_w48",
        num_classes=_num_classes(taxonomy),
        taxonomy=taxonomy,
        gdrive_id=drive_id,
        zero_shot_miou={d: v for d, v in zip(ZERO_SHOT_DATASETS, miou) if v is not None},
        harmonic_mean=harmonic,
    )


# The official ImageNet HRNet-W48-C weights (HRNet-Image-Classification) are published on OneDrive only, with
# no direct link: download by hand, or give a direct mirror with `mseg-weights download NAME --url URL`.
HRNET_W48_IMAGENET = WeightsEntry(
    name="hrnet_w48_imagenet",
    filename="hrnetv2_w48_imagenet_pretrained.pth",
    model="hrnet_w48",
    num_classes=None,
    taxonomy="imagenet",
    manual_url="https://1drv.ms/u/s!Aus8VCZ_C_33dKvqI6pBZlifgJk",
    note="HRNet-W48-C ImageNet classification weights (backbone init for training); OneDrive, manual download",
)


def _dinov2_entry(name: str) -> WeightsEntry:
    """Meta's DINOv2 backbone-only checkpoints (facebookresearch/dinov2 README and hub/backbones.py): the ``_reg``
    models' files are named ``..._reg4_pretrain.pth``. No checksum is published: the first download's is recorded."""
    arch = name.removesuffix("_reg")
    filename = f"{arch}_reg4_pretrain.pth" if name.endswith("_reg") else f"{arch}_pretrain.pth"
    return WeightsEntry(
        name=name,
        filename=filename,
        model=name,
        num_classes=None,
        taxonomy="lvd142m",
        url=f"https://dl.fbaipublicfiles.com/dinov2/{arch}/{filename}",
        note="DINOv2 self-supervised backbone (LVD-142M), official layout; loads into model.backbone",
        licence="Apache-2.0",
    )


DINOV2_WEIGHTS = ("dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vits14_reg", "dinov2_vitb14_reg", "dinov2_vitl14_reg")

WEIGHTS: dict[str, WeightsEntry] = {e.name: e for e in [_mseg_entry(*row) for row in _MSEG_RELEASES]}
WEIGHTS[HRNET_W48_IMAGENET.name] = HRNET_W48_IMAGENET
WEIGHTS.update((name, _dinov2_entry(name)) for name in DINOV2_WEIGHTS)


class WeightsError(RuntimeError):
    """A weights file could not be found, downloaded or verified; the message says what to do."""

    exit_code = EXIT_CHECKS_FAILED


class UnknownWeightsError(WeightsError):
    exit_code = EXIT_BAD_INPUT


class ManualDownloadError(WeightsError):
    """A released file that only a browser can fetch (a manual step the message describes)."""


class OfflineError(WeightsError):
    """The download source could not be reached."""


class ChecksumMismatchError(WeightsError):
    """A cached file's SHA-256 differs from the recorded (or published) one."""


class InvalidWeightsFile(WeightsError):
    """Not a PyTorch checkpoint (an HTML page, a truncated file); exit 2 when the user placed it."""

    def __init__(self, message: str, exit_code: int = EXIT_CHECKS_FAILED):
        super().__init__(message)
        self.exit_code = exit_code


def cache_dir(override: str | Path | None = None) -> Path:
    """Where weights live: ``override``, else ``$MSEG_CACHE``, else ``~/.cache/mseg_semantic`` (+ ``/weights``)."""
    root = override or os.environ.get("MSEG_CACHE") or Path.home() / ".cache" / "mseg_semantic"
    return Path(root).expanduser() / "weights"


def _entry(name: str | WeightsEntry) -> WeightsEntry:
    if isinstance(name, WeightsEntry):
        return name
    entry = WEIGHTS.get(name)
    if entry is None:
        raise UnknownWeightsError(f"unknown weights {name!r}{did_you_mean(name, WEIGHTS)}; `mseg-weights list` shows the names")
    return entry


def weights_path(name: str | WeightsEntry, cache: str | Path | None = None) -> Path:
    """The path a registry entry has in the cache (whether or not it is there yet)."""
    return cache_dir(cache) / _entry(name).filename


def _manifest(directory: Path) -> ChecksumManifest:
    try:
        return ChecksumManifest(directory / "checksums.json", directory)
    except InvalidContent as error:
        raise InvalidWeightsFile(str(error), error.exit_code) from None


def _way_out(entry: WeightsEntry) -> str:
    return (f"`mseg-weights download {entry.name} --force` downloads it again; if you replaced it on purpose, "
            f"`mseg-weights verify {entry.name} --rerecord` records the file on disk.")


def _check(entry: WeightsEntry, path: Path, *, source: str = "", rerecord: bool = False,
           content_checked: bool = False, placed_by_user: bool = False) -> str:
    """The manifest's policy on one cached file, then its content as ``torch.load(weights_only=True)`` reads it
    (a zip with data.pkl may still hold pickled code); its errors as WeightsErrors."""
    manifest = _manifest(path.parent)
    try:
        digest = manifest.check(
            path, published=f"sha256:{entry.sha256}" if entry.sha256 else None, source=source,
            rehash=True,  # a checkpoint is checked on every use, not only when its size or mtime changed
            rerecord=rerecord, content_checked=content_checked, placed_by_user=placed_by_user, hint=_way_out(entry))
    except InvalidContent as error:
        raise InvalidWeightsFile(f"{entry.name}: {error}", error.exit_code) from None
    except DigestMismatch as error:
        raise ChecksumMismatchError(str(error)) from None
    try:
        load_weights_only(path, mmap=zipfile.is_zipfile(path))  # mmap: the tensors are not read, only mapped
    except WeightsFileError as error:
        manifest.forget(path)
        aside = move_aside(path, ".invalid")
        raise InvalidWeightsFile(f"{entry.name}: {error}; it was moved to {aside} and nothing was recorded",
                                 EXIT_BAD_INPUT if placed_by_user else EXIT_CHECKS_FAILED) from None
    return digest


def verify_weights(name: str | WeightsEntry, cache: str | Path | None = None, rerecord: bool = False) -> str:
    """Check a cached file against its recorded SHA-256 (recording it if this is the first time); return it.

    ``rerecord``: forget the recorded digest and record the file on disk (after replacing it on purpose).
    Raises :class:`WeightsError` when the file is not in the cache, :class:`ChecksumMismatchError` when it
    differs, :class:`InvalidWeightsFile` when it is not a checkpoint (it is then moved to ``NAME.pth.invalid``).
    """
    entry = _entry(name)
    directory = cache_dir(cache)
    path = directory / entry.filename
    if not path.is_file():
        raise WeightsError(f"{entry.name}: not in the cache ({path}); `mseg-weights download {entry.name}`")
    known = _manifest(directory).get(path) is not None
    return _check(entry, path, source="" if known else "placed by hand", rerecord=rerecord, placed_by_user=not known)


def cached_status(name: str | WeightsEntry, cache: str | Path | None = None) -> str:
    """'cached' | 'cached (checksum not recorded)' | 'partial' | 'missing' (no hashing: cheap, for listings)."""
    entry = _entry(name)
    directory = cache_dir(cache)
    path = directory / entry.filename
    if path.is_file():
        recorded = _manifest(directory).get(path) is not None
        return "cached" if recorded else "cached (checksum not recorded)"
    partial = list(directory.glob(entry.filename + ".part")) + list(directory.glob(entry.filename + ".gdown*"))
    return "partial" if partial else "missing"


def _offline_message(entry: WeightsEntry, url: str, dest: Path, error: BaseException) -> str:
    return (
        f"could not download {entry.name} from {url} ({type(error).__name__}: {error}). If this machine is "
        f"offline, download the file elsewhere from {url}, place it at {dest}, then run "
        f"`mseg-weights verify {entry.name}` to record its checksum. A partial download is kept and resumes."
    )


def _gdrive_download(entry: WeightsEntry, staging: Path, dest: Path, quiet: bool) -> None:
    """Download from Google Drive with gdown, which resumes its own partial file next to ``staging``."""
    import gdown
    import requests

    url = entry.source
    try:
        result = gdown.download(id=entry.gdrive_id, output=str(staging), quiet=quiet, resume=True)
    except (requests.exceptions.RequestException, OSError) as error:
        raise OfflineError(_offline_message(entry, url, dest, error)) from error
    except gdown.exceptions.FileURLRetrievalError as error:
        raise WeightsError(
            f"Google Drive refused {entry.name} ({url}): {error}. Drive limits downloads of popular files; "
            f"try again later, or download it in a browser and place it at {dest}, then run "
            f"`mseg-weights verify {entry.name}`."
        ) from error
    if result is None or not staging.is_file():
        raise WeightsError(f"gdown did not produce {staging} for {entry.name} ({url}); try again")
    problem = content_problem(staging, dest.name)
    if problem:  # Drive's quota page arrives as a file too
        aside = dest.with_name(dest.name + ".invalid")
        os.replace(staging, aside)
        raise InvalidWeightsFile(f"{entry.name}: Google Drive sent {problem} ({url}); kept as {aside}, nothing recorded. "
                                 f"Try again later, or download it in a browser and place it at {dest}.")
    os.replace(staging, dest)


def download_weights(
    name: str | WeightsEntry,
    cache: str | Path | None = None,
    force: bool = False,
    url: str | None = None,
    quiet: bool = False,
    timeout: float = 60.0,
) -> Path:
    """Download a registry entry into the cache (if not already there) and return its verified path.

    ``url`` overrides the entry's source with a direct HTTP(S) link (e.g. a mirror of a manual-only file).
    ``force`` downloads again from scratch (the partial files go first; the cached file is replaced, and its
    digest recorded anew, only once the new copy is complete and is a checkpoint).
    """
    entry = _entry(name)
    directory = cache_dir(cache)
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / entry.filename
    staging = dest.with_name(dest.name + ".gdown")

    if force:
        for leftover in [part_path(dest), staging, *directory.glob(staging.name + "*.part")]:
            leftover.unlink(missing_ok=True)
    elif dest.is_file():
        verify_weights(entry, cache)
        return dest

    direct = url or entry.url
    if direct:
        source = direct
        try:
            # one attempt per call: a dropped transfer keeps NAME.pth.part, and the next call resumes it
            fetch(direct, dest, progress=not quiet, timeout=timeout, retries=1)
        except InvalidContent as error:
            raise InvalidWeightsFile(f"{entry.name}: {error}") from None
        except DownloadError as error:
            raise OfflineError(_offline_message(entry, direct, dest, error)) from error
    elif entry.gdrive_id:
        source = entry.source
        _gdrive_download(entry, staging, dest, quiet)
    else:
        raise ManualDownloadError(
            f"{entry.name} has no direct download link. Download {entry.filename} by hand from "
            f"{entry.manual_url} and place it at {dest}, then run `mseg-weights verify {entry.name}`; or give a "
            f"direct link: `mseg-weights download {entry.name} --url URL`."
        )
    _check(entry, dest, source=source, rerecord=True, content_checked=True)
    return dest


def resolve_weights(name_or_path: str | Path, cache: str | Path | None = None, download: bool = False) -> Path:
    """A local checkpoint path as is, or a registry name resolved to its verified cached file.

    With ``download=True`` a registry entry missing from the cache is downloaded; otherwise that is an error
    that says how to download it.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate
    name = str(name_or_path)
    if name not in WEIGHTS:
        raise FileNotFoundError(
            f"{name!r} is neither a file nor a released weights name{did_you_mean(name, WEIGHTS)} "
            f"(`mseg-weights list` shows the names)"
        )
    path = weights_path(name, cache)
    if path.is_file():
        try:
            verify_weights(name, cache)
        except (ChecksumMismatchError, InvalidWeightsFile) as error:
            error.exit_code = EXIT_BAD_INPUT  # a run given weights it cannot use: bad input, as a bad local file is
            raise
        return path
    if download:
        return download_weights(name, cache)
    error = WeightsError(f"{name} is not in the cache ({path}); run `mseg-weights download {name}` (needs a network), "
                         f"or give a local file (weights=PATH), or weights=null to start from random weights")
    error.exit_code = EXIT_BAD_INPUT  # a run given weights that are not there: bad input, as a missing local file is
    raise error
