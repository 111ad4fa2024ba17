#!/bin/bash
# KD pilot at lambda 0.0018, round 2: both students continue from their 6k-step round-1 models for the same steps,
# the KD one now distilled from the round-2 q1 teacher; bf16 autocast + channels_last, one thread each.
# Ran as: STEPS=6000 BUDGET=2400 ./students.sh (both finished their 6,000 steps).
cd /work/main
T=/work/runs/ladder2/teacher128-q1/model.safetensors
COMMON="--set architecture=bmshj2018-hyperprior --set N=64 --set M=192 --set lmbda=0.0018 --set patch_size=128 --set batch_size=8 --set steps=${STEPS:-6000} --set val_every=0 --set ckpt_every=500 --set log_every=100 --set seed=5 --set amp=true --set channels_last=true"
for kind in kd nokd; do
  flag=""; [ $kind = nokd ] && flag="--no-kd"
  OMP_NUM_THREADS=1 nice -n 19 timeout --signal=TERM ${BUDGET:-2400} /work/venv/bin/lickd distill --teacher $T $flag $COMMON \
    --set init=/work/runs/student64-q1-$kind/model.safetensors --set run_dir=/work/runs/ladder2/student64-q1-$kind \
    --set name=student-hyperprior-64-q1-$kind > /work/runs/ladder2/student-$kind.log 2>&1 &
done
wait
