"""Quality A/B benchmark: RaMBO AP loss vs the stock classification loss on FashionDet.

Trains each twin of ``configs/fashion/`` (identical but for the classification loss) with the
same seeds, data and schedule, sequentially, through ``tools/train.py``; evaluates the final
checkpoint on the test split through ``tools/test.py`` (COCO mAP / AP50 / AP75 and VOC mAP); and
writes under ``--out-dir`` (default ``results/quality/``):

- ``quality.json``: every run (metrics, iteration times, paths) and the summary;
- ``quality.md``: the table (mean and spread over seeds, RaMBO - stock paired deltas, the
  training iteration time ratio RaMBO / stock measured in this run) and the goals;
- ``quality_curves.png``: training loss and validation mAP curves, read from mmengine's
  ``vis_data/scalars.json`` of every run.

Twins::

    faster_rcnn: faster_rcnn_r18_fashion_ce.py     vs faster_rcnn_r18_fashion_rambo.py
    retinanet:   retinanet_r18_fashion_focal.py    vs retinanet_r18_fashion_rambo.py
    atss:        atss_r18_fashion_focal.py         vs atss_r18_fashion_rambo.py
    fcos:        fcos_r18_fashion_focal.py         vs fcos_r18_fashion_rambo.py

Extra arms (ablations, first seed only): ``--extra-arms paper`` (default): both RaMBO twins with
the paper's exact loss (``mode='paper'``: lambda 0.5, margin 0.15, tau 7); ``paper_margin0``:
the same with margin 0; ``sigmoid``: the RaMBO Faster R-CNN ranking sigmoid(logits).

Runs go seed by seed (both twins of a detector back to back, so they see the same machine load),
and the outputs are rewritten after every run: an interrupted benchmark still leaves a table of
what finished, and ``--skip-existing`` re-uses finished runs of the same settings.

Examples::

    python tools/benchmark_quality.py --jobs 2             # the full benchmark (~1.5 h, 2 cores)
    python tools/benchmark_quality.py --quick              # smoke: tiny data, 4 iterations
    python tools/benchmark_quality.py --detectors faster_rcnn --seeds 0 1 2 --iters 1500 \\
        --cfg-options optim_wrapper.optimizer.lr=0.01
"""
import argparse
import concurrent.futures
import datetime
import glob
import json
import math
import os
import os.path as osp
import re
import shutil
import statistics
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
#: where tools/, configs/ and rambo_mmdet/ are taken from (a frozen copy with --snapshot)
CODE_ROOT = ROOT

#: detector -> (stock arm, RaMBO arm); arm -> config file.
TWINS = {
    'faster_rcnn': ('ce', 'rambo'),
    'retinanet': ('focal', 'rambo'),
    'atss': ('focal', 'rambo'),
    'fcos': ('focal', 'rambo'),
}
CONFIGS = {
    ('faster_rcnn', 'ce'): 'faster_rcnn_r18_fashion_ce.py',
    ('faster_rcnn', 'rambo'): 'faster_rcnn_r18_fashion_rambo.py',
    ('faster_rcnn', 'rambo_sigmoid'): 'faster_rcnn_r18_fashion_rambo.py',
    ('faster_rcnn', 'rambo_paper'): 'faster_rcnn_r18_fashion_rambo.py',
    ('faster_rcnn', 'rambo_paper_margin0'): 'faster_rcnn_r18_fashion_rambo.py',
    ('retinanet', 'rambo_paper'): 'retinanet_r18_fashion_rambo.py',
    ('retinanet', 'rambo_paper_margin0'): 'retinanet_r18_fashion_rambo.py',
    ('retinanet', 'focal'): 'retinanet_r18_fashion_focal.py',
    ('retinanet', 'rambo'): 'retinanet_r18_fashion_rambo.py',
    ('atss', 'focal'): 'atss_r18_fashion_focal.py',
    ('atss', 'rambo'): 'atss_r18_fashion_rambo.py',
    ('fcos', 'focal'): 'fcos_r18_fashion_focal.py',
    ('fcos', 'rambo'): 'fcos_r18_fashion_rambo.py',
}
#: cfg-options of the extra arms (on top of their config).
_FRCNN_LOSS = 'model.roi_head.bbox_head.loss_cls.'
_RETINA_LOSS = 'model.bbox_head.loss_cls.'
#: the paper's exact loss (mode='paper': lambda 0.5, margin 0.15), and the same with margin 0
_PAPER = ['mode=paper', 'lambda_val=None', 'margin=None', 'balanced_gain=None',
          'memory_batches=7']
_PAPER_MARGIN0 = ['mode=paper', 'lambda_val=None', 'margin=0.0', 'balanced_gain=None',
                  'memory_batches=7']
