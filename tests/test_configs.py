"""The shipped configs: they load, their models build, and small versions train and predict.

No network: backbones are built with ``init_cfg=None`` (no ImageNet download). The train/predict
tests shrink the shipped models to ResNet-18 and two 128x128 images; everything RaMBO-specific
(heads, loss, test_cfg) is the shipped config's.
"""
import copy
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config

import rambo_mmdet  # noqa: F401
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmdet.utils import register_all_modules

register_all_modules()

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', '*.py')))
#: the shipped losses (configs/_base_/rambo_losses.py): mode 'auto', tau 7 in RoI heads, none in
#: dense heads; calibrated scores (fitted on the ranked RoIs in RoI heads, on the training
#: detections in dense heads)
SHIPPED = dict(type='RaMBOAPLoss', use_sigmoid=True, mode='auto', interclass_weight=1 / 3,
               score_activation='logits', loss_weight=1.0, calibration='global')
LOSSES_BASE = osp.join(ROOT, 'configs', '_base_', 'rambo_losses.py')

needs_loss = pytest.mark.skipif(MODELS.get('RaMBOAPLoss') is None,
                                reason='RaMBOAPLoss is not registered by rambo_mmdet (yet)')


def config_name(path):
    return osp.basename(path)


def rambo_head_cfg(cfg):
    """The head config that carries the ranking loss (RoI box head, RPN or dense head)."""
    model = cfg.model
    heads = [model.roi_head.bbox_head, model.rpn_head] if 'roi_head' in model \
        else [model.bbox_head]
    return next(head for head in heads if head.loss_cls.type == 'RaMBOAPLoss')


def without_pretrained(model_cfg):
    model_cfg = copy.deepcopy(model_cfg)
    model_cfg.backbone.init_cfg = None
    return model_cfg


def test_all_expected_configs_are_shipped():
    names = {config_name(p) for p in CONFIGS}
    assert {'faster_rcnn_rambo.py', 'retinanet_rambo.py', 'atss_rambo.py', 'fcos_rambo.py',
            'faster_rcnn_rambo_voc0712.py',
            'retinanet_rambo_voc0712.py', 'faster_rcnn_rambo_voc0712_cocofmt.py'} <= names


@pytest.mark.parametrize('path', CONFIGS, ids=config_name)
def test_config_loads_with_shipped_loss(path):
    cfg = Config.fromfile(path)
    assert 'rambo_mmdet' in cfg.custom_imports.imports
    assert not cfg.custom_imports.allow_failed_imports
    head = rambo_head_cfg(cfg)
    loss = head.loss_cls.to_dict()
    # tau 7 in RoI heads and centerness heads (ATSS, FCOS), none in RetinaNet
    centerness = head.type in ('RaMBOATSSHead', 'RaMBOFCOSHead')
    tau = 7 if 'roi_head' in cfg.model or centerness else 0
    # _delete_ dropped the stock CE/focal keys
    # dense heads: the map fitted on detections; centerness heads (ATSS, FCOS): a
    # class-probability map, fitted on the ranked rows (the centerness multiplies it)
    dense = {} if 'roi_head' in cfg.model else dict(
        calibration_source='ranked_rows' if centerness else 'detections')
    if 'roi_head' in cfg.model:
        # mmdet's Faster R-CNN recipes train with SGD: the box-head loss's SGD variant
        assert cfg.optim_wrapper.optimizer.type == 'SGD'
        dense = dict(cross_entropy='softmax')
    assert loss == pytest.approx(dict(SHIPPED, memory_batches=tau, **dense)), loss
    if 'roi_head' in cfg.model:
        # calibrated scores: mmdet's stock test thresholds (score_thr 0.05)
        assert cfg.model.test_cfg.rcnn.score_thr == 0.05
        assert cfg.model.test_cfg.rcnn.max_per_img == 100
    else:
        assert head.type in ('RaMBORetinaHead', 'RaMBOATSSHead', 'RaMBOFCOSHead')
        assert cfg.model.test_cfg.score_thr == 0.0
        assert cfg.model.test_cfg.max_per_img == 100
    if 'voc0712' in path:
        assert head.num_classes == 20
        metric = cfg.val_evaluator.type
        assert metric == ('CocoMetric' if 'cocofmt' in path else 'VOCMetric')
    else:
        assert head.num_classes == 80


@needs_loss
@pytest.mark.parametrize('path', CONFIGS, ids=config_name)
def test_config_model_builds(path):
    cfg = Config.fromfile(path)
    model = MODELS.build(without_pretrained(cfg.model))
    head = model.roi_head.bbox_head if hasattr(model, 'roi_head') else model.bbox_head
    assert type(head.loss_cls).__name__ == 'RaMBOAPLoss'
    num_classes = head.num_classes
    if hasattr(model, 'roi_head'):
        # get_cls_channels: one sigmoid logit per class, no background logit
        assert head.fc_cls.out_features == num_classes
    else:
        assert head.cls_out_channels == num_classes


