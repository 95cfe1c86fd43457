"""HRNet architecture: MSeg's key layout, parameter count, forward on every width, numerics, memory format."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mseg_semantic.compat import HEAD_KEY_MAP, translate_key
from mseg_semantic.model import build_model
from mseg_semantic.model import hrnet as hrnet_module

REFERENCE_MANIFEST = Path("/work/shared/reference/hrnet_w48_seg_194_state_dict_shapes.json")

# Fingerprint of MSeg's HRNetV2-W48 (194 classes) state dict: the key count and the SHA-256 of the sorted
# "key:d0,d1,..." lines of the reference manifest, so that CI (without the reference files) checks it too.
MSEG_W48_KEY_COUNT = 1839
MSEG_W48_FINGERPRINT = "394138dae752f3cfae836fc4cbcac915c5f099c2de614e61c43ce5d4e06fb9c2"
MSEG_W48_SAMPLE_KEYS = {
    "conv1.weight": (64, 3, 3, 3),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "transition1.0.0.weight": (48, 256, 3, 3),
    "transition1.1.0.0.weight": (96, 256, 3, 3),
    "transition2.2.0.0.weight": (192, 96, 3, 3),
    "transition3.3.0.0.weight": (384, 192, 3, 3),
    "stage2.0.fuse_layers.0.1.0.weight": (48, 96, 1, 1),
    "stage4.2.fuse_layers.3.0.2.1.running_var": (384,),
    "stage4.2.fuse_layers.3.1.1.0.weight": (384, 96, 3, 3),
    "last_layer.0.weight": (720, 720, 1, 1),
    "last_layer.0.bias": (720,),
    "last_layer.3.weight": (194, 720, 1, 1),
    "last_layer.3.bias": (194,),
}


def _fingerprint(pairs) -> str:
    lines = sorted(f"{key}:{','.join(str(d) for d in shape)}" for key, shape in pairs)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@pytest.fixture(scope="module")
def w48() -> nn.Module:
    return build_model("hrnet_w48", num_classes=194)


def _in_mseg_names(key: str) -> str:
    """Our key as MSeg's checkpoints spell it (the inverse of compat's head translation)."""
    for mseg, ours in HEAD_KEY_MAP.items():
        if key.startswith(ours):
            return mseg + key[len(ours):]
    return key


def test_w48_state_dict_matches_mseg_fingerprint(w48):
    shapes = [(_in_mseg_names(k), tuple(v.shape)) for k, v in w48.state_dict().items()]
    assert len(shapes) == MSEG_W48_KEY_COUNT
    assert _fingerprint(shapes) == MSEG_W48_FINGERPRINT
    for key, shape in MSEG_W48_SAMPLE_KEYS.items():
        assert tuple(w48.state_dict()[translate_key(key)].shape) == shape, key


def test_w48_state_dict_matches_reference_manifest(w48):
    if not REFERENCE_MANIFEST.is_file():
        pytest.skip(f"reference manifest not present ({REFERENCE_MANIFEST}); the embedded fingerprint still checks it")
    reference = [(k, tuple(s)) for k, s in json.loads(REFERENCE_MANIFEST.read_text())]
    ours = [(k, tuple(v.shape)) for k, v in w48.state_dict().items()]
    assert ours == [(translate_key(k), s) for k, s in reference]  # MSeg's keys, translated: ours, same shapes and order
    assert _fingerprint(reference) == MSEG_W48_FINGERPRINT


def test_w48_parameter_count(w48):
    assert sum(p.numel() for p in w48.parameters()) == 65_985_554


def test_w48_forward_small_input(w48):
    w48.eval()
    with torch.no_grad():
        logits, emb = w48(torch.randn(1, 3, 64, 64), return_features=True)
    assert logits.shape == (1, 194, 64, 64)
    assert emb.shape == (1, 720, 16, 16)


@pytest.mark.parametrize("name", [n for n in hrnet_module.HRNET_SPECS if n != "hrnet_w48"])
def test_forward_every_width_train_and_eval(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5)
    x = torch.randn(2, 3, 57, 70)  # odd, unequal sizes: branch sizes round up, fusion resamples exactly
    model.train()
    logits, emb = model(x, return_features=True)
    assert logits.shape == (2, 5, 57, 70)
    assert emb.shape == (2, sum(model.spec.widths), 15, 18)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 5, 57, 70)


def test_official_widths():
    specs = hrnet_module.HRNET_SPECS
    assert specs["hrnet_w18_small"].widths == (18, 36, 72, 144)
    assert (specs["hrnet_w18_small"].modules, specs["hrnet_w18_small"].blocks) == ((1, 3, 2), 2)
    assert specs["hrnet_w32"].widths == (32, 64, 128, 256)
    assert not specs["hrnet_tiny"].official


def test_batchnorm_momentum_is_mseg_s():
    model = build_model("hrnet_tiny", num_classes=3)
    assert {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {0.01}  # PyTorch's default: 0.1


def test_unknown_model_name_suggests():
    with pytest.raises(ValueError, match="hrnet_w48"):
        build_model("hrnet_48", num_classes=3)


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = build_model("hrnet_tiny", num_classes=4)
    _randomise(model)
    model.train()
    logits = model(torch.randn(2, 3, 40, 40))
    F.cross_entropy(logits, torch.randint(0, 4, (2, 40, 40))).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


# ---------------------------------------------------------------- numerics against a functional reference


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and BN statistic a non-trivial value (the default init makes activations ~0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif t.dim() == 4:
                fan_in = t.shape[1] * t.shape[2] * t.shape[3]
                t.copy_(torch.randn(t.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            else:  # BN weight
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return model


def _reference_forward(sd, x, fuse_align=False, head_align=False, final_align=True):
    """HRNetV2 written directly from the reference README over a state dict (eval-mode BatchNorm)."""

    def conv(p, t, stride=1):
        w = sd[p + ".weight"]
        return F.conv2d(t, w, sd.get(p + ".bias"), stride, w.shape[-1] // 2)

    def bn(p, t):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"])

    def block(p, t):
        out = F.relu(bn(p + ".bn1", conv(p + ".conv1", t)))
        if p + ".conv3.weight" in sd:  # Bottleneck
            out = F.relu(bn(p + ".bn2", conv(p + ".conv2", out)))
            out = bn(p + ".bn3", conv(p + ".conv3", out))
        else:
            out = bn(p + ".bn2", conv(p + ".conv2", out))
        shortcut = bn(p + ".downsample.1", conv(p + ".downsample.0", t)) if p + ".downsample.0.weight" in sd else t
        return F.relu(out + shortcut)

    def count(prefix):
        i = 0
        while any(k.startswith(f"{prefix}.{i}.") for k in sd):
            i += 1
        return i

    t = F.relu(bn("bn1", conv("conv1", x, 2)))
    t = F.relu(bn("bn2", conv("conv2", t, 2)))
    for i in range(count("layer1")):
        t = block(f"layer1.{i}", t)
    xs = [t]
    for stage in (2, 3, 4):
        n_branches = count(f"stage{stage}.0.branches")
        new = []
        for i in range(n_branches):
            p = f"transition{stage - 1}.{i}"
            if f"{p}.0.weight" in sd:  # same resolution, new width
                new.append(F.relu(bn(p + ".1", conv(p + ".0", xs[i]))))
            elif f"{p}.0.0.weight" in sd:  # new branch from the lowest-resolution one
                u = xs[-1]
                for s in range(count(p)):
                    u = F.relu(bn(f"{p}.{s}.1", conv(f"{p}.{s}.0", u, 2)))
                new.append(u)
            else:
                new.append(xs[i])
        xs = new
        for m in range(count(f"stage{stage}")):
            p = f"stage{stage}.{m}"
            xs = [
                _run_branch(block, f"{p}.branches.{b}", xs[b], count(f"{p}.branches.{b}")) for b in range(n_branches)
            ]
            fused = []
            for dst in range(n_branches):
                total = 0
                for src in range(n_branches):
                    q = f"{p}.fuse_layers.{dst}.{src}"
                    if src == dst:
                        y = xs[src]
                    elif src > dst:
                        y = bn(q + ".1", conv(q + ".0", xs[src]))
                        y = F.interpolate(y, size=xs[dst].shape[-2:], mode="bilinear", align_corners=fuse_align)
                    else:
                        y = xs[src]
                        for s in range(dst - src):
                            y = bn(f"{q}.{s}.1", conv(f"{q}.{s}.0", y, 2))
                            if s < dst - src - 1:
                                y = F.relu(y)
                    total = total + y
                fused.append(F.relu(total))
            xs = fused
    size = xs[0].shape[-2:]
    cat = torch.cat(
        [xs[0]] + [F.interpolate(b, size=size, mode="bilinear", align_corners=head_align) for b in xs[1:]], 1
    )
    emb = F.relu(bn("head.bn", conv("head.conv", cat)))
    low = conv("head.classifier", emb)
    return F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=final_align), emb


def _run_branch(block, prefix, t, n):
    for j in range(n):
        t = block(f"{prefix}.{j}", t)
    return t


@pytest.mark.parametrize("name", ["hrnet_tiny", "hrnet_w18_small"])
def test_numerics_match_reference_forward(name):
    torch.manual_seed(0)
    model = _randomise(build_model(name, num_classes=6)).eval()
    x = torch.randn(1, 3, 45, 61)
    sd = model.state_dict()
    with torch.no_grad():
        logits, emb = model(x, return_features=True)
        ref_logits, ref_emb = _reference_forward(sd, x)
        torch.testing.assert_close(emb, ref_emb, rtol=1e-4, atol=1e-5)
        # the logits reach 5e4 here: where neighbours of opposite sign blend to a small value, the two upsamplings
        # (the model's exact x4 blends, the reference's F.interpolate) differ by a few roundings of the largest logit
        rounding = 4 * torch.finfo(torch.float32).eps * float(ref_logits.abs().max())
        torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=max(1e-5, rounding))
        # the comparison is sensitive to the resampling mode of each stage
        for flags in [dict(fuse_align=True), dict(head_align=True), dict(final_align=False)]:
            other, _ = _reference_forward(sd, x, **flags)
            assert not torch.allclose(logits, other, rtol=1e-4, atol=1e-5), flags


def test_final_upsampling_keeps_corners():
    """align_corners=True at the end: the corner logits equal the 1/4-resolution classifier output's corners."""
    model = _randomise(build_model("hrnet_tiny", num_classes=3)).eval()
    with torch.no_grad():
        logits, emb = model(torch.randn(1, 3, 50, 66), return_features=True)
        low = model.head.classifier(emb)
    torch.testing.assert_close(logits[..., 0, 0], low[..., 0, 0])
    torch.testing.assert_close(logits[..., -1, -1], low[..., -1, -1])
    torch.testing.assert_close(logits[..., 0, -1], low[..., 0, -1])


