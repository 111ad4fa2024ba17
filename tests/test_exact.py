"""Exact entropy parameters (lickd.entropy.exact): h_s gives the same bits whatever the summation
order, batch, thread count or convolution algorithm, stays close to the float network, and the
codec's files depend on nothing else."""
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lickd.entropy import exact as exact_module
from lickd.entropy.exact import ACT_BITS, WEIGHT_BITS, exact_sequential
from lickd.layers import int_conv
from lickd.models import build_model


def _to_grid(v, bits):
    return torch.round(v * 2.0**bits) / 2.0**bits


def _reference_v1(seq, x):
    """Version 1 through torch's own float64 convolutions (another algorithm)."""
    v = x.double()
    for m in seq:
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            w, b = _to_grid(m.weight.double(), WEIGHT_BITS), _to_grid(m.bias.double(), ACT_BITS + WEIGHT_BITS)
            v = _to_grid(v, ACT_BITS)
            if isinstance(m, nn.ConvTranspose2d):
                v = F.conv_transpose2d(v, w, b, m.stride, m.padding, m.output_padding)
            else:
                v = F.conv2d(v, w, b, m.stride, m.padding)
        else:
            v = F.relu(v) if isinstance(m, nn.ReLU) else F.leaky_relu(v, m.negative_slope)
    return v


def _pow2_step(maximum: float, limit: int) -> float:
    return 2.0 ** math.ceil(math.log2(maximum / limit)) if maximum > 0 else 1.0


def _reference_v2(seq, x):
    """Version 2 from its definition, written apart from lickd's code: 8-bit weights per output
    channel and 11-bit activations per image on power-of-two steps, torch's float64 convolutions
    on the integers (exact: every sum is far below 2^53), scale and bias in float64, float32 out."""
    v = x.float()
    for m in seq:
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            transposed = isinstance(m, nn.ConvTranspose2d)
            w = m.weight.double()
            per_out = w.abs().amax(dim=(0, 2, 3) if transposed else (1, 2, 3))
            w_step = torch.tensor([_pow2_step(float(t), 127) for t in per_out], dtype=torch.float64)
            w_int = torch.clamp(torch.round(w / w_step.view([1, -1, 1, 1] if transposed else [-1, 1, 1, 1])), -127, 127)
            a_step = torch.tensor([_pow2_step(float(t), 1023) for t in v.abs().amax(dim=(1, 2, 3))],
                                  dtype=torch.float64).view(-1, 1, 1, 1)
            a_int = torch.clamp(torch.round(v.double() / a_step), -1023, 1023)
            if transposed:
                sums = F.conv_transpose2d(a_int, w_int, None, m.stride, m.padding, m.output_padding)
            else:
                sums = F.conv2d(a_int, w_int, None, m.stride, m.padding)
            v = (sums * (a_step * w_step.view(1, -1, 1, 1)) + m.bias.double().view(1, -1, 1, 1)).float()
        elif isinstance(m, nn.ReLU):
            v = F.relu(v)
        else:
            v = torch.where(v >= 0, v, v * torch.tensor(m.negative_slope, dtype=torch.float32))
    return v


REFERENCES = {1: _reference_v1, 2: _reference_v2}


def _trained_like(model):
    """Weights several times larger than at init, as trained hyper-synthesis weights are."""
    with torch.no_grad():
        for p in model.h_s.parameters():
            p.mul_(random.uniform(2, 6))
    return model


NATIVE = int_conv.native


def _native_runs_here() -> bool:
    return int_conv.available()


class _CountingKernels:
    """lickd._intconv with its conv calls counted (a test of the native path checks it ran)."""

    def __init__(self, module):
        self.module, self.calls = module, 0

    def __getattr__(self, name):
        return getattr(self.module, name)

    def conv(self, *args, **kwargs):
        self.calls += 1
        return self.module.conv(*args, **kwargs)


def _use_path(path: str, monkeypatch):
    """Version 2 through lickd._intconv ("native": returns the call counter) or the float32 GEMMs."""
    if path == "gemm":
        monkeypatch.setattr(int_conv, "available", lambda: False)
        return None
    if not _native_runs_here():
        pytest.skip("lickd._intconv has no vector kernel for this CPU (the GEMM path runs instead)")
    counter = _CountingKernels(NATIVE)
    monkeypatch.setattr(int_conv, "native", counter)
    return counter


