"""StudentCodec and the .lkd container: exact latents, any size, input kinds, hostile files."""
import json
import math
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from lickd import CorruptFileError, ImageFormatError, LickdError, ModelNotFoundError, StudentCodec, container, zoo  # noqa: F401
from lickd.codec import CPU_LAYOUT
from lickd.entropy.options import LKD_FILE_OPTIONS
from lickd.image import pad_to_multiple, to_tensor

ARCHS = ["bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean"]


def random_image(h, w, rng):
    # Smooth content plus noise: closer to a photo than white noise.
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 80 * np.sin(xx[..., None] / 7.0 + np.arange(3)) * np.cos(yy[..., None] / 11.0)
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def codecs(weights_files):
    return {arch: StudentCodec.from_file(path, device="cpu") for arch, path in weights_files.items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_decoded_latents_equal_encoder_latents(codecs, arch, rng):
    codec = codecs[arch]
    model = codec.model
    img = random_image(96, 160, rng)
    data = codec.compress(img)
    f, latents = codec.decode_latents(data)
    # The encoder's quantised latents, computed independently of the coder.
    with torch.no_grad():
        x = pad_to_multiple(to_tensor(img)[0], model.downsampling_factor)
        y = model.g_a(x)
        if "z" in model.latent_names:
            z = model._hyper_analysis(y)
            z_hat = model.entropy_bottleneck.quantize(z, "dequantize", model.entropy_bottleneck.expanded_medians(1, 2))
            assert torch.equal(latents["z"], z_hat)
            _, means = model._coding_params(z_hat, LKD_FILE_OPTIONS)
            y_hat = model.gaussian_conditional.quantize(y, "dequantize", means)
        else:
            y_hat = model.entropy_bottleneck.quantize(y, "dequantize", model.entropy_bottleneck.expanded_medians(1, 2))
    assert torch.equal(latents["y"], y_hat)
    # And the image is what the synthesis transform makes of them.
    out = codec.decompress(data, output="tensor")
    with torch.no_grad():  # in the memory format the codec decodes in (its CPU layers choose by it)
        ref = model.g_s(y_hat.contiguous(memory_format=CPU_LAYOUT)).clamp(0, 1)[0, :, :96, :160]
    assert torch.equal(out, torch.round(ref * 255) / 255)


def test_coding_options_are_passed_down_not_stored_on_the_model(codecs, rng):
    """The codec codes with LKD_FILE_OPTIONS (exact entropy parameters, bare streams) without
    changing the model: the same model still codes CompressAI's way (float h_s, self-describing
    streams) when called directly, and each kind of stream decodes only as what it is."""
    from lickd.entropy import CodingOptions, stream_info
    from lickd.entropy.options import LKD_FILE_OPTIONS

    codec = codecs["mbt2018-mean"]
    model = codec.model
    img = random_image(64, 128, rng)
    f = container.parse(codec.compress(img))
    x = pad_to_multiple(to_tensor(img)[0], model.downsampling_factor)
    with torch.inference_mode():
        ours = model.compress(x, options=LKD_FILE_OPTIONS)
        plain = model.compress(x)
        assert [s[0] for s in ours["strings"]] == [f.section(n).data for n in model.latent_names]
        for name, s in zip(model.latent_names, plain["strings"]):
            assert stream_info(s[0])["n_symbols"] == math.prod(f.section(name).shape)  # its own header
        # Float and exact h_s give nearly the same scales; the streams differ in form at least.
        assert plain["strings"][0] != ours["strings"][0]
        z_hat = model.decode_latents(plain["strings"], plain["shape"])["z"]
        float_scales, _ = model._coding_params(z_hat)
        exact_scales, _ = model._coding_params(z_hat, LKD_FILE_OPTIONS)
        assert not torch.equal(float_scales, exact_scales)
        assert torch.allclose(float_scales, exact_scales, rtol=1e-3, atol=1e-3)
        with pytest.raises(CorruptFileError):
            model.decode_latents(ours["strings"], ours["shape"])  # bare streams read as full ones
        with pytest.raises(CorruptFileError):
            model.decode_latents(plain["strings"], plain["shape"], LKD_FILE_OPTIONS)
    with pytest.raises(TypeError, match="always codes with"):
        codec.compress(img, bare=False)
    assert codec.compress(img, threads=1) == codec.compress(img)  # coder settings: same bytes
    with pytest.raises(ValueError, match="entropy_parameters"):
        CodingOptions(entropy_parameters="fast")


@pytest.mark.parametrize("size", [(1, 1), (65, 33), (513, 769), (64, 64), (17, 200)])
def test_any_size_round_trips_to_the_original_size(codecs, size, rng):
    h, w = size
    codec = codecs["mbt2018-mean"]
    img = random_image(h, w, rng)
    data = codec.compress(img)
    f = container.parse(data)
    assert (f.height, f.width) == (h, w)
    out = codec.decompress(data, output="numpy")
    assert out.shape == (h, w, 3) and out.dtype == np.uint8


def test_input_kinds_give_the_same_file_and_output_kind(codecs, rng):
    codec = codecs["bmshj2018-hyperprior"]
    arr = random_image(40, 50, rng)
    pil = Image.fromarray(arr)
    tensor = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    data = codec.compress(arr)
    assert codec.compress(pil) == data
    assert codec.compress(tensor) == data
    assert codec.compress(tensor.unsqueeze(0)) == data
    assert isinstance(codec.decompress(data), Image.Image)
    assert codec.decompress(data, output="tensor").shape == (3, 40, 50)
    as_np = codec.decompress(data, output="numpy")
    assert np.array_equal(np.asarray(codec.decompress(data)), as_np)


def test_greyscale_and_palette_convert_with_a_warning(codecs, rng):
    codec = codecs["bmshj2018-factorized"]
    grey = Image.fromarray(random_image(30, 30, rng)[:, :, 0], "L")
    with pytest.warns(UserWarning, match="greyscale"):
        data = codec.compress(grey)
    assert codec.decompress(data).size == (30, 30)
    palette = Image.fromarray(random_image(30, 30, rng)).convert("P")
    with pytest.warns(UserWarning, match="palette"):
        codec.compress(palette)
    with pytest.warns(UserWarning, match="greyscale"):
        codec.compress(random_image(30, 30, rng)[:, :, 0])


def test_alpha_sixteen_bit_and_bad_inputs_are_clear_errors(codecs, rng):
    codec = codecs["bmshj2018-factorized"]
    rgba = Image.fromarray(np.dstack([random_image(20, 20, rng), np.full((20, 20), 255, np.uint8)]), "RGBA")
    with pytest.raises(ImageFormatError, match="alpha"):
        codec.compress(rgba)
    with pytest.raises(ImageFormatError, match="16-bit"):
        codec.compress(Image.fromarray(np.zeros((20, 20), np.uint16)))
    with pytest.raises(ImageFormatError, match="uint8"):
        codec.compress(np.zeros((20, 20, 3), np.uint16))
    with pytest.raises(ImageFormatError, match="alpha"):
        codec.compress(np.zeros((20, 20, 4), np.uint8))
    with pytest.raises(ImageFormatError, match="NaN"):
        codec.compress(torch.full((3, 8, 8), float("nan")))
    with pytest.raises(ImageFormatError):
        codec.compress(torch.zeros(3, 0, 8))
    with pytest.raises(ImageFormatError):
        codec.compress("not an image")


def test_file_from_another_model_is_refused(codecs, rng):
    data = codecs["mbt2018-mean"].compress(random_image(20, 20, rng))
    with pytest.raises(LickdError, match="encoded with model"):
        codecs["bmshj2018-hyperprior"].decompress(data)


def test_kodak_round_trip(codecs, kodak_dir):
    codec = codecs["mbt2018-mean"]
    img = Image.open(kodak_dir / "kodim23.png")
    data = codec.compress(img)
    f = container.parse(data)
    assert (f.width, f.height) == img.size
    assert [s.shape for s in f.sections] == [(20, 32, 48), (12, 8, 12)]
    assert codec.decompress(data).size == img.size


# ---------------------------------------------------------------------------- hostile files
@pytest.fixture(scope="module")
def small_file(codecs, module_rng):
    return codecs["mbt2018-mean"].compress(random_image(24, 40, module_rng))


def test_every_flipped_byte_gives_a_clean_error(codecs, small_file, rng):
    codec = codecs["mbt2018-mean"]
    for pos in range(len(small_file)):
        bad = bytearray(small_file)
        bad[pos] ^= int(rng.integers(1, 256))
        with pytest.raises(LickdError):
            codec.decompress(bytes(bad))


def test_every_truncation_gives_a_clean_error(codecs, small_file):
    codec = codecs["mbt2018-mean"]
    for n in range(len(small_file)):
        with pytest.raises(CorruptFileError):
            codec.decompress(small_file[:n])
    with pytest.raises(CorruptFileError, match="trailing"):
        codec.decompress(small_file + b"x")


def _fields(data: bytes) -> list:
    """The (tag, value) fields of a file's header."""
    header_len = struct.unpack_from("<H", data, 6)[0]
    header, fields, pos = data[8:8 + header_len], [], 0
    while pos < len(header):
        tag, pos = header[pos], pos + 1
        n = shift = 0
        while True:
            b, pos = header[pos], pos + 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        fields.append([tag, header[pos:pos + n]])
        pos += n
    return fields


def _with_fields(data: bytes, edit) -> bytes:
    """Rebuilds a valid file's header (with a valid CRC) from its fields after ``edit``."""
    header_len = struct.unpack_from("<H", data, 6)[0]
    fields = _fields(data)
    edit(fields)
    header = b"".join(f if isinstance(f, bytes) else bytes([f[0]]) + container._varint(len(f[1])) + f[1]
                      for f in fields)  # raw bytes entries go in as they are
    return data[:6] + struct.pack("<H", len(header)) + header + struct.pack("<I", zlib.crc32(header)) \
        + data[8 + header_len + 4:]


def _set(tag, value):
    def edit(fields):
        for f in fields:
            if f[0] == tag:
                f[1] = value
                return
        fields.append([tag, value])
    return edit


def _latent(name=b"y", shape=(20, 1, 1), nbytes=0):
    return bytes([len(name)]) + name + b"".join(container._varint(v) for v in (*shape, nbytes))


V = container._varint


@pytest.mark.parametrize("edit,match", [
    (_set(9, V(60000) + V(60000)), "exceeds"),
    (_set(9, V(2**40) + V(1)), "out of range"),
    (_set(9, V(0) + V(5)), "out of range"),
    (_set(9, V(5)), "truncated"),
    (_set(9, V(5) + V(5) + V(5)), "trailing"),
    (lambda f: f.__setitem__(slice(None), [x for x in f if x[0] != 11] + [[11, _latent(nbytes=2**62)]]), "out of range"),
    (lambda f: f.__setitem__(slice(None), [x for x in f if x[0] != 11] + [[11, _latent(shape=(10**9, 1, 1))]]),
     "out of range"),
    (lambda f: f.extend([[11, _latent()]] * 100), "too many"),
    (_set(4, V(0)), "out of range"),
    (lambda f: f.__setitem__(slice(None), [x for x in f if x[0] != 1]), "lacks model"),
    (lambda f: f.__setitem__(slice(None), [x for x in f if x[0] != 11]), "lacks latents"),
    (_set(10, b"zstd"), "coded with"),
    (lambda f: f.append([4, V(16)]), "twice"),
    (_set(1, b"\xff\xfe"), "UTF-8"),
    (_set(2, b"abc"), "8 bytes"),
    (lambda f: f.append(b"\x01\x7f"), "truncated header"),
    (lambda f: f.append(b"\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"), "malformed|truncated"),
    (_set(9, b"\x85\x00" + V(5)), "malformed"),  # 5 written in two bytes: only the shortest form is read
    (_set(9, b"\xff" * 9 + b"\x02" + V(5)), "malformed"),  # a 65th bit
])
def test_hostile_headers_fail_fast(codecs, small_file, edit, match):
    with pytest.raises(LickdError, match=match):
        codecs["mbt2018-mean"].decompress(_with_fields(small_file, edit))


def test_unknown_header_fields_are_skipped_and_the_header_is_small(codecs, small_file):
    codec = codecs["mbt2018-mean"]
    extended = _with_fields(small_file, lambda f: f.append([200, b"a field from the future"]))
    assert np.array_equal(codec.decompress(extended, output="numpy"), codec.decompress(small_file, output="numpy"))
    header_len = struct.unpack_from("<H", small_file, 6)[0]
    assert header_len <= 100
    f = container.parse(small_file)
    assert f.lmbda == 0.0067 and f.quality == 3 and f.weights == codec.info.short_hash


def test_bad_magic_version_and_flags(codecs, small_file):
    codec = codecs["mbt2018-mean"]
    with pytest.raises(CorruptFileError, match="magic"):
        codec.decompress(b"\x89PNG" + small_file[4:])
    with pytest.raises(CorruptFileError, match="version"):
        codec.decompress(small_file[:4] + b"\x09" + small_file[5:])
    with pytest.raises(CorruptFileError, match="flags"):
        codec.decompress(small_file[:5] + b"\x01" + small_file[6:])


# ---------------------------------------------------------------------------- weights
def test_weights_are_safetensors_with_hash_and_fp16(weights_files):
    path = weights_files["mbt2018-mean"]
    model, info = zoo.load_weights(path)
    assert info.sha256 == zoo.file_sha256(path) and info.architecture == "mbt2018-mean"
    from safetensors.torch import load_file
    raw = load_file(str(path))
    assert raw["g_a.0.weight"].dtype == torch.float16
    assert raw["gaussian_conditional._quantized_cdf"].dtype == torch.int32
    with pytest.raises(CorruptFileError, match="sha256"):
        zoo.load_weights(path, expected_sha256="0" * 64)


def test_weights_files_store_the_cdf_tables_packed_and_both_layouts_load(tmp_path, weights_files, rng):
    """save_weights stores each entropy model's CDF rows without their padding; loading pads
    them again to the very tables the model had (and files of the padded layout, as lickd wrote
    them before, still load to the same codec); packed rows that do not add up are refused."""
    from safetensors.torch import load_file, save_file
    from lickd.entropy.cdf import pack_cdfs, unpack_cdfs
    path = weights_files["mbt2018-mean"]
    raw = load_file(str(path))
    model, info = zoo.load_weights(path)
    for prefix in ("gaussian_conditional.", "entropy_bottleneck."):
        packed, lengths = raw[prefix + "_quantized_cdf"], raw[prefix + "_cdf_length"]
        assert packed.dim() == 1 and packed.numel() == int(lengths.sum())
        table = model.get_submodule(prefix[:-1])._quantized_cdf
        assert table.shape == (lengths.numel(), int(lengths.max()))
        assert torch.equal(unpack_cdfs(pack_cdfs(table, lengths), lengths), table)
        for t in range(lengths.numel()):  # each row: its values, then zeros
            assert torch.equal(table[t, :int(lengths[t])], packed[int(lengths[:t].sum()):int(lengths[:t + 1].sum())])
            assert not table[t, int(lengths[t]):].any()
    # the padded layout of older files: the same model, the same bytes out
    padded = dict(raw)
    for prefix in ("gaussian_conditional.", "entropy_bottleneck."):
        padded[prefix + "_quantized_cdf"] = model.get_submodule(prefix[:-1])._quantized_cdf.clone()
    old = tmp_path / "padded.safetensors"
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    save_file(padded, str(old), metadata=meta)
    img = random_image(48, 64, rng)
    a, b = (container.parse(StudentCodec.from_file(p).compress(img)) for p in (old, path))
    assert [(x.name, x.data) for x in a.sections] == [(x.name, x.data) for x in b.sections]
    # tables that do not fit together: one clear error each, never a crash, other tables or a
    # huge allocation
    gc = "gaussian_conditional."
    cdf, lengths = raw[gc + "_quantized_cdf"], raw[gc + "_cdf_length"]
    table = model.gaussian_conditional._quantized_cdf
    bomb = torch.full((4096,), 3, dtype=torch.int32)
    bomb[-1] = 65537
    damaged = {
        "truncated": {gc + "_quantized_cdf": cdf[:-1]},
        "a [1, N] table": {gc + "_quantized_cdf": cdf[None]},
        "float values": {gc + "_quantized_cdf": cdf.double() + 0.7},
        "no lengths": {gc + "_cdf_length": None},
        "no offsets": {gc + "_offset": None},
        "a zero length": {gc + "_cdf_length": torch.cat([torch.zeros(1, dtype=torch.int32), lengths[1:]]),
                          gc + "_quantized_cdf": cdf[int(lengths[0]):]},
        "a length beyond 65537": {gc + "_cdf_length": torch.cat([lengths[:-1], torch.tensor([70000], dtype=torch.int32)])},
        "a padded length beyond the width": {gc + "_quantized_cdf": table[:, :-1].contiguous()},
        "lengths for other tables": {gc + "_cdf_length": lengths[:-1]},
        "4096 tables to unpack to 1 GB": {gc + "_cdf_length": bomb, gc + "_offset": torch.zeros(4096, dtype=torch.int32),
                                          gc + "_quantized_cdf": torch.arange(int(bomb.sum()), dtype=torch.int32)},
        "not a power of two": {gc + "_quantized_cdf": cdf + 1},
    }
    for what, change in damaged.items():
        broken = {k: v for k, v in dict(raw, **change).items() if v is not None}
        save_file({k: v.contiguous() for k, v in broken.items()}, str(tmp_path / "broken.safetensors"), metadata=meta)
        with pytest.raises(CorruptFileError, match="_quantized_cdf"):
            zoo.load_weights(tmp_path / "broken.safetensors")
            pytest.fail(what)


def test_non_lickd_or_pickled_weights_are_refused(tmp_path):
    pickled = tmp_path / "model.safetensors"
    torch.save({"g_a.0.weight": torch.zeros(1)}, pickled)
    with pytest.raises(CorruptFileError):
        zoo.load_weights(pickled)
    from safetensors.torch import save_file
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(CorruptFileError, match="lickd weights"):
        zoo.load_weights(plain)
    with pytest.raises(ModelNotFoundError):
        zoo.load_weights(tmp_path / "missing.safetensors")


def test_from_pretrained_with_empty_registry_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(zoo, "REGISTRY_PATH", tmp_path / "none.json")
    with pytest.raises(ModelNotFoundError, match="registry is empty"):
        StudentCodec.from_pretrained(3, device="cpu")


def test_batches_group_sizes_and_match_single_image_decoding(codecs, rng):
    codec = codecs["mbt2018-mean"]
    imgs = [random_image(40, 50, rng), random_image(70, 64, rng), random_image(40, 50, rng), random_image(3, 90, rng)]
    files = codec.compress_batch(imgs)
    assert len(files) == 4
    batch = codec.decompress_batch(files, output="numpy")
    for img, data, out in zip(imgs, files, batch):
        assert out.shape == img.shape
        assert np.array_equal(codec.decompress(data, output="numpy"), out)
    bad = bytearray(files[2])
    bad[-10] ^= 1
    with pytest.raises(CorruptFileError):
        codec.decompress_batch([files[0], bytes(bad)])


def test_registry_lookup_by_quality_name_and_file_header(monkeypatch, tmp_path, weights_files, capsys, rng):
    import shutil
    from lickd.cli import main
    (tmp_path / "weights").mkdir()
    entries = []
    for quality, arch in ((2, "mbt2018-mean"), (4, "bmshj2018-hyperprior")):
        dst = tmp_path / "weights" / f"m{quality}.safetensors"
        shutil.copy(weights_files[arch], dst)
        _, info = zoo.load_weights(dst)
        entries.append({"name": info.name, "file": dst.name, "sha256": info.sha256, "architecture": arch,
                        "N": info.N, "M": info.M, "quality": quality, "lambda": info.lmbda})
    (tmp_path / "registry.json").write_text(json.dumps({"models": entries}))
    monkeypatch.setattr(zoo, "REGISTRY_PATH", tmp_path / "registry.json")
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path)
    assert StudentCodec.from_pretrained(2, device="cpu").info.architecture == "mbt2018-mean"
    with pytest.warns(UserWarning, match="quality 4"):  # 3 is missing: nearest, ties to the higher
        assert StudentCodec.from_pretrained(3, device="cpu").info.architecture == "bmshj2018-hyperprior"
    codec = StudentCodec.from_pretrained(entries[0]["name"], device="cpu")
    # a file decodes with no model flags: its header names the registered model
    src = tmp_path / "in.png"
    Image.fromarray(random_image(30, 40, rng)).save(src)
    assert main(["encode", str(src), "-q", "2", "-o", str(tmp_path / "a.lkd")]) == 0
    assert main(["decode", str(tmp_path / "a.lkd"), "-o", str(tmp_path / "a.png")]) == 0
    assert Image.open(tmp_path / "a.png").size == (40, 30)
    assert codec.decompress((tmp_path / "a.lkd").read_bytes()).size == (40, 30)
    # a registry file whose hash does not match is refused
    entries[0]["sha256"] = "0" * 64
    (tmp_path / "registry.json").write_text(json.dumps({"models": entries}))
    with pytest.raises(CorruptFileError, match="sha256"):
        StudentCodec.from_pretrained(2, device="cpu")


