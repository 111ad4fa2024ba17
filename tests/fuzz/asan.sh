#!/bin/bash
# The CPU coder and the integer convolutions under AddressSanitizer + UBSan: builds sanitised
# lickd._rans and lickd._intconv into a temporary copy of the package (the installed one is
# untouched), then runs the coder's and the codec's damage tests, the exact entropy parameters'
# tests and the long mutation fuzz (tests/fuzz/fuzz_rans.py) against them. Needs g++ and an installed lickd
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
rm -f "$WORK"/lickd/_rans*.so "$WORK"/lickd/_intconv*.so
EXT=$($PY -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
sanitised() {  # OUTPUT SOURCES...
  local out=$1
  shift
  g++ -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
      -shared -fPIC -std=c++17 -pthread -I"$ROOT/csrc" \
      -I"$($PY -c 'import pybind11; print(pybind11.get_include())')" \
      -I"$($PY -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" \
      "$@" -o "$WORK/lickd/$out$EXT"
}
sanitised _rans "$ROOT"/csrc/{bindings,rans_cpu,rans_format,rans_tables}.cpp
sanitised _intconv "$ROOT"/csrc/{int_conv_bindings,int_conv}.cpp

export LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1  # Python's own allocations are not leaks to chase here
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONPATH="$WORK"
cd "$WORK"  # so that the repository's own lickd/ does not shadow the sanitised copy
for m in _rans _intconv; do
  $PY -c "import lickd.$m as r; assert r.__file__.startswith('$WORK'), r.__file__; print('sanitised:', r.__file__)"
done
$PY -m pytest -q -p no:cacheprovider "$ROOT/tests/test_rans.py" \
    "$ROOT/tests/test_codec.py" -k "rans or flipped or truncation or hostile or fuzzed or garbage or magic"
$PY -m pytest -q -p no:cacheprovider "$ROOT/tests/test_exact.py"
$PY "$ROOT/tests/fuzz/fuzz_rans.py" --seconds "$SECONDS_OF_FUZZ" --seed "$SEED"
