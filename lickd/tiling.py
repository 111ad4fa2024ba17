"""The transforms over overlapping tiles: any image size in bounded memory, the same outputs.

A chain of convolutions (g_a, g_s, h_s; GDN and the activations are pointwise) computes each
output from a bounded window of its input, found here from the layers' kernel sizes, strides,
paddings and dilations (``Footprint``). ``run`` splits the output into blocks, computes each
block from the input window it depends on (its *halo* beyond the block's own input), and keeps
only the block: every kept output sees exactly the inputs it sees in the whole-image pass, and
a tile that reaches the image border sees the same padding there. Tile inputs start on the
chain's grid (a multiple of 16 pixels for g_a), so every layer's samples fall where the
whole-image pass puts them.

For the Ballé-family transforms (four 5x5 layers of stride 2, padding 2):

* g_a: the latent at row r sees pixel rows 16r - 30 .. 16r + 30; a block of latent rows
  [a, b) reads pixel rows [16a - 32, 16b + 15) (the left halo rounded out to the grid);
* g_s: the pixels of latent rows [a, b) (pixel rows [16a, 16b)) come from latent rows
  [a - 1, b + 2);
* h_s (two 5x5 transposed convs of stride 2, then a 3x3 conv): y rows [4a, 4b) come from z rows
  [a - 1, b + 2).

What is equal: the exact h_s is bit-identical tiled or not, whatever the tile size, since every
sum it forms is exact (version 1 runs over tiles of z; version 2, whose activation steps are per
image, runs whole with its GEMMs over blocks of rows). The float transforms compute every kept
output from the same inputs with the same weights in the same memory format; only the
convolution library's choice of algorithm for another tensor shape can change the summation
order. Measured on this project's
AVX2 CPU: g_a bit-identical, g_s within 3e-8 (N=64, M=192, 512-pixel tiles); see
tests/test_tiling.py for what is asserted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence, Union

import torch
from torch import Tensor, nn

from .entropy.exact import EXACT_VERSION
from .layers import GDN

#: layers that map each position to itself (across channels only)
POINTWISE = (GDN, nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Identity)

#: exact h_s tile (version 1), in z positions: its float64 unfold of the last 3x3 conv holds ~20 KB per y
#: position (mbt2018-mean, M=192), ~120 MB for a tile of 16 z (19 with its halo). The whole
#: pass on a 24 MP image would hold ~2 GB there; tiled, its time at 24 MP is ~1 s on one core.
EXACT_TILE = 16


@dataclass(frozen=True)
class _Axis:
    """One layer along one axis: which inputs an output sees, and how many outputs there are."""

    transposed: bool
    extent: int  # dilation * (kernel - 1): the last tap's offset
    stride: int
    padding: int
    output_padding: int = 0

    def inputs(self, lo: int, hi: int) -> tuple[int, int]:
        """The input positions (closed range) that outputs ``lo..hi`` depend on."""
        s, p = self.stride, self.padding
        if self.transposed:  # output u = i * s - p + tap
            return -((self.extent - lo - p) // s), (hi + p) // s
        return lo * s - p, hi * s - p + self.extent

    def size(self, n: int) -> int:
        s, p = self.stride, self.padding
        if self.transposed:
            return (n - 1) * s - 2 * p + self.extent + self.output_padding + 1
        return (n + 2 * p - self.extent - 1) // s + 1

    @property
    def scale(self) -> Fraction:
        return Fraction(self.stride) if self.transposed else Fraction(1, self.stride)


class Footprint:
    """How the outputs of a chain of layers depend on its inputs along one axis.

    ``scale``: outputs per input (1/16 for g_a, 16 for g_s); ``align``: tiles start at multiples
    of it, so that every layer's grid lines up with the whole-image pass; ``halo``: the inputs a
    tile reads before and after its own (the inputs its outputs would have at ``scale``)."""

    def __init__(self, layers: Sequence[_Axis]):
        self.layers = tuple(layers)
        scale, align = Fraction(1), 1
        for layer in self.layers:
            scale *= layer.scale
            align = math.lcm(align, scale.denominator)
        self.scale, self.align = scale, align

    def size(self, n: int) -> int:
        """The output length for an input of length ``n``."""
        for layer in self.layers:
            n = layer.size(n)
        return n

    def window(self, lo: int, hi: int) -> tuple[int, int]:
        """The inputs [start, stop) that outputs [lo, hi) depend on, ``start`` on the grid; not
        clipped to the input."""
        a, b = lo, hi - 1
        for layer in reversed(self.layers):
            a, b = layer.inputs(a, b)
        return a // self.align * self.align, b + 1

    @property
    def halo(self) -> tuple[int, int]:
        """Inputs read before and after a block's own inputs (grid-aligned, away from borders)."""
        block = self.scale.numerator * self.align  # a block whose own inputs start on the grid
        lo = 4 * block * self.scale.denominator  # far from 0: the window is not clipped
        start, stop = self.window(lo, lo + block)
        return int(lo / self.scale) - start, stop - int((lo + block) / self.scale)


