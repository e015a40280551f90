"""tools/train.py, tools/test.py and the dist_*.sh launchers, on CPU with a tiny dataset.

The end-to-end test trains mmdet's *stock* ``faster-rcnn_r50_fpn_1x_coco.py`` for 3 iterations
with only ``loss_cls`` swapped to RaMBOAPLoss on the command line (the one-liner of the docs),
on a few random-noise images written in COCO format, then evaluates the checkpoint with
tools/test.py. To keep it cheap on 2 CPU cores the tiny config uses ResNet-18 (random weights: no network, no
pretrained download), 96x64 images and fewer proposals / sampled RoIs; the detector's structure
and heads are the stock ones.
"""
import json
import os
import os.path as osp
import pickle
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image

import rambo_mmdet  # noqa: F401
from mmdet.datasets import CocoDataset
from rambo_mmdet import cli
from rambo_mmdet.cli import (DatasetPathError, check_dataset_paths, check_pretrained_weights,
                             missing_dataset_paths)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TRAIN = osp.join(ROOT, 'tools', 'train.py')
TEST = osp.join(ROOT, 'tools', 'test.py')
SWAP_LOSS = ['model.roi_head.bbox_head.loss_cls.type=RaMBOAPLoss',
             'model.roi_head.bbox_head.loss_cls.use_sigmoid=True']
# CocoDataset / CocoMetric map categories by name to the 80 COCO classes: declare all of them
CATEGORIES = [dict(id=i + 1, name=name) for i, name in enumerate(CocoDataset.METAINFO['classes'])]
#: torchvision's ImageNet ResNet-50: what mmengine resolves torchvision://resnet50 to (the
#: 'resnet50' entry of mmengine/hub/torchvision_0.12.json), in configs/_base_/imagenet_weights.py
R50_URL = 'https://download.pytorch.org/models/resnet50-0676ba61.pth'
SHIPPED_R50 = ['faster_rcnn_rambo.py', 'retinanet_rambo.py', 'faster_rcnn_rambo_voc0712.py',
               'faster_rcnn_rambo_voc0712_cocofmt.py', 'retinanet_rambo_voc0712.py']


def write_tiny_coco(root, num_images=4, size=(128, 96), seed=0):
    """Random-noise images with 1-3 boxes each, as ``root/images/*.jpg`` and
    ``root/annotations/tiny.json`` (COCO format). Returns the annotation path."""
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(root, 'images'), exist_ok=True)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    width, height = size
    images, annotations = [], []
    for img_id in range(1, num_images + 1):
        name = f'{img_id:04d}.jpg'
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(osp.join(root, 'images', name))
        images.append(dict(id=img_id, file_name=name, width=width, height=height))
        for _ in range(int(rng.integers(1, 4))):
            w, h = (float(v) for v in rng.uniform(16, 48, size=2))
            x, y = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
            annotations.append(dict(
                id=len(annotations) + 1, image_id=img_id, bbox=[x, y, w, h], area=w * h,
                iscrowd=0, category_id=int(rng.choice([1, 3, 18]))))
    ann_file = osp.join(root, 'annotations', 'tiny.json')
    with open(ann_file, 'w') as f:
        json.dump(dict(images=images, annotations=annotations, categories=CATEGORIES), f)
    return ann_file


def write_tiny_config(path, data_root):
    """mmdet's stock Faster R-CNN config, shrunk to the tiny dataset and 3 iterations.

    Model: ResNet-18 without pretrained weights, fewer proposals and sampled RoIs; the loss is
    swapped on the command line.
    """
    text = f'''
        _base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
        data_root = {data_root!r}
        model = dict(
            backbone=dict(depth=18, init_cfg=None),
            neck=dict(in_channels=[64, 128, 256, 512]),
            train_cfg=dict(rpn_proposal=dict(max_per_img=300), rcnn=dict(sampler=dict(num=128))),
            test_cfg=dict(rpn=dict(max_per_img=300)))
        train_pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(type='Resize', scale=(96, 64), keep_ratio=True),
            dict(type='RandomFlip', prob=0.5),
            dict(type='PackDetInputs')]
        test_pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=(96, 64), keep_ratio=True),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                                  'img_shape', 'scale_factor'))]
        tiny_data = dict(data_root=data_root, ann_file='annotations/tiny.json',
                         data_prefix=dict(img='images/'))
        train_dataloader = dict(
            batch_size=2, num_workers=0, persistent_workers=False,
            dataset=dict(**tiny_data, filter_cfg=dict(filter_empty_gt=True, min_size=8),
                         pipeline=train_pipeline))
        test_dataloader = dict(
            batch_size=2, num_workers=0, persistent_workers=False,
            dataset=dict(**tiny_data, test_mode=True, pipeline=test_pipeline))
        test_evaluator = dict(type='CocoMetric', ann_file=data_root + 'annotations/tiny.json',
                              metric='bbox')
        val_dataloader = None
        val_evaluator = None
        val_cfg = None
        train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=3)
        param_scheduler = []
        optim_wrapper = dict(optimizer=dict(lr=0.002))
        default_hooks = dict(
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=3))
        log_processor = dict(by_epoch=False)
    '''
    with open(path, 'w') as f:
        f.write(textwrap.dedent(text))
    return path