def small_model(path, rambo_rpn=False):
    """The shipped model with a ResNet-18 backbone (no pretrained weights) and, for Faster R-CNN,
    fewer proposals and sampled RoIs (CPU time); heads, loss and score_thr stay as shipped.
    ``rambo_rpn``: also rank the RPN's objectness with RaMBORPNHead + RaMBOAPLoss."""
    cfg = Config.fromfile(path)
    if rambo_rpn:
        cfg.merge_from_dict(dict(model=dict(rpn_head=dict(
            type='RaMBORPNHead', loss_cls=dict(_delete_=True, type='RaMBOAPLoss',
                                              use_sigmoid=True)))))
    model_cfg = without_pretrained(cfg.model)
    model_cfg.backbone.depth = 18
    model_cfg.neck.in_channels = [64, 128, 256, 512]
    if 'roi_head' in model_cfg:
        model_cfg.train_cfg.rpn_proposal.max_per_img = 300
        model_cfg.train_cfg.rcnn.sampler.num = 128
        model_cfg.test_cfg.rpn.max_per_img = 300
    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    model.init_weights()  # as the Runner does: mmdet's head inits (cls prior, std 0.01)
    return model


@pytest.fixture
def one_thread():
    """Run single-threaded (restored after): on a busy 2-core machine OpenMP threads
    oversubscribe and a step gets several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@needs_loss
@pytest.mark.parametrize('name, rambo_rpn', [('faster_rcnn_rambo.py', False),
                                             ('faster_rcnn_rambo.py', True),
                                             ('retinanet_rambo.py', False),
                                             ('atss_rambo.py', False),
                                             ('fcos_rambo.py', False)],
                         ids=['faster_rcnn', 'faster_rcnn_rambo_rpn', 'retinanet', 'atss',
                              'fcos'])
def test_r18_loss_backward_predict(name, rambo_rpn, one_thread):
    model = small_model(osp.join(ROOT, 'configs', name), rambo_rpn)
    if rambo_rpn:
        assert type(model.rpn_head).__name__ == 'RaMBORPNHead'
        assert type(model.rpn_head.loss_cls).__name__ == 'RaMBOAPLoss'

    model.train()
    data = demo_mm_inputs(batch_size=2, image_shapes=[(3, 128, 128), (3, 160, 128)],
                          num_items=[3, 2], num_classes=80)
    batch = model.data_preprocessor(data, True)
    losses = model(**batch, mode='loss')
    cls_key = 'loss_cls'
    assert cls_key in losses and torch.isfinite(losses[cls_key])
    total = sum(v for k, v in losses.items() if 'loss' in k
                for v in (v if isinstance(v, (list, tuple)) else [v]))
    total.backward()
    if hasattr(model, 'roi_head'):
        grad = model.roi_head.bbox_head.fc_cls.weight.grad
        assert 'loss_rpn_cls' in losses and 'acc' in losses
    else:
        head = model.bbox_head
        classifier = next(getattr(head, name) for name in ('retina_cls', 'atss_cls', 'conv_cls')
                          if hasattr(head, name))
        grad = classifier.weight.grad
    # the blackbox gradient is sparse (zero where the perturbed ranking equals the ranking),
    # but it reaches the classifier here (fixed seeds)
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        batch = model.data_preprocessor(data, False)
        results = model(**batch, mode='predict')
    assert len(results) == 2
    for result in results:
        pred = result.pred_instances
        num = len(pred)
        assert 0 < num <= 100
        assert pred.bboxes.shape == (num, 4)
        assert pred.scores.shape == pred.labels.shape == (num, )
        assert ((pred.labels >= 0) & (pred.labels < 80)).all()  # never the background column
        assert ((pred.scores > 0) & (pred.scores <= 1)).all()


@pytest.mark.parametrize('path', CONFIGS + sorted(glob.glob(osp.join(ROOT, 'configs', 'fashion',
                                                                      '*rambo.py'))),
                         ids=config_name)
def test_loss_is_stated_once(path, tmp_path):
    """Every shipped RaMBO config takes its loss from _base_/rambo_losses.py: one edit there
    changes them all (checked by editing a copy of the configs tree)."""
    import shutil
    with open(path) as f:
        assert "type='RaMBOAPLoss'" not in f.read()
    copy = tmp_path / 'configs'
    shutil.copytree(osp.join(ROOT, 'configs'), copy)
    base = copy / '_base_' / 'rambo_losses.py'
    base.write_text(base.read_text().replace('interclass_weight=1 / 3',
                                              'interclass_weight=0.25'))
    cfg = Config.fromfile(str(copy / osp.relpath(path, osp.join(ROOT, 'configs'))))
    assert rambo_head_cfg(cfg).loss_cls.interclass_weight == 0.25
