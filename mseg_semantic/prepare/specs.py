"""The 13 datasets MSeg uses: where their archives come from, how they unpack, what they should contain.

Archives live where MSeg's own scripts put them, ``<root>/<top dir>/<archive>`` (e.g.
``<root>/Cityscapes/gtFine_trainvaltest.zip``), so archives already downloaded by hand or by MSeg's scripts
are picked up. What a dataset is (its taxonomy, raw taxonomy, relabeled versions, directory, title) is its rows of
the dataset table (``taxonomy/data/datasets/datasets.tsv``, the rows whose ``prepare`` column is the key); a spec here says
only how to get it: archives, how they unpack, split sizes.
Split sizes are those of MSeg's list files (mseg-api ``dataset_lists``) or, where MSeg used a subset,
of the official split (noted in ``notes``).

Some datasets are published today in another form than the one MSeg downloaded (BDD's 2021 semantic
segmentation download, Mapillary Vistas v1.2 and v2.0, the 2021 full ADE20K release). Their alternative
archive sets are :class:`Release` s: the one present on disk is used, the first one is what a fresh download
asks for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mseg_semantic.errors import UserError, did_you_mean
from mseg_semantic.taxonomy import Catalog, DatasetRecord


@dataclass(frozen=True)
class Archive:
    filename: str
    url: str | None = None  # public URL; None when only a login, a personal link or a browser can fetch it
    login: str | None = None  # "cityscapes" | "wilddash": a form login on the URL's site first (credentials needed)
    personal_url: bool = False  # the owners e-mail a personal link: read as credential ``url`` (MSEG_<DATASET>_URL)
    personal_url_suffix: str = ""  # appended to the personal link (ScanNet mails a base URL)
    manual: str = ""  # the browser steps when no automatic download is possible
    aliases: tuple[str, ...] = ()  # other names the same archive is known under
    needed_for: str = "remap"  # "remap" (the whole chain needs it), "relabel" (only relabeling), "optional"
    digest: str | None = None  # published digest "ALGORITHM:HEX" (md5, sha1, sha256); the SHA-256 is recorded anyway
    size_bytes: int | None = None  # exact size where published
    size: str = ""  # human size hint
    extract: bool = True

    @property
    def names(self) -> tuple[str, ...]:
        return (self.filename, *self.aliases)


@dataclass(frozen=True)
class Release:
    """One of several alternative archive sets of a dataset (``DatasetSpec.releases``)."""

    name: str
    archives: tuple[str, ...]  # file names of this release's archives
    note: str = ""  # how it differs, for messages and `mseg-prepare list`


@dataclass(frozen=True)
class ExtractStep:
    archive: str  # file name of an Archive, or a path (relative to the top dir) of an archive unpacked earlier
    dest: str = ""  # directory relative to the top dir
    strip_prefix: str = ""  # leading member path removed before writing (members without it are skipped)
    include: tuple[str, ...] = ()  # keep only members (after stripping) starting with one of these
    include_suffixes: tuple[str, ...] = ()  # keep only members ending with one of these
    exclude: tuple[str, ...] = ()  # drop members whose path contains one of these fragments
    optional_prefixes: tuple[str, ...] = ()  # removed from members that start with one (a top folder some copies have)


def dataset_dir(root: Path, taxonomy: str) -> Path:
    """Where ``taxonomy``'s files go under the data root (its dataset-table directory)."""
    return Path(root) / Catalog.builtin().dataset(taxonomy).directory


def list_file(root: Path, taxonomy: str, split: str) -> Path:
    """Where ``taxonomy``'s split list goes under the data root (the dataset table's list layout)."""
    return Path(root) / Catalog.builtin().dataset(taxonomy).list_path(split)


def _rows(key: str) -> tuple[DatasetRecord, ...]:
    return tuple(row for row in (Catalog.builtin().dataset(n) for n in Catalog.builtin().dataset_names()) if row.prepare_key == key)


