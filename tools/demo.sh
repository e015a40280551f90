#!/usr/bin/env bash
# rambo_mmdet main-job demo (`make demo`): Faster R-CNN R18-FPN trained with the RaMBO AP loss in
# its box head on FashionDet (Fashion-MNIST garments pasted on 256x256 canvases, 10 classes), on
# the CPU, from a classification-pretrained backbone with fresh heads (the paper's regime; no
# cross-entropy warm-up), then evaluated on the test split with COCO mAP and VOC mAP.
#
#   1. build data/fashion_det/ if missing (tools/make_fashion_det.py, default sizes, ~30 s)
#   2. build the classification-pretrained backbone data/pretrained/resnet18_half_fashion.pth if
#      missing or made with another recipe (tools/pretrain_backbone.py, ~6.5 min once; the fashion
#      configs' backbones start from it)
#   3. train configs/fashion/faster_rcnn_r18_fashion_rambo.py through tools/train.py for
#      DEMO_ITERS (default 600) iterations: pretrained backbone, fresh heads, RaMBOAPLoss with
#      its default mode in the box head
#   4. evaluate the final checkpoint on the test split through tools/test.py
#   5. draw its detections next to the ground truth on 4 test images (tools/draw_detections.py,
#      mmdet's visualiser threshold 0.3) -> WORK_DIR/detections.png
#   6. print COCO mAP / AP50 / AP75 and VOC mAP, and where the checkpoint, logs and picture are
# Measured: 7.5 minutes on the idle 2-core machine once data and backbone are cached (one thread;
# plus ~6.5 minutes for the backbone the first time); DEMO_ITERS=1000: 10.9 minutes, mAP 27.9.
#
# Environment: RAMBO_VENV (default .venv) the Python env; DEMO_ITERS iterations;
# DEMO_WORK_DIR (default work_dirs/demo_faster_rcnn_rambo); DEMO_THREADS (default 1).
# Exits non-zero if any step fails.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${RAMBO_VENV:-.venv}"
PY="$VENV/bin/python"
CONFIG=configs/fashion/faster_rcnn_r18_fashion_rambo.py
ITERS="${DEMO_ITERS:-600}"
WORK_DIR="${DEMO_WORK_DIR:-work_dirs/demo_faster_rcnn_rambo}"
# Threads: 1 by default. Measured on the 2-core box: 0.30 s per iteration with 2 threads when
# idle, but 2-7 s when other jobs start using the cores (threads wait for each other), against
# ~0.4-0.6 s with 1 thread. DEMO_THREADS=2 on a machine you have to yourself.
THREADS="${DEMO_THREADS:-1}"
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" PYTHONUNBUFFERED=1
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore}"

say() { printf '\n=== [demo %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fail() { printf '\n*** demo FAILED: %s\n' "$*" >&2; exit 1; }

# run_logged LOG CMD...: run CMD with its full output in LOG, showing only the progress lines
# (iterations, checkpoints, evaluation results, errors); on failure show the log's last lines.
run_logged() {
    local log="$1"; shift
    mkdir -p "$(dirname "$log")"
    set +e
    "$@" 2>&1 | tee "$log" | grep --line-buffered -E \
        'Iter\((train|test)\)|Saving checkpoint|bbox_mAP_copypaste|Error|error:' \
        | sed -u -E 's/^[0-9/]+ ([0-9:]+) - mmengine - [A-Z]+ - /    \1 /; s/  +/ /g; s/^(.{160}).*/\1/'
    local rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" -ne 0 ]; then
        echo "--- last lines of $log ---" >&2
        tail -n 25 "$log" >&2
    fi
    return "$rc"
}

# schedule N: cfg-options of the config's schedule scaled to N iterations (linear warm-up, lr x0.1
# at 75% and 90%, checkpoint at the end, no validation: the test split is evaluated at the end).
schedule() {
    local n="$1" warm m1 m2 logi
    warm=$(( n / 8 < 100 ? n / 8 : 100 )); [ "$warm" -ge 1 ] || warm=1
    m1=$(( n * 3 / 4 )); m2=$(( n * 9 / 10 ))
    logi=$(( n / 10 < 20 ? n / 10 : 20 )); [ "$logi" -ge 1 ] || logi=1
    echo "train_cfg.max_iters=$n param_scheduler.0.end=$warm param_scheduler.1.end=$n" \
         "param_scheduler.1.milestones=[$m1,$m2] default_hooks.checkpoint.interval=$n" \
         "default_hooks.logger.interval=$logi log_processor.window_size=$logi randomness.seed=0" \
         "val_cfg=None val_dataloader=None val_evaluator=None"
}

[ -x "$PY" ] || fail "no Python env at $VENV (run 'make env' or 'bash tools/setup_env.sh')"
case "$ITERS" in ''|*[!0-9]*) fail "DEMO_ITERS must be a positive integer, got '$ITERS'";; esac
[ "$ITERS" -gt 0 ] || fail "DEMO_ITERS must be > 0"