def run_tool(args, cwd, timeout=600):
    # one thread: on a busy 2-core machine OpenMP threads oversubscribe (10x slower)
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Train 3 iterations with tools/train.py; returns (config, work_dir, tmp dir)."""
    tmp = tmp_path_factory.mktemp('tiny_coco')
    write_tiny_coco(str(tmp / 'data'))
    config = write_tiny_config(str(tmp / 'tiny_faster_rcnn.py'), str(tmp / 'data') + '/')
    work_dir = str(tmp / 'work')
    proc = run_tool([TRAIN, config, '--work-dir', work_dir, '--cfg-options', *SWAP_LOSS],
                    cwd=str(tmp))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return config, work_dir, tmp, proc


def test_train_stock_faster_rcnn_with_loss_swapped(trained):
    config, work_dir, _, proc = trained
    assert osp.isfile(osp.join(work_dir, 'iter_3.pth'))
    log = proc.stdout + proc.stderr
    assert 'Iter(train) [3/3]' in log
    assert 'loss_cls' in log and 'loss_rpn_cls' in log
    # the stock recipe's SGD with the default sigmoid term: tools/train.py adds the naming hook,
    # which advises the softmax term once
    assert log.count("roi_head.bbox_head.loss_cls (RaMBOAPLoss): cross_entropy='sigmoid' with "
                     'SGD') == 1
    # the dumped config is the stock one with only the loss swapped
    dumped = Config.fromfile(osp.join(work_dir, osp.basename(config)))
    loss = dumped.model.roi_head.bbox_head.loss_cls
    assert loss.type == 'RaMBOAPLoss' and loss.use_sigmoid is True


def test_test_tool_evaluates_checkpoint(trained):
    config, work_dir, tmp, _ = trained
    out = str(tmp / 'results.pkl')
    proc = run_tool([TEST, config, osp.join(work_dir, 'iter_3.pth'), '--work-dir',
                     str(tmp / 'test_work'), '--out', out, '--cfg-options', *SWAP_LOSS],
                    cwd=str(tmp))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'coco/bbox_mAP' in proc.stdout + proc.stderr
    with open(out, 'rb') as f:
        results = pickle.load(f)
    assert len(results) == 4
    pred = results[0]['pred_instances']
    assert pred['bboxes'].shape[1] == 4 and len(pred['scores']) == len(pred['labels'])


def test_train_missing_coco_exits_with_clear_message(tmp_path):
    missing = str(tmp_path / 'nowhere' / 'coco') + '/'
    proc = run_tool([TRAIN, osp.join(ROOT, 'configs', 'faster_rcnn_rambo.py'), '--cfg-options',
                     f'train_dataloader.dataset.data_root={missing}'], cwd=str(tmp_path))
    assert proc.returncode == 2
    assert f'dataset path not found: {missing}' in proc.stderr
    assert 'COCO 2017' in proc.stderr and 'data/coco/' in proc.stderr  # val split too
    assert 'Traceback' not in proc.stderr
    assert not (tmp_path / 'work_dirs').exists()  # failed before the Runner was built


@pytest.mark.parametrize('name, split, expected, hint', [
    ('faster_rcnn_rambo_voc0712.py', 'train', 'data/VOCdevkit/', 'VOCtrainval_11-May-2012'),
    ('retinanet_rambo_voc0712.py', 'test', 'data/VOCdevkit/', 'VOCtest_06-Nov-2007'),
    ('faster_rcnn_rambo_voc0712_cocofmt.py', 'test', 'data/VOCdevkit/', 'pascal_voc.py'),
    ('retinanet_rambo.py', 'test', 'data/coco/', 'COCO 2017'),
])
def test_missing_paths_of_shipped_configs(tmp_path, monkeypatch, name, split, expected, hint):
    monkeypatch.chdir(tmp_path)  # relative data roots resolve against the working directory
    cfg = Config.fromfile(osp.join(ROOT, 'configs', name))
    with pytest.raises(DatasetPathError) as err:
        check_dataset_paths(cfg, [split])
    assert str(err.value).startswith(f'dataset path not found: {expected}')
    assert hint in str(err.value)


def test_present_paths_pass_and_children_are_checked(tmp_path):
    data = tmp_path / 'data'
    write_tiny_coco(str(data), num_images=1)
    dataset = dict(type='CocoDataset', data_root=str(data) + '/',
                   ann_file='annotations/tiny.json', data_prefix=dict(img='images/'))
    cfg = Config(dict(
        train_dataloader=dict(dataset=dict(type='RepeatDataset', times=2, dataset=dataset)),
        val_dataloader=dict(dataset=dict(dataset, ann_file='annotations/val.json')),
        val_evaluator=[dict(type='CocoMetric', ann_file=str(data / 'annotations' / 'tiny.json')),
                       dict(type='CocoMetric', ann_file=str(data / 'gone.json'))]))
    assert missing_dataset_paths(cfg, ['train']) == []
    missing = missing_dataset_paths(cfg, ['train', 'val'])
    assert [key for _, key, _ in missing] == ['val_dataloader.dataset.ann_file',
                                              'val_evaluator.1.ann_file']
    remote = Config(dict(test_dataloader=dict(dataset=dict(
        type='CocoDataset', data_root='s3://bucket/coco/', ann_file='a.json'))))
    assert missing_dataset_paths(remote, ['test']) == []


def test_pretrained_weights_check(tmp_path):
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'retinanet_rambo.py'))
    cfg.model.backbone.init_cfg.checkpoint = 'torchvision://resnet50'  # mmdet's own configs
    try:
        import torchvision  # noqa: F401
    except ImportError:  # the project stack has no torchvision
        with pytest.raises(FileNotFoundError, match='torchvision') as err:
            check_pretrained_weights(cfg)
        assert f'model.backbone.init_cfg.checkpoint={R50_URL}' in str(err.value)  # same weights
    weights = tmp_path / 'r50.pth'
    cfg.model.backbone.init_cfg.checkpoint = str(weights)
    with pytest.raises(FileNotFoundError, match='model.backbone.init_cfg.checkpoint'):
        check_pretrained_weights(cfg)
    weights.write_bytes(b'')
    check_pretrained_weights(cfg)
    cfg.model.backbone.init_cfg = None
    check_pretrained_weights(cfg)


@pytest.fixture
def torch_hub(tmp_path, monkeypatch):
    """An empty torch.hub cache under tmp_path; returns torch.hub.get_dir()."""
    import torch.hub
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    hub_dir = str(tmp_path / 'torch_home' / 'hub')
    assert torch.hub.get_dir() == hub_dir  # torch.hub.set_dir() was not called in this process
    return hub_dir


@pytest.mark.parametrize('name', SHIPPED_R50)
def test_shipped_configs_load_imagenet_weights_by_url(name):
    """The torchvision ImageNet ResNet-50, by the URL mmengine resolves torchvision://resnet50 to
    (the same file with or without torchvision)."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', name))
    assert cfg.model.backbone.init_cfg.to_dict() == dict(type='Pretrained', checkpoint=R50_URL)
    assert cfg.model.backbone.depth == 50


