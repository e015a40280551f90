"""tools/calibrate.py end to end on CPU on a tiny FashionDet Faster R-CNN (~35 s on 2 cores):
``--fit val`` (the default) and ``--fit train --mode per_class``.

The checkpoint is the FashionDet RaMBO Faster R-CNN config built with random weights (no
training, ResNet-18 without pretrained weights) and ``calibration=None``, saved in mmengine's
checkpoint format: a checkpoint trained without the map, the tool's main use. A random detector
finds almost nothing, so its validation / test annotations are replaced by *oracle* ones: the
boxes and labels of its own detections ranked 2nd, 5th and 10th in each image. About 3 % of its
detections are then correct, at scores ~0.52 (``sigmoid`` of near-zero logits): badly
miscalibrated, with correct and wrong detections interleaved in score (a finite logistic fit)
and a non-zero COCO AP.

Asserted: the tool exits 0; writes the ``--json`` report and the ``--out`` checkpoint; the map
fitted on all validation detections (score_thr 0, although the config's is higher) differs from
the identity and is stored in the checkpoint (state dict and ``meta``), which loads into the
config's model with that map and otherwise the input weights; with and without the map the
detections at score_thr 0 are identical and COCO AP is the same, while the ECE drops. And the
``--fit train --mode per_class`` path runs, writes one map per class, all moved down. The
report's ``below`` (what a score_thr gives up) matches the thresholded run, and ``--fit none``
reports a detector without a map as it is.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

import rambo_mmdet  # noqa: F401  (registers the losses)
from test_demo import CONFIG, ROOT, _options

CALIBRATE = osp.join(ROOT, 'tools', 'calibrate.py')
LOSS = 'roi_head.bbox_head.loss_cls'
#: the detections of each image (by descending score) that the oracle annotations make correct
ORACLE_RANKS = (1, 4, 9)


def _cfg_options(data_root, score_thr):
    """``_options`` of the demo test (data paths, 64 px images, no workers), the split files
    replaced by the oracle annotations, and the config's score_thr set to ``score_thr``."""
    return _options(data_root) + [
        'val_dataloader.dataset.ann_file=annotations/oracle_val.json',
        'test_dataloader.dataset.ann_file=annotations/oracle_test.json',
        f'model.test_cfg.rcnn.score_thr={score_thr}']


def _parse_options(options):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(['--cfg-options', *options]).cfg_options


def _detect(model, cfg, split):
    """Per image of ``split``: (img_id, boxes, labels, scores), at score_thr 0."""
    from mmengine.runner import Runner
    loader_cfg = cfg[f'{split}_dataloader']
    out = []
    with torch.no_grad():
        for batch in Runner.build_dataloader(loader_cfg, seed=0):
            for sample in model.test_step(batch):
                pred = sample.pred_instances
                out.append((sample.img_id, pred.bboxes, pred.labels, pred.scores))
    return out


def _write_oracle(data_root, split, detections):
    """The split's annotation file with each image's boxes replaced by its detections ranked
    :data:`ORACLE_RANKS`."""
    with open(osp.join(data_root, 'annotations', f'instances_{split}.json')) as f:
        coco = json.load(f)
    cat_ids = [c['id'] for c in coco['categories']]
    annotations = []
    for img_id, boxes, labels, scores in detections:
        order = torch.sort(scores, descending=True, stable=True).indices
        for rank in ORACLE_RANKS:
            x1, y1, x2, y2 = boxes[order[rank]].tolist()
            annotations.append(dict(id=len(annotations) + 1, image_id=img_id,
                                    category_id=cat_ids[int(labels[order[rank]])],
                                    bbox=[x1, y1, x2 - x1, y2 - y1],
                                    area=(x2 - x1) * (y2 - y1), iscrowd=0))
    coco['annotations'] = annotations
    with open(osp.join(data_root, 'annotations', f'oracle_{split}.json'), 'w') as f:
        json.dump(coco, f)


