"""Exact entropy parameters (lickd.entropy.exact): h_s gives the same bits whatever the summation
order, batch, thread count or convolution algorithm, stays close to the float network, and the
codec's files depend on nothing else."""
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lickd.entropy.exact import ACT_BITS, WEIGHT_BITS, exact_sequential
from lickd.models import build_model


def _to_grid(v, bits):
    return torch.round(v * 2.0**bits) / 2.0**bits


def _reference_fp64(seq, x):
    """The same fixed-point evaluation through torch's own float64 convolutions (another algorithm)."""
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


def _trained_like(model):
    """Weights several times larger than at init, as trained hyper-synthesis weights are."""
    with torch.no_grad():
        for p in model.h_s.parameters():
            p.mul_(random.uniform(2, 6))
    return model


@pytest.mark.parametrize("architecture", ["bmshj2018-hyperprior", "mbt2018-mean"])
def test_exact_h_s_is_bitwise_independent_of_order_batch_threads_and_algorithm(architecture):
    torch.manual_seed(random.randrange(1 << 30))
    n, m = random.choice([(16, 24), (24, 40), (32, 48)])
    model = _trained_like(build_model(architecture, n, m)).eval()
    z = torch.randn(3, n, 5, 7).mul(4).round() + 0.37
    with torch.no_grad():
        out = exact_sequential(model.h_s, z)
        # one image at a time (other GEMM shapes and blockings)
        assert torch.equal(torch.cat([exact_sequential(model.h_s, z[i:i + 1]) for i in range(3)]), out)
        # input channels permuted, weights with them: every sum in another order
        perm = torch.randperm(n)
        other = build_model(architecture, n, m).eval()
        other.load_state_dict(model.state_dict())
        other.h_s[0].weight.copy_(model.h_s[0].weight[perm])
        assert torch.equal(exact_sequential(other.h_s, z[:, perm]), out)
        # one thread instead of several
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            model.h_s.__dict__.pop("_lickd_exact_cache", None)
            assert torch.equal(exact_sequential(model.h_s, z), out)
        finally:
            torch.set_num_threads(threads)
        # torch's float64 convolutions (im2col or direct) on the same grid
        assert torch.equal(_reference_fp64(model.h_s, z), out)
        # and close to the float network
        ref = model.h_s.double()(z.double())
    assert float((out - ref).norm() / ref.norm()) < 2e-3


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
    assert parse(data[0]).coder == FILE_CODER == "rans1b+x1"
    _, latents = codec.decode_latents(data[0])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # decoded on one thread, second in a batch of two: other GEMM shapes and orders
        batched = codec._decode_group([parse(d) for d in data[::-1]])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(batched["y"][1:], latents["y"]) and torch.equal(batched["z"][1:], latents["z"])


def test_hostile_latents_are_clamped_to_finite_exact_values():
    # Escapes let a file carry any int32 z; beyond the layer bound (2^15 for these weights) every
    # value acts as the bound, on every device.
    model = build_model("mbt2018-mean", 16, 24).eval()
    signs = torch.where(torch.rand(1, 16, 3, 4) < 0.5, -1.0, 1.0)
    with torch.no_grad():
        out = exact_sequential(model.h_s, signs * 2.0**31)
        assert model.h_s.__dict__["_lickd_exact_cache"]["layers"][0].bound <= 2.0**20
        assert torch.isfinite(out).all() and torch.equal(out, exact_sequential(model.h_s, signs * 2.0**20))


def test_unsupported_layers_and_oversized_weights_are_refused():
    with pytest.raises(TypeError, match="Tanh"):
        exact_sequential(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Tanh()), torch.zeros(1, 2, 4, 4))
    huge = nn.Conv2d(4, 4, 3, padding=1)
    with torch.no_grad():
        huge.weight.fill_(1e9)
    with pytest.raises(ValueError, match="too large"):
        exact_sequential(nn.Sequential(huge), torch.zeros(1, 4, 4, 4))


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
