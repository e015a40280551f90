"""Backbone classification pretraining (rambo_mmdet/pretrain.py, tools/pretrain_backbone.py).

Tiny budgets (3 steps of 8 images of 32 px): the checkpoint format, its loading through mmdet's
``init_cfg=dict(type='Pretrained')`` into the FashionDet detectors' backbone, determinism, the
up-to-date skip, and that the images never use the garments of FashionDet's test split. The
Fashion-MNIST copy used here has only the first 5000 t10k images (the val pool), so any use of
t10k[5000:10000] (the test split's pool) fails. About 20-30 s on 2 CPU cores.
"""
import gzip
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch

from rambo_mmdet.data import fashion_det as fd
from rambo_mmdet.pretrain import (DEFAULT_CONFIG, DEFAULT_OUT, HELDOUT_POOL, TRAIN_POOL,
                                  PretrainRecipe, build_backbone, flatten_background,
                                  garment_masks, json_path, load_model_settings, pretrain,
                                  render_set, zoom)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = PretrainRecipe(steps=3, batch_size=8, img_size=32, min_size=10, max_size=28,
                      train_images=40, eval_images=20, curriculum_steps=2,
                      warmup_steps=1, max_shift=2)
DETECTOR_CONFIGS = ['faster_rcnn_r18_fashion_ce.py', 'faster_rcnn_r18_fashion_rambo.py',
                    'retinanet_r18_fashion_focal.py', 'retinanet_r18_fashion_rambo.py']


def _quiet(*_):
    pass


def _write_idx(path, array):
    header = np.array([0x0800 | array.ndim] + list(array.shape), dtype='>u4').tobytes()
    with gzip.open(path, 'wb', compresslevel=1) as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture(scope='module')
def fmnist_without_test_pool(tmp_path_factory):
    """Fashion-MNIST with t10k cut to its first 5000 images (FashionDet's val pool only)."""
    try:
        real = fd.find_fashion_mnist_dir()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    out = tmp_path_factory.mktemp('fmnist_val_only')
    for kind in ('images-idx3-ubyte', 'labels-idx1-ubyte'):
        src = fd._idx_file(real, f'train-{kind}')
        os.symlink(src, out / osp.basename(src))
    images, labels = fd.load_fashion_mnist(real, 't10k')
    prefix, start, end = fd.SOURCE_POOLS['test']
    assert (prefix, start, end) == ('t10k', 5000, 10000)
    _write_idx(out / 't10k-images-idx3-ubyte.gz', images[:start])
    _write_idx(out / 't10k-labels-idx1-ubyte.gz', labels[:start])
    with pytest.raises(ValueError, match='exceeds'):  # the copy really lacks the test pool
        fd.ItemPool.for_split(str(out), 'test')
    return str(out)


@pytest.fixture(scope='module')
def tiny_ckpt(tmp_path_factory, fmnist_without_test_pool):
    """The CLI on a tiny budget."""
    out = tmp_path_factory.mktemp('pretrain') / 'tiny.pth'
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'pretrain_backbone.py'), '--out', str(out),
           '--fashion-mnist-dir', fmnist_without_test_pool, '--log-every', '1']
    for name, value in TINY.to_dict().items():
        cmd += ['--' + name.replace('_', '-'), str(value)]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'held-out accuracy' in proc.stdout and 'step 3/3' in proc.stdout, proc.stdout
    return out


def _load(path):
    return torch.load(str(path), map_location='cpu', weights_only=True)  # torch >= 2.6 default


