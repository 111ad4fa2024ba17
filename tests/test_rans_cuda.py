"""The CUDA coder (csrc/rans_cuda.cu) writes the CPU coder's bytes and reads its streams.

Every test runs on two backends: ``emulated``, the CUDA source compiled with g++ against the CPU
emulator in tests/cuda_emu (kernels and host code run in CI, without a GPU), and ``cuda``, the real
build on a GPU (skipped without one).
"""
import ctypes
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from lickd.entropy import EntropyBottleneck
from lickd.entropy.coder import cuda_coder_built
from lickd.errors import CorruptFileError

from test_rans import gaussian_model, gaussian_symbols, overlong_varint_streams, widened_escape_streams

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EMU = os.path.join(HERE, "cuda_emu")
CXX = shutil.which("g++") or shutil.which("c++")
HAVE_GPU = torch.cuda.is_available() and cuda_coder_built()


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    if CXX is None:
        pytest.skip("needs a C++ compiler")
    out = str(tmp_path_factory.mktemp("cuda_emu") / "librans_emu.so")
    csrc = os.path.join(ROOT, "csrc")
    cmd = [CXX, "-O2", "-std=c++17", "-fPIC", "-shared", "-D_GLIBCXX_ASSERTIONS", "-DLICKD_CUDA_EMULATOR",
           f"-I{EMU}", f"-I{csrc}",
           "-x", "c++", os.path.join(csrc, "rans_cuda.cu"), os.path.join(EMU, "selftest.cu"),
           "-x", "none", os.path.join(EMU, "emu_api.cpp"), os.path.join(csrc, "rans_format.cpp"),
           os.path.join(csrc, "rans_tables.cpp"), "-o", out]
    subprocess.run(cmd, check=True)
    lib = ctypes.CDLL(out)
    P, I64, I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.lickd_emu_tables.restype = P
    lib.lickd_emu_tables.argtypes = [P, I64, I64, P, P, I32, ctypes.c_char_p, I32]
    lib.lickd_emu_free_tables.argtypes = [P]
    lib.lickd_emu_shared_table_bytes.argtypes = [P]
    lib.lickd_emu_decode.argtypes = [P, I32, P, P, P, P, P, I32, ctypes.c_char_p, I32]
    lib.lickd_emu_encode.argtypes = [P, I32, P, P, P, I32, I64, ctypes.c_double, I32, ctypes.POINTER(P), ctypes.c_char_p,
                                     I32]
    lib.lickd_emu_result_size.restype = I64
    lib.lickd_emu_result_size.argtypes = [P, I32]
    lib.lickd_emu_result_copy.argtypes = [P, I32, P]
    lib.lickd_emu_free_result.argtypes = [P]
    lib.lickd_emu_selftest.argtypes = [I32, P, ctypes.c_char_p, I32]
    return lib


