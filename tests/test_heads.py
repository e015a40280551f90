"""Dense heads: RaMBORetinaHead / RaMBORPNHead (AllLevelsClsLossMixin) on CPU.

* With per-element losses they reproduce the stock heads' losses exactly.
* The classification loss is called once, on all anchors of all levels and images.
* Misconfiguration (ranking loss + softmax) fails at build time.
* Ranking losses in stock heads: per-level calls in RetinaHead, one call in FCOSHead.

The ranking loss is ``RaMBOAPLoss`` when rambo_mmdet registers it, else a small stand-in with
the same interface (``needs_all_samples = True``), so these tests run before the loss lands.
"""
import copy

import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData
from torch import nn

import rambo_mmdet  # noqa: F401  (registers the heads and losses)
from mmdet.models.dense_heads import FCOSHead, RetinaHead, RPNHead
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from rambo_mmdet.cli import check_ranking_heads
from rambo_mmdet.models.dense_heads import (AllLevelsClsLossMixin, RaMBORetinaHead,
                                            RaMBORPNHead, find_per_level_ranking_heads,
                                            find_softmax_ranking_heads)

register_all_modules()


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Run single-threaded (restored after): small tensors, and on a busy 2-core machine OpenMP
    threads oversubscribe."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

NUM_CLASSES = 3
IMG_SIZE = 64
STRIDES = [8, 16, 32, 64, 128]


@MODELS.register_module(force=True)
class _StandInRankingLoss(nn.Module):
    """Test double of RaMBOAPLoss's interface: all samples at once, ``1 - mean(pos score)``."""

    needs_all_samples = True

    def __init__(self, use_sigmoid=True, loss_weight=1.0):
        super().__init__()
        self.use_sigmoid = use_sigmoid
        self.loss_weight = loss_weight

    def forward(self, cls_score, labels, label_weights=None, avg_factor=None,
                reduction_override=None):
        num_classes = cls_score.size(1)
        keep = labels.new_ones(labels.shape, dtype=torch.bool) if label_weights is None \
            else label_weights > 0
        pos = keep & (labels < num_classes)
        if not pos.any():
            return cls_score.sum() * 0.0
        score = cls_score[pos].sigmoid().gather(1, labels[pos, None])
        return self.loss_weight * (1.0 - score.mean())


def ranking_loss_cfg(**kwargs):
    """RaMBOAPLoss if registered, else the stand-in (same constructor keywords used here)."""
    loss_type = 'RaMBOAPLoss' if MODELS.get('RaMBOAPLoss') is not None else '_StandInRankingLoss'
    return dict(type=loss_type, **kwargs)


def retina_cfg(**overrides):
    cfg = dict(
        num_classes=NUM_CLASSES,
        in_channels=8,
        feat_channels=8,
        stacked_convs=1,
        anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4, scales_per_octave=3,
                              ratios=[0.5, 1.0, 2.0], strides=STRIDES),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0],
                        target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0),
        train_cfg=dict(
            assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0,
                          ignore_iof_thr=-1),
            sampler=dict(type='PseudoSampler'),
            allowed_border=-1, pos_weight=-1, debug=False),
        test_cfg=ConfigDict(nms_pre=100, min_bbox_size=0, score_thr=0.0,
                      nms=dict(type='nms', iou_threshold=0.5), max_per_img=20))
    cfg.update(overrides)
    return cfg


def rpn_cfg(**overrides):
    cfg = dict(
        in_channels=8,
        feat_channels=8,
        anchor_generator=dict(type='AnchorGenerator', scales=[8], ratios=[0.5, 1.0, 2.0],
                              strides=[4, 8, 16, 32, 64]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0],
                        target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0),
        train_cfg=dict(
            assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3,
                          min_pos_iou=0.3, match_low_quality=True, ignore_iof_thr=-1),
            sampler=dict(type='RandomSampler', num=64, pos_fraction=0.5, neg_pos_ub=-1,
                         add_gt_as_proposals=False),
            allowed_border=-1, pos_weight=-1, debug=False))
    cfg.update(overrides)
    return cfg


