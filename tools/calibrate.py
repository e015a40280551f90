"""Fit (or check) the score calibration of a RaMBO-trained detector; report ECE and COCO AP.

``RaMBOAPLoss`` (``calibration='global'``, the default and the shipped configs' setting) learns
``p = sigmoid(a * logit + b)`` during training (see the README, *Calibrated scores*). This tool

* fits that map for a checkpoint trained without it (or refits it), and writes a copy of the
  checkpoint with the map (``--out``):

  - ``--fit val`` (default): logistic regression of "the detection is correct" (same-class ground
    truth at IoU >= 0.5, greedily by score) on the detector's test-time output for the
    validation split (score_thr 0, the config's NMS and max_per_img);
  - ``--fit train``: what training with calibration on learns: the loss's own update on the
    training targets (sampled RoIs / assigned anchors) of ``--train-batches`` training batches,
    the network frozen (BatchNorm statistics restored afterwards);
  - ``--fit none``: keep the checkpoint's map (to report on a model trained with calibration);
    for a detector trained with another loss (focal, cross-entropy), or a RaMBOAPLoss config
    with ``calibration=None``, its scores as they are (runs ``as-is@<thr>``), e.g. the stock
    twin of an A/B;

* reports on ``--split`` (default test) for the uncalibrated scores (identity map) and the
  calibrated ones: COCO mAP / AP50 / AP75 (pycocotools) at score_thr 0 and at each
  ``--score-thr``, whether the detections at score_thr 0 are identical (boxes, labels, order of
  scores) with and without the map, and the expected calibration error (15 equal-width bins;
  :func:`rambo_mmdet.calibration.expected_calibration_error`), over all detections and per
  class (``ece_per_class`` in the JSON report; mean and worst class printed), the reliability
  bins behind it (``reliability``), and what each ``--score-thr`` gives up (``below``: the
  detections scored at or below it and the correct ones among them).

Examples::

    python tools/calibrate.py configs/fashion/faster_rcnn_r18_fashion_rambo.py \\
        work_dirs/quality/faster_rcnn_rambo_s0/iter_1500.pth --out calibrated.pth
    python tools/calibrate.py CONFIG CKPT --fit none --json report.json   # a calibrated model

``--mode per_class`` fits one map per class (the config's loss is switched to
``calibration='per_class'`` for this run; write its ``--out`` checkpoint only for a config with
that setting).
"""
import argparse
import contextlib
import copy
import io
import json
import os
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

import torch  # noqa: E402

