"""Score calibration of RaMBOAPLoss (``calibration='global'``): a learned monotone logit map.

* the ECE and the detection matcher against hand-computed oracles;
* the logistic fit and the loss's online update against known / full-batch solutions;
* the map keeps the order of the scores (globally; per class only within a class);
* the network's gradient is exactly the same with calibration on or off;
* the map is in the state_dict, loads back, and checkpoints without it load as the identity;
* COCO AP (pycocotools) of a box head's detections is identical with and without the global map,
  while a per-class map (the control) changes it when ``max_per_img`` cuts across classes;
* RaMBORetinaHead predicts the same boxes with calibrated scores.
"""
import contextlib
import copy
import io

import pytest
import torch
from mmengine.config import ConfigDict
from torch import nn

import rambo_mmdet  # noqa: F401
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from rambo_mmdet.calibration import (box_iou, expected_calibration_error, fit_logistic,
                                     logistic_fit_step, match_detections)
from rambo_mmdet.models.losses import RaMBOAPLoss

register_all_modules()


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- ECE, matching
def test_ece_hand_computed():
    # 2 bins [0, .5), [.5, 1]: bin 0 has scores .2, .4 (1 correct): |1 - 0.6| = 0.4;
    # bin 1 has .6, .8 (2 correct): |2 - 1.4| = 0.6; ECE = (0.4 + 0.6) / 4
    scores = torch.tensor([0.2, 0.4, 0.6, 0.8])
    correct = torch.tensor([False, True, True, True])
    assert expected_calibration_error(scores, correct, num_bins=2) == pytest.approx(0.25)
    # 15 bins, one score per bin: mean of |correct - score|; a score of 1.0 is in the last bin
    scores = torch.tensor([0.1, 0.15, 0.5, 0.95, 1.0])
    correct = torch.tensor([False, True, False, True, True])
    # bins: .1 -> 1, .15 -> 2, .5 -> 7, .95 and 1.0 -> 14 (together: |2 - 1.95| = 0.05)
    assert expected_calibration_error(scores, correct) == pytest.approx(
        (0.1 + 0.85 + 0.5 + 0.05) / 5)
    # perfectly calibrated bins, and no detection at all
    assert expected_calibration_error(torch.tensor([0.5, 0.5]), torch.tensor([True, False]),
                                      num_bins=10) == pytest.approx(0.0)
    assert expected_calibration_error(torch.zeros(0), torch.zeros(0, dtype=torch.bool)) == 0.0


def test_match_detections_hand_computed():
    gt = torch.tensor([[0., 0., 10., 10.], [20., 20., 30., 30.]])
    gt_labels = torch.tensor([0, 1])
    dets = torch.tensor([
        [0., 0., 10., 10.],    # 0: exact on gt 0, but lower score than det 1 -> duplicate
        [0., 0., 10., 9.],     # 1: IoU 0.9 with gt 0, highest score -> correct
        [20., 20., 30., 30.],  # 2: exact on gt 1, wrong class -> wrong
        [20., 20., 30., 24.],  # 3: IoU 0.4 with gt 1 -> wrong
        [21., 20., 30., 30.],  # 4: IoU 0.9 with gt 1, class 1 -> correct
    ])
    labels = torch.tensor([0, 0, 0, 1, 1])
    scores = torch.tensor([0.8, 0.9, 0.7, 0.95, 0.1])
    correct = match_detections(dets, labels, scores, gt, gt_labels)
    assert correct.tolist() == [False, True, False, False, True]
    assert box_iou(dets[:2], gt[:1])[:, 0].tolist() == pytest.approx([1.0, 0.9])
    # no ground truth: nothing is correct
    assert not match_detections(dets, labels, scores, gt[:0], gt_labels[:0]).any()


