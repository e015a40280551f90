"""RaMBOATSSHead (JoinedLevelsClsLossMixin) and RaMBOFCOSHead on CPU.

* With the focal loss, RaMBOATSSHead's losses equal the stock ATSSHead's (classification summed
  over levels; box and centerness entries identical).
* A ranking loss gets one call whose rows are exactly the stock head's per-level calls' rows.
* Centerness heads score p x sigmoid(centerness), p the loss's class-probability map (fitted on
  the ranked rows, once per batch); a map fitted on detections is refused at build time.
"""
import copy

import pytest
import torch
from mmengine.config import ConfigDict
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

import rambo_mmdet  # noqa: F401  (registers the heads and losses)
from rambo_mmdet.models.dense_heads import (JoinedLevelsClsLossMixin, RaMBOATSSHead,
                                            RaMBOFCOSHead, find_per_level_ranking_heads)
from rambo_mmdet.models.dense_heads.joined_levels import _LevelCallRecorder

from test_heads import (NUM_CLASSES, STRIDES, assert_classifier_trained, make_batch,  # noqa: F401
                        one_thread, total)  # one_thread: the autouse single-thread fixture

register_all_modules()

RANKING = dict(type='RaMBOAPLoss', use_sigmoid=True)
FOCAL = dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)


def atss_cfg(loss_cls=FOCAL, **test_cfg):
    return dict(
        num_classes=NUM_CLASSES, in_channels=8, feat_channels=8, stacked_convs=1,
        norm_cfg=None,
        anchor_generator=dict(type='AnchorGenerator', ratios=[1.0], octave_base_scale=4,
                              scales_per_octave=1, strides=STRIDES),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0],
                        target_stds=[0.1, 0.1, 0.2, 0.2]),
        loss_cls=copy.deepcopy(loss_cls),
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0),
        train_cfg=dict(assigner=dict(type='ATSSAssigner', topk=9), allowed_border=-1,
                       pos_weight=-1, debug=False),
        test_cfg=ConfigDict(nms_pre=50, min_bbox_size=0, score_thr=0.0,
                            nms=dict(type='nms', iou_threshold=0.6), max_per_img=20,
                            **test_cfg))


def fcos_cfg(loss_cls=RANKING, **test_cfg):
    return dict(num_classes=NUM_CLASSES, in_channels=8, feat_channels=8, stacked_convs=1,
                strides=STRIDES, norm_cfg=None, loss_cls=copy.deepcopy(loss_cls),
                test_cfg=ConfigDict(nms_pre=50, min_bbox_size=0, score_thr=0.0,
                                    nms=dict(type='nms', iou_threshold=0.5), max_per_img=20,
                                    **test_cfg))


def build_pair(stock_type, ours_type, cfg, ours_cfg=None):
    stock = MODELS.build(dict(type=stock_type, **copy.deepcopy(cfg)))
    ours = MODELS.build(dict(type=ours_type, **copy.deepcopy(ours_cfg or cfg)))
    ours.load_state_dict(stock.state_dict(), strict=False)  # the map's buffers: ours only
    return stock, ours


def record_calls(loss_module):
    calls = []
    original = loss_module.forward

    def forward(cls_score, labels, label_weights=None, **kwargs):
        calls.append((cls_score, labels, label_weights, kwargs.get('avg_factor')))
        return original(cls_score, labels, label_weights, **kwargs)

    loss_module.forward = forward
    return calls


def test_heads_are_registered():
    assert MODELS.get('RaMBOATSSHead') is RaMBOATSSHead
    assert MODELS.get('RaMBOFCOSHead') is RaMBOFCOSHead
    assert issubclass(RaMBOATSSHead, JoinedLevelsClsLossMixin)


def test_atss_matches_stock_with_focal_loss():
    stock, ours = build_pair('ATSSHead', 'RaMBOATSSHead', atss_cfg())
    feats, gts, metas = make_batch(STRIDES)
    expected = stock.loss_by_feat(*stock(feats), gts, metas)
    got = ours.loss_by_feat(*ours(feats), gts, metas)
    assert set(got) == set(expected) == {'loss_cls', 'loss_bbox', 'loss_centerness'}
    assert got['loss_cls'].dim() == 0 and float(got['loss_cls']) > 0
    torch.testing.assert_close(got['loss_cls'], total(expected['loss_cls']), rtol=1e-5,
                               atol=1e-6)
    for key in ('loss_bbox', 'loss_centerness'):  # the stock code's values, untouched
        assert all(torch.equal(g, e) for g, e in zip(got[key], expected[key]))


