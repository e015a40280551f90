"""Iteration time of a detector's twins side by side: both configs start together, one thread
each, seed SEED (default 0), the first 400 iterations of the benchmark's schedule (4500
iterations; Faster R-CNN 1500, whose stock arm is cross-entropy) with its data and schedule
options; per-window (20 iterations) mean iteration time from mmengine's scalars.json.
Nothing else should run meanwhile. Usage (repository root):
    python results/quality_atss/scripts/timing.py atss|fcos|faster_rcnn OUT.json [SEED]"""
import json, os, os.path as osp, statistics, subprocess, sys, glob

det, out = sys.argv[1], sys.argv[2]
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
iters = 400
stock = 'ce' if det == 'faster_rcnn' else 'focal'
schedule = 1500 if det == 'faster_rcnn' else 4500
opts = ['data_root=data/fashion_det/'] + [
    f'{k}.dataset.data_root=data/fashion_det/'
    for k in ('train_dataloader', 'val_dataloader', 'test_dataloader')] + [
    'val_evaluator.0.ann_file=data/fashion_det/annotations/instances_val.json',
    'test_evaluator.0.ann_file=data/fashion_det/annotations/instances_test.json',
    f'train_cfg.max_iters={iters}', 'train_cfg.val_interval=100000',
    'param_scheduler.0.end=100', f'param_scheduler.1.end={schedule}',
    f'param_scheduler.1.milestones=[{int(0.75 * schedule)},{int(0.9 * schedule)}]',
    'default_hooks.checkpoint.interval=100000',
    'default_hooks.logger.interval=20', 'log_processor.window_size=20', f'randomness.seed={seed}']
env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
procs, dirs = {}, {}
for arm in (stock, 'rambo'):
    wd = dirs[arm] = f'work_dirs/timing/{det}_{arm}_s{seed}'
    procs[arm] = subprocess.Popen(
        [sys.executable, 'tools/train.py', f'configs/fashion/{det}_r18_fashion_{arm}.py',
         '--work-dir', wd, '--cfg-options', *opts], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
assert all(p.wait() == 0 for p in procs.values())
runs = {}
for arm, wd in dirs.items():
    path = sorted(glob.glob(osp.join(wd, '*', 'vis_data', 'scalars.json')))[-1]
    times = [json.loads(line)['time'] for line in open(path) if '"time"' in line
             and 'loss' in line]
    runs[arm] = dict(work_dir=wd, window_means_s=times, median_s=statistics.median(times))
ratio = runs['rambo']['median_s'] / runs[stock]['median_s']
json.dump(dict(description=' '.join(__doc__.split('\n')[:4]),
               detector=det, seed=seed, iterations=iters, runs=runs,
               **{f'ratio_rambo_over_{stock}': ratio}),
          open(out, 'w'), indent=1)
print(det, 'seed', seed, {a: round(r['median_s'], 4) for a, r in runs.items()}, 'ratio', round(ratio, 3))
