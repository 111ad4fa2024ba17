"""Fused Triton kernels against a float64 PyTorch reference, forward and backward.

Without a GPU they run under Triton's CPU interpreter (TRITON_INTERPRET=1, set in conftest.py
before Triton is imported) on small shapes; with a GPU the same tests run the compiled kernels
and add full-size cases.
"""
import json
import random

import pytest
import torch
from torch import nn

triton = pytest.importorskip("triton")

from lickd import accelerate  # noqa: E402
from lickd.kernels import FusedSequential, reference  # noqa: E402
from lickd.kernels.ops import FusedConvActFunction, pack_conv_weight, pack_deconv_weight, pack_gdn  # noqa: E402
from lickd.layers import GDN  # noqa: E402
from lickd.models import build_model  # noqa: E402

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
# Relative L2 error bounds per layer: fp32 (TF32 on GPUs), fp16, bf16 storage.
TOL = {torch.float32: 2e-3 if GPU else 1e-5, torch.float16: 3e-3, torch.bfloat16: 1.2e-2}


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def random_gdn(c, inverse):
    g = GDN(c, inverse=inverse)
    with torch.no_grad():
        g.gamma.add_(0.05 * torch.rand_like(g.gamma))
        g.beta.add_(0.1 * torch.rand_like(g.beta))
    return g.double()


LAYERS = [
    # (name, transposed, cin, cout, ks, stride, pad, act)
    ("g_a first conv 3->C + GDN", False, 3, 24, 5, 2, 2, "gdn"),
    ("conv C->C + GDN, non-power-of-two C", False, 24, 40, 5, 2, 2, "gdn"),
    ("g_a last conv N->M", False, 16, 20, 5, 2, 2, "none"),
    ("h_a conv3x3/s1 + ReLU", False, 20, 16, 3, 1, 1, "relu"),
    ("h_a conv3x3/s1 + LeakyReLU", False, 20, 16, 3, 1, 1, "leaky_relu"),
    ("deconv M->N + IGDN", True, 20, 24, 5, 2, 2, "igdn"),
    ("deconv C->C + IGDN, C=48", True, 48, 48, 5, 2, 2, "igdn"),
    ("conv + GDN, C=72 (64 + 16 channel blocks)", False, 16, 72, 5, 2, 2, "gdn"),
    ("deconv + ReLU, C=130 (128 + 32 blocks; 32 pixels per program in fp32)", True, 8, 130, 5, 2, 2, "relu"),
    ("g_s last deconv N->3", True, 16, 3, 5, 2, 2, "none"),
    ("h_s deconv + ReLU", True, 16, 16, 5, 2, 2, "relu"),
]


def make_layer(transposed, cin, cout, ks, act):
    shape = (cin, cout, ks, ks) if transposed else (cout, cin, ks, ks)
    fan = cin * ks * ks / (4 if transposed else 1)
    w = torch.randn(*shape, dtype=torch.float64) / fan**0.5
    b = 0.1 * torch.randn(cout, dtype=torch.float64)
    beta = gamma = None
    if act in ("gdn", "igdn"):
        beta, gamma = random_gdn(cout, act == "igdn").effective_params()
        beta, gamma = beta.detach(), gamma.detach()
    return w, b, beta, gamma


def run_fused(x, w, b, beta, gamma, transposed, stride, pad, act, dtype):
    packer = pack_deconv_weight if transposed else pack_conv_weight
    packed = {"w": packer(w.to(DEVICE), dtype)}
    if beta is not None:
        packed["gdn"] = pack_gdn(beta.to(DEVICE), gamma.to(DEVICE), dtype)
    args = [t.to(DEVICE, torch.float32) if t is not None else None for t in (x, w, b, beta, gamma)]
    return FusedConvActFunction.apply(*args, packed, (transposed, stride, pad, act, dtype, torch.float32, None))


