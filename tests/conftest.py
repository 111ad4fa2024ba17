"""Shared fixtures: the data folders beside the checkout, small models and their weights files,
and the seeded random generators every test draws from."""
import os
import random
import secrets
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

# Without a GPU the Triton kernels run in Triton's CPU interpreter; it must be chosen before
# Triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lickd import zoo
from lickd.models import build_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LICKD_SHARED", ROOT.parent / "shared"))
KODAK = SHARED / "data" / "kodak"

# Small widths keep CPU tests fast; non-powers of two on purpose (student widths).
SMALL = {"bmshj2018-factorized": (12, 20), "bmshj2018-hyperprior": (12, 20), "mbt2018-mean": (12, 20)}


# ---------------------------------------------------------------------------- randomness
#: One seed per session, printed with every failure: LICKD_TEST_SEED=<seed> replays the draws.
SEED = int(os.environ.get("LICKD_TEST_SEED") or secrets.randbits(32))


def seeded_rng(key: str) -> np.random.Generator:
    """A generator for ``key`` (a test's or fixture's node id): the session seed and the key
    decide its draws, so a test draws the same whatever else runs before it."""
    return np.random.default_rng([SEED, zlib.crc32(key.encode())])


@pytest.fixture
def rng(request) -> np.random.Generator:
    """The test's random generator (seeded; the seed is printed if the test fails)."""
    return seeded_rng(request.node.nodeid)


@pytest.fixture(scope="module")
def module_rng(request) -> np.random.Generator:
    """The random generator of a module's shared fixtures."""
    return seeded_rng(request.node.nodeid)


@pytest.fixture(autouse=True)
def _seeded_global_generators(request):
    """Python's ``random`` and torch's default generator, seeded for each test from the session
    seed, for the tests that draw from them directly."""
    seed = int(seeded_rng(request.node.nodeid + "::global").integers(2**63))
    random.seed(seed)
    torch.manual_seed(seed)


def pytest_report_header(config):
    return f"lickd test seed: LICKD_TEST_SEED={SEED}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        report.sections.append(("random seed", f"rerun with LICKD_TEST_SEED={SEED} to draw the same numbers"))
    return report


# ---------------------------------------------------------------------------- data and models
@pytest.fixture(scope="session")
def kodak_dir() -> Path:
    if not KODAK.is_dir():
        pytest.skip(f"Kodak set not found at {KODAK} (set LICKD_SHARED)")
    return KODAK


def make_model(architecture: str, seed: int = 0):
    """A small model whose transforms are randomised away from the init (so outputs are not
    trivially symmetric), with its CDF tables built."""
    torch.manual_seed(seed)
    N, M = SMALL[architecture]
    model = build_model(architecture, N, M)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 4:
                p.mul_(1 + 0.2 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="session")
def weights_files(tmp_path_factory) -> dict:
    """One lickd weights file per architecture, written with save_weights (fp16)."""
    out = tmp_path_factory.mktemp("weights")
    files = {}
    for arch in SMALL:
        model = make_model(arch)
        model.update(force=True)
        info = zoo.ModelInfo(name=f"test-{arch}", architecture=arch, N=model.N, M=model.M,
                             quality=3, lmbda=0.0067)
        files[arch] = zoo.save_weights(model, out / f"{arch}.safetensors", info, half=True).path
    return files


@pytest.fixture(autouse=True)
def _quiet_torch_warnings():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield
