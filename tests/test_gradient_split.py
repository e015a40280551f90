"""tools/gradient_split.py on the tiny FashionDet RetinaNet twin (RaMBO loss), one batch.

RetinaNet's classification and box branches share only the backbone and the FPN: each loss term
alone must reach its own tower and the shared groups, never the other branch (a gradient left
over from the previous term would show up there); the ratios are of the shared groups only and
equal the quotient of the reported norms; the JSON report is written.
"""
import importlib.util
import json
import os.path as osp

import pytest

from test_demo import ROOT, _options, tiny_data  # noqa: F401  (tiny_data is a fixture)

CONFIG = osp.join(ROOT, 'configs', 'fashion', 'retinanet_r18_fashion_rambo.py')
_spec = importlib.util.spec_from_file_location('gradient_split',
                                               osp.join(ROOT, 'tools', 'gradient_split.py'))
gradient_split = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gradient_split)


def test_each_term_reaches_its_branch_and_the_shared_layers(tiny_data, tmp_path):  # noqa: F811
    out = tmp_path / 'split.json'
    options = _options(tiny_data) + ['train_dataloader.batch_size=2']
    assert gradient_split.main([CONFIG, '--batches', '1', '--out', str(out),
                                '--cfg-options', *options,
                                f'work_dir={tmp_path / "wd"}']) == 0
    report = json.loads(out.read_text())
    norms = report['norms']
    assert set(norms) == {'loss_cls', 'loss_bbox'} and report['batches'] == 1
    assert report['groups'] == ['backbone', 'neck', 'bbox_head.cls_convs', 'bbox_head.reg_convs',
                                'bbox_head.retina_cls', 'bbox_head.retina_reg']
    cls, box = norms['loss_cls'], norms['loss_bbox']
    for group in ('backbone', 'neck'):
        assert cls[group] > 0 and box[group] > 0
    assert cls['bbox_head.cls_convs'] > 0 and cls['bbox_head.retina_cls'] > 0
    assert cls['bbox_head.reg_convs'] == 0 and cls['bbox_head.retina_reg'] == 0
    assert box['bbox_head.reg_convs'] > 0 and box['bbox_head.retina_reg'] > 0
    assert box['bbox_head.cls_convs'] == 0 and box['bbox_head.retina_cls'] == 0
    ratios = report['shared_ratios']['loss_cls/loss_bbox']
    assert set(ratios) == {'backbone', 'neck'}
    for group, ratio in ratios.items():
        assert ratio == pytest.approx(cls[group] / box[group])
