"""Tiny stand-ins shared by the evaluation tests (no network, no dataset)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


class TinySegNet(nn.Module):
    """Logits at half the input resolution (exercises the upsampling path), border-sensitive convs."""

    def __init__(self, num_classes: int = 5, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, num_classes, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(x)))


class ColourOracleNet(nn.Module):
    """Predicts class c where the pixel's colour is closest to palette[c]: a 'trained' model for tool tests."""

    def __init__(self, palette: np.ndarray):
        super().__init__()
        mean = torch.tensor([0.485, 0.456, 0.406]) * 255
        std = torch.tensor([0.229, 0.224, 0.225]) * 255
        normalised = (torch.as_tensor(palette, dtype=torch.float32) - mean) / std
        self.register_buffer("centres", normalised)  # K x 3
        self.scale = nn.Parameter(torch.tensor(4.0))

    def forward(self, x):
        d = ((x.unsqueeze(1) - self.centres.view(1, -1, 3, 1, 1)) ** 2).sum(2)
        return -self.scale * d


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def write_dataset(data_root, name: str, samples, split: str = "val") -> None:
    """Write (image RGB, label) pairs in the catalog's layout: <root>/<dataset dir>/..., list at the default path."""
    from pathlib import Path

    import cv2

    from mseg_semantic.taxonomy import Catalog

    location = Catalog(data_root=data_root).locate(name, split)
    root = location.root
    lines = []
    for i, (image, label) in enumerate(samples):
        rgb_rel, label_rel = f"images/{split}/img_{i:03d}.png", f"labels/{split}/img_{i:03d}.png"
        (root / rgb_rel).parent.mkdir(parents=True, exist_ok=True)
        (root / label_rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rgb_rel), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / label_rel), label)
        lines.append(f"{rgb_rel} {label_rel}")
    list_file = location.list_file
    list_file.parent.mkdir(parents=True, exist_ok=True)
    list_file.write_text("\n".join(lines) + "\n")


def colour_world(num_classes: int, n: int, h: int, w: int, colors: np.ndarray, seed: int = 0):
    """Images made of flat blocks of class colours, the label is the block's class (255 in a stripe)."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        label = np.zeros((h, w), np.uint8)
        for y in range(0, h, 8):
            for x in range(0, w, 8):
                label[y : y + 8, x : x + 8] = rng.integers(0, num_classes)
        image = colors[label].astype(np.uint8)
        label[:, :2] = 255
        samples.append((image, label))
    return samples


def inference_settings(**changes):
    """The schema's TEST defaults as InferenceSettings, with ``changes`` (field names of InferenceSettings)."""
    import dataclasses

    from mseg_semantic.config import load_config
    from mseg_semantic.evaluation.inference import InferenceSettings

    return dataclasses.replace(InferenceSettings.from_config(load_config().TEST), **changes)


def eval_data(data_root, split: str = "val", **changes):
    """An EvalData for ``data_root``: no list overrides, loading in this process."""
    import dataclasses

    from mseg_semantic.evaluation.evaluate import EvalData
    from mseg_semantic.taxonomy import Catalog

    return dataclasses.replace(EvalData(split, Catalog(data_root=str(data_root))), **changes)
