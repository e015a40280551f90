"""Proposal recall of a two-stage detector's RPN: COCO AR@100 / AR@300 / AR@1000 (pycocotools,
class-agnostic, IoU 0.5:0.95) on a split, through mmdet's ``RPN`` detector and ``CocoMetric``.

The RPN part of the checkpoint (backbone, neck, ``rpn_head``) is loaded into mmdet's ``RPN``
detector built from the config's backbone, neck and ``rpn_head``; its test settings are the
config's ``test_cfg.rpn`` with ``max_per_img`` = the largest proposal number (1000) and at least
as many pre-NMS candidates per level, so the recall at 1000 is not cut by the config's
smaller test-time proposal count (the FashionDet twins keep 300 for the box head).

Example (stock RPN vs RaMBORPNHead, same seed and schedule)::

    python tools/eval_proposals.py configs/fashion/faster_rcnn_r18_fashion_ce.py \\
        work_dirs/quality/faster_rcnn_ce_s0/iter_1500.pth --json ce.json
    python tools/eval_proposals.py configs/fashion/faster_rcnn_r18_fashion_rpn_rambo.py \\
        work_dirs/rpn_rambo_s0/iter_1500.pth --json rambo_rpn.json
"""
import argparse
import json
import os
import os.path as osp
import sys
import tempfile

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

import rambo_mmdet  # noqa: E402,F401  (shims + registers RaMBO losses and heads)
import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from rambo_mmdet.cli import load_config  # noqa: E402

PROPOSAL_NUMS = (100, 300, 1000)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('config', nargs='?', help='a two-stage detector config (model.rpn_head)')
    p.add_argument('checkpoint', nargs='?')
    p.add_argument('--summarize', nargs='+', metavar='JSON',
                   help='instead: tabulate these --json reports (mean ± sd per config) into '
                        '--out (Markdown) and --out with .json')
    p.add_argument('--out', default=None, help='with --summarize: the Markdown file')
    p.add_argument('--split', choices=['val', 'test'], default='test')
    p.add_argument('--work-dir', default=None, help='default: a temporary folder')
    p.add_argument('--json', default=None, help='write the AR figures here')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='key=value overrides of the config (as in tools/test.py)')
    return p.parse_args(argv)


def rpn_state_dict(checkpoint: str) -> dict:
    """The checkpoint's backbone / neck / rpn_head weights, keyed for mmdet's ``RPN``
    (``rpn_head.`` -> ``bbox_head.``)."""
    state = torch.load(checkpoint, map_location='cpu', weights_only=False)
    state = state.get('state_dict', state)
    if not any(k.startswith('rpn_head.') for k in state):
        raise ValueError(f'{checkpoint}: no rpn_head.* weights (not a two-stage checkpoint)')
    out = {}
    for key, value in state.items():
        if key.startswith(('backbone.', 'neck.')):
            out[key] = value
        elif key.startswith('rpn_head.'):
            out['bbox_head.' + key[len('rpn_head.'):]] = value
    return out


def rpn_config(cfg, split: str):
    """``cfg`` turned into an RPN-only test config evaluating proposals on ``split``."""
    model = cfg.model
    if 'rpn_head' not in model:
        raise ValueError('the config has no model.rpn_head (not a two-stage detector)')
    test_rpn = dict(model.test_cfg.rpn)
    test_rpn['max_per_img'] = max(PROPOSAL_NUMS)
    test_rpn['nms_pre'] = max(test_rpn.get('nms_pre', 0), max(PROPOSAL_NUMS))
    model.backbone.init_cfg = None  # the checkpoint provides the weights
    cfg.model = dict(type='RPN', data_preprocessor=model.data_preprocessor,
                     backbone=model.backbone, neck=model.neck, rpn_head=model.rpn_head,
                     train_cfg=model.train_cfg, test_cfg=dict(rpn=test_rpn))
    loader = cfg.val_dataloader if split == 'val' else cfg.test_dataloader
    evaluator = cfg.val_evaluator if split == 'val' else cfg.test_evaluator
    coco = [e for e in (evaluator if isinstance(evaluator, list) else [evaluator])
            if e['type'] == 'CocoMetric']
    if not coco:
        raise ValueError(f'the {split} evaluator has no CocoMetric (needs its ann_file)')
    cfg.test_dataloader = loader
    cfg.test_evaluator = dict(type='CocoMetric', ann_file=coco[0]['ann_file'],
                              metric='proposal', proposal_nums=PROPOSAL_NUMS,
                              format_only=False)
    cfg.custom_hooks = []  # training-signal hooks have nothing to log at test time
    return cfg


def summarize(paths, out=None) -> str:
    """Markdown table of --json reports: per config, AR mean ± sd over its checkpoints."""
    import statistics
    reports = []
    for path in paths:
        with open(path) as f:
            reports.append(json.load(f))
    by_config = {}
    for report in reports:
        by_config.setdefault(report['config'], []).append(report)
    keys = ['AR@100', 'AR@300', 'AR@1000']
    lines = ['| config | checkpoints | ' + ' | '.join(keys) + ' |',
             '|---|---|' + '---|' * len(keys)]
    rows = []
    for config, group in by_config.items():
        cells = []
        for key in keys:
            values = [r['recall'][key] for r in group]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f'{statistics.mean(values):.1f} ± {sd:.1f}' if len(values) > 1
                         else f'{values[0]:.1f}')
        rows.append(dict(config=config, checkpoints=[r['checkpoint'] for r in group],
                         recall={k: [r['recall'][k] for r in group] for k in keys}))
        lines.append(f'| `{config}` | {len(group)} | ' + ' | '.join(cells) + ' |')
    table = '\n'.join(lines) + '\n'
    if out:
        os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
        with open(out, 'w') as f:
            f.write('# Proposal recall (tools/eval_proposals.py)\n\n'
                    f'COCO AR (class-agnostic, IoU 0.5:0.95), split {reports[0]["split"]}, '
                    f'{reports[0]["proposals_per_image"]} proposals per image at most; '
                    'mean ± sd over the checkpoints (seeds) of each config.\n\n' + table)
        with open(osp.splitext(out)[0] + '.json', 'w') as f:
            json.dump(dict(rows=rows), f, indent=1)
    return table


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize, args.out), end='')
        return 0
    if not (args.config and args.checkpoint):
        raise SystemExit('eval_proposals.py: CONFIG and CHECKPOINT are required '
                         '(or --summarize JSON ...)')
    cfg = load_config(args.config, cfg_options=args.cfg_options)
    cfg = rpn_config(cfg, args.split)
    with tempfile.TemporaryDirectory() as tmp:
        weights = osp.join(tmp, 'rpn.pth')
        torch.save({'state_dict': rpn_state_dict(args.checkpoint)}, weights)
        cfg.load_from = weights
        cfg.work_dir = args.work_dir or osp.join(tmp, 'work')
        metrics = Runner.from_cfg(cfg).test()
    recall = {k.split('/')[-1]: round(100 * float(v), 1) for k, v in metrics.items()
              if 'AR' in k}
    report = dict(config=args.config, checkpoint=args.checkpoint, split=args.split,
                  proposals_per_image=max(PROPOSAL_NUMS), recall=recall)
    print(json.dumps(report, indent=1))
    if args.json:
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
