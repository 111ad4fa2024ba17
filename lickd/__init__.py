"""lickd: Learned Image Compression via Knowledge Distillation.

    from lickd import StudentCodec
    codec = StudentCodec.from_file("student.safetensors")
    data = codec.compress(image)          # bytes of a .lkd file
    image = codec.decompress(data)
"""
__version__ = "0.1.0"

from .accelerate import accelerate
from .codec import StudentCodec, read_info
from .errors import CorruptFileError, ImageFormatError, LickdError, ModelNotFoundError

__all__ = ["accelerate", "CorruptFileError", "ImageFormatError", "LickdError", "ModelNotFoundError", "StudentCodec",
           "__version__", "read_info"]
