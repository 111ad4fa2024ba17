"""Model weights: safetensors files (never pickles) and the registry of shipped models.

A lickd weights file is a safetensors file whose metadata names the architecture, widths and
training point (``quality``, ``lambda``, ``metric``; ``qualities``, the range a variable-rate
model offers, when narrower than 1..8), and which holds the model's complete
``state_dict`` including the CDF tables, so decoding never rebuilds tables from floats.
``registry.json`` beside this file lists the shipped files with their sha256; loading checks
the hash, and nothing is ever downloaded.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from ..entropy.cdf import pack_cdfs
from ..errors import CorruptFileError, ModelNotFoundError
from ..models import ARCHITECTURES, CompressionModel, build_model
from ..models.variable_rate import QUALITY_MAX, QUALITY_MIN

ZOO_DIR = Path(__file__).resolve().parent
REGISTRY_PATH = ZOO_DIR / "registry.json"
WEIGHTS_FORMAT = "lickd-weights-1"


@dataclass
class ModelInfo:
    """What a weights file (or registry entry) says about its model."""

    name: str
    architecture: str
    N: int
    M: int
    quality: Optional[int] = None  # a fixed-rate model's quality; a variable-rate model's default one
    #: the range of qualities a variable-rate model offers (its shipping measured each one); None: 1..8
    qualities: Optional[tuple[float, float]] = None
    lmbda: Optional[float] = None
    metric: str = "mse"
    sha256: str = ""
    path: Optional[Path] = None
    description: str = ""
    training: dict = field(default_factory=dict)  # how it was made: teacher, steps, seed, commit...
    default: bool = False  # registry: the model lickd encode and StudentCodec.from_pretrained() use
    measured: dict = field(default_factory=dict)  # registry: Kodak bpp/PSNR per quality, parameters, CPU times

    @property
    def variable_rate(self) -> bool:
        return bool(getattr(ARCHITECTURES.get(self.architecture), "variable_rate", False))

    @property
    def offered_range(self) -> tuple[float, float]:
        """The qualities a variable-rate model codes at: its narrowed range, else all of 1..8."""
        return self.qualities or (QUALITY_MIN, QUALITY_MAX)

    def offers(self, quality: float) -> bool:
        """Whether the model codes at ``quality``: a fixed-rate model at its own only, a
        variable-rate model anywhere in its range."""
        if not self.variable_rate:
            return self.quality is not None and float(quality) == float(self.quality)
        low, high = self.offered_range
        return low <= float(quality) <= high

    @property
    def short_hash(self) -> str:
        return self.sha256[:16]

    def metadata(self) -> dict[str, str]:
        meta = {"format": WEIGHTS_FORMAT, "name": self.name, "architecture": self.architecture,
                "N": str(self.N), "M": str(self.M), "metric": self.metric, "description": self.description}
        if self.quality is not None:
            meta["quality"] = str(self.quality)
        if self.qualities is not None:
            meta["qualities"] = json.dumps([float(q) for q in self.qualities])
        if self.lmbda is not None:
            meta["lambda"] = repr(float(self.lmbda))
        if self.training:
            meta["training"] = json.dumps(self.training, sort_keys=True)
        return meta

    @classmethod
    def from_metadata(cls, meta: dict[str, str], **extra) -> "ModelInfo":
        if meta.get("format") != WEIGHTS_FORMAT:
            raise CorruptFileError("not a lickd weights file (metadata 'format' missing or unknown)")
        try:
            return cls(name=meta["name"], architecture=meta["architecture"], N=int(meta["N"]), M=int(meta["M"]),
                       quality=int(meta["quality"]) if "quality" in meta else None,
                       qualities=quality_range(json.loads(meta["qualities"])) if "qualities" in meta else None,
                       lmbda=float(meta["lambda"]) if "lambda" in meta else None,
                       metric=meta.get("metric", "mse"), description=meta.get("description", ""),
                       training=json.loads(meta.get("training", "{}")), **extra)
        except (KeyError, ValueError, TypeError) as e:
            raise CorruptFileError(f"malformed weights metadata ({e})") from None


def quality_range(value) -> tuple[float, float]:
    """``[low, high]`` as a checked range of qualities inside 1..8."""
    low, high = (float(v) for v in value)
    if not (QUALITY_MIN <= low <= high <= QUALITY_MAX):
        raise ValueError(f"qualities must be a range inside {QUALITY_MIN:g}..{QUALITY_MAX:g}, got {list(value)}")
    return low, high


def file_sha256(path: os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def state_sha256(model: torch.nn.Module) -> str:
    """sha256 of a model's state (names, dtypes, shapes and bytes): the identity of weights that
    are not (yet) in a file, e.g. a model being trained."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_weights(model: CompressionModel, path: os.PathLike, info: ModelInfo, half: bool = False) -> ModelInfo:
    """Writes ``model`` (CDF tables included, packed: ``lickd.entropy.cdf.pack_cdfs``) as
    safetensors; returns ``info`` with the sha256.

    ``half=True`` stores the float parameters in fp16 and rebuilds the CDF tables (on the same
    scale table) from the rounded parameters, so the tables describe exactly the model that will
    be loaded.
    """
    model = copy.deepcopy(model).cpu().float()
    if half:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
        model.update(force=True)
    params = {n for n, _ in model.named_parameters()}
    tensors = {}
    state = model.state_dict()
    for name, t in state.items():
        t = t.detach().contiguous()
        if name.endswith("._quantized_cdf") and t.dim() == 2 and t.numel():
            t = pack_cdfs(t, state[name[: -len("_quantized_cdf")] + "_cdf_length"])
        tensors[name] = t.half() if half and name in params and t.is_floating_point() else t
    info = copy.copy(info)
    info.architecture, info.N, info.M = model.architecture, model.N, model.M
    from ..fileio import atomic_save

    atomic_save(path, lambda tmp: save_file(tensors, tmp, metadata=info.metadata()))
    info.sha256, info.path = file_sha256(path), Path(path)
    return info