def make_batch(strides, num_imgs=2, channels=8, class_agnostic=False, seed=0,
               img_shape=(IMG_SIZE, IMG_SIZE)):
    """Features per level ``[B, channels, H/s, W/s]``, gt instances and metas of ``B`` images
    of ``img_shape`` ``(H, W)``."""
    height, width = img_shape
    gen = torch.Generator().manual_seed(seed)
    feats = [torch.randn(num_imgs, channels, max(height // s, 1), max(width // s, 1),
                         generator=gen) for s in strides]
    size = torch.tensor([float(width), float(height)])  # (x, y)
    gts, metas = [], []
    for i in range(num_imgs):
        num = 2 + i
        xy = torch.rand(num, 2, generator=gen) * size * 0.5
        wh = 8 + torch.rand(num, 2, generator=gen) * size * 0.45
        labels = torch.zeros(num, dtype=torch.long) if class_agnostic else \
            torch.randint(0, NUM_CLASSES, (num,), generator=gen)
        gts.append(InstanceData(bboxes=torch.cat([xy, torch.minimum(xy + wh, size)], 1),
                                labels=labels))
        metas.append(dict(img_shape=img_shape, pad_shape=img_shape, scale_factor=(1.0, 1.0)))
    return feats, gts, metas


def build_pair(stock_type, ours_type, cfg):
    """A stock head and ours with identical weights."""
    stock = MODELS.build(dict(type=stock_type, **copy.deepcopy(cfg)))
    ours = MODELS.build(dict(type=ours_type, **copy.deepcopy(cfg)))
    ours.load_state_dict(stock.state_dict())
    return stock, ours


def total(value):
    return sum(value) if isinstance(value, (list, tuple)) else value


def assert_classifier_trained(layer):
    """The classification loss reaches ``layer``: a finite, non-zero weight gradient (a loss
    detached or multiplied by 0 on the way gives none or zeros)."""
    grad = layer.weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


def test_heads_are_registered_mixins():
    assert MODELS.get('RaMBORetinaHead') is RaMBORetinaHead
    assert MODELS.get('RaMBORPNHead') is RaMBORPNHead
    for cls, stock in ((RaMBORetinaHead, RetinaHead), (RaMBORPNHead, RPNHead)):
        assert issubclass(cls, AllLevelsClsLossMixin) and issubclass(cls, stock)
        # the mixin is the only loss code: no head-specific loss_by_feat
        assert 'loss_by_feat' not in vars(cls)


@pytest.mark.parametrize('variant', ['focal', 'focal_giou_decoded', 'bce'])
def test_retina_matches_stock_per_element_loss(variant):
    overrides = {}
    if variant == 'focal_giou_decoded':
        overrides = dict(reg_decoded_bbox=True, loss_bbox=dict(type='GIoULoss', loss_weight=2.0))
    elif variant == 'bce':
        overrides = dict(loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0))
    stock, ours = build_pair('RetinaHead', 'RaMBORetinaHead', retina_cfg(**overrides))
    feats, gts, metas = make_batch(STRIDES)
    expected = stock.loss_by_feat(*stock(feats), gts, metas)
    got = ours.loss_by_feat(*ours(feats), gts, metas)

    assert set(got) == {'loss_cls', 'loss_bbox'} == set(expected)
    for key in got:
        assert got[key].dim() == 0
        torch.testing.assert_close(got[key], total(expected[key]), rtol=1e-5, atol=1e-6)
        assert float(got[key].detach()) > 0


def test_rpn_matches_stock_and_keeps_rpn_keys():
    stock, ours = build_pair('RPNHead', 'RaMBORPNHead', rpn_cfg())
    feats, gts, metas = make_batch([4, 8, 16, 32, 64], class_agnostic=True)
    torch.manual_seed(3)  # same random sampling of anchors in both calls
    expected = stock.loss_by_feat(*stock(feats), gts, metas)
    torch.manual_seed(3)
    got = ours.loss_by_feat(*ours(feats), gts, metas)

    assert set(got) == {'loss_rpn_cls', 'loss_rpn_bbox'} == set(expected)
    for key in got:
        torch.testing.assert_close(got[key], total(expected[key]), rtol=1e-5, atol=1e-6)


def _spy_calls(loss_module):
    """Record (cls_score, labels, label_weights) of every call of ``loss_module``."""
    calls = []
    original = loss_module.forward

    def forward(cls_score, labels, label_weights=None, **kwargs):
        calls.append((cls_score, labels, label_weights))
        return original(cls_score, labels, label_weights, **kwargs)

    loss_module.forward = forward
    return calls


