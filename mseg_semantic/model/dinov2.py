"""DINOv2 Vision Transformers (Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", 2023),
laid out exactly as Meta's released backbone checkpoints, so that ``build_backbone(name).load_state_dict(torch.load(
"<name>_pretrain.pth"), strict=True)`` works unchanged.

Written here from the facts of the official code (facebookresearch/dinov2, ``dinov2/models/vision_transformer.py``,
``dinov2/layers``, ``dinov2/hub/backbones.py``), which this module does not import:

- keys: ``cls_token`` (1x1xD), ``pos_embed`` (1 x 1+37*37 x D: the weights were trained at 518 px), ``register_tokens``
  (1x4xD, ``_reg`` variants only), ``mask_token`` (1xD), ``patch_embed.proj`` (14x14 conv), per block ``norm1``,
  ``attn.qkv``, ``attn.proj``, ``ls1.gamma``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``, ``ls2.gamma``, and the final ``norm``;
- LayerNorm eps 1e-6, exact GELU, biases in qkv/proj/MLP, LayerScale (the hub models are built with init 1.0);
- the positional embedding is resampled to the input's patch grid with bicubic interpolation. Without registers:
  ``scale_factor=((h + 0.1) / 37, (w + 0.1) / 37)``, no antialias (the 0.1 is DINO's historical offset; because a
  scale factor is passed, it also sets the sampling positions, so it changes the numbers). With registers: ``size=(h, w)``
  with antialias. At the training grid itself (518 x 518) the embedding is used as it is;
- register tokens sit between the class token and the patch tokens, after the positional embedding is added.

The residual stream keeps the patch embedding's dtype: the resampled positional embedding is cast to it (the official
code does so at every size but the training one, where it adds the fp32 parameter; under autocast that promotes the
whole stream to fp32 at 518 px only).

No dropout, no drop path and no BatchNorm: ``train()`` and ``eval()`` compute the same function, so a frozen backbone
needs no eval mode.

Adapters (:func:`insert_lora`): LoRA on every block's ``attn.qkv``, stored as ``blocks.N.attn.lora.down`` /
``.up``. They are the only keys beyond the official layout, and :meth:`DinoV2Backbone.load_state_dict` treats them as
optional: an official file (which has none) loads strictly and the adapters keep their values (``up`` starts at zero,
so the adapted model starts equal to the pretrained one); a file that holds them sets them. A file key the model does
not have is still an error. :func:`merge_lora` folds them into ``attn.qkv.weight``, giving the official layout back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mseg_semantic.errors import UnknownNameError, UserError, did_you_mean

__all__ = [
    "ADAPTER_KEY",
    "DINOV2_SPECS",
    "DinoV2Backbone",
    "ViTSpec",
    "adapter_parameters",
    "build_backbone",
    "check_patch_multiple",
    "evenly_spaced_blocks",
    "insert_lora",
    "merge_lora",
]


@dataclass(frozen=True)
class ViTSpec:
    embed_dim: int
    depth: int
    num_heads: int
    num_register_tokens: int = 0
    interpolate_antialias: bool = False
    interpolate_offset: float = 0.1  # 0: resample to the exact size instead of by a scale factor
    patch_size: int = 14
    pos_grid: int = 37  # side of the positional-embedding grid in the weights (518 px / 14)
    mlp_ratio: float = 4.0
    layerscale_init: float = 1.0
    official: bool = True  # False: an architecture of this project's own, for tests; no weights exist for it


_REGISTERS = dict(num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0.0)

# The released backbones (dinov2/hub/backbones.py); vitg14 (SwiGLU FFN, 1.1B parameters) is not included.
DINOV2_SPECS: dict[str, ViTSpec] = {
    "dinov2_vits14": ViTSpec(embed_dim=384, depth=12, num_heads=6),
    "dinov2_vitb14": ViTSpec(embed_dim=768, depth=12, num_heads=12),
    "dinov2_vitl14": ViTSpec(embed_dim=1024, depth=24, num_heads=16),
    "dinov2_vits14_reg": ViTSpec(embed_dim=384, depth=12, num_heads=6, **_REGISTERS),
    "dinov2_vitb14_reg": ViTSpec(embed_dim=768, depth=12, num_heads=12, **_REGISTERS),
    "dinov2_vitl14_reg": ViTSpec(embed_dim=1024, depth=24, num_heads=16, **_REGISTERS),
    # NOT an official model: a ViT of ~145k parameters, with registers, so that CPU tests run in seconds. It resamples
    # its 8x8 positional grid the way the non-register models do (scale factor, no antialias: exportable to ONNX).
    "dinov2_tiny_test": ViTSpec(embed_dim=48, depth=4, num_heads=3, num_register_tokens=4, pos_grid=8, official=False),
}

ADAPTER_KEY = ".attn.lora."  # every adapter key contains this; no official key does


def check_patch_multiple(height: int, width: int, patch: int) -> None:
    """A UserError (a ValueError) naming the size and the nearest multiples unless both sides are multiples of ``patch``."""
    advice = []
    for side, size in (("height", height), ("width", width)):
        if size % patch:
            below, above = size // patch * patch, (size // patch + 1) * patch
            advice.append(f"{side} {size} -> {below} or {above}" if below else f"{side} {size} -> {above}")
    if advice:
        raise UserError(
            f"input size {height}x{width} is not a multiple of the ViT patch size {patch}; nearest multiples: "
            + ", ".join(advice)
        )


def evenly_spaced_blocks(depth: int, count: int = 4) -> list[int]:
    """``count`` block indices spread over the depth, ending at the last block: 12 -> [2, 5, 8, 11], 24 -> [5, 11, 17, 23]."""
    if not 1 <= count <= depth:
        raise ValueError(f"cannot take {count} of {depth} blocks")
    return [(k + 1) * depth // count - 1 for k in range(count)]


class PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # B x (h*w) x D, row-major over the patch grid


class QkvLoRA(nn.Module):
    """Low-rank update of a qkv projection: ``qkv(x) + scale * up(down(x))``; ``up`` starts at zero."""

    def __init__(self, dim: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, dim))
        self.up = nn.Parameter(torch.zeros(3 * dim, rank))
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))  # nn.Linear's initialisation
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.down), self.up) * self.scale


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # ``self.lora`` (a QkvLoRA) exists once adapters are inserted. It is not pre-registered as None: a None child
        # makes load_state_dict silently ignore a file's adapter keys instead of reporting them as unexpected.

    def adapter(self) -> QkvLoRA | None:
        return self._modules.get("lora")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x)
        lora = self._modules.get("lora")
        if lora is not None:
            qkv = qkv + lora(x)
        # qkv features are ordered (q|k|v, head, head_dim), as in the official weights
        q, k, v = qkv.reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        dim = spec.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, spec.num_heads)
        self.ls1 = LayerScale(dim, spec.layerscale_init)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * spec.mlp_ratio))
        self.ls2 = LayerScale(dim, spec.layerscale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV2Backbone(nn.Module):
    """The DINOv2 ViT: :meth:`forward_features`, :meth:`get_intermediate_layers` as in the official code."""

    def __init__(self, spec: ViTSpec, name: str = "") -> None:
        super().__init__()
        self.spec = spec
        self.name = name
        self.embed_dim = spec.embed_dim
        self.patch_size = spec.patch_size
        self.num_register_tokens = spec.num_register_tokens
        self.n_blocks = spec.depth
        dim = spec.embed_dim
        # registration order = the official state dict's key order
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + spec.pos_grid**2, dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, spec.num_register_tokens, dim)) if spec.num_register_tokens else None
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embed = PatchEmbed(dim, spec.patch_size)
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.init_weights()

    def init_weights(self) -> None:
        """The official initialisation (for training from scratch; pretrained weights replace it)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        nn.init.zeros_(self.mask_token)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, LayerScale):
                nn.init.constant_(module.gamma, self.spec.layerscale_init)

    def positional_embedding(self, grid_h: int, grid_w: int, dtype: torch.dtype) -> torch.Tensor:
        """1 x (1 + grid_h*grid_w) x D: the class token's entry, then the patch grid's, resampled as the official code."""
        side = self.spec.pos_grid
        if grid_h == side and grid_w == side:
            return self.pos_embed.to(dtype)
        pos = self.pos_embed.float()
        grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        offset = self.spec.interpolate_offset
        if offset:
            resize = dict(scale_factor=((grid_h + offset) / side, (grid_w + offset) / side))
        else:
            resize = dict(size=(grid_h, grid_w))
        grid = F.interpolate(grid, mode="bicubic", antialias=self.spec.interpolate_antialias, **resize)
        if tuple(grid.shape[-2:]) != (grid_h, grid_w):
            raise RuntimeError(f"positional embedding resampled to {tuple(grid.shape[-2:])}, expected {(grid_h, grid_w)}")
        patches = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat([pos[:, :1], patches], dim=1).to(dtype)

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Images N x 3 x H x W -> tokens N x (1 + registers + patches) x D; ``masks`` (N x patches, bool) -> mask token."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images N x 3 x H x W, got shape {tuple(x.shape)}")
        batch, _, height, width = x.shape
        check_patch_multiple(height, width, self.patch_size)
        tokens = self.patch_embed(x)
        if masks is not None:
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype).unsqueeze(0), tokens)
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
        tokens = tokens + self.positional_embedding(height // self.patch_size, width // self.patch_size, tokens.dtype)
        if self.register_tokens is not None:
            tokens = torch.cat([tokens[:, :1], self.register_tokens.expand(batch, -1, -1), tokens[:, 1:]], dim=1)
        return tokens

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
        tokens = self.prepare_tokens(x, masks)
        for block in self.blocks:
            tokens = block(tokens)
        normed = self.norm(tokens)
        first_patch = 1 + self.num_register_tokens
        return {
            "x_norm_clstoken": normed[:, 0],
            "x_norm_regtokens": normed[:, 1:first_patch],
            "x_norm_patchtokens": normed[:, first_patch:],
            "x_prenorm": tokens,
            "masks": masks,
        }

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Patch tokens after the last ``n`` blocks (``n`` an int) or after the blocks indexed by ``n`` (0-based).

        ``norm``: through the final LayerNorm; ``reshape``: N x D x h x w instead of N x (h*w) x D;
        ``return_class_token``: ``((patches, cls), ...)``. Blocks after the last one taken are not run.
        """
        depth = len(self.blocks)
        wanted = list(range(depth - n, depth)) if isinstance(n, int) else [int(i) for i in n]
        if not wanted or any(not 0 <= i < depth for i in wanted):
            raise ValueError(f"block indices {wanted} are not within 0..{depth - 1}")
        tokens = self.prepare_tokens(x)
        taken: dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.blocks[: max(wanted) + 1]):
            tokens = block(tokens)
            if index in wanted:
                taken[index] = tokens
        outputs = [self.norm(taken[i]) if norm else taken[i] for i in wanted]
        class_tokens = [out[:, 0] for out in outputs]
        patches = [out[:, 1 + self.num_register_tokens :] for out in outputs]
        if reshape:
            batch, _, height, width = x.shape
            grid = (height // self.patch_size, width // self.patch_size)
            patches = [p.reshape(batch, *grid, -1).permute(0, 3, 1, 2).contiguous() for p in patches]
        if return_class_token:
            return tuple(zip(patches, class_tokens))
        return tuple(patches)

    def forward(self, x: torch.Tensor, is_training: bool = False):
        """As the official module: the normalised class token, or ``forward_features``' dict with ``is_training``."""
        features = self.forward_features(x)
        return features if is_training else features["x_norm_clstoken"]

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, except that adapter keys the file lacks keep their values (module docstring)."""
        state = dict(state_dict)
        for key, value in super().state_dict(keep_vars=True).items():
            if ADAPTER_KEY in key and key not in state:
                state[key] = value.detach()
        return super().load_state_dict(state, strict=strict, assign=assign)


def build_backbone(name: str) -> DinoV2Backbone:
    """The ViT alone (randomly initialised as the official code): ``build_backbone("dinov2_vitb14")``."""
    spec = DINOV2_SPECS.get(name)
    if spec is None:
        raise UnknownNameError(f"unknown DINOv2 backbone {name!r}{did_you_mean(str(name), DINOV2_SPECS)}; valid names: {', '.join(DINOV2_SPECS)}")
    return DinoV2Backbone(spec, name=name)


def insert_lora(backbone: DinoV2Backbone, rank: int = 8, alpha: float | None = None) -> list[nn.Parameter]:
    """Put a LoRA adapter on every block's qkv (idempotent for the same rank); returns the adapter parameters.

    ``alpha`` (default ``rank``) scales the update by ``alpha / rank``. Official weights load into the backbone
    before or after this (see the module docstring).
    """
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    alpha = float(rank if alpha is None else alpha)
    reference = next(backbone.parameters())
    for block in backbone.blocks:
        existing = block.attn.adapter()
        if existing is not None:
            if existing.down.shape[0] != rank or existing.scale != alpha / rank:
                raise ValueError(f"adapters of rank {existing.down.shape[0]} are already inserted; cannot change to rank {rank}")
            continue
        block.attn.lora = QkvLoRA(backbone.embed_dim, rank, alpha).to(device=reference.device, dtype=reference.dtype)
    return adapter_parameters(backbone)


def adapter_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters inside ``module`` (any model holding a DINOv2 backbone)."""
    return [p for name, p in module.named_parameters() if ADAPTER_KEY in "." + name]


@torch.no_grad()
def merge_lora(backbone: DinoV2Backbone) -> int:
    """Fold every block's LoRA update into its ``attn.qkv.weight`` and remove the adapters; returns how many were
    merged. The backbone then has the official layout again and computes the same function (up to rounding): what a
    final-weights file of an adapters run should hold, so that evaluation builds the plain model."""
    merged = 0
    for block in backbone.blocks:
        lora = block.attn.adapter()
        if lora is None:
            continue
        block.attn.qkv.weight += (lora.up @ lora.down).to(block.attn.qkv.weight.dtype) * lora.scale
        del block.attn.lora
        merged += 1
    return merged