def run_nhwc(x, w, b, beta, gamma, transposed, act, dtype, splits, out_dtype=None):
    """One 5x5/s2 layer through the NHWC launchers (no autograd), as NCHW on the CPU."""
    from lickd.kernels.ops import conv_act_nhwc, deconv_act_nhwc
    packed = (pack_deconv_weight if transposed else pack_conv_weight)(w.to(DEVICE), dtype)
    gdn = pack_gdn(beta.to(DEVICE), gamma.to(DEVICE), dtype) if beta is not None else None
    x_nhwc = x.to(DEVICE, dtype).permute(0, 2, 3, 1).contiguous()
    if transposed:
        y = deconv_act_nhwc(x_nhwc, packed, b.to(DEVICE), w.shape[1], act, gdn, out_dtype=out_dtype, splits=splits)
    else:
        y = conv_act_nhwc(x_nhwc, packed, b.to(DEVICE), w.shape[0], 5, 2, 2, act, gdn, out_dtype=out_dtype,
                          splits=splits)
    return y.permute(0, 3, 1, 2).cpu()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layer", LAYERS, ids=[spec[0] for spec in LAYERS])
def test_layer_forward_matches_float64(layer, dtype):
    _, transposed, cin, cout, ks, stride, pad, act = layer
    h, w_ = random.randint(5, 9), random.randint(5, 11)
    x = torch.randn(random.choice([1, 2]), cin, h, w_, dtype=torch.float64)
    if cin == 3:
        x = x.abs().clamp(max=1)  # image-like input of the first layer
    w, b, beta, gamma = make_layer(transposed, cin, cout, ks, act)
    ref = reference(x, w, b, transposed=transposed, stride=stride, pad=pad, act=act, beta=beta, gamma=gamma)
    y = run_fused(x, w, b, beta, gamma, transposed, stride, pad, act, dtype)
    assert y.shape == ref.shape and y.dtype == torch.float32
    assert bool(torch.isfinite(y).all())
    assert rel(y.cpu(), ref) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("transposed,cin,cout,act", [(False, 24, 40, "gdn"), (True, 20, 48, "igdn"),
                                                     (True, 16, 3, "none")])
def test_16bit_layers_round_like_the_storage_model(transposed, cin, cout, act, dtype):
    """Tighter than the float64 bounds: the kernels' 16-bit results are their rounding model's
    (``reference(storage=dtype)``) up to fp32 summation order, so a rounding that differs from the
    GPU's (Triton's interpreter truncates fp32 -> bf16, a biased error twice as large) fails here."""
    x = torch.randn(random.choice([1, 2]), cin, random.randint(4, 7), random.randint(4, 8), dtype=torch.float64)
    w, b, beta, gamma = make_layer(transposed, cin, cout, 5, act)
    y = run_nhwc(x, w, b, beta, gamma, transposed, act, dtype, splits=1)
    assert y.dtype == dtype
    model = reference(x, w, b, transposed=transposed, stride=2, pad=2, act=act, beta=beta, gamma=gamma,
                      storage=dtype).float().to(dtype).double()
    diff = (y.double() - model).abs()
    # fp32 summation order may push a value across a rounding boundary (of the output, or of GDN's x^2
    # operand, which moves the output by up to about an ulp): rarely (at most 1.25 % of values, 500 runs
    # per layer) and by at most 1.05 units of eps * max(|value|, rms) (300 runs; near-zero values carry
    # the conv's cancellation error, so their scale is the tensor's). Truncation changes ~50 % of them.
    scale = torch.maximum(model.abs(), model.pow(2).mean().sqrt())
    assert bool((diff <= 3 * torch.finfo(dtype).eps * scale).all())
    assert float((diff > 0).double().mean()) <= 0.1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_emulated_transform_is_the_kernels_rounding_model(dtype):
    """FusedSequential(emulate=True) (PyTorch, any device) gives what the kernels give for a whole
    transform, and both differ from the fp32 path by the 16-bit storage error."""
    torch.manual_seed(random.randint(0, 2**31))
    model = build_model("bmshj2018-hyperprior", 16, 24).eval()
    y = torch.round(4 * torch.randn(1, 24, 4, 6))  # a 64 x 96 image through g_s's 4 deconv layers
    with torch.no_grad():
        ref = model.g_s(y)
        kernels = FusedSequential(*model.g_s, dtype=dtype).to(DEVICE)(y.to(DEVICE)).cpu()
        emulated = FusedSequential(*model.g_s, dtype=dtype, emulate=True)(y)
    # Rare one-ulp flips (fp32 summation order) compound through the layers: measured up to 1.8e-4
    # (bf16) against a storage error of 3e-3 or more, and 2.7e-5 (fp16) against 4.8e-4 or more, on
    # 8 x 8 latents; on these 4 x 6 (~40 % of the interpreter's time), seeds 0..3, the storage error
    # stayed >= 20x the flips' (fp16: flips up to 2.6e-5 against >= 4.4e-4; bf16: 1.2e-4 against 3.0e-3).
    assert rel(emulated, kernels) <= rel(emulated, ref) / 4 and rel(emulated, ref) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("transposed,cin,cout,act,splits", [(False, 24, 40, "gdn", 3), (True, 20, 48, "igdn", 2),
                                                            (False, 16, 20, "leaky_relu", 4), (True, 12, 3, "none", 5)])
