"""Compression models (CompressAI-compatible architectures, any N and M)."""
from .base import ARCHITECTURES, CompressionModel, register_architecture
from .google import FactorizedPrior, MeanScaleHyperprior, ScaleHyperprior
from .variable_rate import (MSE_LAMBDAS, VariableRateMeanScaleHyperprior, VariableRateScaleHyperprior,
                            check_quality, quality_lambda)


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
    "ScaleHyperprior", "VariableRateMeanScaleHyperprior", "VariableRateScaleHyperprior", "build_model",
    "check_quality", "quality_lambda", "register_architecture", "teacher_widths",
]