def _leaves(module: nn.Module):
    if isinstance(module, nn.Sequential):  # FusedSequential (lickd.accelerate) included
        for child in module:
            yield from _leaves(child)
    else:
        yield module


def footprints(module: nn.Module) -> tuple[Footprint, Footprint]:
    """The (height, width) footprints of a transform: an ``nn.Sequential`` (nested ones too) of
    Conv2d / ConvTranspose2d and pointwise layers. Raises TypeError for any other layer."""
    axes: tuple[list, list] = ([], [])
    for m in _leaves(module):
        if isinstance(m, POINTWISE):
            continue
        if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) or isinstance(m.padding, str):
            raise TypeError(f"cannot tile over {type(m).__name__} (only convolutions and pointwise layers)")
        if m.padding_mode == "circular":  # a border tile would wrap onto its own far edge
            raise TypeError("cannot tile over a convolution with circular padding")
        transposed = isinstance(m, nn.ConvTranspose2d)
        for d in range(2):
            axes[d].append(_Axis(transposed, m.dilation[d] * (m.kernel_size[d] - 1), m.stride[d], m.padding[d],
                                 m.output_padding[d] if transposed else 0))
    return Footprint(axes[0]), Footprint(axes[1])


def can_tile(module: nn.Module) -> bool:
    try:
        footprints(module)
    except TypeError:
        return False
    return True


@dataclass(frozen=True)
class _Span:
    out: slice  # the block, in output positions
    inp: slice  # the inputs it is computed from
    keep: slice  # the block within the tile's output


def _spans(footprint: Footprint, n_in: int, block: int) -> list[_Span]:
    n_out = footprint.size(n_in)
    spans = []
    for lo in range(0, n_out, block):
        hi = min(lo + block, n_out)
        start, stop = footprint.window(lo, hi)
        start, stop = max(start, 0), min(stop, n_in)
        offset = footprint.scale * start  # the tile's first output, in the whole output
        assert offset.denominator == 1
        spans.append(_Span(slice(lo, hi), slice(start, stop), slice(lo - int(offset), hi - int(offset))))
    return spans


Source = Union[Tensor, Callable[[slice, slice], Tensor]]


def replicate_crop(x: Tensor, rows: slice, cols: slice) -> Tensor:
    """``x[..., rows, cols]`` of ``x`` padded beyond its last row and column by replicating them
    (``lickd.image.pad_to_multiple``'s padding): a tile of the padded image without a padded copy
    of the whole image. Always contiguous (NCHW, like ``pad_to_multiple``'s output), so every
    tile and the whole image reach the model in one memory format, whatever the input's: the
    convolutions' bits depend on it."""
    h, w = x.shape[-2:]
    if rows.stop <= h and cols.stop <= w:
        return x[..., rows, cols].contiguous()
    r = torch.arange(rows.start, rows.stop, device=x.device).clamp_(max=h - 1)
    c = torch.arange(cols.start, cols.stop, device=x.device).clamp_(max=w - 1)
    return x[..., r[:, None], c].contiguous()


