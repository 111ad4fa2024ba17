#!/usr/bin/env bash
# What a session with a lent GPU should run, in as few device calls as possible (GPU time is rare:
# about one task in twenty gets 30 minutes of it). Subcommands:
#
#   bash benchmarks/gpu_session.sh prepare      # here, on the CPU machine, before the first call
#       copies the training set and Kodak into data_carry/ (git-ignored) and downloads the cp312
#       wheels the GPU machine lacks (compressai, pytorch-msssim) into .whl/; carry both:
#       carry: ["data_carry", ".whl"]            (about 55 MB of the 64 MB allowed)
#
#   bash benchmarks/gpu_session.sh measure      # on the GPU machine, one call of about 9 minutes
#       builds lickd against that machine's torch, runs the GPU tests (CUDA coder, kernels at full
#       size), then the benchmarks, each writing JSON under $OUT: rans.json, kernels.json,
#       codec.json, train.json, resources.txt and session.log (8 files at most come back).
#
#   bash benchmarks/gpu_session.sh accuracy WEIGHTS   # on the GPU machine: Kodak through the reference
#       path and the fused kernels in bf16 and fp16 (the issue's 0.02 dB check), accuracy-*.json
#       under $OUT. A trained model does not fit beside the training set in one carry: carry
#       [".whl", "data_carry/kodak", "<folder with WEIGHTS>"] in this call.
#
#   bash benchmarks/gpu_session.sh train SECONDS [RUNS...]   # on the GPU machine, after measure
#       starts the named training runs (default: a teacher and two plain students at quality 3) in
#       parallel processes that outlive the call (setsid), each stopping itself after SECONDS
#       with a checkpoint, then holds the call for up to 9.5 minutes. The machine goes back 30 s
#       after a call ends (and after 30 minutes held), taking the runs with it, so keep it busy
#       with `... wait SECONDS` calls and finish with `... export` (fp16 students to $OUT).
#       TRAIN_SET="--set channels_last=true" (or "--set fused=true") adds overrides to every run:
#       pick the faster of bf16-nhwc and bf16-fused from measure's train.json.
#
# Results reported from here must name the device, torch/triton versions and the commit; the
# JSON files carry them.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}

install_there() {
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site
  fi
  python3 -m pip install -q --no-build-isolation --no-deps -e . || exit 1
}

case "${1:-}" in
prepare)
  mkdir -p data_carry
  cp -r ../shared/data/train data_carry/ && cp -r ../shared/data/kodak data_carry/
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    -d .whl compressai==1.2.8 pytorch-msssim==1.0.0
  du -sh data_carry .whl
  ;;
measure)
  LOG=$OUT/session.log
  { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; git rev-parse --short HEAD
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } 2>&1 | tee "$LOG"
  install_there >> "$LOG" 2>&1
  python3 -m pytest -q -p no:cacheprovider tests/test_rans_cuda.py tests/test_kernels.py tests/test_codec.py \
    tests/test_exact.py 2>&1 | tail -25 | tee -a "$LOG"
  python3 -m lickd.kernels.resources --split > "$OUT/resources.txt" 2>&1
  python3 benchmarks/bench_rans.py --json "$OUT/rans.json" 2>&1 | tee -a "$LOG"
  python3 benchmarks/bench_kernels.py --autotune-cache "$OUT/autotune.json" --json "$OUT/kernels.json" 2>&1 | tail -40 | tee -a "$LOG"
  python3 benchmarks/bench_codec.py --kodak data_carry/kodak --N 64 --M 192 --json "$OUT/codec.json" 2>&1 \
    | tee -a "$LOG"
  python3 benchmarks/bench_train.py --data data_carry/train --json "$OUT/train.json" 2>&1 | tee -a "$LOG"
  ;;
accuracy)
  WEIGHTS=${2:?weights file}
  install_there > /dev/null 2>&1
  for fused in none bf16 fp16; do
    flags=(); [ "$fused" = none ] || flags=(--fused "$fused")
    python3 -m lickd.cli eval data_carry/kodak --weights "$WEIGHTS" --device cuda "${flags[@]}" --quiet \
      -o "$OUT/accuracy-$fused.json" || exit 1
  done
  python3 benchmarks/report.py --against "$OUT/accuracy-none.json" "$OUT/accuracy-bf16.json" "$OUT/accuracy-fp16.json"
  ;;
train)
  SECONDS_BUDGET=${2:?seconds of training}
  shift 2
  RUNS=("$@")
  # Distillation needs a finished teacher, so a first GPU session trains teachers and plain
  # students; `lickd distill` (and its --no-kd control) follows once a teacher exists.
  [ ${#RUNS[@]} -gt 0 ] || RUNS=(teacher-q3 student64-q3 student32-q3)
  install_there > /dev/null 2>&1
  mkdir -p runs
  for run in "${RUNS[@]}"; do
    case "$run" in  # quality 3: lambda 0.0067 (CompressAI's MSE ladder)
      teacher-q3) args=(--set N=128 --set M=192) ;;
      student64-q3) args=(--set N=64 --set M=192) ;;
      student32-q3) args=(--set N=32 --set M=96) ;;
      *) echo "unknown run $run"; exit 2 ;;
    esac
    setsid nohup timeout --signal=TERM "$SECONDS_BUDGET" python3 -m lickd.cli train --quiet "${args[@]}" \
      --set data=data_carry/train --set val_data=data_carry/kodak --set lmbda=0.0067 --set amp=true \
      --set run_dir="runs/$run" --set steps=200000 --set val_every=2000 --set ckpt_every=2000 ${TRAIN_SET:-} \
      > "runs/$run.log" 2>&1 < /dev/null &
  done
  sleep $(( SECONDS_BUDGET < 570 ? SECONDS_BUDGET + 5 : 570 )); tail -n 3 runs/*/metrics.jsonl
  ;;
wait)
  sleep "${2:?seconds}"; tail -n 3 runs/*/metrics.jsonl
  ;;
export)
  for run in runs/*/; do
    name=$(basename "$run")
    [ -f "$run/checkpoint.safetensors" ] && python3 -m lickd.cli export "$run" --half -o "$OUT/$name.safetensors"
  done
  tail -n 5 runs/*/metrics.jsonl > "$OUT/metrics-tail.txt" 2>&1
  ls -la "$OUT"
  ;;
*)
  sed -n 2,30p "$0"
  exit 2
  ;;
esac