# ----------------------------------------------------------------------------- the fit
def test_fit_logistic_recovers_a_known_map():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=gen) * 0.4
    t = torch.rand(x.shape, generator=gen) < torch.sigmoid(6.0 * x - 2.0)
    a, b = fit_logistic(x, t)
    assert a.item() == pytest.approx(6.0, abs=0.15)
    assert b.item() == pytest.approx(-2.0, abs=0.05)
    # per class: two columns with their own maps
    x2 = torch.randn(100_000, 2, generator=gen)
    t2 = torch.rand(x2.shape, generator=gen) < torch.sigmoid(
        x2 * torch.tensor([0.5, 3.0]) + torch.tensor([1.0, -1.0]))
    a2, b2 = fit_logistic(x2, t2, per_class=True)
    assert a2.tolist() == pytest.approx([0.5, 3.0], abs=0.1)
    assert b2.tolist() == pytest.approx([1.0, -1.0], abs=0.05)


def _batch(seed, rows=256, classes=5, spread=0.3):
    """Logits near 0 (as a RaMBO-trained box head's) and one label per row (C = background)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=gen) * spread
    labels = torch.randint(0, classes + 1, (rows, ), generator=gen)
    rows_fg = labels < classes
    logits[rows_fg, labels[rows_fg]] += 0.4  # positives score higher
    return logits, labels


def test_loss_update_converges_to_the_full_fit():
    """The online update (damped Newton on each call's detached logits) is the BCE fit: fed the
    same batch repeatedly it converges to fit_logistic of that batch."""
    logits, labels = _batch(0)
    loss = RaMBOAPLoss(memory_batches=0, calibration_rate=0.5)
    for _ in range(60):
        loss(logits.clone().requires_grad_(), labels)
    targets = labels[:, None] == torch.arange(logits.shape[1])
    a, b = fit_logistic(logits, targets)
    assert loss.calib_scale.item() == pytest.approx(a.item(), rel=1e-3)
    assert loss.calib_bias.item() == pytest.approx(b.item(), abs=1e-3)
    assert loss.calib_updates.item() == 60
    assert a.item() > 1.5  # a real map, not the identity
    # evaluation mode (the detector's test) does not update
    loss.eval()
    loss(logits, labels)
    assert loss.calib_updates.item() == 60


def test_first_updates_average_then_the_rate_applies(monkeypatch):
    """The n-th update moves the map by max(calibration_rate, 1 / n) towards that call's Newton
    step: the first one all the way (the map leaves the identity at once), then a running
    average, then the moving fit's fixed rate (here 0.25, from the 4th update on)."""
    from rambo_mmdet.models.losses import rambo_ap_loss
    targets = iter([(2.0, -1.0), (4.0, -3.0), (1.0, 1.0), (3.0, 0.0), (7.0, -5.0)])

    def step(logits, targets_, scale, bias, weights=None, **kwargs):
        a, b = next(targets)
        return (torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                torch.tensor(0.0, dtype=torch.float64))

    monkeypatch.setattr(rambo_ap_loss, 'logistic_fit_step', step)
    loss = RaMBOAPLoss(memory_batches=0, calibration_rate=0.25)
    logits, labels = _batch(2)
    seen = []
    for _ in range(5):
        loss(logits.clone().requires_grad_(), labels)
        seen.append((loss.calib_scale.item(), loss.calib_bias.item()))
    # 1: all the way; 2: the mean of the first two; 3: of the first three; 4, 5: rate 0.25
    a, b = 2.0, -1.0
    expected = [(a, b)]
    for n, (ta, tb) in enumerate([(4.0, -3.0), (1.0, 1.0), (3.0, 0.0), (7.0, -5.0)], start=2):
        rate = max(0.25, 1 / n)
        a, b = a + rate * (ta - a), b + rate * (tb - b)
        expected.append((a, b))
    assert seen == [pytest.approx(e, abs=1e-6) for e in expected]
    assert seen[2] == pytest.approx(((2 + 4 + 1) / 3, (-1 - 3 + 1) / 3), abs=1e-6)
    assert loss.calib_updates.item() == 5


def test_fit_is_safeguarded_on_a_narrow_band_of_logits():
    """A dense head's logits: a bulk far below, positives in a band 0.01 wide at the top (the
    RetinaNet twin trained without margin). Plain Newton from (1, 0) overshoots and cycles; the
    safeguarded steps decrease the BCE every time and reach a far better fit than the start."""
    gen = torch.Generator().manual_seed(3)
    bulk = -4.6 - torch.rand(20_000, generator=gen) * 20
    band = -4.11 + torch.rand(2_000, generator=gen) * 0.01
    x = torch.cat([bulk, band])[:, None]
    t = torch.zeros_like(x, dtype=torch.bool)
    t[20_000::20] = True  # 5 % of the band are positives
    scale, bias = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    losses = []
    for _ in range(40):
        scale, bias, bce = logistic_fit_step(x, t, scale, bias)
        losses.append(bce.item())
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:]))
    a, b = fit_logistic(x, t)
    p_band = torch.sigmoid(a * band.mean() + b).item()
    assert p_band == pytest.approx(0.05, rel=0.3)  # the band's positive rate
    assert torch.sigmoid(a * bulk.max() + b).item() < 1e-3


