"""The strided convolutions of the Ballé-family transforms (CompressAI's ``conv``/``deconv``)."""
import torch.nn as nn


def conv(in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2) -> nn.Conv2d:
    """Convolution that divides H and W by ``stride`` ("same" padding)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)


def deconv(in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    """Transposed convolution that multiplies H and W by ``stride``."""
    return nn.ConvTranspose2d(
        in_channels, out_channels, kernel_size, stride=stride,
        output_padding=stride - 1, padding=kernel_size // 2,
    )
