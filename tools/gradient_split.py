"""Gradient norm per parameter group from each loss term alone: who drives the shared layers.

For a few training batches of a config (at its initial weights, or a checkpoint's), one forward
pass each, backpropagate each loss term of the model's loss dict on its own (``loss_cls``, ``loss_bbox``, ...; a list of
per-level terms is summed) and record the L2 norm of the gradient it gives each parameter group
(parameters grouped by name prefix: by default the model's top-level children, and the head's
children one level deeper). Reported per term and group: the mean norm over the batches, and for
each pair of terms their ratio in the groups both reach (the shared layers). Nothing is trained::

    python tools/gradient_split.py configs/fashion/retinanet_r18_fashion_rambo.py \\
        [--checkpoint work_dirs/.../iter_4500.pth] [--batches 4] [--out split.json] \\
        [--cfg-options ...]

Without ``--checkpoint`` the model is initialised as training would start (``init_weights``:
the config's pretrained backbone, fresh heads).
"""
import argparse
import json
import os
import os.path as osp
import sys
from collections import OrderedDict

import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('config')
    p.add_argument('--checkpoint', default=None, help='weights to load (default: init_weights)')
    p.add_argument('--batches', type=int, default=4, help='training batches to average over')
    p.add_argument('--terms', nargs='+', default=None,
                   help='loss terms to split (default: every loss_* of the loss dict)')
    p.add_argument('--groups', nargs='+', default=None,
                   help='parameter-name prefixes (default: top-level children, and the children '
                   'of bbox_head / rpn_head / roi_head.bbox_head)')
    p.add_argument('--out', default=None, help='write the report as JSON here')
    p.add_argument('--seed', type=int, default=0,
                   help='randomness.seed of the run: head initialisation and batch order')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None)
    return p.parse_args(argv)


def default_groups(model):
    """Top-level children with parameters; for the heads (``bbox_head``, ``rpn_head``,
    ``roi_head.bbox_head``) their children instead (e.g. the classification and regression
    towers of a RetinaNet head, the shared and separate fc layers of a box head)."""
    groups = []
    for name, child in model.named_children():
        head, prefix = None, name
        if name in ('bbox_head', 'rpn_head'):
            head = child
        elif name == 'roi_head' and hasattr(child, 'bbox_head'):
            head, prefix = child.bbox_head, f'{name}.bbox_head'
        if head is None:
            if any(True for _ in child.parameters()):
                groups.append(name)
            continue
        groups += [f'{prefix}.{n}' for n, m in head.named_children()
                   if any(True for _ in m.parameters())]
    return groups


def group_norms(model, groups):
    """``{group: L2 norm of the gradient of its parameters}`` (0 where no gradient reached)."""
    squares = OrderedDict((g, 0.0) for g in groups)
    for name, param in model.named_parameters():
        if param.grad is None:
            continue
        for g in groups:
            if name.startswith(g + '.'):
                squares[g] += float(param.grad.detach().float().pow(2).sum())
                break
    return OrderedDict((g, v ** 0.5) for g, v in squares.items())


def _term_value(value):
    return sum(value) if isinstance(value, (list, tuple)) else value


def split(cfg, checkpoint=None, batches=4, terms=None, groups=None, seed=0):
    """The report (a dict) for the config ``cfg`` (an mmengine ``Config``)."""
    from mmengine.runner import Runner
    # the runner seeds everything (head initialisation, data order) from randomness.seed
    cfg.randomness = dict(cfg.get('randomness') or {}, seed=seed)
    cfg.train_dataloader.num_workers = 0
    cfg.train_dataloader.persistent_workers = False
    runner = Runner.from_cfg(cfg)
    model = runner.model
    if checkpoint:
        runner.load_checkpoint(checkpoint)
    else:
        model.init_weights()
    model.train()
    groups = groups or default_groups(model)
    loader = iter(runner.train_dataloader)
    sums, done = None, 0
    for _ in range(batches):
        try:
            batch = next(loader)
        except StopIteration:
            break
        data = model.data_preprocessor(batch, True)
        losses = model(**data, mode='loss')  # one forward; each term backpropagated on its own
        names = terms or [k for k in losses if k.startswith('loss')]
        if sums is None:
            sums = OrderedDict((t, OrderedDict((g, 0.0) for g in groups)) for t in names)
        for i, term in enumerate(names):
            model.zero_grad(set_to_none=True)
            value = _term_value(losses[term])
            if torch.is_tensor(value) and value.requires_grad:
                value.backward(retain_graph=i < len(names) - 1)
            for g, norm in group_norms(model, groups).items():
                sums[term][g] += norm
        done += 1
    if not done:
        raise ValueError('the training dataloader yielded no batch')
    norms = {t: {g: v / done for g, v in row.items()} for t, row in sums.items()}
    ratios = {}
    names = list(norms)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = {g: norms[a][g] / norms[b][g] for g in groups
                      if norms[a][g] > 0 and norms[b][g] > 0}
            if shared:
                ratios[f'{a}/{b}'] = shared
    return dict(checkpoint=checkpoint or 'init_weights', batches=done, groups=groups,
                norms=norms, shared_ratios=ratios)


def main(argv=None):
    args = parse_args(argv)
    from mmengine.config import Config
    import rambo_mmdet  # noqa: F401  (registers the project's modules)
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = cfg.get('work_dir') or osp.join('work_dirs', 'gradient_split')
    report = split(cfg, args.checkpoint, args.batches, args.terms, args.groups, args.seed)
    report['config'] = args.config
    for term, row in report['norms'].items():
        print(f'{term:>12}: ' + '  '.join(f'{g} {v:.3g}' for g, v in row.items()))
    for pair, row in report['shared_ratios'].items():
        print(f'{pair:>22} in shared groups: ' + '  '.join(f'{g} {v:.3g}' for g, v in row.items()))
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