import rambo_mmdet  # noqa: E402,F401  (shims + registration)
from mmengine.config import DictAction  # noqa: E402
from rambo_mmdet.calibration import (expected_calibration_error, fit_logistic,  # noqa: E402
                                     match_detections, reliability_bins)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--fit', choices=['val', 'train', 'none'], default='val')
    p.add_argument('--mode', choices=['global', 'per_class'], default='global')
    p.add_argument('--split', choices=['val', 'test'], default='test',
                   help='split to report on (default test)')
    p.add_argument('--score-thr', type=float, nargs='*', default=[0.05],
                   help='also report calibrated AP at these score thresholds (default 0.05)')
    p.add_argument('--train-batches', type=int, default=200, help='batches of --fit train')
    p.add_argument('--max-images', type=int, default=None, help='limit each split (debugging)')
    p.add_argument('--out', help='write the checkpoint with the fitted map here')
    p.add_argument('--json', help='write the report here')
    p.add_argument('--bins', type=int, default=15, help='ECE bins (default 15)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='key=value overrides')
    return p.parse_args(argv)


def _build(args):
    from mmengine.runner import load_checkpoint

    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from rambo_mmdet.cli import load_config

    register_all_modules()
    cfg = load_config(args.config, cfg_options=args.cfg_options)
    cfg.model.backbone.init_cfg = None  # the checkpoint has every weight
    head_cfg = cfg.model.roi_head.bbox_head if 'roi_head' in cfg.model else cfg.model.bbox_head
    as_is = head_cfg.loss_cls.get('type') != 'RaMBOAPLoss' or (
        'calibration' in head_cfg.loss_cls and head_cfg.loss_cls.calibration is None)
    if as_is:  # no map: report the scores as they are, if asked to
        if args.fit != 'none':
            raise SystemExit(f'{args.config}: the scoring head\'s loss is '
                             f'{head_cfg.loss_cls.get("type")} without a calibration map, '
                             'not RaMBOAPLoss with calibration (use --fit none to report its '
                             'scores as they are)')
    else:
        head_cfg.loss_cls.calibration = args.mode
        if args.mode == 'per_class':
            head_cfg.loss_cls.num_classes = head_cfg.num_classes
    model = MODELS.build(cfg.model)
    with contextlib.redirect_stderr(io.StringIO()):
        load_checkpoint(model, args.checkpoint, map_location='cpu', strict=False,
                        logger='silent')
    model.eval()
    return cfg, model


def _scoring(model):
    """(the loss whose map scores the detections, or None for another loss; the test cfg
    holding score_thr)."""
    if hasattr(model, 'roi_head'):
        loss, test_cfg = model.roi_head.bbox_head.loss_cls, model.roi_head.test_cfg
    else:
        loss, test_cfg = model.bbox_head.loss_cls, model.bbox_head.test_cfg
    return (loss if hasattr(loss, 'calib_scale') else None), test_cfg


def _loader(cfg, split, max_images=None, train=False):
    from mmengine.runner import Runner
    key = 'train_dataloader' if train else f'{split}_dataloader'
    loader_cfg = copy.deepcopy(cfg[key])
    loader_cfg.num_workers = 0
    loader_cfg.persistent_workers = False
    if max_images is not None and not train:
        loader_cfg.dataset.indices = max_images
    if train:
        loader_cfg.sampler = dict(type='DefaultSampler', shuffle=True, seed=0)
        loader_cfg.pop('batch_sampler', None)
    return Runner.build_dataloader(loader_cfg, seed=0)


@torch.no_grad()
def collect(model, loader):
    """Run the detector on ``loader``: per image, detections and ground truth."""
    images = []
    for batch in loader:
        for sample in model.test_step(batch):
            pred, gt = sample.pred_instances, sample.gt_instances
            images.append(dict(img_id=sample.img_id, bboxes=pred.bboxes.cpu(),
                               labels=pred.labels.cpu(), scores=pred.scores.cpu(),
                               gt_bboxes=gt.bboxes.cpu() if hasattr(gt.bboxes, 'cpu')
                               else torch.as_tensor(gt.bboxes),
                               gt_labels=gt.labels.cpu()))
    for image in images:
        gt_boxes = image['gt_bboxes']
        gt_boxes = getattr(gt_boxes, 'tensor', gt_boxes)
        image['gt_bboxes'] = gt_boxes
        image['correct'] = match_detections(image['bboxes'], image['labels'], image['scores'],
                                            gt_boxes, image['gt_labels'])
    return images


def coco_ap(images, dataset):
    """COCO bbox stats (12 numbers) of the detections ``images`` on ``dataset``'s annotations."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(dataset.ann_file)
        results = []
        for image in images:
            for box, label, score in zip(image['bboxes'].tolist(), image['labels'].tolist(),
                                         image['scores'].tolist()):
                x1, y1, x2, y2 = box
                results.append(dict(image_id=image['img_id'],
                                    category_id=dataset.cat_ids[label],
                                    bbox=[x1, y1, x2 - x1, y2 - y1], score=score))
        if not results:
            return [0.0] * 12
        evaluator = COCOeval(coco, coco.loadRes(results), 'bbox')
        evaluator.params.imgIds = [image['img_id'] for image in images]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(x) for x in evaluator.stats]


def below_thresholds(scores, correct, thresholds):
    """What each score threshold would drop from these detections: per threshold ``t``, the
    detections scored at most ``t`` (mmdet keeps scores ``> score_thr``), the correct ones among
    them, and their share of all correct detections (the recall a ``score_thr`` of ``t`` gives
    up at IoU 0.5)."""
    total = int(correct.sum())
    out = {}
    for t in thresholds:
        below = scores <= t
        lost = int(correct[below].sum())
        out[f'{t:g}'] = dict(detections=int(below.sum()), correct=lost,
                             correct_share=lost / total if total else 0.0)
    return out


def summarise(images, dataset, bins, thresholds=()):
    scores = torch.cat([i['scores'] for i in images]) if images else torch.zeros(0)
    correct = torch.cat([i['correct'] for i in images]) if images else torch.zeros(0, dtype=bool)
    labels = torch.cat([i['labels'] for i in images]) if images else torch.zeros(0, dtype=int)
    stats = coco_ap(images, dataset)
    classes = dataset.metainfo.get('classes', ())
    # ECE of each class's detections: a global map can be calibrated on average and not per class
    per_class = {}
    for c in labels.unique().tolist():
        mine = labels == c
        name = classes[c] if c < len(classes) else str(c)
        per_class[name] = dict(ece=expected_calibration_error(scores[mine], correct[mine], bins),
                               detections=int(mine.sum()), correct=int(correct[mine].sum()))
    return dict(mAP=stats[0], AP50=stats[1], AP75=stats[2], coco_stats=stats,
                ece=expected_calibration_error(scores, correct, bins), ece_per_class=per_class,
                detections=int(scores.numel()), correct=int(correct.sum()),
                below=below_thresholds(scores, correct, thresholds),
                reliability=[dict(zip(('detections', 'score_sum', 'correct'), row))
                             for row in reliability_bins(scores, correct, bins).tolist()],
                mean_score=float(scores.double().mean()) if scores.numel() else 0.0,
                score_range=[float(scores.min()), float(scores.max())] if scores.numel() else [])


def same_detections(a, b):
    """Detections identical up to the score values: same boxes, labels and score order."""
    for x, y in zip(a, b):
        if not (torch.equal(x['bboxes'], y['bboxes']) and torch.equal(x['labels'], y['labels'])):
            return False
        if not torch.equal(torch.argsort(x['scores'], descending=True, stable=True),
                           torch.argsort(y['scores'], descending=True, stable=True)):
            return False
    return len(a) == len(b)


def set_map(loss, scale, bias):
    loss.calib_scale.copy_(torch.as_tensor(scale).expand_as(loss.calib_scale))
    loss.calib_bias.copy_(torch.as_tensor(bias).expand_as(loss.calib_bias))


def fit_on_val(model, loss, cfg, args):
    """Fit the map to the correctness of the validation split's detections (identity map,
    score_thr 0: the config's threshold, e.g. mmdet's 0.05, would cut off the low scores).
    Returns ``(scale, bias, number of detections fitted)``."""
    set_map(loss, 1.0, 0.0)
    _, test_cfg = _scoring(model)
    config_thr = test_cfg.score_thr
    test_cfg.score_thr = 0.0
    try:
        images = collect(model, _loader(cfg, 'val', args.max_images))
    finally:
        test_cfg.score_thr = config_thr
    labels = torch.cat([i['labels'] for i in images])
    logits = torch.logit(torch.cat([i['scores'] for i in images]).double(), eps=1e-12)
    correct = torch.cat([i['correct'] for i in images]).double()
    scale, bias = fit_logistic(logits, correct)
    if args.mode == 'per_class':  # classes without detections keep the global fit
        scale = scale.expand_as(loss.calib_scale).clone()
        bias = bias.expand_as(loss.calib_bias).clone()
        for c in range(loss.calib_scale.numel()):
            mine = labels == c
            if mine.any() and correct[mine].any() and not correct[mine].all():
                scale[c], bias[c] = fit_logistic(logits[mine], correct[mine])
    return scale, bias, int(correct.numel())


def fit_on_train(model, loss, cfg, args):
    """The loss's own calibration update on training batches, the network frozen."""
    set_map(loss, 1.0, 0.0)
    loss.calibration_interval = 1  # every batch (training spaces the costlier detection updates)
    # a deep copy keeps the modules' version metadata (mmdet's anchor-free heads rename the keys
    # of a state dict without it)
    state = copy.deepcopy(model.state_dict())
    loader = _loader(cfg, 'train', train=True)
    model.train()
    done = 0
    with torch.no_grad():
        while done < args.train_batches:
            for batch in loader:
                data = model.data_preprocessor(batch, True)
                model(**data, mode='loss')
                done += 1
                if done >= args.train_batches:
                    break
    scale, bias = loss.calib_scale.clone(), loss.calib_bias.clone()
    model.load_state_dict(state)  # BatchNorm statistics, score memory: as before
    model.eval()
    return scale, bias


