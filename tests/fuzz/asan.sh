#!/bin/bash
# The CPU coder under AddressSanitizer + UBSan: builds a sanitised lickd._rans into a temporary copy
# of the package (the installed one is untouched), then runs the coder's and the codec's damage tests
# and the long mutation fuzz (tests/fuzz/fuzz_rans.py) against it. Needs g++ and an installed lickd
# (for its dependencies); not part of CI (minutes, and ASan must be preloaded into Python).
#
#   bash tests/fuzz/asan.sh [SECONDS_OF_FUZZ=300] [SEED=0]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-python}
SECONDS_OF_FUZZ=${1:-300}
SEED=${2:-0}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cp -r "$ROOT/lickd" "$WORK/lickd"
rm -rf "$WORK/lickd/kernels" && cp -r "$ROOT/kernels" "$WORK/lickd/kernels"  # as installed: lickd.kernels
rm -f "$WORK"/lickd/_rans*.so
EXT=$($PY -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
g++ -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
    -shared -fPIC -std=c++17 -pthread -I"$ROOT/csrc" \
    -I"$($PY -c 'import pybind11; print(pybind11.get_include())')" \
    -I"$($PY -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" \
    "$ROOT"/csrc/{bindings,rans_cpu,rans_format,rans_tables}.cpp -o "$WORK/lickd/_rans$EXT"

export LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1  # Python's own allocations are not leaks to chase here
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONPATH="$WORK"
cd "$WORK"  # so that the repository's own lickd/ does not shadow the sanitised copy
$PY -c "import lickd._rans as r; assert r.__file__.startswith('$WORK'), r.__file__; print('sanitised:', r.__file__)"
$PY -m pytest -q -p no:cacheprovider "$ROOT/tests/test_rans.py" \
    "$ROOT/tests/test_codec.py" -k "rans or flipped or truncation or hostile or fuzzed or garbage or magic"
$PY "$ROOT/tests/fuzz/fuzz_rans.py" --seconds "$SECONDS_OF_FUZZ" --seed "$SEED"