def test_update_uses_valid_rows_and_subsamples_negatives_without_random_numbers(monkeypatch):
    from rambo_mmdet.models.losses import rambo_ap_loss
    logits, _ = _batch(1, rows=400)
    labels = torch.full((400, ), 5)  # mostly background, as in a dense head
    labels[::10] = torch.arange(40) % 5
    weights = torch.ones(400)
    weights[::3] = 0
    seen = []
    original = rambo_ap_loss.logistic_fit_step

    def spy(logits, targets, scale, bias, weights=None, **kwargs):
        seen.append((logits, targets, weights))
        return original(logits, targets, scale, bias, weights, **kwargs)

    monkeypatch.setattr(rambo_ap_loss, 'logistic_fit_step', spy)
    valid = weights > 0
    RaMBOAPLoss(memory_batches=0)(logits, labels, weights)
    got_logits, got_targets, got_weights = seen[-1]
    assert got_weights is None  # all valid rows, no sampling
    assert torch.equal(got_logits, logits[valid])
    assert torch.equal(got_targets, labels[valid][:, None] == torch.arange(5))
    state = torch.random.get_rng_state()
    RaMBOAPLoss(memory_batches=0, calibration_max_rows=100)(logits, labels, weights)
    assert torch.equal(torch.random.get_rng_state(), state)  # no random numbers drawn
    got_logits, got_targets, got_weights = seen[-1]
    positives = int((valid & (labels < 5)).sum())
    assert 0 < positives < 60 and len(got_logits) <= 100
    assert int(got_targets.any(1).sum()) == positives  # every positive row is kept
    # negatives weighted by their inverse sampling rate: the total weight is the valid rows'
    assert got_weights.sum().item() == pytest.approx(float(valid.sum()))


# ----------------------------------------------------------------------------- order
def test_global_map_keeps_every_order_per_class_map_only_within_a_class():
    logits, _ = _batch(2, rows=300, classes=4, spread=1.0)
    loss = RaMBOAPLoss()
    loss.calib_scale.fill_(3.7)
    loss.calib_bias.fill_(-2.2)
    scores = loss.get_activation(logits)
    assert scores.shape == (300, 5) and (scores[:, -1] == 0).all()
    probs = scores[:, :-1]
    assert ((probs > 0) & (probs < 1)).all()
    assert torch.equal(torch.argsort(probs.flatten()), torch.argsort(logits.flatten()))
    assert torch.allclose(probs, torch.sigmoid(3.7 * logits - 2.2))

    per_class = RaMBOAPLoss(calibration='per_class', num_classes=4)
    per_class.calib_scale.copy_(torch.tensor([0.5, 1.0, 2.0, 4.0]))
    per_class.calib_bias.copy_(torch.tensor([1.0, 0.0, -1.0, -3.0]))
    probs = per_class.get_activation(logits)[:, :-1]
    for c in range(4):  # monotone within each class
        assert torch.equal(torch.argsort(probs[:, c]), torch.argsort(logits[:, c]))
    # ... but not across classes
    assert not torch.equal(torch.argsort(probs.flatten()), torch.argsort(logits.flatten()))

    off = RaMBOAPLoss(calibration=None)
    assert torch.equal(off.get_activation(logits)[:, :-1], logits.sigmoid())
    assert not any(True for _ in off.buffers())


def test_calibration_interval():
    logits, labels = _batch(5)
    loss = RaMBOAPLoss(memory_batches=0, calibration_interval=3)
    for _ in range(5):  # calls 0 and 3 update
        loss(logits, labels)
    assert loss.calib_updates.item() == 2
    assert RaMBOAPLoss().calibration_interval == 1
    assert RaMBOAPLoss(calibration_source='detections').calibration_interval == 32


