"""Helpers shared by ``tools/train.py`` and ``tools/test.py``.

* :func:`missing_dataset_paths` / :func:`check_dataset_paths`: before a Runner is built (which
  takes a while and then fails deep inside a dataset with a bare ``FileNotFoundError``), check that
  the files and folders the config's datasets and evaluators read exist, and say how to get them.
* :func:`check_pretrained_weights`: ``init_cfg=dict(type='Pretrained', checkpoint=...)`` entries
  that cannot load here (a ``torchvision://`` name without torchvision, a missing local file).
* :func:`check_ranking_heads`: before training, refuse dense heads that feed a ranking loss
  softmax channels and warn about heads that rank each FPN level separately.
"""
import os.path as osp
from typing import Iterator, List, Optional, Sequence, Tuple

__all__ = ['DatasetPathError', 'missing_dataset_paths', 'check_dataset_paths',
           'check_pretrained_weights', 'check_ranking_heads']

#: how to get the data, by dataset type (the message also names the config keys to override)
_DATA_HINTS = {
    'CocoDataset': (
        'COCO 2017: put train2017/, val2017/ and annotations/instances_{train,val}2017.json '
        '(https://cocodataset.org/#download) under data/coco/, e.g. `ln -s /path/to/coco '
        'data/coco` in the directory you run from.'),
    'VOCDataset': (
        'PASCAL VOC: extract VOCtrainval_06-Nov-2007, VOCtest_06-Nov-2007 and '
        'VOCtrainval_11-May-2012 so that data/VOCdevkit/VOC2007 and data/VOCdevkit/VOC2012 exist '
        '(e.g. `ln -s /path/to/VOCdevkit data/VOCdevkit`).'),
}
_COCOFMT_VOC_HINT = (
    'VOC in COCO format: get PASCAL VOC into data/VOCdevkit/ first, then write the json files '
    'with mmdetection\'s converter: `python tools/dataset_converters/pascal_voc.py '
    'data/VOCdevkit -o data/VOCdevkit/annotations --out-format coco`.')


class DatasetPathError(FileNotFoundError):
    """A file or folder that the config's data pipeline needs does not exist."""


def _is_remote(path: str) -> bool:
    return '://' in path


def _has_remote_backend(cfg: dict) -> bool:
    backend_args = cfg.get('backend_args') or {}
    return backend_args.get('backend', 'local') != 'local'


def _join(root: str, path: str) -> str:
    """How mmengine's BaseDataset resolves ``ann_file`` / ``data_prefix`` against ``data_root``."""
    if not root or osp.isabs(path) or _is_remote(path):
        return path
    return osp.join(root, path)


def _dataset_paths(cfg: Optional[dict], where: str) -> Iterator[Tuple[str, str, str]]:
    """Yield ``(path, config key, dataset type)`` for the local paths a dataset config reads.

    Recurses into wrappers (``dataset=`` of RepeatDataset/ClassBalancedDataset, ``datasets=`` of
    ConcatDataset). A missing ``data_root`` is reported alone (everything under it is missing).
    """
    if not isinstance(cfg, dict):
        return
    if isinstance(cfg.get('dataset'), dict):
        yield from _dataset_paths(cfg['dataset'], f'{where}.dataset')
    for i, sub in enumerate(cfg.get('datasets') or []):
        yield from _dataset_paths(sub, f'{where}.datasets.{i}')
    if _has_remote_backend(cfg):
        return
    kind = str(cfg.get('type', ''))
    root = cfg.get('data_root') or ''
    if root and not _is_remote(root):
        yield root, f'{where}.data_root', kind
        if not osp.exists(root):
            return
    if cfg.get('ann_file'):
        yield _join(root, cfg['ann_file']), f'{where}.ann_file', kind
    for key, prefix in (cfg.get('data_prefix') or {}).items():
        if isinstance(prefix, str) and (prefix or root):
            yield _join(root, prefix), f'{where}.data_prefix.{key}', kind


def _evaluator_paths(cfg, where: str, kind: str) -> Iterator[Tuple[str, str, str]]:
    """Yield the ``ann_file`` of an evaluator config (a dict or a list of them)."""
    metrics = cfg if isinstance(cfg, (list, tuple)) else [cfg]
    for i, metric in enumerate(metrics):
        if isinstance(metric, dict) and metric.get('ann_file') and not _has_remote_backend(metric):
            key = where if len(metrics) == 1 else f'{where}.{i}'
            yield metric['ann_file'], f'{key}.ann_file', kind


def _root_dataset_type(dataloader_cfg: dict) -> str:
    cfg = dataloader_cfg.get('dataset') or {}
    while isinstance(cfg, dict):
        if cfg.get('ann_file') or cfg.get('data_root'):
            return str(cfg.get('type', ''))
        cfg = cfg.get('dataset') or (cfg.get('datasets') or [None])[0]
    return ''


def missing_dataset_paths(cfg, splits: Sequence[str]) -> List[Tuple[str, str, str]]:
    """Missing local paths of ``<split>_dataloader`` and ``<split>_evaluator`` of ``cfg``.

    Args:
        cfg (mmengine.Config | dict): the full config.
        splits (sequence of str): e.g. ``('train', 'val')`` or ``('test',)``; a split without a
            dataloader is skipped.

    Returns:
        list[tuple[str, str, str]]: ``(path, config key, dataset type)`` of each missing path,
        in config order, without duplicates. Remote paths (``s3://...``, non-local
        ``backend_args``) are not checked.
    """
    missing, seen = [], set()
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if not isinstance(loader, dict):
            continue
        entries = list(_dataset_paths(loader.get('dataset'), f'{split}_dataloader.dataset'))
        evaluator = cfg.get(f'{split}_evaluator')
        if evaluator:
            entries += _evaluator_paths(evaluator, f'{split}_evaluator',
                                        _root_dataset_type(loader))
        for path, key, kind in entries:
            if path in seen or _is_remote(path):
                continue
            seen.add(path)
            if not osp.exists(path):
                missing.append((path, key, kind))
    return missing


