"""The CPU rANS coder: round trips on every table (escapes included), determinism, stream
layout choices, and corrupt or truncated streams."""
import os
import subprocess
import sys

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
    sym[:2] = torch.tensor([-2**31, 2**31 - 1], dtype=torch.int32)[:n]  # both int32 extremes (n >= 2)
    return sym, idx


@pytest.mark.parametrize("precision", [12, 13, 14, 15, 16])
def test_round_trip_every_gaussian_table_with_escapes(precision, rng):
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
def test_lanes_and_chunks_round_trip_and_are_recorded(lanes, chunks, rng):
    gc = gaussian_model(15)
    n = int(rng.integers(1, 3000))
    sym, idx = gaussian_symbols(gc, n, rng, escape_rate=0.05)
    data = gc.tables.encode(sym, idx, lanes=lanes, chunks=chunks)
    info = stream_info(data)
    assert info["lanes"] == lanes and info["n_symbols"] == n
    assert 1 <= info["n_chunks"] <= max(1, min(n, chunks or n))
    assert torch.equal(gc.tables.decode(data, idx), sym)


def test_multithreaded_bytes_equal_single_thread(rng):
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
    empty = torch.zeros(0, dtype=torch.int32)
    for bare, flags_at in ((False, 3), (True, 0)):  # flags follow magic and version in a full stream
        forms = {gc.tables.encode(empty, empty, lanes=lanes, chunks=chunks, bare=bare)
                 for lanes in (0, 1, 8, 32) for chunks in (0, 3)}
        assert len(forms) == 1  # an empty stream has one form, whatever the layout options
        eight_lanes = bytearray(forms.pop())
        eight_lanes[flags_at] |= 3 << 3
        with pytest.raises(CorruptFileError, match="one lane"):
            gc.tables.decode(bytes(eight_lanes), empty, bare=bare)


def test_rate_close_to_ideal_code_length(rng):
    """Without escapes the stream is within a few tenths of a percent of -sum log2 p of the tables."""
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


def widened_escape_streams(gc):
    """A one-symbol bare stream whose symbol is an escape, and copies of it with the escape width
    byte widened while the value still fits its byte: the same symbol in a non-canonical stream."""
    sym, idx = torch.tensor([40], dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    data = gc.tables.encode(sym, idx, lanes=1, chunks=1, bare=True)
    at = stream_info(data, bare_symbols=1)["header_bytes"] + 1  # chunk: varint n_escapes (1), u8 width
    width = data[at]
    assert data[at - 1] == 1 and 1 < width < 8
    return sym, idx, data, [data[:at] + bytes([w]) + data[at + 1:] for w in range(width + 1, 9)]


def overlong_varint_streams(gc):
    """A one-symbol escape stream (bare) and copies of it that write a varint in a longer form of
    the same value: the symbol count of the full stream, the escape count of the bare one (its chunk
    size in the directory grown to match). Same symbols, non-canonical bytes."""
    from lickd.container import _varint
    sym, idx, bare, _ = widened_escape_streams(gc)
    full = gc.tables.encode(sym, idx, lanes=1, chunks=1)
    assert full[4] == 1  # magic (2), version, flags, then varint n_symbols
    long_count = full[:4] + b"\x81\x00" + full[5:]
    info = stream_info(bare, bare_symbols=1)
    head, (size,) = info["header_bytes"], info["chunk_bytes"]
    assert bare[head] == 1 and bare[:2 + len(_varint(size))] == bare[:2] + _varint(size)
    long_escapes = bare[:2] + _varint(size + 1) + b"\x81\x00" + bare[head + 1:]
    return sym, idx, [(False, long_count), (True, long_escapes)]


def test_only_the_shortest_varints_are_accepted():
    gc = gaussian_model(15)
    sym, idx, streams = overlong_varint_streams(gc)
    for bare, data in streams:
        with pytest.raises(CorruptFileError, match="malformed varint"):
            gc.tables.decode(data, idx, bare=bare)
    too_wide = gc.tables.encode(sym, idx, lanes=1, chunks=1)[:4] + b"\xff" * 9 + b"\x02"  # a 65th bit
    with pytest.raises(CorruptFileError, match="malformed varint"):
        gc.tables.decode(too_wide, idx)


def test_only_the_narrowest_escape_width_is_accepted():
    """Every stream the decoder accepts is the one the encoder writes: a wider escape width that
    reads the same values is refused."""
    gc = gaussian_model(15)
    sym, idx, data, widened = widened_escape_streams(gc)
    assert torch.equal(gc.tables.decode(data, idx, bare=True), sym)
    for bad in widened:
        with pytest.raises(CorruptFileError, match="escape width"):
            gc.tables.decode(bad, idx, bare=True)


def _small_stream(rng):
    gc = gaussian_model(15)
    sym, idx = gaussian_symbols(gc, 600, rng, escape_rate=0.02)
    return gc, sym, idx, gc.tables.encode(sym, idx, lanes=8, chunks=3)


@pytest.mark.parametrize("bare", [False, True], ids=["full", "bare"])
def test_every_flipped_byte_is_detected(bare, rng):
    """Header, directory and escape damage is always caught; damage inside a lane's words is caught
    by its 16-bit check and the exact word count, which can miss about 1 in 65,536 times."""
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
def test_every_truncation_and_extension_is_detected(bare, rng):
    gc, sym, idx, data = _small_stream(rng)
    if bare:
        data = gc.tables.encode(sym, idx, lanes=8, chunks=3, bare=True)
    for n in range(len(data)):
        with pytest.raises(CorruptFileError):
            gc.tables.decode(data[:n], idx, bare=bare)
    with pytest.raises(CorruptFileError, match="trailing"):
        gc.tables.decode(data + b"\0", idx, bare=bare)


def test_bare_streams_leave_out_what_the_container_records(rng):
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


def test_other_tables_or_symbol_count_are_rejected(rng):
    gc, sym, idx, data = _small_stream(rng)
    other = gaussian_model(14)
    with pytest.raises(CorruptFileError, match="tables"):
        other.tables.decode(data, idx)
    with pytest.raises(CorruptFileError, match="symbols"):
        gc.tables.decode(data, idx[:-1])


def test_random_garbage_never_crashes(rng):
    gc = gaussian_model(15)
    idx = torch.zeros(1000, dtype=torch.int32)
    header = gc.tables.encode(torch.zeros(1000, dtype=torch.int32), idx)[:12]
    for _ in range(300):
        tail = rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes()
        for data in (tail, header + tail):
            with pytest.raises(CorruptFileError):
                gc.tables.decode(data, idx)


def test_mutation_fuzz_runs_clean(rng):
    """A short run of the long mutation fuzz (tests/fuzz/fuzz_rans.py; under ASan with
    tests/fuzz/asan.sh, outside CI): every damaged copy decodes or raises CorruptFileError."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz", "fuzz_rans.py")
    seed = int(rng.integers(0, 2**31))
    run = subprocess.run([sys.executable, script, "--cases", "40", "--seconds", "120", "--seed", str(seed)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "40 coded streams, 1280 damaged copies decoded" in run.stdout