@dataclass(frozen=True)
class DatasetSpec:
    key: str
    registration: str  # "none" | "login" | "personal link" | "browser"
    archives: tuple[Archive, ...]
    extract: tuple[ExtractStep, ...]
    splits: dict[str, int]  # split -> expected number of images
    disk_gb: float  # archives + extracted + remapped, approximate
    notes: str = ""
    releases: tuple[Release, ...] = field(default=())  # alternative archive sets; archives in none are always needed
    source: str = ""  # which form of the dataset is downloaded (shown by `mseg-prepare list`)

    @property
    def _main(self) -> DatasetRecord:
        """The dataset-table row of what remap produces: not a relabeled version, not another row's raw taxonomy."""
        rows = _rows(self.key)
        raws = {row.raw_taxonomy for row in rows}
        return next(row for row in rows if not row.relabeled_from and row.name not in raws)

    @property
    def taxonomy(self) -> str:
        """The taxonomy its labels are remapped to."""
        return self._main.name

    @property
    def raw_taxonomy(self) -> str | None:
        """The taxonomy of the downloaded labels (None: distributed in ``taxonomy``)."""
        return self._main.raw_taxonomy or None

    @property
    def relabeled(self) -> tuple[str, ...]:
        """The relabeled taxonomies `relabel` produces."""
        return tuple(row.name for row in _rows(self.key) if row.relabeled_from)

    @property
    def role(self) -> str:
        return Catalog.builtin().taxonomy(self.taxonomy).role

    @property
    def title(self) -> str:
        return f"{self._main.title} ({self.source})" if self.source else self._main.title

    @property
    def top_dir(self) -> str:
        return self.dataset_dir.split("/")[0]

    @property
    def dataset_dir(self) -> str:
        return self._main.directory

    def archive(self, filename: str) -> Archive | None:
        for archive in self.archives:
            if filename in archive.names:
                return archive
        return None

    def release_of(self, filename: str) -> Release | None:
        for release in self.releases:
            if filename in release.archives:
                return release
        return None


class UnknownDataset(UserError):
    pass


STATE_DIR = ".mseg_prepare"  # under the data root: checksums, extraction and step markers, reports
CITYSCAPES_BASE = "https://www.cityscapes-dataset.com"
WILDDASH_BASE = "https://wilddash.cc"

SPECS: dict[str, DatasetSpec] = {}


def _add(spec: DatasetSpec) -> None:
    SPECS[spec.key] = spec


ADE20K_FULL_2016 = "ADE20K_2016_07_26.zip"
ADE20K_FULL_2021 = "ADE20K_2021_17_01.zip"

_add(DatasetSpec(
    key="ade20k", source="SceneParsing 2016 + a full release for instances", registration="none",
    archives=(
        Archive("ADEChallengeData2016.zip", url="http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
                digest="sha1:219e1696abb36c8ba3a3afe7fb2f4b4606a897c7", size="923 MB"),
        Archive(ADE20K_FULL_2016, url="https://groups.csail.mit.edu/vision/datasets/ADE20K/ADE20K_2016_07_26.zip",
                needed_for="relabel", size="3.8 GB",
                manual=("The full ADE20K release moved: the 2016_07_26 archive (instance masks, needed only to relabel) is "
                        "no longer served at its old link for everyone. Register at https://groups.csail.mit.edu/vision/datasets/ADE20K/ "
                        "and download the 2016 full release ADE20K_2016_07_26.zip (3.8 GB, folder ADE20K_2016_07_26/images/...); "
                        "today's full release ADE20K_2021_17_01.zip is accepted instead (see `mseg-prepare list`).")),
        Archive(ADE20K_FULL_2021, needed_for="relabel", size="~4 GB",
                manual=("Register at https://groups.csail.mit.edu/vision/datasets/ADE20K/ and download the current full "
                        "release ADE20K_2021_17_01.zip (folder ADE20K_2021_17_01/images/ADE/{training,validation}/...).")),
    ),
    releases=(
        Release("full 2016_07_26", (ADE20K_FULL_2016,), "the release MSeg's relabeling records were made on"),
        Release("full 2021_17_01", (ADE20K_FULL_2021,),
                "today's full release: its *_seg.png keep instance ids in the blue channel, but its annotations were "
                "revised since 2016, so `relabel` checks every segment against the label (records whose segment "
                "no longer has the original class are reported) and `--mode mseg` refuses it"),
    ),
    extract=(ExtractStep("ADEChallengeData2016.zip"),
             ExtractStep(ADE20K_FULL_2016, include_suffixes=("_seg.png",)),
             ExtractStep(ADE20K_FULL_2021, include_suffixes=("_seg.png",))),
    splits={"train": 20210, "val": 2000}, disk_gb=7.0,
    notes="Only the *_seg.png instance maps are kept from the full release.",
))

