"""Base class of the compression models and the architecture registry."""
from __future__ import annotations

from typing import Optional

import torch.nn as nn
from torch import Tensor

from ..entropy import EntropyBottleneck, GaussianConditional, get_scale_table
from ..entropy.options import DEFAULT, CodingOptions

#: architecture name (CompressAI's zoo key) -> model class
ARCHITECTURES: dict[str, type["CompressionModel"]] = {}


def register_architecture(name: str):
    def wrap(cls):
        cls.architecture = name
        ARCHITECTURES[name] = cls
        return cls
    return wrap


class CompressionModel(nn.Module):
    """An auto-encoder with EntropyBottleneck and/or GaussianConditional entropy models.

    Subclasses follow CompressAI's contract: ``forward(x) -> {"x_hat", "likelihoods"}`` (plus
    ``"latents"``: the continuous y and z, what distillation matches),
    ``compress(x) -> {"strings", "shape"}``, ``decompress(strings, shape) -> {"x_hat"}``,
    plus ``decode_latents(strings, shape)`` that returns the quantised latents by name. Coding
    methods take ``options`` (lickd.entropy.options.CodingOptions): CompressAI's float entropy
    parameters and self-describing streams by default, what .lkd files hold with ``LKD_FILE_OPTIONS``.
    """

    architecture: str = ""
    #: names of the coded latents, in the order of ``compress()["strings"]``
    latent_names: tuple[str, ...] = ()
    N: int
    M: int

    @property
    def downsampling_factor(self) -> int:
        raise NotImplementedError

    def update(self, scale_table: Optional[Tensor] = None, force: bool = False,
               update_quantiles: bool = False) -> bool:
        """Builds the CDF tables of every entropy model; needed once after training. Without a
        ``scale_table`` a GaussianConditional keeps the one it has, or gets CompressAI's default
        (64 entries) if it has none: lickd's exports pass their own (``exported_model``)."""
        updated = False
        for module in self.modules():
            if isinstance(module, EntropyBottleneck):
                updated |= module.update(force=force, update_quantiles=update_quantiles)
            if isinstance(module, GaussianConditional):
                table = scale_table if scale_table is not None else (
                    module.scale_table if module.scale_table.numel() else get_scale_table())
                updated |= module.update_scale_table(table, force=force)
        return updated

    def aux_loss(self) -> Tensor:
        """Sum of the EntropyBottleneck quantile losses (optimised by the aux optimiser)."""
        return sum(m.loss() for m in self.modules() if isinstance(m, EntropyBottleneck))

    @classmethod
    def from_state_dict(cls, state_dict: dict) -> "CompressionModel":
        """Builds the model with N and M read from the tensor shapes, then loads the weights."""
        net = cls(**cls.widths_from_state_dict(state_dict))
        net.load_state_dict(state_dict)
        return net

    @staticmethod
    def widths_from_state_dict(state_dict: dict) -> dict[str, int]:
        return {"N": int(state_dict["g_a.0.weight"].size(0)), "M": int(state_dict["g_a.6.weight"].size(0))}

    def latent_shapes(self, height: int, width: int) -> dict[str, tuple[int, int, int]]:
        """(C, H, W) of each coded latent for a padded input of ``height`` x ``width``."""
        raise NotImplementedError

    #: whether one model codes at many rates (``quality`` picks the rate; lickd.models.variable_rate)
    variable_rate: bool = False

    def analysis(self, x: Tensor, quality=None) -> Tensor:
        """The coded latent y of an image batch (``quality`` matters to variable-rate models only)."""
        return self.g_a(x)

    def synthesis(self, y_hat: Tensor, quality=None) -> Tensor:
        """The reconstruction from the quantised latent y_hat."""
        return self.g_s(y_hat)

    def decompress(self, strings: list, shape, quality=None, options: CodingOptions = DEFAULT) -> dict:
        y_hat = self.decode_latents(strings, shape, options)["y"]
        return {"x_hat": self.synthesis(y_hat, quality).clamp_(0, 1)}
