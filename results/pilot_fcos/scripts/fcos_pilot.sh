#!/bin/bash
# one arm: train 4500 iterations (RetinaNet twins' schedule and options, seed $2), then test
arm=$1; seed=$2
cd /work/main
OPTS=$(.venv/bin/python -c "import json;print(' '.join(json.load(open('work_dirs/quality_long/retinanet_focal_s0/benchmark_run.json'))['cfg_options'][:-1]))")
wd=work_dirs/pilot_fcos/fcos_${arm}_s${seed}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
start=$(date +%s)
.venv/bin/python tools/train.py work_dirs/pilot_fcos/fcos_r18_fashion_${arm}.py --work-dir $wd --cfg-options $OPTS randomness.seed=$seed > $wd.train.log 2>&1 || { echo "train failed" >> $wd.train.log; exit 1; }
echo "train_wall_s $(( $(date +%s) - start ))" >> $wd.train.log
.venv/bin/python tools/test.py work_dirs/pilot_fcos/fcos_r18_fashion_${arm}.py $wd/iter_4500.pth --work-dir $wd/test --cfg-options $OPTS > $wd.test.log 2>&1
echo done >> $wd.test.log
