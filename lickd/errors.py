"""Exceptions of lickd. Every error a user can cause is a LickdError with a one-line message."""


class LickdError(Exception):
    """Base class of lickd's errors."""


class CorruptFileError(LickdError, ValueError):
    """A .lkd file or coded stream is truncated, corrupt, hostile or of an unknown version."""


class ModelNotFoundError(LickdError, LookupError):
    """A model name or weights hash is not in the local registry."""


class ImageFormatError(LickdError, ValueError):
    """An input image has a layout the codec does not handle (alpha, 16-bit, wrong shape...)."""