def test_split_k_matches_float64_and_the_single_pass(transposed, cin, cout, act, splits, dtype):
    """The small-layer path: reduction slices summed by a second kernel, then the same epilogue."""
    x = torch.randn(random.choice([1, 2]), cin, random.randint(4, 7), random.randint(4, 8), dtype=torch.float64)
    w, b, beta, gamma = make_layer(transposed, cin, cout, 5, act)
    ref = reference(x, w, b, transposed=transposed, stride=2, pad=2, act=act, beta=beta, gamma=gamma)
    outs = [run_nhwc(x, w, b, beta, gamma, transposed, act, dtype, splits=n, out_dtype=torch.float32)
            for n in (1, splits)]
    assert rel(outs[1], ref) <= TOL[dtype] and rel(outs[1], outs[0]) <= TOL[dtype]


@pytest.mark.parametrize("transposed,act", [(False, "gdn"), (True, "igdn"), (False, "leaky_relu"), (True, "relu"),
                                            (False, "none")])
def test_layer_backward_matches_float64(transposed, act):
    """Gradients of the fused layer (x, weight, bias and GDN's parameters) against autograd through
    a float64 copy of the PyTorch layers a model is built from (lickd.layers conv/deconv, GDN,
    nn.ReLU/LeakyReLU), which share no code with ``reference``, the kernels' own definition."""
    from lickd.layers import conv, deconv

    cin, cout = 12, 20
    x = torch.randn(1, cin, 6, 7, dtype=torch.float64)
    w, b, _, _ = make_layer(transposed, cin, cout, 5, act)
    gdn = random_gdn(cout, act == "igdn") if act in ("gdn", "igdn") else None

    def copy_of_gdn(dtype):
        g = GDN(cout, inverse=act == "igdn").to(dtype)
        g.load_state_dict(gdn.state_dict())
        return g

    # the layer under test: the fused kernel in fp32, its backward through FusedConvActFunction
    xs, ws, bs = (t.detach().float().requires_grad_(True) for t in (x, w, b))
    g32 = copy_of_gdn(torch.float32) if gdn is not None else None
    beta, gamma = g32.effective_params() if g32 is not None else (None, None)
    y = run_fused(xs, ws, bs, beta, gamma, transposed, 2, 2, act, torch.float32).cpu()
    weight = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape)
    got = torch.autograd.grad((y * weight.float()).sum(), [xs, ws, bs, *([g32.beta, g32.gamma] if g32 else [])])

    # the independent reference: the model's own layers in float64
    layer = (deconv if transposed else conv)(cin, cout).double()
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    g64 = copy_of_gdn(torch.float64) if gdn is not None else None
    activation = {"gdn": g64, "igdn": g64, "relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(0.01),
                  "none": nn.Identity()}[act]
    x64 = x.clone().requires_grad_(True)
    y64 = activation(layer(x64))
    assert y64.shape == y.shape
    want = torch.autograd.grad((y64 * weight).sum(),
                               [x64, layer.weight, layer.bias, *([g64.beta, g64.gamma] if g64 else [])])

    assert rel(y.detach(), y64.detach()) <= TOL[torch.float32]
    for name, a, b_ in zip(["x", "weight", "bias", "beta", "gamma"], got, want):
        assert a.shape == b_.shape, name
        assert rel(a, b_) <= 1e-4, name