def test_pretrained_url_unreachable_names_cache_and_override(torch_hub, monkeypatch):
    for var in ('http_proxy', 'https_proxy', 'all_proxy'):  # 127.0.0.1 directly, whatever the env
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    url = 'https://127.0.0.1:9/resnet50-0123abcd.pth'  # nothing listens on port 9: refused at once
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'retinanet_rambo.py'))
    cfg.model.backbone.init_cfg.checkpoint = url
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as err:
        check_pretrained_weights(cfg)
    assert time.monotonic() - start < 10  # the probe's timeout is 5 s
    msg = str(err.value)
    assert f"model.backbone.init_cfg.checkpoint='{url}'" in msg and 'cannot be reached' in msg
    assert osp.join(torch_hub, 'checkpoints', 'resnet50-0123abcd.pth') in msg  # where to put it
    assert ('--cfg-options model.backbone.init_cfg.checkpoint=/path/to/resnet50-0123abcd.pth'
            in msg)
    assert '--cfg-options model.backbone.init_cfg=None' in msg  # from scratch
    # the shipped URL, offline (probe stubbed): the same error; online: no error
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'faster_rcnn_rambo.py'))
    monkeypatch.setattr(cli, 'probe_url', lambda url, timeout=5.0: 'offline')
    with pytest.raises(FileNotFoundError, match=f'{R50_URL}.*offline'):
        check_pretrained_weights(cfg)
    monkeypatch.setattr(cli, 'probe_url', lambda url, timeout=5.0: None)
    check_pretrained_weights(cfg)


