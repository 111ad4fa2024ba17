"""Tiled transforms equal the whole-image pass (lickd.tiling, and StudentCodec's use of it).

What is asserted, and why:

* the coded latents exactly: the quantised y and z, and the bytes of the file, are identical
  tiled or not (and the exact h_s is bit-identical over tiles of any size, its sums being exact);
* the continuous y and the reconstruction to float rounding, ``atol=1e-5``: a tile computes each
  kept output from the same inputs with the same weights, and only the convolution library's
  choice of summation order for another tensor shape can differ. Measured here: y bit-identical,
  g_s within 3e-8 (N=64, M=192); fp32 has eps 1.2e-7 and outputs are O(1), so 1e-5 leaves two
  orders of magnitude for other CPUs and kernels while staying far below half an 8-bit step
  (1/510 ~ 2e-3), where a decoded pixel could change by one level.
"""
import numpy as np
import pytest
import torch
from torch import nn

from conftest import SMALL, make_model
from lickd import StudentCodec, codec as codec_module, container, tiling, zoo
from lickd.image import pad_to_multiple, to_tensor
from lickd.models import build_model

ARCHS = [*SMALL, "mbt2018-mean-vr"]
ATOL = 1e-5


def small_model(arch):
    if arch in SMALL:
        model = make_model(arch)
    else:  # the variable-rate model with the randomised transforms of its fixed-rate twin
        model = build_model(arch, *SMALL["mbt2018-mean"]).eval()
        model.load_state_dict(make_model("mbt2018-mean").state_dict(), strict=False)
    model.update(force=True)
    return model


@pytest.fixture(scope="module")
def models():
    return {arch: small_model(arch) for arch in ARCHS}


def codec_for(model, tile):
    info = zoo.ModelInfo(name=f"test-{model.architecture}", architecture=model.architecture, N=model.N, M=model.M,
                         quality=None if model.variable_rate else 3, lmbda=0.0067)
    return StudentCodec(model, info, device="cpu", tile=tile)


def image(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------- the halo
@pytest.mark.parametrize("arch", ["mbt2018-mean", "bmshj2018-factorized"])
def test_halo_is_the_receptive_field(models, arch):
    """The window Footprint computes for an output is where the output's gradient is nonzero,
    up to the grid alignment of its start: the halo covers the receptive field and no more."""
    model = models[arch]
    for name, n_in in (("g_a", 256), ("g_s", 12)):
        seq = getattr(model, name).double()
        fp = tiling.footprints(seq)[0]
        x = torch.randn(1, 3 if name == "g_a" else model.M, n_in, 8, dtype=torch.float64, requires_grad=True)
        out = seq(x)
        block = int(fp.scale.numerator)  # one latent (g_a) or the pixels of one latent (g_s)
        lo = fp.size(n_in) // 2 // block * block
        out[:, :, lo:lo + block].sum().backward()
        rows = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 3))).flatten()
        start, stop = fp.window(lo, lo + block)
        assert start <= int(rows.min()) < start + fp.align and int(rows.max()) == stop - 1
        seq.float()
    assert tiling.footprints(model.g_a)[0].halo == (32, 15)  # pixels: 16r - 30 .. 16r + 30, grid-aligned
    assert tiling.footprints(model.g_s)[0].halo == (1, 2)  # latents


def test_any_chain_of_convolutions_tiles_exactly(rng):
    """Kernels, strides, paddings and dilations that differ per axis, transposed convs with
    output padding: the footprint comes from the layers, not from the Ballé transforms."""
    torch.manual_seed(int(rng.integers(2**31)))
    seq = nn.Sequential(
        nn.Conv2d(3, 5, (3, 5), stride=(1, 2), padding=(1, 2)), nn.LeakyReLU(),
        nn.Conv2d(5, 4, 3, stride=2, padding=2, dilation=2), nn.ReLU(),
        nn.ConvTranspose2d(4, 3, (4, 5), stride=2, padding=(1, 2), output_padding=(0, 1))).eval()
    fp = tiling.footprints(seq)
    assert [f.align for f in fp] == [2, 4]
    x = torch.rand(2, 3, 37, 53)
    with torch.inference_mode():
        whole = seq(x)
        assert whole.shape[-2:] == (fp[0].size(37), fp[1].size(53))
        for block in [(1, 1), (3, 5), (8, 8)]:
            torch.testing.assert_close(tiling.run(seq, x, fp, block), whole, rtol=0, atol=ATOL)


