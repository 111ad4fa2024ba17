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

import dataclasses
import os
from typing import Sequence, Union

import torch

from . import container, zoo
from .entropy.coder import STREAM_VERSION
from .entropy.exact import EXACT_VERSION
from .errors import CorruptFileError, LickdError
from .image import ImageLike, OutputKind, from_tensor, pad_to_multiple, to_tensor
from .models import CompressionModel


#: The .lkd ``coder`` field, "rans1b+x1": bare rANS streams of format v1 (csrc/rans_format.h; the
#: container records what their headers leave out) and the exact entropy-parameter arithmetic v1
#: (lickd.entropy.exact), which together decide how the bytes map back to latents.
FILE_CODER = f"rans{STREAM_VERSION}b+x{EXACT_VERSION}"


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
        self.model.entropy_parameters = "exact"  # files decode on any device (lickd.entropy.exact)
        self.model.update(force=False)  # no-op when the tables shipped with the weights
        if not info.sha256:  # weights without a file: identify them by their state
            info = dataclasses.replace(info, sha256=zoo.state_sha256(self.model))
        self.info = info

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_file(cls, path: os.PathLike, device: Union[str, torch.device, None] = "auto") -> "StudentCodec":
        model, info = zoo.load_weights(path)
        return cls(model, info, device)

    @classmethod
    def from_pretrained(cls, name_or_quality: Union[str, int] = 3,
                        device: Union[str, torch.device, None] = "auto") -> "StudentCodec":
        """A shipped model by registry name (``name`` or ``name@hash``) or by quality 1..8 (the
        nearest registered quality, with a warning, when that one is not shipped)."""
        if isinstance(name_or_quality, int):
            entry = zoo.find_quality(name_or_quality)
        else:
            entry = zoo.find(name=name_or_quality)
        model, info = zoo.load_weights(entry.path, expected_sha256=entry.sha256)
        return cls(model, info, device)

    @property
    def name(self) -> str:
        return f"{self.info.name}@{self.info.short_hash}"

    # ------------------------------------------------------------------ coding
    def compress(self, image: ImageLike, **coder_options) -> bytes:
        """Encodes an image (PIL, uint8 array or float tensor) to the bytes of a .lkd file."""
        return self.compress_batch([image], **coder_options)[0]

    @torch.inference_mode()
    def compress_batch(self, images: Sequence[ImageLike], **coder_options) -> list[bytes]:
        """Encodes many images; those of the same padded size go through the network together."""
        factor = self.model.downsampling_factor
        tensors = [to_tensor(img)[0] for img in images]
        out: list[bytes] = [b""] * len(tensors)
        for padded, members in _group_by(tensors, lambda t: _padded_size(t.shape[-2:], factor)).items():
            x = torch.cat([pad_to_multiple(tensors[i].to(self.device), factor) for i in members])
            coded = self.model.compress(x, bare=True, **coder_options)
            shapes = self.model.latent_shapes(*padded)
            for k, i in enumerate(members):
                sections = [container.Section(name, shapes[name], strings[k])
                            for name, strings in zip(self.model.latent_names, coded["strings"])]
                out[i] = self._file(tensors[i].shape[-2:], sections).to_bytes()
        return out

    def _file(self, size, sections) -> container.LkdFile:
        info = self.info
        return container.LkdFile(
            model=info.name, weights=info.short_hash, architecture=info.architecture, N=info.N, M=info.M,
            height=int(size[0]), width=int(size[1]), coder=FILE_CODER, quality=info.quality, lmbda=info.lmbda,
            metric=info.metric, sections=sections)

    def check_file(self, f: container.LkdFile) -> None:
        """Raises unless ``f`` was encoded by this model with this coder."""
        if f.coder != FILE_CODER:
            raise CorruptFileError(f"coded with '{f.coder}', this lickd decodes '{FILE_CODER}'")
        if f.weights != self.info.short_hash:
            raise LickdError(f"file was encoded with model '{f.model}@{f.weights}', "
                             f"this codec holds '{self.name}'")
        expected = self.model.latent_shapes(*_padded_size((f.height, f.width), self.model.downsampling_factor))
        got = {s.name: s.shape for s in f.sections}
        if got != expected:
            raise CorruptFileError(f"latent shapes {got} do not match the model and image size ({expected})")

    def _decode_group(self, files: list[container.LkdFile]) -> dict[str, torch.Tensor]:
        """Quantised latents of files of one padded size, decoded as one batch."""
        strings = [[f.section(name).data for f in files] for name in self.model.latent_names]
        # CompressAI's convention: ``shape`` is the spatial size of the last latent (y or z).
        shape = files[0].section(self.model.latent_names[-1]).shape[-2:]
        with torch.inference_mode():
            return self.model.decode_latents(strings, shape, bare=True)

    def decode_latents(self, data: bytes) -> tuple[container.LkdFile, dict[str, torch.Tensor]]:
        """Parses and checks a file, then decodes its quantised latents (before the synthesis)."""
        f = container.parse(data)
        self.check_file(f)
        return f, self._decode_group([f])

    def decompress(self, data: bytes, output: OutputKind = "pil") -> ImageLike:
        """Decodes .lkd bytes to an image: a PIL image by default, or ``"numpy"`` (uint8 H x W x 3)
        or ``"tensor"`` (float 3 x H x W)."""
        return self.decompress_batch([data], output)[0]

    @torch.inference_mode()
    def decompress_batch(self, datas: Sequence[bytes], output: OutputKind = "pil") -> list[ImageLike]:
        """Decodes many files (all are checked first); same-size images share the network passes."""
        files = [container.parse(d) for d in datas]
        for f in files:
            self.check_file(f)
        factor = self.model.downsampling_factor
        out: list = [None] * len(files)
        for _, members in _group_by(files, lambda f: _padded_size((f.height, f.width), factor)).items():
            latents = self._decode_group([files[i] for i in members])
            x_hat = self.model.g_s(latents["y"]).clamp_(0, 1)
            for k, i in enumerate(members):
                out[i] = from_tensor(x_hat[k:k + 1, :, : files[i].height, : files[i].width], output)
        return out


def _padded_size(size, factor: int) -> tuple[int, int]:
    return tuple(-(-int(s) // factor) * factor for s in size)


def _group_by(items, key) -> dict:
    groups: dict = {}
    for i, item in enumerate(items):
        groups.setdefault(key(item), []).append(i)
    return groups


def read_info(data: bytes) -> container.LkdFile:
    """Parses and validates a .lkd file without any model."""
    return container.parse(data)


__all__ = ["FILE_CODER", "StudentCodec", "read_info", "resolve_device"]