START=$(date +%s)
say "1/6 data: FashionDet under data/fashion_det/ (built if missing, else checked up to date)"
"$PY" tools/make_fashion_det.py --quiet || fail "could not build data/fashion_det (tools/make_fashion_det.py)"

say "2/6 pretrained backbone: data/pretrained/resnet18_half_fashion.pth (trained if missing, ~6.5 min once)"
"$PY" tools/pretrain_backbone.py --threads 1 --log-every 100 \
    || fail "could not build data/pretrained/resnet18_half_fashion.pth (tools/pretrain_backbone.py)"

say "3/6 training Faster R-CNN R18-FPN + RaMBOAPLoss for $ITERS iterations on the CPU ($THREADS thread(s)): pretrained backbone, fresh heads"
echo "    config:      $CONFIG"
echo "    work dir:    $WORK_DIR"
echo "    full output: $WORK_DIR/demo_train.log"
# shellcheck disable=SC2046
run_logged "$WORK_DIR/demo_train.log" \
    "$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" --cfg-options $(schedule "$ITERS") \
    || fail "training failed (full output: $WORK_DIR/demo_train.log)"
CKPT="$WORK_DIR/iter_${ITERS}.pth"
[ -f "$CKPT" ] || fail "training ended without the checkpoint $CKPT"

say "4/6 evaluating $CKPT on the test split (500 images, CocoMetric + VOCMetric)"
TEST_DIR="$WORK_DIR/test"
echo "    full output: $WORK_DIR/demo_test.log"
run_logged "$WORK_DIR/demo_test.log" \
    "$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$TEST_DIR" \
    || fail "evaluation failed (full output: $WORK_DIR/demo_test.log)"

say "5/6 drawing detections on 4 test images"
PICTURE="$WORK_DIR/detections.png"
"$PY" tools/draw_detections.py "$CONFIG" "$CKPT" --out "$PICTURE" --num-images 4 2>&1 \
    | grep -v -i warn | tail -n 1 || fail "could not draw the detections (tools/draw_detections.py)"

say "6/6 results (RaMBO Faster R-CNN, test split)"
"$PY" - "$WORK_DIR" "$TEST_DIR" "$CKPT" "$START" "$ITERS" "$PICTURE" <<'EOF' || fail "no test metrics found under $TEST_DIR"
import glob, json, os.path as osp, sys, time
work_dir, test_dir, ckpt, start, iters, picture = sys.argv[1:7]
metrics = None
for path in sorted(glob.glob(osp.join(test_dir, '2*', '2*.json'))):
    for line in open(path).read().splitlines():
        if line.strip():
            row = json.loads(line)
            if 'coco/bbox_mAP' in row:
                metrics = row
if metrics is None:
    sys.exit(1)
logs = sorted(glob.glob(osp.join(work_dir, '2*', '2*.log')))
print(f"  training:          {iters} RaMBO iterations from the pretrained backbone")
print(f"  COCO mAP@[.5:.95]  {100 * metrics['coco/bbox_mAP']:5.1f}")
print(f"  COCO AP50          {100 * metrics['coco/bbox_mAP_50']:5.1f}")
print(f"  COCO AP75          {100 * metrics['coco/bbox_mAP_75']:5.1f}")
if 'pascal_voc/mAP' in metrics:
    print(f"  VOC mAP (IoU 0.5)  {100 * metrics['pascal_voc/mAP']:5.1f}")
print(f"  checkpoint:        {ckpt}")
print(f"  detections:        {picture}  (left: ground truth, right: detections)")
print(f"  training log:      {logs[-1] if logs else work_dir}  (full output: {work_dir}/demo_train.log)")
print(f"  loss scalars:      {work_dir}/<timestamp>/vis_data/scalars.json")
print(f"  test metrics:      {sorted(glob.glob(osp.join(test_dir, '2*', '2*.json')))[-1]}")
print(f"  total time:        {(time.time() - float(start)) / 60:.1f} min")
EOF
say "demo finished OK"