def test_fuzzed_payloads_with_valid_crcs_never_crash(codecs, small_file, rng):
    """Random damage to the coded sections, with every CRC recomputed so the coder itself must
    catch it: a LickdError, never another exception or a hang. The coder's own check is 16 bits
    per lane, so about 1 in 65,536 damaged chunks can slip through; more than one in 300 is a bug."""
    codec = codecs["mbt2018-mean"]
    f = container.parse(small_file)
    original = codec.decompress(small_file, output="numpy")
    wrong = 0
    for _ in range(300):
        sections = []
        for s in f.sections:
            data = bytearray(s.data)
            for _ in range(int(rng.integers(1, 4))):
                op = rng.integers(0, 3)
                pos = int(rng.integers(0, len(data) + 1))
                if op == 0 and pos < len(data):
                    data[pos] ^= int(rng.integers(1, 256))
                elif op == 1:
                    data[pos:pos] = bytes([int(rng.integers(0, 256))])
                elif len(data) > 1:
                    del data[min(pos, len(data) - 1)]
            sections.append(container.Section(s.name, s.shape, bytes(data)))
        damaged = container.LkdFile(**{**f.__dict__, "sections": sections}).to_bytes()
        try:
            out = codec.decompress(damaged, output="numpy")
        except LickdError:
            continue
        wrong += not np.array_equal(out, original)  # a no-op edit decodes correctly
    assert wrong <= 1


def test_in_memory_model_is_identified_by_its_state(rng):
    from lickd.models import build_model
    torch.manual_seed(0)
    model = build_model("bmshj2018-hyperprior", 8, 12)
    info = zoo.ModelInfo(name="scratch", architecture="bmshj2018-hyperprior", N=8, M=12)
    codec = StudentCodec(model, info, device="cpu")
    assert len(codec.info.short_hash) == 16 and codec.info.sha256 == zoo.state_sha256(model)
    img = random_image(20, 30, rng)
    assert codec.decompress(codec.compress(img), output="numpy").shape == img.shape
    with torch.no_grad():
        model.g_s[0].bias.add_(1)
    assert zoo.state_sha256(model) != codec.info.sha256
