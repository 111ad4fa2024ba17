"""Entropy models: EntropyBottleneck (factorised prior) and GaussianConditional.

Same parameters, buffers, ``state_dict`` keys and maths as CompressAI's, so CompressAI
checkpoints load unchanged; coding goes through lickd's rANS coder (``coder.TableSet``).
CDF tables live in the buffers ``_quantized_cdf``/``_cdf_length``/``_offset``; they are built
once by ``update()`` and never rebuilt from floats at decode time. Their precision is read
back from the tables themselves (the last CDF value is 2^P), so CompressAI's 16-bit tables
keep working as they are.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..layers.ops import LowerBound
from .cdf import check_tables, pmf_to_quantized_cdf, unpack_cdfs
from .coder import TableSet, use_cuda_coder
from .options import DEFAULT, CodingOptions

DEFAULT_PRECISION = 15

SCALES_MIN, SCALES_MAX, SCALES_LEVELS = 0.11, 256.0, 64
#: the scale table of lickd's own exported models: the same range in 256 steps of 3 % instead of
#: CompressAI's 64 of 13 %. A scale rounded up to the next entry codes y as if its Gaussian were
#: up to a step wider; measured on the shipped N=64 student (4 Kodak images, q1/q3/q6) that cost
#: 1.1-1.6 % of y's bytes with 64 entries and 0.2-0.3 % with 256. The tables ship in the weights
#: (packed, see cdf.pack_cdfs), so the decoder needs nothing else. The CPU coder is no slower with
#: them (kodim23 q3, 2 threads: y in 3.4 / 2.8 ms against 4.5 / 3.9 ms with 64); on a GPU the y
#: tables (~250 KB) exceed the CUDA decoder's shared-memory budget (rans_cuda.cu: 112 KB) and are
#: read from global memory: not measured yet.
EXPORT_SCALES_LEVELS = 256


def get_scale_table(min: float = SCALES_MIN, max: float = SCALES_MAX, levels: int = SCALES_LEVELS) -> Tensor:
    """``levels`` log-spaced scales in [min, max] (by default CompressAI's table, 64 of them)."""
    return torch.exp(torch.linspace(math.log(min), math.log(max), levels))


def _float32(forward):
    """Runs an entropy model's forward in float32 even under autocast: likelihoods down to 1e-9
    and their log2 need more than bf16's 8 mantissa bits."""

    @functools.wraps(forward)
    def wrapped(self, *args, **kwargs):
        def up(v):
            return v.float() if isinstance(v, Tensor) and v.dtype in (torch.float16, torch.bfloat16) else v

        args = [up(a) for a in args]
        kwargs = {k: up(v) for k, v in kwargs.items()}
        device_type = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
        with torch.autocast(device_type, enabled=False):
            return forward(self, *args, **kwargs)

    return wrapped


class EntropyModel(nn.Module):
    """Quantisation, CDF-table buffers and tensor <-> bytes coding shared by the entropy models."""

    _offset: Tensor
    _quantized_cdf: Tensor
    _cdf_length: Tensor

    def __init__(self, likelihood_bound: float = 1e-9, entropy_coder_precision: int = DEFAULT_PRECISION):
        super().__init__()
        self.entropy_coder_precision = int(entropy_coder_precision)
        self.use_likelihood_bound = likelihood_bound > 0
        if self.use_likelihood_bound:
            self.likelihood_lower_bound = LowerBound(likelihood_bound)
        self.register_buffer("_offset", torch.IntTensor())
        self.register_buffer("_quantized_cdf", torch.IntTensor())
        self.register_buffer("_cdf_length", torch.IntTensor())
        self._tables: Optional[TableSet] = None
        self._tables_key: Optional[tuple] = None

    # ------------------------------------------------------------------ quantisation
    def quantize(self, inputs: Tensor, mode: str, means: Optional[Tensor] = None) -> Tensor:
        """``noise``: add U(-1/2, 1/2) (training); ``dequantize``: round around ``means``;
        ``symbols``: the int32 symbols round(inputs - means)."""
        if mode == "noise":  # drawn in logical order, so a channels_last input gets the same noise
            return inputs + torch.empty(inputs.shape, dtype=inputs.dtype, device=inputs.device).uniform_(-0.5, 0.5)
        if mode not in ("dequantize", "symbols"):
            raise ValueError(f'Invalid quantization mode: "{mode}"')
        outputs = inputs - means if means is not None else inputs
        outputs = torch.round(outputs)
        if mode == "symbols":
            return outputs.int()
        return outputs + means if means is not None else outputs

    @staticmethod
    def dequantize(inputs: Tensor, means: Optional[Tensor] = None, dtype: torch.dtype = torch.float) -> Tensor:
        if means is not None:
            return inputs.type_as(means) + means
        return inputs.type(dtype)

    # ------------------------------------------------------------------ tables
    def _set_tables(self, cdf: Tensor, cdf_length: Tensor, offset: Tensor) -> None:
        device = self._quantized_cdf.device
        self._quantized_cdf = cdf.to(device=device, dtype=torch.int32)
        self._cdf_length = cdf_length.to(device=device, dtype=torch.int32)
        self._offset = offset.to(device=device, dtype=torch.int32)

    def _build_cdf(self, pmf: Tensor, tail_mass: Tensor, pmf_length: Tensor) -> Tensor:
        """Tables for pmfs [T, L] (valid up to pmf_length) with the tail mass as escape symbol."""
        n_tables, width = pmf.shape
        lengths = pmf_length.detach().cpu().long()
        probs = torch.zeros(n_tables, width + 1, dtype=torch.float64)
        probs[:, :width] = pmf.detach().cpu().double()
        probs[torch.arange(n_tables), lengths] = tail_mass.detach().cpu().double().reshape(-1)
        return pmf_to_quantized_cdf(probs, lengths + 1, self.entropy_coder_precision)

    @property
    def tables(self) -> TableSet:
        """The packed tables for the coder (rebuilt only when the buffers change)."""
        if self._quantized_cdf.numel() == 0 or self._offset.numel() == 0 or self._cdf_length.numel() == 0:
            raise ValueError("Uninitialized CDFs. Run update() first")
        key = tuple((b.data_ptr(), b._version, tuple(b.shape)) for b in
                    (self._quantized_cdf, self._cdf_length, self._offset))
        if self._tables is None or self._tables_key != key:
            self._tables = TableSet(self._quantized_cdf, self._cdf_length, self._offset,
                                    self.table_precision())
            self._tables_key = key
        return self._tables

    def table_precision(self) -> int:
        """P of the stored tables (their last CDF value is 2^P)."""
        last = int(self._quantized_cdf[0, int(self._cdf_length[0]) - 1])
        p = last.bit_length() - 1
        if p < 0 or last != 1 << p:
            raise ValueError(f"CDF tables do not end at a power of two ({last})")
        if not 12 <= p <= 16:
            raise ValueError(f"CDF tables of precision {p}: the coder takes 12..16")
        return p

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A weights file stores the CDF rows packed (cdf.pack_cdfs): check them and pad them again.
        cdf_key, length_key, offset_key = (prefix + n for n in ("_quantized_cdf", "_cdf_length", "_offset"))
        if cdf_key in state_dict and state_dict[cdf_key].numel():
            try:
                if length_key not in state_dict or offset_key not in state_dict:
                    raise ValueError("CDF tables without their lengths and offsets")
                check_tables(state_dict[cdf_key], state_dict[length_key], state_dict[offset_key])
                if state_dict[cdf_key].dim() == 1:
                    state_dict[cdf_key] = unpack_cdfs(state_dict[cdf_key], state_dict[length_key], checked=True)
            except ValueError as e:
                error_msgs.append(f"{cdf_key}: {e}")
                return
        # Table buffers change size with the model: take the checkpoint's shapes.
        for name in ("_offset", "_quantized_cdf", "_cdf_length", "scale_table"):
            key = prefix + name
            if key in state_dict and name in self._buffers and self._buffers[name] is not None:
                self._buffers[name] = torch.empty_like(self._buffers[name]).resize_(state_dict[key].shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if self._quantized_cdf.numel():
            try:
                self.entropy_coder_precision = self.table_precision()
            except ValueError as e:
                error_msgs.append(f"{cdf_key}: {e}")

    # ------------------------------------------------------------------ coding
    def compress(self, inputs: Tensor, indexes: Tensor, means: Optional[Tensor] = None,
                 options: CodingOptions = DEFAULT) -> list[bytes]:
        """One stream per batch item for ``round(inputs - means)`` coded with tables ``indexes``
        (stream format and coder settings from ``options``)."""
        if inputs.dim() < 2:
            raise ValueError("Invalid `inputs` size. Expected a tensor with at least 2 dimensions.")
        if inputs.size() != indexes.size():
            raise ValueError("`inputs` and `indexes` should have the same size.")
        tables = self.tables
        symbols = self.quantize(inputs, "symbols", means)
        if symbols.is_cuda and use_cuda_coder():  # the symbols never leave the GPU
            return tables.encode_cuda(list(symbols.unbind(0)), list(indexes.unbind(0)),
                                      **options.encoder_kwargs(cuda=True))
        kw = options.encoder_kwargs()
        return [tables.encode(symbols[i], indexes[i], **kw) for i in range(symbols.size(0))]

    def decompress_symbols(self, strings: Sequence[bytes], indexes: Tensor,
                           options: CodingOptions = DEFAULT) -> Tensor:
        """The int32 symbols of each stream (on the device of ``indexes``), coded with ``options``
        (``options.bare``: streams without their own header, as a container holds them)."""
        if not isinstance(strings, (tuple, list)) or len(strings) != indexes.size(0):
            raise ValueError("Invalid strings or indexes parameters")
        tables = self.tables
        if indexes.is_cuda and use_cuda_coder():  # the symbols never leave the GPU
            return torch.stack(tables.decode_cuda(list(strings), list(indexes.unbind(0)),
                                                  **options.decoder_kwargs(cuda=True)))
        kw = options.decoder_kwargs()
        symbols = torch.stack([tables.decode(s, indexes[i], **kw) for i, s in enumerate(strings)])
        return symbols.to(indexes.device)

    def decompress(self, strings: Sequence[bytes], indexes: Tensor, dtype: torch.dtype = torch.float,
                   means: Optional[Tensor] = None, options: CodingOptions = DEFAULT) -> Tensor:
        if indexes.dim() < 2:
            raise ValueError("Invalid `indexes` size. Expected a tensor with at least 2 dimensions.")
        return self.dequantize(self.decompress_symbols(strings, indexes, options), means, dtype)


class EntropyBottleneck(EntropyModel):
    """Non-parametric factorised density per channel (Ballé et al., ICLR 2018, appendix 6.1)."""

    _offset: Tensor

    def __init__(self, channels: int, *args, tail_mass: float = 1e-9, init_scale: float = 10,
                 filters: tuple[int, ...] = (3, 3, 3, 3), **kwargs):
        super().__init__(*args, **kwargs)
        self.channels = int(channels)
        self.filters = tuple(int(f) for f in filters)
        self.init_scale = float(init_scale)
        self.tail_mass = float(tail_mass)
        dims = (1,) + self.filters + (1,)
        scale = self.init_scale ** (1 / (len(self.filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(self.filters) + 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.empty(channels, dims[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(self.filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))
        self.quantiles = nn.Parameter(
            torch.tensor([-self.init_scale, 0.0, self.init_scale]).repeat(channels, 1, 1))
        target = math.log(2 / self.tail_mass - 1)
        self.register_buffer("target", torch.tensor([-target, 0.0, target]))

    def _get_medians(self) -> Tensor:
        return self.quantiles[:, :, 1:2]

    def _logits_cumulative(self, inputs: Tensor, stop_gradient: bool) -> Tensor:
        logits = inputs
        for i in range(len(self.filters) + 1):
            matrix, bias = self.matrices[i], self.biases[i]
            if stop_gradient:
                matrix, bias = matrix.detach(), bias.detach()
            logits = torch.matmul(F.softplus(matrix), logits) + bias
            if i < len(self.filters):
                factor = self.factors[i].detach() if stop_gradient else self.factors[i]
                logits = logits + torch.tanh(factor) * torch.tanh(logits)
        return logits

    def _likelihood(self, inputs: Tensor, stop_gradient: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        lower = self._logits_cumulative(inputs - 0.5, stop_gradient=stop_gradient)
        upper = self._logits_cumulative(inputs + 0.5, stop_gradient=stop_gradient)
        return torch.sigmoid(upper) - torch.sigmoid(lower), lower, upper

    def loss(self) -> Tensor:
        """Aux loss: moves ``quantiles`` to the tail_mass/2, median and 1 - tail_mass/2 points."""
        logits = self._logits_cumulative(self.quantiles, stop_gradient=True)
        return torch.abs(logits - self.target).sum()

    @_float32
    def forward(self, x: Tensor, training: Optional[bool] = None) -> tuple[Tensor, Tensor]:
        if training is None:
            training = self.training
        perm = [1, 0] + list(range(2, x.dim()))  # B x C x ... -> C x B x ...
        xc = x.permute(*perm).contiguous()
        shape = xc.size()
        values = xc.reshape(xc.size(0), 1, -1)
        outputs = self.quantize(values, "noise" if training else "dequantize", self._get_medians())
        likelihood, _, _ = self._likelihood(outputs)
        if self.use_likelihood_bound:
            likelihood = self.likelihood_lower_bound(likelihood)
        outputs = outputs.reshape(shape).permute(*perm).contiguous()
        likelihood = likelihood.reshape(shape).permute(*perm).contiguous()
        return outputs, likelihood

    @torch.no_grad()
    def update(self, force: bool = False, update_quantiles: bool = False) -> bool:
        """Builds the CDF tables from the learned density (once, unless ``force``)."""
        if self._offset.numel() > 0 and not force:
            return False
        if update_quantiles:
            self._update_quantiles()
        medians = self.quantiles[:, 0, 1]
        minima = torch.ceil(medians - self.quantiles[:, 0, 0]).int().clamp(min=0)
        maxima = torch.ceil(self.quantiles[:, 0, 2] - medians).int().clamp(min=0)
        pmf_start = medians - minima
        pmf_length = maxima + minima + 1
        samples = torch.arange(int(pmf_length.max()), device=pmf_start.device)
        samples = samples[None, :] + pmf_start[:, None, None]
        pmf, lower, upper = self._likelihood(samples, stop_gradient=True)
        pmf = pmf[:, 0, :]
        tail_mass = torch.sigmoid(lower[:, 0, :1]) + torch.sigmoid(-upper[:, 0, -1:])
        self._set_tables(self._build_cdf(pmf, tail_mass, pmf_length), pmf_length + 2, -minima)
        return True

    @torch.no_grad()
    def _update_quantiles(self, search_radius: float = 1e5, rtol: float = 1e-4, atol: float = 1e-3) -> None:
        """Sets ``quantiles`` by bisection on the learned CDF (faster and more exact than the aux loss)."""
        shape = (self.channels, 1, 1)
        device = self.quantiles.device
        for i, target in enumerate(self.target):
            low = torch.full(shape, -search_radius, device=device)
            high = torch.full(shape, search_radius, device=device)
            while not torch.isclose(low, high, rtol=rtol, atol=atol).all():
                mid = (low + high) / 2
                f_mid = self._logits_cumulative(mid, stop_gradient=True)
                low = torch.where(f_mid <= target, mid, low)
                high = torch.where(f_mid >= target, mid, high)
            self.quantiles[:, :, i] = ((low + high) / 2)[:, :, 0]

    def _build_indexes(self, size: torch.Size, device) -> Tensor:
        view = [1, -1] + [1] * (len(size) - 2)
        return torch.arange(size[1], device=device, dtype=torch.int32).view(*view).expand(*size)

    def expanded_medians(self, batch: int, spatial_dims: int) -> Tensor:
        medians = self._get_medians().detach().reshape(1, -1, *([1] * spatial_dims))
        return medians.expand(batch, -1, *([1] * spatial_dims))

    def compress(self, x: Tensor, options: CodingOptions = DEFAULT) -> list[bytes]:
        indexes = self._build_indexes(x.size(), x.device)
        medians = self.expanded_medians(x.size(0), x.dim() - 2)
        return super().compress(x, indexes, medians, options)

    def decompress(self, strings: Sequence[bytes], size: Sequence[int],
                   options: CodingOptions = DEFAULT) -> Tensor:
        device = self.quantiles.device
        indexes = self._build_indexes(torch.Size((len(strings), self.channels, *size)), device)
        medians = self.expanded_medians(len(strings), len(size))
        return super().decompress(strings, indexes, medians.dtype, medians, options)


class GaussianConditional(EntropyModel):
    """Gaussian with a given scale (and mean) per element; tables for a discrete scale table."""

    def __init__(self, scale_table: Optional[Sequence[float]], *args, scale_bound: float = 0.11,
                 tail_mass: float = 1e-9, **kwargs):
        super().__init__(*args, **kwargs)
        if scale_table is not None:
            scale_table = [float(s) for s in scale_table]
            if not scale_table or scale_table != sorted(scale_table) or any(s <= 0 for s in scale_table):
                raise ValueError(f"Invalid scale_table {scale_table}")
        if scale_bound is None or scale_bound <= 0:
            raise ValueError("scale_bound must be > 0")
        self.tail_mass = float(tail_mass)
        self.lower_bound_scale = LowerBound(scale_bound)
        self.register_buffer("scale_table", torch.tensor(scale_table) if scale_table else torch.Tensor())
        self.register_buffer("scale_bound", torch.tensor([float(scale_bound)]))

    @staticmethod
    def _standardized_cumulative(inputs: Tensor) -> Tensor:
        # erfc keeps precision in the far tail.
        return 0.5 * torch.erfc(-(2**-0.5) * inputs)

    def _likelihood(self, inputs: Tensor, scales: Tensor, means: Optional[Tensor] = None) -> Tensor:
        values = inputs - means if means is not None else inputs
        scales = self.lower_bound_scale(scales)
        values = torch.abs(values)
        upper = self._standardized_cumulative((0.5 - values) / scales)
        lower = self._standardized_cumulative((-0.5 - values) / scales)
        return upper - lower

    @_float32
    def forward(self, inputs: Tensor, scales: Tensor, means: Optional[Tensor] = None,
                training: Optional[bool] = None) -> tuple[Tensor, Tensor]:
        if training is None:
            training = self.training
        outputs = self.quantize(inputs, "noise" if training else "dequantize", means)
        likelihood = self._likelihood(outputs, scales, means)
        if self.use_likelihood_bound:
            likelihood = self.likelihood_lower_bound(likelihood)
        return outputs, likelihood

    def update_scale_table(self, scale_table: Tensor, force: bool = False) -> bool:
        if self._offset.numel() > 0 and not force:
            return False
        self.scale_table = torch.as_tensor(scale_table, dtype=torch.float32).to(self.scale_bound.device)
        self.update()
        return True

    @torch.no_grad()
    def update(self) -> None:
        """Builds one table per entry of ``scale_table``, covering +-Phi^-1(tail_mass/2) scales."""
        multiplier = -torch.special.ndtri(torch.tensor(self.tail_mass / 2, dtype=torch.float64)).item()
        pmf_center = torch.ceil(self.scale_table * multiplier).int()
        pmf_length = 2 * pmf_center + 1
        samples = torch.abs(torch.arange(int(pmf_length.max()), device=pmf_center.device).int()
                            - pmf_center[:, None]).float()
        scales = self.scale_table.unsqueeze(1).float()
        upper = self._standardized_cumulative((0.5 - samples) / scales)
        lower = self._standardized_cumulative((-0.5 - samples) / scales)
        pmf = upper - lower
        tail_mass = 2 * lower[:, :1]
        self._set_tables(self._build_cdf(pmf, tail_mass, pmf_length), pmf_length + 2, -pmf_center)

    def build_indexes(self, scales: Tensor) -> Tensor:
        """Index of the smallest table scale >= each (lower-bounded) scale: CompressAI's rule."""
        scales = self.lower_bound_scale(scales).contiguous()  # bucketize wants logical order
        boundaries = self.scale_table[:-1].to(scales.dtype).contiguous()
        return torch.bucketize(scales, boundaries, right=False).int()
