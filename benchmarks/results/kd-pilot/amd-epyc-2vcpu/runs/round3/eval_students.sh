#!/bin/bash
# Kodak for the seed-6 KD pair at lambda 0.0018 (same inits, teacher and steps as round 2, seed 6).
set -e
cd /work/main
R=benchmarks/results/kd-pilot/amd-epyc-2vcpu/q1-round2-seed6
L=/work/runs/ladder3
mkdir -p $R
E="/work/venv/bin/lickd eval ../shared/data/kodak --quiet"
$E --weights $L/student64-q1-kd-seed6/model.safetensors --name "student N=64, KD, 6k + 6k steps, seed 6" -o $R/student64-kd.json
$E --weights $L/student64-q1-nokd-seed6/model.safetensors --name "student N=64, no KD, 6k + 6k steps, seed 6" -o $R/student64-nokd.json
cp benchmarks/results/kd-pilot/amd-epyc-2vcpu/q1-round2/teacher128.json $R/teacher128.json
/work/venv/bin/python benchmarks/report.py benchmarks/results/kodak/amd-epyc-2vcpu/jpeg.json $R --lmbda 0.0018
