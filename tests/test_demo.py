"""Smoke test of the main-job demo path (tools/demo.sh) at a tiny scale.

1. tools/make_fashion_det.py builds a tiny FashionDet (16/8/8 images of 64x64 px);
2. tools/train.py trains configs/fashion/faster_rcnn_r18_fashion_rambo.py (RaMBO AP loss in the
   box head) for 4 iterations on it, validating at the end (CocoMetric + VOCMetric);
3. tools/test.py evaluates the checkpoint on the tiny test split;
4. tools/benchmark_quality.py's readers, table and plot run on those real logs (the benchmark's
   own --quick run trains 4 detectors and is too slow for the suite).

The demo's commands and config are used, only shrunk by --cfg-options (data root, 64 px input,
4 iterations). About 30-60 s on 2 CPU cores.
"""
import glob
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs', 'fashion', 'faster_rcnn_r18_fashion_rambo.py')
ITERS = 4


def _run(cmd, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS='2', PYTHONWARNINGS='ignore')
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f'{" ".join(cmd[:3])} ... exited {proc.returncode}\n--- output tail ---\n'
                    f'{(proc.stdout + proc.stderr)[-4000:]}')
    return proc


def _options(data_root):
    root = str(data_root).rstrip('/') + '/'
    return [
        f'data_root={root}',
        f'train_dataloader.dataset.data_root={root}',
        f'val_dataloader.dataset.data_root={root}',
        f'test_dataloader.dataset.data_root={root}',
        f'val_evaluator.0.ann_file={root}annotations/instances_val.json',
        f'test_evaluator.0.ann_file={root}annotations/instances_test.json',
        'train_dataloader.dataset.pipeline.2.scale=(64,64)',
        'val_dataloader.dataset.pipeline.1.scale=(64,64)',
        'test_dataloader.dataset.pipeline.1.scale=(64,64)',
        'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
        'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False',
        'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False',
        f'train_cfg.max_iters={ITERS}', f'train_cfg.val_interval={ITERS}',
        'param_scheduler.0.end=2', f'param_scheduler.1.end={ITERS}',
        'param_scheduler.1.milestones=[3]',
        f'default_hooks.checkpoint.interval={ITERS}', 'default_hooks.logger.interval=1',
        'log_processor.window_size=1', 'randomness.seed=0',
        # the configs start from data/pretrained/ (make pretrained, ~5 min): not needed for a
        # smoke run, and a fresh checkout lacks it (tests/test_pretrain.py covers the loading)
        'model.backbone.init_cfg=None',
    ]


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('fashion_tiny') / 'fashion_det'
    _run([sys.executable, osp.join(ROOT, 'tools', 'make_fashion_det.py'), '--small', '--out',
          str(root), '--img-size', '64', '--min-size', '8', '--max-size', '32',
          '--max-objects', '3', '--workers', '1', '--quiet'])
    return root


def test_generator_tiny_preset(tiny_data):
    for split, n in (('train', 16), ('val', 8), ('test', 8)):
        with open(tiny_data / 'annotations' / f'instances_{split}.json') as f:
            coco = json.load(f)
        assert len(coco['images']) == n
        assert coco['annotations'], split
        assert [c['id'] for c in coco['categories']] == list(range(1, 11))
        assert all(osp.isfile(tiny_data / 'images' / split / im['file_name'])
                   for im in coco['images'])
    assert (tiny_data / 'VOC2007' / 'ImageSets' / 'Main' / 'test.txt').is_file()


@pytest.fixture(scope='module')
def trained(tiny_data, tmp_path_factory):
    work = tmp_path_factory.mktemp('demo_work') / 'faster_rcnn_rambo'
    opts = _options(tiny_data)
    _run([sys.executable, osp.join(ROOT, 'tools', 'train.py'), CONFIG, '--work-dir', str(work),
          '--cfg-options'] + opts)
    ckpt = work / f'iter_{ITERS}.pth'
    assert ckpt.is_file(), sorted(os.listdir(work))
    _run([sys.executable, osp.join(ROOT, 'tools', 'test.py'), CONFIG, str(ckpt), '--work-dir',
          str(work / 'test'), '--cfg-options'] + opts)
    return work


def _benchmark_module():
    spec = importlib.util.spec_from_file_location(
        'benchmark_quality', osp.join(ROOT, 'tools', 'benchmark_quality.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_train_and_eval_rambo_faster_rcnn(trained):
    bq = _benchmark_module()
    rows = bq.read_scalars(str(trained))
    losses = [r for r in rows if 'loss' in r]
    assert len(losses) == ITERS
    assert all(r['loss'] == r['loss'] for r in losses), 'NaN training loss'  # NaN != NaN
    assert all('loss_cls' in r for r in losses)
    val = [r for r in rows if 'coco/bbox_mAP' in r]
    assert val and 'pascal_voc/mAP' in val[-1], 'validation must run CocoMetric and VOCMetric'

    metrics = bq.read_test_metrics(str(trained / 'test'))
    assert metrics is not None, 'tools/test.py wrote no metrics'
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75', 'pascal_voc/mAP'):
        assert key in metrics, key
        assert metrics[key] == -1.0 or 0.0 <= metrics[key] <= 1.0, (key, metrics[key])


def test_benchmark_table_and_plot_from_real_logs(trained, tmp_path):
    bq = _benchmark_module()
    args = bq.parse_args(['--detectors', 'faster_rcnn', '--seeds', '0', '--iters', str(ITERS),
                          '--extra-arms', '--work-root', str(tmp_path), '--out-dir',
                          str(tmp_path / 'out'), '--data-root', str(tmp_path)])
    assert bq.run_plan(args) == [('faster_rcnn', 'ce', 0), ('faster_rcnn', 'rambo', 0)]
    rows = bq.read_scalars(str(trained))
    metrics = bq.read_test_metrics(str(trained / 'test'))
    times = bq.iter_times(rows)
    assert times and all(t > 0 for t in times)
    runs = []
    for arm, offset in (('ce', 0.0), ('rambo', 2.0)):  # same logs, shifted metrics for the delta
        runs.append(dict(
            name=f'faster_rcnn_{arm}_s0', detector='faster_rcnn', arm=arm, seed=0,
            config='configs/fashion/x.py', status='ok', iter_time_median_s=0.5,
            test={label: 100.0 * max(metrics[key], 0.0) + offset for key, label in bq.METRICS},
            curves=dict(train=[r for r in rows if 'loss' in r],
                        val=[r for r in rows if 'coco/bbox_mAP' in r])))
    summary = bq.write_outputs(args, runs, dict(data_root=str(tmp_path)))
    delta = summary['deltas'][0]
    assert delta['AP50']['mean'] == pytest.approx(2.0)
    assert delta['time_ratio']['mean'] == pytest.approx(1.0)
    assert any(g['met'] for g in summary['goals'])
    out = tmp_path / 'out'
    assert (out / 'quality.json').is_file() and (out / 'quality_curves.png').stat().st_size > 0
    assert 'faster_rcnn' in (out / 'quality.md').read_text()


def test_demo_script_is_valid_bash():
    subprocess.run(['bash', '-n', osp.join(ROOT, 'tools', 'demo.sh')], check=True)
    assert glob.glob(osp.join(ROOT, 'configs', 'fashion', '*_rambo.py'))
