"""Test (and evaluate) a detector with mmdet's Runner, with rambo_mmdet registered.

Same command line as mmdetection 3.x ``tools/test.py``::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl]
        [--show] [--show-dir DIR] [--tta] [--cfg-options key=value ...] [--launcher pytorch]

Differences: ``import rambo_mmdet`` (compatibility shims, e.g. loading mmengine checkpoints under
torch >= 2.6, + registration) first, and the test split's dataset paths are checked before the
Runner is built (exit code 2 with a message saying how to get the data).
"""
import argparse
import copy
import os
import os.path as osp
import sys
import warnings

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

import rambo_mmdet  # noqa: E402,F401  (shims + registers RaMBO losses and heads)
from mmengine.config import ConfigDict, DictAction  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from mmdet.registry import RUNNERS  # noqa: E402
from rambo_mmdet.cli import DatasetPathError, check_dataset_paths, load_config  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector (RaMBO-enabled)')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation metrics')
    parser.add_argument('--out', type=str,
                        help='dump predictions to a pickle file (.pkl) for offline evaluation')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='save painted images under work_dir/TIMESTAMP/DIR')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (lists: key="[a,b]")')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation (flip)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error('--out must be a .pkl or .pickle file')
    return args


def _enable_tta(cfg):
    """Wrap the model in DetTTAModel with a flip test-time pipeline (mmdet's defaults)."""
    if 'tta_model' not in cfg:
        warnings.warn('no tta_model in the config: using DetTTAModel with NMS 0.5, 100 boxes')
        cfg.tta_model = dict(type='DetTTAModel',
                             tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5),
                                          max_per_img=100))
    if 'tta_pipeline' not in cfg:
        warnings.warn('no tta_pipeline in the config: flipping the test pipeline')
        dataset = cfg.test_dataloader.dataset
        while 'dataset' in dataset:
            dataset = dataset['dataset']
        pipeline = copy.deepcopy(dataset.pipeline)
        pipeline[-1] = dict(
            type='TestTimeAug',
            transforms=[[dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
                        [dict(type='PackDetInputs',
                              meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                         'scale_factor', 'flip', 'flip_direction'))]])
        cfg.tta_pipeline = pipeline
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def build_cfg(args):
    """Config from the file and the command line (priority: CLI > file > defaults)."""
    cfg = load_config(args.config, args.launcher, args.cfg_options, args.work_dir)
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        from mmdet.engine.hooks.utils import trigger_visualization_hook
        cfg = trigger_visualization_hook(cfg, args)
    if args.tta:
        _enable_tta(cfg)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    try:
        from mmdet.utils import setup_cache_size_limit_of_dynamo
        setup_cache_size_limit_of_dynamo()
    except ImportError:
        pass
    if not osp.isfile(args.checkpoint) and '://' not in args.checkpoint:
        print(f'error: checkpoint not found: {args.checkpoint}', file=sys.stderr)
        return 2
    cfg = build_cfg(args)
    try:
        check_dataset_paths(cfg, ['test'])
    except DatasetPathError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2

    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    if args.out is not None:
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    runner.test()
    return 0


if __name__ == '__main__':
    sys.exit(main())
