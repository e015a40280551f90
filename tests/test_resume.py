"""End-to-end resume with our tools on the embedded data, under torch >= 2.6 (weights_only).

Train 4 iterations with a checkpoint every 2, then resume from ``iter_2.pth`` in a new work dir:
the resumed run must load the checkpoint (mmengine Runner checkpoints hold numpy scalars and
HistoryBuffers, refused by torch's default unpickler without rambo_mmdet.compat), continue at
iteration 3 and stop at 4, with finite losses of the size the first run had there.
"""
import json
import os.path as osp
import sys

import pytest
from test_demo import CONFIG, ROOT, _options, _run

ITERS = 4


@pytest.fixture(scope='module')
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('fashion_resume') / 'fashion_det'
    _run([sys.executable, osp.join(ROOT, 'tools', 'make_fashion_det.py'), '--small', '--out',
          str(root), '--img-size', '64', '--min-size', '8', '--max-size', '32',
          '--max-objects', '3', '--workers', '1', '--quiet'])
    return root


def _train_losses(work_dir):
    """``{iteration: loss}`` from mmengine's scalars.json of a run."""
    (path, ) = [p for p in _scalar_files(work_dir)]
    losses = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if 'loss' in row:
                losses[row['iter']] = row['loss']
    return losses


def _scalar_files(work_dir):
    import glob
    return glob.glob(osp.join(str(work_dir), '*', 'vis_data', 'scalars.json'))


def test_resume_continues_from_the_checkpoint(tiny_data, tmp_path):
    options = _options(tiny_data) + ['default_hooks.checkpoint.interval=2',
                                     'train_cfg.val_interval=100']
    first = tmp_path / 'first'
    _run([sys.executable, osp.join(ROOT, 'tools', 'train.py'), CONFIG, '--work-dir', str(first),
          '--cfg-options'] + options)
    assert (first / 'iter_2.pth').is_file() and (first / 'iter_4.pth').is_file()

    second = tmp_path / 'resumed'
    proc = _run([sys.executable, osp.join(ROOT, 'tools', 'train.py'), CONFIG, '--work-dir',
                 str(second), '--resume', str(first / 'iter_2.pth'), '--cfg-options'] + options)
    log = proc.stdout + proc.stderr
    assert 'resumed epoch: 0, iter: 2' in log, log[-3000:]

    before, after = _train_losses(first), _train_losses(second)
    assert sorted(before) == [1, 2, 3, 4]
    assert sorted(after) == [3, 4], 'the resumed run must continue at iteration 3'
    for it in (3, 4):
        assert after[it] == after[it]  # not NaN
        assert 0.2 * before[it] < after[it] < 5.0 * before[it], (it, before, after)
    assert (second / 'iter_4.pth').is_file()
