"""Neural-network layers of the transforms (PyTorch reference implementations)."""
from .convolution import PhaseConvTranspose2d, conv, deconv, plain_layer_type
from .gdn import GDN
from .ops import LowerBound, NonNegativeParametrizer

__all__ = ["GDN", "LowerBound", "NonNegativeParametrizer", "PhaseConvTranspose2d", "conv", "deconv", "plain_layer_type"]
