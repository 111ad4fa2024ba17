"""The CPU rANS coder: round trips on every table (escapes included), determinism, stream
layout choices, and corrupt or truncated streams."""
import numpy as np
import pytest
import torch

from lickd.entropy import EntropyBottleneck, GaussianConditional, TableSet, get_scale_table, stream_info
from lickd.entropy.cdf import pmf_to_quantized_cdf
from lickd.errors import CorruptFileError


def gaussian_model(precision):
    gc = GaussianConditional(None, entropy_coder_precision=precision)
    gc.update_scale_table(get_scale_table())
    return gc


def gaussian_symbols(gc, n, rng, escape_rate=0.01):
    """Values drawn at each table's own scale, plus escapes anywhere in the int32 range."""
    idx = torch.from_numpy(rng.integers(0, gc._offset.numel(), n)).int()
    scale = gc.scale_table[idx.long()]
    sym = torch.round(torch.from_numpy(rng.normal(size=n)).float() * scale).int()
    esc = torch.from_numpy(rng.random(n) < escape_rate)
    far = torch.from_numpy(rng.integers(-2**31, 2**31, n, dtype=np.int64)).int()
    sym[esc] = far[esc]
    sym[:2] = torch.tensor([-2**31, 2**31 - 1], dtype=torch.int32)
    return sym, idx


@pytest.mark.parametrize("precision", [12, 13, 14, 15, 16])
def test_round_trip_every_gaussian_table_with_escapes(precision):
    rng = np.random.default_rng()
    gc = gaussian_model(precision)
    sym, idx = gaussian_symbols(gc, 50_000, rng)
    assert set(idx.tolist()) == set(range(64))  # every table used
    data = gc.tables.encode(sym, idx)
    assert torch.equal(gc.tables.decode(data, idx), sym)


def test_round_trip_entropy_bottleneck_tables_and_every_symbol_of_each():
    eb = EntropyBottleneck(9)
    with torch.no_grad():
        eb.quantiles.copy_(torch.tensor([-6.0, 0.3, 5.0]).repeat(9, 1, 1) * torch.linspace(0.5, 3, 9)[:, None, None])
    eb.update(force=True)
    tables = eb.tables
    # Every in-range value of every table, both escape directions, in random order.
    syms, idxs = [], []
    for t in range(9):
        off, n = int(eb._offset[t]), int(eb._cdf_length[t]) - 1
        values = list(range(off - 3, off + n + 3))
        syms += values
        idxs += [t] * len(values)
    perm = torch.randperm(len(syms))
    sym, idx = torch.tensor(syms).int()[perm], torch.tensor(idxs).int()[perm]
    for lanes in (1, 4, 32):
        data = tables.encode(sym, idx, lanes=lanes)
        assert torch.equal(tables.decode(data, idx), sym)


@pytest.mark.parametrize("lanes,chunks", [(1, 1), (2, 3), (8, 5), (16, 0), (32, 7), (32, 1000)])
def test_lanes_and_chunks_round_trip_and_are_recorded(lanes, chunks):
    rng = np.random.default_rng()
    gc = gaussian_model(15)
    n = int(rng.integers(1, 3000))
    sym, idx = gaussian_symbols(gc, n, rng, escape_rate=0.05)
    data = gc.tables.encode(sym, idx, lanes=lanes, chunks=chunks)
    info = stream_info(data)
    assert info["lanes"] == lanes and info["n_symbols"] == n
    assert 1 <= info["n_chunks"] <= max(1, min(n, chunks or n))
    assert torch.equal(gc.tables.decode(data, idx), sym)


def test_multithreaded_bytes_equal_single_thread():
    rng = np.random.default_rng()
    gc = gaussian_model(15)
    sym, idx = gaussian_symbols(gc, 200_000, rng, escape_rate=0.001)
    one = gc.tables.encode(sym, idx, chunks=16, threads=1)
    for threads in (2, 3, 0):
        assert gc.tables.encode(sym, idx, chunks=16, threads=threads) == one
        assert torch.equal(gc.tables.decode(one, idx, threads=threads), sym)


def test_empty_and_single_symbol():
    gc = gaussian_model(15)
    for n in (0, 1):
        sym, idx = torch.zeros(n, dtype=torch.int32), torch.full((n,), 5, dtype=torch.int32)
        data = gc.tables.encode(sym, idx)
        assert torch.equal(gc.tables.decode(data, idx), sym)


def test_rate_close_to_ideal_code_length():
    """Without escapes the stream is within a few tenths of a percent of -sum log2 p of the tables."""
    rng = np.random.default_rng()
    gc = gaussian_model(15)
    n = 300_000
    idx = torch.from_numpy(rng.integers(20, 50, n)).int()
    sym = torch.round(torch.from_numpy(rng.normal(size=n)).float() * gc.scale_table[idx.long()]).int()
    cdf, off = gc._quantized_cdf.long(), gc._offset.long()
    s = (sym - off[idx.long()]).long()
    freq = cdf[idx.long(), s + 1] - cdf[idx.long(), s]
    ideal_bytes = float((15 - torch.log2(freq.double())).sum()) / 8
    data = gc.tables.encode(sym, idx)
    assert len(data) <= ideal_bytes * 1.005 + 64


