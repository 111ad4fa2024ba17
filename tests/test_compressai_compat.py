"""Our layers, entropy models and models against CompressAI itself, on the same weights."""
import random

import pytest
import torch

compressai = pytest.importorskip("compressai")
from compressai.entropy_models import EntropyBottleneck as CaiEB  # noqa: E402
from compressai.entropy_models import GaussianConditional as CaiGC  # noqa: E402
from compressai.layers import GDN as CaiGDN  # noqa: E402
from compressai.models import FactorizedPrior as CaiFactorized  # noqa: E402
from compressai.models import MeanScaleHyperprior as CaiMeanScale  # noqa: E402
from compressai.models import ScaleHyperprior as CaiHyperprior  # noqa: E402
from compressai.models.base import get_scale_table as cai_scale_table  # noqa: E402

from lickd.entropy import EntropyBottleneck, GaussianConditional, get_scale_table  # noqa: E402
from lickd.layers import GDN  # noqa: E402
from lickd.models import ARCHITECTURES  # noqa: E402

CAI = {"bmshj2018-factorized": CaiFactorized, "bmshj2018-hyperprior": CaiHyperprior, "mbt2018-mean": CaiMeanScale}


def _randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("inverse", [False, True])
def test_gdn_matches_compressai(inverse):
    c = random.choice([3, 16, 37])
    ref = CaiGDN(c, inverse=inverse)
    _randomise(ref, c)
    ours = GDN(c, inverse=inverse)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, c, 9, 11, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    torch.testing.assert_close(ours(x), ref(x2), rtol=0, atol=0)
    ours(x).square().sum().backward()
    ref(x2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    for (n, p), (n2, p2) in zip(ours.named_parameters(), ref.named_parameters()):
        assert n == n2
        torch.testing.assert_close(p.grad, p2.grad)


def test_entropy_bottleneck_matches_compressai():
    ref = CaiEB(7).eval()
    _randomise(ref, 1)
    ours = EntropyBottleneck(7).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 7, 5, 6) * 4
    for a, b in zip(ours(x), ref(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(ours.loss(), ref.loss())
    torch.manual_seed(3)
    noisy = ours(x, training=True)
    torch.manual_seed(3)
    noisy_ref = ref(x, training=True)
    for a, b in zip(noisy, noisy_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_gaussian_conditional_matches_compressai():
    ref = CaiGC(None)
    ref.update_scale_table(cai_scale_table())
    ours = GaussianConditional(None)
    ours.update_scale_table(get_scale_table())
    scales = torch.exp(torch.empty(4000).uniform_(-4, 7)).reshape(4, 10, 100)
    scales[0, 0, :3] = torch.tensor([0.0, 0.11, 256.0])
    assert torch.equal(ours.build_indexes(scales), ref.build_indexes(scales))
    # Same support per table as CompressAI (our own integer quantiser fills it).
    assert torch.equal(ours._offset, ref._offset)
    assert torch.equal(ours._cdf_length, ref._cdf_length)
    y, means = torch.randn_like(scales) * scales, torch.randn_like(scales)
    for a, b in zip(ours(y, scales, means, training=False), ref(y, scales, means, training=False)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("architecture", sorted(a for a, cls in ARCHITECTURES.items() if not cls.variable_rate))
def test_model_state_dict_and_outputs_match_compressai(architecture):
    N, M = random.choice([(8, 12), (16, 24), (24, 40)])
    torch.manual_seed(N)
    ref = CAI[architecture](N, M).eval()
    _randomise(ref, N)
    ref.update(force=True)
    sd = ref.state_dict()

    ours = ARCHITECTURES[architecture].from_state_dict(sd).eval()  # strict load, unchanged keys
    assert (ours.N, ours.M) == (N, M)
    assert set(ours.state_dict()) == set(sd)
    for key, value in ours.state_dict().items():
        assert torch.equal(value, sd[key]), key
    # Ours -> CompressAI: our state_dict loads strictly too.
    back = CAI[architecture](N, M)
    back.load_state_dict(ours.state_dict())

    x = torch.rand(1, 3, 128, 192)
    with torch.no_grad():
        out, out_ref = ours(x), ref(x)
        torch.testing.assert_close(out["x_hat"], out_ref["x_hat"], rtol=0, atol=0)
        for name in out_ref["likelihoods"]:
            torch.testing.assert_close(out["likelihoods"][name], out_ref["likelihoods"][name], rtol=0, atol=0)

        # Coding with CompressAI's own 16-bit tables through our coder reconstructs exactly what
        # CompressAI's coder does.
        assert ours.entropy_bottleneck.table_precision() == 16
        enc, enc_ref = ours.compress(x), ref.compress(x)
        x_hat = ours.decompress(enc["strings"], enc["shape"])["x_hat"]
        x_hat_ref = ref.decompress(enc_ref["strings"], enc_ref["shape"])["x_hat"]
        torch.testing.assert_close(x_hat, x_hat_ref, rtol=0, atol=0)


def test_quantile_bisection_matches_compressai():
    ref = CaiEB(5)
    _randomise(ref, 7)
    ours = EntropyBottleneck(5)
    ours.load_state_dict(ref.state_dict())
    ref.update(force=True, update_quantiles=True)
    ours.update(force=True, update_quantiles=True)
    torch.testing.assert_close(ours.quantiles, ref.quantiles, rtol=1e-4, atol=2e-3)
    assert torch.equal(ours._offset, ref._offset) and torch.equal(ours._cdf_length, ref._cdf_length)