def _hint(path: str, kind: str) -> str:
    if kind == 'CocoDataset' and 'VOC' in path:
        return _COCOFMT_VOC_HINT
    if kind == 'CocoDataset' and 'coco' not in path.lower():  # a custom COCO-format dataset
        kind = ''
    return _DATA_HINTS.get(kind, 'Create the dataset files or point the config at them.')


def check_dataset_paths(cfg, splits: Sequence[str]) -> None:
    """Raise :class:`DatasetPathError` naming every missing dataset path and how to get it.

    Relative paths are resolved against the current working directory, as mmengine does.
    """
    missing = missing_dataset_paths(cfg, splits)
    if not missing:
        return
    lines = [f'dataset path not found: {missing[0][0]}']
    lines += [f'  missing: {path}  (config key {key}; absolute path {osp.abspath(path)})'
              for path, key, _ in missing]
    hints = []
    for path, _, kind in missing:
        hint = _hint(path, kind)
        if hint not in hints:
            hints.append(hint)
    lines += ['How to get the data:'] + [f'  {hint}' for hint in hints]
    lines.append('  Or point the config at your copy, e.g. --cfg-options '
                 f'{missing[0][1]}=/path/to/it (and the matching keys of the other splits '
                 'and evaluators).')
    raise DatasetPathError('\n'.join(lines))


def _pretrained_entries(cfg, where: str) -> Iterator[Tuple[str, str]]:
    """Yield ``(checkpoint, config key)`` of every ``Pretrained`` init_cfg under ``cfg``."""
    if isinstance(cfg, dict):
        if cfg.get('type') == 'Pretrained' and isinstance(cfg.get('checkpoint'), str):
            yield cfg['checkpoint'], f'{where}.checkpoint'
        for key, value in cfg.items():
            yield from _pretrained_entries(value, f'{where}.{key}')
    elif isinstance(cfg, (list, tuple)):
        for i, value in enumerate(cfg):
            yield from _pretrained_entries(value, f'{where}.{i}')


def check_pretrained_weights(cfg) -> None:
    """Raise ``FileNotFoundError`` for pretrained weights of ``cfg.model`` that cannot load here.

    mmdet's configs initialise the backbone from ``torchvision://resnet50``: mmengine needs the
    ``torchvision`` package to resolve that name (and network access to download it once). Local
    paths must exist. Other URLs (``https://``, ``open-mmlab://``...) are left to mmengine.
    """
    problems = []
    for checkpoint, key in _pretrained_entries(cfg.get('model'), 'model'):
        if checkpoint.startswith(('torchvision://', 'modelzoo://')):
            try:
                import torchvision  # noqa: F401
            except ImportError:
                problems.append(f'{key}={checkpoint!r} needs the torchvision package (and '
                                'network access to download the weights once)')
        elif '://' not in checkpoint and not osp.isfile(checkpoint):
            hint = (' (build it with `make pretrained`, i.e. python tools/pretrain_backbone.py)'
                    if osp.basename(checkpoint) == 'resnet18_half_fashion.pth' else '')
            problems.append(f'{key}={checkpoint!r}: file not found{hint}')
    if problems:
        key = problems[0].split('=')[0]
        raise FileNotFoundError(
            'pretrained weights cannot be loaded:\n' + '\n'.join(f'  {p}' for p in problems)
            + '\nInstall torchvision (matching your torch), or download the weights and set '
            f'--cfg-options {key}=/path/to/weights.pth, or train from scratch with '
            f'--cfg-options {key.rsplit(".", 1)[0]}=None.')


def check_ranking_heads(model, logger='current') -> List[str]:
    """Check the heads of a built model that use a ranking loss (``needs_all_samples``).

    Raises:
        ValueError: a dense head gives the ranking loss softmax channels (``use_sigmoid`` missing
            or False in its ``loss_cls`` config).

    Returns:
        list[str]: heads that call the ranking loss once per FPN level; a warning is logged for
        each (it works, but each level is ranked separately: a weaker, per-level AP).
    """
    import logging

    from mmengine.logging import print_log

    from .models.dense_heads import find_per_level_ranking_heads, find_softmax_ranking_heads

    model = getattr(model, 'module', model)  # DDP wrapper
    softmax = find_softmax_ranking_heads(model)
    if softmax:
        raise ValueError(
            f'{", ".join(softmax)}: the ranking loss needs per-class sigmoid scores, but the head '
            'was built for softmax (num_classes + 1 channels): set use_sigmoid=True in its '
            'loss_cls config (the head reads it from the config, not from the loss default).')
    names = find_per_level_ranking_heads(model)
    for name in names:
        print_log(
            f'{name}: its ranking loss is called once per FPN level, so each level is ranked '
            'separately (a weaker, per-level AP). Use a head that ranks all levels at once, '
            'e.g. RaMBORetinaHead / RaMBORPNHead (AllLevelsClsLossMixin).',
            logger=logger, level=logging.WARNING)
    return names


def load_config(config: str, launcher: str = 'none', cfg_options: Optional[dict] = None,
                work_dir: Optional[str] = None):
    """Config from the file and the command line (priority: CLI > file > defaults), with the
    launcher and the work dir set as mmdet's tools do (default ``./work_dirs/<config name>``)."""
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options is not None:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config))[0])
    return cfg
