#!/bin/bash
# A/B on CPU: bf16 autocast vs fp32 training, same fine-tune (q3 pilot teacher, lambda 0.0067, 2000 steps, seed 3).
cd /work/main
T=/work/runs/teacher128-q3/model.safetensors
COMMON="--set N=128 --set M=192 --set lmbda=0.0067 --set init=$T --set steps=2000 --set val_every=2000 --set seed=3"
OMP_NUM_THREADS=1 nice -n 19 /work/venv/bin/lickd train configs/cpu-pilot.toml $COMMON --set amp=false --set run_dir=/work/runs/ab/fp32 --set name=ab-fp32 > /work/runs/ab/fp32.log 2>&1 &
OMP_NUM_THREADS=1 nice -n 19 /work/venv/bin/lickd train configs/cpu-pilot.toml $COMMON --set amp=true --set run_dir=/work/runs/ab/amp --set name=ab-amp > /work/runs/ab/amp.log 2>&1 &
wait