def test_other_layers_are_refused(models):
    model = models["mbt2018-mean"]
    with pytest.raises(TypeError, match="Upsample"):
        tiling.footprints(nn.Sequential(model.g_s[0], nn.Upsample(scale_factor=2)))
    assert tiling.can_tile(model.g_a) and not tiling.can_tile(nn.Sequential(nn.AdaptiveAvgPool2d(1)))
    assert not tiling.can_tile(nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular"))


def assert_same_rounding(y_tiled, y_whole, where):
    """The quantised latents agree: on this CPU the tiled g_a is bit-identical, so all of them; on
    another, whose convolution may sum a tile in another order, a latent may only round the other
    way where it sits within ATOL of a tie."""
    flips = torch.round(y_tiled) != torch.round(y_whole)
    frac = (y_whole - torch.floor(y_whole) - 0.5).abs()
    assert bool((frac[flips] < ATOL).all()), where


# ---------------------------------------------------------------------------- the transforms
SIZES = [(97, 131), (64, 64), (63, 65), (1, 150), (150, 1), (129, 47)]


@pytest.mark.parametrize("arch", ARCHS)
def test_tiled_transforms_equal_the_whole_pass(models, arch, rng):
    model = models[arch]
    quality = 3.5 if model.variable_rate else None
    for h, w in SIZES:
        x = pad_to_multiple(to_tensor(image(rng, h, w))[0], model.downsampling_factor)
        with torch.inference_mode():
            y = model.analysis(x, quality)
            y_hat = torch.round(y)
            x_hat = model.synthesis(y_hat, quality)
            # one latent a tile (batched), tile edges on and off the image edges
            for tile, batch in ((16, 3), (32, 1), (48, 1)):
                y_t = tiling.analysis(model, x, quality, tile, batch=batch)
                torch.testing.assert_close(y_t, y, rtol=0, atol=ATOL)
                assert_same_rounding(y_t, y, (h, w, tile))
                x_t = tiling.synthesis(model, y_hat, quality, tile, batch=batch)
                torch.testing.assert_close(x_t, x_hat, rtol=0, atol=ATOL)


@pytest.mark.parametrize("arch", ["mbt2018-mean", "bmshj2018-hyperprior"])
def test_exact_hyper_synthesis_is_bit_identical_over_any_tiles_or_blocks(models, arch, rng, monkeypatch):
    """Version 1 over tiles of z; version 2 (per-image activation steps) whole, its GEMMs over
    blocks of output rows down to one row."""
    from lickd.entropy import exact
    model = models[arch]
    z_hat = torch.from_numpy(rng.integers(-6, 7, (2, model.N, 7, 5))).float()
    with torch.inference_mode():
        whole = model.exact_h_s(z_hat, 1).float()
        for tile in (1, 2, 3, 8):
            assert torch.equal(tiling.exact_hyper_synthesis(model, z_hat, tile, version=1), whole)
        whole = tiling.exact_hyper_synthesis(model, z_hat, version=2)
        for block_bytes in (1, 5000, 1 << 16):
            monkeypatch.setattr(exact, "V2_BLOCK_BYTES", block_bytes)
            assert torch.equal(tiling.exact_hyper_synthesis(model, z_hat, version=2), whole)


def test_channels_last_inference_mode_and_a_batch_of_qualities(models, rng):
    model = models["mbt2018-mean-vr"]
    x = torch.cat([pad_to_multiple(to_tensor(image(rng, 90, 70))[0], 64) for _ in range(2)])
    x = x.contiguous(memory_format=torch.channels_last)
    quality = torch.tensor([1.0, 6.5])  # one per image: every tile of a batch keeps its image's
    with torch.inference_mode():
        y = model.analysis(x, quality)
        y_t = tiling.analysis(model, x, quality, 32, batch=4)
        assert y_t.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y_t, y, rtol=0, atol=ATOL)
        y_hat = torch.round(y).contiguous(memory_format=torch.channels_last)
        x_t = tiling.synthesis(model, y_hat, quality, 32, batch=4)
        assert x_t.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(x_t, model.synthesis(y_hat, quality), rtol=0, atol=ATOL)
        one = tiling.synthesis(model, y_hat[1:], quality[1:], 32, batch=4)  # one file's quality, 4 tiles
        torch.testing.assert_close(one, x_t[1:], rtol=0, atol=ATOL)
    with torch.no_grad():  # and outside inference mode
        torch.testing.assert_close(tiling.synthesis(model, y_hat.clone(), quality, 32), x_t, rtol=0, atol=ATOL)