@pytest.fixture(params=["native", "gemm"])
def v2_path(request, monkeypatch):
    """Version 2 through the C++ integer kernels (lickd._intconv, CPUs with AVX2) or through the
    float32 GEMMs (GPUs and other CPUs): every test taking this runs on both, and the native
    variant fails unless the kernels ran."""
    counter = _use_path(request.param, monkeypatch)
    yield request.param
    assert counter is None or counter.calls > 0, "the native kernels never ran"


@pytest.mark.parametrize("version,path", [(1, "gemm"), (2, "native"), (2, "gemm")])
@pytest.mark.parametrize("architecture", ["bmshj2018-hyperprior", "mbt2018-mean"])
def test_exact_h_s_is_bitwise_independent_of_order_batch_threads_and_algorithm(architecture, version, path, monkeypatch):
    counter = _use_path(path, monkeypatch)
    torch.manual_seed(random.randrange(1 << 30))
    n, m = random.choice([(16, 24), (24, 40), (32, 48)])
    model = _trained_like(build_model(architecture, n, m)).eval()
    z = torch.randn(3, n, 5, 7).mul(4).round() + 0.37
    with torch.no_grad():
        out = exact_sequential(model.h_s, z, version)
        # one image at a time (other GEMM shapes and blockings)
        assert torch.equal(torch.cat([exact_sequential(model.h_s, z[i:i + 1], version) for i in range(3)]), out)
        # input channels permuted, weights with them: every sum in another order
        perm = torch.randperm(n)
        other = build_model(architecture, n, m).eval()
        other.load_state_dict(model.state_dict())
        other.h_s[0].weight.copy_(model.h_s[0].weight[perm])
        assert torch.equal(exact_sequential(other.h_s, z[:, perm], version), out)
        # one thread instead of several, and (version 2) GEMMs over blocks of a few rows
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        monkeypatch.setattr(exact_module, "V2_BLOCK_BYTES", 1)
        try:
            model.h_s.__dict__.pop("_lickd_exact_cache", None)
            model.h_s.__dict__.pop("_lickd_exact_cache_v2", None)
            assert torch.equal(exact_sequential(model.h_s, z, version), out)
        finally:
            torch.set_num_threads(threads)
        # torch's own convolutions on the same integers: another algorithm, written apart
        assert torch.equal(REFERENCES[version](model.h_s, z).to(out.dtype), out)
        # and close to the float network
        ref = model.h_s.double()(z.double())
    assert float((out.double() - ref).norm() / ref.norm()) < (2e-3 if version == 1 else 2e-2)
    assert counter is None or counter.calls > 0


def test_version_2_reductions_stay_below_two_to_the_24(rng):
    """Every reduction block of a version-2 layer keeps sum |w| * 1023 below 2^24 for every row."""
    model = _trained_like(build_model("mbt2018-mean", 24, 40)).eval()
    with torch.no_grad():
        exact_sequential(model.h_s, torch.randn(1, 24, 4, 4), 2)
    layers = model.h_s.__dict__["_lickd_exact_cache_v2"]["layers"].values()
    matrices = [layer.blocks for layer in layers if not layer.transposed]
    matrices += [phase[-1] for layer in layers if layer.transposed for phase in layer.phases]
    assert len(matrices) == 1 + 2 * 4  # the 3x3 conv, and four phases of each stride-2 transposed conv
    for blocks in matrices:
        covered = 0
        for k0, k1, w in blocks:
            assert k0 == covered and k1 > k0 and w.size(1) == k1 - k0
            covered = k1
            assert float(w.abs().sum(dim=1).max()) * 1023 < 2**24
            assert float(w.abs().max()) <= 127 and torch.equal(w, w.round())


def test_codec_files_use_exact_parameters_and_decode_the_same_in_any_batch_or_thread_count(rng, v2_path):
    from lickd import StudentCodec, zoo
    from lickd.codec import FILE_CODER
    from lickd.container import parse
    import numpy as np

    torch.manual_seed(0)
    model = _trained_like(build_model("mbt2018-mean", 16, 24))
    codec = StudentCodec(model, zoo.ModelInfo(name="t", architecture="mbt2018-mean", N=16, M=24), device="cpu")
    imgs = [rng.integers(0, 256, (64, 96, 3), dtype=np.uint8) for _ in range(2)]
    data = [codec.compress(img) for img in imgs]
    assert parse(data[0]).coder == FILE_CODER == "rans1b+x2"
    _, latents = codec.decode_latents(data[0])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # decoded on one thread, second in a batch of two: other GEMM shapes and orders
        batched = codec._decode_group([parse(d) for d in data[::-1]])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(batched["y"][1:], latents["y"]) and torch.equal(batched["z"][1:], latents["z"])


