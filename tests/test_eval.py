"""Evaluation: metrics against independent computations, BD-rate against analytic cases,
CompressAI-schema results, the classical anchors, plots and the efficiency bench."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lickd.cli import main
from lickd.eval import bd_psnr, bd_rate, ms_ssim_rgb, psnr_rgb
from lickd.eval.bdrate import _pchip_integral


# ---------------------------------------------------------------------------- metrics
def _msssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM from its definition (Wang et al. 2003) in float64: 11-tap Gaussian (sigma 1.5)
    'valid' filtering, K1 = 0.01, K2 = 0.03, five scales, 2x2 average pooling (odd sides padded),
    per-channel products of contrast-structure terms and the last-scale SSIM, averaged over RGB."""
    x = torch.tensor(a, dtype=torch.float64).permute(2, 0, 1)[None] / 255
    y = torch.tensor(b, dtype=torch.float64).permute(2, 0, 1)[None] / 255
    weights = torch.tensor([0.0448, 0.2856, 0.3001, 0.2363, 0.1333], dtype=torch.float64)
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    g = g / g.sum()
    c1, c2 = 0.01**2, 0.03**2

    def blur(t):
        t = F.conv2d(t, g.view(1, 1, 1, 11).repeat(3, 1, 1, 1), groups=3)
        return F.conv2d(t, g.view(1, 1, 11, 1).repeat(3, 1, 1, 1), groups=3)

    terms = []
    for level in range(5):
        mx, my = blur(x), blur(y)
        sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        cs = ((2 * sxy + c2) / (sxx + syy + c2)).mean(dim=(2, 3))[0]
        if level < 4:
            terms.append(torch.relu(cs))
            pad = [s % 2 for s in x.shape[2:]]
            x, y = (F.avg_pool2d(t, 2, padding=pad) for t in (x, y))
        else:
            ssim = (((2 * mx * my + c1) / (mx**2 + my**2 + c1)) * (2 * sxy + c2) / (sxx + syy + c2)).mean(dim=(2, 3))[0]
            terms.append(torch.relu(ssim))
    per_channel = torch.prod(torch.stack(terms) ** weights[:, None], dim=0)
    return float(per_channel.mean())


def test_psnr_matches_definition_and_handles_identity(rng):
    a = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-9, 10, a.shape), 0, 255).astype(np.uint8)
    mse = sum(float((int(p) - int(q)) ** 2) for p, q in zip(a.ravel(), b.ravel())) / a.size
    assert psnr_rgb(a, b) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)
    assert psnr_rgb(a, a) == math.inf