class EmulatedCudaCoder:
    """csrc/rans_cuda.cu's encode/decode of many streams on emulated device memory (host arrays)."""

    def __init__(self, lib, model):
        self.lib = lib
        cdf = np.ascontiguousarray(model._quantized_cdf.numpy(), dtype=np.int32)
        self._keep = [cdf, np.ascontiguousarray(model._cdf_length.numpy(), dtype=np.int32),
                      np.ascontiguousarray(model._offset.numpy(), dtype=np.int32)]
        err = ctypes.create_string_buffer(512)
        self.handle = lib.lickd_emu_tables(cdf.ctypes.data, cdf.shape[0], cdf.shape[1], self._keep[1].ctypes.data,
                                           self._keep[2].ctypes.data, model.entropy_coder_precision, err, 512)
        assert self.handle, err.value

    def __del__(self):
        if getattr(self, "handle", None):
            self.lib.lickd_emu_free_tables(self.handle)

    @staticmethod
    def _ptrs(arrays):
        return (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])

    @staticmethod
    def _raise(rc, err):
        message = err.value.decode()
        if rc == 1:
            raise CorruptFileError(message)
        if rc == 2:
            raise ValueError(message)
        if rc:
            raise RuntimeError(message)  # the emulator refused the kernel: a bug on a GPU too

    def encode(self, symbols, indexes, lanes=0, chunks=0, max_overhead=0.0025, bare=False):
        sym = [np.ascontiguousarray(s.numpy(), dtype=np.int32) for s in symbols]
        idx = [np.ascontiguousarray(i.numpy(), dtype=np.int32) for i in indexes]
        counts = np.array([s.size for s in sym], dtype=np.int64)
        result, err = ctypes.c_void_p(), ctypes.create_string_buffer(512)
        rc = self.lib.lickd_emu_encode(self.handle, len(sym), self._ptrs(sym), self._ptrs(idx), counts.ctypes.data,
                                       lanes, chunks, max_overhead, int(bare), ctypes.byref(result), err, 512)
        self._raise(rc, err)
        out = []
        for i in range(len(sym)):
            buf = np.empty(self.lib.lickd_emu_result_size(result, i), dtype=np.uint8)
            self.lib.lickd_emu_result_copy(result, i, buf.ctypes.data)
            out.append(buf.tobytes())
        self.lib.lickd_emu_free_result(result)
        return out

    def decode(self, streams, indexes, bare=False):
        data = [np.frombuffer(bytes(s), dtype=np.uint8).copy() for s in streams]
        idx = [np.ascontiguousarray(i.numpy(), dtype=np.int32) for i in indexes]
        out = [np.full(i.size, -7, dtype=np.int32) for i in idx]
        sizes = np.array([d.size for d in data], dtype=np.int64)
        counts = np.array([i.size for i in idx], dtype=np.int64)
        err = ctypes.create_string_buffer(512)
        rc = self.lib.lickd_emu_decode(self.handle, len(data), self._ptrs(data), sizes.ctypes.data, self._ptrs(idx),
                                       self._ptrs(out), counts.ctypes.data, int(bare), err, 512)
        self._raise(rc, err)
        return [torch.from_numpy(o) for o in out]


class GpuCoder:
    """The same interface over the real build: CPU tensors in and out, CUDA in between."""

    def __init__(self, model):
        self.tables = model.tables

    def encode(self, symbols, indexes, **options):
        return self.tables.encode_cuda([s.cuda() for s in symbols], [i.cuda() for i in indexes], **options)

    def decode(self, streams, indexes, bare=False):
        out = self.tables.decode_cuda(streams, [i.cuda() for i in indexes], bare=bare)
        assert all(o.is_cuda for o in out)
        return [o.cpu() for o in out]


@pytest.fixture(params=["emulated", pytest.param("cuda", marks=pytest.mark.skipif(
    not HAVE_GPU, reason="needs a CUDA GPU and the CUDA coder build"))])
def coder_for(request):
    """coder_for(model) -> the backend's coder over the model's tables."""
    if request.param == "emulated":
        lib = request.getfixturevalue("emulator")
        return lambda model: EmulatedCudaCoder(lib, model)
    return GpuCoder


# (lanes, chunks, n): auto layout, one lane, odd chunk counts, tiny chunks, a single symbol, empty.
LAYOUTS = ((0, 0, 20_000), (32, 0, 9000), (1, 1, 777), (8, 5, 3000), (16, 1000, 5000), (4, 3, 1), (0, 0, 0), (2, 7, 1001))


def test_decoder_tables_in_shared_memory_up_to_p15_and_from_global_memory_at_p16(emulator):
    for precision, shared in ((12, True), (15, True), (16, False)):
        coder = EmulatedCudaCoder(emulator, gaussian_model(precision))
        size = emulator.lickd_emu_shared_table_bytes(coder.handle)
        assert (0 < size <= 112 * 1024) if shared else size == 0