def test_replicate_crop_is_the_padding(rng):
    x = to_tensor(image(rng, 5, 3))[0]
    padded = pad_to_multiple(x, 8)
    for rows, cols in [(slice(0, 8), slice(0, 8)), (slice(2, 7), slice(1, 3)), (slice(6, 8), slice(4, 8))]:
        assert torch.equal(tiling.replicate_crop(x, rows, cols), padded[..., rows, cols])


# ---------------------------------------------------------------------------- the codec
@pytest.mark.parametrize("arch", ARCHS)
def test_codec_files_do_not_depend_on_tiles(models, arch, rng):
    model = models[arch]
    whole, tiled = codec_for(model, 0), codec_for(model, 32)
    images = [image(rng, h, w) for h, w in [(97, 131), (1, 150), (150, 1), (100, 120)]]
    datas = whole.compress_batch(images)  # 97x131 and 100x120 share a padded size (and a batch)
    for a, b in zip(tiled.compress_batch(images), datas):
        if a != b:  # only where another CPU's convolution rounds a latent at a tie the other way
            la, lb = whole.decode_latents(a)[1], whole.decode_latents(b)[1]
            for name in la:
                assert (la[name] != lb[name]).float().mean() <= 1e-3, name
    for data, img in zip(datas, images):
        f, latents = whole.decode_latents(data)
        assert (f.height, f.width) == img.shape[:2]
        a = whole.decompress(data, output="tensor")
        b = tiled.decompress(data, output="tensor")
        # 8-bit outputs of reconstructions within ATOL of each other: at most one level apart
        assert a.shape == b.shape == (3, *img.shape[:2]) and float((a - b).abs().max()) <= 1 / 255 + 1e-6
    # a batch of files decodes as the files one by one
    for one, data in zip(tiled.decompress_batch(datas, output="numpy"), datas):
        assert np.array_equal(one, tiled.decompress(data, output="numpy"))


def test_automatic_tiles(models, rng, monkeypatch):
    model = models["mbt2018-mean"]
    auto, off = codec_for(model, None), codec_for(model, 0)
    big = (8192, 8192)
    assert auto.tile_for((768, 512)) == 0 and auto.tile_for(big) == codec_module.DEFAULT_TILE
    assert off.tile_for(big) == 0 and codec_for(model, 256).tile_for((64, 64)) == 256
    # above the threshold the transforms run tile by tile, and the file is the same
    monkeypatch.setattr(codec_module, "TILE_THRESHOLD", 100 * 100)
    monkeypatch.setattr(codec_module, "DEFAULT_TILE", 64)
    calls = []
    hooks = [getattr(model, name).register_forward_hook(lambda m, i, o, name=name: calls.append(name))
             for name in ("g_a", "g_s")]
    try:
        img = image(rng, 130, 150)
        data = auto.compress(img)
        assert calls.count("g_a") == 9 and data == off.compress(img)  # 192 x 192: 3 x 3 tiles of 64
        calls.clear()
        assert auto.decompress(data, output="numpy").shape == (130, 150, 3) and calls.count("g_s") == 9
        calls.clear()
        small = image(rng, 60, 60)  # 64 x 64 padded
        auto.compress(small)
        assert calls == ["g_a"]  # below the threshold: the whole image at once
    finally:
        for h in hooks:
            h.remove()
    # a transform that cannot be tiled runs whole when tiles are automatic
    odd = small_model("mbt2018-mean")
    odd.g_s = nn.Sequential(*odd.g_s, nn.Upsample(scale_factor=1))
    odd_codec = codec_for(odd, None)
    assert odd_codec.tile_for(big) == 0
    assert odd_codec.decompress(odd_codec.compress(img), output="numpy").shape == (130, 150, 3)  # the whole pass
    assert container.parse(data).sections[0].shape == model.latent_shapes(192, 192)["y"]


def test_memory_benchmark_writes_its_json(tmp_path):
    """benchmarks/bench_codec.py --memory: one encode and one decode process per size, their
    peak RSS and MP/s, and the machine (CPU model and flags) in --json."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "memory.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_codec.py"
    r = subprocess.run([sys.executable, str(script), "--memory", "--sizes", "0.02", "--N", "12", "--M", "20",
                        "--tile", "32", "--device", "cpu", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert [round(row["encode"]["megapixels"], 2) for row in doc["rows"]] == [0.02]
    for row in doc["rows"]:
        for stage in ("encode", "decode"):
            assert row[stage]["peak_rss_mb"] >= row[stage]["idle_rss_mb"] > 0 and row[stage]["mp_per_s"] > 0
        assert row["encode"]["tile"] == 32 and row["encode"]["bytes"] == row["decode"]["bytes"]
    assert doc["environment"]["cpu"] and "cpu_features" in doc["environment"] and "decode MB" in r.stdout