@pytest.mark.parametrize('head_type', ['RaMBORetinaHead', 'RetinaHead'])
def test_one_cls_loss_call_for_all_levels_and_images(head_type):
    head = MODELS.build(dict(type=head_type, **retina_cfg(loss_cls=ranking_loss_cfg(
        use_sigmoid=True))))
    feats, gts, metas = make_batch(STRIDES)
    calls = _spy_calls(head.loss_cls)
    losses = head.loss_by_feat(*head(feats), gts, metas)
    sum(total(v) for v in losses.values()).backward()

    num_anchors = sum(f.shape[-2] * f.shape[-1] for f in feats) * head.num_base_priors
    if head_type == 'RaMBORetinaHead':
        assert len(calls) == 1
        cls_score, labels, label_weights = calls[0]
        assert cls_score.shape == (2 * num_anchors, NUM_CLASSES)
        assert labels.shape == label_weights.shape == (2 * num_anchors, )
        assert (labels < NUM_CLASSES).any()  # positives of both images in one ranking
        assert (label_weights == 0).any()  # anchors ignored by the assigner are masked out
        assert find_per_level_ranking_heads(head) == []
    else:  # stock head: allowed, but each level is ranked on its own
        assert len(calls) == len(STRIDES)
        assert find_per_level_ranking_heads(head) == ['RetinaHead']
    assert_classifier_trained(head.retina_cls)


def test_concatenation_order_matches_targets():
    """Row r of the flattened scores is the anchor whose target is labels[r], for every row, on
    non-square feature maps (so that a swapped H/W changes the order)."""
    stock, head = build_pair('RetinaHead', 'RaMBORetinaHead', retina_cfg())
    num_imgs = 2
    feats, gts, metas = make_batch(STRIDES, num_imgs=num_imgs, img_shape=(64, 96))
    assert all(f.shape[-2] != f.shape[-1] for f in feats[:3])
    cls_scores, bbox_preds = head(feats)
    calls = _spy_calls(head.loss_cls)
    head.loss_by_feat(cls_scores, bbox_preds, gts, metas)
    (cls_score, labels, label_weights), = calls
    # the scores, row by row: image, then level, then location (y, then x), then anchor
    num_anchors, c = head.num_base_priors, NUM_CLASSES
    expected = [level[b, a * c:(a + 1) * c, y, x] for b in range(num_imgs) for level in cls_scores
                for y in range(level.shape[2]) for x in range(level.shape[3])
                for a in range(num_anchors)]
    assert torch.equal(cls_score, torch.stack(expected))
    # the targets: the stock head's per-level calls pair the same scores with the same labels
    stock_calls = _spy_calls(stock.loss_cls)
    stock.loss_by_feat(*stock(feats), gts, metas)
    assert len(stock_calls) == len(feats)
    sizes = [f.shape[-2] * f.shape[-1] * num_anchors for f in feats]
    for level, (level_score, level_labels, level_weights) in enumerate(stock_calls):
        for b in range(num_imgs):
            start = b * sum(sizes) + sum(sizes[:level])
            ours = slice(start, start + sizes[level])
            theirs = slice(b * sizes[level], (b + 1) * sizes[level])
            assert torch.equal(cls_score[ours], level_score[theirs])
            assert torch.equal(labels[ours], level_labels[theirs])
            assert torch.equal(label_weights[ours], level_weights[theirs])
    assert (labels < NUM_CLASSES).sum() > 1  # positives on some levels of both images


@pytest.mark.parametrize('loss_kwargs', [dict(use_sigmoid=False), dict()],
                         ids=['use_sigmoid_false', 'use_sigmoid_missing'])
@pytest.mark.parametrize('head', ['RaMBORetinaHead', 'RaMBORPNHead'])
def test_ranking_loss_with_softmax_fails_at_build(head, loss_kwargs):
    cfg = retina_cfg() if head == 'RaMBORetinaHead' else rpn_cfg()
    cfg['loss_cls'] = ranking_loss_cfg(**loss_kwargs)
    with pytest.raises(ValueError, match='use_sigmoid=True'):
        MODELS.build(dict(type=head, **cfg))


