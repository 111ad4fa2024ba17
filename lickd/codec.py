"""StudentCodec: image -> .lkd bytes -> image, with a (distilled) lickd model.

    codec = StudentCodec.from_pretrained(3)                  # shipped model at quality 3
    codec = StudentCodec.from_file("student.safetensors")    # any lickd weights file
    data = codec.compress(Image.open("in.png"))
    img = codec.decompress(data)

Data flow: image -> pad -> g_a -> quantise -> entropy model -> rANS -> container, and back.
Any H x W is accepted: the image is padded to the model's downsampling factor by replicating
its border, and the decoder crops back to the original size stored in the header.
"""
from __future__ import annotations

import os
from typing import Union

import torch

from . import container, zoo
from .entropy import CODER_ID
from .errors import CorruptFileError, LickdError
from .image import ImageLike, OutputKind, from_tensor, pad_to_multiple, to_tensor
from .models import CompressionModel


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LickdError("CUDA was requested but no CUDA device is available")
    return device


class StudentCodec:
    """A lickd model bound to the identity written into every file it encodes."""

    def __init__(self, model: CompressionModel, info: zoo.ModelInfo, device: Union[str, torch.device, None] = "auto"):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.info = info
        self.model.update(force=False)  # no-op when the tables shipped with the weights

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_file(cls, path: os.PathLike, device: Union[str, torch.device, None] = "auto") -> "StudentCodec":
        model, info = zoo.load_weights(path)
        return cls(model, info, device)

    @classmethod
    def from_pretrained(cls, name_or_quality: Union[str, int] = 3,
                        device: Union[str, torch.device, None] = "auto") -> "StudentCodec":
        """A shipped model by registry name (``name`` or ``name@hash``) or by quality 1..8."""
        if isinstance(name_or_quality, int):
            entry = zoo.find(quality=name_or_quality)
        else:
            entry = zoo.find(name=name_or_quality)
        model, info = zoo.load_weights(entry.path, expected_sha256=entry.sha256)
        return cls(model, info, device)

    @property
    def name(self) -> str:
        return f"{self.info.name}@{self.info.short_hash}"

    # ------------------------------------------------------------------ coding
    @torch.inference_mode()
    def compress(self, image: ImageLike, **coder_options) -> bytes:
        """Encodes an image (PIL, uint8 array or float tensor) to the bytes of a .lkd file."""
        x, _ = to_tensor(image)
        height, width = x.shape[-2:]
        x = pad_to_multiple(x.to(self.device), self.model.downsampling_factor)
        out = self.model.compress(x, **coder_options)
        shapes = self.model.latent_shapes(*x.shape[-2:])
        sections = [container.Section(name, shapes[name], strings[0])
                    for name, strings in zip(self.model.latent_names, out["strings"])]
        info = self.info
        return container.LkdFile(
            model=info.name, weights=info.short_hash, architecture=info.architecture, N=info.N, M=info.M,
            height=int(height), width=int(width), coder=CODER_ID, quality=info.quality, lmbda=info.lmbda,
            metric=info.metric, sections=sections,
        ).to_bytes()

    def check_file(self, f: container.LkdFile) -> None:
        """Raises unless ``f`` was encoded by this model with this coder."""
        if f.coder != CODER_ID:
            raise CorruptFileError(f"coded with '{f.coder}', this lickd decodes '{CODER_ID}'")
        if f.weights != self.info.short_hash:
            raise LickdError(f"file was encoded with model '{f.model}@{f.weights}', "
                             f"this codec holds '{self.name}'")
        f_h, f_w = (-(-s // self.model.downsampling_factor) * self.model.downsampling_factor
                    for s in (f.height, f.width))
        expected = self.model.latent_shapes(f_h, f_w)
        got = {s.name: s.shape for s in f.sections}
        if got != expected:
            raise CorruptFileError(f"latent shapes {got} do not match the model and image size ({expected})")

    def decode_latents(self, data: bytes) -> tuple[container.LkdFile, dict[str, torch.Tensor]]:
        """Parses and checks a file, then decodes its quantised latents (before the synthesis)."""
        f = container.parse(data)
        self.check_file(f)
        strings = [[f.section(name).data] for name in self.model.latent_names]
        y_shape = f.section(self.model.latent_names[-1]).shape[-2:]
        with torch.inference_mode():
            latents = self.model.decode_latents(strings, y_shape)
        return f, latents

    @torch.inference_mode()
    def decompress(self, data: bytes, output: OutputKind = "pil") -> ImageLike:
        """Decodes .lkd bytes to an image: a PIL image by default, or ``"numpy"`` (uint8 H x W x 3)
        or ``"tensor"`` (float 3 x H x W)."""
        f, latents = self.decode_latents(data)
        x_hat = self.model.g_s(latents["y"]).clamp_(0, 1)
        return from_tensor(x_hat[..., : f.height, : f.width], output)


def read_info(data: bytes) -> container.LkdFile:
    """Parses and validates a .lkd file without any model."""
    return container.parse(data)


__all__ = ["StudentCodec", "read_info", "resolve_device"]
