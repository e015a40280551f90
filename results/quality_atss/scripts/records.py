"""Write benchmark_run.json for the runs trained by work_dirs/<detector>/arm.sh (the same command
line as tools/benchmark_quality.py's run_one: its data and schedule options for 4500
iterations), so that `benchmark_quality.py --report-only --detectors <detector>` tabulates them.
Usage: python results/quality_atss/scripts/records.py atss|fcos (from the repository root)."""
import json, os, os.path as osp, re, statistics, sys
sys.path.insert(0, 'tools')
import benchmark_quality as bq

det = sys.argv[1] if len(sys.argv) > 1 else 'atss'

template = json.load(open('work_dirs/quality_long/retinanet_focal_s0/benchmark_run.json'))
for arm in ('focal', 'rambo'):
    for seed in (0, 1, 2):
        name = f'{det}_{arm}_s{seed}'
        wd = osp.join('work_dirs', det, name)
        test_dir = osp.join(wd, 'test')
        metrics = bq.read_test_metrics(test_dir) if osp.isdir(test_dir) else None
        if metrics is None:
            print('not finished', name)
            continue
        log = open(wd + '.train.log').read()
        wall = float(re.search(r'train_wall_s (\d+)', log).group(1))
        rows = bq.read_scalars(wd)
        times = bq.iter_times(rows)
        rec = dict(name=name, detector=det, arm=arm, seed=seed,
                   config=f'configs/fashion/{det}_r18_fashion_{arm}.py', work_dir=wd,
                   settings=template['settings'],
                   cfg_options=template['cfg_options'][:-1] + [f'randomness.seed={seed}'],
                   status='ok', train_wall_s=wall,
                   iter_time_median_s=statistics.median(times),
                   iter_time_mean_s=statistics.fmean(times), test_wall_s=None,
                   test={label: 100.0 * float(metrics[key]) for key, label in bq.METRICS
                         if key in metrics})
        json.dump(rec, open(osp.join(wd, 'benchmark_run.json'), 'w'), indent=1)
        print(name, rec['test'], round(rec['iter_time_median_s'], 3))
