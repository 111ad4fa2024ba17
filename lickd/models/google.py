"""Ballé-family models: bmshj2018-factorized, bmshj2018-hyperprior, mbt2018-mean.

Module structure and ``state_dict`` keys are CompressAI's (``g_a.0.weight``, ``g_a.1.beta``,
``entropy_bottleneck.quantiles``...), so its checkpoints load unchanged, for any N and M (the
teachers at CompressAI's widths, the students at fewer channels). The transforms are plain
``nn.Sequential``s of conv/GDN layers: ``lickd.kernels`` swaps fused blocks in without
touching these classes.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .. import tiling
from ..entropy import EntropyBottleneck, GaussianConditional
from ..entropy.exact import ExactSequential
from ..entropy.options import DEFAULT, CodingOptions
from ..layers import GDN, conv, deconv
from .base import CompressionModel, register_architecture


QUANTIZATION = ("noise", "mixed")


def _rounded(values, offset, quantization: str, training: bool):
    """What a synthesis sees of a quantised latent in training: the noisy values the rate term
    used ("noise", CompressAI's training), or ``round(v - offset) + offset`` with a
    straight-through gradient ("mixed": the rounded latents decoding will see, Minnen & Singh 2020).
    ``values`` is the continuous latent, ``offset`` the mean or median it is rounded around;
    None means "use the noisy latent"."""
    if quantization not in QUANTIZATION:
        raise ValueError(f"quantization must be one of {QUANTIZATION}, got {quantization!r}")
    if quantization == "noise" or not training:
        return None
    return offset + (values - offset + (torch.round(values - offset) - (values - offset)).detach())


def analysis_transform(N: int, M: int) -> nn.Sequential:
    return nn.Sequential(conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M))


def synthesis_transform(N: int, M: int) -> nn.Sequential:
    return nn.Sequential(
        deconv(M, N), GDN(N, inverse=True), deconv(N, N), GDN(N, inverse=True),
        deconv(N, N), GDN(N, inverse=True), deconv(N, 3),
    )


@register_architecture("bmshj2018-factorized")
class FactorizedPrior(CompressionModel):
    """Ballé et al. 2018, factorised prior: x -> g_a -> y -> EntropyBottleneck -> g_s."""

    latent_names = ("y",)

    def __init__(self, N: int, M: int):
        super().__init__()
        self.N, self.M = int(N), int(M)
        self.entropy_bottleneck = EntropyBottleneck(M)
        self.g_a = analysis_transform(N, M)
        self.g_s = synthesis_transform(N, M)

    @property
    def downsampling_factor(self) -> int:
        return 2**4

    def latent_shapes(self, height, width):
        f = self.downsampling_factor
        return {"y": (self.M, height // f, width // f)}

    def forward(self, x, quality=None, quantization: str = "noise"):
        y = self.analysis(x, quality)
        y_hat, y_likelihoods = self.entropy_bottleneck(y)
        medians = self.entropy_bottleneck.expanded_medians(y.size(0), 2)
        y_ste = _rounded(y, medians, quantization, self.training)
        y_hat = y_hat if y_ste is None else y_ste
        return {"x_hat": self.synthesis(y_hat, quality), "likelihoods": {"y": y_likelihoods}, "latents": {"y": y}}

    def compress(self, x, quality=None, *, y=None, options: CodingOptions = DEFAULT):
        """``y``: the latent of ``x`` when the caller computed it (over tiles: lickd.tiling)."""
        y = self.analysis(x, quality) if y is None else y
        return {"strings": [self.entropy_bottleneck.compress(y, options)], "shape": y.size()[-2:]}

    def decode_latents(self, strings, shape, options: CodingOptions = DEFAULT):
        if not isinstance(strings, (list, tuple)) or len(strings) != 1:
            raise ValueError("FactorizedPrior expects [y_strings]")
        return {"y": self.entropy_bottleneck.decompress(strings[0], shape, options)}


@register_architecture("bmshj2018-hyperprior")
class ScaleHyperprior(CompressionModel):
    """Ballé et al. 2018, scale hyperprior: z = h_a(|y|) codes the scales of a Gaussian on y."""

    latent_names = ("y", "z")

    def __init__(self, N: int, M: int):
        super().__init__()
        self.N, self.M = int(N), int(M)
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.g_a = analysis_transform(N, M)
        self.g_s = synthesis_transform(N, M)
        self.h_a = nn.Sequential(
            conv(M, N, stride=1, kernel_size=3), nn.ReLU(inplace=True),
            conv(N, N), nn.ReLU(inplace=True), conv(N, N),
        )
        self.h_s = nn.Sequential(
            deconv(N, N), nn.ReLU(inplace=True), deconv(N, N), nn.ReLU(inplace=True),
            conv(N, M, stride=1, kernel_size=3), nn.ReLU(inplace=True),
        )
        self.gaussian_conditional = GaussianConditional(None)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (4 + 2)

    def latent_shapes(self, height, width):
        return {"y": (self.M, height // 16, width // 16), "z": (self.N, height // 64, width // 64)}

    def _hyper_analysis(self, y):
        return self.h_a(torch.abs(y))

    def _split_params(self, params):
        """(scales, means) of the Gaussian on y from h_s's output; means is None for the zero-mean model."""
        return params, None

    def _gaussian_params(self, z_hat):
        return self._split_params(self.h_s(z_hat))

    def _coding_params(self, z_hat, options: CodingOptions = DEFAULT):
        """(scales, means) for coding: with ``options.exact`` (what lickd's files use) h_s runs in
        exact fixed point, so every device derives the same CDF indexes; otherwise CompressAI's
        float path."""
        if options.exact:  # bit-identical to the whole pass, in bounded memory
            return self._split_params(tiling.exact_hyper_synthesis(self, z_hat, version=options.exact_version))
        return self._gaussian_params(z_hat)

    @property
    def exact_h_s(self) -> ExactSequential:
        """h_s evaluated exactly (not a registered submodule: the state_dict is unchanged)."""
        m = self.__dict__.get("_exact_h_s")
        if m is None or m.seq is not self.h_s:
            m = self.__dict__["_exact_h_s"] = ExactSequential(self.h_s)
        return m

    def forward(self, x, quality=None, quantization: str = "noise"):
        """Training ("noise": CompressAI's additive uniform noise everywhere; "mixed": noise for
        the rate terms, rounding with a straight-through gradient into h_s and g_s) or, in eval
        mode, the rounded latents decoding sees."""
        y = self.analysis(x, quality)
        z = self._hyper_analysis(y)
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        z_ste = _rounded(z, self.entropy_bottleneck.expanded_medians(z.size(0), 2), quantization, self.training)
        scales_hat, means_hat = self._gaussian_params(z_hat if z_ste is None else z_ste)
        y_hat, y_likelihoods = self.gaussian_conditional(y, scales_hat, means=means_hat)
        y_ste = _rounded(y, means_hat if means_hat is not None else torch.zeros_like(y), quantization, self.training)
        y_hat = y_hat if y_ste is None else y_ste
        return {"x_hat": self.synthesis(y_hat, quality), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods},
                "latents": {"y": y, "z": z}}

    def compress(self, x, quality=None, *, y=None, options: CodingOptions = DEFAULT):
        """``y``: the latent of ``x`` when the caller computed it (over tiles: lickd.tiling)."""
        y = self.analysis(x, quality) if y is None else y
        z = self._hyper_analysis(y)
        z_strings = self.entropy_bottleneck.compress(z, options)
        # The decoder's z_hat, computed without decoding: round(z - median) + median.
        z_hat = self.entropy_bottleneck.quantize(
            z, "dequantize", self.entropy_bottleneck.expanded_medians(z.size(0), 2))
        scales_hat, means_hat = self._coding_params(z_hat, options)
        indexes = self.gaussian_conditional.build_indexes(scales_hat)
        y_strings = self.gaussian_conditional.compress(y, indexes, means=means_hat, options=options)
        return {"strings": [y_strings, z_strings], "shape": z.size()[-2:]}

    def decode_latents(self, strings, shape, options: CodingOptions = DEFAULT):
        if not isinstance(strings, (list, tuple)) or len(strings) != 2:
            raise ValueError(f"{type(self).__name__} expects [y_strings, z_strings]")
        z_hat = self.entropy_bottleneck.decompress(strings[1], shape, options)
        scales_hat, means_hat = self._coding_params(z_hat, options)
        indexes = self.gaussian_conditional.build_indexes(scales_hat)
        y_hat = self.gaussian_conditional.decompress(strings[0], indexes, z_hat.dtype, means=means_hat,
                                                     options=options)
        return {"y": y_hat, "z": z_hat}


@register_architecture("mbt2018-mean")
class MeanScaleHyperprior(ScaleHyperprior):
    """Minnen et al. 2018 without the context model: the hyperprior predicts means and scales."""

    def __init__(self, N: int, M: int):
        super().__init__(N, M)
        self.h_a = nn.Sequential(
            conv(M, N, stride=1, kernel_size=3), nn.LeakyReLU(inplace=True),
            conv(N, N), nn.LeakyReLU(inplace=True), conv(N, N),
        )
        self.h_s = nn.Sequential(
            deconv(N, M), nn.LeakyReLU(inplace=True), deconv(M, M * 3 // 2), nn.LeakyReLU(inplace=True),
            conv(M * 3 // 2, M * 2, stride=1, kernel_size=3),
        )

    def _hyper_analysis(self, y):
        return self.h_a(y)

    def _split_params(self, params):
        scales_hat, means_hat = params.chunk(2, 1)
        return scales_hat, means_hat