def test_rpn_with_ranking_loss_runs():
    head = MODELS.build(dict(type='RaMBORPNHead', **rpn_cfg(loss_cls=ranking_loss_cfg(
        use_sigmoid=True))))
    feats, gts, metas = make_batch([4, 8, 16, 32, 64], class_agnostic=True)
    calls = _spy_calls(head.loss_cls)
    losses = head.loss_by_feat(*head(feats), gts, metas)
    assert len(calls) == 1 and calls[0][0].shape[1] == 1
    assert int((calls[0][2] > 0).sum()) <= 2 * 64  # only the sampled anchors are ranked
    (losses['loss_rpn_cls'] + losses['loss_rpn_bbox']).backward()
    assert_classifier_trained(head.rpn_cls)


def test_heads_tell_the_loss_whether_their_rows_are_sampled():
    # mode 'auto' keys its gradient regime on it (tests/test_modes.py): the RPN's sampler picks a
    # bounded set of anchors (the RoI-head regime), RetinaNet's PseudoSampler keeps every anchor
    if MODELS.get('RaMBOAPLoss') is None:
        pytest.skip('needs RaMBOAPLoss')
    loss = ranking_loss_cfg(use_sigmoid=True)
    rpn = MODELS.build(dict(type='RaMBORPNHead', **rpn_cfg(loss_cls=loss)))
    retina = MODELS.build(dict(type='RaMBORetinaHead', **retina_cfg(loss_cls=loss)))
    test_only = MODELS.build(dict(type='RaMBORPNHead', **rpn_cfg(loss_cls=loss, train_cfg=None)))
    assert rpn.loss_cls.sampled_rows is True
    assert retina.loss_cls.sampled_rows is False
    assert test_only.loss_cls.sampled_rows is None  # no sampler without a train_cfg


def test_roi_box_head_keeps_the_sampled_regime_with_few_positives():
    # RoIs are a bounded sample: after a BBoxHead.loss call the loss knows it, so a batch with
    # positives below auto's 1/32 switch (2 of 256 here) still gets the paper's gradient + CE
    if MODELS.get('RaMBOAPLoss') is None:
        pytest.skip('needs RaMBOAPLoss')
    torch.manual_seed(0)
    head = MODELS.build(dict(type='Shared2FCBBoxHead', in_channels=4, fc_out_channels=8,
                             roi_feat_size=2, num_classes=NUM_CLASSES,
                             loss_cls=ranking_loss_cfg(use_sigmoid=True, memory_batches=0)))
    assert head.loss_cls.sampled_rows is None
    rows = 256
    cls_score, bbox_pred = head(torch.randn(rows, 4, 2, 2))
    labels = torch.full((rows,), NUM_CLASSES)
    labels[:2] = 0
    rois = torch.cat([torch.zeros(rows, 1), torch.rand(rows, 4) * 10], dim=1)
    losses = head.loss(cls_score, bbox_pred, rois, labels, torch.ones(rows),
                       torch.randn(rows, 4), torch.ones(rows, 4))
    assert head.loss_cls.sampled_rows is True
    # the paper regime's sigmoid cross-entropy term gives every score a gradient
    grad, = torch.autograd.grad(losses['loss_cls'], cls_score)
    assert torch.count_nonzero(grad) > 0.9 * grad.numel()