BDD_IMAGES_10K = "bdd100k_images_10k.zip"
BDD_SEM_SEG_LABELS = "bdd100k_sem_seg_labels_trainval.zip"
BDD_SEG_2018 = "bdd100k_seg.zip"
_BDD_PORTAL = ("Register and log in at https://bdd-data.berkeley.edu/ , open the Download page (portal.html#download) "
               "and accept the terms, then click ")

_add(DatasetSpec(
    key="bdd", source="BDD100K semantic segmentation, 10K images", registration="browser",
    archives=(
        Archive(BDD_IMAGES_10K, size="~1 GB", manual=_BDD_PORTAL + f"'10K Images' ({BDD_IMAGES_10K})."),
        Archive(BDD_SEM_SEG_LABELS, size="~0.5 GB", manual=_BDD_PORTAL + f"'Segmentation' under Semantic Segmentation ({BDD_SEM_SEG_LABELS})."),
        Archive(BDD_SEG_2018, aliases=("bdd100k_seg_2018.zip",), size="1.3 GB", manual=(
            "bdd100k_seg.zip (2018, the file MSeg used) is no longer on the portal; if you have it, put it here.")),
    ),
    releases=(
        Release("2021 (10K images + sem_seg labels)", (BDD_IMAGES_10K, BDD_SEM_SEG_LABELS),
                "today's download: bdd100k/images/10k/SPLIT/ID.jpg and bdd100k/labels/sem_seg/masks/SPLIT/ID.png"),
        Release("2018 (bdd100k_seg.zip)", (BDD_SEG_2018,),
                "the archive MSeg used: bdd100k/seg/images/SPLIT/ID.jpg and bdd100k/seg/labels/SPLIT/ID_train_id.png"),
    ),
    extract=(ExtractStep(BDD_IMAGES_10K, include=("bdd100k/images/10k/train/", "bdd100k/images/10k/val/")),
             ExtractStep(BDD_SEM_SEG_LABELS, include=("bdd100k/labels/sem_seg/masks/",)),
             ExtractStep(BDD_SEG_2018)),
    splits={"train": 7000, "val": 1000}, disk_gb=3.0,
    notes="Both downloads name images by the same ids, so MSeg's relabeling records apply to either.",
))

_add(DatasetSpec(
    key="cityscapes", source="gtFine + leftImg8bit", registration="login",
    archives=(
        Archive("gtFine_trainvaltest.zip", url=f"{CITYSCAPES_BASE}/file-handling/?packageID=1", login="cityscapes", size="241 MB",
                manual="Log in at https://www.cityscapes-dataset.com/login/ and download package 1, gtFine_trainvaltest.zip."),
        Archive("leftImg8bit_trainvaltest.zip", url=f"{CITYSCAPES_BASE}/file-handling/?packageID=3", login="cityscapes", size="11 GB",
                manual="Log in at https://www.cityscapes-dataset.com/login/ and download package 3, leftImg8bit_trainvaltest.zip."),
    ),
    extract=(ExtractStep("gtFine_trainvaltest.zip"), ExtractStep("leftImg8bit_trainvaltest.zip")),
    splits={"train": 2975, "val": 500}, disk_gb=24.0,
))

