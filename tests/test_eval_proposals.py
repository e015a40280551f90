"""tools/eval_proposals.py end to end on CPU (~20 s): the RPN of a two-stage checkpoint (random
weights, RaMBORPNHead with RaMBOAPLoss) evaluated as mmdet's ``RPN`` detector must report the
recall of the proposals that the two-stage model's own ``rpn_head`` makes, computed here with
pycocotools directly (class-agnostic, maxDets 100 / 300 / 1000)."""
import contextlib
import io
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch

import rambo_mmdet  # noqa: F401  (registers the losses and heads)
from test_calibrate_tool import random_detector
from test_demo import ROOT, _options

TOOL = osp.join(ROOT, 'tools', 'eval_proposals.py')
CONFIG = osp.join(ROOT, 'configs', 'fashion', 'faster_rcnn_r18_fashion_rpn_rambo.py')


@pytest.fixture(scope='module')
def random_two_stage(tmp_path_factory):
    """(data root, checkpoint, model, cfg): the config's detector with random weights, saved."""
    from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu

    tmp = tmp_path_factory.mktemp('eval_proposals')
    data_root, cfg, model = random_detector(tmp, CONFIG)
    assert type(model.rpn_head).__name__ == 'RaMBORPNHead'
    path = str(tmp / 'random.pth')
    save_checkpoint(dict(state_dict=weights_to_cpu(model.state_dict())), path)
    return data_root, path, model, cfg


def _own_rpn_recall(model, cfg, ann_file):
    """AR@100/300/1000 (points) of the two-stage model's rpn_head proposals, pycocotools."""
    from mmengine.runner import Runner
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rpn_cfg = model.rpn_head.test_cfg
    rpn_cfg.max_per_img = 1000
    rpn_cfg.nms_pre = max(rpn_cfg.nms_pre, 1000)
    results = []
    with torch.no_grad():
        for batch in Runner.build_dataloader(cfg.test_dataloader, seed=0):
            data = model.data_preprocessor(batch, False)
            feats = model.extract_feat(data['inputs'])
            preds = model.rpn_head.predict(feats, data['data_samples'], rescale=True)
            for sample, pred in zip(data['data_samples'], preds):
                for box, score in zip(pred.bboxes.tolist(), pred.scores.tolist()):
                    x1, y1, x2, y2 = box
                    results.append(dict(image_id=sample.img_id, category_id=1,
                                        bbox=[x1, y1, x2 - x1, y2 - y1], score=score))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(ann_file)
        evaluation = COCOeval(coco, coco.loadRes(results), 'bbox')
        evaluation.params.useCats = 0
        evaluation.params.maxDets = [100, 300, 1000]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {f'AR@{n}': round(100 * float(evaluation.stats[6 + i]), 1)
            for i, n in enumerate((100, 300, 1000))}


def test_reports_the_recall_of_the_checkpoints_rpn(random_two_stage, tmp_path):
    data_root, ckpt, model, cfg = random_two_stage
    report_path = tmp_path / 'ar' / 'report.json'
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, TOOL, CONFIG, ckpt, '--json', str(report_path),
                           '--cfg-options', *_options(data_root)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    report = json.loads(report_path.read_text())
    assert report['split'] == 'test' and report['proposals_per_image'] == 1000
    expected = _own_rpn_recall(model, cfg, osp.join(data_root, 'annotations',
                                                     'instances_test.json'))
    assert expected['AR@1000'] > 5  # random proposals still cover some garments
    for key, value in expected.items():
        assert report['recall'][key] == pytest.approx(value, abs=0.1), (key, report['recall'])
    assert np.diff([report['recall'][f'AR@{n}'] for n in (100, 300, 1000)]).min() >= 0


def test_rpn_state_dict_maps_the_rpn_and_refuses_one_stage(random_two_stage, tmp_path):
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    from eval_proposals import rpn_state_dict

    _, ckpt, model, _ = random_two_stage
    state = rpn_state_dict(ckpt)
    own = model.state_dict()
    assert not any(key.startswith(('roi_head.', 'rpn_head.')) for key in state)
    rpn_keys = [key for key in own if key.startswith('rpn_head.')]
    assert rpn_keys and all(torch.equal(state['bbox_head.' + key[9:]], own[key])
                            for key in rpn_keys)
    assert all(torch.equal(state[key], own[key]) for key in own
               if key.startswith(('backbone.', 'neck.')))
    one_stage = tmp_path / 'one_stage.pth'
    torch.save({'state_dict': {'bbox_head.x': torch.zeros(1)}}, one_stage)
    with pytest.raises(ValueError, match='no rpn_head'):
        rpn_state_dict(str(one_stage))


def test_summarize_tabulates_mean_and_sd_per_config(tmp_path):
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    from eval_proposals import summarize

    paths = []
    for i, (config, ar) in enumerate([('a.py', 50.0), ('a.py', 52.0), ('b.py', 40.0)]):
        path = tmp_path / f'{i}.json'
        path.write_text(json.dumps(dict(
            config=config, checkpoint=f'{i}.pth', split='test', proposals_per_image=1000,
            recall={'AR@100': ar, 'AR@300': ar + 1, 'AR@1000': ar + 2})))
        paths.append(str(path))
    out = tmp_path / 'table' / 'proposals.md'
    table = summarize(paths, str(out))
    assert '| `a.py` | 2 | 51.0 ± 1.4 | 52.0 ± 1.4 | 53.0 ± 1.4 |' in table
    assert '| `b.py` | 1 | 40.0 | 41.0 | 42.0 |' in table
    assert table in out.read_text()
    rows = json.loads((tmp_path / 'table' / 'proposals.json').read_text())['rows']
    assert rows[0]['recall']['AR@1000'] == [52.0, 54.0] and rows[1]['checkpoints'] == ['2.pth']
