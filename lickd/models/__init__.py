"""Compression models (CompressAI-compatible architectures, any N and M)."""
from .base import ARCHITECTURES, CompressionModel, register_architecture
from .google import FactorizedPrior, MeanScaleHyperprior, ScaleHyperprior

#: CompressAI's MSE lambdas for qualities 1..8 (loss = lambda * 255^2 * MSE + bpp).
MSE_LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)


def teacher_widths(architecture: str, quality: int) -> tuple[int, int]:
    """(N, M) of CompressAI's zoo model of this architecture and quality (1..8)."""
    if not 1 <= quality <= 8:
        raise ValueError("quality must be in 1..8")
    large_from = 5 if architecture == "mbt2018-mean" else 6
    return (192, 320) if quality >= large_from else (128, 192)


def build_model(architecture: str, N: int, M: int) -> CompressionModel:
    try:
        cls = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(f"unknown architecture {architecture!r} (known: {', '.join(ARCHITECTURES)})") from None
    return cls(N=N, M=M)


__all__ = [
    "ARCHITECTURES", "CompressionModel", "FactorizedPrior", "MSE_LAMBDAS", "MeanScaleHyperprior",
    "ScaleHyperprior", "build_model", "register_architecture", "teacher_widths",
]
