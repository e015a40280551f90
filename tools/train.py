"""Train a detector with mmdet's Runner, with rambo_mmdet's losses and heads registered.

Same command line as mmdetection 3.x ``tools/train.py``::

    python tools/train.py configs/retinanet_rambo.py [--work-dir DIR] [--amp]
        [--resume [PATH]] [--cfg-options key=value ...] [--launcher pytorch]

Differences: ``import rambo_mmdet`` (compatibility shims + registration) before the config is
read; the dataset paths of the train (and val) split and the pretrained weights (an https URL
must be in torch.hub's cache or reachable, ``torchvision://`` needs torchvision, a local file must
exist) are checked before the Runner is built (a problem ends the run with exit code 2 and a
message saying what to do); before training, a dense head that gives a ranking loss softmax
channels is an error, and one that ranks each FPN level separately gets a warning.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

import rambo_mmdet  # noqa: E402,F401  (shims + registers RaMBO losses and heads)
from rambo_mmdet.hooks import NameRankingLossesHook  # noqa: E402
from mmengine.config import DictAction  # noqa: E402
from mmdet.registry import RUNNERS  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from rambo_mmdet.cli import (check_dataset_paths, check_pretrained_weights,  # noqa: E402
                             check_ranking_heads, load_config)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector (RaMBO-enabled mmdet)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='enable automatic-mixed-precision training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='enable automatically scaling LR')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from the checkpoint PATH, or without PATH from the latest '
                        'checkpoint in the work directory')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (lists: key="[a,b]")')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    # torch.distributed.launch passes --local_rank (torch < 2) or --local-rank (torch >= 2)
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_cfg(args):
    """Config from the file and the command line (priority: CLI > file > defaults)."""
    cfg = load_config(args.config, args.launcher, args.cfg_options, args.work_dir)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        scale = cfg.get('auto_scale_lr') or {}
        if 'enable' not in scale or 'base_batch_size' not in scale:
            raise RuntimeError('--auto-scale-lr needs auto_scale_lr=dict(enable=..., '
                               'base_batch_size=...) in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':  # latest checkpoint of work_dir
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main(argv=None):
    args = parse_args(argv)
    try:
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()
    except ImportError:
        pass
    cfg = build_cfg(args)

    splits = ['train']
    if cfg.get('val_cfg') and cfg.get('val_dataloader') and cfg.get('val_evaluator'):
        splits.append('val')
    try:
        check_dataset_paths(cfg, splits)
        if not cfg.get('resume'):  # resuming restores all weights
            check_pretrained_weights(cfg)
    except FileNotFoundError as err:  # DatasetPathError is one
        print(f'error: {err}', file=sys.stderr)
        return 2

    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    try:
        check_ranking_heads(runner.model)  # softmax + ranking loss: error; per-level: warning
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    if not any(isinstance(hook, NameRankingLossesHook) for hook in runner.hooks):
        # a config without it (e.g. a stock one with the loss swapped): errors inside a loss
        # still name its head, and the box head's cross-entropy term gets its advice for the
        # run's optimiser
        runner.register_hook(NameRankingLossesHook())
    runner.train()
    return 0


if __name__ == '__main__':
    sys.exit(main())