def narrow_qualities(path: os.PathLike, output: os.PathLike, qualities: tuple[float, float]) -> ModelInfo:
    """A copy of a variable-rate weights file that offers only ``qualities``: the same tensors,
    byte for byte, the range added to its metadata (what ``benchmarks/ship_model.py`` ships
    after measuring every quality of the original)."""
    tensors, meta = read_safetensors(path)
    info = ModelInfo.from_metadata(meta)
    if not info.variable_rate:
        raise ValueError(f"{path}: a quality range is for variable-rate models")
    info.qualities = quality_range(qualities)
    from ..fileio import atomic_save

    atomic_save(output, lambda tmp: save_file(tensors, tmp, metadata=info.metadata()))
    info.sha256, info.path = file_sha256(output), Path(output)
    return info


def read_safetensors(path: os.PathLike, tensors: bool = True) -> tuple[dict, dict]:
    """A safetensors file's tensors (none when ``tensors`` is false) and its raw metadata, from
    one open file (a file replaced meanwhile cannot mix two versions); CorruptFileError if it is
    not readable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return ({k: f.get_tensor(k) for k in f.keys()} if tensors else {}), f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CorruptFileError(f"{path}: not a readable safetensors file ({e})") from None


def load_weights(path: os.PathLike, expected_sha256: Optional[str] = None,
                 device: str | torch.device = "cpu") -> tuple[CompressionModel, ModelInfo]:
    """Builds the model stored in a lickd safetensors file (no unpickling), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: no such weights file")
    sha = file_sha256(path)
    if expected_sha256 and sha != expected_sha256:
        raise CorruptFileError(f"{path}: sha256 {sha[:16]}... does not match the registry ({expected_sha256[:16]}...)")
    state, meta = read_safetensors(path)
    info = ModelInfo.from_metadata(meta, sha256=sha, path=path)
    if info.architecture not in ARCHITECTURES:
        raise CorruptFileError(f"{path}: unknown architecture {info.architecture!r}")
    model = build_model(info.architecture, info.N, info.M)
    state = {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CorruptFileError(f"{path}: weights do not fit {info.architecture} N={info.N} M={info.M} ({e})") from None
    return model.to(device).eval(), info


def registry() -> list[ModelInfo]:
    """The models shipped in this package (may be empty)."""
    if not REGISTRY_PATH.is_file():
        return []
    entries = json.loads(REGISTRY_PATH.read_text()).get("models", [])
    out = []
    for e in entries:
        try:
            out.append(ModelInfo(name=e["name"], architecture=e["architecture"], N=e["N"], M=e["M"],
                                 quality=e.get("quality"), lmbda=e.get("lambda"), metric=e.get("metric", "mse"),
                                 qualities=quality_range(e["qualities"]) if "qualities" in e else None,
                                 sha256=e["sha256"], path=ZOO_DIR / "weights" / e["file"],
                                 description=e.get("description", ""), default=bool(e.get("default")),
                                 measured=e.get("measured", {})))
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptFileError(f"{REGISTRY_PATH}: malformed entry {e.get('name', '?')!r} "
                                   f"({type(err).__name__}: {err})") from None
    return out


def _registry_or_raise() -> list[ModelInfo]:
    entries = registry()
    if not entries:
        raise ModelNotFoundError("no pretrained model ships with this lickd (the registry is empty); "
                                 "give a weights file")
    return entries


def find_default() -> ModelInfo:
    """The shipped default model (the registry's entry marked ``default``, else its first)."""
    entries = _registry_or_raise()
    return next((e for e in entries if e.default), entries[0])


def find(name: Optional[str] = None, quality: Optional[int] = None, weights_hash: Optional[str] = None) -> ModelInfo:
    """The registry entry matching a name (``name`` or ``name@hash``), quality and/or hash prefix."""
    if name and "@" in name:
        name, weights_hash = name.split("@", 1)
    entries = _registry_or_raise()
    matches = [e for e in entries
               if (name is None or e.name == name) and (quality is None or e.quality == quality)
               and (weights_hash is None or e.sha256.startswith(weights_hash))]
    if not matches:
        what = " ".join(x for x in (name and f"name={name}", quality is not None and f"quality={quality}",
                                    weights_hash and f"weights={weights_hash}") if x)
        raise ModelNotFoundError(f"no registered model with {what}; run 'lickd models' or pass --weights")
    return matches[0]


def find_quality(quality: float) -> ModelInfo:
    """The model for a quality: a variable-rate model that offers it (the default one first),
    else the fixed-rate model of this quality, else the nearest one (ties: the higher), with a
    warning. With only variable-rate models none of which offers it, the default one (whose
    codec then says which qualities it offers)."""
    entries = _registry_or_raise()
    variable = sorted((e for e in entries if e.variable_rate), key=lambda e: not e.default)
    offering = [e for e in variable if e.offers(quality)]
    if offering:
        return offering[0]
    entries = [e for e in entries if not e.variable_rate and e.quality is not None]
    if not entries:
        if variable:
            return variable[0]
        return find(quality=quality)  # raises the not-found error
    best = min(entries, key=lambda e: (abs(e.quality - quality), -e.quality))
    if best.quality != quality:
        warnings.warn(f"no model of quality {quality} is registered; using {best.name} (quality {best.quality})",
                      stacklevel=2)
    return best


__all__ = ["ModelInfo", "file_sha256", "narrow_qualities", "quality_range", "read_safetensors", "state_sha256", "find", "find_default", "find_quality", "load_weights", "registry", "save_weights"]
