"""Variable-rate models: gain units, fractional qualities in the codec and the file, training
with a quality per crop."""
import dataclasses
import json
import math
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from lickd import CorruptFileError, LickdError, StudentCodec, container, zoo
from lickd.codec import CPU_LAYOUT
from lickd.models import MSE_LAMBDAS, build_model, check_quality, quality_lambda
from lickd.train.losses import RateDistortionLoss

from test_codec import random_image

VR = ["mbt2018-mean-vr", "bmshj2018-hyperprior-vr"]


def make_vr(arch="mbt2018-mean-vr", seed=0):
    torch.manual_seed(seed)
    model = build_model(arch, 12, 20)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 4:
                p.mul_(1 + 0.2 * torch.randn_like(p))
        model.g_a[-1].weight.mul_(20)  # latents of a few units, as a trained model's, not all zeros
    model.eval().update(force=True)
    return model


def vr_codec(arch="mbt2018-mean-vr"):
    model = make_vr(arch)
    info = zoo.ModelInfo(name="test-vr", architecture=arch, N=model.N, M=model.M, quality=3)
    return StudentCodec(model, info, device="cpu")


def test_lambda_and_gains_interpolate_log_linearly():
    assert [float(quality_lambda(q)) for q in range(1, 9)] == pytest.approx(MSE_LAMBDAS)
    assert float(quality_lambda(2.5)) == pytest.approx(math.sqrt(MSE_LAMBDAS[1] * MSE_LAMBDAS[2]))
    model = make_vr()
    units = model.gain_units
    with torch.no_grad():
        units.log_gain.normal_()
    g3, g4, g35 = (units.gain(q, 1)[0, :, 0, 0].double() for q in (3, 4, 3.5))
    assert torch.allclose(g35, (g3 * g4).sqrt(), rtol=1e-5)
    # the integer levels are the table itself; one quality per image picks per row
    per_image = units.gain(torch.tensor([1.0, 8.0]), 2)[:, :, 0, 0]
    assert torch.allclose(per_image[0], units.log_gain[0].exp()) and torch.allclose(per_image[1], units.log_gain[7].exp())
    for bad in (0.5, 8.01, float("nan")):
        with pytest.raises(ValueError):
            check_quality(bad)
    with pytest.raises(ValueError, match="needs a quality"):
        model(torch.rand(1, 3, 64, 64))


@pytest.mark.parametrize("arch", VR)
def test_one_model_codes_every_quality_and_the_file_records_it(arch, rng):
    codec = vr_codec(arch)
    img = random_image(70, 90, rng)
    sizes, errors = [], []
    for q in (1, 2.5, 3, 3.3, 8):
        data = codec.compress(img, quality=q)
        f = container.parse(data)
        assert f.quality == pytest.approx(q, rel=1e-7) and f.quality == check_quality(q)
        assert f.lmbda == pytest.approx(float(quality_lambda(q)), rel=1e-6)
        out = codec.decompress(data, output="numpy")
        assert out.shape == img.shape
        sizes.append(len(data))
        errors.append(np.mean((out.astype(float) - img) ** 2))
        # the decoder used the file's quality: the reconstruction is g_s(y_hat * inverse gain(q))
        _, latents = codec.decode_latents(data)
        with torch.no_grad():  # in the memory format the codec decodes in (its CPU layers choose by it)
            y_hat = latents["y"].contiguous(memory_format=CPU_LAYOUT)
            ref = codec.model.synthesis(y_hat, f.quality).clamp(0, 1)[0, :, :70, :90]
        assert torch.equal(codec.decompress(data, output="tensor"), torch.round(ref * 255) / 255)
    assert sizes[0] < sizes[-1]  # finer steps at quality 8: more bytes (gains start at 1/sqrt(lambda))
    assert codec.compress(img) == codec.compress(img, quality=3)  # the default quality


