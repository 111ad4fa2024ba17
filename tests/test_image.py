"""Reading image files: 16 bits per channel is refused, never cut to 8, by every reader of lickd."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from lickd import ImageFormatError
from lickd.cli import main
from lickd.image import load_rgb, read_image, to_tensor


def png(width: int, height: int, bit_depth: int, colour_type: int, samples: np.ndarray) -> bytes:
    """A PNG written by hand (Pillow cannot write 48-bit RGB): big-endian samples, filter 0."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = samples.astype(">u2" if bit_depth == 16 else "u1").reshape(height, -1)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.fixture
def deep_images(tmp_path, rng):
    """16-bit images of every kind Pillow opens, each a file, with a note of what Pillow reports."""
    rgb16 = rng.integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    files = {"rgb48.png": png(5, 6, 16, 2, rgb16), "grey16.png": png(5, 6, 16, 0, rgb16[..., 0]),
             "rgba64.png": png(5, 6, 16, 6, np.dstack([rgb16, rgb16[..., :1]])),
             "rgb48.ppm": b"P6\n5 6\n65535\n" + rgb16.astype(">u2").tobytes(),
             "grey16.pgm": b"P5\n5 6\n65535\n" + rgb16[..., 0].astype(">u2").tobytes()}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return {name: tmp_path / name for name in files}


def test_pillow_reads_a_48_bit_png_as_8_bit_rgb(deep_images):
    """Why the check is needed: nothing in the opened image says 16 bits but the decoder's raw mode."""
    with Image.open(deep_images["rgb48.png"]) as img:
        assert img.mode == "RGB" and img.info == {}
        assert img.tile[0][3] == "RGB;16B"
        img.load()
        assert np.asarray(img).dtype == np.uint8


@pytest.mark.parametrize("name", ["rgb48.png", "grey16.png", "rgba64.png", "rgb48.ppm", "grey16.pgm"])
def test_sixteen_bit_files_are_refused_by_every_reader(deep_images, name):
    path = deep_images[name]
    with pytest.raises(ImageFormatError, match="16-bit"):
        read_image(path)
    with pytest.raises(ImageFormatError, match="16-bit"):
        load_rgb(path)  # evaluation, training data and the benchmarks read through it
    with pytest.raises(ImageFormatError, match="16-bit"):
        to_tensor(Image.open(path))  # what StudentCodec.compress(Image.open(path)) does


def test_the_hand_written_png_is_a_valid_png(tmp_path, rng):
    rgb8 = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    (tmp_path / "rgb24.png").write_bytes(png(5, 6, 8, 2, rgb8))
    assert np.array_equal(load_rgb(tmp_path / "rgb24.png"), rgb8)
    (tmp_path / "rgb24.ppm").write_bytes(b"P6\n5 6\n255\n" + rgb8.tobytes())
    assert np.array_equal(load_rgb(tmp_path / "rgb24.ppm"), rgb8)


def test_encode_refuses_a_48_bit_png_in_one_line(capsys, tmp_path, deep_images, weights_files):
    code = main(["encode", str(deep_images["rgb48.png"]), "-o", str(tmp_path / "x.lkd"),
                 "--weights", str(weights_files["mbt2018-mean"])])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "rgb48.png" in err and "16-bit" in err
    assert not (tmp_path / "x.lkd").exists()


def test_files_that_are_not_images_are_image_format_errors(tmp_path, rng):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageFormatError, match="cannot read image"):
        read_image(tmp_path / "notes.txt")
    good = tmp_path / "good.png"
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageFormatError, match="cannot read image"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.png")
