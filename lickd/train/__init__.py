"""Training: teachers (rate-distortion), distilled students, no-KD controls (``lickd train`` /
``lickd distill``; multi-process with ``torchrun --nproc_per_node K -m lickd.cli train``)."""
from .config import KDConfig, TrainConfig, load_config
from .checkpoint import export_run, saved_config
from .engine import Trainer
from .losses import DistillationLoss, RateDistortionLoss

__all__ = ["DistillationLoss", "KDConfig", "RateDistortionLoss", "TrainConfig", "Trainer", "export_run",
           "load_config", "saved_config"]