def test_ms_ssim_matches_float64_reference(rng):
    yy, xx = np.mgrid[0:193, 0:230]
    a = np.clip(128 + 90 * np.sin(xx[..., None] / 9 + np.arange(3)) * np.cos(yy[..., None] / 13)
                + rng.normal(0, 5, (193, 230, 3)), 0, 255).astype(np.uint8)
    b = np.clip(a.astype(float) + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
    assert ms_ssim_rgb(a, b) == pytest.approx(_msssim_reference(a, b), abs=2e-5)
    assert ms_ssim_rgb(a, a) == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(ms_ssim_rgb(a[:100], b[:100]))  # too small for five scales


# ---------------------------------------------------------------------------- BD-rate
RATES = [0.25, 0.5, 1.0, 2.0]
PSNR = [30.0, 32.0, 34.0, 36.0]  # D = 34 + 2 log2(R): log R is linear in D


@pytest.mark.parametrize("interp", ["pchip", "cubic"])
def test_bd_of_a_curve_against_itself_is_zero(interp, rng):
    r = np.sort(rng.uniform(0.1, 2, 5))
    d = np.sort(rng.uniform(25, 40, 5))
    assert bd_rate(r, d, r, d, interp) == pytest.approx(0, abs=1e-9)
    assert bd_psnr(r, d, r, d, interp) == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("interp", ["pchip", "cubic"])
def test_bd_of_shifted_copies_is_the_shift(interp, rng):
    r = np.sort(rng.uniform(0.1, 2, 6))
    d = np.sort(rng.uniform(25, 40, 6))
    factor = rng.uniform(0.5, 1.5)
    assert bd_rate(r, d, r * factor, d, interp) == pytest.approx((factor - 1) * 100, abs=1e-9)
    shift = rng.uniform(-2, 2)
    assert bd_psnr(r, d, r, d + shift, interp) == pytest.approx(shift, abs=1e-9)


@pytest.mark.parametrize("interp", ["pchip", "cubic"])
def test_bd_hand_computed_different_slopes(interp):
    # Test curve D = 34 + 2.5 log2(R) at the same rates. On the overlap D in [30, 36]:
    # mean(log2 Rt - log2 Ra) = mean((D - 34) (1/2.5 - 1/2)) = -0.1 * mean(D - 34) = -0.1 * -1 = 0.1
    # so BD-rate = 2^0.1 - 1. Over log2 R in [-2, 1]: mean(Dt - Da) = 0.5 * mean(log2 R) = -0.25 dB.
    test_psnr = [34 + 2.5 * math.log2(r) for r in RATES]
    assert bd_rate(RATES, PSNR, RATES, test_psnr, interp) == pytest.approx((2**0.1 - 1) * 100, abs=1e-9)
    assert bd_psnr(RATES, PSNR, RATES, test_psnr, interp) == pytest.approx(-0.25, abs=1e-9)


def test_pchip_integral_matches_scipy(rng):
    scipy_interp = pytest.importorskip("scipy.interpolate")
    x = np.sort(rng.uniform(0, 10, 7))
    y = rng.normal(size=7)  # non-monotone on purpose
    lo, hi = x[1] + 0.3 * (x[2] - x[1]), x[5]
    ref = scipy_interp.PchipInterpolator(x, y).integrate(lo, hi)
    assert _pchip_integral(x, y, lo, hi) == pytest.approx(ref, rel=1e-10, abs=1e-12)


def test_bd_errors_are_explicit():
    with pytest.raises(ValueError, match="overlap"):
        bd_rate([1, 2], [30, 31], [1, 2], [40, 41])
    with pytest.raises(ValueError, match="4 points"):
        bd_rate([1, 2, 3], [30, 31, 32], [1, 2, 3], [30, 31, 32], "cubic")


# ---------------------------------------------------------------------------- eval end to end
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, module_rng):
    folder = tmp_path_factory.mktemp("imgs")
    rng = module_rng
    yy, xx = np.mgrid[0:176, 0:200]
    for i in range(2):
        img = 128 + 80 * np.sin(xx[..., None] / (6 + i) + np.arange(3)) * np.cos(yy[..., None] / 9)
        Image.fromarray(np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


@pytest.mark.parametrize("codec", ["jpeg", "webp", "avif"])
def test_classical_eval_writes_compressai_schema(capsys, tmp_path, image_folder, codec):
    from PIL import features
    if codec == "avif" and not features.check("avif"):
        pytest.skip("no AVIF in this Pillow")
    out = tmp_path / f"{codec}.json"
    _run(capsys, "eval", image_folder, "--codec", codec, "-q", "20,60,90", "-o", out, "--quiet")
    doc = json.loads(out.read_text())
    assert {"name", "description", "results"} <= set(doc)
    assert doc["meta"]["environment"]["pillow"]
    r = doc["results"]
    for key in ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time"):
        assert len(r[key]) == 3
    assert r["bpp"] == sorted(r["bpp"]) and r["psnr-rgb"] == sorted(r["psnr-rgb"])
    # Each point is the mean of the per-image values, and bpp comes from the real file.
    first = doc["per_image"][0]["images"]
    assert r["bpp"][0] == pytest.approx(np.mean([v["bpp"] for v in first.values()]))
    img = np.asarray(Image.open(image_folder / "0.png"))
    assert first["0.png"]["bpp"] == pytest.approx(8 * first["0.png"]["bytes"] / (img.shape[0] * img.shape[1]))
    # CompressAI's own plot utility reads it.
    cai_plot = pytest.importorskip("compressai.utils.plot.__main__")
    parsed = cai_plot.parse_json_file(out, "psnr")
    assert parsed["xs"] == r["bpp"]


def test_subsampling_444_is_recorded_and_webp_refuses_it(capsys, tmp_path, image_folder):
    out = tmp_path / "j444.json"
    _run(capsys, "eval", image_folder, "--codec", "jpeg", "-q", "50", "--subsampling", "444", "-o", out, "--quiet")
    assert "4:4:4" in json.loads(out.read_text())["description"]
    assert main(["eval", str(image_folder), "--codec", "webp", "--subsampling", "444", "--quiet"]) == 1


def test_lickd_eval_bd_rate_plot_and_bench(capsys, tmp_path, image_folder, weights_files):
    out = tmp_path / "lickd.json"
    w = weights_files["mbt2018-mean"]
    _run(capsys, "eval", image_folder, "--weights", w, "--weights", weights_files["bmshj2018-hyperprior"],
         "--device", "cpu", "-o", out, "--quiet", "--name", "students")
    doc = json.loads(out.read_text())
    r = doc["results"]
    assert len(r["bpp"]) == 2 and all(p < b for p, b in zip(r["payload-bpp"], r["bpp"]))
    jpeg = tmp_path / "jpeg.json"
    _run(capsys, "eval", image_folder, "--codec", "jpeg", "-q", "10,30,50,70,90", "-o", jpeg, "--quiet")
    text, _ = _run(capsys, "bd-rate", jpeg, jpeg, "--json")
    rows = json.loads(text)
    assert rows[0]["bd-rate-pchip"] == pytest.approx(0, abs=1e-9)
    assert rows[0]["bd-rate-cubic"] == pytest.approx(0, abs=1e-9)
    png = tmp_path / "rd.png"
    _run(capsys, "plot", jpeg, out, "-o", png, "--quiet")
    assert Image.open(png).size[0] > 500
    bench_json = tmp_path / "bench.json"
    text, _ = _run(capsys, "bench", "--weights", w, "--device", "cpu", "--size", "128x64", "--repeats", "2",
                   "--json", bench_json)
    b = json.loads(bench_json.read_text())
    assert b["parameters"]["total"] == sum(p.numel() for p in torch.nn.Module.parameters(
        __import__("lickd").StudentCodec.from_file(w, device="cpu").model))
    lat = b["latency_ms"]["encode"]
    assert lat["total"] == pytest.approx(lat["g_a"] + lat["h_a"] + lat["h_s"] + lat["entropy coding"], rel=1e-6)
    # g_a of N=12, M=20 by hand: conv5x5 3->12 /2, 12->12 /2 (+GDN 1x1), ..., per input pixel.
    k = 25
    g_a = (3 * 12 * k / 4 + 12 * 12 / 4 + 12 * 12 * k / 16 + 12 * 12 / 16 + 12 * 12 * k / 64 + 12 * 12 / 64
           + 12 * 20 * k / 256)
    assert b["kmacs_per_pixel"]["g_a"] * 1e3 == pytest.approx(g_a, rel=1e-6)
    # g_s: Cin x Cout x k^2 per input position of each transposed conv (the architecture's count,
    # though the codec runs its last layer in the phase form, which computes more)
    g_s = (20 * 12 * k / 256 + 12 * 12 / 64 + 12 * 12 * k / 64 + 12 * 12 / 16 + 12 * 12 * k / 16 + 12 * 12 / 4
           + 12 * 3 * k / 4)
    assert b["kmacs_per_pixel"]["g_s"] * 1e3 == pytest.approx(g_s, rel=1e-6)
    assert "entropy coding" in text and b["energy_j_per_image"] is None
    assert b["fast_path"]["layout"] == "channels_last" and "fast path: channels_last" in text
    assert f"encode {b['gmac_per_s']['encode']:.1f} GMAC/s" in text


@pytest.mark.parametrize("arch,stages", [("bmshj2018-factorized", {"g_a"}), ("bmshj2018-hyperprior", {"g_a", "h_a", "h_s"})])
def test_bench_stages_of_every_architecture_with_exact_entropy_parameters(arch, stages, rng):
    from lickd import StudentCodec, zoo
    from lickd.eval.bench import benchmark
    from lickd.models import build_model
    codec = StudentCodec(build_model(arch, 8, 12), zoo.ModelInfo(name="f", architecture=arch, N=8, M=12), device="cpu")
    r = benchmark(codec, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), repeats=1, warmup=0)
    assert set(r["latency_ms"]["encode"]) == stages | {"entropy coding", "total"}
    assert set(r["latency_ms"]["decode"]) == (stages - {"g_a", "h_a"}) | {"g_s", "entropy coding", "total"}


