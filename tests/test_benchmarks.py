"""The benchmark scripts run on a CPU-only machine and write the JSON they promise (speed targets
themselves are measured by the benchmarks, never asserted in tests)."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_bench_rans_file_overhead(tmp_path, weights_files, rng):
    """--files: per image, the .lkd file holds the streams plus a header, and the streams cost a
    little more than the ideal code length (never less: rANS cannot beat -sum log2 p)."""
    import numpy as np
    from PIL import Image
    images = tmp_path / "images"
    images.mkdir()
    for i, (h, w) in enumerate([(64, 96), (100, 70)]):
        smooth = np.cumsum(rng.normal(0, 8, (h, w, 3)), axis=1)
        Image.fromarray(np.clip(128 + smooth, 0, 255).astype(np.uint8)).save(images / f"{i}.png")
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "files.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_rans.py"), "--files", str(images),
                        "--weights", str(weights_files["bmshj2018-hyperprior"]), "--json", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(out.read_text())["files"]
    assert [row["image"] for row in rows] == ["0.png", "1.png"]
    for row in rows:
        assert row["ideal_bytes"] <= row["stream_bytes"] < row["file_bytes"]
    assert "all" in r.stdout


def test_bench_train_quick_json(tmp_path, rng):
    import numpy as np
    from PIL import Image
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(data / f"{i}.png")
    out = tmp_path / "train.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--quick", "--data", str(data),
                        "--variants", "fp32,bf16-nhwc", "--json", str(out)], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert [(row["variant"], row["model"].split(" N=")[0]) for row in doc["rows"]] == [
        (v, m) for v in ("fp32", "bf16-nhwc") for m in ("teacher", "student", "student + KD")]
    for row in doc["rows"]:
        assert row["steps_per_s"] > 0 and row["ms_per_step"] > 0 and row["batch"] == 2
    assert doc["environment"]["torch"] and "steps/s" in r.stdout


def _result(path, name, per_image, description=""):
    """A one-point result file in CompressAI's schema, as lickd eval writes it."""
    mean = {k: [sum(v[k] for v in per_image.values()) / len(per_image)] for k in ("bpp", "psnr-rgb")}
    doc = {"name": name, "description": description,
           "meta": {"environment": {"cpu": "test", "cpu_count": 1, "pillow": "-", "commit": "-"}},
           "results": {**mean, "ms-ssim-rgb": [0.9], "encoding_time": [0.01], "decoding_time": [0.01]},
           "per_image": [{"images": per_image}]}
    path.write_text(json.dumps(doc))
    return path


