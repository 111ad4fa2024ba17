"""The lickd command line: round trip, info, JSON keys, overwrite refusal, exit codes, errors."""
import json
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lickd import zoo
from lickd.cli import main


@pytest.fixture
def image_file(tmp_path, rng):
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
    assert code == 0 and "70x45" in out and "mbt2018-mean" in out and "rans1b+x2" in out
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


def test_models_lists_registry_or_says_it_is_empty(capsys, monkeypatch, tmp_path, weights_files):
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path)
    monkeypatch.setattr(zoo, "REGISTRY_PATH", tmp_path / "registry.json")
    (tmp_path / "registry.json").write_text(json.dumps({"models": []}))
    code, out, err = run(capsys, "models")
    assert code == 0 and out == "" and "registry is empty" in err
    code, out, _ = run(capsys, "models", "--json")
    assert json.loads(out) == []
    (tmp_path / "weights").mkdir()
    src = weights_files["mbt2018-mean"]
    shutil.copyfile(src, tmp_path / "weights" / "m.safetensors")
    entry = {"name": "student-x", "file": "m.safetensors", "sha256": zoo.file_sha256(src),
             "architecture": "mbt2018-mean", "N": 12, "M": 20, "quality": 3, "lambda": 0.0067, "default": True,
             "measured": {"kodak": {"quality": [3], "bpp": [0.4123], "psnr-rgb": [30.5]}, "parameters": 123456,
                          "cpu": {"name": "some CPU", "threads": 2, "quality": 3, "encode_ms": 50.0, "decode_ms": 60.0}}}
    (tmp_path / "registry.json").write_text(json.dumps({"models": [entry]}))
    code, out, err = run(capsys, "models")
    assert code == 0 and err == ""
    assert f"student-x@{entry['sha256'][:16]}  (default)" in out
    assert "q3 0.412 bpp 30.50 dB" in out and "encode 50.0 ms, decode 60.0 ms" in out and "0.12 M parameters" in out
    code, out, _ = run(capsys, "models", "--json")
    listed = json.loads(out)
    assert [e["name"] for e in listed] == ["student-x"] and listed[0]["measured"]["kodak"]["bpp"] == [0.4123]


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
    # in fp16 too it keeps CompressAI's 64-entry scale table (not lickd's export table)
    assert run(capsys, "convert", src, "-o", tmp_path / "half.safetensors", "-q", "2", "--half")[0] == 0
    half = StudentCodec.from_file(tmp_path / "half.safetensors", device="cpu")
    assert torch.equal(half.model.gaussian_conditional.scale_table, ref.gaussian_conditional.scale_table)
    assert half.model.gaussian_conditional._quantized_cdf.size(0) == 64
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


# ---------------------------------------------------------------------------- rough edges a new user hit
@pytest.fixture
def lkd_file(capsys, tmp_path, image_file, weights):
    lkd = tmp_path / "k.lkd"
    assert run(capsys, "encode", image_file, "-o", lkd, "--weights", weights)[0] == 0
    return lkd


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=oct)
def test_outputs_get_the_permissions_the_umask_gives(capsys, tmp_path, image_file, weights, umask):
    """Not mkstemp's 0600: what ``open`` would give, 0o666 less the umask."""
    import torch

    from lickd import zoo
    compressai_models = pytest.importorskip("compressai.models")
    torch.save(compressai_models.FactorizedPrior(8, 12).state_dict(), tmp_path / "ckpt.pth.tar")
    old = os.umask(umask)
    try:
        outputs = [tmp_path / "k.lkd", tmp_path / "k.png", tmp_path / "c.safetensors", tmp_path / "w.safetensors"]
        assert run(capsys, "encode", image_file, "-o", outputs[0], "--weights", weights)[0] == 0
        assert run(capsys, "decode", outputs[0], "-o", outputs[1], "--weights", weights)[0] == 0
        assert run(capsys, "convert", tmp_path / "ckpt.pth.tar", "-o", outputs[2])[0] == 0
        model, info = zoo.load_weights(weights)
        zoo.save_weights(model, outputs[3], info)
    finally:
        os.umask(old)
    for path in outputs:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name


@pytest.mark.parametrize("flags,named", [(["-q", "5", "--weights"], "codes at one rate only"),
                                         (["--model", "m", "--weights"], "--model and --weights"),
                                         (["-q", "2", "--model", "m", "--weights"], "--model and --weights")])