def test_checkpoint_keys_and_meta(tiny_ckpt):
    ckpt = _load(tiny_ckpt)
    assert set(ckpt) == {'state_dict', 'meta'}
    backbone_cfg, norm = load_model_settings(DEFAULT_CONFIG)
    assert backbone_cfg['type'] == 'ResNet' and backbone_cfg['depth'] == 18
    assert backbone_cfg['base_channels'] == 32 and backbone_cfg['stem_channels'] == 32
    reference = build_backbone(backbone_cfg).state_dict()
    assert list(ckpt['state_dict']) == list(reference)  # exactly the ResNet's keys, no 'fc.'
    assert 'conv1.weight' in reference and 'layer1.0.conv1.weight' in reference
    for name, tensor in reference.items():
        assert ckpt['state_dict'][name].shape == tensor.shape, name
    meta = ckpt['meta']
    assert 0.0 <= meta['accuracy'] <= 1.0 and meta['seconds'] > 0
    assert meta['recipe'] == TINY.to_dict() and meta['seed'] == TINY.seed
    assert meta['key']['input'] == norm
    assert meta['key']['pools'] == {'train': 'train[0:60000]', 'heldout': 't10k[0:5000]'}
    with open(json_path(str(tiny_ckpt))) as f:
        report = json.load(f)
    assert report['accuracy'] == meta['accuracy'] and report['recipe'] == meta['recipe']


def test_configs_normalisation_is_what_the_detector_uses():
    """RGB input (the detector flips its BGR files) with mmdet's ImageNet mean / std."""
    _, norm = load_model_settings(DEFAULT_CONFIG)
    assert norm == dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                        bgr_to_rgb=True)


def _detector_with(config, checkpoint):
    from mmengine.config import Config
    from mmdet.registry import MODELS
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'fashion', config))
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=str(checkpoint))
    torch.manual_seed(0)
    return MODELS.build(cfg.model)


@pytest.mark.parametrize('config', ['faster_rcnn_r18_fashion_ce.py',
                                    'retinanet_r18_fashion_focal.py'])
def test_mmdet_pretrained_init_loads_it(tiny_ckpt, config):
    state = _load(tiny_ckpt)['state_dict']
    model = _detector_with(config, tiny_ckpt)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    assert any(not torch.equal(before[k], state[k]) for k in state)  # the check can fail
    model.init_weights()
    after = model.backbone.state_dict()
    assert list(after) == list(state)
    for name, tensor in state.items():
        assert torch.equal(after[name], tensor), name


@pytest.mark.parametrize('config', DETECTOR_CONFIGS)
def test_configs_start_from_the_pretrained_backbone(config):
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'fashion', config))
    assert cfg.model.backbone.init_cfg == dict(type='Pretrained', checkpoint=DEFAULT_OUT)
    backbone_cfg, _ = load_model_settings(osp.join('configs', 'fashion', config))
    assert backbone_cfg == load_model_settings(DEFAULT_CONFIG)[0]  # one checkpoint fits all


def test_same_seed_same_weights_and_skip(tmp_path, fmnist_without_test_pool, tiny_ckpt):
    first = pretrain(str(tmp_path / 'a.pth'), TINY, fashion_mnist_dir=fmnist_without_test_pool,
                     log=_quiet)
    assert not first['skipped']
    a = _load(tmp_path / 'a.pth')['state_dict']
    cli = _load(tiny_ckpt)['state_dict']  # the CLI run, another process, same recipe
    for name in a:
        assert torch.equal(a[name], cli[name]), name
    assert first['accuracy'] == _load(tiny_ckpt)['meta']['accuracy']

    # same recipe again: skipped, the file untouched
    mtime = os.stat(tmp_path / 'a.pth').st_mtime_ns
    again = pretrain(str(tmp_path / 'a.pth'), TINY, fashion_mnist_dir=fmnist_without_test_pool,
                     log=_quiet)
    assert again['skipped'] and again['accuracy'] == first['accuracy']
    assert os.stat(tmp_path / 'a.pth').st_mtime_ns == mtime
    assert again['key']['threads'] == 1

    # another thread count (the weights depend on it): made again, not reused
    threads = pretrain(str(tmp_path / 'a.pth'), TINY, fashion_mnist_dir=fmnist_without_test_pool,
                       threads=2, log=_quiet)
    assert not threads['skipped'] and threads['key']['threads'] == 2

    # another seed: retrained in place, different weights
    other = PretrainRecipe(**dict(TINY.to_dict(), seed=1))
    second = pretrain(str(tmp_path / 'a.pth'), other, fashion_mnist_dir=fmnist_without_test_pool,
                      log=_quiet)
    assert not second['skipped']
    b = _load(tmp_path / 'a.pth')
    assert b['meta']['seed'] == 1
    assert any(not torch.equal(a[k], b['state_dict'][k]) for k in a)