ARM_OPTIONS = {
    ('faster_rcnn', 'rambo_sigmoid'): [_FRCNN_LOSS + 'score_activation=sigmoid'],
    ('faster_rcnn', 'rambo_paper'): [_FRCNN_LOSS + o for o in _PAPER],
    ('faster_rcnn', 'rambo_paper_margin0'): [_FRCNN_LOSS + o for o in _PAPER_MARGIN0],
    ('retinanet', 'rambo_paper'): [_RETINA_LOSS + o for o in _PAPER],
    ('retinanet', 'rambo_paper_margin0'): [_RETINA_LOSS + o for o in _PAPER_MARGIN0],
}
#: --extra-arms name -> the (detector, arm) pairs it adds (first seed only; ablations)
EXTRA_ARMS = {
    'sigmoid': [('faster_rcnn', 'rambo_sigmoid')],
    'paper': [('faster_rcnn', 'rambo_paper'), ('retinanet', 'rambo_paper')],
    'paper_margin0': [('faster_rcnn', 'rambo_paper_margin0'),
                      ('retinanet', 'rambo_paper_margin0')],
}

#: test metric keys (mmdet: fractions) -> table names (reported in points, x100).
METRICS = [('coco/bbox_mAP', 'mAP'), ('coco/bbox_mAP_50', 'AP50'), ('coco/bbox_mAP_75', 'AP75'),
           ('pascal_voc/mAP', 'VOC mAP')]
#: Goals from the project brief: (detector, metric, minimum RaMBO - stock delta in points).
GOALS = [('faster_rcnn', 'AP50', 1.0), ('retinanet', 'mAP', 0.0), ('retinanet', 'AP50', 0.0),
         ('atss', 'mAP', 0.0), ('fcos', 'mAP', 0.0)]
