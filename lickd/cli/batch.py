"""Many files in one ``lickd encode`` or ``lickd decode``.

Outputs are named from the inputs (``a.png -> DIR/a.lkd`` with ``-o DIR``, else beside each
input), and two inputs that would write the same output are a usage error before any work. A bad
input is one error line naming it; the others are still written, and the exit status is 1 at the
end. The model is loaded once (for decoding, once per model the headers name) and shared by a few
threads, each running torch on its share of the cores; a tqdm bar on stderr shows the progress
when stderr is a terminal and the run takes more than a second.

How the work is spread was chosen by measurement: see the comment above ``workers_for``.
"""
from __future__ import annotations

import os
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .common import CliError, UsageError, check_output, discard_stdout, emit


@dataclass
class Job:
    """One input and the output it goes to; ``data`` and ``header`` once read (decode)."""

    src: Path
    out: Path
    data: Optional[bytes] = None
    header: Any = None
    warnings: list = field(default_factory=list)


# ---------------------------------------------------------------------------- output names
def output_for(src: Path, output: Optional[str], suffix: str) -> Path:
    """The output of one input: ``output`` if it names a file (or nothing yet), the input's name
    with ``suffix`` inside it if it is a folder, beside the input without ``output``."""
    if output is None:
        return src.with_suffix(suffix)
    out = Path(output)
    if out.is_dir():
        return out / Path(src.name).with_suffix(suffix)
    if output.endswith(("/", os.sep)):  # meant as a folder: Path() would drop the slash and write a file
        raise UsageError(output, "no such folder")
    return out


def output_paths(inputs: list[str], output: Optional[str], suffix: str) -> list[Path]:
    """The outputs of several inputs: in the folder ``output`` (which must exist), else beside
    each input. A folder that is not there, or two inputs bound for one output, are usage errors:
    nothing has been done yet."""
    if output is not None and not Path(output).is_dir():
        raise UsageError(output, "is not a folder: with several inputs, -o names an existing folder")
    sources = [Path(p) for p in inputs]
    outs = [output_for(src, output, suffix) for src in sources]
    seen: dict = {}
    for src, out in zip(sources, outs):
        key = os.path.normcase(out.resolve())
        if key in seen:
            raise UsageError(out, f"both {seen[key]} and {src} would be written here: rename one or code them "
                                  "into different folders")
        seen[key] = src
    return outs


def jobs_for(inputs: list[str], output: Optional[str], suffix: str) -> list[Job]:
    return [Job(Path(src), out) for src, out in zip(inputs, output_paths(inputs, output, suffix))]


