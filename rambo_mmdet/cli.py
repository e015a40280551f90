"""Helpers shared by ``tools/train.py`` and ``tools/test.py``.

* :func:`missing_dataset_paths` / :func:`check_dataset_paths`: before a Runner is built (which
  takes a while and then fails deep inside a dataset with a bare ``FileNotFoundError``), check that
  the files and folders the config's datasets and evaluators read exist, and say how to get them.
* :func:`check_pretrained_weights`: ``init_cfg=dict(type='Pretrained', checkpoint=...)`` entries
  that cannot load here (an http(s) URL neither in torch.hub's cache nor reachable, a
  ``torchvision://`` name without torchvision, a missing local file).
* :func:`check_ranking_heads`: before training, refuse dense heads that feed a ranking loss
  softmax channels and warn about heads that rank each FPN level separately.
"""
import os.path as osp
from typing import Iterator, List, Optional, Sequence, Tuple

__all__ = ['DatasetPathError', 'missing_dataset_paths', 'check_dataset_paths',
           'check_pretrained_weights', 'hub_cache_path', 'probe_url', 'check_ranking_heads']

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


def hub_cache_path(url: str) -> str:
    """Where mmengine's ``load_from_http`` (torch.hub's ``load_state_dict_from_url``) looks for,
    and downloads, the file of ``url``: ``<torch.hub.get_dir()>/checkpoints/<file name>``."""
    from urllib.parse import urlparse

    import torch.hub
    return osp.join(torch.hub.get_dir(), 'checkpoints', osp.basename(urlparse(url).path))


def probe_url(url: str, timeout: float = 5.0) -> Optional[str]:
    """``None`` if an HTTP HEAD request to ``url`` succeeds within ``timeout`` seconds, else the
    reason (a server refusing HEAD itself, HTTP 405 / 501, counts as reachable)."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method='HEAD'), timeout=timeout):
            return None
    except urllib.error.HTTPError as err:
        return None if err.code in (405, 501) else f'HTTP {err.code} {err.reason}'
    except urllib.error.URLError as err:
        return str(err.reason)
    except (OSError, ValueError) as err:  # timeouts, malformed URLs
        return f'{type(err).__name__}: {err}' if str(err) else type(err).__name__


def _torchvision_url(checkpoint: str) -> Optional[str]:
    """The URL mmengine resolves a ``torchvision://NAME`` (``modelzoo://NAME``) checkpoint to,
    from mmengine's own table (reading it needs no torchvision); ``None`` if NAME is not in it."""
    try:
        import mmengine
        table = mmengine.load(osp.join(mmengine.__path__[0], 'hub', 'torchvision_0.12.json'))
    except Exception:  # noqa: BLE001 (only a hint)
        return None
    return table.get(checkpoint.split('://', 1)[1])


def check_pretrained_weights(cfg, timeout: float = 5.0) -> None:
    """Raise ``FileNotFoundError`` for pretrained weights of ``cfg.model`` that cannot load here.

    * ``http(s)://`` URLs (the shipped COCO/VOC configs load torchvision's ImageNet ResNet-50 by
      its URL, configs/_base_/imagenet_weights.py): fine if the file is already in torch.hub's
      cache (:func:`hub_cache_path`, where mmengine looks first); otherwise the URL must answer a
      HEAD request within ``timeout`` seconds (mmengine downloads the file there once).
    * ``torchvision://NAME`` (mmdet's own configs): mmengine needs the ``torchvision`` package to
      resolve the name; the message gives the URL that loads the same file without it.
    * Local paths must exist.

    Other schemes (``open-mmlab://``, ``s3://``...) are left to mmengine. The message names the
    overrides: a local file (``--cfg-options <key>=/path/to/weights.pth``) or no pretrained
    weights (``--cfg-options <init_cfg key>=None``).
    """
    problems = []
    for checkpoint, key in _pretrained_entries(cfg.get('model'), 'model'):
        if checkpoint.startswith(('http://', 'https://')):
            cached = hub_cache_path(checkpoint)
            if osp.isfile(cached):
                continue
            reason = probe_url(checkpoint, timeout)
            if reason is not None:
                problems.append((key, osp.basename(cached), (
                    f'{key}={checkpoint!r}: not in torch.hub\'s cache and the URL cannot be '
                    f'reached ({reason}).\n    Download the file where there is network and put '
                    f'it at {cached} (mmengine loads it from there)')))
        elif checkpoint.startswith(('torchvision://', 'modelzoo://')):
            try:
                import torchvision  # noqa: F401
            except ImportError:
                url = _torchvision_url(checkpoint)
                same = (f'.\n    The same weights without torchvision: --cfg-options '
                        f'{key}={url}' if url else '')
                problems.append((key, 'weights.pth', (
                    f'{key}={checkpoint!r} needs the torchvision package (and network access to '
                    f'download the weights once){same}')))
        elif '://' not in checkpoint and not osp.isfile(checkpoint):
            hint = (' (build it with `make pretrained`, i.e. python tools/pretrain_backbone.py)'
                    if osp.basename(checkpoint) == 'resnet18_half_fashion.pth' else '')
            problems.append((key, 'weights.pth', f'{key}={checkpoint!r}: file not found{hint}'))
    if problems:
        key, name, _ = problems[0]
        raise FileNotFoundError(
            'pretrained weights cannot be loaded:\n'
            + '\n'.join(f'  {text}' for _, _, text in problems)
            + f'\nOr load a local copy of the weights with --cfg-options {key}=/path/to/{name}, '
            f'or train from scratch (no pretrained weights) with --cfg-options '
            f'{key.rsplit(".", 1)[0]}=None.')


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
            'e.g. RaMBORetinaHead / RaMBORPNHead / RaMBOATSSHead.',
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
