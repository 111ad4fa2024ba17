#!/bin/bash
# KD pilot at lambda 0.0018, second seed of round 2: the same inits (round-1 students), the same teacher (round-2 q1),
# the same 6,000 steps, seed 6 instead of 5. bf16 autocast + channels_last, one thread each.
# As it ran: the KD run hit the 3,600 s budget at step 4676 (SIGTERM -> checkpoint) and was resumed with the
# same command plus --resume (from that SIGTERM checkpoint) to step 6000.
cd /work/main
T=/work/runs/ladder2/teacher128-q1/model.safetensors
COMMON="--set architecture=bmshj2018-hyperprior --set N=64 --set M=192 --set lmbda=0.0018 --set patch_size=128 --set batch_size=8 --set steps=${STEPS:-6000} --set val_every=0 --set ckpt_every=500 --set log_every=100 --set seed=6 --set amp=true --set channels_last=true"
for kind in kd nokd; do
  flag=""; [ $kind = nokd ] && flag="--no-kd"
  OMP_NUM_THREADS=1 nice -n 19 timeout --signal=TERM ${BUDGET:-3600} /work/venv/bin/lickd distill --teacher $T $flag $COMMON \
    --set init=/work/runs/student64-q1-$kind/model.safetensors --set run_dir=/work/runs/ladder3/student64-q1-$kind-seed6 \
    --set name=student-hyperprior-64-q1-$kind-seed6 > /work/runs/ladder3/student-$kind.log 2>&1 &
done
wait