def test_lickd_eval_through_the_fused_kernels_stays_within_a_hair_of_the_reference(capsys, tmp_path, weights_files, rng):
    """--fused runs g_a/g_s through lickd.kernels (the interpreter here): bf16 storage changes the
    files a little (so the fused path did run), the RD point barely moves; --emulate (the kernels'
    rounding model in PyTorch) lands where the kernels do."""
    pytest.importorskip("triton")
    folder = tmp_path / "img"
    folder.mkdir()
    yy, xx = np.mgrid[0:64, 0:80]
    img = 128 + 90 * np.sin(xx[..., None] / 5 + np.arange(3)) * np.cos(yy[..., None] / 7)
    noise = rng.normal(0, 6, img.shape)
    Image.fromarray(np.clip(img + noise, 0, 255).astype(np.uint8)).save(folder / "a.png")
    w = weights_files["mbt2018-mean"]
    docs = {}
    for key, flags in ((None, []), ("bf16", ["--fused", "bf16"]), ("emulated", ["--fused", "bf16", "--emulate"])):
        out = tmp_path / f"{key}.json"
        _run(capsys, "eval", folder, "--weights", w, "--device", "cpu", "-o", out, "--quiet", *flags)
        docs[key] = json.loads(out.read_text())
    assert "fused kernels bf16" in docs["bf16"]["description"] and "emulated" in docs["emulated"]["description"]
    ref, fused = (docs[k]["per_image"][0]["images"] for k in (None, "bf16"))
    assert any(ref[f]["psnr-rgb"] != fused[f]["psnr-rgb"] or ref[f]["bytes"] != fused[f]["bytes"] for f in ref)
    assert docs["emulated"]["results"]["psnr-rgb"][0] == pytest.approx(docs["bf16"]["results"]["psnr-rgb"][0], abs=0.01)
    assert docs["bf16"]["results"]["psnr-rgb"][0] == pytest.approx(docs[None]["results"]["psnr-rgb"][0], abs=0.1)
    assert docs["bf16"]["results"]["bpp"][0] == pytest.approx(docs[None]["results"]["bpp"][0], rel=0.02)
    assert docs["emulated"]["results"]["bpp"][0] == pytest.approx(docs["bf16"]["results"]["bpp"][0], rel=0.005)
    assert main(["eval", str(folder), "--weights", str(w), "--emulate"]) == 1
    assert "--emulate needs --fused" in capsys.readouterr().err


def test_lickd_eval_fused_on_a_cpu_without_the_interpreter_is_refused(capsys, tmp_path, weights_files, monkeypatch, rng):
    """Without a GPU or the interpreter the kernels cannot run: results labelled "fused" would be
    the reference path's, so the command refuses and points at --emulate."""
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    folder = tmp_path / "img"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "a.png")
    assert main(["eval", str(folder), "--weights", str(weights_files["mbt2018-mean"]), "--device", "cpu",
                 "--fused", "bf16", "--quiet"]) == 1
    assert "on a CPU add --emulate" in capsys.readouterr().err
