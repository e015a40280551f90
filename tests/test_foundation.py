"""Foundation: the compatibility shims (rambo_mmdet.compat), mmdet configs and a stock detector.

Each test names one behaviour and fails when it is broken:
* Runner checkpoints need the shim under torch >= 2.6, and load through it, through mmengine's
  ``load_checkpoint`` and through ``Runner`` resume;
* the shim's getattr stand-in does not open the restricted unpickler;
* ``mmdet::`` configs load, also without ``pkg_resources``;
* the stock RetinaNet-R18 builds and trains one step on CPU after ``import rambo_mmdet``;
* ``custom_imports = dict(imports=['rambo_mmdet'])`` is enough to load the plugin.
"""
import collections
import io
import pickle

import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset

import rambo_mmdet
from rambo_mmdet import compat

MMDET_BASE = 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'


# ------------------------------------------------------------------------------------------
# A tiny mmengine Runner (toy model, toy data, CPU)
# ------------------------------------------------------------------------------------------

def _toy_model():
    from mmengine.model import BaseModel

    class ToyModel(BaseModel):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, inputs, targets=None, mode='tensor'):
            out = self.lin(torch.stack(inputs)).squeeze(-1)
            if mode == 'loss':
                return dict(loss=((out - torch.stack(targets)) ** 2).mean())
            return out

    return ToyModel()


class _ToyDataset(Dataset):
    metainfo = dict(classes=('a', 'b'))

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return dict(inputs=torch.tensor([i / 8.0, 1.0]), targets=torch.tensor(i / 4.0))


def _toy_runner(work_dir, name, max_iters, custom_hooks=(), **kwargs):
    from mmengine.runner import Runner

    return Runner(
        model=_toy_model(),
        work_dir=str(work_dir),
        experiment_name=name,
        train_dataloader=dict(dataset=_ToyDataset(), batch_size=2, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=True)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=10_000),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        param_scheduler=[dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=1),
                         dict(type='MultiStepLR', milestones=[1], by_epoch=False)],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
                           logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=list(custom_hooks),
        default_scope='mmengine',
        randomness=dict(seed=0),
        log_level='WARNING',
        **kwargs)


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory):
    """Path of ``iter_2.pth`` written by a real mmengine Runner after 2 training iterations."""
    work_dir = tmp_path_factory.mktemp('runner')
    runner = _toy_runner(work_dir, 'rambo_ckpt_save', max_iters=2)
    runner.train()
    path = work_dir / 'iter_2.pth'
    assert path.is_file(), sorted(p.name for p in work_dir.iterdir())
    return path


# ------------------------------------------------------------------------------------------
# 1. checkpoints under torch >= 2.6
# ------------------------------------------------------------------------------------------

def test_runner_checkpoint_needs_the_shim_and_loads_through_load_checkpoint_file(
        runner_checkpoint):
    # Without the allowlist (torch's defaults only), plain torch.load refuses the file: this is
    # the problem the shim exists for.
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    try:
        with pytest.raises(pickle.UnpicklingError):
            torch.load(runner_checkpoint)
    finally:
        torch.serialization.add_safe_globals(saved)

    ckpt = compat.load_checkpoint_file(runner_checkpoint)
    assert ckpt['meta']['iter'] == 2
    assert set(ckpt['state_dict']) == {'lin.weight', 'lin.bias'}
    lr_buffer = ckpt['message_hub']['log_scalars']['train/lr']
    assert len(lr_buffer.data[0]) == 2
    assert lr_buffer.statistics('min') == pytest.approx(lr_buffer.min())
    # plain torch.load (weights_only=True by default) works once rambo_mmdet is imported
    assert torch.load(runner_checkpoint)['meta']['iter'] == 2


def test_mmengine_load_checkpoint_and_resume_after_import(runner_checkpoint, tmp_path):
    from mmengine.hooks import Hook
    from mmengine.runner import load_checkpoint

    assert rambo_mmdet.compat.is_applied()
    model = _toy_model()
    ckpt = load_checkpoint(model, str(runner_checkpoint), map_location='cpu')
    assert torch.equal(model.lin.weight, ckpt['state_dict']['lin.weight'])

    class RecordIters(Hook):
        def __init__(self):
            self.iters = []

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            self.iters.append(runner.iter)

    record = RecordIters()
    runner = _toy_runner(tmp_path, 'rambo_ckpt_resume', max_iters=3, custom_hooks=[record],
                         load_from=str(runner_checkpoint), resume=True)
    runner.train()
    assert record.iters == [2], 'Runner did not resume at iteration 2'
    assert runner.iter == 3


