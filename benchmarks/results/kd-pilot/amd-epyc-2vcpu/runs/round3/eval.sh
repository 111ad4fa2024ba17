#!/bin/bash
# Round-3 teachers: export the ones the budget stopped (SIGTERM checkpoint), Kodak as one curve, report and plot.
set -e
cd /work/main
R=benchmarks/results/kodak/amd-epyc-2vcpu
L=/work/runs/ladder3
for q in q1 q3 q5; do
  grep -q '"stopped": false' $L/teacher128-$q/summary.json 2>/dev/null || \
    /work/venv/bin/lickd export $L/teacher128-$q -o $L/teacher128-$q/model.safetensors -f
done
/work/venv/bin/lickd eval ../shared/data/kodak --weights $L/teacher128-q1/model.safetensors \
  --weights $L/teacher128-q3/model.safetensors --weights $L/teacher128-q5/model.safetensors \
  --name "lickd teacher N=128 (CPU pilot)" -o $R/lickd-teacher128-pilot.json
/work/venv/bin/python benchmarks/report.py $R --plot $R/rd.png
for a in jpeg webp; do /work/venv/bin/lickd bd-rate $R/$a.json $R/lickd-teacher128-pilot.json; done