def test_files_of_version_1_still_decode_and_a_batch_may_mix_versions(rng):
    """Files written by an older lickd (coder rans1b+x1) decode to the latents they were coded
    from, also in one batch with files of version 2."""
    import dataclasses

    import numpy as np
    from lickd import StudentCodec, container, zoo
    from lickd.entropy.options import LKD_FILE_OPTIONS
    from lickd.image import pad_to_multiple, to_tensor

    torch.manual_seed(1)
    model = _trained_like(build_model("mbt2018-mean", 16, 24))
    codec = StudentCodec(model, zoo.ModelInfo(name="t", architecture="mbt2018-mean", N=16, M=24), device="cpu")
    img = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    x = pad_to_multiple(to_tensor(img)[0], 64)
    with torch.inference_mode():
        coded = model.compress(x, options=LKD_FILE_OPTIONS.replace(exact_version=1))
        z_hat = model.entropy_bottleneck.quantize(model._hyper_analysis(model.g_a(x)), "dequantize",
                                                  model.entropy_bottleneck.expanded_medians(1, 2))
        _, means = model._coding_params(z_hat, LKD_FILE_OPTIONS.replace(exact_version=1))
        y_hat = model.gaussian_conditional.quantize(model.g_a(x), "dequantize", means)
    shapes = model.latent_shapes(64, 128)
    sections = [container.Section(n, shapes[n], s[0]) for n, s in zip(model.latent_names, coded["strings"])]
    old = dataclasses.replace(codec._file((64, 96), sections, None), coder="rans1b+x1").to_bytes()
    new = codec.compress(img)
    assert container.parse(new).coder == "rans1b+x2"
    _, latents = codec.decode_latents(old)
    assert torch.equal(latents["y"], y_hat) and torch.equal(latents["z"], z_hat)
    both = codec.decompress_batch([old, new], output="tensor")
    assert torch.equal(both[0], codec.decompress(old, output="tensor"))
    assert torch.equal(both[1], codec.decompress(new, output="tensor"))
    for coder in ("rans1b+x3", "rans1b+x0"):
        with pytest.raises(Exception, match="this lickd decodes"):
            codec.decompress(dataclasses.replace(container.parse(new), coder=coder).to_bytes())


def test_hostile_latents_are_clamped_to_finite_exact_values(v2_path):
    # Escapes let a file carry any int32 z. Version 1: beyond the layer bound (2^15 for these
    # weights) every value acts as the bound, on every device.
    model = build_model("mbt2018-mean", 16, 24).eval()
    signs = torch.where(torch.rand(1, 16, 3, 4) < 0.5, -1.0, 1.0)
    with torch.no_grad():
        out = exact_sequential(model.h_s, signs * 2.0**31, 1)
        assert model.h_s.__dict__["_lickd_exact_cache"]["layers"][0].bound <= 2.0**20
        assert torch.isfinite(out).all() and torch.equal(out, exact_sequential(model.h_s, signs * 2.0**20, 1))
        # Version 2 scales each image to its own largest value: huge, infinite or NaN inputs give
        # finite outputs, and a value 2^40 times another is the same picture at another scale.
        for hostile in (signs * 2.0**31, signs * float("inf"), torch.full_like(signs, float("nan"))):
            assert torch.isfinite(exact_sequential(model.h_s, hostile, 2)).all()
        big, small = exact_sequential(model.h_s, signs * 2.0**60, 2), exact_sequential(model.h_s, signs * 2.0**20, 2)
        assert torch.isfinite(big).all() and torch.isfinite(small).all()


def test_unknown_versions_are_refused():
    with pytest.raises(ValueError, match="unknown exact arithmetic version 3"):
        exact_sequential(build_model("mbt2018-mean", 8, 12).h_s, torch.zeros(1, 8, 2, 2), 3)