def test_integer_quality_keeps_the_version_1_field_and_fractions_use_their_own(rng):
    codec = vr_codec()
    img = random_image(64, 64, rng)
    whole, half = (container.parse(codec.compress(img, quality=q)) for q in (4, 4.5))
    assert whole.quality == 4 and isinstance(whole.quality, int)
    header = half.header_bytes()
    assert container._FRACTIONAL_QUALITY in header and half.quality == 4.5
    # a file that states its quality twice (both fields) is corrupt
    twice = header + bytes([6, 1, 4])
    payload = half.to_bytes()[container._PREFIX.size + len(header) + container._CRC.size:]
    data = (container._PREFIX.pack(container.MAGIC, container.FORMAT_VERSION, 0, len(twice)) + twice
            + container._CRC.pack(zlib.crc32(twice)) + payload)
    with pytest.raises(CorruptFileError, match="twice"):
        container.parse(data)


def test_variable_rate_file_without_a_quality_is_refused(rng):
    codec = vr_codec()
    f = container.parse(codec.compress(random_image(64, 64, rng), quality=2))
    f.quality = None
    with pytest.raises(CorruptFileError, match="no quality"):
        codec.decompress(f.to_bytes())
    f.quality = 9.5
    with pytest.raises(CorruptFileError, match="quality"):
        codec.decompress(f.to_bytes())


def test_fixed_rate_model_refuses_another_quality(weights_files, rng):
    codec = StudentCodec.from_file(weights_files["mbt2018-mean"], device="cpu")
    img = random_image(64, 64, rng)
    assert codec.compress(img, quality=3) == codec.compress(img)  # its own quality
    with pytest.raises(LickdError, match="one rate only"):
        codec.compress(img, quality=5)


def test_per_image_lambda_loss_is_the_mean_of_each_images_rd_loss(rng):
    torch.manual_seed(int(rng.integers(1 << 31)))
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    x_hat = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    lik = {"y": torch.rand(3, 4, 2, 2, dtype=torch.float64).clamp_min(1e-3)}
    lam = torch.tensor([0.0018, 0.025, 0.18], dtype=torch.float64)
    terms = RateDistortionLoss(0.0067)({"x_hat": x_hat, "likelihoods": lik}, x, lmbda=lam)
    per_image = [float(lam[i]) * 255**2 * float(((x_hat[i] - x[i]) ** 2).mean())
                 - float(torch.log2(lik["y"][i]).sum()) / 256 for i in range(3)]
    assert float(terms["rd"]) == pytest.approx(np.mean(per_image), rel=1e-5)


def test_a_narrowed_range_travels_in_the_weights_and_the_codec_refuses_the_rest(tmp_path, rng):
    """A variable-rate model shipped for qualities 2..4 only (where it was measured to beat JPEG):
    the range is in the file's metadata, the default quality moves inside it, other qualities
    are refused by the codec and the command line, and the range's qualities code as before."""
    from lickd.cli import main
    model = make_vr()
    info = zoo.ModelInfo(name="narrow", architecture="mbt2018-mean-vr", N=model.N, M=model.M, quality=1,
                         qualities=(2, 4))
    path = zoo.save_weights(model, tmp_path / "narrow.safetensors", info).path
    wide = zoo.save_weights(model, tmp_path / "wide.safetensors", dataclasses.replace(info, qualities=None)).path
    codec, whole = StudentCodec.from_file(path, device="cpu"), StudentCodec.from_file(wide, device="cpu")
    assert codec.info.qualities == (2.0, 4.0) and whole.info.qualities is None
    assert codec.quality == 2  # its default (1) clamped into the range
    img = random_image(64, 80, rng)
    for q in (2, 3.5, 4):
        assert container.parse(codec.compress(img, quality=q)).sections == \
            container.parse(whole.compress(img, quality=q)).sections
    for q in (1, 4.5, 8):
        with pytest.raises(LickdError, match=r"offers qualities 2\.\.4"):
            codec.compress(img, quality=q)
    with pytest.raises(LickdError, match="offers"):
        StudentCodec(model, codec.info, device="cpu", quality=5)
    assert whole.compress(img, quality=8)
    src = tmp_path / "in.png"
    Image.fromarray(img).save(src)
    assert main(["encode", str(src), "--weights", str(path), "-q", "6", "-o", str(tmp_path / "a.lkd")]) == 2
    assert not (tmp_path / "a.lkd").exists()
    for bad in ([4, 2], [0.5, 3], [1, 9], ["x"]):
        meta = {**info.metadata(), "qualities": json.dumps(bad)}
        with pytest.raises(CorruptFileError, match="malformed weights metadata"):
            zoo.ModelInfo.from_metadata(meta)