@pytest.mark.parametrize("arch", ["bmshj2018-factorized", "mbt2018-mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_accelerated_transforms_match_reference_and_keep_state_dict(arch, dtype):
    torch.manual_seed(0)
    model = build_model(arch, 16, 20).eval()
    keys = list(model.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref_y = model.g_a.double()(x.double())
        ref_x = model.g_s.double()(ref_y)
    model.float()
    accelerate(model, dtype=dtype, hyper=True)
    assert isinstance(model.g_a, FusedSequential) and isinstance(getattr(model, "h_s", model.g_s), FusedSequential)
    assert list(model.state_dict()) == keys
    assert [s[0] for s in model.g_a.plan()] == ["fused"] * 4  # 3 conv+GDN pairs and the last conv
    model.to(DEVICE)
    with torch.no_grad():
        y = model.g_a(x.to(DEVICE))
        x_hat = model.g_s(ref_y.float().to(DEVICE))
    bound = 1e-2 if dtype == torch.bfloat16 else (2e-3 if GPU else 1e-5)
    assert rel(y.cpu(), ref_y) <= bound and rel(x_hat.cpu(), ref_x) <= bound


def test_compressai_model_accelerates_in_place():
    cai = pytest.importorskip("compressai.models")
    torch.manual_seed(0)
    model = cai.ScaleHyperprior(16, 20).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model.g_a(x)
    accelerate(model, dtype=torch.float32)
    with torch.no_grad():
        assert rel(model.to(DEVICE).g_a(x.to(DEVICE)).cpu(), ref) <= (2e-3 if GPU else 1e-5)


def test_wide_layers_fuse_as_two_channel_blocks_and_fp32_gdn_beyond_128_stays_in_pytorch():
    # bf16: conv+GDN at 192 channels runs as 128 + 64 blocks, the last conv (320) as 256 + 64.
    model = accelerate(build_model("mbt2018-mean", 192, 320), dtype=torch.bfloat16)
    assert [step[0] for step in model.g_a.plan()] == ["fused"] * 4
    # fp32 operands of the 192-wide gamma product would spill: those layers stay in PyTorch.
    model = accelerate(build_model("mbt2018-mean", 192, 320), dtype=torch.float32)
    assert [step[0] for step in model.g_a.plan()] == ["layer"] * 6 + ["fused"]
    small = accelerate(build_model("mbt2018-mean", 128, 192), dtype=torch.float32)
    assert [step[0] for step in small.g_a.plan()] == ["fused"] * 4


@pytest.mark.parametrize("c,blocks", [(3, (16, 0)), (16, (16, 0)), (24, (32, 0)), (40, (32, 16)), (96, (64, 32)),
                                      (112, (128, 0)), (128, (128, 0)), (192, (128, 64)), (288, (256, 64)),
                                      (320, (256, 64)), (384, (256, 128)), (480, (512, 0))])
def test_channel_blocks(c, blocks):
    from lickd.kernels.ops import channel_blocks
    assert channel_blocks(c) == blocks and sum(blocks) >= c


def test_disabled_or_unsupported_layers_fall_back_exactly():
    seq = nn.Sequential(nn.Conv2d(4, 16, 3, stride=1, padding=1, dilation=1, groups=2), nn.ReLU(),
                        nn.Conv2d(16, 16, 5, stride=2, padding=2), nn.Tanh())
    fused = FusedSequential.from_sequential(seq, dtype=torch.float32)
    steps = fused.plan()
    assert steps[0] == ("layer", 0) and steps[2][0] == "fused" and steps[2][3] == "none" and steps[3] == ("layer", 3)
    x = torch.randn(1, 4, 8, 8)
    fused.enabled = False
    assert torch.equal(fused(x), seq(x))


def test_training_step_through_fused_layers_updates_every_parameter():
    torch.manual_seed(0)
    model = accelerate(build_model("bmshj2018-hyperprior", 16, 20), dtype=torch.float32).to(DEVICE).train()
    x = torch.rand(2, 3, 64, 64, device=DEVICE)
    out = model(x)
    loss = out["x_hat"].sub(x).square().mean() + sum(v.log().sum() for v in out["likelihoods"].values()) * -1e-4
    loss.backward()
    for name, p in model.named_parameters():
        if not name.endswith("quantiles"):
            assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name


def test_every_fused_layer_of_the_zoo_sizes_compiles_for_h100_without_spills(tmp_path):
    """Ahead-of-time compilation for sm_90 (no GPU needed; in a process without the interpreter):
    a layer the plan fuses must not spill registers to local memory nor ask for more shared
    memory than an H100 SM has."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "lickd.kernels.resources", "--check", "--arch", "90"], env=env,
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    if r.returncode == 3 and "cannot check" in r.stdout:
        pytest.skip(r.stdout.strip())
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "layer(s) over the limits" in r.stdout and ", 0 layer(s) over" in r.stdout and r.stdout.count("\n") > 40


def test_autotuner_picks_the_fastest_config_caches_it_and_reads_it_back(tmp_path):
    """The tuned launch (here the fake timer makes 32 pixels x 4 warps fastest) still computes the
    layer; the choice lands in the cache under this device and Triton version, and a new process
    (a new Autotuner on the same file) launches it without timing anything."""
    from lickd.kernels import autotune
    from lickd.kernels.ops import conv_act_nhwc
    cache = tmp_path / "autotune.json"
    timed = []

    def fake_timer(run, cfg):
        run()
        timed.append(cfg)
        return 1.0 if (cfg.block_m, cfg.warps) == (32, 4) else 2.0 + cfg.block_m / 64

    x = torch.randn(1, 24, random.randint(5, 8), random.randint(5, 9), dtype=torch.float64)
    w, b, beta, gamma = make_layer(False, 24, 40, 5, "gdn")
    ref = reference(x, w, b, transposed=False, stride=2, pad=2, act="gdn", beta=beta, gamma=gamma)
    packed = pack_conv_weight(w.to(DEVICE), torch.float32)
    gdn = pack_gdn(beta.to(DEVICE), gamma.to(DEVICE), torch.float32)
    x_nhwc = x.to(DEVICE, torch.float32).permute(0, 2, 3, 1).contiguous()

    def layer():
        return conv_act_nhwc(x_nhwc, packed, b.to(DEVICE), 40, 5, 2, 2, "gdn", gdn).permute(0, 3, 1, 2).cpu()

    try:
        autotune.enable_autotune(cache, timer=fake_timer)
        assert rel(layer(), ref) <= TOL[torch.float32]
        assert {(c.block_m, c.warps) for c in timed} == {(64, 8), (64, 4), (32, 8), (32, 4)}
        doc = json.loads(cache.read_text())
        (device, shapes), = doc["devices"].items()
        assert device == autotune.device_key(torch.device(DEVICE)) and triton.__version__ in device
        (key, entry), = shapes.items()
        assert "conv5/s2/p2" in key and "->40 gdn float32" in key
        assert (entry["block_m"], entry["warps"]) == (32, 4)

        def no_timing(run, cfg):
            raise AssertionError("a cached shape must not be timed again")

        autotune.enable_autotune(cache, timer=no_timing)
        assert rel(layer(), ref) <= TOL[torch.float32]
    finally:
        autotune.disable_autotune()


def test_autotuner_skips_spilling_candidates_and_survives_a_damaged_cache(tmp_path):
    from lickd.kernels.autotune import Autotuner, Config
    cache = tmp_path / "autotune.json"
    cache.write_text('{"version": 1, "devices": {"x": {"k": {"block_m": "not a number"}}}}')
    with pytest.warns(UserWarning, match="ignoring the autotune cache"):
        tuner = Autotuner(cache, timer=lambda run, cfg: float(cfg.block_m))  # smaller = faster

    class Compiled:
        def __init__(self, spills):
            self.n_spills = spills

    fast_but_spills, slow = Config(16, 4, 1), Config(64, 8, 1)
    launch = lambda cfg: [Compiled(64 if cfg == fast_but_spills else 0)]  # noqa: E731
    assert tuner.choose(torch.device("cpu"), "layer", [slow, fast_but_spills], launch) == slow
    assert Autotuner(cache).cached(torch.device("cpu"), "layer") == slow
    with pytest.raises(RuntimeError, match="spills"):
        tuner.choose(torch.device("cpu"), "other", [fast_but_spills], launch)
