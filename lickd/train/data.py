"""Training data: an image folder decoded once into memory, random crops and flips drawn on the
training device, so the GPU never waits on Python or a loader.

Crops come from a ``torch.Generator`` seeded with an integer (and the rank), so a run is
reproducible and its sampler state can be checkpointed and restored exactly.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

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
    """Batches of random crops (and horizontal/vertical flips) as float [B, 3, P, P] in [0, 1]."""

    def __init__(self, data: ImageFolder, batch_size: int, seed: int):
        self.data, self.batch_size = data, batch_size
        self.generator = torch.Generator().manual_seed(int(seed))

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def next(self) -> torch.Tensor:
        p = self.data.patch_size
        crops = []
        for _ in range(self.batch_size):
            img = self.data.images[self._randint(len(self.data))]
            top, left = self._randint(img.shape[1] - p + 1), self._randint(img.shape[2] - p + 1)
            crop = img[:, top:top + p, left:left + p]
            flips = [d for d, bit in ((2, self._randint(2)), (1, self._randint(2))) if bit]
            crops.append(crop.flip(flips) if flips else crop)
        return torch.stack(crops).float().div_(255.0)

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
