"""HRNetV2 for semantic segmentation, laid out exactly as MSeg's released checkpoints (no OCR).

HRNetV2 (Wang et al., "Deep High-Resolution Representation Learning for Visual Recognition", TPAMI 2020)
keeps a high-resolution branch through the whole network and adds lower-resolution branches stage by stage,
exchanging information between them after every module ("fusion"). The segmentation head concatenates all
branches at 1/4 of the input resolution.

Backbone parameter and buffer names are HRNet's own, as in MSeg's state dicts and the official ImageNet
backbones (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``layer1``, ``transition1..3``, ``stage2..4.M.branches`` /
``.fuse_layers``). The segmentation head has named parts (``head.conv``, ``head.bn``, ``head.classifier``);
MSeg's checkpoints index it by position (``last_layer.0/1/3``), which :mod:`mseg_semantic.compat` translates.

Resampling, as in MSeg (the choice changes the numbers, so it is fixed here):
- branch fusion upsamples lower branches to the higher one with bilinear, ``align_corners=False``;
- the head upsamples branches 2-4 to branch 1 with bilinear, ``align_corners=False``;
- the logits are upsampled from 1/4 to the input size with bilinear, ``align_corners=True``, in fp32 (for an input
  of 4k + 1 pixels, e.g. 713, as exact x4 arithmetic: :mod:`mseg_semantic.model.upsample`).

Under CUDA autocast ``F.interpolate`` runs in fp32, which would promote every fusion sum, ReLU and residual add
that receives an upsampled branch to fp32 (15-19% of a bf16 step's memory traffic); :func:`_upsample` hands the
sum a tensor of the branch's own dtype instead. Without autocast, and on CPUs (whose autocast keeps the
interpolation in bf16), nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mseg_semantic.errors import UnknownNameError, did_you_mean
from mseg_semantic.model.upsample import upsample_logits

__all__ = [
    "BN_MOMENTUM",
    "BatchNorm2d",
    "HRNET_SPECS",
    "HRNet",
    "HRNetSpec",
    "MODEL_NAMES",
    "build_model",
    "init_weights",
]


@dataclass(frozen=True)
class HRNetSpec:
    widths: tuple[int, int, int, int]  # channels of branches 1-4 (the "W" in HRNet-W48 is widths[0])
    modules: tuple[int, int, int]  # high-resolution modules in stages 2, 3, 4
    blocks: int  # BasicBlocks per branch in every module of stages 2-4
    stage1_blocks: int  # Bottlenecks in stage 1 (layer1)
    stem_width: int = 64  # stem conv channels = stage-1 Bottleneck planes (stage 1 outputs 4x this)
    official: bool = True  # False: a width of this project's own, for tests and CPU demos only


# Official widths from the HRNet configs (HRNet-Semantic-Segmentation / HRNet-Image-Classification);
# hrnet_w18_small is HRNetV2-W18-Small-v2. hrnet_tiny is not an official width: it exists so tests and
# CPU demos run in seconds, and no pretrained weights exist for it.
HRNET_SPECS: dict[str, HRNetSpec] = {
    "hrnet_w18_small": HRNetSpec(widths=(18, 36, 72, 144), modules=(1, 3, 2), blocks=2, stage1_blocks=2),
    "hrnet_w18": HRNetSpec(widths=(18, 36, 72, 144), modules=(1, 4, 3), blocks=4, stage1_blocks=4),
    "hrnet_w32": HRNetSpec(widths=(32, 64, 128, 256), modules=(1, 4, 3), blocks=4, stage1_blocks=4),
    "hrnet_w48": HRNetSpec(widths=(48, 96, 192, 384), modules=(1, 4, 3), blocks=4, stage1_blocks=4),
    "hrnet_tiny": HRNetSpec(
        widths=(8, 16, 32, 64), modules=(1, 1, 1), blocks=1, stage1_blocks=1, stem_width=16, official=False
    ),
}
MODEL_NAMES: tuple[str, ...] = tuple(HRNET_SPECS)

BN_MOMENTUM = 0.01  # MSeg's value (PyTorch's default is 0.1)


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` without the ``num_batches_tracked += 1`` of every training forward when ``momentum`` is set.

    The counter is read only when ``momentum`` is None (cumulative average); with MSeg's momentum it is one extra
    kernel per BatchNorm and step (300 in an HRNet-W48 step). The buffer stays, so state dicts keep their keys (MSeg's
    checkpoints and this project's load and save as before); it keeps the value it was loaded with.
    ``SyncBatchNorm.convert_sync_batchnorm`` turns it into a plain SyncBatchNorm, which counts again.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.momentum is None:
            return super().forward(input)
        self._check_input_dim(input)
        # as nn.BatchNorm2d: batch statistics in training (or without running statistics); the running ones are
        # updated only in training, and only when tracked
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        tracked = not self.training or self.track_running_stats
        return F.batch_norm(input, self.running_mean if tracked else None, self.running_var if tracked else None,
                            self.weight, self.bias, bn_training, self.momentum, self.eps)


def _bn(channels: int) -> nn.BatchNorm2d:
    return BatchNorm2d(channels, momentum=BN_MOMENTUM)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv_bn(in_ch: int, out_ch: int, kernel_size: int, stride: int, relu: bool) -> nn.Sequential:
    """Conv (no bias) + BN (+ ReLU): keys ``0.weight`` and ``1.*``, as in every HRNet transition/fuse layer."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        _bn(out_ch),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, planes: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, planes)
        self.bn1 = _bn(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = _bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if in_ch == planes else _conv_bn(in_ch, planes, 1, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, planes: int) -> None:
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, kernel_size=1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, kernel_size=1, bias=False)
        self.bn3 = _bn(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if in_ch == out_ch else _conv_bn(in_ch, out_ch, 1, 1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


def _fuse_path(widths: list[int], src: int, dst: int) -> nn.Module:
    """The path that brings branch ``src`` to branch ``dst`` before the sum."""
    if src == dst:
        return nn.Identity()
    if src > dst:  # lower resolution: 1x1 conv to dst's width; the upsampling happens in forward
        return _conv_bn(widths[src], widths[dst], 1, 1, relu=False)
    # higher resolution: (dst - src) stride-2 3x3 convs; width changes only in the last one, which has no ReLU
    steps = []
    for step in range(dst - src):
        last = step == dst - src - 1
        steps.append(_conv_bn(widths[src], widths[dst] if last else widths[src], 3, 2, relu=not last))
    return nn.Sequential(*steps)


def _upsample(x: torch.Tensor, size, align_corners: bool) -> torch.Tensor:
    """Bilinear resize whose output keeps the input's dtype (autocast computes it in fp32, then it is cast back)."""
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)
    return y if y.dtype == x.dtype else y.to(x.dtype)


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks, then every output branch sums all (resampled) inputs and applies ReLU."""

    def __init__(self, widths: list[int], blocks: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(*[BasicBlock(w, w) for _ in range(blocks)]) for w in widths
        )
        n = len(widths)
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(_fuse_path(widths, src, dst) for src in range(n)) for dst in range(n)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        fused = []
        for dst, paths in enumerate(self.fuse_layers):
            size = xs[dst].shape[-2:]
            total = None
            for src, path in enumerate(paths):
                y = path(xs[src])
                if src > dst:
                    y = _upsample(y, size, align_corners=False)
                total = y if total is None else total + y
            fused.append(self.relu(total))
        return fused


def _transition(in_widths: list[int], out_widths: list[int]) -> nn.ModuleList:
    """From one stage's branches to the next: adapt widths of existing branches, add one new branch.

    A branch whose width is unchanged passes through (Identity: no parameters, so the key indices stay as in
    MSeg, where such entries are None). The new branch is made from the lowest-resolution existing branch.
    """
    layers = []
    for i, out_w in enumerate(out_widths):
        if i < len(in_widths):
            if in_widths[i] == out_w:
                layers.append(nn.Identity())
            else:
                layers.append(_conv_bn(in_widths[i], out_w, 3, 1, relu=True))
        else:
            steps = []
            for step in range(i + 1 - len(in_widths)):
                last = step == i - len(in_widths)
                steps.append(_conv_bn(in_widths[-1], out_w if last else in_widths[-1], 3, 2, relu=True))
            layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)


class SegmentationHead(nn.Module):
    """HRNetV2's head on the concatenated branches: 1x1 conv + BN + ReLU (the pixel embedding), 1x1 classifier."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.bn = _bn(channels)
        self.relu = nn.ReLU(inplace=True)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.relu(self.bn(self.conv(x)))
        return self.classifier(emb), emb


class HRNet(nn.Module):
    """HRNetV2 segmentation network: ``model(x)`` -> logits N x C x H x W at the input's size.

    ``model(x, return_features=True)`` -> ``(logits, emb)`` where ``emb`` (N x E x H/4 x W/4, E = sum of
    the branch widths) is the head's feature map before the final 1x1 classifier.
    """

    def __init__(self, spec: HRNetSpec, num_classes: int, name: str = "") -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.name = name
        self.spec = spec
        self.num_classes = num_classes
        stem = spec.stem_width

        self.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = _bn(stem)
        self.conv2 = nn.Conv2d(stem, stem, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = _bn(stem)
        self.relu = nn.ReLU(inplace=True)

        stage1_out = stem * Bottleneck.expansion
        self.layer1 = nn.Sequential(
            *[Bottleneck(stem if i == 0 else stage1_out, stem) for i in range(spec.stage1_blocks)]
        )

        widths = list(spec.widths)
        self.transition1 = _transition([stage1_out], widths[:2])
        self.stage2 = self._stage(widths[:2], spec.modules[0], spec.blocks)
        self.transition2 = _transition(widths[:2], widths[:3])
        self.stage3 = self._stage(widths[:3], spec.modules[1], spec.blocks)
        self.transition3 = _transition(widths[:3], widths)
        self.stage4 = self._stage(widths, spec.modules[2], spec.blocks)

        self.embedding_dim = sum(widths)
        self.head = SegmentationHead(self.embedding_dim, num_classes)
        init_weights(self)

    @staticmethod
    def _stage(widths: list[int], modules: int, blocks: int) -> nn.Sequential:
        return nn.Sequential(*[HighResolutionModule(widths, blocks) for _ in range(modules)])

    @staticmethod
    def _apply_transition(transition: nn.ModuleList, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        # a new branch is made from the lowest-resolution existing one
        return [layer(xs[min(i, len(xs) - 1)]) for i, layer in enumerate(transition)]

    def forward_backbone(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four branch outputs, at 1/4, 1/8, 1/16 and 1/32 of the input resolution."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        xs = self.stage2(self._apply_transition(self.transition1, [x]))
        xs = self.stage3(self._apply_transition(self.transition2, xs))
        return self.stage4(self._apply_transition(self.transition3, xs))

    def forward(self, x: torch.Tensor, return_features: bool = False, upsample: bool = True):
        """Logits at the input size (``upsample=False``: at 1/4 of it, for a loss that upsamples them itself)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images N x 3 x H x W, got shape {tuple(x.shape)}")
        xs = self.forward_backbone(x)
        high = xs[0].shape[-2:]
        upsampled = [xs[0]] + [_upsample(b, high, align_corners=False) for b in xs[1:]]
        logits, emb = self.head(torch.cat(upsampled, dim=1))
        if upsample:
            logits = upsample_logits(logits, x.shape[-2:])
        if return_features:
            return logits, emb
        return logits


def init_weights(module: nn.Module) -> None:
    """MSeg's initialisation: conv weights ~ N(0, 0.001), BN weight 1 and bias 0; conv biases 0 (our choice)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.001)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()


def build_model(name: str, num_classes: int) -> HRNet:
    """``build_model("hrnet_w48", num_classes=194)``; HRNet names only (:data:`MODEL_NAMES`): every architecture
    is built by ``mseg_semantic.model.build_model``."""
    spec = HRNET_SPECS.get(name)
    if spec is None:
        raise UnknownNameError(f"unknown model {name!r}{did_you_mean(str(name), MODEL_NAMES)}; valid names: {', '.join(MODEL_NAMES)}")
    return HRNet(spec, num_classes, name=name)