@pytest.mark.parametrize("precision", [12, 15, 16])
def test_gpu_encoder_writes_the_cpu_bytes_and_each_decoder_reads_the_other(coder_for, precision, rng):
    gc = gaussian_model(precision)
    gpu = coder_for(gc)
    for lanes, chunks, n in LAYOUTS:
        sym, idx = gaussian_symbols(gc, n, rng, escape_rate=0.02)
        cpu_bytes = gc.tables.encode(sym, idx, lanes=lanes, chunks=chunks)
        gpu_bytes = gpu.encode([sym], [idx], lanes=lanes, chunks=chunks)[0]
        assert gpu_bytes == cpu_bytes, (lanes, chunks, n)
        assert torch.equal(gpu.decode([cpu_bytes], [idx])[0], sym)
        assert torch.equal(gc.tables.decode(gpu_bytes, idx), sym)


def test_bare_streams_match_the_cpu_coder_and_are_refused_as_full_ones(coder_for, rng):
    gc = gaussian_model(15)
    gpu = coder_for(gc)
    pairs = [gaussian_symbols(gc, n, rng, escape_rate=0.01) for n in (3000, 9000)]
    syms, idxs = [p[0] for p in pairs], [p[1] for p in pairs]
    bare = gpu.encode(syms, idxs, bare=True)
    assert bare == [gc.tables.encode(s, i, bare=True) for s, i in pairs]
    for o, s in zip(gpu.decode(bare, idxs, bare=True), syms):
        assert torch.equal(o, s)
    with pytest.raises(CorruptFileError, match="magic"):
        gpu.decode(bare, idxs)
    with pytest.raises(CorruptFileError):
        gpu.decode(gpu.encode(syms, idxs), idxs, bare=True)


def test_a_batch_of_streams_in_one_call_matches_stream_by_stream(coder_for, rng):
    gc = gaussian_model(15)
    gpu = coder_for(gc)
    pairs = [gaussian_symbols(gc, n, rng, escape_rate=0.005) for n in (5000, 2, 12_345, 4096)]
    pairs.insert(2, (torch.zeros(0, dtype=torch.int32), torch.zeros(0, dtype=torch.int32)))
    syms, idxs = [p[0] for p in pairs], [p[1] for p in pairs]
    streams = gpu.encode(syms, idxs, max_overhead=0.01)
    assert streams == [gc.tables.encode(s, i, max_overhead=0.01) for s, i in pairs]
    for o, s in zip(gpu.decode(streams, idxs), syms):
        assert torch.equal(o, s)


def test_entropy_bottleneck_tables_every_symbol_and_both_escape_directions(coder_for):
    eb = EntropyBottleneck(5)
    with torch.no_grad():
        eb.quantiles.copy_(torch.tensor([-6.0, 0.3, 5.0]).repeat(5, 1, 1) * torch.linspace(0.5, 3, 5)[:, None, None])
    eb.update(force=True)
    gpu = coder_for(eb)
    syms, idxs = [], []
    for t in range(5):
        off, n = int(eb._offset[t]), int(eb._cdf_length[t]) - 1
        syms += list(range(off - 40, off + n + 40))
        idxs += [t] * (n + 80)
    perm = torch.randperm(len(syms))
    sym, idx = torch.tensor(syms).int()[perm], torch.tensor(idxs).int()[perm]
    for lanes in (1, 4, 32):
        data = gpu.encode([sym], [idx], lanes=lanes)[0]
        assert data == eb.tables.encode(sym, idx, lanes=lanes)
        assert torch.equal(gpu.decode([data], [idx])[0], sym)