def test_atss_ranks_the_stock_rows_in_one_call():
    stock, ours = build_pair('ATSSHead', 'RaMBOATSSHead', atss_cfg(RANKING))
    feats, gts, metas = make_batch(STRIDES)
    stock_calls, our_calls = record_calls(stock.loss_cls), record_calls(ours.loss_cls)
    stock.loss_by_feat(*stock(feats), gts, metas)
    losses = ours.loss_by_feat(*ours(feats), gts, metas)
    assert len(stock_calls) == len(STRIDES) and len(our_calls) == 1
    score, labels, weights, avg_factor = our_calls[0]
    num_anchors = sum(f.shape[-2] * f.shape[-1] for f in feats)
    assert score.shape == (len(metas) * num_anchors, NUM_CLASSES)
    for got, index in ((score, 0), (labels, 1), (weights, 2)):
        assert torch.equal(got, torch.cat([call[index] for call in stock_calls]))
    assert avg_factor == stock_calls[0][3]
    assert (labels < NUM_CLASSES).any()
    sum(total(v) for k, v in losses.items() if k.startswith('loss')).backward()
    assert_classifier_trained(ours.atss_cls)
    assert find_per_level_ranking_heads(ours) == []
    assert find_per_level_ranking_heads(stock) == ['ATSSHead']


def test_recorder_refuses_calls_it_cannot_join():
    recorder = _LevelCallRecorder('GFLHead', 'QualityFocalLoss')
    score = torch.zeros(4, 3)
    with pytest.raises(TypeError, match='GFLHead.*tuple targets'):
        recorder(score, (torch.zeros(4, dtype=torch.long), torch.zeros(4)))
    with pytest.raises(ValueError, match='reduction_override'):
        recorder(score, torch.zeros(4, dtype=torch.long), reduction_override='sum')
    with pytest.raises(RuntimeError, match='did not call loss_cls'):
        recorder.joined()
    recorder(score, torch.zeros(4, dtype=torch.long), avg_factor=2.0)
    recorder(score, torch.zeros(4, dtype=torch.long), torch.ones(4), avg_factor=3.0)
    with pytest.raises(ValueError, match='different avg_factor'):
        recorder.joined()
    # a level without label weights joins as weight 1
    recorder.calls[1] = recorder.calls[1][:3] + (2.0, )
    _, _, weights, _ = recorder.joined()
    assert torch.equal(weights, torch.ones(8))


@pytest.mark.parametrize('head', ['RaMBOATSSHead', 'RaMBOFCOSHead'])
def test_ranking_loss_with_softmax_fails_at_build(head):
    cfg = atss_cfg(dict(type='RaMBOAPLoss')) if head == 'RaMBOATSSHead' else \
        fcos_cfg(dict(type='RaMBOAPLoss'))
    with pytest.raises(ValueError, match='use_sigmoid'):
        MODELS.build(dict(type=head, **cfg))


def test_fcos_losses_are_the_stock_heads_once_its_loss_knows_every_point_is_ranked():
    cfg = fcos_cfg(dict(RANKING, calibration=None))
    stock, ours = build_pair('FCOSHead', 'RaMBOFCOSHead', cfg)
    undeclared = MODELS.build(dict(type='FCOSHead', **copy.deepcopy(cfg)))
    undeclared.load_state_dict(stock.state_dict())
    feats, gts, metas = make_batch(STRIDES)
    got = ours.loss_by_feat(*ours(feats), gts, metas)
    stock.loss_cls.sampled_rows = False
    expected = stock.loss_by_feat(*stock(feats), gts, metas)
    # this batch has more than 1/32 positive points: undeclared, mode 'auto' takes the RoI-head
    # regime (the paper's gradient plus the cross-entropy term) and the loss differs
    other = undeclared.loss_by_feat(*undeclared(feats), gts, metas)
    assert not torch.equal(got['loss_cls'], other['loss_cls'])
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in got)


@pytest.mark.parametrize('head_type', ['RaMBOATSSHead', 'RaMBOFCOSHead'])
def test_centerness_heads_refuse_a_map_fitted_on_detections(head_type):
    loss_cfg = dict(RANKING, calibration_source='detections')
    cfg = atss_cfg(loss_cfg) if head_type == 'RaMBOATSSHead' else fcos_cfg(loss_cfg)
    with pytest.raises(ValueError, match="centerness.*calibration_source='ranked_rows'"):
        MODELS.build(dict(type=head_type, **cfg))


