"""The benchmark scripts run on a CPU-only machine and write the JSON they promise (speed targets
themselves are measured by the benchmarks, never asserted in tests)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_rans_quick_json(tmp_path):
    out = tmp_path / "rans.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_rans.py"), "--quick", "--json", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["n_symbols"] > 0 and "workload" in doc and doc["environment"]["torch"]
    measured = [row for row in doc["rows"] if "encode_msym_s" in row]
    assert any(row["coder"].startswith("lickd CPU, 1 thread") for row in measured)
    for row in measured:
        assert row["encode_msym_s"] > 0 and row["decode_msym_s"] > 0 and row["bytes"] > 0
        assert {"ideal_bytes", "overhead_pct"} <= set(row)
    assert "Msym/s" in r.stdout


def test_bench_train_quick_json(tmp_path):
    import numpy as np
    from PIL import Image
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(data / f"{i}.png")
    out = tmp_path / "train.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--quick", "--data", str(data),
                        "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert [row["model"].split(" N=")[0] for row in doc["rows"]] == ["teacher", "student", "student + KD"]
    for row in doc["rows"]:
        assert row["steps_per_s"] > 0 and row["ms_per_step"] > 0 and row["batch"] == 2
    assert doc["environment"]["torch"] and "steps/s" in r.stdout