# ---------------------------------------------------------------------------- running them
# Parallelism, by measurement. 8 Kodak images (kodim01-08: seven 768x512, one 512x768), the whole
# per-file work (PNG read + compress; decompress + PNG write to memory), on the project's 2-vCPU
# AVX2 machine (torch 2.14, fp32) while two `lickd train` runs at nice -5 and another engineer's
# benchmark held most of both cores: the absolute times are disturbed (several times issue 15's
# idle 140 / 165 ms a Kodak image at N=64), so the configurations ran interleaved, in turn, in the
# same conditions; medians of 5 rounds (N=12) and 3 rounds (N=64), seconds for the 8 images,
# encode / decode:
#
#                                                        N=12/M=20 (tests)   N=64/M=192 (random)
#   one file at a time, torch on 2 threads                  4.55 / 4.42        8.72 / 10.31
#   one file at a time, torch on 1 thread                   0.38 / 0.57        5.36 /  7.07
#   compress_batch / decompress_batch, 2 threads            1.88 / 1.82        7.99 /  7.51
#   compress_batch / decompress_batch, 1 thread             0.41 / 0.55        4.50 /  5.56
#   2 worker threads x 1 torch thread each (chosen)         0.35 / 0.51        3.20 /  4.36
#
# Torch's own threads lose most where the machine is busy (OpenMP's barriers wait on cores other
# processes hold) and leave the entropy coder, the exact entropy-parameter path and PNG coding on
# one core; independent files keep every core busy. Batching same-size images saved nothing
# beyond that and holds a whole group in memory, so files go one at a time. Forked worker
# processes (2 x 1 thread) were tried as well: no faster than threads in the one round they
# completed (small model 1.14 / 0.96 s against 0.97 / 1.00 s), then a forked child spun for
# minutes on a job of a second and had to be killed (OpenMP after fork is a known hazard), while
# threads share the one loaded model. Not measured: an
# idle machine (torch's threads would lose less there) and GPUs, where files go one at a time.
def workers_for(jobs_flag: Optional[int], n_files: int, device, file_bytes: int = 0,
                available: Optional[int] = None) -> tuple[int, int]:
    """(workers, torch threads each): ``-j`` if given, else one worker per core torch would use
    (``torch.get_num_threads()``, which honours OMP_NUM_THREADS), never more workers than files
    nor, without ``-j``, more than fit in memory (``file_bytes``: the estimated peak of the largest
    file, ``available``: the memory free for them, default MemAvailable); on a GPU one worker.
    Each worker runs torch on ``cores // workers`` threads."""
    import torch

    cores = max(1, torch.get_num_threads())
    if jobs_flag:
        workers = jobs_flag
    elif device.type != "cpu":
        workers = 1
    else:
        workers = cores
        if file_bytes > 0:
            available = memory_available() if available is None else available
            if available:
                workers = min(workers, max(1, int(0.8 * available) // file_bytes))
    workers = max(1, min(workers, n_files))
    return workers, max(1, cores // workers)


#: Estimated peak bytes one file adds while it is coded, per pixel: a whole-image g_a/g_s pass
#: holds ~0.3 GB per MP for N=64 (twice for N=128), images above 2 MP
#: (lickd.codec.TILE_THRESHOLD) hold one tile's worth instead, plus ~45 MB per MP that grows
#: with the image (its float copy, latents, output). Measured (bench_codec.py --memory): 24 MP
#: adds ~0.75 GB encode, ~1.0 GB decode; this gives 1.16 GB.
WHOLE_PASS_BYTES_PER_PIXEL_N64 = 300
IMAGE_BYTES_PER_PIXEL = 45


def file_peak_bytes(pixels: int, n: int) -> int:
    """The estimated peak memory of coding one image of ``pixels`` with a model of width ``n``."""
    from ..codec import DEFAULT_TILE, TILE_THRESHOLD

    working = pixels if pixels <= TILE_THRESHOLD else DEFAULT_TILE * DEFAULT_TILE
    return int(working * WHOLE_PASS_BYTES_PER_PIXEL_N64 * max(1, n) // 64 + pixels * IMAGE_BYTES_PER_PIXEL)


def memory_available() -> Optional[int]:
    """MemAvailable from /proc/meminfo in bytes (None where it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def pixels_of(job: "Job") -> int:
    """The pixel count of a job's image, from its header alone (0 when it cannot be read: the job
    itself will report why)."""
    if job.header is not None:
        return int(job.header.width) * int(job.header.height)
    try:
        from PIL import Image

        with warnings.catch_warnings():  # a large image warns when it is read, not here
            warnings.simplefilter("ignore")
            with Image.open(job.src) as img:  # reads the header only
                return img.size[0] * img.size[1]
    except Exception:
        return 0


class Batch:
    """The per-file bookkeeping of a multi-file run: results and error lines in input order,
    through the progress bar; ``failures`` counts the bad files."""

    def __init__(self, args, total: int):
        from tqdm import tqdm

        self.args = args
        self.failures = 0
        self.reader_gone = False
        show = not (args.quiet or args.json) and sys.stderr.isatty()
        self.bar = tqdm(total=total, unit="file", file=sys.stderr, delay=1.0, leave=False, disable=not show,
                        dynamic_ncols=True)
        self._local = threading.local()
        self._router = _WarningRouter(self._show_warning)

    def __enter__(self) -> "Batch":
        self._router.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._router.__exit__(*exc)
        self.bar.close()

    def _write(self, fn: Callable[[], None]) -> None:
        from tqdm import tqdm

        with tqdm.external_write_mode(file=sys.stderr):  # clears the bar, redraws it below
            fn()

    def writable(self, jobs: list[Job], force: bool) -> list[Job]:
        """The jobs whose output may be written; each other one is an error line."""
        todo = []
        for job in jobs:
            try:
                check_output(job.out, force)
                todo.append(job)
            except CliError as e:
                self.fail(e)
        return todo

    def fail(self, error: CliError) -> None:
        self.failures += 1
        self._write(lambda: print(f"lickd: error: {error}", file=sys.stderr))
        self.bar.update()

    def warn(self, source, message) -> None:
        if not self.args.quiet:
            where = f"{source}: " if source else ""
            self._write(lambda: print(f"lickd: {where}warning: {message}", file=sys.stderr))

    def done(self, line: str, record: dict) -> None:
        """One good file. When the reader of stdout has gone (``--json | head -1``), the records
        stop but the files are still all written: they are what the command is for."""
        if not self.reader_gone:
            try:
                self._write(lambda: (emit(self.args, line, record), sys.stdout.flush()))
            except BrokenPipeError:
                self.reader_gone = True
                discard_stdout()
        self.bar.update()

    # ------------------------------------------------------------------ the work
    def run(self, codec, jobs: list[Job], work: Callable[[Any, Job], tuple[str, dict]]) -> None:
        """``work(codec, job)`` for every job, over the workers that fit the machine; each
        result or error is reported in input order as it is known."""
        import torch

        largest = 0 if self.args.jobs or codec.device.type != "cpu" else max(map(pixels_of, jobs), default=0)
        workers, threads = workers_for(self.args.jobs, len(jobs), codec.device,
                                       file_peak_bytes(largest, codec.info.N) if largest else 0)
        if workers == 1:
            for job in jobs:
                self._report(job, lambda job=job: self._guarded(work, codec, job))
            return
        _warm_up(codec)
        previous = torch.get_num_threads()
        pool = ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(threads,))
        try:
            futures = [pool.submit(self._guarded, work, codec, job) for job in jobs]
            for job, future in zip(jobs, futures):
                self._report(job, future.result)
        finally:  # on Ctrl-C the files not started are dropped; those being coded finish
            pool.shutdown(wait=False, cancel_futures=True)
            torch.set_num_threads(previous)

    def _guarded(self, work, codec, job: Job):
        """The job's result, or the CliError that names its input (a bug too, as main reports
        one, unless LICKD_DEBUG asks for the traceback)."""
        from ..errors import LickdError

        self._local.job = job
        try:
            return work(codec, job)
        except CliError as e:
            return e
        except LickdError as e:
            return CliError(job.src, str(e))
        except Exception as e:
            if os.environ.get("LICKD_DEBUG"):
                raise
            return CliError(job.src, f"internal error ({type(e).__name__}: {e}); set LICKD_DEBUG=1 for the traceback")
        finally:
            self._local.job = None

    def _report(self, job: Job, result: Callable[[], Any]) -> None:
        outcome = result()
        for message in job.warnings:
            self.warn(job.src, message)
        if isinstance(outcome, CliError):
            self.fail(outcome)
        else:
            self.done(*outcome)

    def _show_warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        """A warning raised while a job runs stays with that job (each worker thread knows its
        own) and is printed with its result; any other is printed at once."""
        job = getattr(self._local, "job", None)
        if job is not None:
            job.warnings.append(message)
        else:
            self.warn(None, message)


class _WarningRouter(warnings.catch_warnings):
    """Every warning goes to ``show`` (as ``warnings.showwarning`` would), for the whole run and
    from every thread; restored on exit."""

    def __init__(self, show):
        super().__init__()
        self._show = show

    def __enter__(self):
        super().__enter__()
        warnings.simplefilter("always")
        warnings.showwarning = self._show
        return self


def _warm_up(codec) -> None:
    """Codes a tiny image once before the codec is shared between threads: the first call builds
    tables the model caches (the exact entropy-parameter layers, the coder's packed tables), and
    two threads building them at once could see a half-written cache."""
    import numpy as np

    codec.decompress(codec.compress(np.full((64, 64, 3), 128, np.uint8)), output="numpy")


__all__ = ["Batch", "Job", "file_peak_bytes", "jobs_for", "memory_available", "output_for", "output_paths",
           "workers_for"]
