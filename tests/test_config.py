"""The config system: MSeg's files load, typed overrides, errors that name the key, stages, saving."""

from pathlib import Path

import pytest
import yaml

from mseg_semantic.config import SCHEMA, ConfigError, apply_stage, load_config, schema_markdown, stage_names

REPO = Path(__file__).resolve().parents[1]

# MSeg's own release file, verbatim in form: flow-style mapping over several lines, empty values,
# the string None, MSeg's key names (weight, manual_seed, save_path) and its section placement.
MSEG_STYLE = """\
DATA:
  dataset: [
        ade20k-150-relabeled,
        bdd-relabeled]
  universal: True
  use_mgda: False # to be determined at argument
TRAIN:
  use_naive_taxonomy: False
  arch: hrnet
  network_name:
  layers:
  train_h: 713
  num_examples: 1000000
  dataset_gpu_mapping: {
        'ade20k-150-relabeled': [0],
        'bdd-relabeled': [1],
  }
  batch_size: 14
  manual_seed:
  save_path: default
  weight: /ckpt/imagenet.pth
  resume:
  auto_resume: None
Distributed:
  dist_url: tcp://127.0.0.1:6795
  opt_level: 'O0'
  keep_batchnorm_fp32:
  loss_scale:
"""


@pytest.fixture
def mseg_file(tmp_path):
    path = tmp_path / "mseg.yaml"
    path.write_text(MSEG_STYLE)
    return path


def test_an_mseg_style_file_loads_with_its_meaning(mseg_file):
    cfg = load_config(mseg_file)
    assert cfg.DATA.dataset == ["ade20k-150-relabeled", "bdd-relabeled"]
    assert cfg.TRAIN.dataset_gpu_mapping == {"ade20k-150-relabeled": [0], "bdd-relabeled": [1]}
    assert cfg.TRAIN.weights == "/ckpt/imagenet.pth"  # MSeg's `weight`
    assert cfg.TRAIN.seed == SCHEMA["TRAIN"]["seed"].default  # empty manual_seed: the default
    assert cfg.TRAIN.output_dir is None  # save_path: default
    assert cfg.TRAIN.auto_resume is True  # "None" for a bool: the default
    assert cfg.TRAIN.resume is None and cfg.TRAIN.precision == "fp32"  # opt_level O0
    # keys that mean nothing here are dropped, and listed for the run's log line
    assert cfg.dropped_mseg_keys == ["TRAIN.arch", "TRAIN.network_name", "TRAIN.layers",
                                     "Distributed.dist_url", "Distributed.keep_batchnorm_fp32", "Distributed.loss_scale"]
    assert "layers" not in cfg.TRAIN and "use_apex" not in cfg.Distributed


