"""The CUDA decoder reads exactly the CPU coder's streams (run on a GPU; skipped elsewhere)."""
import numpy as np
import pytest
import torch

from lickd.entropy import EntropyBottleneck
from lickd.entropy.coder import cuda_decoder_built
from lickd.errors import CorruptFileError

from test_rans import gaussian_model, gaussian_symbols

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and cuda_decoder_built()),
                                reason="needs a CUDA GPU and the CUDA decoder build")


@pytest.mark.parametrize("precision", [12, 15, 16])
def test_cpu_encoded_streams_decode_on_gpu_every_table_with_escapes(precision):
    rng = np.random.default_rng()
    gc = gaussian_model(precision)
    streams, idxs, syms = [], [], []
    for lanes, chunks, n in ((32, 0, 60_000), (1, 1, 777), (8, 5, 3000), (16, 1000, 5000), (4, 3, 1)):
        sym, idx = gaussian_symbols(gc, n, rng, escape_rate=0.02)
        streams.append(gc.tables.encode(sym, idx, lanes=lanes, chunks=chunks))
        idxs.append(idx.cuda())
        syms.append(sym)
    out = gc.tables.decode_cuda(streams, idxs)  # all streams in one launch
    for o, s in zip(out, syms):
        assert o.is_cuda and torch.equal(o.cpu(), s)


def test_entropy_bottleneck_tables_on_gpu():
    eb = EntropyBottleneck(9)
    eb.update(force=True)
    sym = torch.randint(-30, 30, (9 * 400,), dtype=torch.int32)
    idx = torch.arange(9, dtype=torch.int32).repeat_interleave(400)
    data = eb.tables.encode(sym, idx, lanes=32, chunks=3)
    assert torch.equal(eb.tables.decode_cuda([data], [idx.cuda()])[0].cpu(), sym)


def test_corrupt_and_truncated_streams_fail_on_gpu():
    rng = np.random.default_rng()
    gc = gaussian_model(15)
    sym, idx = gaussian_symbols(gc, 600, rng, escape_rate=0.02)
    data = gc.tables.encode(sym, idx, lanes=8, chunks=3)
    idx_gpu = idx.cuda()
    missed = 0
    for pos in range(len(data)):
        bad = bytearray(data)
        bad[pos] ^= int(rng.integers(1, 256))
        try:
            gc.tables.decode_cuda([bytes(bad)], [idx_gpu])
            missed += 1
        except CorruptFileError:
            pass
    assert missed <= 1
    for n in range(0, len(data), 7):
        with pytest.raises(CorruptFileError):
            gc.tables.decode_cuda([data[:n]], [idx_gpu])
    with pytest.raises(ValueError, match="index"):
        gc.tables.decode_cuda([data], [torch.full_like(idx_gpu, 64)])


def test_codec_decodes_on_gpu_with_the_cuda_decoder(monkeypatch):
    from lickd import StudentCodec, zoo
    from lickd.models import build_model
    monkeypatch.setenv("LICKD_CUDA_CODER", "1")
    torch.manual_seed(0)
    model = build_model("mbt2018-mean", 16, 24)
    codec = StudentCodec(model, zoo.ModelInfo(name="t", architecture="mbt2018-mean", N=16, M=24), device="cuda")
    img = np.random.default_rng().integers(0, 256, (64, 96, 3), dtype=np.uint8)
    data = codec.compress(img)
    f, latents = codec.decode_latents(data)
    monkeypatch.setenv("LICKD_CUDA_CODER", "0")
    _, cpu_latents = codec.decode_latents(data)
    assert torch.equal(latents["y"], cpu_latents["y"]) and torch.equal(latents["z"], cpu_latents["z"])