def test_corrupt_and_truncated_streams_and_bad_indexes_are_errors(coder_for, rng):
    gc = gaussian_model(15)
    gpu = coder_for(gc)
    sym, idx = gaussian_symbols(gc, 600, rng, escape_rate=0.02)
    data = gc.tables.encode(sym, idx, lanes=8, chunks=3)
    missed = 0
    for pos in rng.choice(len(data), size=min(len(data), 120), replace=False):
        bad = bytearray(data)
        bad[pos] ^= int(rng.integers(1, 256))
        try:
            gpu.decode([bytes(bad)], [idx])
            missed += 1
        except CorruptFileError:
            pass
    assert missed <= 1
    for n in range(0, len(data), 23):
        with pytest.raises(CorruptFileError):
            gpu.decode([data[:n]], [idx])
    esc_sym, esc_idx, one, widened = widened_escape_streams(gc)  # canonical escape widths only, as on the CPU
    assert torch.equal(gpu.decode([one], [esc_idx], bare=True)[0], esc_sym)
    for bad in widened:
        with pytest.raises(CorruptFileError):
            gpu.decode([bad], [esc_idx], bare=True)
    _, _, overlong = overlong_varint_streams(gc)  # shortest varints only, as on the CPU
    for bare, bad in overlong:
        with pytest.raises(CorruptFileError):
            gpu.decode([bad], [esc_idx], bare=bare)
    with pytest.raises(ValueError, match="index"):
        gpu.decode([data], [torch.full_like(idx, 64)])
    bad_idx = idx.clone()
    bad_idx[-1] = -1
    with pytest.raises(ValueError, match="index"):
        gpu.encode([sym], [bad_idx])
    with pytest.raises(ValueError, match="lanes"):
        gpu.encode([sym], [idx], lanes=3)


def test_the_emulator_computes_collectives_and_refuses_undefined_behaviour(emulator):
    lib = emulator
    out = np.zeros(2 * 64 * 6, dtype=np.uint32)
    err = ctypes.create_string_buffer(512)
    assert lib.lickd_emu_selftest(0, out.ctypes.data, err, 512) == 0, err.value
    o = out.reshape(2, 64, 6)
    lane = np.arange(64) % 32
    assert (o[..., 0] == 0xAAAAAAAA).all()
    assert (o[..., 1] == sum(range(32))).all()
    assert (o[..., 2] == np.where(lane == 0, 0, (lane - 1) * 10)).all()
    assert (o[0, :, 3] == 5).all() and (o[1, :, 3] == 105).all()
    t = np.arange(64)
    assert (o[0, :, 4] == ((t + 32) % 64) * 7).all() and (o[1, :, 4] == ((t + 32) % 64) * 7 + 1).all()
    for which, message in ((1, "exited"), (2, "different collectives")):
        assert lib.lickd_emu_selftest(which, out.ctypes.data, err, 512) == 3
        assert message in err.value.decode()


@pytest.mark.skipif(not HAVE_GPU, reason="needs a CUDA GPU and the CUDA coder build")
def test_codec_on_gpu_with_the_cuda_coder_writes_and_reads_the_cpu_coder_bytes(monkeypatch, rng):
    from lickd import StudentCodec, zoo
    from lickd.models import build_model
    torch.manual_seed(0)
    model = build_model("mbt2018-mean", 16, 24)
    codec = StudentCodec(model, zoo.ModelInfo(name="t", architecture="mbt2018-mean", N=16, M=24), device="cuda")
    imgs = [rng.integers(0, 256, (64, 96, 3), dtype=np.uint8) for _ in range(3)]
    monkeypatch.setenv("LICKD_CUDA_CODER", "1")
    gpu_files = codec.compress_batch(imgs)
    _, gpu_latents = codec.decode_latents(gpu_files[0])
    monkeypatch.setenv("LICKD_CUDA_CODER", "0")
    assert codec.compress_batch(imgs) == gpu_files  # same latents on the same device -> same bytes
    _, cpu_latents = codec.decode_latents(gpu_files[0])
    assert torch.equal(gpu_latents["y"], cpu_latents["y"]) and torch.equal(gpu_latents["z"], cpu_latents["z"])
