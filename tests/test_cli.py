"""The lickd command line: round trip, info, JSON keys, overwrite refusal, exit codes, errors."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lickd.cli import main


@pytest.fixture
def image_file(tmp_path):
    rng = np.random.default_rng()
    arr = np.clip(rng.normal(128, 40, (45, 70, 3)), 0, 255).astype(np.uint8)
    path = tmp_path / "in.png"
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def weights(weights_files):
    return str(weights_files["mbt2018-mean"])


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_encode_decode_info_round_trip(capsys, tmp_path, image_file, weights):
    lkd, png = tmp_path / "k.lkd", tmp_path / "k.png"
    code, out, err = run(capsys, "encode", image_file, "-o", lkd, "--weights", weights)
    assert code == 0 and out == ""
    assert err.count("\n") == 1 and "70x45" in err and "bytes" in err and "bpp" in err and "test-mbt2018-mean" in err
    code, out, err = run(capsys, "decode", lkd, "-o", png, "--weights", weights)
    assert code == 0
    assert Image.open(png).size == (70, 45)
    code, out, err = run(capsys, "info", lkd)
    assert code == 0 and "70x45" in out and "mbt2018-mean" in out and "rans1b+x1" in out
    code, out, err = run(capsys, "info", lkd, "--json")
    info = json.loads(out)
    assert info["size"] == [45, 70] and info["file_bytes"] == lkd.stat().st_size
    assert [lat["name"] for lat in info["latents"]] == ["y", "z"]


def test_default_output_names(capsys, tmp_path, image_file, weights):
    assert run(capsys, "encode", image_file, "--weights", weights)[0] == 0
    assert (tmp_path / "in.lkd").is_file()
    (image_file).unlink()
    assert run(capsys, "decode", tmp_path / "in.lkd", "--weights", weights)[0] == 0
    assert (tmp_path / "in.png").is_file()


def test_json_output_has_compressai_keys(capsys, tmp_path, image_file, weights):
    lkd = tmp_path / "k.lkd"
    code, out, err = run(capsys, "encode", image_file, "-o", lkd, "--weights", weights, "--json", "--psnr")
    assert code == 0 and err == ""
    rec = json.loads(out)
    for key in ("bpp", "psnr-rgb", "encoding_time", "decoding_time", "bytes", "model", "device"):
        assert key in rec, key
    assert rec["bytes"] == lkd.stat().st_size
    assert rec["bpp"] == pytest.approx(8 * rec["bytes"] / (45 * 70))
    code, out, err = run(capsys, "decode", lkd, "-o", tmp_path / "o.png", "--weights", weights, "--json",
                         "--ref", image_file)
    rec2 = json.loads(out)
    assert {"bpp", "psnr-rgb", "decoding_time", "bytes", "model", "device"} <= set(rec2)
    assert rec2["psnr-rgb"] == pytest.approx(rec["psnr-rgb"], abs=1e-9)


def test_refuses_to_overwrite_without_force(capsys, tmp_path, image_file, weights):
    lkd = tmp_path / "k.lkd"
    lkd.write_bytes(b"keep me")
    code, out, err = run(capsys, "encode", image_file, "-o", lkd, "--weights", weights)
    assert code == 1 and "exists" in err and str(lkd) in err
    assert lkd.read_bytes() == b"keep me"
    assert run(capsys, "encode", image_file, "-o", lkd, "--weights", weights, "-f")[0] == 0
    assert lkd.read_bytes()[:4] == b"\x8bLKD"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp files left


@pytest.mark.parametrize("case", ["missing", "corrupt", "truncated", "not_image", "no_weights", "bad_weights"])
def test_errors_are_one_line_with_the_file_and_nonzero_exit(capsys, tmp_path, image_file, weights, case):
    lkd = tmp_path / "k.lkd"
    assert run(capsys, "encode", image_file, "-o", lkd, "--weights", weights)[0] == 0
    data = lkd.read_bytes()
    if case == "missing":
        argv, name = ["decode", tmp_path / "nope.lkd", "--weights", weights], "nope.lkd"
    elif case == "corrupt":
        bad = bytearray(data)
        bad[len(bad) // 2] ^= 0x40
        lkd.write_bytes(bytes(bad))
        argv, name = ["decode", lkd, "-o", tmp_path / "x.png", "--weights", weights], "k.lkd"
    elif case == "truncated":
        lkd.write_bytes(data[:-7])
        argv, name = ["info", lkd], "k.lkd"
    elif case == "not_image":
        txt = tmp_path / "notes.txt"
        txt.write_text("hello")
        argv, name = ["encode", txt, "-o", tmp_path / "n.lkd", "--weights", weights], "notes.txt"
    elif case == "no_weights":  # the file names a model that is not registered
        argv, name = ["decode", lkd, "-o", tmp_path / "x.png"], "not found"
    else:
        junk = tmp_path / "junk.safetensors"
        junk.write_bytes(b"\x00" * 100)
        argv, name = ["encode", image_file, "-o", tmp_path / "j.lkd", "--weights", junk], "junk.safetensors"
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert err.startswith("lickd: error:") and err.count("\n") == 1 and name in err
    assert "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_models_lists_registry_or_says_it_is_empty(capsys):
    code, out, err = run(capsys, "models")
    assert code == 0
    assert "registry is empty" in err or out.strip()
    code, out, _ = run(capsys, "models", "--json")
    assert isinstance(json.loads(out), list)


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["encode"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["encode", "x.png", "-q", "9"])
    assert e.value.code == 2


def test_console_script_end_to_end(tmp_path, image_file, weights):
    exe = shutil.which("lickd") or shutil.which("lickd", path=str(__import__("pathlib").Path(sys.executable).parent))
    if exe is None:
        pytest.skip("lickd console script not on PATH")
    lkd = tmp_path / "c.lkd"
    r = subprocess.run([exe, "encode", str(image_file), "-o", str(lkd), "--weights", weights, "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bytes"] == lkd.stat().st_size
    r = subprocess.run([exe, "decode", str(lkd), "-o", str(tmp_path / "c.png")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "not found" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("wrap", ["plain", "training"])
def test_convert_compressai_checkpoint_and_code_like_compressai(capsys, tmp_path, image_file, wrap):
    import torch
    compressai_models = pytest.importorskip("compressai.models")
    torch.manual_seed(0)
    ref = compressai_models.MeanScaleHyperprior(16, 24).eval()
    if wrap == "plain":  # a zoo-style file: tables included (16-bit)
        ref.update(force=True)
        ckpt = ref.state_dict()
    else:  # a training checkpoint: wrapped, DataParallel prefix, no tables
        ckpt = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}
    src = tmp_path / "ckpt.pth.tar"
    torch.save(ckpt, src)
    out = tmp_path / "conv.safetensors"
    code, _, err = run(capsys, "convert", src, "-o", out, "-q", "2")
    assert code == 0, err
    from lickd import StudentCodec
    codec = StudentCodec.from_file(out, device="cpu")
    assert codec.info.architecture == "mbt2018-mean" and codec.info.lmbda == 0.0035
    x = torch.from_numpy(np.array(Image.open(image_file))).permute(2, 0, 1)[None].float() / 255
    ref.update(force=False)
    with torch.no_grad():
        x_pad = torch.nn.functional.pad(x, (0, 128 - 70, 0, 64 - 45), mode="replicate")
        enc = ref.compress(x_pad)
        ref_hat = ref.decompress(enc["strings"], enc["shape"])["x_hat"][..., :45, :70]
    ours = codec.decompress(codec.compress(Image.open(image_file)), output="tensor")
    assert torch.equal(ours, torch.round(ref_hat[0] * 255) / 255)
    assert run(capsys, "convert", tmp_path / "in.png", "-o", tmp_path / "x.safetensors")[0] == 1


def test_decode_to_other_formats_and_unknown_suffix(capsys, tmp_path, image_file, weights):
    lkd = tmp_path / "k.lkd"
    assert run(capsys, "encode", image_file, "-o", lkd, "--weights", weights)[0] == 0
    for suffix, fmt in ((".jpg", "JPEG"), (".bmp", "BMP"), (".webp", "WEBP")):
        assert run(capsys, "decode", lkd, "-o", tmp_path / f"o{suffix}", "--weights", weights)[0] == 0
        assert Image.open(tmp_path / f"o{suffix}").format == fmt
    code, _, err = run(capsys, "decode", lkd, "-o", tmp_path / "o.xyz", "--weights", weights)
    assert code == 1 and "unknown image format" in err and not (tmp_path / "o.xyz").exists()


def test_cuda_request_without_a_gpu_is_a_clear_error(capsys, tmp_path, image_file, weights):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, err = run(capsys, "encode", image_file, "-o", tmp_path / "k.lkd", "--weights", weights, "--device", "cuda")
    assert code == 1 and "CUDA" in err and err.count("\n") == 1