def test_the_registry_picks_a_variable_rate_model_by_the_range_it_offers(monkeypatch, tmp_path):
    low = zoo.ModelInfo(name="low", architecture="mbt2018-mean-vr", N=8, M=8, qualities=(1, 4), default=True)
    high = zoo.ModelInfo(name="high", architecture="mbt2018-mean-vr", N=8, M=8, qualities=(4.5, 8))
    monkeypatch.setattr(zoo, "registry", lambda: [low, high])
    assert zoo.find_quality(3).name == "low" and zoo.find_quality(4).name == "low"
    assert zoo.find_quality(6.5).name == "high"
    monkeypatch.setattr(zoo, "registry", lambda: [low])
    assert zoo.find_quality(7).name == "low"  # the only one: its codec says what it offers
    assert low.offers(1) and low.offers(4) and not low.offers(4.01)
    assert zoo.ModelInfo(name="all", architecture="mbt2018-mean-vr", N=8, M=8).offers(8)


def test_narrowed_copy_keeps_the_tensors_and_the_registry_reads_its_range(monkeypatch, tmp_path):
    from safetensors.torch import load_file
    model = make_vr()
    info = zoo.ModelInfo(name="vr", architecture="mbt2018-mean-vr", N=model.N, M=model.M, quality=3)
    (tmp_path / "weights").mkdir()
    wide = zoo.save_weights(model, tmp_path / "weights" / "vr.safetensors", info, half=True)
    narrow = zoo.narrow_qualities(wide.path, tmp_path / "weights" / "narrow.safetensors", (1, 5))
    a, b = load_file(str(wide.path)), load_file(str(narrow.path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert narrow.qualities == (1.0, 5.0) and narrow.sha256 != wide.sha256
    assert zoo.load_weights(narrow.path)[1].qualities == (1.0, 5.0)
    fixed = zoo.save_weights(build_model("mbt2018-mean", 8, 8), tmp_path / "f.safetensors",
                             zoo.ModelInfo(name="f", architecture="", N=0, M=0, quality=3))
    with pytest.raises(ValueError, match="variable-rate"):
        zoo.narrow_qualities(fixed.path, tmp_path / "g.safetensors", (1, 5))
    entry = {"name": "narrow", "file": "narrow.safetensors", "sha256": narrow.sha256,
             "architecture": "mbt2018-mean-vr", "N": model.N, "M": model.M, "quality": 3, "qualities": [1, 5]}
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path)
    monkeypatch.setattr(zoo, "REGISTRY_PATH", tmp_path / "registry.json")
    (tmp_path / "registry.json").write_text(json.dumps({"models": [entry]}))
    assert zoo.registry()[0].qualities == (1.0, 5.0)
    assert StudentCodec.from_pretrained(4.5, device="cpu").quality == 4.5
    with pytest.raises(LickdError, match=r"offers qualities 1\.\.5"):
        StudentCodec.from_pretrained(6, device="cpu")
    for bad in ([], [5, 1], "1-5", [1, 9]):
        (tmp_path / "registry.json").write_text(json.dumps({"models": [{**entry, "qualities": bad}]}))
        with pytest.raises(CorruptFileError, match="malformed entry 'narrow'"):
            zoo.registry()


def test_eval_of_a_narrowed_model_measures_the_qualities_it_offers(tmp_path, capsys, rng):
    from lickd.cli import main
    model = make_vr()
    path = zoo.save_weights(model, tmp_path / "n.safetensors", zoo.ModelInfo(
        name="n", architecture="mbt2018-mean-vr", N=model.N, M=model.M, quality=3, qualities=(2, 4))).path
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(random_image(64, 64, rng)).save(folder / "a.png")
    out = tmp_path / "eval.json"
    assert main(["eval", str(folder), "--weights", str(path), "--device", "cpu", "-o", str(out), "--quiet"]) == 0
    doc = json.loads(out.read_text())
    assert doc["results"]["quality"] == [2, 3, 4] and "qualities 2..4" in doc["description"]
    assert main(["eval", str(folder), "--weights", str(path), "--device", "cpu", "-q", "7", "-o",
                 str(tmp_path / "x.json"), "--quiet"]) == 2
    assert "offers qualities 2..4" in capsys.readouterr().err