_add(DatasetSpec(
    key="coco", source="Panoptic 2017", registration="none",
    archives=(
        Archive("panoptic_annotations_trainval2017.zip", url="http://images.cocodataset.org/annotations/panoptic_annotations_trainval2017.zip", size="821 MB"),
        Archive("train2017.zip", url="http://images.cocodataset.org/zips/train2017.zip",
                digest="sha1:10ad623668ab00c62c096f0ed636d6aff41faca5", size="18 GB"),
        Archive("val2017.zip", url="http://images.cocodataset.org/zips/val2017.zip",
                digest="sha1:4950dc9d00dbe1c933ee0170f5797584351d2a41", size="778 MB"),
    ),
    extract=(ExtractStep("train2017.zip", dest="images"), ExtractStep("val2017.zip", dest="images"),
             ExtractStep("panoptic_annotations_trainval2017.zip"),
             ExtractStep("annotations/panoptic_train2017.zip", dest="annotations"),
             ExtractStep("annotations/panoptic_val2017.zip", dest="annotations")),
    splits={"train": 118287, "val": 5000}, disk_gb=45.0,
))

_add(DatasetSpec(
    key="idd", source="India Driving Dataset, segmentation part I", registration="personal link",
    archives=(Archive("idd-segmentation.tar.gz", personal_url=True, size="18.5 GB", manual=(
        "Register and log in at https://idd.insaan.iiit.ac.in/ , open Dataset > Download and start "
        "'IDD - Segmentation (IDD 20k Part I)' (idd-segmentation.tar.gz, 18.5 GB) in a browser. Either let the browser "
        "finish, or copy the download link into MSEG_IDD_URL (or 'idd: {url: ...}' in the credentials file) and rerun.")),),
    extract=(ExtractStep("idd-segmentation.tar.gz"),),
    splits={"train": 6993, "val": 981}, disk_gb=40.0,
    notes="Labels are rasterised from the polygon JSONs (idd-40, drawn in file order) and mapped to idd-39.",
))

MAPILLARY_V12 = "mapillary-vistas-dataset_public_v1.2.zip"
MAPILLARY_V20 = "mapillary-vistas-dataset_public_v2.0.zip"
MAPILLARY_V11 = "mapillary-vistas-dataset_public_v1.1.zip"
_MAPILLARY_REQUEST = ("Request the research edition at https://www.mapillary.com/dataset/vistas ; the download page (or the "
                      "e-mailed link) offers ")
_MAPILLARY_LINK = (" Put the link in MSEG_MAPILLARY_URL (or 'mapillary: {url: ...}' in the credentials file), or download "
                   "the file yourself.")

_add(DatasetSpec(
    key="mapillary", source="v1.2; v2.0 and v1.1 accepted", registration="personal link",
    archives=(
        Archive(MAPILLARY_V12, personal_url=True, size="25 GB", manual=(
            _MAPILLARY_REQUEST + f"v1.2 ({MAPILLARY_V12}) and v2.0 ({MAPILLARY_V20}, whose v1.2 labels are used): either works."
            + _MAPILLARY_LINK)),
        Archive(MAPILLARY_V20, personal_url=True, size="~35 GB", manual=(
            _MAPILLARY_REQUEST + f"v2.0 ({MAPILLARY_V20}); its training/v1.2 and validation/v1.2 labels are used." + _MAPILLARY_LINK)),
        Archive(MAPILLARY_V11, personal_url=True, size="25 GB", manual=(
            f"v1.1 ({MAPILLARY_V11}, the archive MSeg used) is no longer offered; if you have it, put it here.")),
    ),
    releases=(
        Release("v1.2", (MAPILLARY_V12,), "v1.1 with faces and licence plates blurred; same labels"),
        Release("v2.0", (MAPILLARY_V20,), "carries the v1.2 labels in {training,validation}/v1.2/ beside its own v2.0 ones"),
        Release("v1.1", (MAPILLARY_V11,), "the archive MSeg used"),
    ),
    extract=(ExtractStep(MAPILLARY_V12, exclude=("testing/",), optional_prefixes=("mapillary-vistas-dataset_public_v1.2/",)),
             ExtractStep(MAPILLARY_V20, exclude=("testing/", "/v2.0/"),
                         optional_prefixes=("mapillary-vistas-dataset_public_v2.0/",)),
             ExtractStep(MAPILLARY_V11, exclude=("testing/",))),
    splits={"train": 18000, "val": 2000}, disk_gb=55.0,
    notes="v1.2 differs from v1.1 only by blurred faces and plates; v2.0's own 124-class labels are not kept.",
))