def test_pretrained_url_in_hub_cache_is_not_probed(torch_hub, monkeypatch):
    probed = []
    monkeypatch.setattr(cli, 'probe_url', lambda url, timeout=5.0: probed.append(url) or 'offline')
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'retinanet_rambo.py'))
    with pytest.raises(FileNotFoundError):
        check_pretrained_weights(cfg)
    assert probed == [R50_URL]
    cached = osp.join(torch_hub, 'checkpoints', 'resnet50-0676ba61.pth')
    os.makedirs(osp.dirname(cached))
    with open(cached, 'wb'):
        pass
    probed.clear()
    check_pretrained_weights(cfg)
    assert probed == []


def test_shipped_config_loads_url_weights_from_hub_cache(torch_hub, monkeypatch):
    """mmengine loads the shipped https checkpoint from torch.hub's cache, without torchvision
    and without the network: the backbone gets the (fake) file's values."""
    import torch
    import torch.hub
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    def no_download(url, *args, **kwargs):
        raise AssertionError(f'download attempted: {url}')

    register_all_modules()
    monkeypatch.setattr(torch.hub, 'download_url_to_file', no_download)
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'faster_rcnn_rambo.py'))
    url = cfg.model.backbone.init_cfg.checkpoint
    fake = {'conv1.weight': torch.full((64, 3, 7, 7), 0.25),  # torchvision's key names
            'layer4.2.conv3.weight': torch.full((2048, 512, 1, 1), -0.5)}
    cached = osp.join(torch_hub, 'checkpoints', url.rsplit('/', 1)[1])
    os.makedirs(osp.dirname(cached))
    torch.save(fake, cached)
    check_pretrained_weights(cfg)  # cached: no probe, no error
    model = MODELS.build(cfg.model)
    backbone = model.backbone
    assert not torch.equal(backbone.conv1.weight, fake['conv1.weight'])
    model.init_weights()
    assert torch.equal(backbone.conv1.weight, fake['conv1.weight'])
    assert torch.equal(backbone.layer4[2].conv3.weight, fake['layer4.2.conv3.weight'])


@pytest.mark.parametrize('script, args, tool_args', [
    ('dist_train.sh', ['cfg.py', '4', '--amp'], ['train.py', 'cfg.py', '--launcher', 'pytorch',
                                                  '--amp']),
    ('dist_test.sh', ['cfg.py', 'ckpt.pth', '2', '--out', 'r.pkl'],
     ['test.py', 'cfg.py', 'ckpt.pth', '--launcher', 'pytorch', '--out', 'r.pkl']),
])
def test_dist_scripts_call_torchrun(tmp_path, script, args, tool_args):
    fake = tmp_path / 'fake_python'
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), NNODES='2', NODE_RANK='1', MASTER_ADDR='10.0.0.7',
               PORT='29123')
    proc = subprocess.run(['bash', osp.join(ROOT, 'tools', script), *args], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    argv = proc.stdout.split('\n')[:-1]
    gpus = args[1] if script == 'dist_train.sh' else args[2]
    assert argv[:7] == ['-m', 'torch.distributed.run', '--nnodes=2', '--node_rank=1',
                        '--master_addr=10.0.0.7', f'--nproc_per_node={gpus}',
                        '--master_port=29123']
    assert argv[7] == osp.join(ROOT, 'tools', tool_args[0])
    assert argv[8:] == tool_args[1:]
