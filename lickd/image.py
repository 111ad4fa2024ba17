"""Image files, image <-> tensor conversion and padding for the codec.

Accepted inputs: a PIL image, a uint8 numpy array (H x W or H x W x 3) or a float tensor
(3 x H x W or 1 x 3 x H x W, values in [0, 1]). Greyscale, palette, bilevel and CMYK images are
converted to RGB with a warning; alpha channels and 16-bit or float images are refused with a
clear error, never silently truncated.

``read_image`` and ``load_rgb`` are lickd's one way to read an image file (the command line,
evaluation, training data and the benchmarks all use them). Pillow opens a 48-bit RGB PNG or TIFF
and a 16-bit PPM as 8-bit "RGB", dropping the low byte of every sample; only the decoder's raw
mode still tells, so the file's sample width is checked before its pixels are read.
"""
from __future__ import annotations

import os
import warnings
from typing import Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .errors import ImageFormatError

ImageLike = Union[Image.Image, np.ndarray, Tensor]
OutputKind = Literal["pil", "numpy", "tensor"]

_CONVERTIBLE = {"L": "greyscale", "P": "palette", "1": "bilevel", "CMYK": "CMYK", "YCbCr": "YCbCr",
                "LAB": "Lab", "HSV": "HSV"}
_ALPHA = {"RGBA", "LA", "PA", "RGBa", "La"}


def _check_bit_depth(img: Image.Image) -> None:
    """Refuses a not yet loaded image that stores more than 8 bits per sample in a mode Pillow
    reads as 8 bits: a 16-bit raw mode (RGB;16B, RGB;16L...), or a PPM of maximum value > 255.
    (Once loaded, an image no longer tells.)"""
    for tile in getattr(img, "tile", None) or ():
        args = tile[3]
        rawmode = args if isinstance(args, str) else (args[0] if args and isinstance(args[0], str) else "")
        deep_ppm = img.format == "PPM" and isinstance(args, tuple) and len(args) > 1 \
            and isinstance(args[1], int) and args[1] > 255
        if ";16" in rawmode or deep_ppm:
            raise ImageFormatError(f"image is 16-bit per channel ({img.format} {img.mode}); lickd codes 8-bit RGB: "
                                   "convert it to 8 bits first")


def _pil_to_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    _check_bit_depth(img)
    if mode in _ALPHA or (mode == "P" and "transparency" in img.info):
        raise ImageFormatError(
            f"image has an alpha channel (mode {mode}); lickd codes RGB only: flatten it first, "
            "e.g. Image.alpha_composite onto a background, then convert('RGB')")
    if mode.startswith("I") or mode == "F":
        raise ImageFormatError(
            f"image is {'16-bit' if mode.startswith('I;16') or mode == 'I' else 'floating-point'} (mode {mode}); "
            "lickd codes 8-bit RGB: convert it to 8 bits first")
    if mode != "RGB":
        if mode not in _CONVERTIBLE:
            raise ImageFormatError(f"unsupported image mode {mode}")
        warnings.warn(f"converting {_CONVERTIBLE[mode]} image (mode {mode}) to RGB", stacklevel=3)
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def read_image(path: os.PathLike) -> Image.Image:
    """The image in a file, decoded into memory. A file that is not an image, cannot be decoded
    or stores 16 bits per channel is an ImageFormatError; a missing or unreadable file is the
    OSError ``open`` raises."""
    from .container import MAX_PIXELS

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's bomb check, at the largest image a .lkd file may hold
    try:
        img = Image.open(path)
    except UnidentifiedImageError as e:
        raise ImageFormatError(f"cannot read image ({e})") from None
    except Image.DecompressionBombError:
        raise ImageFormatError(f"image exceeds the limit of {MAX_PIXELS:,} pixels") from None
    with img:
        _check_bit_depth(img)
        try:
            img.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageFormatError(f"cannot read image ({e})") from None
        return img.copy()


def rgb_array(image: Image.Image) -> np.ndarray:
    """The 8-bit RGB pixels (H x W x 3 uint8) the codec sees for ``image``: greyscale, palette,
    CMYK... converted without a warning; alpha and 16-bit images refused."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _pil_to_array(image)


def load_rgb(path: os.PathLike) -> np.ndarray:
    """An image file's 8-bit RGB pixels (H x W x 3 uint8): ``rgb_array(read_image(path))``."""
    return rgb_array(read_image(path))


def to_tensor(image: ImageLike) -> tuple[Tensor, OutputKind]:
    """Float tensor [1, 3, H, W] in [0, 1] and the kind of the input (to return the same kind)."""
    if isinstance(image, Image.Image):
        arr, kind = _pil_to_array(image), "pil"
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ImageFormatError(f"numpy images must be uint8 (got {image.dtype}); 16-bit input is not supported")
        arr, kind = image, "numpy"
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim == 2:
            warnings.warn("converting greyscale image to RGB", stacklevel=2)
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ImageFormatError(f"numpy images must be H x W or H x W x 3 (got shape {image.shape}); "
                                   "alpha channels are not supported")
    elif isinstance(image, Tensor):
        if not image.is_floating_point():
            raise ImageFormatError(f"tensor images must be floating point in [0, 1] (got {image.dtype})")
        x = image if image.dim() == 4 else image.unsqueeze(0)
        if x.dim() != 4 or x.size(0) != 1 or x.size(1) != 3:
            raise ImageFormatError(f"tensor images must be 3 x H x W or 1 x 3 x H x W (got {tuple(image.shape)})")
        if not bool(torch.isfinite(x).all()):
            raise ImageFormatError("tensor image contains NaN or infinity")
        _check_size(x.size(2), x.size(3))
        return x.float().clamp(0, 1), "tensor"
    else:
        raise ImageFormatError(f"unsupported image type {type(image).__name__}")
    _check_size(arr.shape[0], arr.shape[1])
    x = torch.tensor(arr, dtype=torch.uint8).permute(2, 0, 1).unsqueeze(0)
    return x.float().div_(255.0), kind


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1:
        raise ImageFormatError(f"empty image ({width}x{height})")


def to_uint8(x: Tensor) -> Tensor:
    """[1, 3, H, W] float in [0, 1] -> [H, W, 3] uint8 (rounded), on the CPU."""
    return x[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous().cpu()


def from_tensor(x: Tensor, kind: OutputKind = "pil") -> ImageLike:
    """Converts a decoded [1, 3, H, W] tensor to ``kind``; pixels are rounded to 8 bits for every
    kind, so all three carry the same image."""
    pixels = to_uint8(x)
    if kind == "tensor":
        return pixels.permute(2, 0, 1).float().div_(255.0)
    if kind == "numpy":
        return pixels.numpy()
    if kind == "pil":
        return Image.fromarray(pixels.numpy(), "RGB")
    raise ValueError(f"unknown output kind {kind!r}")


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pads H and W up to a multiple by replicating the last row/column (no seam to code)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def list_images(folder: os.PathLike) -> list[str]:
    """Image files of a folder (sorted; what CompressAI's eval collects)."""
    exts = {".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if os.path.splitext(f)[1].lower() in exts)