def test_model_choices_beside_weights_are_a_usage_error(capsys, tmp_path, image_file, weights, flags, named):
    """-q and --model used to be ignored beside --weights: the file was the one --weights alone makes.
    Now --model beside --weights is refused, and -q beside fixed-rate weights of another quality."""
    out = tmp_path / "k.lkd"
    code, _, err = run(capsys, "encode", image_file, "-o", out, *flags, weights)
    assert code == 2 and err.count("\n") == 1 and named in err
    assert not out.exists()


def test_quality_beside_variable_rate_weights_sets_the_rate(capsys, tmp_path, image_file):
    from test_variable_rate import make_vr

    from lickd import zoo
    model = make_vr()
    vr = zoo.save_weights(model, tmp_path / "vr.safetensors",
                          zoo.ModelInfo(name="vr", architecture=model.architecture, N=model.N, M=model.M, quality=3)).path
    sizes = {}
    for q in ("1", "3.5", "8"):
        out = tmp_path / f"q{q}.lkd"
        code, _, err = run(capsys, "encode", image_file, "-o", out, "-q", q, "--weights", vr)
        assert code == 0, err
        sizes[q] = out.stat().st_size
        code, text, _ = run(capsys, "info", out)
        assert f"quality={float(q):g}" in text
    assert sizes["1"] < sizes["8"]
    with pytest.raises(SystemExit) as e:  # argparse's own usage error
        run(capsys, "encode", image_file, "-o", tmp_path / "x.lkd", "-q", "9", "--weights", vr)
    assert e.value.code == 2 and "1..8" in capsys.readouterr().err