def test_bad_calibration_options():
    with pytest.raises(ValueError, match='calibration must be one of'):
        RaMBOAPLoss(calibration='isotonic')
    with pytest.raises(ValueError, match='needs num_classes'):
        RaMBOAPLoss(calibration='per_class')
    with pytest.raises(ValueError, match='calibration_rate'):
        RaMBOAPLoss(calibration_rate=0.0)
    with pytest.raises(ValueError, match='calibration_source'):
        RaMBOAPLoss(calibration_source='anchors')
    with pytest.raises(ValueError, match='calibration_interval'):
        RaMBOAPLoss(calibration_interval=0)


# ----------------------------------------------------------------------------- gradient
def test_network_gradient_identical_with_calibration_on_or_off():
    torch.manual_seed(0)
    net_on = nn.Linear(8, 5)
    net_off = copy.deepcopy(net_on)
    loss_on = RaMBOAPLoss(memory_batches=2)
    loss_off = RaMBOAPLoss(memory_batches=2, calibration=None)
    opt_on = torch.optim.SGD(net_on.parameters(), lr=0.5)
    opt_off = torch.optim.SGD(net_off.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        feats = torch.randn(128, 8, generator=gen)
        labels = torch.randint(0, 6, (128, ), generator=gen)
        for net, loss, opt in ((net_on, loss_on, opt_on), (net_off, loss_off, opt_off)):
            opt.zero_grad()
            value = loss(net(feats), labels)
            value.backward()
            opt.step()
            if loss is loss_on:
                value_on, grad_on = value.detach(), net.weight.grad.clone()
        assert torch.equal(value_on, value.detach())
        assert torch.equal(grad_on, net_off.weight.grad)
        assert grad_on.abs().sum() > 0
    assert torch.equal(net_on.weight, net_off.weight)
    assert loss_on.calib_updates.item() == 5 and loss_on.calib_scale.item() != 1.0
    # the map has no parameters: nothing for an optimizer (or weight decay, clipping) to touch
    assert list(loss_on.parameters()) == []


# ----------------------------------------------------------------------------- checkpoints
def _retina(loss_cfg, **test_cfg):
    from test_heads import retina_cfg
    cfg = retina_cfg(loss_cls=loss_cfg)
    cfg['test_cfg'].update(test_cfg)
    return MODELS.build(dict(type='RaMBORetinaHead', **cfg))


def test_map_is_saved_and_loaded_old_checkpoints_load_as_identity(tmp_path):
    head = _retina(dict(type='RaMBOAPLoss', use_sigmoid=True))
    keys = {'loss_cls.calib_scale', 'loss_cls.calib_bias', 'loss_cls.calib_updates'}
    state = head.state_dict()
    assert keys <= set(state)
    head.loss_cls.calib_scale.fill_(2.5)
    head.loss_cls.calib_bias.fill_(-1.25)
    head.loss_cls.calib_updates.fill_(7)
    torch.save(head.state_dict(), tmp_path / 'ckpt.pth')
    fresh = _retina(dict(type='RaMBOAPLoss', use_sigmoid=True))
    fresh.load_state_dict(torch.load(tmp_path / 'ckpt.pth'))
    assert (fresh.loss_cls.calib_scale.item(), fresh.loss_cls.calib_bias.item(),
            fresh.loss_cls.calib_updates.item()) == (2.5, -1.25, 7)

    # a checkpoint saved before calibration existed: loads (even strictly) as the identity map
    old = {k: v for k, v in head.state_dict().items() if k not in keys}
    result = fresh.load_state_dict(old, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert (fresh.loss_cls.calib_scale.item(), fresh.loss_cls.calib_bias.item()) == (1.0, 0.0)
    # calibration off: the checkpoint's map is ignored
    off = _retina(dict(type='RaMBOAPLoss', use_sigmoid=True, calibration=None))
    result = off.load_state_dict(head.state_dict(), strict=True)
    assert not result.unexpected_keys
    # a global map loads into a per-class one as the same map for every class
    per_class = _retina(dict(type='RaMBOAPLoss', use_sigmoid=True, calibration='per_class',
                             num_classes=3))
    per_class.load_state_dict(head.state_dict())
    assert per_class.loss_cls.calib_scale.tolist() == [2.5] * 3


# ----------------------------------------------------------------------------- AP unchanged
def _synthetic_rois(num_imgs=6, classes=4, seed=0):
    """Per image: ground truth boxes, and RoIs around them (good and poor) plus clutter, with
    logits that favour the right class of well-placed RoIs (noisy)."""
    gen = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(num_imgs):
        num_gt = 3
        xy = torch.rand(num_gt, 2, generator=gen) * 60
        wh = 10 + torch.rand(num_gt, 2, generator=gen) * 30
        gt = torch.cat([xy, xy + wh], 1)
        gt_labels = torch.randint(0, classes, (num_gt, ), generator=gen)
        jitter = torch.randn(num_gt * 12, 4, generator=gen) * 6
        rois = gt.repeat(12, 1) + jitter
        clutter_xy = torch.rand(20, 2, generator=gen) * 80
        rois = torch.cat([rois, torch.cat([clutter_xy, clutter_xy + 15], 1)])
        x1y1 = torch.minimum(rois[:, :2], rois[:, 2:] - 2)
        rois = torch.cat([x1y1, rois[:, 2:]], 1).clamp(0, 100)
        iou = box_iou(rois, gt).float()
        best, idx = iou.max(1)
        logits = torch.randn(len(rois), classes, generator=gen) * 0.3
        logits[torch.arange(len(rois)), gt_labels[idx]] += best * 1.5
        images.append(dict(gt=gt, gt_labels=gt_labels, rois=rois, logits=logits))
    return images


def _coco_stats(images, results, classes):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        anns, ann_id = [], 1
        for img_id, image in enumerate(images):
            for box, label in zip(image['gt'].tolist(), image['gt_labels'].tolist()):
                anns.append(dict(id=ann_id, image_id=img_id, category_id=label + 1, iscrowd=0,
                                 bbox=[box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                 area=(box[2] - box[0]) * (box[3] - box[1])))
                ann_id += 1
        coco.dataset = dict(images=[dict(id=i, width=100, height=100) for i in range(len(images))],
                            annotations=anns,
                            categories=[dict(id=c + 1, name=str(c)) for c in range(classes)])
        coco.createIndex()
        dets = [dict(image_id=img_id, category_id=int(label) + 1,
                     bbox=[b[0], b[1], b[2] - b[0], b[3] - b[1]], score=float(score))
                for img_id, res in enumerate(results)
                for b, label, score in zip(res.bboxes.tolist(), res.labels, res.scores)]
        evaluator = COCOeval(coco, coco.loadRes(dets), 'bbox')
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats.tolist()


def _box_head_predict(images, loss_cfg, scale, bias, classes=4, max_per_img=12):
    head = MODELS.build(dict(type='BBoxHead', with_avg_pool=False, roi_feat_size=1,
                             in_channels=4, num_classes=classes, reg_class_agnostic=True,
                             loss_cls=loss_cfg))
    head.eval()
    loss = head.loss_cls
    if loss.calibration is not None:
        loss.calib_scale.copy_(torch.as_tensor(scale).expand_as(loss.calib_scale))
        loss.calib_bias.copy_(torch.as_tensor(bias).expand_as(loss.calib_bias))
    rois = tuple(torch.cat([torch.full((len(i['rois']), 1), float(n)), i['rois']], 1)
                 for n, i in enumerate(images))
    test_cfg = ConfigDict(score_thr=0.0, nms=dict(type='nms', iou_threshold=0.5),
                          max_per_img=max_per_img)
    with torch.no_grad():
        return head.predict_by_feat(
            rois, tuple(i['logits'] for i in images),
            tuple(torch.zeros(len(i['rois']), 4) for i in images),
            [dict(img_shape=(100, 100)) for _ in images], rcnn_test_cfg=test_cfg)


def test_coco_ap_identical_with_and_without_the_global_map():
    """Detections of mmdet's BBoxHead (sigmoid scores, multiclass NMS, max_per_img over classes)
    and their COCO AP (pycocotools): identical with the global map; the per-class map, which
    also keeps each class's order, changes which boxes max_per_img keeps, and so AP."""
    images = _synthetic_rois()
    loss_cfg = dict(type='RaMBOAPLoss', use_sigmoid=True)
    plain = _box_head_predict(images, dict(loss_cfg, calibration=None), None, None)
    calibrated = _box_head_predict(images, loss_cfg, 4.3, -2.7)
    per_class = _box_head_predict(images, dict(loss_cfg, calibration='per_class', num_classes=4),
                                  torch.tensor([0.3, 4.0, 1.0, 6.0]),
                                  torch.tensor([1.5, -3.0, 0.0, -2.0]))
    base = _coco_stats(images, plain, 4)
    assert 0.2 < base[0] < 0.95  # a meaningful AP, neither 0 nor perfect
    for res_plain, res_cal in zip(plain, calibrated):
        assert torch.equal(res_plain.bboxes, res_cal.bboxes)
        assert torch.equal(res_plain.labels, res_cal.labels)
        assert not torch.equal(res_plain.scores, res_cal.scores)
    assert _coco_stats(images, calibrated, 4) == base
    assert _coco_stats(images, per_class, 4) != base


def test_retina_head_predicts_the_same_boxes_with_calibrated_scores():
    from test_heads import STRIDES, make_batch
    loss_cfg = dict(type='RaMBOAPLoss', use_sigmoid=True)
    plain = _retina(dict(loss_cfg, calibration=None), nms_pre=30, max_per_img=10)
    calibrated = _retina(loss_cfg, nms_pre=30, max_per_img=10)
    calibrated.load_state_dict(plain.state_dict())
    calibrated.loss_cls.calib_scale.fill_(3.0)
    calibrated.loss_cls.calib_bias.fill_(-1.0)
    feats, _, metas = make_batch(STRIDES)
    with torch.no_grad():
        want = plain.predict_by_feat(*plain(feats), batch_img_metas=metas, rescale=False)
        got = calibrated.predict_by_feat(*calibrated(feats), batch_img_metas=metas,
                                         rescale=False)
    for exp, res in zip(want, got):
        assert len(res.scores) > 0
        assert torch.equal(res.bboxes, exp.bboxes) and torch.equal(res.labels, exp.labels)
        assert torch.allclose(res.scores, torch.sigmoid(3.0 * torch.logit(exp.scores) - 1.0),
                              atol=1e-5)


def test_dense_head_calibrates_on_its_detections(monkeypatch):
    """calibration_source='detections': RaMBORetinaHead fits the map to its own training
    detections (test-time post-processing, score_thr 0, raw scores), each correct when it
    matches a same-class ground truth box at IoU >= 0.5."""
    from test_heads import STRIDES, make_batch
    head = _retina(dict(type='RaMBOAPLoss', use_sigmoid=True, calibration_source='detections'),
                   nms_pre=50, max_per_img=20)
    head.train()
    loss = head.loss_cls
    seen = []
    original = loss.update_calibration_from_detections

    def spy(logits, labels, correct):
        seen.append((logits, labels, correct))
        return original(logits, labels, correct)

    monkeypatch.setattr(loss, 'update_calibration_from_detections', spy)
    feats, gts, metas = make_batch(STRIDES)
    head.loss_by_feat(*head(feats), gts, metas)
    assert len(seen) == 1 and loss.calib_updates.item() == 1
    logits, labels, correct = seen[0]
    with torch.no_grad(), loss.identity_calibration():
        want = head.predict_by_feat(*head(feats), batch_img_metas=metas, rescale=False)
    assert len(logits) == sum(len(w) for w in want) > 0
    assert torch.allclose(logits.float(), torch.logit(torch.cat([w.scores for w in want])),
                          atol=1e-4)
    assert torch.equal(labels, torch.cat([w.labels for w in want]))
    expected = torch.cat([match_detections(w.bboxes, w.labels, w.scores, g.bboxes, g.labels)
                          for w, g in zip(want, gts)])
    assert torch.equal(correct.cpu(), expected)
    # the loss alone cannot get detections
    with pytest.raises(ValueError, match="calibration_source='detections' needs a head"):
        RaMBOAPLoss(calibration_source='detections')(*_batch(4))