# ---------------------------------------------------------------- memory format, SyncBatchNorm, GPU


def test_channels_last_matches_contiguous():
    model = _randomise(build_model("hrnet_tiny", num_classes=5)).eval()
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    # other kernels sum in another order: compare relative to the logits' scale
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_channels_last_forward_backward():
    model = build_model("hrnet_w18_small", num_classes=7).cuda().to(memory_format=torch.channels_last).train()
    x = torch.randn(2, 3, 129, 129, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.shape == (2, 7, 129, 129)
    logits.float().mean().backward()
    assert model.conv1.weight.grad is not None


def test_upsampled_branches_keep_the_autocast_dtype_so_no_sum_is_promoted(monkeypatch):
    """CUDA's autocast computes bilinear upsampling in fp32; the fusion sums and ReLUs that receive an upsampled
    branch must still run in bf16 (they were promoted to fp32 before). Emulated on the CPU: interpolation is given
    CUDA's policy, and every add/relu output is checked."""
    from torch.utils._python_dispatch import TorchDispatchMode

    interpolate = F.interpolate

    def as_cuda_autocast(x, *args, **kwargs):
        with torch.autocast("cpu", enabled=False):
            return interpolate(x.float(), *args, **kwargs)

    class Fp32Sums(TorchDispatchMode):
        found = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.__name__.split(".")[0] in ("add", "relu", "relu_") and out.dtype == torch.float32 and out.dim() == 4:
                Fp32Sums.found += 1
            return out

    monkeypatch.setattr(hrnet_module.F, "interpolate", as_cuda_autocast)
    model = build_model("hrnet_tiny", num_classes=4).train()
    with Fp32Sums(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(1, 3, 64, 64))
    assert Fp32Sums.found == 0
    assert logits.dtype == torch.float32  # the final logits are upsampled in fp32 for the loss
    monkeypatch.setattr(hrnet_module, "_upsample", lambda x, size, align_corners: as_cuda_autocast(x, size=size, mode="bilinear", align_corners=align_corners))
    with Fp32Sums(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(1, 3, 64, 64))
    assert Fp32Sums.found > 0  # the check sees the promotion the plain interpolation causes
