"""The models that ship in lickd/zoo/weights: each file is the one the registry names (sha256),
loads, and codes kodim01 as its committed results say (benchmarks/ship_model.py wrote them)."""
import json

import pytest

from lickd import StudentCodec, zoo
from lickd.eval.metrics import psnr_rgb
from lickd.image import load_rgb

from conftest import KODAK, ROOT

ENTRIES = zoo.registry()
WEIGHTS_DIR = ROOT / "lickd" / "zoo" / "weights"


def test_registry_and_weights_folder_agree():
    files = {p.name for p in WEIGHTS_DIR.glob("*.safetensors")}
    assert files == {e.path.name for e in ENTRIES}  # no stray file ships, none is missing
    total = sum((WEIGHTS_DIR / f).stat().st_size for f in files)
    assert total <= 20e6, f"shipped weights take {total / 1e6:.1f} MB (budget 20 MB)"
    if ENTRIES:
        assert sum(e.default for e in ENTRIES) == 1, "exactly one shipped model is the default"


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_shipped_model_matches_its_hash_and_its_committed_results(entry):
    assert zoo.file_sha256(entry.path) == entry.sha256
    codec = StudentCodec.from_pretrained(entry.name, device="cpu")
    measured = entry.measured
    kodak = measured["kodak"]
    qualities = kodak["quality"]
    assert len(kodak["bpp"]) == len(kodak["psnr-rgb"]) == len(qualities)
    if codec.variable_rate:
        assert qualities == list(range(1, 9))  # one model for every quality, all measured
        assert codec.info.qualities == entry.qualities  # the file and the registry offer the same range
    offered = [m for q, m in zip(qualities, kodak["vs_jpeg_db"]) if entry.offers(q)]
    assert offered and all(m > 0 for m in offered), "a shipped model beats JPEG at every quality it offers"
    results = json.loads((ROOT / kodak["results"]).read_text())
    assert results["results"]["bpp"] == pytest.approx(kodak["bpp"], rel=1e-4)
    if not KODAK.is_dir():
        pytest.skip(f"Kodak set not found at {KODAK} (set LICKD_SHARED)")
    ref = measured["kodim01"]
    img = load_rgb(KODAK / "kodim01.png")
    data = codec.compress(img, quality=ref["quality"] if codec.variable_rate else None)
    out = codec.decompress(data, output="numpy")
    # The same bytes on a CPU like the one that measured them; another CPU's float convolutions
    # in g_a may round a handful of latents the other way (docs/architecture.md, determinism).
    assert len(data) == pytest.approx(ref["bytes"], rel=2e-3)
    assert psnr_rgb(img, out) == pytest.approx(ref["psnr-rgb"], abs=0.02)
