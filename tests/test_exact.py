"""Exact entropy parameters (lickd.entropy.exact): h_s gives the same bits whatever the summation
order, batch, thread count or convolution algorithm, stays close to the float network, and the
codec's files depend on nothing else."""
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lickd.entropy import exact as exact_module
from lickd.entropy.exact import ACT_BITS, EXACT_VERSIONS, WEIGHT_BITS, exact_sequential
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


@pytest.mark.parametrize("version", EXACT_VERSIONS)
@pytest.mark.parametrize("architecture", ["bmshj2018-hyperprior", "mbt2018-mean"])
def test_exact_h_s_is_bitwise_independent_of_order_batch_threads_and_algorithm(architecture, version, monkeypatch):
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


def test_codec_files_use_exact_parameters_and_decode_the_same_in_any_batch_or_thread_count(rng):
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


def test_hostile_latents_are_clamped_to_finite_exact_values():
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


def test_version_2_block_sums_at_the_limit_are_exact():
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
        assert len(layer.blocks) > 15
        assert torch.equal(out, _reference_v2(seq, x))


def _transposed_geometries():
    rng = random.Random(7)
    out = [((3, 5), (2, 1), (1, 2), (1, 0)), (5, 2, 2, 1), (1, 2, 0, 1), (2, 3, 0, 2)]
    while len(out) < 24:
        k, s = rng.randint(1, 6), rng.randint(1, 3)
        out.append((k, s, rng.randint(0, k - 1), rng.randint(0, s - 1)))
    return out


@pytest.mark.parametrize("kernel,stride,padding,output_padding", _transposed_geometries())
def test_version_2_transposed_convolutions_of_any_geometry(kernel, stride, padding, output_padding, rng):
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
    model = _trained_like(build_model("mbt2018-mean", 16, 24)).eval()
    z = torch.randn(1, 16, 4, 6).mul(4).round()
    assert exact_module.float32_gemm_is_exact(torch.device("cpu"))  # this machine's float32 GEMMs
    with torch.no_grad():
        out = exact_sequential(model.h_s, z, 2)
        monkeypatch.setattr(exact_module, "float32_gemm_is_exact", lambda device: False)
        assert torch.equal(exact_sequential(model.h_s, z, 2), out)
