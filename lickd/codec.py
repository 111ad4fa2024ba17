"""StudentCodec: image -> .lkd bytes -> image, with a (distilled) lickd model.

    codec = StudentCodec.from_pretrained(3)                  # shipped model at quality 3
    codec = StudentCodec.from_file("student.safetensors")    # any lickd weights file
    data = codec.compress(Image.open("in.png"))
    img = codec.decompress(data)

Data flow: image -> pad -> g_a -> quantise -> entropy model -> rANS -> container, and back.
Any H x W is accepted: the image is padded to the model's downsampling factor by replicating
its border, and the decoder crops back to the original size stored in the header. Large images
go through g_a and g_s in overlapping tiles (lickd.tiling), in bounded memory: the latents and
the file of the whole-image pass (on this machine; another CPU's convolutions may round a latent
at a tie the other way), the pixels to float rounding.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence, Union

import torch

from . import container, tiling, zoo
from .entropy.coder import STREAM_VERSION
from .entropy.exact import EXACT_VERSION, EXACT_VERSIONS
from .entropy.options import LKD_FILE_OPTIONS, CodingOptions
from .cpu import retain_freed_memory
from .device import resolve_device
from .errors import CorruptFileError, LickdError
from .image import ImageLike, OutputKind, from_tensor, to_tensor
from .models import CompressionModel, check_quality, quality_lambda
from .models.variable_rate import DEFAULT_QUALITY


#: The .lkd ``coder`` field new files get, "rans1b+x2": bare rANS streams of format v1
#: (csrc/rans_format.h; the container records what their headers leave out) and the exact
#: entropy-parameter arithmetic v2 (lickd.entropy.exact), which together decide how the bytes
#: map back to latents.
FILE_CODER = f"rans{STREAM_VERSION}b+x{EXACT_VERSION}"
#: every coder field this lickd decodes -> its exact arithmetic version (x1: files of older lickd)
READABLE_CODERS = {f"rans{STREAM_VERSION}b+x{v}": v for v in EXACT_VERSIONS}


#: With ``tile=None`` (automatic), images of more padded pixels than this run g_a and g_s in
#: tiles of ``DEFAULT_TILE`` pixels. Measured on the 2-core AVX2 machine (N=64/M=192, one
#: thread, beside two training runs): at 0.4 and 1 MP 512-pixel tiles take the time of the
#: whole pass, at 2 and 4 MP 25-70 % less (they stay in cache); a whole g_a pass holds ~0.3 GB
#: per MP (N=64; twice that for N=128), which 2 MP bounds at ~0.6 GB. A 512-pixel tile holds
#: ~80 MB of g_a activations and recomputes ~19 % (g_a) and ~13 % (g_s) of its outputs as halo.
TILE_THRESHOLD = 2_000_000
DEFAULT_TILE = 512

#: Memory format of the transforms on the CPU. oneDNN's convolutions run NHWC natively (any x86
#: ISA); NCHW inputs are reordered around every layer, and GDN takes its blocked fast path only
#: on channels_last (lickd.layers.gdn). Measured on the 2-vCPU AVX2 machine, Kodak 768x512,
#: N=64, allocator retention on: g_s ~100 ms channels_last against ~150 ms NCHW, g_a the same
#: or better. A fixed rule, not a per-run measurement, so one machine always writes the same bytes.
CPU_LAYOUT = torch.channels_last


class StudentCodec:
    """A lickd model bound to the identity written into every file it encodes. The model given
    is used in place: moved to ``device``, put in eval mode and, on a CPU, in CPU_LAYOUT."""

    def __init__(self, model: CompressionModel, info: zoo.ModelInfo, device: Union[str, torch.device, None] = "auto",
                 quality: Union[int, float, None] = None, tile: Union[int, None] = None):
        self.device = resolve_device(device)
        if tile is not None and int(tile) < 0:
            raise ValueError(f"tile must be None, 0 or a number of pixels, got {tile}")
        #: g_a and g_s tiles, in pixels a side: None picks (tiles of DEFAULT_TILE above
        #: TILE_THRESHOLD pixels), 0 never tiles; on one machine the file does not depend on it
        self.tile = tile
        self.model = model.to(self.device).eval()
        self.model.update(force=False)  # no-op when the tables shipped with the weights
        if not info.sha256:  # weights without a file: identify them by their state
            info = dataclasses.replace(info, sha256=zoo.state_sha256(self.model))
        self.info = info
        if self.device.type == "cpu":  # the CPU fast path (docs/architecture.md)
            retain_freed_memory()
            self.model.to(memory_format=CPU_LAYOUT)
        #: what ``compress`` codes at when given no quality (variable-rate models only)
        self.quality = None
        if model.variable_rate:
            default = info.quality if info.quality is not None else DEFAULT_QUALITY
            if info.qualities is not None:  # the default inside the range the model offers
                default = min(max(default, info.qualities[0]), info.qualities[1])
            self.quality = check_quality(default)
        if quality is not None:
            chosen = self.quality_for(quality)  # refuses a quality the model does not code at
            self.quality = chosen if model.variable_rate else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_file(cls, path: os.PathLike, device: Union[str, torch.device, None] = "auto") -> "StudentCodec":
        model, info = zoo.load_weights(path)
        return cls(model, info, device)

    @classmethod
    def from_pretrained(cls, name_or_quality: Union[str, int, float, None] = None,
                        device: Union[str, torch.device, None] = "auto") -> "StudentCodec":
        """A shipped model: the default one (no argument), one by registry name (``name`` or
        ``name@hash``), or the one for a quality 1..8 (a variable-rate model that offers it, the
        default one first, at that quality, fractions too; else among fixed-rate models the
        nearest quality, with a warning, when that one is not shipped)."""
        quality = None
        if name_or_quality is None:
            entry = zoo.find_default()
        elif isinstance(name_or_quality, (int, float)):
            entry, quality = zoo.find_quality(name_or_quality), name_or_quality
        else:
            entry = zoo.find(name=name_or_quality)
        model, info = zoo.load_weights(entry.path, expected_sha256=entry.sha256)
        return cls(model, info, device, quality=quality if model.variable_rate else None)

    @property
    def name(self) -> str:
        return f"{self.info.name}@{self.info.short_hash}"

    @property
    def variable_rate(self) -> bool:
        return self.model.variable_rate

    def quality_for(self, quality=None):
        """The quality a file will record: for a variable-rate model ``quality`` (any value in
        1..8, or in the narrower range its weights offer; default: the model's default quality),
        for a fixed-rate model its own (another one is refused)."""
        if self.variable_rate:
            q = check_quality(self.quality if quality is None else quality)
            if not self.info.offers(q):
                low, high = self.info.offered_range
                raise LickdError(f"model '{self.info.name}' offers qualities {low:g}..{high:g} "
                                 f"(measured to beat JPEG there); got {q:g}")
            return q
        if quality is not None and (self.info.quality is None or float(quality) != float(self.info.quality)):
            raise LickdError(f"model '{self.info.name}' codes at one rate only (quality {self.info.quality}); "
                             f"drop the quality or choose a variable-rate model")
        return self.info.quality

    # ------------------------------------------------------------------ coding
    def compress(self, image: ImageLike, quality=None, **coder_settings) -> bytes:
        """Encodes an image (PIL, uint8 array or float tensor) to the bytes of a .lkd file;
        ``quality`` (1..8, fractions too) picks the rate of a variable-rate model."""
        return self.compress_batch([image], quality, **coder_settings)[0]

    @torch.inference_mode()
    def compress_batch(self, images: Sequence[ImageLike], quality=None, **coder_settings) -> list[bytes]:
        """Encodes many images; those of the same padded size go through the network together.
        ``coder_settings``: the rANS coder's ``lanes``, ``chunks``, ``max_overhead``, ``threads``
        (lickd.entropy.options.CodingOptions); the rest of how a file codes is fixed."""
        options = self.coding_options(**coder_settings)
        quality = self.quality_for(quality)
        tensors = [to_tensor(img)[0] for img in images]
        sizes = [t.shape[-2:] for t in tensors]
        out: list[bytes] = [b""] * len(tensors)
        for padded, members in _group_by(sizes, self.padded_size).items():
            y = self._analysis([tensors[i] for i in members], padded, quality)
            for i in members:  # the float images are not needed past g_a: free them before coding
                tensors[i] = None
            coded = self.model.compress(None, quality=quality, y=y, options=options)
            shapes = self.model.latent_shapes(*padded)
            for k, i in enumerate(members):
                sections = [container.Section(name, shapes[name], strings[k])
                            for name, strings in zip(self.model.latent_names, coded["strings"])]
                out[i] = self._file(sizes[i], sections, quality).to_bytes()
        return out

    @staticmethod
    def coding_options(**coder_settings) -> CodingOptions:
        """How new .lkd files code (LKD_FILE_OPTIONS: exact entropy parameters, so files decode
        the same on any device; bare streams) with the rANS coder settings given."""
        fixed = {"entropy_parameters", "bare", "exact_version"} & set(coder_settings)
        if fixed:
            raise TypeError(f"a .lkd file always codes with {sorted(fixed)} = "
                            f"{[getattr(LKD_FILE_OPTIONS, k) for k in sorted(fixed)]}")
        return LKD_FILE_OPTIONS.replace(**coder_settings)

    def padded_size(self, size) -> tuple[int, int]:
        """(H, W) rounded up to the model's downsampling factor: the size the transforms see."""
        return _padded_size(size, self.model.downsampling_factor)

    def tile_for(self, padded) -> int:
        """The tile edge (pixels) of g_a and g_s for images of ``padded`` (H, W); 0: the whole image."""
        if self.tile is not None:
            return int(self.tile)
        large = padded[0] * padded[1] > TILE_THRESHOLD
        return DEFAULT_TILE if large and tiling.can_tile(self.model.g_a) and tiling.can_tile(self.model.g_s) else 0

    def _analysis(self, images: list[torch.Tensor], padded, quality) -> torch.Tensor:
        """y of same-padded-size images; each tile (or the whole image) is padded and moved to
        the device on its own, so no padded copy of a whole large image is made."""
        def source(rows, cols):
            parts = [tiling.replicate_crop(t, rows, cols).to(self.device) for t in images]
            return parts[0] if len(parts) == 1 else torch.cat(parts)

        return tiling.analysis(self.model, source, quality, self.tile_for(padded), size=padded, images=len(images))

    def _file(self, size, sections, quality) -> container.LkdFile:
        info = self.info
        lmbda = float(quality_lambda(quality)) if self.variable_rate and info.metric == "mse" else info.lmbda
        return container.LkdFile(
            model=info.name, weights=info.short_hash, architecture=info.architecture, N=info.N, M=info.M,
            height=int(size[0]), width=int(size[1]), coder=FILE_CODER, quality=quality, lmbda=lmbda,
            metric=info.metric, sections=sections)

    def check_file(self, f: container.LkdFile) -> None:
        """Raises unless ``f`` was encoded by this model with this coder."""
        if f.coder not in READABLE_CODERS:
            raise CorruptFileError(f"coded with '{f.coder}', this lickd decodes "
                                   f"{' or '.join(repr(c) for c in READABLE_CODERS)}")
        if f.weights != self.info.short_hash:
            raise LickdError(f"file was encoded with model '{f.model}@{f.weights}', "
                             f"this codec holds '{self.name}'")
        expected = self.model.latent_shapes(*self.padded_size((f.height, f.width)))
        got = {s.name: s.shape for s in f.sections}
        if got != expected:
            raise CorruptFileError(f"latent shapes {got} do not match the model and image size ({expected})")
        if self.variable_rate:
            if f.quality is None:
                raise CorruptFileError("the file records no quality, which its variable-rate model needs")
            try:
                check_quality(f.quality)
            except ValueError as e:
                raise CorruptFileError(f"header field 'quality': {e}") from None

    def _decode_group(self, files: list[container.LkdFile]) -> dict[str, torch.Tensor]:
        """Quantised latents of files of one padded size and coder, decoded as one batch."""
        strings = [[f.section(name).data for f in files] for name in self.model.latent_names]
        # CompressAI's convention: ``shape`` is the spatial size of the last latent (y or z).
        shape = files[0].section(self.model.latent_names[-1]).shape[-2:]
        options = LKD_FILE_OPTIONS.replace(exact_version=READABLE_CODERS[files[0].coder])
        with torch.inference_mode():
            return self.model.decode_latents(strings, shape, options)

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
        out: list = [None] * len(files)
        for (padded, _), members in _group_by(
                files, lambda f: (self.padded_size((f.height, f.width)), f.coder)).items():
            group = [files[i] for i in members]
            y_hat = self._decode_group(group)["y"]
            quality = torch.tensor([float(f.quality) for f in group]) if self.variable_rate else None
            if self.device.type == "cpu":  # g_s in the CPU layout from its first layer on
                y_hat = y_hat.contiguous(memory_format=CPU_LAYOUT)
            x_hat = tiling.synthesis(self.model, y_hat, quality, self.tile_for(padded)).clamp_(0, 1)
            del y_hat  # before the conversion to 8 bits
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


__all__ = ["FILE_CODER", "READABLE_CODERS", "StudentCodec", "read_info", "resolve_device"]