def test_centerness_heads_tell_the_loss_that_every_point_is_ranked():
    # mode 'auto' then takes the dense heads' balanced gradient in every call (tests/test_modes.py)
    # instead of switching regime per batch at 2-5 % positives; the stock heads do not say
    atss = MODELS.build(dict(type='RaMBOATSSHead', **atss_cfg(RANKING)))  # its PseudoSampler
    fcos = MODELS.build(dict(type='RaMBOFCOSHead', **fcos_cfg(RANKING)))  # no sampler
    assert atss.loss_cls.sampled_rows is False and fcos.loss_cls.sampled_rows is False
    stock = MODELS.build(dict(type='FCOSHead', **fcos_cfg(RANKING)))
    assert stock.loss_cls.sampled_rows is None
    test_only = MODELS.build(dict(type='RaMBOATSSHead', **dict(atss_cfg(RANKING), train_cfg=None)))
    assert test_only.loss_cls.sampled_rows is None  # an anchor head's sampler needs a train_cfg


def test_atss_updates_the_class_map_once_per_batch():
    """With calibration_source='ranked_rows' the map is fitted in the loss call: once per batch
    in RaMBOATSSHead (the stock head's per-level calls would fit it on each level apart)."""
    stock, ours = build_pair('ATSSHead', 'RaMBOATSSHead', atss_cfg(RANKING))
    feats, gts, metas = make_batch(STRIDES)
    for head in (stock, ours):
        head.train()
        head.loss_by_feat(*head(feats), gts, metas)
    assert ours.loss_cls.calib_updates.item() == 1
    assert stock.loss_cls.calib_updates.item() == len(STRIDES)


@pytest.mark.parametrize('head_type', ['RaMBOATSSHead', 'RaMBOFCOSHead'])
def test_centerness_heads_score_the_class_probability_times_centerness(head_type):
    """Prediction: p x sigmoid(centerness) with p = sigmoid(a * logit + b), the loss's map; the
    oracle is the stock head with the focal loss whose classifier outputs a * logit + b."""
    scale, bias = 3.0, -1.0
    cfg = atss_cfg(FOCAL) if head_type == 'RaMBOATSSHead' else fcos_cfg(FOCAL)
    stock, ours = build_pair(head_type.replace('RaMBO', ''), head_type, cfg,
                             dict(cfg, loss_cls=RANKING))
    classifier = 'atss_cls' if head_type == 'RaMBOATSSHead' else 'conv_cls'
    with torch.no_grad():
        ours.loss_cls.calib_scale.fill_(scale)
        ours.loss_cls.calib_bias.fill_(bias)
        getattr(stock, classifier).weight.mul_(scale)
        getattr(stock, classifier).bias.mul_(scale).add_(bias)
        feats, _, metas = make_batch(STRIDES)
        want = stock.predict_by_feat(*stock(feats), batch_img_metas=metas, rescale=False)
        got = ours.predict_by_feat(*ours(feats), batch_img_metas=metas, rescale=False)
    for exp, res in zip(want, got):
        assert len(res.scores) > 0
        assert torch.equal(res.bboxes, exp.bboxes) and torch.equal(res.labels, exp.labels)
        torch.testing.assert_close(res.scores, exp.scores)


def test_fcos_state_dict_without_metadata_loads_the_map():
    """mmdet's AnchorFreeHead renames 'bbox_head.loss_cls.*' to 'bbox_head.conv_cls.*' in a state
    dict without version metadata (a plain dict copy); RaMBOFCOSHead keeps the loss's buffers
    out of that. (The renaming reads the key's second part: the head must sit one level down, as
    in a detector.)"""
    cfg = fcos_cfg(RANKING)

    def detector(head_type):
        model = torch.nn.Module()
        model.bbox_head = MODELS.build(dict(type=head_type, **cfg))
        return model

    source = detector('RaMBOFCOSHead')
    source.bbox_head.loss_cls.calib_scale.fill_(2.5)
    plain = {key: value.clone() for key, value in source.state_dict().items()}
    assert not hasattr(plain, '_metadata')
    target = detector('RaMBOFCOSHead')
    target.load_state_dict(plain)
    assert target.bbox_head.loss_cls.calib_scale.item() == 2.5
    assert torch.equal(target.bbox_head.conv_cls.weight, source.bbox_head.conv_cls.weight)
    with pytest.raises(RuntimeError, match='conv_cls.calib_scale'):  # the quirk guarded against
        detector('FCOSHead').load_state_dict(plain)
