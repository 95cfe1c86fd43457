"""A tiny stand-in for the segmentation model (same call signature as the model contract)."""

import torch
import torch.nn.functional as F
from torch import nn


class TinySegNet(nn.Module):
    """``model(x) -> logits`` at input size; ``model(x, return_features=True) -> (logits, emb)``, emb at 1/4."""

    def __init__(self, num_classes: int = 6, width: int = 8, batch_norm: bool = True):
        super().__init__()
        norm = nn.BatchNorm2d if batch_norm else nn.Identity
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), norm(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), norm(width), nn.ReLU(),
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x, return_features: bool = False):
        emb = self.stem(x)
        logits = F.interpolate(self.classifier(emb), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return (logits, emb) if return_features else logits


def make_batch(num_images: int, dataset_index, num_classes: int = 6, size: int = 16, seed: int = 0, ignore_fraction: float = 0.1):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(num_images, 3, size, size, generator=generator)
    labels = torch.randint(0, num_classes, (num_images, size, size), generator=generator)
    labels[torch.rand(num_images, size, size, generator=generator) < ignore_fraction] = 255
    return images, labels, torch.as_tensor(dataset_index, dtype=torch.long)


def mgda_options(**values):
    """The schema's MGDA section with ``values`` changed, as the trainer builds it."""
    from mseg_semantic.config import load_config
    from mseg_semantic.training.gradients.mgda import MGDAOptions

    return MGDAOptions.from_config(load_config(None, [f"MGDA.{k}={v}" for k, v in values.items()]).MGDA)


def ccsa_options(**values):
    """The schema's CCSA section with ``values`` changed, as the trainer builds it."""
    from mseg_semantic.config import load_config
    from mseg_semantic.training.gradients.ccsa import CCSAOptions

    return CCSAOptions.from_config(load_config(None, [f"CCSA.{k}={v}" for k, v in values.items()]).CCSA)