def test_a_closed_stdout_ends_quietly_with_status_0(tmp_path, lkd_file):
    """``lickd info F | head -1``: the reader goes away before lickd writes; no message, status 0."""
    proc = subprocess.Popen([sys.executable, "-m", "lickd.cli", "info", str(lkd_file)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path)  # outside the checkout: the installed lickd
    proc.stdout.close()  # long before the interpreter has imported torch and printed anything
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and err == b""


def test_a_reader_that_goes_away_stops_the_records_not_the_files(tmp_path, image_file, weights):
    """``lickd encode a b c --json | head -1``: every file is still written, status 0."""
    srcs = []
    for name in "abc":
        srcs.append(tmp_path / f"{name}.png")
        srcs[-1].write_bytes(image_file.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # every record is written at once: the first one breaks
    proc = subprocess.Popen([sys.executable, "-m", "lickd.cli", "encode", *map(str, srcs), "-o", f"{out}/",
                             "--weights", str(weights), "--json", "-j", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=env)
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert sorted(p.name for p in out.iterdir()) == ["a.lkd", "b.lkd", "c.lkd"]


def test_info_accepts_quiet_and_still_checks_the_file(capsys, lkd_file):
    assert run(capsys, "info", lkd_file, "--quiet") == (0, "", "")
    lkd_file.write_bytes(lkd_file.read_bytes()[:-1])
    code, out, err = run(capsys, "info", lkd_file, "--quiet")
    assert code == 1 and out == "" and err.count("\n") == 1


def test_an_empty_registry_points_at_the_weights_flag(capsys, tmp_path, image_file, monkeypatch):
    from lickd import zoo
    monkeypatch.setattr(zoo, "REGISTRY_PATH", tmp_path / "none.json")
    code, _, err = run(capsys, "encode", image_file, "-o", tmp_path / "k.lkd")
    assert code == 1 and "registry is empty" in err and "--weights FILE" in err and "weights=" not in err


def test_a_truncated_file_says_it_is_truncated(capsys, tmp_path, rng, weights):
    img = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(img)
    lkd = tmp_path / "n.lkd"
    assert run(capsys, "encode", img, "-o", lkd, "--weights", weights)[0] == 0
    data = lkd.read_bytes()
    sections_start = 8 + int.from_bytes(data[6:8], "little") + 4
    for cut in (sections_start, sections_start + 10, len(data) - 1):
        lkd.write_bytes(data[:cut])
        for command in (["info", lkd], ["decode", lkd, "-o", tmp_path / "n.png", "--weights", weights]):
            code, _, err = run(capsys, *command)
            assert code == 1 and err.count("\n") == 1
            assert f"truncated: {cut} bytes, the header declares {len(data)}" in err, err
            assert "out of range" not in err and "corrupt" not in err


def test_a_crc_mismatch_says_corrupt_once(capsys, tmp_path, lkd_file, weights):
    bad = bytearray(lkd_file.read_bytes())
    bad[-6] ^= 0x40  # inside the last section
    lkd_file.write_bytes(bytes(bad))
    for command in (["info", lkd_file], ["decode", lkd_file, "-o", tmp_path / "x.png", "--weights", weights]):
        code, _, err = run(capsys, *command)
        assert code == 1 and "CRC mismatch" in err and err.lower().count("corrupt") == 1, err


@pytest.mark.parametrize("command", ["encode", "decode", "info", "convert"])
def test_a_folder_as_input_is_called_a_folder(capsys, tmp_path, weights, command):
    folder = tmp_path / "photos"
    folder.mkdir()
    extra = {"encode": ["--weights", weights], "decode": ["--weights", weights], "info": [],
             "convert": ["-o", tmp_path / "c.safetensors"]}[command]
    code, _, err = run(capsys, command, folder, *extra)
    assert code == 1 and f"{folder}: is a directory" in err and "no such file" not in err


def test_info_leaves_out_fields_the_file_does_not_have(capsys, tmp_path, lkd_file):
    from lickd import container
    f = container.parse(lkd_file.read_bytes())
    f.quality = f.lmbda = None
    bare = tmp_path / "bare.lkd"
    bare.write_bytes(f.to_bytes())
    code, out, _ = run(capsys, "info", bare)
    assert code == 0 and "None" not in out and "quality" not in out and "lambda" not in out
    assert "N=12, M=20, metric=mse" in out
    code, out, _ = run(capsys, "info", lkd_file)
    assert "quality=3, lambda=0.0067, metric=mse" in out


@pytest.mark.parametrize("command,output", [("encode", "x.png"), ("encode", "x.JPG"), ("decode", "x.lkd")])
def test_an_output_named_for_the_other_kind_of_file_is_a_usage_error(capsys, tmp_path, image_file, lkd_file,
                                                                        weights, command, output):
    src = image_file if command == "encode" else lkd_file
    code, _, err = run(capsys, command, src, "-o", tmp_path / output, "--weights", weights)
    assert code == 2 and err.count("\n") == 1 and output in err
    assert not (tmp_path / output).exists()


# ---------------------------------------------------------------------------- many files (issue 15, item 3)
def make_images(folder, rng, names, size=(45, 70)):
    """Noise images ``names`` in ``folder`` (``size`` is H x W, or one per name)."""
    folder.mkdir(exist_ok=True)
    sizes = size if isinstance(size, list) else [size] * len(names)
    paths = []
    for name, (h, w) in zip(names, sizes):
        path = folder / name
        Image.fromarray(np.clip(rng.normal(128, 40, (h, w, 3)), 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def error_lines(err):
    return [line for line in err.splitlines() if line.startswith("lickd: error:")]


@pytest.mark.parametrize("jobs", [["-j", "2"], ["-j", "1"], []], ids=["2 workers", "1 worker", "default"])
def test_many_files_to_a_folder_and_back_equal_single_file_runs(capsys, tmp_path, rng, weights, jobs):
    """Two sizes (one of them twice), coded together into a folder: the same bytes, .lkd and PNG,
    as one file at a time, one summary line per file, outputs named from the inputs."""
    images = make_images(tmp_path / "in", rng, ["a.png", "b.png", "c.png"], [(45, 70), (45, 70), (64, 33)])
    single = tmp_path / "single"
    single.mkdir()
    for img in images:
        assert run(capsys, "encode", img, "-o", single / f"{img.stem}.lkd", "--weights", weights)[0] == 0
        assert run(capsys, "decode", single / f"{img.stem}.lkd", "-o", single / f"{img.stem}.png",
                   "--weights", weights)[0] == 0
    lkd_dir, png_dir = tmp_path / "lkd", tmp_path / "png"
    lkd_dir.mkdir(), png_dir.mkdir()
    code, out, err = run(capsys, "encode", *images, "-o", lkd_dir, "--weights", weights, *jobs)
    assert code == 0 and out == "", err
    assert err.count("\n") == 3 and [line.split()[0] for line in err.splitlines()] == [str(p) for p in images]
    lkds = sorted(lkd_dir.iterdir())
    assert [p.name for p in lkds] == ["a.lkd", "b.lkd", "c.lkd"]
    code, out, err = run(capsys, "decode", *lkds, "-o", png_dir, "--weights", weights, *jobs)
    assert code == 0 and err.count("\n") == 3, err
    for img in images:
        assert (lkd_dir / f"{img.stem}.lkd").read_bytes() == (single / f"{img.stem}.lkd").read_bytes()
        assert (png_dir / f"{img.stem}.png").read_bytes() == (single / f"{img.stem}.png").read_bytes()


def test_many_files_without_output_go_beside_their_inputs_and_json_is_one_line_each(capsys, tmp_path, rng,
                                                                                    weights):
    images = make_images(tmp_path / "x", rng, ["p.png"]) + make_images(tmp_path / "y", rng, ["q.png"])
    code, out, err = run(capsys, "encode", *images, "--weights", weights, "--json", "-j", "2")
    assert code == 0 and err == ""
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["output"] for r in records] == [str(tmp_path / "x" / "p.lkd"), str(tmp_path / "y" / "q.lkd")]
    assert all(r["bytes"] == os.path.getsize(r["output"]) for r in records)
    for img in images:
        img.unlink()
    code, out, err = run(capsys, "decode", *(r["output"] for r in records), "--weights", weights, "--json")
    assert code == 0 and [json.loads(line)["output"] for line in out.splitlines()] == [
        str(tmp_path / "x" / "p.png"), str(tmp_path / "y" / "q.png")]


@pytest.mark.parametrize("jobs,bad_kind", [("1", "crc"), ("2", "crc"), ("2", "truncated"), ("2", "not lkd"),
                                           ("2", "other model")])
def test_a_corrupt_file_in_the_middle_of_a_decode_batch(capsys, tmp_path, rng, weights, weights_files, jobs,
                                                        bad_kind):
    """The acceptance test of issue 15: the others written, exit status 1, one line for the bad one
    (found reading the container, or by the worker decoding it: another model's file)."""
    images = make_images(tmp_path / "in", rng, ["a.png", "b.png", "c.png", "d.png"])
    lkd_dir, png_dir = tmp_path / "lkd", tmp_path / "png"
    lkd_dir.mkdir(), png_dir.mkdir()
    assert run(capsys, "encode", *images, "-o", lkd_dir, "--weights", weights)[0] == 0
    bad = lkd_dir / "b.lkd"
    data = bytearray(bad.read_bytes())
    if bad_kind == "crc":
        data[len(data) // 2] ^= 0x40
    elif bad_kind == "truncated":
        data = data[:-3]
    elif bad_kind == "not lkd":
        data = b"hello"
    else:
        other = weights_files["bmshj2018-hyperprior"]
        assert run(capsys, "encode", images[1], "-o", bad, "-f", "--weights", other)[0] == 0
        data = bad.read_bytes()
    bad.write_bytes(bytes(data))
    lkds = [lkd_dir / f"{p.stem}.lkd" for p in images]
    code, out, err = run(capsys, "decode", *lkds, "-o", png_dir, "--weights", weights, "-j", jobs)
    assert code == 1 and out == ""
    assert error_lines(err) == [line for line in err.splitlines() if str(bad) in line]
    assert len(error_lines(err)) == 1 and "Traceback" not in err and err.count("\n") == 4
    assert sorted(p.name for p in png_dir.iterdir()) == ["a.png", "c.png", "d.png"]
    code, out, err = run(capsys, "decode", *lkds, "-o", png_dir, "--weights", weights, "--json", "-f")
    assert code == 1 and len(out.splitlines()) == 3 and len(error_lines(err)) == 1 and err.count("\n") == 1


def test_warnings_in_a_batch_name_their_file(capsys, tmp_path, rng, weights):
    a, c = make_images(tmp_path, rng, ["a.png", "c.png"])
    grey = tmp_path / "b.png"
    Image.fromarray(rng.integers(0, 256, (30, 20), dtype=np.uint8)).save(grey)
    code, _, err = run(capsys, "encode", a, grey, c, "-o", tmp_path, "--weights", weights, "-j", "2")
    assert code == 0 and err.count("\n") == 4
    assert [line for line in err.splitlines() if ": warning: " in line] == [
        f"lickd: {grey}: warning: converting greyscale image (mode L) to RGB"]
    assert err.splitlines().index(f"lickd: {grey}: warning: converting greyscale image (mode L) to RGB") == 1


@pytest.mark.parametrize("bad", ["not an image", "missing", "16-bit", "a folder"])
def test_a_bad_image_in_the_middle_of_an_encode_batch(capsys, tmp_path, rng, weights, bad):
    a, c = make_images(tmp_path, rng, ["a.png", "c.png"])
    b = tmp_path / ("b.ppm" if bad == "16-bit" else "b.png")
    if bad == "not an image":
        b.write_text("hello")
    elif bad == "16-bit":
        b.write_bytes(b"P6\n5 6\n65535\n" + rng.integers(0, 65536, (6, 5, 3), dtype=np.uint16).astype(">u2").tobytes())
    elif bad == "a folder":
        b.mkdir()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = run(capsys, "encode", a, b, c, "-o", out_dir, "--weights", weights, "-j", "2")
    assert code == 1 and out == ""
    assert len(error_lines(err)) == 1 and error_lines(err)[0].startswith(f"lickd: error: {b}: ")
    assert "Traceback" not in err and err.count("\n") == 3
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.lkd", "c.lkd"]


def test_existing_outputs_are_refused_per_file_unless_forced(capsys, tmp_path, rng, weights):
    images = make_images(tmp_path, rng, ["a.png", "b.png", "c.png"])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "b.lkd").write_bytes(b"keep me")
    code, _, err = run(capsys, "encode", *images, "-o", out_dir, "--weights", weights, "--quiet")
    assert code == 1 and error_lines(err) == [f"lickd: error: {out_dir / 'b.lkd'}: exists (use -f to overwrite)"]
    assert err.count("\n") == 1  # --quiet: the error only
    assert (out_dir / "b.lkd").read_bytes() == b"keep me" and (out_dir / "a.lkd").is_file()
    assert run(capsys, "encode", *images, "-o", out_dir, "--weights", weights, "-f", "--quiet") == (0, "", "")
    assert (out_dir / "b.lkd").read_bytes()[:4] == b"\x8bLKD"


@pytest.mark.parametrize("case", ["same stem", "same file twice", "output is a file", "output is missing",
                                  "ref with several inputs"])
def test_many_file_usage_errors_come_before_any_work(capsys, tmp_path, rng, weights, case):
    (x,) = make_images(tmp_path / "x", rng, ["photo.png"])
    (y,) = make_images(tmp_path / "y", rng, ["photo.png"])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    command, inputs, output, named = "encode", [x, y], out_dir, "photo.lkd"
    if case == "same file twice":
        inputs, output = [x, tmp_path / "x" / ".." / "x" / "photo.png"], None
    elif case == "output is a file":
        output = tmp_path / "out.lkd"
        output.write_bytes(b"keep me")
        inputs, named = [x, tmp_path / "other.png"], "is not a folder"
    elif case == "output is missing":
        output, named = tmp_path / "nowhere", "is not a folder"
    elif case == "ref with several inputs":
        command, inputs, named = "decode", [tmp_path / "a.lkd", tmp_path / "b.lkd"], "--ref"
    extra = ["--ref", x] if command == "decode" else []
    code, out, err = run(capsys, command, *inputs, *(["-o", output] if output else []), "--weights", weights, *extra)
    assert code == 2 and out == "" and err.count("\n") == 1 and named in err, err
    assert not list(out_dir.iterdir()) and not list((tmp_path / "x").glob("*.lkd"))
    if case == "output is a file":
        assert output.read_bytes() == b"keep me"


def test_one_input_into_a_folder_is_named_from_the_input(capsys, tmp_path, image_file, weights):
    """So that ``lickd encode *.png -o out/`` works when the pattern matches one file."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert run(capsys, "encode", image_file, "-o", out_dir, "--weights", weights)[0] == 0
    assert run(capsys, "decode", out_dir / "in.lkd", "-o", out_dir, "--weights", weights)[0] == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["in.lkd", "in.png"]


def test_decoding_many_files_loads_each_model_once(capsys, tmp_path, rng, weights_files, monkeypatch):
    """Files of two models (and one of a model that is not registered) in one run, the codecs
    from the registry named by each header: each model loaded once, a line for the orphan."""
    from lickd import zoo
    from lickd.cli import coding

    folder = tmp_path / "zoo"
    (folder / "weights").mkdir(parents=True)
    entries = []
    for arch in ("mbt2018-mean", "bmshj2018-hyperprior"):
        src = weights_files[arch]
        shutil.copy(src, folder / "weights" / src.name)
        _, info = zoo.load_weights(src)
        entries.append({"name": info.name, "architecture": arch, "N": info.N, "M": info.M, "quality": 3,
                        "sha256": zoo.file_sha256(src), "file": src.name})
    (folder / "registry.json").write_text(json.dumps({"models": entries}))
    images = make_images(tmp_path / "in", rng, ["a.png", "b.png", "c.png", "d.png", "e.png"])
    lkd_dir = tmp_path / "lkd"
    lkd_dir.mkdir()
    for img, arch in zip(images, ["mbt2018-mean", "bmshj2018-hyperprior", "mbt2018-mean", "bmshj2018-factorized",
                                  "bmshj2018-hyperprior"]):
        assert run(capsys, "encode", img, "-o", lkd_dir / f"{img.stem}.lkd", "--weights", weights_files[arch])[0] == 0
    monkeypatch.setattr(zoo, "ZOO_DIR", folder)
    monkeypatch.setattr(zoo, "REGISTRY_PATH", folder / "registry.json")
    loads = []
    real_load_codec = coding.load_codec
    monkeypatch.setattr(coding, "load_codec", lambda *a, **k: loads.append(k.get("model")) or real_load_codec(*a, **k))
    png_dir = tmp_path / "png"
    png_dir.mkdir()
    code, out, err = run(capsys, "decode", *sorted(lkd_dir.iterdir()), "-o", png_dir, "-j", "2", "--json")
    assert code == 1 and len(out.splitlines()) == 4
    assert error_lines(err) == [line for line in err.splitlines() if "d.lkd" in line and "not found" in line]
    assert len(error_lines(err)) == 1 and err.count("\n") == 1
    assert len(loads) == 2 and len(set(loads)) == 2
    assert sorted(p.name for p in png_dir.iterdir()) == ["a.png", "b.png", "c.png", "e.png"]
    models = {json.loads(line)["input"]: json.loads(line)["model"] for line in out.splitlines()}
    assert models[str(lkd_dir / "a.lkd")] == models[str(lkd_dir / "c.lkd")] != models[str(lkd_dir / "b.lkd")]


def test_workers_fit_the_cores():
    import torch

    from lickd.cli.batch import workers_for
    cpu, gpu, cores = torch.device("cpu"), torch.device("cuda"), torch.get_num_threads()
    assert workers_for(None, 100, cpu) == (cores, 1)
    assert workers_for(None, 1, cpu) == (1, cores)
    assert workers_for(None, 100, gpu) == (1, cores)
    assert workers_for(3, 2, cpu) == (2, max(1, cores // 2))


def test_workers_fit_the_memory(monkeypatch):
    """Large photos take fewer workers than cores when their estimated peaks do not fit; -j wins."""
    import torch

    from lickd.cli.batch import file_peak_bytes, workers_for
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    cpu = torch.device("cpu")
    peak = file_peak_bytes(24_000_000, 64)
    assert 0.9e9 < peak < 1.4e9 and file_peak_bytes(24_000_000, 128) > peak > file_peak_bytes(400_000, 64)
    assert workers_for(None, 100, cpu, peak, available=int(3.2 * peak)) == (2, 4)
    assert workers_for(None, 100, cpu, peak, available=peak // 2) == (1, 8)  # never fewer than one
    assert workers_for(None, 100, cpu, file_peak_bytes(400_000, 64), available=16 << 30) == (8, 1)
    assert workers_for(6, 100, cpu, peak, available=peak) == (6, 1)


@pytest.mark.parametrize("tty,flags,shown", [(True, [], True), (True, ["--quiet"], False), (True, ["--json"], False),
                                             (False, [], False)], ids=["terminal", "quiet", "json", "not a terminal"])
def test_the_progress_bar_only_on_a_terminal_and_never_quiet_or_json(monkeypatch, tty, flags, shown):
    import io

    from lickd.cli import batch, build_parser

    class Terminal(io.StringIO):
        def isatty(self):
            return tty

    monkeypatch.setattr(sys, "stderr", Terminal())
    args = build_parser().parse_args(["decode", "a.lkd", "b.lkd", *flags])
    with batch.Batch(args, 2) as run_:
        assert run_.bar.disable is not shown
