"""Training data: an image folder decoded once into memory, random crops and flips drawn on the
training device, so the GPU never waits on Python or a loader.

Crops come from a ``torch.Generator`` seeded with an integer (and the rank), so a run is
reproducible and its sampler state can be checkpointed and restored exactly.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..image import list_images, load_rgb


class ImageFolder:
    """All images of a folder as uint8 [3, H, W] tensors on ``device`` (smaller than the patch: skipped)."""

    def __init__(self, folder: os.PathLike, patch_size: int, device: torch.device, limit: int = 0):
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"training data folder {folder} not found")
        self.images, skipped = [], 0
        for path in list_images(folder)[: limit or None]:
            arr = load_rgb(path)
            if min(arr.shape[:2]) < patch_size:
                skipped += 1
                continue
            self.images.append(torch.tensor(arr, dtype=torch.uint8).permute(2, 0, 1).contiguous().to(device))
        if not self.images:
            raise ValueError(f"no image of {folder} is at least {patch_size}x{patch_size}")
        self.patch_size, self.device, self.skipped = patch_size, device, skipped

    def __len__(self) -> int:
        return len(self.images)


class CropSampler:
    """Batches of random crops (and horizontal/vertical flips) as float [B, 3, P, P] in [0, 1].

    ``scale`` = (low, high) below 1: each crop is a square region of P / s pixels, s drawn
    log-uniformly in [low, high] (but never a region larger than the image's shorter side),
    resized to P with antialiased bilinear filtering and rounded back to 8-bit values."""

    def __init__(self, data: ImageFolder, batch_size: int, seed: int, scale: tuple = (1.0, 1.0)):
        self.data, self.batch_size = data, batch_size
        self.scale = (float(scale[0]), float(scale[1]))
        self.generator = torch.Generator().manual_seed(int(seed))

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def _region(self, img: torch.Tensor) -> int:
        """The side of the region the next crop covers (the patch size when not scaling)."""
        p, (low, high) = self.data.patch_size, self.scale
        if high >= 1.0 and low >= 1.0:
            return p
        u = float(torch.rand((), generator=self.generator))
        s = low * (high / low) ** u
        return min(min(img.shape[1:]), max(p, round(p / s)))

    def next(self) -> torch.Tensor:
        p = self.data.patch_size
        crops = []
        for _ in range(self.batch_size):
            img = self.data.images[self._randint(len(self.data))]
            size = self._region(img)
            top, left = self._randint(img.shape[1] - size + 1), self._randint(img.shape[2] - size + 1)
            crop = img[:, top:top + size, left:left + size].float()
            if size != p:
                crop = F.interpolate(crop[None], size=(p, p), mode="bilinear", antialias=True,
                                     align_corners=False)[0].round_().clamp_(0, 255)
            flips = [d for d, bit in ((2, self._randint(2)), (1, self._randint(2))) if bit]
            crops.append(crop.flip(flips) if flips else crop)
        return torch.stack(crops).div_(255.0)

    def qualities(self, levels: int, stratified: bool = False) -> torch.Tensor:
        """One quality 1..levels per crop of a batch (what a variable-rate model trains at):
        independent uniform draws, or ``stratified``: every level equally often within a batch
        (a random permutation of the levels, repeated; the remainder drawn without repeats),
        which lowers the variance of the batch's gradient without changing its expectation."""
        if not stratified:
            return torch.randint(1, levels + 1, (self.batch_size,), generator=self.generator)
        rounds = -(-self.batch_size // levels)
        draws = [torch.randperm(levels, generator=self.generator) + 1 for _ in range(rounds)]
        return torch.cat(draws)[: self.batch_size]

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
