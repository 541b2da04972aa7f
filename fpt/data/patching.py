"""Images -> token sequences, pixel normalisation, and CIFAR-style augmentation.

``patchify`` cuts ``[N, H, W, C]`` images into non-overlapping ``p x p`` patches in row-major patch
order (left to right, then top to bottom); each patch is flattened row by row with the channels
last, i.e. patch feature ``(dy * p + dx) * C + c`` is pixel ``(y0 + dy, x0 + dx)`` channel ``c``.
"""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange


def check_patch_size(height: int, width: int, patch_size: int, what: str = "images") -> None:
    if patch_size < 1 or height % patch_size or width % patch_size:
        divisors = [d for d in range(1, min(height, width) + 1) if height % d == 0 and width % d == 0]
        raise ValueError(
            f"{what} are {height}x{width} (HxW) but patch_size={patch_size} does not divide both; "
            f"choose a patch size that divides H and W: one of {divisors}"
        )


def patchify(images, patch_size: int):
    """``[N, H, W, C]`` (numpy array or torch tensor) -> ``[N, (H/p)*(W/p), p*p*C]``."""
    if images.ndim != 4:
        raise ValueError(f"patchify expects [N, H, W, C], got shape {tuple(images.shape)}")
    check_patch_size(images.shape[1], images.shape[2], int(patch_size))
    return rearrange(images, "n (h p1) (w p2) c -> n (h w) (p1 p2 c)", p1=int(patch_size), p2=int(patch_size))


def unpatchify(tokens, patch_size: int, height: int, width: int):
    """Inverse of :func:`patchify`."""
    p = int(patch_size)
    return rearrange(tokens, "n (h w) (p1 p2 c) -> n (h p1) (w p2) c", h=height // p, w=width // p, p1=p, p2=p)


def channel_stats(images: np.ndarray, scale: float = 255.0, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (last-axis) mean and std of ``images / scale`` (``[N, ..., C]``), in float64, chunked."""
    c = images.shape[-1]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    count = 0
    for i in range(0, len(images), chunk):
        block = images[i: i + chunk].reshape(-1, c).astype(np.float64) / scale
        total += block.sum(0)
        total_sq += (block * block).sum(0)
        count += block.shape[0]
    mean = total / max(count, 1)
    var = np.maximum(total_sq / max(count, 1) - mean * mean, 0.0)
    std = np.sqrt(var)
    std[std < 1e-8] = 1.0  # a constant channel: leave it centred, do not blow it up
    return mean, std


def normalise(images: torch.Tensor, mean: np.ndarray, std: np.ndarray, scale: float = 255.0) -> torch.Tensor:
    """``(images / scale - mean) / std`` per channel (channels last), as float32."""
    x = images.to(torch.float32) / scale
    return (x - torch.as_tensor(mean, dtype=torch.float32)) / torch.as_tensor(std, dtype=torch.float32)


def random_crop_flip(images: torch.Tensor, rng: np.random.Generator, padding: int = 4, flip: bool = True) -> torch.Tensor:
    """Random ``H x W`` crop of the zero-padded image and a horizontal flip with probability 1/2.

    ``images``: ``[B, H, W, C]`` (any dtype; padding is 0, i.e. black for raw pixels). The crop
    offsets and flips come from ``rng``, so the result is reproducible.
    """
    b, h, w, c = images.shape
    padded = torch.nn.functional.pad(images, (0, 0, padding, padding, padding, padding))
    oy = torch.as_tensor(rng.integers(0, 2 * padding + 1, size=b))
    ox = torch.as_tensor(rng.integers(0, 2 * padding + 1, size=b))
    flips = torch.as_tensor(rng.random(b) < 0.5) if flip else torch.zeros(b, dtype=torch.bool)
    rows = oy[:, None] + torch.arange(h)[None, :]  # [B, H]
    cols = torch.arange(w)[None, :].expand(b, w)
    cols = torch.where(flips[:, None], (w - 1) - cols, cols) + ox[:, None]  # [B, W]
    batch = torch.arange(b)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]


def random_rotation(images: torch.Tensor, rng: np.random.Generator, degrees: float) -> torch.Tensor:
    """Rotate each image by an angle drawn uniformly from ``[-degrees, degrees]``, counter-clockwise for
    positive angles, about the image centre, nearest-neighbour, corners filled with 0.

    What torchvision's ``RandomRotation(degrees)`` does (the 2021 code's CIFAR augmentation, applied
    after crop and flip, before normalisation), with torch ops (``affine_grid`` + ``grid_sample``,
    ``align_corners=False``). One angle per image, from ``rng`` (reproducible). ``images``:
    ``[B, H, W, C]``, any dtype; the result has the same dtype.
    """
    b, h, w, c = images.shape
    if degrees <= 0 or b == 0:
        return images
    angles = np.deg2rad(rng.uniform(-degrees, degrees, size=b))
    cos = torch.as_tensor(np.cos(angles), dtype=torch.float32)
    sin = torch.as_tensor(np.sin(angles), dtype=torch.float32)
    # affine_grid maps each output location to the input location it samples, in coordinates normalised
    # to [-1, 1] per axis: a counter-clockwise turn of the picture (y pointing down) samples the input
    # at the output location turned clockwise; h/w and w/h correct for non-square images.
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * h / w
    theta[:, 1, 0] = sin * w / h
    theta[:, 1, 1] = cos
    x = images.permute(0, 3, 1, 2).to(torch.float32)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.permute(0, 2, 3, 1).round().to(images.dtype) if not images.is_floating_point() \
        else out.permute(0, 2, 3, 1).to(images.dtype)