def test_unsupported_layers_and_oversized_weights_are_refused():
    with pytest.raises(TypeError, match="Tanh"):
        exact_sequential(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Tanh()), torch.zeros(1, 2, 4, 4))
    huge = nn.Conv2d(4, 4, 3, padding=1)
    with torch.no_grad():
        huge.weight.fill_(1e9)
    with pytest.raises(ValueError, match="too large"):
        exact_sequential(nn.Sequential(huge), torch.zeros(1, 4, 4, 4), 1)
    for bad in ("weight", "bias"):  # a weights file with NaN in h_s: a clear error on every path
        conv = nn.Conv2d(4, 4, 3, padding=1)
        with torch.no_grad():
            getattr(conv, bad)[0].fill_(float("nan"))
        with pytest.raises(ValueError, match="non-finite weights"):
            exact_sequential(nn.Sequential(conv), torch.zeros(1, 4, 4, 4), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_files_encoded_on_the_gpu_decode_to_the_same_latents_on_the_cpu_and_back(rng):
    import numpy as np
    from lickd import StudentCodec, zoo

    torch.manual_seed(0)
    model = _trained_like(build_model("mbt2018-mean", 32, 48))
    info = zoo.ModelInfo(name="t", architecture="mbt2018-mean", N=32, M=48)
    twin = build_model("mbt2018-mean", 32, 48)
    twin.load_state_dict(model.state_dict())
    cpu = StudentCodec(twin, info, device="cpu")
    gpu = StudentCodec(model, info, device="cuda")
    assert cpu.info.sha256 == gpu.info.sha256
    for _ in range(3):
        img = rng.integers(0, 256, (128, 192, 3), dtype=np.uint8)
        for enc, dec in ((gpu, cpu), (cpu, gpu)):
            data = enc.compress(img)
            a, b = enc.decode_latents(data)[1], dec.decode_latents(data)[1]
            assert torch.equal(a["y"].cpu(), b["y"].cpu()) and torch.equal(a["z"].cpu(), b["z"].cpu())


def test_a_file_written_by_lickd_with_version_1_decodes_to_its_latents():
    """tests/data/x1-example.lkd was written by lickd before version 2 (commit 1113ea0), with the
    weights beside it; today's lickd decodes it to the same latents, bit for bit."""
    import hashlib
    import json
    from pathlib import Path

    from lickd import StudentCodec, container

    data_dir = Path(__file__).parent / "data"
    expected = json.loads((data_dir / "x1-example.json").read_text())
    data = (data_dir / expected["file"]).read_bytes()
    assert container.parse(data).coder == "rans1b+x1" and len(data) == expected["bytes"]
    codec = StudentCodec.from_file(data_dir / expected["weights"], device="cpu")
    _, latents = codec.decode_latents(data)
    got = {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest() for k, v in latents.items()}
    assert got == expected["latents_sha256"]
    assert codec.decompress(data, output="numpy").shape == (48, 80, 3)


def test_version_2_block_sums_at_the_limit_are_exact(v2_path):
    """The worst case the 2^24 budget allows: every weight at 127 steps and every input at 1021 or
    1023 steps, over a long reduction (21 blocks of 129 columns); against torch's float64
    convolution of the same integers. A looser budget would round these sums in float32."""
    conv = nn.Conv2d(288, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.fill_(127 * 2.0**-8)
        conv.bias.zero_()
    seq = nn.Sequential(conv)
    x = torch.full((1, 288, 5, 6), 1023 * 2.0**-4)
    x[:, ::2] = 1021 * 2.0**-4
    with torch.no_grad():
        out = exact_sequential(seq, x, 2)
        layer = seq.__dict__["_lickd_exact_cache_v2"]["layers"][0]
        assert len(layer.blocks) > 15  # the GEMM path's blocks (the native one sums all 2,592 in int32)
        assert torch.equal(out, _reference_v2(seq, x))


def _transposed_geometries():
    """24 geometries with an output for the tests' 4 x 7 input (padding may eat it all otherwise)."""
    rng = random.Random(7)
    out = [((3, 5), (2, 1), (1, 2), (1, 0)), (5, 2, 2, 1), (1, 2, 0, 1), (2, 3, 0, 2)]
    while len(out) < 24:
        k, s = rng.randint(1, 6), rng.randint(1, 3)
        p, op = rng.randint(0, k - 1), rng.randint(0, s - 1)
        if min((n - 1) * s - 2 * p + k + op for n in (4, 7)) > 0:
            out.append((k, s, p, op))
    return out


@pytest.mark.parametrize("kernel,stride,padding,output_padding", _transposed_geometries())
def test_version_2_transposed_convolutions_of_any_geometry(kernel, stride, padding, output_padding, rng, v2_path):
    """The phase decomposition against torch's own conv_transpose2d on the same integers, for
    kernels 1-6, strides 1-3, paddings and output paddings (some outputs see no tap at all)."""
    torch.manual_seed(int(rng.integers(1 << 31)))
    layer = nn.ConvTranspose2d(5, 3, kernel, stride, padding, output_padding)
    x = torch.randn(2, 5, 4, 7)
    try:
        expected_shape = layer(x).shape
    except RuntimeError:
        expected_shape = None
    if expected_shape is None or 0 in expected_shape:
        pytest.skip("not a valid geometry for torch (no output)")
    seq = nn.Sequential(layer, nn.LeakyReLU())
    with torch.no_grad():
        out = exact_sequential(seq, x, 2)
        assert out.shape == expected_shape
        assert torch.equal(out, _reference_v2(seq, x))


def test_version_2_falls_back_to_float64_gemms_where_float32_ones_are_not_exact(monkeypatch):
    monkeypatch.setattr(int_conv, "available", lambda: False)  # the GEMM path, on any CPU
    model = _trained_like(build_model("mbt2018-mean", 16, 24)).eval()
    z = torch.randn(1, 16, 4, 6).mul(4).round()
    assert exact_module.float32_gemm_is_exact(torch.device("cpu"))  # this machine's float32 GEMMs
    with torch.no_grad():
        out = exact_sequential(model.h_s, z, 2)
        monkeypatch.setattr(exact_module, "float32_gemm_is_exact", lambda device: False)
        assert torch.equal(exact_sequential(model.h_s, z, 2), out)


# ------------------------------------------------------------------ the native kernels (lickd._intconv)
needs_native = pytest.mark.skipif(NATIVE is None, reason="lickd._intconv is not built")


def _isas():
    return ["scalar"] + ([NATIVE.best_isa()] if NATIVE is not None and NATIVE.best_isa() != "scalar" else [])


def _packed(kernel: np.ndarray) -> np.ndarray:
    """The packing lickd._intconv documents, written apart from lickd.layers.int_conv.pack."""
    cout, cin, kh, kw = kernel.shape
    blocks, pairs = -(-cout // 16), -(-cin // 2)
    out = np.zeros((blocks, kh, kw, pairs, 16, 2), np.int16)
    for o in range(cout):
        for c in range(cin):
            out[o // 16, :, :, c // 2, o % 16, c % 2] = kernel[o, c]
    return out


@needs_native
@pytest.mark.parametrize("isa", _isas())
def test_native_conv_is_the_int64_sum_finished_in_float64(isa, rng):
    """Random geometries (strides, offsets into the padded input, outputs written on a strided
    grid, odd channel counts padded with a zero channel, tiles of 1-6 positions), the weights and
    activations at their limits included, against NumPy's int64 sums and float64 finish."""
    for _ in range(6):
        batch, cin, cout = int(rng.integers(1, 3)), int(rng.integers(1, 40)), int(rng.integers(1, 40))
        kh, kw, sh, sw = (int(v) for v in rng.integers(1, 4, size=4))
        rows, cols = int(rng.integers(1, 6)), int(rng.integers(1, 14))
        off_h, off_w = (int(v) for v in rng.integers(0, 3, size=2))
        in_h, in_w = off_h + (rows - 1) * sh + kh + int(rng.integers(0, 2)), off_w + (cols - 1) * sw + kw
        step_h, step_w = (int(v) for v in rng.integers(1, 3, size=2))
        origin_h, origin_w = (int(v) for v in rng.integers(0, 2, size=2))
        out_h, out_w = origin_h + step_h * (rows - 1) + 1, origin_w + step_w * (cols - 1) + 1
        cin2 = cin + cin % 2
        x = np.zeros((batch, in_h, in_w, cin2), np.int16)
        x[..., :cin] = rng.integers(-1023, 1024, size=(batch, in_h, in_w, cin))
        x[0, 0, 0, 0] = -1023
        kernel = rng.integers(-127, 128, size=(cout, cin, kh, kw))
        kernel[0, 0, 0, 0] = 127
        a_steps = 2.0 ** rng.integers(-12, 3, size=batch).astype(np.float64)
        w_steps = 2.0 ** rng.integers(-20, -5, size=cout).astype(np.float64)
        bias = rng.normal(size=cout)
        out = np.full((batch, out_h, out_w, cout), np.nan, np.float32)
        NATIVE.conv(x, _packed(kernel), a_steps, w_steps, bias, out, (kh, kw), (sh, sw), (off_h, off_w), (0, rows),
                    (0, cols), (origin_h, origin_w), (step_h, step_w), int(rng.integers(1, 4)), isa)
        want = np.full_like(out, np.nan)
        for r in range(rows):
            for c in range(cols):
                patch = x[:, off_h + r * sh:off_h + r * sh + kh, off_w + c * sw:off_w + c * sw + kw, :cin].astype(np.int64)
                sums = np.einsum("bhwc,ochw->bo", patch, kernel.astype(np.int64))
                want[:, origin_h + step_h * r, origin_w + step_w * c] = \
                    (sums.astype(np.float64) * (a_steps[:, None] * w_steps[None]) + bias[None]).astype(np.float32)
        np.testing.assert_array_equal(out, want)  # NaN where no position writes, on both


@needs_native
@pytest.mark.parametrize("isa", _isas())
def test_native_sums_at_the_int32_limit_are_exact(isa):
    """The longest reduction the kernel accepts (3 x 3 taps x 1,836 channels = 16,524 products of
    127 x 1023) sums to within 0.04 % of 2^31, each sign: against NumPy's int64 sum."""
    cin = 1836
    x = np.full((1, 3, 10, cin), 1023, np.int16)
    x[0, :, 5:] = -1023  # positions 0-2 read only +1023, 3-4 both signs, 5-7 only -1023
    kernel = np.full((17, cin, 3, 3), 127, np.int64)
    kernel[16] = -127
    out = np.zeros((1, 1, 8, 17), np.float32)
    NATIVE.conv(x, _packed(kernel), np.ones(1), np.ones(17), np.zeros(17), out, (3, 3), (1, 1), (0, 0), (0, 1),
                (0, 8), (0, 0), (1, 1), 2, isa)
    patches = np.stack([x[0, :, c:c + 3].astype(np.int64) for c in range(8)])  # [8, 3 rows, 3 cols, cin]
    want = np.einsum("phwc,ochw->po", patches, kernel)
    assert np.abs(want).max() == 16524 * 127 * 1023 > 2**31 - 2**21
    np.testing.assert_array_equal(out[0, 0], want.astype(np.float64).astype(np.float32))


@needs_native
def test_reductions_past_the_int32_bound_take_the_gemm_path(monkeypatch):
    """A layer whose reduction would not stay exact in int32 (3 x 3 x 2,000 products) runs on the
    GEMM path, with the same result as the reference."""
    counter = _use_path("native", monkeypatch)
    conv = nn.Conv2d(2000, 4, 3, padding=1)
    seq = nn.Sequential(conv, nn.LeakyReLU(), nn.Conv2d(4, 4, 1))
    x = torch.randn(1, 2000, 3, 3)
    with torch.no_grad():
        assert torch.equal(exact_sequential(seq, x, 2), _reference_v2(seq, x))
    assert counter.calls == 0


@needs_native
def test_large_outputs_take_the_gemm_path_in_bounded_memory(monkeypatch):
    """Past NATIVE_MAX_OUTPUT_BYTES of h_s output the GEMM path (blocks of rows) runs: the same
    bits, without the native path's whole-layer buffers."""
    counter = _use_path("native", monkeypatch)
    model = _trained_like(build_model("mbt2018-mean", 16, 24)).eval()
    z = torch.randn(1, 16, 4, 6).mul(4).round()  # output: 48 channels x 16 x 24 positions, 72 KB
    with torch.no_grad():
        small = exact_sequential(model.h_s, z, 2)
        assert counter.calls > 0
        counter.calls = 0
        monkeypatch.setattr(exact_module, "NATIVE_MAX_OUTPUT_BYTES", 48 * 16 * 24 * 4 - 1)
        assert torch.equal(exact_sequential(model.h_s, z, 2), small) and counter.calls == 0


def test_a_negative_slope_and_the_callers_tensor_are_kept_bit_for_bit(v2_path):
    """LeakyReLU with a negative slope keeps +0 as +0 on both paths (sign bits compared), and the
    caller's latent (channels_last here, as the CPU codec holds it; NaN and inf included) is
    never changed by the evaluation."""
    torch.manual_seed(3)
    seq = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.LeakyReLU(-0.5), nn.ConvTranspose2d(8, 5, 4, 2, 1))
    x = torch.randn(2, 6, 5, 7).round().contiguous(memory_format=torch.channels_last)
    x[0, 0, 0, 0], x[1, 2, 3, 4] = float("nan"), float("inf")
    before = x.clone()
    with torch.no_grad():
        out = exact_sequential(seq, x, 2)
        ref = _reference_v2(seq, torch.nan_to_num(x, nan=0.0))
    assert torch.equal(out.view(torch.int32), ref.contiguous().view(torch.int32))
    assert torch.equal(x.nan_to_num(nan=7.0), before.nan_to_num(nan=7.0)) and torch.isnan(x[0, 0, 0, 0])


@needs_native
def test_files_encoded_on_one_path_decode_to_the_same_latents_on_the_other(rng, monkeypatch):
    """A CPU with AVX2 encodes through the int32 kernels; a GPU or another CPU decodes through the
    GEMMs (and the other way round): the latents must be the same."""
    from lickd import StudentCodec, zoo

    if not _native_runs_here():
        pytest.skip("lickd._intconv has no vector kernel for this CPU")
    torch.manual_seed(5)
    model = _trained_like(build_model("mbt2018-mean", 16, 24))
    codec = StudentCodec(model, zoo.ModelInfo(name="t", architecture="mbt2018-mean", N=16, M=24), device="cpu")
    imgs = [rng.integers(0, 256, (128, 192, 3), dtype=np.uint8) for _ in range(2)]
    native_files = [codec.compress(img) for img in imgs]
    native_latents = [codec.decode_latents(d)[1] for d in native_files]
    monkeypatch.setattr(int_conv, "available", lambda: False)
    for data, latents, img in zip(native_files, native_latents, imgs):
        gemm_latents = codec.decode_latents(data)[1]
        assert all(torch.equal(gemm_latents[k], latents[k]) for k in latents)
        assert codec.compress(img) == data


@needs_native
def test_native_quantize_rounds_ties_to_even_clamps_and_zeroes_nan():
    v = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 1023.49, 1023.5, 5000.0, -5000.0, float("nan"), 7.0, -3.25],
                     dtype=torch.float32).view(1, 1, 3, 4)
    for step in (1.0, 0.25, 2.0**-30):
        ints = np.full((1, 3, 6, 5), 77, np.int16)  # padded: 1 column left and right, 4 spare channels
        NATIVE.quantize((v * step).permute(0, 2, 3, 1).contiguous().numpy(), np.array([step]), ints, (0, 1), 2)
        got = ints[0, :, 1:5, 0].reshape(-1).tolist()
        assert got == [0, 2, 2, 0, -2, 1023, 1023, 1023, -1023, 0, 7, -3]
        assert not ints[:, :, [0, 5]].any() and not ints[..., 1:].any()  # the padding zeroed
    # against the GEMM path's quantiser on random values and steps, ties and NaN included: rows
    # as one run (the vector loop, 8 at a time, and its tail) and padded per pixel
    x = torch.randn(2, 7, 5, 3) * 300
    x[0, :, 0, :2] = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5]).view(7, 1) * 2.0**-3 * x.abs().amax()
    x[1, 3, 2, 1] = float("nan")
    ints, steps = exact_module._to_activation_grid(x)
    for cout, at in ((7, (0, 0)), (8, (1, 2))):
        got = np.full((2, 5 + at[0], 3 + at[1], cout), 55, np.int16)
        NATIVE.quantize(x.permute(0, 2, 3, 1).contiguous().numpy(), steps.numpy(), got, at, 2)
        inner = got[:, at[0]:, at[1]:, :7]
        assert torch.equal(torch.from_numpy(inner.copy()).permute(0, 3, 1, 2).float(), ints)
        assert (got == 0).sum() == got.size - inner.size + (inner == 0).sum()  # the rest zeroed


