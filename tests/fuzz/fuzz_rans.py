"""Long mutation fuzz of the CPU rANS coder (lickd._rans): streams of every layout, damaged in the
ways files get damaged, must decode to the right shape or raise CorruptFileError, never anything
else, never to the original symbols from other bytes (a stream has one form), and never touch
memory they should not. Meant to run for minutes under AddressSanitizer and UBSan
(tests/fuzz/asan.sh builds a sanitised copy of the extension and runs this); CI runs it for 40
streams (tests/test_rans.py).

    python tests/fuzz/fuzz_rans.py --seconds 600 --seed 1

Each coded stream is damaged ``--damages`` times. Prints one line per 1,000 coded streams and a
summary table; exits 1 on the first unexpected outcome, printing the seed and case number that
reproduce it (``--seed S --start K --cases 1``).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from lickd.entropy import EntropyBottleneck, GaussianConditional, get_scale_table, stream_info
from lickd.errors import CorruptFileError


def gaussian_tables(precision: int):
    gc = GaussianConditional(None, entropy_coder_precision=precision)
    gc.update_scale_table(get_scale_table())
    return gc.tables


def bottleneck_tables(rng: np.random.Generator):
    channels = int(rng.integers(1, 24))
    eb = EntropyBottleneck(channels)
    with torch.no_grad():
        width = torch.from_numpy(rng.uniform(0.05, 40.0, channels)).float()
        centre = torch.from_numpy(rng.uniform(-3, 3, channels)).float()
        eb.quantiles.copy_(torch.stack([centre - width, centre, centre + width], 1)[:, None, :])
    eb.update(force=True)
    return eb.tables


def symbols_for(tables, n: int, rng: np.random.Generator):
    """Symbols mostly near zero at each table's scale, with escapes of every size."""
    idx = rng.integers(0, tables.n_tables, n).astype(np.int32)
    sym = np.round(rng.normal(size=n) * rng.choice([0.3, 2.0, 30.0], n)).astype(np.int64)
    escapes = rng.random(n) < rng.choice([0.0, 0.01, 0.3])
    sym[escapes] = rng.integers(-2**31, 2**31, int(escapes.sum()))
    return torch.from_numpy(sym.astype(np.int32)), torch.from_numpy(idx)


