"""Entropy models (what the probabilities are) and the rANS coder (how they become bytes)."""
from .cdf import pmf_to_quantized_cdf
from .coder import CODER_ID, StreamError, TableSet, stream_info
from .models import (DEFAULT_PRECISION, EntropyBottleneck, EntropyModel, GaussianConditional,
                     get_scale_table)
from .options import LKD_FILE_OPTIONS, CodingOptions

__all__ = [
    "CODER_ID", "DEFAULT_PRECISION", "LKD_FILE_OPTIONS", "CodingOptions", "EntropyBottleneck", "EntropyModel",
    "GaussianConditional", "StreamError", "TableSet", "get_scale_table", "pmf_to_quantized_cdf", "stream_info",
]
