#!/bin/bash
# Teacher ladder, third CPU round: each lambda continues from its round-2 model, bf16 autocast + channels_last,
# one thread each, three in parallel on the two vCPUs (beside the seed-6 KD pair for its first ~75 min).
# As it ran: the 6,600 s budget was lifted at about 4,000 steps (the timeout processes were killed) so that all three
# finished their 10,000 steps.
cd /work/main
for spec in "q1 0.0018" "q3 0.0067" "q5 0.0250"; do
  set -- $spec
  OMP_NUM_THREADS=1 nice -n 19 timeout --signal=TERM ${BUDGET:-6600} /work/venv/bin/lickd train configs/cpu-pilot.toml \
    --set N=128 --set M=192 --set lmbda=$2 --set init=/work/runs/ladder2/teacher128-$1/model.safetensors \
    --set steps=${STEPS:-10000} --set val_every=0 --set seed=7 \
    --set amp=true --set channels_last=true --set run_dir=/work/runs/ladder3/teacher128-$1 \
    --set name=teacher-hyperprior-128-$1 > /work/runs/ladder3/$1.log 2>&1 &
done
wait