def _calibrate(ckpt, *args, check=True):
    """Run tools/calibrate.py (one thread); with ``check``, fails the test unless it exits 0."""
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, CALIBRATE, CONFIG, ckpt, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def random_detector(tmp, config, options=(), edit=None):
    """(data root, cfg, model): a tiny FashionDet under ``tmp`` (the 64 px preset of the other
    FashionDet tests, 2 training images) and ``config``'s detector with random weights (seed 0,
    no pretrained backbone: see ``_options``; eval mode); ``edit(cfg)`` may change the config
    first."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from rambo_mmdet.cli import load_config
    from rambo_mmdet.data.fashion_det import FashionDetConfig, build_fashion_det

    data_root = str(tmp / 'fashion_det')
    build_fashion_det(data_root, FashionDetConfig.preset(
        'small', num_train=2, img_width=64, img_height=64, min_size=8, max_size=32,
        max_objects=3), workers=1, progress=False, log=lambda *_: None)
    register_all_modules()
    cfg = load_config(config, cfg_options=_parse_options(_options(data_root) + list(options)))
    if edit is not None:
        edit(cfg)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()
    return data_root, cfg, model


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """(data root, checkpoint path, val detections, model state) of the random detector."""
    from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu

    tmp = tmp_path_factory.mktemp('calibrate_tool')

    def trained_without_the_map(cfg):
        cfg.model.roi_head.bbox_head.loss_cls.calibration = None

    data_root, cfg, model = random_detector(tmp, CONFIG, ['model.test_cfg.rcnn.score_thr=0.0'],
                                            trained_without_the_map)
    state = weights_to_cpu(model.state_dict())
    assert not any('calib' in key for key in state)
    path = str(tmp / 'random.pth')
    save_checkpoint(dict(meta=dict(note='random weights'), state_dict=state), path)
    val = None
    for split in ('val', 'test'):
        detections = _detect(model, cfg, split)
        assert all(len(scores) > max(ORACLE_RANKS) for _, _, _, scores in detections)
        _write_oracle(data_root, split, detections)
        val = detections if split == 'val' else val
    return data_root, path, val, state


def test_fit_val_writes_the_map_and_keeps_the_detections(checkpoint, tmp_path):
    from mmengine.runner import load_checkpoint

    from mmdet.registry import MODELS
    from rambo_mmdet.cli import load_config
    from rambo_mmdet.compat import load_checkpoint_file

    data_root, ckpt, val_detections, weights = checkpoint
    out, report_path = tmp_path / 'out' / 'calibrated.pth', tmp_path / 'report.json'
    # the config's score_thr (FashionDet's is 0, mmdet's stock configs have 0.05) drops about
    # half of the validation detections here: the fit must still use all of them (the docs:
    # score_thr 0)
    val_scores = torch.cat([d[3] for d in val_detections])
    config_thr = round(float(val_scores.median()), 6)
    assert 0.3 < float((val_scores <= config_thr).float().mean()) < 0.7
    proc = _calibrate(ckpt, '--out', str(out), '--json', str(report_path), '--score-thr', '0.05',
                      '--cfg-options', *_cfg_options(data_root, config_thr))
    assert out.is_file() and report_path.is_file(), proc.stdout[-2000:]
    assert f'wrote {out}' in proc.stdout
    report = json.loads(report_path.read_text())

    # the fit: every validation detection (not only those above the config's score_thr)
    assert report['fit'] == 'val' and report['mode'] == 'global' and report['split'] == 'test'
    assert report['fit_detections'] == len(val_scores)
    assert report['checkpoint_scale'] == 1.0 and report['checkpoint_bias'] == 0.0
    assert report['checkpoint_updates'] == 0
    scale, bias = report['scale'], report['bias']
    assert scale > 0 and (scale, bias) != (1.0, 0.0)
    # 3 % correct at sigmoid(logit) ~ 0.52: the map lowers the scores a lot
    mean_logit = float(torch.logit(val_scores.double()).mean())
    assert torch.sigmoid(torch.tensor(scale * mean_logit + bias)) < 0.2

    runs = report['runs']
    assert set(runs) == {'uncalibrated@0', 'calibrated@0', 'calibrated@0.05'}
    plain, calibrated = runs['uncalibrated@0'], runs['calibrated@0']
    assert plain['detections'] == calibrated['detections'] == 8 * 100  # 8 test images
    assert plain['correct'] == calibrated['correct'] == 8 * len(ORACLE_RANKS)
    # the same detections and COCO stats with and without the map, and a non-trivial AP
    assert report['identical_detections_at_0'] is True
    assert report['identical_coco_stats_at_0'] is True
    assert plain['coco_stats'] == calibrated['coco_stats']
    assert 0 < plain['mAP'] < 1 and plain['AP50'] > 0
    # miscalibrated before (scores ~0.52, 3 % correct), much better after
    assert 0.4 < plain['mean_score'] < 0.6 and plain['ece'] > 0.4
    assert calibrated['ece'] < plain['ece'] / 4
    assert calibrated['mean_score'] < 0.2
    # per class too: every class's detections counted once, each class's ECE in [0, 1]
    for row in (plain, calibrated):
        per_class = row['ece_per_class']
        assert sum(v['detections'] for v in per_class.values()) == row['detections']
        assert sum(v['correct'] for v in per_class.values()) == row['correct']
        assert all(0.0 <= v['ece'] <= 1.0 for v in per_class.values())

    def mean_ece(row):
        return sum(v['ece'] for v in row['ece_per_class'].values()) / len(row['ece_per_class'])

    assert mean_ece(calibrated) < mean_ece(plain) / 2
    assert runs['calibrated@0.05']['detections'] < calibrated['detections']
    # what the threshold gives up, read off the score_thr-0 run: exactly the detections (and
    # correct ones) that the 0.05 run lost; the reliability bins hold every detection
    below = calibrated['below']['0.05']
    assert below['detections'] == calibrated['detections'] - runs['calibrated@0.05']['detections']
    assert below['correct'] == calibrated['correct'] - runs['calibrated@0.05']['correct']
    assert below['correct_share'] == pytest.approx(below['correct'] / calibrated['correct'])
    for row in (plain, calibrated):
        assert len(row['reliability']) == 15
        assert sum(b['detections'] for b in row['reliability']) == row['detections']
        assert sum(b['correct'] for b in row['reliability']) == row['correct']

    # the output checkpoint: the input's weights plus the fitted map (state dict and meta)
    saved = load_checkpoint_file(str(out))
    state = saved['state_dict']
    assert state[f'{LOSS}.calib_scale'].item() == pytest.approx(scale, rel=1e-6)
    assert state[f'{LOSS}.calib_bias'].item() == pytest.approx(bias, rel=1e-6)
    assert saved['meta']['calibration'] == dict(fit='val', mode='global', scale=scale, bias=bias)
    assert saved['meta']['note'] == 'random weights'
    assert set(state) == set(weights) | {f'{LOSS}.calib_scale', f'{LOSS}.calib_bias',
                                         f'{LOSS}.calib_updates'}
    assert all(torch.equal(state[key], value) for key, value in weights.items())
    # ... which the config's model (calibration='global') loads with that map
    model = MODELS.build(load_config(CONFIG).model)
    load_checkpoint(model, str(out), map_location='cpu', logger='silent')
    loss = model.roi_head.bbox_head.loss_cls
    assert loss.calib_scale.item() == pytest.approx(scale, rel=1e-6)
    assert loss.calib_bias.item() == pytest.approx(bias, rel=1e-6)


def test_fit_train_per_class(checkpoint, tmp_path):
    """``--fit train --mode per_class``: the loss's own update on 2 training batches (sampled
    RoIs, ground truth among them) moves every class's map down from the identity (~2.5 % of the
    entries are positives at scores ~0.52), the network frozen; one map per class is written."""
    from rambo_mmdet.compat import load_checkpoint_file

    data_root, ckpt, _, weights = checkpoint
    out, report_path = tmp_path / 'per_class.pth', tmp_path / 'report.json'
    proc = _calibrate(ckpt, '--fit', 'train', '--mode', 'per_class', '--train-batches', '2',
                      '--score-thr', '--out', str(out), '--json', str(report_path),
                      '--cfg-options', *_cfg_options(data_root, 0.0))
    report = json.loads(report_path.read_text())
    assert report['fit'] == 'train' and report['mode'] == 'per_class'
    assert report['fit_detections'] is None
    scale, bias = torch.tensor(report['scale']), torch.tensor(report['bias'])
    assert scale.shape == bias.shape == (10, )  # FashionDet's classes
    assert report['checkpoint_scale'] == [1.0] * 10 and report['checkpoint_bias'] == [0.0] * 10
    assert (scale > 0).all() and (bias < 0).all(), (scale, bias)
    assert 'map (train, per_class)' in proc.stdout
    runs = report['runs']
    assert set(runs) == {'uncalibrated@0', 'calibrated@0'}  # --score-thr without values
    # the network is the checkpoint's after the fit (frozen, state restored): the oracle's
    # detections are found again
    assert runs['uncalibrated@0']['detections'] == 8 * 100
    assert runs['uncalibrated@0']['correct'] == 8 * len(ORACLE_RANKS)
    assert runs['calibrated@0']['ece'] < runs['uncalibrated@0']['ece']
    assert isinstance(report['identical_detections_at_0'], bool)  # per class: not guaranteed
    state = load_checkpoint_file(str(out))['state_dict']
    assert torch.allclose(state[f'{LOSS}.calib_scale'], scale)
    assert torch.allclose(state[f'{LOSS}.calib_bias'], bias)
    assert all(torch.equal(state[key], value) for key, value in weights.items())


def test_fit_none_reports_a_detector_without_a_map_as_is(checkpoint, tmp_path):
    """``--fit none`` on a loss without a calibration map (here RaMBOAPLoss with
    ``calibration=None``; likewise focal / cross-entropy twins): the scores as they are, at
    score_thr 0 and at the given threshold, with what the threshold gives up; any other ``--fit``
    is refused with a message naming ``--fit none``."""
    data_root, ckpt, _, _ = checkpoint
    no_map = _cfg_options(data_root, 0.0) + [f'model.{LOSS}.calibration=None']
    refused = _calibrate(ckpt, '--fit', 'val', '--cfg-options', *no_map, check=False)
    assert refused.returncode != 0 and 'use --fit none' in refused.stderr

    report_path = tmp_path / 'as_is.json'
    proc = _calibrate(ckpt, '--fit', 'none', '--score-thr', '0.52', '--json', str(report_path),
                      '--out', str(tmp_path / 'ignored.pth'), '--cfg-options', *no_map)
    assert '--out ignored' in proc.stdout and not (tmp_path / 'ignored.pth').exists()
    report = json.loads(report_path.read_text())
    assert report['fit'] == 'none' and report['mode'] is None
    runs = report['runs']
    assert set(runs) == {'as-is@0', 'as-is@0.52'}
    full, cut = runs['as-is@0'], runs['as-is@0.52']
    # sigmoid(logit) of the random detector: ~0.52, the same detections as 'uncalibrated@0'
    assert full['detections'] == 8 * 100 and full['correct'] == 8 * len(ORACLE_RANKS)
    assert 0.4 < full['mean_score'] < 0.6
    below = full['below']['0.52']
    assert 0 < below['detections'] < full['detections']  # the threshold cuts inside the band
    assert below['detections'] == full['detections'] - cut['detections']
    assert below['correct'] == full['correct'] - cut['correct']
