"""Neural-network layers of the transforms (PyTorch reference implementations)."""
from .conv import conv, deconv
from .gdn import GDN
from .ops import LowerBound, NonNegativeParametrizer

__all__ = ["GDN", "LowerBound", "NonNegativeParametrizer", "conv", "deconv"]