def test_report_against_gives_per_image_differences(tmp_path):
    """--against: mean / min / max of the per-image PSNR differences and the mean byte change,
    computed here by hand for two images."""
    ref = _result(tmp_path / "ref.json", "m", {"a.png": {"bpp": 0.5, "psnr-rgb": 30.0, "bytes": 1000},
                                                "b.png": {"bpp": 0.4, "psnr-rgb": 28.0, "bytes": 800}})
    var = _result(tmp_path / "var.json", "m", {"a.png": {"bpp": 0.5, "psnr-rgb": 30.01, "bytes": 1010},
                                                "b.png": {"bpp": 0.4, "psnr-rgb": 27.97, "bytes": 800}},
                  description="m, g_a/g_s fused kernels bf16")
    other = _result(tmp_path / "other.json", "m", {"c.png": {"bpp": 0.5, "psnr-rgb": 30.0, "bytes": 1000}})
    script = str(ROOT / "benchmarks" / "report.py")
    r = subprocess.run([sys.executable, script, "--against", str(ref), str(tmp_path / "ref.json"), str(var)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| var.json")]
    assert len(rows) == 1 and "(g_a/g_s fused kernels bf16)" in rows[0]
    assert "-0.0100 dB" in rows[0] and "-0.0300 … +0.0100 dB" in rows[0] and "+0.500 %" in rows[0]
    r = subprocess.run([sys.executable, script, "--against", str(ref), str(other)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "not the images of" in r.stderr


def test_ship_model_offers_the_widest_run_of_qualities_that_beat_jpeg():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from ship_model import jpeg_psnr_at, offered_range, quality_range_arg
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    qualities = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert offered_range(qualities, [0.5, 0.3, -0.1, 0.1, 0.2, 0.3, 0.4, -1], "auto") == (4, 7)
    assert offered_range(qualities, [0.5, 0.3, -0.1, -0.1, 0.2, 0.3, -0.4, -1], "auto") == (1, 2)  # tie: lower
    assert offered_range(qualities, [0.1] * 8, "auto") == (1, 8)
    assert offered_range(qualities, [0.1, -0.1] * 4, "auto") is None  # no two in a row
    assert offered_range(qualities, [0.5, 0.3, 0.1, -0.1] * 2, quality_range_arg("1-3")) == (1, 3)
    assert offered_range(qualities, [0.5, 0.3, 0.1, -0.1] * 2, (2, 4)) is None
    for bad in ("5-3", "3-3", "2.5-4", "x", "0-4", "1-9", "1-2-3"):
        with pytest.raises(argparse.ArgumentTypeError):
            quality_range_arg(bad)
    anchor = {"results": {"bpp": [0.25, 0.5, 1.0], "psnr-rgb": [26.0, 29.0, 32.0]}}
    assert jpeg_psnr_at(0.5, anchor) == 29.0 and abs(jpeg_psnr_at(2 ** -1.5, anchor) - 27.5) < 1e-9
    assert abs(jpeg_psnr_at(2.0, anchor) - 35.0) < 1e-9  # extrapolated from the two highest


def test_ship_model_measures_a_run_and_refuses_what_does_not_beat_jpeg(tmp_path, kodak_dir):
    """A dry run on one Kodak image of a barely trained variable-rate run: every quality is
    measured against the JPEG anchor and the run is refused; --force reports the whole range."""
    from lickd.train import Trainer, load_config
    train = tmp_path / "train"
    train.mkdir()
    from PIL import Image
    Image.open(sorted(kodak_dir.glob("*.png"))[0]).crop((0, 0, 160, 160)).save(train / "a.png")
    cfg = load_config(None, ("architecture=mbt2018-mean-vr", "N=8", "M=12", f"data={train}", "val_data=none",
                             "patch_size=64", "batch_size=2", "steps=2", "val_every=0", "tensorboard=false",
                             f"run_dir={tmp_path / 'run'}"))
    Trainer(cfg, progress=False).train()
    script = str(ROOT / "benchmarks" / "ship_model.py")
    common = [sys.executable, script, str(tmp_path / "run"), "--name", "tiny", "--kodak", str(kodak_dir), "--limit", "1"]
    r = subprocess.run(common, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "refused" in r.stderr, r.stderr[-2000:]
    assert sum(line.startswith("q=") and "vs JPEG" in line for line in r.stderr.splitlines()) == 8
    r = subprocess.run(common + ["--force", "--qualities", "2-5"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "offers qualities 2..5" in r.stderr, r.stderr[-2000:]
    r = subprocess.run(common + ["--qualities", "5-3"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "LOW < HIGH" in r.stderr


def test_bench_codec_compares_with_compressais_class_of_the_same_architecture(tmp_path, weights_files, rng):
    """bench_codec on two small images of a scale hyperprior: CompressAI's ScaleHyperprior codes
    the same weights, and the work line counts the architecture's MACs at the padded size (those
    of the NCHW model: the codec's channels_last one must not count its phase form's) with each
    side's rate and share of the CPU's peak."""
    architecture = "bmshj2018-hyperprior"
    pytest.importorskip("compressai")
    import numpy as np
    from PIL import Image

    from lickd import zoo
    from lickd.eval.bench import macs_per_pixel
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        smooth = np.cumsum(rng.normal(0, 8, (60, 90, 3)), axis=1)
        Image.fromarray(np.clip(128 + smooth, 0, 255).astype(np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "codec.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_codec.py"), "--kodak", str(images),
                        "--limit", "2", "--weights", str(weights_files[architecture]), "--device", "cpu",
                        "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["architecture"] == architecture
    assert doc["compressai_class"] == "ScaleHyperprior"
    work = doc["work"]
    assert work["sizes"] == [[64, 128], [64, 128]]
    per_pixel = macs_per_pixel(zoo.load_weights(weights_files[architecture])[0], 64, 128)
    assert work["gmac_per_image"]["dec"] == [pytest.approx(per_pixel["decode"] * 64 * 128 / 1e9)] * 2
    for side in ("CompressAI", "lickd"):
        rates = work["rows"][side]["gmacs"]
        assert rates["enc"] > 0 and rates["dec"] > 0
        if work["peak"]:
            assert work["rows"][side]["peak_fraction"]["dec"] == pytest.approx(rates["dec"] / work["peak"]["gmacs"])
    assert "work per image (128x64)" in r.stdout