_add(DatasetSpec(
    key="sunrgbd", source="37-class semantic release", registration="none",
    archives=(Archive("sun_rgbd.tgz", url="http://cvgl.stanford.edu/data2/sun_rgbd.tgz", size="6.4 GB"),),
    extract=(ExtractStep("sun_rgbd.tgz", exclude=("depth/",)),),
    splits={"train": 5285, "val": 5050}, disk_gb=10.0,
    notes="val = the official 5050-image test split (MSeg's own val list keeps a 475-image subset of it).",
))

_add(DatasetSpec(
    key="camvid", source="SegNet split", registration="none",
    archives=(
        Archive("701_StillsRaw_full.zip", url="http://web4.cs.ucl.ac.uk/staff/g.brostow/MotionSegRecData/files/701_StillsRaw_full.zip", size="557 MB"),
        Archive("LabeledApproved_full.zip", url="http://web4.cs.ucl.ac.uk/staff/g.brostow/MotionSegRecData/data/LabeledApproved_full.zip", size="16 MB"),
    ),
    extract=(ExtractStep("701_StillsRaw_full.zip"), ExtractStep("LabeledApproved_full.zip", dest="Labels32-RGB")),
    splits={"train": 367, "val": 101, "test": 233}, disk_gb=1.5,
))

_add(DatasetSpec(
    key="kitti", source="semantic segmentation 2015", registration="personal link",
    archives=(Archive("data_semantics.zip", personal_url=True, size="314 MB", manual=(
        "Register at http://www.cvlibs.net/datasets/kitti/eval_semseg.php?benchmark=semantics2015 and request "
        "data_semantics.zip; cvlibs.net e-mails a download link. Put it in MSEG_KITTI_URL (or 'kitti: {url: ...}' in "
        "the credentials file), or download the file yourself.")),),
    extract=(ExtractStep("data_semantics.zip"),),
    splits={"train": 150, "val": 50}, disk_gb=1.0,
    notes="The 200 labelled training images split 150/50 as in MSeg's lists.",
))

_add(DatasetSpec(
    key="pascal-context", source="VOC 2010 images", registration="none",
    archives=(
        Archive("VOCtrainval_03-May-2010.tar", url="http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",
                digest="md5:da459979d0c395079b5c75ee67908abb", size="1.3 GB"),
        Archive("trainval.tar.gz", url="https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz", size="31 MB"),
    ),
    extract=(ExtractStep("VOCtrainval_03-May-2010.tar", strip_prefix="VOCdevkit/VOC2010/",
                         include=("JPEGImages/", "ImageSets/Main/train.txt", "ImageSets/Main/val.txt")),
             ExtractStep("trainval.tar.gz")),
    splits={"train": 4998, "val": 5105}, disk_gb=3.5,
))

_add(DatasetSpec(
    key="voc2012", source="VOC 2012 + SBD SegmentationClassAug", registration="none",
    archives=(
        Archive("VOCtrainval_11-May-2012.tar", url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                digest="md5:6cd6e144f989b92b3379bac3b3de84fd", size="1.9 GB"),
        Archive("SegmentationClassAug.zip", url="https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip?dl=1", size="63 MB"),
    ),
    extract=(ExtractStep("VOCtrainval_11-May-2012.tar", strip_prefix="VOCdevkit/VOC2012/",
                         include=("JPEGImages/", "ImageSets/Segmentation/")),
             ExtractStep("SegmentationClassAug.zip", exclude=("__MACOSX",))),
    splits={"train": 10582, "val": 1449}, disk_gb=4.5,
))

