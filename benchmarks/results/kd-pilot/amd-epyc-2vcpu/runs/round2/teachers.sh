#!/bin/bash
# Teacher ladder, second CPU round: each lambda continues from its previous model, bf16 autocast + channels_last
# (half the ms per step of fp32 on this CPU: results/train/amd-epyc-2vcpu-1thread.json), one thread each, in parallel. Ran as: STEPS=9000 ./teachers.sh
cd /work/main
for spec in "q1 0.0018 /work/runs/teacher128-q1/model.safetensors" \
            "q3 0.0067 /work/runs/ab/amp/model.safetensors" \
            "q5 0.0250 /work/runs/teacher128-q5/model.safetensors"; do
  set -- $spec
  OMP_NUM_THREADS=1 nice -n 19 timeout --signal=TERM 5700 /work/venv/bin/lickd train configs/cpu-pilot.toml \
    --set N=128 --set M=192 --set lmbda=$2 --set init=$3 --set steps=${STEPS:-9000} --set val_every=0 --set seed=4 \
    --set amp=true --set channels_last=true --set run_dir=/work/runs/ladder2/teacher128-$1 \
    --set name=teacher-hyperprior-128-$1 > /work/runs/ladder2/$1.log 2>&1 &
done
wait