@pytest.mark.parametrize("path", sorted((REPO / "config").rglob("*.yaml")), ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_config_loads(path):
    load_config(path)


def test_overrides_are_typed_and_win(mseg_file):
    cfg = load_config(mseg_file, ["max_iters=1e3", "TRAIN.batch_size=8", "dataset=[a, b, c]", "base_lr=1", "exp_id=42", "resume=null"])
    assert cfg.TRAIN.max_iters == 1000 and isinstance(cfg.TRAIN.max_iters, int)
    assert cfg.TRAIN.batch_size == 8
    assert cfg.DATA.dataset == ["a", "b", "c"]
    assert cfg.TRAIN.base_lr == 1.0 and isinstance(cfg.TRAIN.base_lr, float)
    assert cfg.TRAIN.exp_id == "42"
    assert cfg.overrides[0] == "max_iters=1e3"


@pytest.mark.parametrize(
    "override,message",
    [
        ("batch_sze=3", r"unknown key 'batch_sze'\. Did you mean 'batch_size'"),
        ("TRAIN.bach_size=2", r"unknown key 'TRAIN\.bach_size'\. Did you mean 'TRAIN\.batch_size'"),
        ("TRIAN.batch_size=2", r"unknown section 'TRIAN'.*Did you mean 'TRAIN'"),
        ("TRAIN.dataset=[a]", r"unknown key 'TRAIN\.dataset'.*'DATA\.dataset'"),
        ("batch_size=abc", r"TRAIN\.batch_size: expected int, got str 'abc'"),
        ("universal=3", r"DATA\.universal: expected bool, got int 3"),
        ("batch_size=2.5", r"TRAIN\.batch_size: expected int"),
        ("momentum=2", r"TRAIN\.momentum=2\.0: must be <= 1"),
        ("base_lr=-0.1", r"TRAIN\.base_lr=-0\.1: must be > 0"),
        ("batch_size=0", r"TRAIN\.batch_size=0: must be > 0"),
        ("workers=-1", r"TRAIN\.workers=-1: must be >= 0"),
        ("grad_clip=-1", r"TRAIN\.grad_clip=-1\.0: must be > 0"),
        ("power=-1", r"TRAIN\.power=-1\.0: must be >= 0"),
        ("train_h=0", r"TRAIN\.train_h=0: must be > 0"),
        ("on_bad_sample=skipp", r"DATA\.on_bad_sample='skipp' is not one of error, skip \(did you mean 'skip'\?\)"),
        ("scale_min=3", r"TRAIN\.scale_min=3\.0 > TRAIN\.scale_max=2\.0"),
        ("sampling_weights={a: -1}", r"DATA\.sampling_weights=.*finite number >= 0"),
        ("export_opset=5", r"TEST\.export_opset=5: must be >= 17"),
        ("opt_level=O7", r"opt_level='O7' is not one of O0, O1, O2, O3"),
        ("max_iters", r"expected key=value"),
        ("dataset=[a", r"not valid YAML"),
    ],
)
def test_bad_overrides_name_the_key_and_suggest(mseg_file, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(mseg_file, [override])


def test_one_key_set_twice_in_one_place_is_an_error(mseg_file, tmp_path):
    both = tmp_path / "both.yaml"
    both.write_text("TRAIN:\n  weight: /a.pth\n  weights: /b.pth\n")  # MSeg's alias and the canonical name
    with pytest.raises(ConfigError, match=r"both\.yaml: 'TRAIN\.weight' and 'TRAIN\.weights' both set TRAIN\.weights"):
        load_config(both)
    twice = tmp_path / "twice.yaml"
    twice.write_text("TRAIN:\n  base_lr: 0.1\nDATA:\n  universal: true\nTRAIN:\n  max_iters: 3\n")
    with pytest.raises(ConfigError, match=r"twice\.yaml: not valid YAML: key 'TRAIN' is given twice \(lines 1 and 5\)"):
        load_config(twice)  # plain YAML would drop the first TRAIN section without a word
    for overrides in (["max_iters=1", "TRAIN.max_iters=2"], ["seed=1", "manual_seed=2"], ["max_iters=1", "max_iters=2"]):
        with pytest.raises(ConfigError, match=r"command line: .* both set TRAIN\.(max_iters|seed)"):
            load_config(mseg_file, overrides)
    staged = tmp_path / "staged.yaml"
    staged.write_text("STAGES:\n  - name: a\n    overrides: {weight: /a, TRAIN.weights: /b}\n")
    with pytest.raises(ConfigError, match=r"stage a: 'weight' and 'TRAIN\.weights' both set TRAIN\.weights"):
        load_config(staged)
    # in different places, the later place wins: the command line over the file's alias
    assert load_config(mseg_file, ["weights=/c.pth"]).TRAIN.weights == "/c.pth"


def test_bad_files_name_the_file_and_key(tmp_path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("TRAIN:\n  base_lr: 0.01\n  momentun: 0.9\n")
    with pytest.raises(ConfigError, match=r"unknown\.yaml: unknown key 'TRAIN\.momentun'\. Did you mean 'TRAIN\.momentum'"):
        load_config(unknown)
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text("TRAIN:\n  train_h: big\n")
    with pytest.raises(ConfigError, match=r"wrong\.yaml: TRAIN\.train_h: expected int, got str 'big'"):
        load_config(wrong_type)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_environment_variables_expand_with_fallbacks(tmp_path, monkeypatch):
    path = tmp_path / "env.yaml"
    path.write_text("DATA:\n  data_root: ${MY_DATA:-/fallback}/mseg\n")
    monkeypatch.delenv("MY_DATA", raising=False)
    assert load_config(path).DATA.data_root == "/fallback/mseg"
    monkeypatch.setenv("MY_DATA", "/data")
    assert load_config(path).DATA.data_root == "/data/mseg"
    monkeypatch.setenv("MSEG_DATA_ROOT", "/from/env")
    assert load_config(None).DATA.data_root == "/from/env"  # the default reads MSEG_DATA_ROOT
    path.write_text("DATA:\n  data_root: ${UNSET_VARIABLE_FOR_TEST}\n")
    with pytest.raises(ConfigError, match="UNSET_VARIABLE_FOR_TEST is not set"):
        load_config(path)


def test_configs_are_read_only_and_updated_copies_are_validated(mseg_file):
    cfg = load_config(mseg_file)
    with pytest.raises(AttributeError, match="read-only"):
        cfg.TRAIN.batch_size = 3
    changed = cfg.updated({"batch_size": 7})
    assert (cfg.TRAIN.batch_size, changed.TRAIN.batch_size) == (14, 7)
    with pytest.raises(ConfigError):
        cfg.updated({"batch_size": "seven"})
    with pytest.raises(AttributeError, match="Did you mean 'batch_size'"):
        cfg.TRAIN.batch_sise


def test_saved_config_reloads_to_the_same_values(mseg_file, tmp_path):
    cfg = load_config(mseg_file, ["max_iters=5", "DATA.data_root=/data"])
    saved = cfg.save(tmp_path / "run" / "config.yaml")
    assert "overrides: max_iters=5 DATA.data_root=/data" in saved.read_text()
    assert load_config(saved).to_dict() == cfg.to_dict()
    assert not list((tmp_path / "run").glob("*.tmp"))  # written through a temporary file, renamed


def test_stages_apply_their_overrides_under_the_command_line(tmp_path):
    path = tmp_path / "staged.yaml"
    path.write_text(yaml.safe_dump({
        "TRAIN": {"max_iters": 100, "base_lr": 0.01},
        "STAGES": [
            {"name": "pre", "overrides": {"DATA.dataset": ["coco-panoptic-133"], "max_iters": 10}},
            {"name": "main", "overrides": {"base_lr": 0.02}},
        ],
    }))
    cfg = load_config(path, ["base_lr=0.5"])
    assert stage_names(cfg) == ["pre", "main"]
    pre, main = apply_stage(cfg, "pre"), apply_stage(cfg, "main")
    assert (pre.TRAIN.max_iters, pre.DATA.dataset, pre.TRAIN.stage) == (10, ["coco-panoptic-133"], "pre")
    assert (main.TRAIN.max_iters, main.TRAIN.base_lr) == (100, 0.5)  # the command line wins over the stage
    with pytest.raises(ConfigError, match="unknown stage 'mian'.*Did you mean 'main'"):
        apply_stage(cfg, "mian")


@pytest.mark.parametrize(
    "stages,message",
    [
        ([{"overrides": {}}], r"STAGES\[0\] needs a 'name'"),
        ([{"name": "a"}, {"name": "a"}], "stage name 'a' appears twice"),
        ([{"name": "a", "overrides": {"max_iter": 3}}], r"stage a: unknown key 'max_iter'.*'max_iters'"),
        ([{"name": "a", "overrides": {"max_iters": "many"}}], r"stage a: TRAIN\.max_iters: expected int"),
        ([{"name": "a", "iters": 3}], r"unknown fields \['iters'\]"),
    ],
)
def test_bad_stages_are_reported(tmp_path, stages, message):
    path = tmp_path / "bad_stages.yaml"
    path.write_text(yaml.safe_dump({"STAGES": stages}))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_config_key_reference_is_the_schema():
    """docs/config.md's key tables are generated from SCHEMA (python -m mseg_semantic.config): keep them in sync."""
    reference = (REPO / "docs" / "config.md").read_text()
    start, end = "<!-- config-keys:start -->\n", "<!-- config-keys:end -->"
    assert start in reference and end in reference, "docs/config.md lost its config-keys markers"
    assert reference.split(start, 1)[1].split(end, 1)[0] == schema_markdown()


@pytest.mark.parametrize("fixture", sorted((REPO / "tests" / "mseg_configs").rglob("*.yaml")), ids=lambda p: p.stem)
def test_msegs_full_release_files_mean_what_the_minimal_shipped_configs_say(fixture):
    """MSeg's own layout (60-odd keys, apex, aliases, "None" strings) loads unchanged and resolves to the same run as
    the shipped config that lists only what differs from the defaults."""
    relative = fixture.relative_to(REPO / "tests" / "mseg_configs")
    mseg, shipped = load_config(fixture).to_dict(), load_config(REPO / "config" / "train" / relative).to_dict()
    # the one deliberate difference: MSeg pins nccl; the shipped files leave it to the machine (nccl on GPUs)
    assert mseg["Distributed"].pop("dist_backend") == "nccl" and shipped["Distributed"].pop("dist_backend") is None
    assert mseg == shipped
    assert len(load_config(fixture).dropped_mseg_keys) >= 15  # apex, launcher and PSPNet keys, listed in the run's log


def test_the_old_method_switches_are_read_as_train_method(tmp_path):
    """DATA.use_mgda (MSeg's) and CCSA.use_ccsa (this project's older files) keep working: they set TRAIN.method."""
    assert load_config(None, ["use_mgda=True"]).TRAIN.method == "mgda"
    assert load_config(None, ["CCSA.use_ccsa=True"]).TRAIN.method == "ccsa"
    assert load_config(None, ["method=mgda", "use_ccsa=False"]).TRAIN.method == "mgda"  # switching another method off: no change
    path = tmp_path / "mgda.yaml"
    path.write_text("DATA:\n  use_mgda: True\nCCSA:\n  use_ccsa: False\n")
    assert load_config(path).TRAIN.method == "mgda"
    assert load_config(path, ["use_mgda=False"]).TRAIN.method == "ce"  # the command line switches it off
    both = tmp_path / "both.yaml"
    both.write_text("DATA:\n  use_mgda: True\nCCSA:\n  use_ccsa: True\n")
    with pytest.raises(ConfigError, match=r"DATA.use_mgda and CCSA.use_ccsa are both True; pick one baseline"):
        load_config(both)
    disagree = tmp_path / "disagree.yaml"
    disagree.write_text("DATA:\n  use_mgda: True\nTRAIN:\n  method: ccsa\n")
    with pytest.raises(ConfigError, match=r"use_mgda=True and TRAIN.method=ccsa disagree"):
        load_config(disagree)
    with pytest.raises(ConfigError, match=r"use_mgda='maybe': expected True or False"):
        load_config(None, ["use_mgda=maybe"])