def test_getattr_stand_in_rejects_anything_but_history_buffer_methods():
    class Evil:
        def __reduce__(self):
            return getattr, (collections.OrderedDict, 'fromkeys')

    buf = io.BytesIO()
    torch.save({'x': Evil()}, buf)
    buf.seek(0)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(buf, weights_only=True)


# ------------------------------------------------------------------------------------------
# 2. mmdet:: configs, with and without pkg_resources
# ------------------------------------------------------------------------------------------

def _write_cfg(directory, body):
    path = directory / 'cfg.py'
    path.write_text(body)
    return path


@pytest.fixture(scope='module')
def retinanet_cfg(tmp_path_factory):
    from mmengine.config import Config

    path = _write_cfg(tmp_path_factory.mktemp('cfg'), f"_base_ = '{MMDET_BASE}'\n")
    return Config.fromfile(str(path))


def test_config_fromfile_with_mmdet_base(retinanet_cfg):
    assert retinanet_cfg.model.type == 'RetinaNet'
    assert retinanet_cfg.model.backbone.depth == 18


def test_package_utils_unchanged_when_pkg_resources_exists():
    import mmengine.config.config as config_module
    from mmengine.utils import package_utils

    for name in ('is_installed', 'get_installed_path'):
        patched = getattr(package_utils, name)
        assert getattr(config_module, name) is patched
        assert patched.__wrapped__('mmdet') == patched('mmdet')


def test_config_fromfile_without_pkg_resources(run_python, tmp_path):
    cfg = _write_cfg(tmp_path, f"_base_ = '{MMDET_BASE}'\n")
    out = run_python(f"""
        import sys
        sys.modules['pkg_resources'] = None  # as in an environment with setuptools >= 82
        from mmengine.config import Config
        try:
            Config.fromfile({str(cfg)!r})
        except ImportError:
            print('fails without shim')
        import rambo_mmdet
        cfg = Config.fromfile({str(cfg)!r})
        assert cfg.model.type == 'RetinaNet' and cfg.model.backbone.depth == 18, cfg.model
        print('OK')
        """).stdout
    assert 'fails without shim' in out, 'pkg_resources was not blocked: the test proves nothing'
    assert out.strip().endswith('OK')


# ------------------------------------------------------------------------------------------
# 3. the stock detector trains after import rambo_mmdet
# ------------------------------------------------------------------------------------------

def _det_batch(num_images=2, size=128):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    gen = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for i in range(num_images):
        inputs.append(torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=gen))
        sample = DetDataSample(metainfo=dict(
            img_id=i, img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
            scale_factor=(1.0, 1.0), batch_input_shape=(size, size)))
        gt = InstanceData()
        gt.bboxes = torch.tensor([[10., 12., 60., 70.], [50., 40., 120., 110.],
                                  [5., 80., 40., 125.]])[: 2 + i]
        gt.labels = torch.tensor([0, 3, 7])[: 2 + i]
        sample.gt_instances = gt
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def test_stock_retinanet_r18_one_training_step(retinanet_cfg):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    model_cfg = retinanet_cfg.model.copy()
    model_cfg.backbone.init_cfg = None
    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    model.train()

    data = model.data_preprocessor(_det_batch(), True)
    losses = model(**data, mode='loss')
    assert {'loss_cls', 'loss_bbox'} <= set(losses)
    total, log_vars = model.parse_losses(losses)
    assert torch.isfinite(total) and total.item() > 0, log_vars
    total.backward()

    # the stock config freezes the stem and layer1 (frozen_stages=1); the rest must get gradients
    trainable = {n: p for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert any(n.startswith('layer4.') for n in trainable), sorted(trainable)
    for name, param in trainable.items():
        assert param.grad is not None, f'no gradient reached backbone.{name}'
        assert torch.isfinite(param.grad).all(), name
    assert model.backbone.layer4[-1].conv2.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------
# 4. custom_imports is enough
# ------------------------------------------------------------------------------------------

def test_custom_imports_loads_the_plugin(run_python, tmp_path):
    cfg = _write_cfg(tmp_path, "custom_imports = dict(imports=['rambo_mmdet'], "
                               "allow_failed_imports=False)\nanswer = 42\n")
    run_python(f"""
        import sys
        import torch
        from mmengine.config import Config
        assert 'rambo_mmdet' not in sys.modules
        cfg = Config.fromfile({str(cfg)!r})
        assert cfg.answer == 42
        assert 'rambo_mmdet' in sys.modules, 'custom_imports did not import rambo_mmdet'
        import rambo_mmdet
        assert rambo_mmdet.HAS_MMDET and rambo_mmdet.compat.is_applied()
        from mmengine.logging import HistoryBuffer
        assert HistoryBuffer in torch.serialization.get_safe_globals()
        """)