def run(fn: Callable[[Tensor], Tensor], source: Source, fp: Union[tuple[Footprint, Footprint], None],
        block: tuple[int, int], size: Union[tuple[int, int], None] = None, batch: int = 1) -> Tensor:
    """``fn`` (a transform with footprints ``fp``) over tiles whose outputs are ``block`` (rows,
    columns) output positions, stitched into the whole output; ``fp=None``: the whole input in
    one call.

    ``source`` is the input [B, C, H, W], or a function of (rows, columns) slices that returns
    that part of it (``size`` then gives H x W): the caller can build each tile on the fly,
    e.g. padded and converted from the image. Up to ``batch`` tiles of the same shape go through
    ``fn`` together, concatenated on the batch dimension (``fn`` sees ``batch * B`` items, tile
    after tile). The output keeps the memory format of the tiles' outputs (channels_last stays)."""
    if isinstance(source, Tensor):
        tensor, size = source, tuple(source.shape[-2:])

        def source(rows, cols):
            return tensor[..., rows, cols]
    if fp is None:
        return fn(source(slice(0, size[0]), slice(0, size[1])))
    rows, cols = (_spans(f, n, max(1, int(b))) for f, n, b in zip(fp, size, block))
    if len(rows) == 1 and len(cols) == 1:  # one tile: the whole pass, nothing to stitch
        return fn(source(rows[0].inp, cols[0].inp))
    by_shape: dict = {}
    for r in rows:
        for c in cols:
            by_shape.setdefault((r.inp.stop - r.inp.start, c.inp.stop - c.inp.start), []).append((r, c))
    out = None
    batch = max(1, batch)
    for tiles in by_shape.values():
        for k in range(0, len(tiles), batch):
            chunk = tiles[k:k + batch]
            parts = [source(r.inp, c.inp) for r, c in chunk]
            res = fn(parts[0] if len(parts) == 1 else torch.cat(parts))
            del parts
            n = res.size(0) // len(chunk)
            if out is None:
                fmt = torch.channels_last if res.dim() == 4 and not res.is_contiguous() and \
                    res.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
                out = torch.empty((n, res.size(1), fp[0].size(size[0]), fp[1].size(size[1])),
                                  dtype=res.dtype, device=res.device, memory_format=fmt)
            for j, (r, c) in enumerate(chunk):
                out[:, :, r.out, c.out] = res[j * n:(j + 1) * n, :, r.keep, c.keep]
            del res
    return out


def _per_tile(quality, images: int):
    """``quality`` for a batch of tiles of ``images`` images each (``run`` stacks them tile
    after tile): a number as it is, one per image repeated for every tile."""
    if isinstance(quality, Tensor) and quality.dim() > 0:
        return lambda n: quality.reshape(-1).repeat(n // images)
    return lambda n: quality


def _pixel_tiles(module: nn.Module, tile: int):
    """Footprints of g_a or g_s and the block, in its output positions, of a tile of ``tile``
    pixels a side rounded down to the latent grid (at least one latent); (None, None) for 0."""
    if not tile:
        return None, None
    fp = footprints(module)

    def block(f: Footprint) -> int:
        per_latent = max(f.scale, 1 / f.scale)  # pixels per latent position
        latents = max(1, int(tile // per_latent))
        return latents * int(f.scale) if f.scale > 1 else latents
    return fp, tuple(block(f) for f in fp)


def analysis(model, source: Source, quality=None, tile: int = 512, size=None, images: int = 1,
             batch: int = 1) -> Tensor:
    """``model.analysis(x, quality)`` over tiles of ``tile`` x ``tile`` pixels (0: the whole
    image in one pass); ``source``, ``size`` and ``batch`` as in ``run``, ``images`` the batch
    a callable ``source`` returns."""
    q = _per_tile(quality, source.size(0) if isinstance(source, Tensor) else images)
    return run(lambda x: model.analysis(x, q(x.size(0))), source, *_pixel_tiles(model.g_a, tile), size, batch)


def synthesis(model, y_hat: Tensor, quality=None, tile: int = 512, batch: int = 1) -> Tensor:
    """``model.synthesis(y_hat, quality)`` over tiles of ``tile`` x ``tile`` output pixels (0:
    the whole image in one pass)."""
    q = _per_tile(quality, y_hat.size(0))
    return run(lambda y: model.synthesis(y, q(y.size(0))), y_hat, *_pixel_tiles(model.g_s, tile), batch=batch)


def exact_hyper_synthesis(model, z_hat: Tensor, tile: int = EXACT_TILE,
                          version: int = EXACT_VERSION) -> Tensor:
    """``model.exact_h_s(z_hat, version)`` in ``z_hat``'s dtype, in bounded memory. Version 2
    runs whole (its activation steps are per image; its GEMMs go over blocks of rows), version 1
    over tiles of ``tile`` z positions: bit-identical to the whole pass (exact arithmetic) in a
    fraction of its float64 memory."""
    if version != 1:
        return model.exact_h_s(z_hat, version).to(z_hat.dtype)
    fp = footprints(model.h_s)
    return run(lambda z: model.exact_h_s(z, 1).to(z_hat.dtype), z_hat, fp, tuple(int(tile * f.scale) for f in fp))


__all__ = ["EXACT_TILE", "Footprint", "analysis", "can_tile", "exact_hyper_synthesis", "footprints",
           "replicate_crop", "run", "synthesis"]