def write_json(path, report):
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(report, f, indent=1)


def print_runs(report, num_images, bins):
    print(f'{report["split"]} split ({num_images} images), ECE with {bins} bins:')
    print(f'  {"run":<18} {"mAP":>6} {"AP50":>6} {"AP75":>6} {"ECE":>7} {"dets":>7} '
          f'{"correct":>7} {"scores":>15}')
    for name, row in report['runs'].items():
        lo_hi = '-'.join(f'{x:.3f}' for x in row['score_range'])
        print(f'  {name:<18} {100 * row["mAP"]:6.2f} {100 * row["AP50"]:6.2f} '
              f'{100 * row["AP75"]:6.2f} {row["ece"]:7.4f} {row["detections"]:7d} '
              f'{row["correct"]:7d} {lo_hi:>15}')
        for thr, lost in row['below'].items():
            print(f'  {"":<18} <= {thr}: {lost["detections"]} detections, {lost["correct"]} '
                  f'correct ({100 * lost["correct_share"]:.1f} % of the correct ones)')


def report_as_is(args, cfg, model, test_cfg, start):
    """The report for a detector whose loss has no map (e.g. the focal or cross-entropy twin):
    its scores as they are, at score_thr 0 and at each ``--score-thr``."""
    loader = _loader(cfg, args.split, args.max_images)
    report = dict(config=args.config, checkpoint=args.checkpoint, fit='none', mode=None,
                  split=args.split, bins=args.bins, runs={})
    config_thr = float(test_cfg.score_thr)
    for thr in [0.0] + list(args.score_thr):
        test_cfg.score_thr = thr
        report['runs'][f'as-is@{thr:g}'] = summarise(collect(model, loader), loader.dataset,
                                                      args.bins, args.score_thr)
    test_cfg.score_thr = config_thr
    report['seconds'] = round(time.time() - start, 1)
    print_runs(report, len(loader.dataset), args.bins)
    if args.out:
        print('--out ignored: the loss has no calibration map')
    if args.json:
        write_json(args.json, report)
    return 0


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    start = time.time()
    cfg, model = _build(args)
    loss, test_cfg = _scoring(model)
    if loss is None:  # another loss (--fit none): its scores as they are
        return report_as_is(args, cfg, model, test_cfg, start)
    learned = (loss.calib_scale.clone(), loss.calib_bias.clone(), int(loss.calib_updates))
    fitted_on = None  # --fit val: the number of validation detections fitted
    if args.fit == 'val':
        scale, bias, fitted_on = fit_on_val(model, loss, cfg, args)
    elif args.fit == 'train':
        scale, bias = fit_on_train(model, loss, cfg, args)
    else:
        scale, bias = learned[0], learned[1]
    print(f'map ({args.fit}, {args.mode}): a = {scale.tolist()}, b = {bias.tolist()}  '
          f'(checkpoint: a = {learned[0].tolist()}, b = {learned[1].tolist()}, '
          f'{learned[2]} training updates)'
          + (f'; fitted on {fitted_on} validation detections' if fitted_on is not None else ''))

    loader = _loader(cfg, args.split, args.max_images)
    dataset = loader.dataset
    report = dict(config=args.config, checkpoint=args.checkpoint, fit=args.fit, mode=args.mode,
                  split=args.split, scale=scale.tolist(), bias=bias.tolist(),
                  checkpoint_scale=learned[0].tolist(), checkpoint_bias=learned[1].tolist(),
                  checkpoint_updates=learned[2], fit_detections=fitted_on, bins=args.bins,
                  runs={})
    config_thr = float(test_cfg.score_thr)
    runs = [('uncalibrated@0', (1.0, 0.0), 0.0), ('calibrated@0', (scale, bias), 0.0)]
    runs += [(f'calibrated@{t:g}', (scale, bias), t) for t in args.score_thr]
    results = {}
    for name, (a, b), thr in runs:
        set_map(loss, a, b)
        test_cfg.score_thr = thr
        results[name] = collect(model, loader)
        report['runs'][name] = summarise(results[name], dataset, args.bins, args.score_thr)
    test_cfg.score_thr = config_thr
    set_map(loss, scale, bias)
    report['identical_detections_at_0'] = same_detections(results['uncalibrated@0'],
                                                          results['calibrated@0'])
    report['identical_coco_stats_at_0'] = (report['runs']['uncalibrated@0']['coco_stats']
                                           == report['runs']['calibrated@0']['coco_stats'])
    report['seconds'] = round(time.time() - start, 1)

    print_runs(report, len(dataset), args.bins)
    for name, row in report['runs'].items():
        if name.endswith('@0') and row['ece_per_class']:
            eces = {c: v['ece'] for c, v in row['ece_per_class'].items()}
            worst = max(eces, key=eces.get)
            print(f'  {name:<18} per-class ECE: mean {sum(eces.values()) / len(eces):.4f}, '
                  f'worst {worst} {eces[worst]:.4f}')
    print(f'  identical detections at score_thr 0 with/without the map: '
          f'{report["identical_detections_at_0"]}; identical COCO stats: '
          f'{report["identical_coco_stats_at_0"]}')
    if args.json:
        write_json(args.json, report)
    if args.out:
        from rambo_mmdet.compat import load_checkpoint_file
        ckpt = load_checkpoint_file(args.checkpoint, map_location='cpu')
        state = ckpt['state_dict'] if 'state_dict' in ckpt else ckpt
        prefix = [n for n, m in model.named_modules() if m is loss][0] + '.'
        state[prefix + 'calib_scale'] = loss.calib_scale.clone()
        state[prefix + 'calib_bias'] = loss.calib_bias.clone()
        state[prefix + 'calib_updates'] = loss.calib_updates.clone()
        ckpt.setdefault('meta', {})['calibration'] = dict(fit=args.fit, mode=args.mode,
                                                          scale=scale.tolist(),
                                                          bias=bias.tolist())
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        torch.save(ckpt, args.out)
        print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