@needs_native
def test_native_sanitize_is_nan_to_num_and_the_max_of_abs(rng):
    """Images of 4 (the scalar tail only), 21 (vector loop and tail) and 200,003 values (several
    pieces per image): nan_to_num in place and each image's largest |value|, as torch computes them."""
    for n in (4, 21, 200_003):
        v = torch.from_numpy(rng.normal(size=(3, n)).astype(np.float32)) * 100
        v[0, rng.integers(n)], v[1, rng.integers(n)], v[1, rng.integers(n)] = float("nan"), float("inf"), -5e3
        v[2, rng.integers(n)] = float("-inf")
        arr = v.clone().view(3, 1, 1, n).numpy()
        absmax = NATIVE.sanitize_absmax(arr, 2)
        want = torch.nan_to_num(v, nan=0.0)
        assert torch.equal(torch.from_numpy(arr).view(3, n), want)
        assert torch.equal(torch.from_numpy(absmax), want.abs().amax(dim=1))


@needs_native
def test_native_kernels_refuse_bad_arrays_with_a_clear_error():
    """Values past the exact ranges, geometries that read or write outside their arrays, weights
    packed for another layer, odd channel counts and wrong dtypes or layouts: each a ValueError,
    never a crash or a wrong sum."""
    x = np.zeros((1, 6, 6, 4), np.int16)
    w = np.zeros((1, 3, 3, 2, 16, 2), np.int16)
    out = np.zeros((1, 4, 4, 5), np.float32)
    ones = np.ones(1), np.ones(5), np.zeros(5)

    def conv(x=x, w=w, out=out, kernel=(3, 3), offset=(0, 0), rows=(0, 4), cols=(0, 4), origin=(0, 0), step=(1, 1),
             isa="auto"):
        NATIVE.conv(x, w, *ones, out, kernel, (1, 1), offset, rows, cols, origin, step, 1, isa)

    conv()  # the geometry itself is sound
    bad_x, bad_w = x.copy(), w.copy()
    bad_x[0, 2, 2, 1], bad_w[0, 1, 1, 0, 3, 1] = 1024, -128
    shared = np.zeros(400, np.int16)  # an input and an output in the same memory
    cases = {
        "activation value 1024": lambda: conv(x=bad_x),
        "weight value -128": lambda: conv(w=bad_w),
        "read outside": lambda: conv(offset=(1, 0)),
        "write outside": lambda: conv(origin=(0, 1)),
        "not packed": lambda: conv(w=np.zeros((1, 3, 3, 3, 16, 2), np.int16)),
        "even": lambda: conv(x=np.zeros((1, 6, 6, 3), np.int16), w=np.zeros((1, 3, 3, 1, 16, 2), np.int16)),
        "C-contiguous": lambda: conv(x=np.zeros((1, 6, 6, 8), np.int16)[..., ::2]),
        "int16": lambda: conv(x=x.astype(np.int32)),
        "exceeds 16529": lambda: conv(x=np.zeros((1, 6, 6, 2000), np.int16), w=np.zeros((1, 3, 3, 1000, 16, 2),
                                                                                          np.int16)),
        "instruction set": lambda: conv(isa="avx9000"),
        "reversed": lambda: conv(rows=(3, 1)),
        "outside \\[0, 2\\^31\\]": lambda: conv(rows=(0, 2**62)),
        "in \\[1, 2\\^16\\]": lambda: NATIVE.conv(x, w, *ones, out, (3, 3), ((2**64 + 2) // 3, 1), (0, 0), (0, 4),
                                                     (0, 4), (0, 0), (1, 1), 1, "auto"),
        "origin outside": lambda: conv(origin=(-2**40, 0)),
        "aligned": lambda: conv(x=np.frombuffer(bytes(1 + x.nbytes), np.int16, x.size, 1).reshape(x.shape)),
        "overlaps input": lambda: conv(x=shared[:144].reshape(x.shape), out=shared[100:260].view(np.float32)
                                       .reshape(out.shape)),
    }
    for expected, call in cases.items():
        with pytest.raises(ValueError, match=expected):
            call()
    for step in (0.0, -1.0, float("inf"), float("nan"), 1e-320):
        with pytest.raises(ValueError, match="positive, finite and invertible"):
            NATIVE.quantize(np.zeros((1, 2, 2, 2), np.float32), np.array([step]), np.zeros((1, 2, 2, 2), np.int16),
                            (0, 0))
    with pytest.raises(ValueError, match="do not fit"):
        NATIVE.quantize(np.zeros((1, 2, 2, 2), np.float32), np.array([1.0]), np.zeros((1, 2, 2, 2), np.int16), (1, 0))
    with pytest.raises(ValueError, match="outside \\[0, 2\\^31\\]"):
        NATIVE.quantize(np.zeros((1, 2, 2, 2), np.float32), np.array([1.0]), np.zeros((1, 2, 2, 2), np.int16),
                        (0, 2**63 - 1))
    same = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="overlaps values"):
        NATIVE.quantize(same.reshape(1, 2, 2, 2), np.array([1.0]), same.view(np.int16).reshape(1, 2, 2, 4), (0, 0))