#: iteration time RaMBO / stock at most this (a training cost below the noise of a shared machine)
TIME_RATIO_GOAL = 1.05
#: below this test mAP (points) in both arms, a quality goal is reported as n/a (nothing learned)
NO_LEARNING_MAP = 0.5


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--detectors', nargs='+', choices=sorted(TWINS),
                   default=['faster_rcnn', 'retinanet'])
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2], help='seeds of every twin')
    p.add_argument('--retinanet-seeds', nargs='+', type=int, default=None,
                   help='seeds of the RetinaNet twins (default: --seeds)')
    p.add_argument('--extra-arms', nargs='*', choices=sorted(EXTRA_ARMS), default=['paper'],
                   help='extra RaMBO variants, trained with the first seed only (after the twins)')
    p.add_argument('--iters', type=int, default=1500, help='training iterations of every run')
    p.add_argument('--val-interval', type=int, default=None,
                   help="validation every N iterations (mAP curves; default: iters // 4)")
    p.add_argument('--warmup', type=int, default=None,
                   help='linear warm-up iterations (default: min(100, iters // 8))')
    p.add_argument('--work-root', default=osp.join('work_dirs', 'quality'),
                   help='one work dir per run under it')
    p.add_argument('--out-dir', default=None,
                   help='where the table / plot go (default: results/quality, with --quick: '
                   'WORK_ROOT/results)')
    p.add_argument('--data-root', default=None,
                   help='FashionDet root (default: data/fashion_det, built if missing; with '
                   '--quick: a tiny set under WORK_ROOT)')
    p.add_argument('--threads', type=int, default=1,
                   help='OMP/torch threads of each run (1: on a CPU shared with other jobs, 2 '
                   'threads were measured 10x slower than 1)')
    p.add_argument('--arms', nargs='+', default=None,
                   help='train only these arms (e.g. ce focal: the stock arms first); the table '
                   'pairs them with finished runs of the other arms via --skip-existing')
    p.add_argument('--jobs', type=int, default=1,
                   help='runs trained at the same time (e.g. 2 on 2 cores with --threads 1)')
    p.add_argument('--cfg-options', nargs='+', default=[],
                   help='key=value overrides passed to every train and test run')
    p.add_argument('--rambo-cfg-options', nargs='+', default=None,
                   help='key=value overrides for the RaMBO arms only, after --cfg-options (e.g. '
                   "an SGD recipe's box-head loss: model.roi_head.bbox_head.loss_cls."
                   'cross_entropy=softmax)')
    p.add_argument('--load-from', default=None,
                   help='warm start: initialise every run from this checkpoint (e.g. a stock-loss '
                   'run of this benchmark); the classification layers (fc_cls / retina_cls) are '
                   'dropped from it first, so all arms start from the same weights with a fresh '
                   'classifier (their shapes differ between losses anyway)')
    p.add_argument('--snapshot', action='store_true',
                   help='copy rambo_mmdet/, tools/ and configs/ to WORK_ROOT/snapshot first and '
                   'run from that copy (a long benchmark is then immune to edits of the checkout); '
                   'with --skip-existing an existing snapshot is kept')
    p.add_argument('--skip-existing', action='store_true',
                   help='re-use runs whose work dir already holds a finished run of the same '
                   'settings')
    p.add_argument('--report-only', action='store_true',
                   help='train nothing: rebuild the table and plot from the finished runs under '
                   'WORK_ROOT (their benchmark_run.json)')
    p.add_argument('--quick', action='store_true',
                   help='smoke run: tiny data, 4 iterations, first seed, no extra arm')
    args = p.parse_args(argv)
    if args.quick:
        args.iters = 4 if args.iters == p.get_default('iters') else args.iters
        args.seeds = args.seeds[:1]
        args.retinanet_seeds = None
        args.extra_arms = []
        args.out_dir = args.out_dir or osp.join(args.work_root, 'results')
        args.data_root = args.data_root or osp.join(args.work_root, 'data_tiny')
    args.out_dir = args.out_dir or osp.join('results', 'quality')
    args.data_root = args.data_root or osp.join('data', 'fashion_det')
    if args.val_interval is None:
        args.val_interval = max(1, args.iters // 4)
    if args.warmup is None:
        args.warmup = max(1, min(100, args.iters // 8))
    if args.retinanet_seeds is None:
        args.retinanet_seeds = list(args.seeds)
    return args


def log(msg):
    print(f'[benchmark_quality {time.strftime("%H:%M:%S")}] {msg}', flush=True)


# ----------------------------------------------------------------------------- data
def ensure_data(args):
    root = args.data_root
    ann = osp.join(root, 'annotations', 'instances_test.json')
    if osp.isfile(ann):
        return
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'make_fashion_det.py'), '--out', root,
           '--quiet']
    if args.quick:
        cmd.append('--small')
    log(f'building FashionDet under {root}: {" ".join(cmd)}')
    subprocess.run(cmd, check=True, cwd=ROOT)


def data_options(root):
    root = root.rstrip('/') + '/'
    opts = [f'data_root={root}']
    opts += [f'{split}_dataloader.dataset.data_root={root}' for split in ('train', 'val', 'test')]
    opts += [f'val_evaluator.0.ann_file={root}annotations/instances_val.json',
             f'test_evaluator.0.ann_file={root}annotations/instances_test.json']
    return opts


#: state-dict keys of the classification layers (dropped from a --load-from checkpoint)
CLS_LAYER_KEYS = ('bbox_head.fc_cls.', 'bbox_head.retina_cls.')


def make_warm_start(src, work_root):
    """Copy of checkpoint ``src`` without optimizer state and classification layers."""
    import torch
    ckpt = torch.load(src, map_location='cpu', weights_only=False)
    state = ckpt.get('state_dict', ckpt)
    kept = {k: v for k, v in state.items() if not any(c in k for c in CLS_LAYER_KEYS)}
    dst = osp.abspath(osp.join(work_root, 'warm_start.pth'))
    torch.save(dict(state_dict=kept, meta=dict(source=osp.abspath(src),
                                               dropped=sorted(set(state) - set(kept)))), dst)
    log(f'warm start {dst}: {len(kept)} tensors from {src}, dropped '
        f'{sorted(set(state) - set(kept))}')
    return dst


def schedule_options(args):
    n = args.iters
    return [f'train_cfg.max_iters={n}', f'train_cfg.val_interval={args.val_interval}',
            f'param_scheduler.0.end={args.warmup}', f'param_scheduler.1.end={n}',
            f'param_scheduler.1.milestones=[{int(0.75 * n)},{int(0.9 * n)}]',
            f'default_hooks.checkpoint.interval={n}', 'default_hooks.checkpoint.max_keep_ckpts=1',
            f'default_hooks.logger.interval={max(1, min(20, n // 10))}',
            f'log_processor.window_size={max(1, min(20, n // 10))}']


# ----------------------------------------------------------------------------- one run
def run_plan(args):
    plan = []
    seeds = []
    for s in list(args.seeds) + list(args.retinanet_seeds):
        if s not in seeds:
            seeds.append(s)
    for seed in seeds:
        for det in args.detectors:
            det_seeds = args.retinanet_seeds if det == 'retinanet' else args.seeds
            if seed in det_seeds:
                plan += [(det, arm, seed) for arm in TWINS[det]]
    for extra in args.extra_arms:
        for det, arm in EXTRA_ARMS[extra]:
            if det in args.detectors:
                det_seeds = args.retinanet_seeds if det == 'retinanet' else args.seeds
                plan.append((det, arm, det_seeds[0]))
    if args.arms:
        plan = [p for p in plan if p[1] in args.arms]
    return plan


def _run(cmd, log_file, env):
    with open(log_file, 'w') as f:
        f.write(' '.join(cmd) + '\n\n')
        f.flush()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    return proc.returncode


def _tail(path, n=30):
    try:
        with open(path, errors='replace') as f:
            return ''.join(f.readlines()[-n:])
    except OSError:
        return ''


def read_scalars(work_dir):
    """The training run's ``vis_data/scalars.json`` lines (the newest run under work_dir)."""
    files = sorted(glob.glob(osp.join(work_dir, '2*', 'vis_data', 'scalars.json')))
    if not files:
        return []
    rows = []
    with open(files[-1]) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass
    return rows


def read_test_metrics(test_dir):
    """Metrics that tools/test.py (mmengine's LoggerHook) dumped to <ts>/<ts>.json."""
    files = sorted(glob.glob(osp.join(test_dir, '2*', '2*.json')))
    for path in reversed(files):
        with open(path) as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
        for line in reversed(lines):
            row = json.loads(line)
            if any(k in row for k, _ in METRICS):
                return row
    return None


def curves_from_scalars(rows, val_interval=None, max_iters=None):
    """Training loss and validation metric curves from scalars.json rows.

    Validation rows carry ``step`` = epoch (0) unless the logger hook logs metrics by iteration
    (``log_metric_by_epoch=False``); such rows get the iteration of the training row logged
    just before them, rounded up to the next multiple of ``val_interval`` (at most
    ``max_iters``), where validation actually ran."""
    train, val, last_step = [], [], 0
    for r in rows:
        if 'loss' in r:
            train.append({k: r[k] for k in ('step', 'loss', 'loss_cls', 'lr') if k in r})
            last_step = r.get('step', last_step)
        elif 'coco/bbox_mAP' in r or 'pascal_voc/mAP' in r:
            point = {k: r[k] for k in ['step'] + [m for m, _ in METRICS] if k in r}
            if point.get('step', 0) < last_step:
                step = last_step
                if val_interval:
                    step = -(-step // val_interval) * val_interval
                    step = min(step, max_iters) if max_iters else step
                point['step'] = step
            val.append(point)
    return dict(train=train, val=val)


def iter_times(rows):
    """Per-log-window mean iteration times (s) of the training, warm-up window excluded."""
    times = [(r['step'], r['time']) for r in rows if 'time' in r and 'loss' in r]
    return [t for i, (_, t) in enumerate(times) if i > 0] or [t for _, t in times]


def arm_cfg_options(settings, arm):
    """The benchmark-level cfg-options of a run of ``arm`` under ``settings``: ``--cfg-options``,
    then, for a RaMBO arm (``rambo``, ``rambo_*``), ``--rambo-cfg-options``."""
    options = list(settings.get('cfg_options') or [])
    if arm.startswith('rambo'):
        options += list(settings.get('rambo_cfg_options') or [])
    return options


def run_one(args, det, arm, seed, env, settings):
    name = f'{det}_{arm}_s{seed}'
    wd = osp.join(args.work_root, name)
    record_file = osp.join(wd, 'benchmark_run.json')
    if args.skip_existing and osp.isfile(record_file):
        with open(record_file) as f:
            rec = json.load(f)
        done = rec.get('settings') or {}
        # settings added by later versions of this script count as equal when unused (None)
        same = all(done.get(k) == v for k, v in settings.items()
                   if not (v is None and k not in done))
        if same and rec.get('status') == 'ok':
            log(f'{name}: re-using the finished run in {wd}')
            rows = read_scalars(wd)
            if rows:
                rec['curves'] = curves_from_scalars(rows, args.val_interval, args.iters)
            return rec
    if osp.isdir(wd):
        shutil.rmtree(wd)
    os.makedirs(wd)
    config = osp.join(CODE_ROOT, 'configs', 'fashion', CONFIGS[(det, arm)])
    opts = (data_options(args.data_root) + schedule_options(args) + ARM_OPTIONS.get((det, arm), [])
            + [f'randomness.seed={seed}']
            + ([f'load_from={args.warm_start}'] if args.warm_start else [])
            + arm_cfg_options(settings, arm))
    rec = dict(name=name, detector=det, arm=arm, seed=seed,
               config=osp.join('configs', 'fashion', CONFIGS[(det, arm)]),
               work_dir=wd, settings=settings, cfg_options=opts, status='failed')

    log(f'{name}: training {args.iters} iterations ({osp.basename(config)})')
    t0 = time.time()
    rc = _run([sys.executable, osp.join(CODE_ROOT, 'tools', 'train.py'), config, '--work-dir', wd,
               '--cfg-options'] + opts, osp.join(wd, 'train.log'), env)
    rec['train_wall_s'] = round(time.time() - t0, 1)
    if rc != 0:
        rec['error'] = f'train exited {rc}: {osp.join(wd, "train.log")}'
        log(f'{name}: TRAINING FAILED (exit {rc}); last lines of {wd}/train.log:\n'
            f'{_tail(osp.join(wd, "train.log"))}')
        return rec
    ckpt = osp.join(wd, f'iter_{args.iters}.pth')
    rows = read_scalars(wd)
    times = iter_times(rows)
    rec['iter_time_median_s'] = statistics.median(times) if times else None
    rec['iter_time_mean_s'] = statistics.fmean(times) if times else None
    rec['curves'] = curves_from_scalars(rows, args.val_interval, args.iters)

    log(f'{name}: trained in {rec["train_wall_s"]:.0f} s (median iteration '
        f'{rec["iter_time_median_s"] or float("nan"):.3f} s); testing {osp.basename(ckpt)}')
    t0 = time.time()
    test_dir = osp.join(wd, 'test')
    rc = _run([sys.executable, osp.join(CODE_ROOT, 'tools', 'test.py'), config, ckpt, '--work-dir',
               test_dir, '--cfg-options'] + opts, osp.join(wd, 'test.log'), env)
    rec['test_wall_s'] = round(time.time() - t0, 1)
    metrics = read_test_metrics(test_dir) if rc == 0 else None
    if metrics is None:
        rec['error'] = f'test exited {rc} / no metrics: {osp.join(wd, "test.log")}'
        log(f'{name}: TEST FAILED (exit {rc}); last lines of {wd}/test.log:\n'
            f'{_tail(osp.join(wd, "test.log"))}')
        return rec
    rec['test'] = {label: 100.0 * float(metrics[key]) for key, label in METRICS if key in metrics}
    rec['status'] = 'ok'
    log(f'{name}: ' + ', '.join(f'{k} {v:.1f}' for k, v in rec['test'].items()))
    with open(record_file, 'w') as f:
        json.dump(rec, f, indent=1)
    return rec


# ----------------------------------------------------------------------------- summary
def _mean_sd(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None, 0
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None,
            len(values))


def _fmt(mean, sd, digits=1):
    if mean is None:
        return '-'
    return f'{mean:.{digits}f}' + (f' ± {sd:.{digits}f}' if sd is not None else '')


#: twins whose trainings started within this many seconds of each other ran side by side
SIDE_BY_SIDE_S = 120


def train_start(run):
    """When the run's training started: its first mmengine timestamp folder (``YYYYMMDD_HHMMSS``
    under the work dir) as a datetime, or None."""
    wd = run.get('work_dir')
    if not wd or not osp.isdir(wd):
        return None
    stamps = sorted(d for d in os.listdir(wd) if re.fullmatch(r'\d{8}_\d{6}', d))
    return datetime.datetime.strptime(stamps[0], '%Y%m%d_%H%M%S') if stamps else None


def side_by_side(a, b):
    """Whether two runs trained at the same time (so their iteration times share the load)."""
    start_a, start_b = train_start(a), train_start(b)
    return (start_a is not None and start_b is not None
            and abs((start_a - start_b).total_seconds()) <= SIDE_BY_SIDE_S)


def summarize(args, runs):
    ok = [r for r in runs if r.get('status') == 'ok']
    arms = {}
    for r in ok:
        arms.setdefault((r['detector'], r['arm']), []).append(r)
    summary = dict(arms=[], deltas=[], time_ratios=[], goals=[])
    for (det, arm), rs in sorted(arms.items()):
        entry = dict(detector=det, arm=arm, config=rs[0]['config'], seeds=[r['seed'] for r in rs])
        for _, label in METRICS:
            m, sd, n = _mean_sd([r['test'].get(label) for r in rs])
            entry[label] = dict(mean=m, sd=sd, n=n, values=[r['test'].get(label) for r in rs])
        m, sd, _ = _mean_sd([r.get('iter_time_median_s') for r in rs])
        entry['iter_time_s'] = dict(mean=m, sd=sd)
        summary['arms'].append(entry)

    for det in args.detectors:
        stock, rambo_arms = TWINS[det][0], [a for (d, a) in arms if d == det and a != TWINS[det][0]]
        base = {r['seed']: r for r in arms.get((det, stock), [])}
        for arm in sorted(rambo_arms):
            pairs = [(base[r['seed']], r) for r in arms[(det, arm)] if r['seed'] in base]
            if not pairs:
                continue
            d = dict(detector=det, arm=arm, versus=stock, seeds=[b['seed'] for b, _ in pairs])
            for _, label in METRICS:
                m, sd, n = _mean_sd([r['test'][label] - b['test'][label] for b, r in pairs])
                d[label] = dict(mean=m, sd=sd, n=n)
            ratios = [r['iter_time_median_s'] / b['iter_time_median_s'] for b, r in pairs
                      if r.get('iter_time_median_s') and b.get('iter_time_median_s')]
            m, sd, n = _mean_sd(ratios)
            d['time_ratio'] = dict(mean=m, sd=sd, n=n, values=ratios)
            together = [(b, r) for b, r in pairs if side_by_side(b, r)
                        and r.get('iter_time_median_s') and b.get('iter_time_median_s')]
            ratios = [r['iter_time_median_s'] / b['iter_time_median_s'] for b, r in together]
            m, sd, n = _mean_sd(ratios)
            d['time_ratio_side_by_side'] = dict(mean=m, sd=sd, n=n, values=ratios,
                                                seeds=[b['seed'] for b, _ in together])
            summary['deltas'].append(d)
    for det, label, minimum in GOALS:
        d = next((x for x in summary['deltas'] if x['detector'] == det and x['arm'] == 'rambo'),
                 None)
        if d is None:
            continue
        got = d[label]['mean']
        stock_map = next((e['mAP']['mean'] for e in summary['arms']
                          if e['detector'] == det and e['arm'] == d['versus']), None)
        rambo_map = next((e['mAP']['mean'] for e in summary['arms']
                          if e['detector'] == det and e['arm'] == 'rambo'), None)
        # a comparison of two detectors that both failed to learn says nothing about the loss
        meaningful = max(stock_map or 0.0, rambo_map or 0.0) >= NO_LEARNING_MAP
        goal = dict(goal=f'{det}: RaMBO - {d["versus"]} {label} >= {minimum:+.1f}', value=got,
                    met=(got is not None and got >= minimum) if meaningful else None)
        if not meaningful:
            goal['not_judged'] = f'n/a (neither arm learned: mAP < {NO_LEARNING_MAP})'
        summary['goals'].append(goal)
        # only twins that trained side by side share the machine's load: the goal is judged on
        # their ratio; without such a pair the ratio of all pairs is shown but not judged
        together = d.get('time_ratio_side_by_side') or {}
        tr = together.get('mean') if together.get('n') else d['time_ratio']['mean']
        which = (f' (side by side, seeds {",".join(map(str, together["seeds"]))})'
                 if together.get('n') else ' (all pairs)')
        if not any(g['goal'].startswith(f'{det}: iteration time') for g in summary['goals']):
            goal = dict(goal=f'{det}: iteration time RaMBO / {d["versus"]} <= '
                        f'{TIME_RATIO_GOAL:.2f}{which}', value=tr,
                        met=(tr is not None and tr <= TIME_RATIO_GOAL) if together.get('n')
                        else None)
            if goal['met'] is None:
                goal['not_judged'] = ('n/a (no twins trained side by side: the runs saw '
                                      'different machine loads)')
            summary['goals'].append(goal)
    return summary


def write_markdown(args, runs, summary, path, settings):
    lines = ['# Quality A/B: RaMBO AP loss vs stock classification loss (FashionDet, CPU)', '',
             f'Generated by `tools/benchmark_quality.py` on {time.strftime("%Y-%m-%d %H:%M")}. '
             f'Test split ({settings["data_root"]}), {settings.get("iters", args.iters)} training '
             f'iterations per run, '
             f'configs in `configs/fashion/`; cfg-options: '
             f'`{" ".join(settings.get("cfg_options", args.cfg_options)) or "none"}`'
             + (f'; RaMBO arms only: `{" ".join(settings["rambo_cfg_options"])}`'
                if settings.get('rambo_cfg_options') else '') + '.'
             + (f' **Warm start**: every run initialised from `{settings["load_from"]}` minus '
                f'its classification layer (fresh classifier in every arm).'
                if settings.get('load_from') else ' Backbone and heads as the configs initialise '
                'them (classification-pretrained backbone, fresh heads; no warm start).'),
             'Metrics in points (x100): COCO mAP@[.5:.95], AP50, AP75 (CocoMetric) and VOC mAP '
             '(VOCMetric, IoU 0.5, area mode). mean ± sample std over seeds (no ± with one '
             'seed). Iteration time: median of the logged per-window means of a run (mmengine '
             '`time`, data loading included), machine shared with other jobs: the time ratio '
             'compares like with like only when the twins of a seed ran side by side (one '
             'invocation, `--jobs 2`).', '',
             '| detector | arm | seeds | mAP | AP50 | AP75 | VOC mAP | iter time (s) |',
             '|---|---|---|---|---|---|---|---|']
    other = []  # a report assembled from runs of several invocations (--report-only)
    for r in runs:
        run_options = arm_cfg_options(r.get('settings') or settings, r['arm'])
        header = arm_cfg_options(settings, r['arm'])
        added = [o for o in run_options if o not in header]
        dropped = [o for o in header if o not in run_options]
        if added or dropped:
            other.append(f'{r["name"]}' + (f' plus `{" ".join(added)}`' if added else '')
                         + (f' without `{" ".join(dropped)}`' if dropped else ''))
    if other:
        lines[3:3] = ['Runs trained with other cfg-options: ' + '; '.join(other) + '.']
    for e in summary['arms']:
        lines.append(f'| {e["detector"]} | {e["arm"]} | {",".join(map(str, e["seeds"]))} | '
                     + ' | '.join(_fmt(e[l]['mean'], e[l]['sd']) for _, l in METRICS)
                     + f' | {_fmt(e["iter_time_s"]["mean"], e["iter_time_s"]["sd"], 3)} |')
    lines += ['', '## RaMBO - stock (paired by seed)', '',
              '| detector | arm vs stock | seeds | Δ mAP | Δ AP50 | Δ AP75 | Δ VOC mAP | '
              'iter time ratio | iter time ratio, side by side (seeds) |',
              '|---|---|---|---|---|---|---|---|---|']
    for d in summary['deltas']:
        tr, together = d['time_ratio'], d.get('time_ratio_side_by_side') or {}
        lines.append(f'| {d["detector"]} | {d["arm"]} vs {d["versus"]} | '
                     f'{",".join(map(str, d["seeds"]))} | '
                     + ' | '.join(_fmt(d[l]['mean'], d[l]['sd']) for _, l in METRICS)
                     + f' | {_fmt(tr["mean"], tr["sd"], 3)} | '
                     + (f'{_fmt(together["mean"], together["sd"], 3)} '
                        f'({",".join(map(str, together["seeds"]))})' if together.get('n')
                        else '-') + ' |')
    lines += ['', '## Goals', '', '| goal | value | met |', '|---|---|---|']
    for g in summary['goals']:
        v = '-' if g['value'] is None else f'{g["value"]:.3f}' if 'time' in g['goal'] \
            else f'{g["value"]:+.1f}'
        met = g['not_judged'] if g['met'] is None else 'yes' if g['met'] else 'NO'
        lines.append(f'| {g["goal"]} | {v} | {met} |')
    lines += ['', '## Runs', '', '| run | status | mAP | AP50 | AP75 | VOC mAP | median iter (s) '
              '| train wall (s) |', '|---|---|---|---|---|---|---|---|']
    for r in runs:
        t = r.get('test', {})
        lines.append(f'| {r["name"]} | {r["status"]} | '
                     + ' | '.join(f'{t[l]:.1f}' if l in t else '-' for _, l in METRICS)
                     + f' | {r.get("iter_time_median_s") or 0:.3f} '
                     f'| {r.get("train_wall_s", "-")} |')
    lines += ['', '![curves](quality_curves.png)', '']
    with open(path, 'w') as f:
        f.write('\n'.join(lines))


def plot_curves(runs, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    ok = [r for r in runs if r.get('status') == 'ok' and r.get('curves')]
    dets = sorted({r['detector'] for r in ok})
    if not dets:
        return False
    panels = [('loss', 'train', 'training loss (total)'),
              ('loss_cls', 'train', 'training loss_cls'),
              ('coco/bbox_mAP', 'val', 'val COCO mAP'),
              ('pascal_voc/mAP', 'val', 'val VOC mAP')]
    fig, axes = plt.subplots(len(dets), len(panels), figsize=(4.2 * len(panels), 3.2 * len(dets)),
                             squeeze=False)
    colors = {}
    palette = ['tab:blue', 'tab:red', 'tab:green', 'tab:orange', 'tab:purple']
    for i, det in enumerate(dets):
        for j, (key, kind, title) in enumerate(panels):
            ax = axes[i][j]
            for r in (x for x in ok if x['detector'] == det):
                pts = [(p['step'], p[key]) for p in r['curves'][kind] if key in p]
                if not pts:
                    continue
                color = colors.setdefault(r['arm'], palette[len(colors) % len(palette)])
                xs, ys = zip(*pts)
                if kind == 'val':
                    ys = [100.0 * y for y in ys]
                ax.plot(xs, ys, color=color, alpha=0.8, lw=1.2,
                        marker='o' if kind == 'val' else None, ms=3,
                        label=f'{r["arm"]} s{r["seed"]}')
            ax.set_title(f'{det}: {title}', fontsize=9)
            ax.set_xlabel('iteration', fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def write_outputs(args, runs, settings):
    os.makedirs(args.out_dir, exist_ok=True)
    summary = summarize(args, runs)
    slim = [{k: v for k, v in r.items() if k != 'curves'} for r in runs]
    with open(osp.join(args.out_dir, 'quality.json'), 'w') as f:
        json.dump(dict(settings=settings, summary=summary, runs=slim,
                       curves={r['name']: r.get('curves') for r in runs}), f, indent=1)
    write_markdown(args, runs, summary, osp.join(args.out_dir, 'quality.md'), settings)
    plot_curves(runs, osp.join(args.out_dir, 'quality_curves.png'))
    return summary


def make_snapshot(work_root, reuse=False):
    """Copy the code a run uses to WORK_ROOT/snapshot (or, with ``reuse``, keep the one already
    there, so that a resumed benchmark runs the same code); return (root, fingerprint)."""
    import hashlib
    snap = osp.abspath(osp.join(work_root, 'snapshot'))
    if not (reuse and osp.isdir(osp.join(snap, 'rambo_mmdet'))):
        if osp.isdir(snap):
            shutil.rmtree(snap)
        ignore = shutil.ignore_patterns('__pycache__', '*.pyc')
        for sub in ('rambo_mmdet', 'tools', 'configs'):
            shutil.copytree(osp.join(ROOT, sub), osp.join(snap, sub), ignore=ignore)
    digest = hashlib.sha1()
    for dirpath, _, files in sorted(os.walk(osp.join(snap, 'rambo_mmdet'))):
        for name in sorted(files):
            with open(osp.join(dirpath, name), 'rb') as f:
                digest.update(name.encode() + f.read())
    return snap, digest.hexdigest()[:12]


def main(argv=None):
    global CODE_ROOT
    args = parse_args(argv)
    os.makedirs(args.work_root, exist_ok=True)
    fingerprint = args.warm_start = None
    if not args.report_only:
        ensure_data(args)
        if args.load_from:
            args.warm_start = make_warm_start(args.load_from, args.work_root)
    if args.snapshot and not args.report_only:
        CODE_ROOT, fingerprint = make_snapshot(args.work_root, reuse=args.skip_existing)
        log(f'running from the snapshot {CODE_ROOT} (rambo_mmdet sha1 {fingerprint})')
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONUNBUFFERED='1')
    settings = dict(iters=args.iters, val_interval=args.val_interval, warmup=args.warmup,
                    data_root=args.data_root, cfg_options=list(args.cfg_options),
                    rambo_cfg_options=args.rambo_cfg_options,
                    threads=args.threads, quick=args.quick, snapshot=fingerprint,
                    load_from=args.load_from)
    plan = run_plan(args)
    if args.report_only:
        runs = []
        for det, arm, seed in plan:
            path = osp.join(args.work_root, f'{det}_{arm}_s{seed}', 'benchmark_run.json')
            if osp.isfile(path):
                with open(path) as f:
                    rec = json.load(f)
                rows = read_scalars(osp.dirname(path))
                done = rec.get('settings') or {}
                if rows:
                    rec['curves'] = curves_from_scalars(rows, done.get('val_interval'),
                                                        done.get('iters'))
                runs.append(rec)
            else:
                log(f'no finished run {path}: left out')
        if runs and runs[0].get('settings'):
            settings = runs[0]['settings']
        write_outputs(args, runs, settings)
        with open(osp.join(args.out_dir, 'quality.md')) as f:
            print(f.read())
        return 0
    log(f'{len(plan)} runs, {args.iters} iterations each, work root {args.work_root}: '
        + ', '.join(f'{d}/{a}/s{s}' for d, a, s in plan))
    done, t_start = {}, time.time()
    # --jobs N: N runs at a time (each a subprocess with --threads threads), started in plan
    # order, so the two twins of a seed run side by side and see the same machine load
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_one, args, det, arm, seed, env, settings): k
                   for k, (det, arm, seed) in enumerate(plan)}
        for future in concurrent.futures.as_completed(futures):
            done[futures[future]] = future.result()
            runs = [done[k] for k in sorted(done)]
            write_outputs(args, runs, settings)
            elapsed = time.time() - t_start
            log(f'{len(done)}/{len(plan)} runs done in {elapsed / 60:.1f} min (about '
                f'{elapsed / len(done) * (len(plan) - len(done)) / 60:.0f} min left)')
    runs = [done[k] for k in sorted(done)]
    summary = write_outputs(args, runs, settings)
    with open(osp.join(args.out_dir, 'quality.md')) as f:
        print(f.read())
    failed = [r['name'] for r in runs if r.get('status') != 'ok']
    log(f'outputs: {args.out_dir}/quality.json, quality.md, quality_curves.png')
    if failed:
        log(f'FAILED runs: {", ".join(failed)}')
        return 1
    del summary
    return 0


if __name__ == '__main__':
    sys.exit(main())
