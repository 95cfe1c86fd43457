"""Record what Meta's OFFICIAL DINOv2 code computes, for tests/model/test_model_dinov2.py to compare ours against.

  git --git-dir=$(fetch github:facebookresearch/dinov2) archive HEAD | tar -x -C /tmp/dinov2_official
  python benchmarks/record_dinov2_reference.py --official /tmp/dinov2_official --commit <sha> \
      --out tests/model/data/dinov2_reference.npz --manifest tests/model/data/dinov2_manifest.json

The official dinov2_vits14 and dinov2_vits14_reg (built through its hub functions, ``pretrained=False``, on CPU;
without xformers its attention is ``F.scaled_dot_product_attention``) get every parameter from
:func:`reference_tensor`, a function of the key and shape alone (a splitmix64 hash of the element index, seeded with
the key's CRC-32: no RNG whose stream could change between numpy or torch versions). The test fills our model by the
same function, so it never needs the official code.

Recorded, for each model and for 224x224 and 294x420 (two seeded images each):
- ``forward_features``: the class token and register tokens in full; four patch tokens in full (first, two inside,
  last); every token of ``x_norm_patchtokens`` and ``x_prenorm`` projected on 8 fixed random directions;
- ``get_intermediate_layers(n=4, reshape=True, norm=True)``: each map projected on the same 8 directions at every
  position, and the full channel vector at two positions; the shapes of everything.
Why this decides: a wrong positional-embedding resampling, token order, register placement, head split, LayerScale
or norm changes every token (or the full vectors), and a change in any single token moves its projections unless it
is orthogonal to all 8 random directions; the file stays small (~0.8 MB) because projections replace 384 channels.

Also written: the key -> shape manifest of the six official variants (built on the meta device), so that strict
loading can be tested for each without downloading weights.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np

MODELS = ("dinov2_vits14", "dinov2_vits14_reg")
MANIFEST_MODELS = ("dinov2_vits14", "dinov2_vits14_reg", "dinov2_vitb14", "dinov2_vitb14_reg", "dinov2_vitl14", "dinov2_vitl14_reg")
SIZES = ((224, 224), (294, 420))
BATCH = 2
PROJECTION_DIM = 8


def _splitmix64(index: np.ndarray) -> np.ndarray:
    z = index + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def seeded_uniform(key: str, shape) -> np.ndarray:
    """float32 values of unit variance, uniform on [-sqrt 3, sqrt 3), a pure function of ``key`` and ``shape``."""
    count = int(np.prod(shape, dtype=np.int64))
    seed = np.uint64(zlib.crc32(key.encode())) << np.uint64(32)
    with np.errstate(over="ignore"):
        bits = _splitmix64(np.arange(count, dtype=np.uint64) + seed)
    unit = (bits >> np.uint64(11)).astype(np.float64) / float(2**53)
    return ((unit * 2.0 - 1.0) * math.sqrt(3.0)).astype(np.float32).reshape(tuple(shape))


def reference_tensor(key: str, shape) -> np.ndarray:
    """The value a state-dict entry gets: scaled so that 12 blocks keep activations O(1) and attention is not uniform;
    the positional embedding is large so that a wrong resampling shows."""
    values = seeded_uniform(key, shape)
    leaf = key.rsplit(".", 1)[-1]
    if key in ("cls_token", "register_tokens"):
        return values
    if key == "pos_embed":
        return values * 0.5
    if key == "mask_token":
        return values * 0.1
    if leaf == "gamma":  # LayerScale
        return 0.5 + 0.2 * values
    if leaf == "bias":
        return values * 0.05
    if ("norm" in key) and leaf == "weight":  # LayerNorm
        return 1.0 + 0.2 * values
    if leaf == "weight":  # linear / patch conv: unit gain
        fan_in = int(np.prod(shape[1:]))
        return values / math.sqrt(fan_in)
    raise KeyError(f"no reference rule for {key!r}")


def reference_input(height: int, width: int) -> np.ndarray:
    return seeded_uniform(f"input/{height}x{width}", (BATCH, 3, height, width))


def projection(dim: int) -> np.ndarray:
    return seeded_uniform(f"projection/{dim}", (dim, PROJECTION_DIM))


def patch_token_picks(count: int) -> list[int]:
    return [0, count // 3, (2 * count) // 3, count - 1]


def map_position_picks(height: int, width: int) -> list[tuple[int, int]]:
    return [(0, 0), (height // 2, width - 1)]


def record_outputs(model, prefix: str, height: int, width: int) -> dict[str, np.ndarray]:
    """What the test compares, for one model and size (called on the official model here, on ours in the test)."""
    import torch

    x = torch.from_numpy(reference_input(height, width))
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        features = model.forward_features(x)
        layers = model.get_intermediate_layers(x, n=4, reshape=True, norm=True)
    dim = features["x_norm_clstoken"].shape[-1]
    proj = torch.from_numpy(projection(dim))
    patches = features["x_norm_patchtokens"]
    out[f"{prefix}/x_norm_clstoken"] = features["x_norm_clstoken"].numpy()
    out[f"{prefix}/x_norm_regtokens"] = features["x_norm_regtokens"].numpy()
    out[f"{prefix}/x_norm_patchtokens/picked"] = patches[:, patch_token_picks(patches.shape[1])].numpy()
    out[f"{prefix}/x_norm_patchtokens/projected"] = (patches @ proj).numpy()
    out[f"{prefix}/x_norm_patchtokens/shape"] = np.array(patches.shape)
    out[f"{prefix}/x_prenorm/projected"] = (features["x_prenorm"] @ proj).numpy()
    out[f"{prefix}/x_prenorm/shape"] = np.array(features["x_prenorm"].shape)
    for i, layer in enumerate(layers):
        out[f"{prefix}/intermediate{i}/projected"] = torch.einsum("bchw,ck->bkhw", layer, proj).numpy()
        out[f"{prefix}/intermediate{i}/picked"] = np.stack([layer[:, :, r, c].numpy() for r, c in map_position_picks(*layer.shape[-2:])])
        out[f"{prefix}/intermediate{i}/shape"] = np.array(layer.shape)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", required=True, type=Path, help="a checkout of facebookresearch/dinov2")
    parser.add_argument("--commit", default="unknown", help="the checkout's commit, recorded in the outputs")
    parser.add_argument("--out", type=Path, default=Path("tests/model/data/dinov2_reference.npz"))
    parser.add_argument("--manifest", type=Path, default=Path("tests/model/data/dinov2_manifest.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(args.official.resolve()))
    warnings.filterwarnings("ignore", message="xFormers")
    from dinov2.hub import backbones  # the official code

    records: dict[str, np.ndarray] = {"official_commit": np.array(args.commit)}
    for name in MODELS:
        model = getattr(backbones, name)(pretrained=False).eval()
        with torch.no_grad():
            for key, tensor in model.state_dict().items():
                tensor.copy_(torch.from_numpy(reference_tensor(key, tuple(tensor.shape))))
        for height, width in SIZES:
            records.update(record_outputs(model, f"{name}/{height}x{width}", height, width))

    manifest = {"official_commit": args.commit, "models": {}}
    for name in MANIFEST_MODELS:
        with torch.device("meta"):
            model = getattr(backbones, name)(pretrained=False)
        manifest["models"][name] = {k: list(v.shape) for k, v in model.state_dict().items()}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **records)
    args.manifest.write_text(json.dumps(manifest, separators=(",", ":")) + "\n")
    sizes = {"npz_bytes": args.out.stat().st_size, "manifest_bytes": args.manifest.stat().st_size, "arrays": len(records)}
    print(json.dumps({"out": str(args.out), "manifest": str(args.manifest), **sizes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