def mutate(data: bytes, other: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One kind of damage: flips, byte runs, truncation, extension, insertion, deletion, splice."""
    b = bytearray(data)
    kinds = ["flip", "run", "delete"] if b else []
    kind = str(rng.choice(kinds + ["truncate", "extend", "insert", "splice", "garbage"]))
    if kind == "flip":
        for _ in range(int(rng.integers(1, 5))):
            b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(0, 8))
    elif kind == "run":  # overwritten by a run of 0x00 / 0xff / 0x80 / 0x7f: huge or zero varints and counts
        at, k = int(rng.integers(0, len(b))), int(rng.integers(1, 9))
        b[at:at + k] = bytes([int(rng.choice([0, 0xFF, 0x80, 0x7F]))]) * len(b[at:at + k])
    elif kind == "truncate":
        b = b[:int(rng.integers(0, len(b) + 1))]
    elif kind == "extend":
        b += rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif kind == "insert":
        at = int(rng.integers(0, len(b) + 1))
        b[at:at] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
    elif kind == "delete":
        at = int(rng.integers(0, len(b)))
        del b[at:at + int(rng.integers(1, 9))]
    elif kind == "splice":
        cut = int(rng.integers(0, min(len(b), len(other)) + 1))
        b = b[:cut] + bytearray(other[cut:])
    else:  # garbage after a valid header prefix
        keep = int(rng.integers(0, min(len(b), 24) + 1))
        b = b[:keep] + bytearray(rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8).tobytes())
    return kind, bytes(b)


def run_case(case_rng: np.random.Generator, table_cache: dict, damages: int) -> list[tuple[str, str]]:
    """One case: build a stream, damage copies of it ``damages`` times, decode each. Returns one
    (mutation, outcome) per damaged copy: "error" (a clean CorruptFileError), "decoded" (the damage
    went unnoticed: rare, the lanes' 16-bit checks) or "valid" (the damage left this stream or the
    spliced-in one intact). Other bytes that decode to the same symbols are a failure: a stream
    has one form (shortest varints, narrowest escape width, one lane when empty)."""
    if case_rng.random() < 0.3:
        tables = bottleneck_tables(case_rng)
    else:
        precision = int(case_rng.choice([12, 15, 16]))
        tables = table_cache.setdefault(precision, gaussian_tables(precision))
    n = int(case_rng.choice([0, 1, 2, int(case_rng.integers(3, 400)), int(case_rng.integers(400, 20000))]))
    sym, idx = symbols_for(tables, n, case_rng)
    lanes = int(case_rng.choice([0, 1, 2, 4, 8, 32]))
    chunks = int(case_rng.choice([0, 1, 2, 7, 1000]))
    bare = bool(case_rng.random() < 0.3)
    threads = int(case_rng.integers(0, 4))
    data = tables.encode(sym, idx, lanes=lanes, chunks=chunks, bare=bare, threads=threads)
    if not torch.equal(tables.decode(data, idx, bare=bare, threads=threads), sym):
        raise AssertionError("an undamaged stream did not round trip")
    other_sym, _ = symbols_for(tables, n, case_rng)
    other = tables.encode(other_sym, idx, lanes=lanes, chunks=chunks, bare=bare)
    results = []
    for _ in range(damages):
        kind, bad = mutate(data, other, case_rng)
        indexes = idx
        if case_rng.random() < 0.1 and n:  # decoding with other (valid) table indexes
            kind += "+indexes"
            indexes = torch.from_numpy(case_rng.integers(0, tables.n_tables, n).astype(np.int32))
        try:
            out = tables.decode(bad, indexes, bare=bare, threads=threads)
        except CorruptFileError:
            outcome = "error"
        else:
            if out.shape != indexes.shape or out.dtype != torch.int32:
                raise AssertionError(f"decode returned {out.dtype} {tuple(out.shape)} for "
                                     f"{tuple(indexes.shape)} indexes")
            if bad in (data, other):
                outcome = "valid"
            elif indexes is idx and torch.equal(out, sym):  # readers accept only what the writer writes
                raise AssertionError(f"{kind}: other bytes decoded to the same symbols (a non-canonical form)")
            else:
                outcome = "decoded"
        try:  # the header reader sees the same hostile bytes
            stream_info(bad, bare_symbols=n if bare else None)
        except CorruptFileError:
            pass
        results.append((kind, outcome))
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="first case number (to reproduce one case)")
    p.add_argument("--cases", type=int, default=10**9)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--damages", type=int, default=32, help="damaged copies decoded per coded stream")
    args = p.parse_args(argv)
    tables: dict = {}
    counts: dict[tuple[str, str], int] = {}
    t0, case = time.monotonic(), args.start
    while case < args.start + args.cases and time.monotonic() - t0 < args.seconds:
        try:
            outcomes = run_case(np.random.default_rng([args.seed, case]), tables, args.damages)
        except Exception as e:  # anything but CorruptFileError on damage is a bug
            print(f"FAIL seed {args.seed} case {case}: {type(e).__name__}: {e}", flush=True)
            print(f"reproduce: python {sys.argv[0]} --seed {args.seed} --start {case} --cases 1")
            return 1
        for key in outcomes:
            counts[key] = counts.get(key, 0) + 1
        case += 1
        if (case - args.start) % 1_000 == 0:
            print(f"{case - args.start} cases, {time.monotonic() - t0:.0f} s", flush=True)
    print(f"{case - args.start} coded streams, {sum(counts.values())} damaged copies decoded in "
          f"{time.monotonic() - t0:.0f} s (seed {args.seed}): no crash, no unexpected error")
    print("| mutation | clean error | undetected (other symbols) | a valid stream still |")
    print("|---|---|---|---|")
    for kind in sorted({k for k, _ in counts}):
        print(f"| {kind} | {counts.get((kind, 'error'), 0)} | {counts.get((kind, 'decoded'), 0)} | "
              f"{counts.get((kind, 'valid'), 0)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