def test_rpn_predicts_on_calibrated_logits():
    """RaMBORPNHead proposes from the loss's calibrated logits ``a * logit + b``: with the
    identity map exactly the stock RPN's proposals; with a map, the stock RPN's proposals for a
    classifier whose logits are ``a * logit + b`` -- no ties at sigmoid 1.0 where the raw logits
    are huge (they are, for the stock prediction)."""
    cfg = rpn_cfg(test_cfg=ConfigDict(nms_pre=200, max_per_img=50, min_bbox_size=0,
                                      nms=dict(type='nms', iou_threshold=0.7)))
    torch.manual_seed(0)
    stock = MODELS.build(dict(type='RPNHead', **copy.deepcopy(cfg)))
    ours = MODELS.build(dict(type='RaMBORPNHead', **dict(copy.deepcopy(cfg), loss_cls=dict(
        type='RaMBOAPLoss', use_sigmoid=True))))
    with torch.no_grad():
        stock.rpn_cls.weight.mul_(400.0)  # logits of +-100 and more, as an AP-trained RPN's
        stock.rpn_cls.bias.fill_(30.0)
    ours.load_state_dict(stock.state_dict(), strict=False)
    feats, _, metas = make_batch([4, 8, 16, 32, 64], class_agnostic=True)

    def proposals(head):
        return head.predict_by_feat(*head(feats), batch_img_metas=metas, rescale=False)

    raw = proposals(stock)
    assert int((raw[0].scores == 1.0).sum()) > 5  # the stock prediction's ties
    for exp, res in zip(raw, proposals(ours)):  # identity map: the stock prediction
        assert torch.equal(res.bboxes, exp.bboxes) and torch.equal(res.scores, exp.scores)

    # a map that brings the largest logit to 10 (sigmoid 0.99995: no float32 saturation)
    largest = max(float(score.abs().max()) for score in stock(feats)[0])
    assert largest > 100
    scale, bias = 10.0 / largest, -1.0
    ours.loss_cls.calib_scale.fill_(scale)
    ours.loss_cls.calib_bias.fill_(bias)
    with torch.no_grad():  # a stock classifier that outputs a * logit + b
        stock.rpn_cls.weight.mul_(scale)
        stock.rpn_cls.bias.mul_(scale).add_(bias)
    for exp, res in zip(proposals(stock), proposals(ours)):
        assert int((res.scores == 1.0).sum()) == 0
        assert torch.equal(res.bboxes, exp.bboxes)
        assert torch.allclose(res.scores, exp.scores, rtol=1e-5, atol=1e-6)


def test_fcos_head_with_ranking_loss_unchanged():
    """FCOSHead already concatenates all levels and images: it works as it is."""
    head = FCOSHead(num_classes=NUM_CLASSES, in_channels=8, feat_channels=8, stacked_convs=1,
                    strides=[8, 16, 32, 64, 128], norm_cfg=None,
                    loss_cls=ranking_loss_cfg(use_sigmoid=True))
    feats, gts, metas = make_batch(STRIDES)
    calls = _spy_calls(head.loss_cls)
    losses = head.loss_by_feat(*head(feats), gts, metas)
    assert len(calls) == 1
    assert calls[0][0].shape == (2 * sum(f.shape[-2] * f.shape[-1] for f in feats), NUM_CLASSES)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert_classifier_trained(head.conv_cls)


def test_retina_predict_unchanged():
    """Trained with the ranking loss, the head predicts exactly as the stock RetinaHead (focal
    loss, sigmoid scores) with the same weights."""
    stock = MODELS.build(dict(type='RetinaHead', **retina_cfg()))
    ours = MODELS.build(dict(type='RaMBORetinaHead',
                             **retina_cfg(loss_cls=ranking_loss_cfg(use_sigmoid=True))))
    ours.load_state_dict(stock.state_dict())
    feats, _, metas = make_batch(STRIDES)
    expected = stock.predict_by_feat(*stock(feats), batch_img_metas=metas, rescale=False)
    got = ours.predict_by_feat(*ours(feats), batch_img_metas=metas, rescale=False)
    assert len(got) == len(expected) == len(metas)
    for exp, res in zip(expected, got):
        assert res.bboxes.shape[1] == 4 and len(res.scores) > 0
        assert torch.equal(res.scores, exp.scores)
        assert torch.equal(res.labels, exp.labels)
        assert torch.equal(res.bboxes, exp.bboxes)


def test_tools_check_of_stock_heads_with_ranking_loss():
    """Stock heads cannot refuse a ranking loss at build time; the tools check the built model."""
    model = nn.ModuleDict(dict(
        ours=MODELS.build(dict(type='RaMBORetinaHead',
                               **retina_cfg(loss_cls=ranking_loss_cfg(use_sigmoid=True)))),
        per_level=MODELS.build(dict(type='RetinaHead',
                                    **retina_cfg(loss_cls=ranking_loss_cfg(use_sigmoid=True))))))
    assert check_ranking_heads(model) == ['per_level']  # a warning, not an error
    # use_sigmoid missing from the config: the stock head builds num_classes + 1 channels
    model['softmax'] = MODELS.build(dict(type='RetinaHead',
                                         **retina_cfg(loss_cls=ranking_loss_cfg())))
    assert find_softmax_ranking_heads(model) == ['softmax']
    with pytest.raises(ValueError, match='softmax.*use_sigmoid=True'):
        check_ranking_heads(model)