def test_force_retrains(tmp_path, fmnist_without_test_pool):
    recipe = PretrainRecipe(**dict(TINY.to_dict(), steps=1, train_images=10, eval_images=10))
    path = str(tmp_path / 'f.pth')
    pretrain(path, recipe, fashion_mnist_dir=fmnist_without_test_pool, log=_quiet)
    forced = pretrain(path, recipe, fashion_mnist_dir=fmnist_without_test_pool, force=True,
                      log=_quiet)
    assert not forced['skipped']
    with open(path, 'wb') as f:  # a truncated checkpoint is not taken for an up-to-date one
        f.write(b'junk')
    again = pretrain(path, recipe, fashion_mnist_dir=fmnist_without_test_pool, log=_quiet)
    assert not again['skipped'] and _load(path)['meta']['recipe'] == recipe.to_dict()


def test_images_never_use_the_detection_test_garments(fmnist_without_test_pool):
    """Train items from Fashion-MNIST train, held-out items from t10k[0:5000] only."""
    test_prefix, test_start, test_end = fd.SOURCE_POOLS['test']
    for pool in (TRAIN_POOL, HELDOUT_POOL):
        prefix, start, end = fd.SOURCE_POOLS[pool]
        assert prefix != test_prefix or end <= test_start or start >= test_end, pool
    with pytest.raises(ValueError):
        render_set(TINY, 'test', 1, fmnist_without_test_pool)
    real = fd.find_fashion_mnist_dir()
    _, labels, boxes, sources = render_set(TINY, HELDOUT_POOL, 30, real)
    assert sources.max() < test_start
    assert labels.tolist() == [i % 10 for i in range(30)]
    sides = (boxes[:, 2:] - boxes[:, :2]).max(axis=1)
    assert sides.min() >= 0.8 * TINY.min_size and sides.max() <= TINY.max_size


def test_curriculum_views():
    """flatten_background and zoom: identity on the real images, easy views at step 0."""
    real = fd.find_fashion_mnist_dir()
    recipe = PretrainRecipe(img_size=64, min_size=16, max_size=30)
    images, _, boxes, _ = render_set(recipe, TRAIN_POOL, 6, real)
    masks, flat = garment_masks(recipe, TRAIN_POOL, images)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    masks, flat, boxes = torch.from_numpy(masks), torch.from_numpy(flat), torch.from_numpy(boxes)
    # the masks cover the garments' boxes and little else
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.long().tolist()):
        inside = mask[y0:y1, x0:x1]
        assert inside.float().mean() > 30 and int(mask.sum()) == pytest.approx(
            int(inside.sum()), rel=0.02)
    assert torch.equal(flatten_background(x, masks, flat, 1.0), x)
    flattened = flatten_background(x, masks, flat, 0.0)
    outside = (masks == 0).unsqueeze(1).expand_as(x)
    assert torch.allclose(flattened[outside], flat.view(-1, 3, 1, 1).expand_as(x)[outside])
    assert torch.equal(flattened[~outside & (masks == 255).unsqueeze(1).expand_as(x)],
                       x[~outside & (masks == 255).unsqueeze(1).expand_as(x)])
    assert torch.allclose(zoom(x, boxes, 1.25, torch.ones(6)), x)
    close = zoom(x, boxes, 1.25, 0.0)
    zoomed_masks = zoom(masks.unsqueeze(1).float(), boxes, 1.25, 0.0)
    # in the close-up the garment spans ~1/1.25 of the view's longest side
    for m in zoomed_masks[:, 0] > 127:
        rows, cols = torch.nonzero(m.any(1)), torch.nonzero(m.any(0))
        extent = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
        assert 0.65 * 64 <= int(extent) <= 0.85 * 64
    assert close.shape == x.shape