_add(DatasetSpec(
    key="scannet", source="v2, official 25k-frame subset", registration="personal link",
    archives=(
        Archive("scannet_frames_25k.zip", personal_url=True, personal_url_suffix="v2/tasks/scannet_frames_25k.zip", size="5.6 GB", manual=(
            "Fill in the ScanNet Terms of Use (http://kaldir.vc.in.tum.de/scannet/ScanNet_TOS.pdf) and mail it to "
            "scannet@googlegroups.com; the reply links a download-scannet.py script. Put its BASE_URL value in "
            "MSEG_SCANNET_URL (or 'scannet: {url: ...}' in the credentials file), or download "
            "BASE_URL/v2/tasks/scannet_frames_25k.zip yourself.")),
        Archive("scannetv2_train.txt", url="https://raw.githubusercontent.com/ScanNet/ScanNet/master/Tasks/Benchmark/scannetv2_train.txt", extract=False),
        Archive("scannetv2_val.txt", url="https://raw.githubusercontent.com/ScanNet/ScanNet/master/Tasks/Benchmark/scannetv2_val.txt", extract=False),
    ),
    extract=(ExtractStep("scannet_frames_25k.zip", exclude=("/depth/", "/instance/", "/pose/", "/intrinsics")),),
    splits={"train": 19466, "val": 5436}, disk_gb=12.0,
    notes="Scenes are split by ScanNet's benchmark lists scannetv2_train.txt / scannetv2_val.txt.",
))

_add(DatasetSpec(
    key="wilddash", source="WildDash v1 validation set", registration="login",
    archives=(
        Archive("wd_val_01.zip", url=f"{WILDDASH_BASE}/download/wd_val_01.zip", login="wilddash", size="122 MB",
                manual="Log in at https://wilddash.cc/accounts/login?next=/download and download wd_val_01.zip."),
        # MSeg's script asks for wd_bench_01.zip, which unpacks as wd_both_01/; either name is accepted.
        Archive("wd_both_01.zip", url=f"{WILDDASH_BASE}/download/wd_bench_01.zip", login="wilddash", aliases=("wd_bench_01.zip",),
                needed_for="optional", size="255 MB",
                manual="Optional benchmark images (no labels): download wd_bench_01.zip from https://wilddash.cc/download ."),
    ),
    extract=(ExtractStep("wd_val_01.zip"), ExtractStep("wd_both_01.zip", exclude=("anonymized/",))),
    splits={"val": 70}, disk_gb=0.6,
    notes="Only wd_val_01 (70 labelled images) is used; the benchmark archive is optional.",
))

def get_spec(key: str) -> DatasetSpec:
    if key not in SPECS:
        raise UnknownDataset(f"unknown dataset {key!r}{did_you_mean(key, SPECS)}; known: {', '.join(SPECS)}")
    return SPECS[key]


def parse_dataset_list(text: str | list[str]) -> list[str]:
    """'a,b' or ['a', 'b,c'] or 'all' -> validated keys in catalog order."""
    items = [text] if isinstance(text, str) else list(text)
    keys: list[str] = []
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            if part == "all":
                keys.extend(SPECS)
            elif part in ("train", "test"):
                keys.extend(k for k, s in SPECS.items() if s.role == part)
            else:
                keys.append(get_spec(part).key)
    if not keys:
        raise UnknownDataset("no dataset given; use names from `mseg-prepare list`, 'train', 'test' or 'all'")
    return [k for k in SPECS if k in keys]  # catalog order, each once


def find_present(top: Path, archive: Archive) -> Path | None:
    """The archive's file under ``top`` by any of its names, or None."""
    for name in archive.names:
        if (Path(top) / name).is_file():
            return Path(top) / name
    return None


def extraction_marker(root: Path, key: str, archive: str) -> Path:
    return Path(root) / STATE_DIR / "extracted" / key / (archive.replace("/", "__") + ".json")


def release_in_use(spec: DatasetSpec, root: Path) -> Release | None:
    """The release whose archives are on disk (or were extracted) in full, else the first partly there,
    else the first one (what a fresh download asks for); None for datasets with a single form."""
    if not spec.releases:
        return None
    top = Path(root) / spec.top_dir

    def available(filename: str) -> bool:
        archive = spec.archive(filename)
        return (archive is not None and find_present(top, archive) is not None) or \
            extraction_marker(root, spec.key, filename).is_file()

    for wanted in (all, any):
        for release in spec.releases:
            if wanted(available(name) for name in release.archives):
                return release
    return spec.releases[0]


def archives_in_use(spec: DatasetSpec, root: Path) -> tuple[Archive, ...]:
    """The archives the chain needs: those outside every release, plus the release in use's."""
    release = release_in_use(spec, root)
    return tuple(a for a in spec.archives
                 if spec.release_of(a.filename) is None or (release is not None and a.filename in release.archives))