def test_quantized_cdf_properties():
    torch.manual_seed(0)
    pmf = torch.rand(20, 50) ** 8  # skewed, with tiny probabilities
    lengths = torch.randint(2, 51, (20,))
    for precision in (12, 15, 16):
        cdf = pmf_to_quantized_cdf(pmf, lengths, precision)
        for t in range(20):
            row = cdf[t, : lengths[t] + 1]
            assert row[0] == 0 and row[-1] == 2**precision
            assert bool((row[1:] > row[:-1]).all())  # every symbol has frequency >= 1
            assert bool((cdf[t, lengths[t] + 1:] == 0).all())


def test_invalid_tables_and_indexes_are_rejected():
    gc = gaussian_model(15)
    cdf, length, offset = gc._quantized_cdf.clone(), gc._cdf_length, gc._offset
    with pytest.raises(ValueError, match="precision"):
        TableSet(cdf, length, offset, 16)
    bad = cdf.clone()
    bad[3, 2] = bad[3, 1]  # zero frequency
    with pytest.raises(ValueError, match="increasing"):
        TableSet(bad, length, offset, 15)
    with pytest.raises(ValueError, match="cdf_length"):
        TableSet(cdf, length + 10_000, offset, 15)
    sym = torch.zeros(4, dtype=torch.int32)
    with pytest.raises(ValueError, match="index"):
        gc.tables.encode(sym, torch.tensor([0, 1, 64, 2]))
    with pytest.raises(ValueError, match="index"):
        gc.tables.decode(gc.tables.encode(sym, torch.zeros(4)), torch.tensor([0, -1, 0, 0]))


def _small_stream(rng):
    gc = gaussian_model(15)
    sym, idx = gaussian_symbols(gc, 600, rng, escape_rate=0.02)
    return gc, sym, idx, gc.tables.encode(sym, idx, lanes=8, chunks=3)


@pytest.mark.parametrize("bare", [False, True], ids=["full", "bare"])
def test_every_flipped_byte_is_detected(bare):
    """Header, directory and escape damage is always caught; damage inside a lane's words is caught
    by its 16-bit check and the exact word count, which can miss about 1 in 65,536 times."""
    rng = np.random.default_rng()
    gc, sym, idx, data = _small_stream(rng)
    if bare:
        data = gc.tables.encode(sym, idx, lanes=8, chunks=3, bare=True)
    missed = 0
    for pos in range(len(data)):
        bad = bytearray(data)
        bad[pos] ^= int(rng.integers(1, 256))
        try:
            gc.tables.decode(bytes(bad), idx, bare=bare)
            missed += 1
        except CorruptFileError:
            pass
    assert missed <= 1


@pytest.mark.parametrize("bare", [False, True], ids=["full", "bare"])
def test_every_truncation_and_extension_is_detected(bare):
    rng = np.random.default_rng()
    gc, sym, idx, data = _small_stream(rng)
    if bare:
        data = gc.tables.encode(sym, idx, lanes=8, chunks=3, bare=True)
    for n in range(len(data)):
        with pytest.raises(CorruptFileError):
            gc.tables.decode(data[:n], idx, bare=bare)
    with pytest.raises(CorruptFileError, match="trailing"):
        gc.tables.decode(data + b"\0", idx, bare=bare)


def test_bare_streams_leave_out_what_the_container_records():
    rng = np.random.default_rng()
    gc, sym, idx, full = _small_stream(rng)
    bare = gc.tables.encode(sym, idx, lanes=8, chunks=3, bare=True)
    info, bare_info = stream_info(full), stream_info(bare, bare_symbols=idx.numel())
    # magic (2) + version (1) + symbol count (varint) + table hash (4)
    assert len(full) - len(bare) == 7 + (idx.numel().bit_length() + 6) // 7
    assert bare_info["bare"] and not info["bare"]
    assert {k: bare_info[k] for k in ("lanes", "n_chunks", "chunk_bytes", "n_symbols")} == \
        {k: info[k] for k in ("lanes", "n_chunks", "chunk_bytes", "n_symbols")}
    assert torch.equal(gc.tables.decode(bare, idx, bare=True), sym)
    with pytest.raises(CorruptFileError, match="magic"):
        gc.tables.decode(bare, idx)
    with pytest.raises(CorruptFileError):
        gc.tables.decode(full, idx, bare=True)
    assert full[-len(bare) + bare_info["header_bytes"]:] == bare[bare_info["header_bytes"]:]


def test_other_tables_or_symbol_count_are_rejected():
    rng = np.random.default_rng()
    gc, sym, idx, data = _small_stream(rng)
    other = gaussian_model(14)
    with pytest.raises(CorruptFileError, match="tables"):
        other.tables.decode(data, idx)
    with pytest.raises(CorruptFileError, match="symbols"):
        gc.tables.decode(data, idx[:-1])


def test_random_garbage_never_crashes():
    rng = np.random.default_rng()
    gc = gaussian_model(15)
    idx = torch.zeros(1000, dtype=torch.int32)
    header = gc.tables.encode(torch.zeros(1000, dtype=torch.int32), idx)[:12]
    for _ in range(300):
        tail = rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        for data in (tail, header + tail):
            with pytest.raises(CorruptFileError):
                gc.tables.decode(data, idx)
