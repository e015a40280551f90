"""Reliability of RaMBOAPLoss: mixed precision, gradient scale, determinism, bad input, memory.

* A Faster R-CNN R18 step with RaMBOAPLoss in the RoI head through mmengine's ``AmpOptimWrapper``
  (CPU bf16 autocast, with a real loss scale of 2**16).
* The gradient is linear in the gradient arriving at the loss (loss scale, ``loss_weight``).
* Same seed and data give bitwise-identical losses in two fresh processes.
* Bad or degenerate input behaves as the RaMBOAPLoss docstring says, and errors name the loss and
  the head (``name_ranking_losses`` / ``NameRankingLossesHook``).
* Rank arithmetic stays int64 beyond 2**31.
* Process memory does not grow over a run (``tools/check_memory_growth.py``).
"""
import copy
import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.structures import InstanceData
from torch import nn

import rambo_mmdet  # noqa: F401  (registers the losses)
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.utils import register_all_modules
from rambo_mmdet.hooks import NameRankingLossesHook
from rambo_mmdet.models.losses import name_ranking_losses
from rambo_mmdet.ranking import PositiveSet, mean_ap_loss
from rambo_mmdet.ranking.counting import (float_order_keys, group_keys, negatives_above,
                                          sort_positives)

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 3
IMG = 128


def build_loss(**kwargs):
    """RaMBOAPLoss in the paper's mode unless told otherwise (the references are the paper's)."""
    kwargs.setdefault('mode', 'paper')
    return MODELS.build(dict(type='RaMBOAPLoss', **kwargs))


def random_batch(seed, rows=60, num_classes=4, fg_rate=0.3):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, num_classes, generator=gen)
    labels = torch.randint(0, num_classes, (rows, ), generator=gen)
    labels[torch.rand(rows, generator=gen) > fg_rate] = num_classes
    return scores, labels


# --------------------------------------------------------------------- Faster R-CNN R18 fixture
FASTER_RCNN_R18 = f"""
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
model = dict(
    backbone=dict(depth=18, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512]),
    roi_head=dict(bbox_head=dict(num_classes={NUM_CLASSES},
                                 loss_cls=dict(_delete_=True, type='RaMBOAPLoss'))),
    # small and fast: fewer proposals and sampled RoIs; ignore regions are used (the stock
    # config never ignores: ignore_iof_thr=-1)
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=200),
                   rcnn=dict(assigner=dict(ignore_iof_thr=0.5), sampler=dict(num=64))))
"""


@pytest.fixture(scope='module')
def faster_rcnn(tmp_path_factory):
    register_all_modules()
    path = tmp_path_factory.mktemp('cfg') / 'faster_rcnn_r18_rambo.py'
    path.write_text(FASTER_RCNN_R18)
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(path)).model)
    model.train()
    return model


@pytest.fixture
def model(faster_rcnn):
    """A fresh copy (tests change weights, names and the score memory)."""
    return copy.deepcopy(faster_rcnn)


def detection_batch(gt=True, seed=1):
    """Raw data of 2 images of 128x128 (``model.data_preprocessor`` input)."""
    gen = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for i in range(2):
        inputs.append(torch.randint(0, 256, (3, IMG, IMG), generator=gen).to(torch.uint8))
        sample = DetDataSample(metainfo=dict(img_shape=(IMG, IMG), ori_shape=(IMG, IMG),
                                             pad_shape=(IMG, IMG), scale_factor=(1.0, 1.0)))
        boxes = torch.tensor([[10., 10., 60., 70.], [50., 40., 120., 110.], [5., 80., 40., 125.]])
        labels = torch.tensor([0, 2, 1 + i])
        if not gt:
            boxes, labels = boxes[:0], labels[:0]
        sample.gt_instances = InstanceData(bboxes=boxes, labels=labels)
        sample.ignored_instances = InstanceData(bboxes=torch.zeros(0, 4),
                                                labels=torch.zeros(0, dtype=torch.long))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def loss_step(model, data):
    """Losses (dict) of one forward; the total is back-propagated."""
    data = model.data_preprocessor(data, True)
    losses = model.loss(data['inputs'], data['data_samples'])
    total, log_vars = model.parse_losses(losses)
    total.backward()
    return losses, log_vars


class _Float32Kernels:
    """mmcv's CPU kernels (nms, roi_align) take float32 only: run them in float32 and copy the
    results back into the caller's (bf16) output buffers. Test-only shim; CUDA kernels take half."""

    def __init__(self, ext):
        self._ext = ext

    def __getattr__(self, name):
        kernel = getattr(self._ext, name)

        def call(*args, **kwargs):
            cast = [a.float() if torch.is_tensor(a) and a.dtype in (torch.bfloat16, torch.float16)
                    else a for a in args]
            out = kernel(*cast, **kwargs)
            for arg, copy_ in zip(args, cast):
                if copy_ is not arg and not torch.equal(arg, copy_.to(arg.dtype)):
                    arg.copy_(copy_)  # an output buffer written by the kernel
            return out

        return call


@pytest.fixture
def mmcv_cpu_bf16(monkeypatch):
    for module in ('mmcv.ops.nms', 'mmcv.ops.roi_align'):
        mod = sys.modules[module]
        monkeypatch.setattr(mod, 'ext_module', _Float32Kernels(mod.ext_module))


def all_finite(log_vars):
    return all(torch.isfinite(torch.as_tensor(v).detach()).all() for v in log_vars.values())


def capture_loss_io(loss):
    seen = {}
    loss.register_forward_pre_hook(
        lambda m, args: seen.update(dtype=args[0].dtype, labels=args[1].clone(),
                                    scores=args[0].detach().clone()))
    loss.register_forward_hook(lambda m, args, out: seen.update(out=out.detach()))
    return seen


# ------------------------------------------------------------------------ mixed precision
def test_faster_rcnn_bf16_amp_step_on_cpu(model, mmcv_cpu_bf16, monkeypatch):
    """One ``train_step`` of Faster R-CNN R18 (RaMBOAPLoss in the RoI head) with mmengine's
    ``AmpOptimWrapper(dtype='bfloat16')``: CPU autocast bf16, and a real loss scale of 2**16.

    ``AmpOptimWrapper`` asserts a GPU and builds the CUDA GradScaler; here it is let through and
    given torch's CPU GradScaler, so the scale really multiplies the loss."""
    from mmengine.optim import AmpOptimWrapper
    from mmengine.optim.optimizer import amp_optimizer_wrapper as amp_module
    monkeypatch.setattr(amp_module, 'is_cuda_available', lambda: True)
    monkeypatch.setattr(amp_module, 'GradScaler', functools.partial(torch.amp.GradScaler, 'cpu'))
    wrapper = AmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                              dtype='bfloat16')
    loss = model.roi_head.bbox_head.loss_cls
    seen = capture_loss_io(loss)
    before = model.roi_head.bbox_head.fc_cls.weight.detach().clone()
    log_vars = model.train_step(detection_batch(), wrapper)
    assert seen['dtype'] == torch.bfloat16  # the RoI head's logits really were bf16
    assert seen['out'].dtype == torch.float32
    assert all_finite(log_vars), log_vars
    # ranking loss (<= 1) + bce_weight x sigmoid cross-entropy (~ln 2 per class at init)
    num_classes = model.roi_head.bbox_head.num_classes
    assert 0 < float(torch.as_tensor(log_vars['loss_cls']).detach()) < \
        1 + loss.bce_weight * num_classes
    # no inf/NaN gradient was found (the scaler would have halved its scale and skipped the step)
    assert wrapper.loss_scaler.get_scale() == 2.0**16
    after = model.roi_head.bbox_head.fc_cls.weight.detach()
    assert torch.isfinite(after).all() and not torch.equal(before, after)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert len(loss.memory) == 1 and loss.memory._batches[0][0].dtype == torch.float32


def test_loss_under_autocast_computes_in_float32():
    scores, labels = random_batch(0, rows=200)
    layer = nn.Linear(8, 4)
    features = torch.randn(200, 8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits = layer(features)
        loss = build_loss(memory_batches=0)(logits, labels)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    ref = build_loss(memory_batches=0)(logits.detach().float(), labels)
    assert torch.equal(loss.detach(), ref)
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()


def grads_with_output_grad(scale, seed=3, **kwargs):
    """Score gradient of RaMBOAPLoss (2 calls: memory on) back-propagating ``scale * loss``."""
    loss_fn = build_loss(**kwargs)
    out = []
    for step in range(2):
        scores, labels = random_batch(seed + step, rows=300, num_classes=5)
        x = scores.clone().requires_grad_()
        (loss_fn(x, labels) * scale).backward()
        out.append(x.grad)
    return out


def test_gradient_is_linear_in_the_output_gradient():
    """A loss scale (AMP) or loss_weight scales the gradient; it does not change λ."""
    plain = grads_with_output_grad(1.0)
    assert sum(int(g.ne(0).sum()) for g in plain) > 0
    for scale, weight in ((2.0**16, 1.0), (2.0**-3, 1.0), (1.0, 4.0), (2.0**10, 0.5)):
        scaled = grads_with_output_grad(scale, loss_weight=weight)
        for g, ref in zip(scaled, plain):
            assert torch.equal(g / (scale * weight), ref)
    # the blackbox itself is not linear: that is why the loss must linearise it
    scores, labels = random_batch(3, rows=300, num_classes=5)
    positive = labels[:, None] == torch.arange(5)
    grads = []
    for scale in (1.0, 2.0**16):
        x = scores.clone().requires_grad_()
        (mean_ap_loss(x, positive, 0.5, 0.15) * scale).backward()
        grads.append(x.grad / scale)
    assert not torch.equal(grads[0], grads[1])


def test_loss_scale_multiplies_the_gradient_before_the_cast_to_float16():
    """AMP's loss scale exists to lift small gradients out of float16's subnormal range; the loss
    applies it to the float32 score gradient, before the cast back to the logits' float16."""
    scores, labels = random_batch(11, rows=4096, num_classes=20, fg_rate=0.25)
    scores = scores.half().float()  # values exactly representable in float16
    x32 = scores.clone().requires_grad_()
    build_loss(memory_batches=0, lambda_val=8.0)(x32, labels).backward()
    smallest = x32.grad.abs()[x32.grad != 0].min()
    assert smallest < torch.finfo(torch.float16).tiny  # a float16 subnormal: ~1e-3 precision
    x16 = scores.half().requires_grad_()
    (build_loss(memory_batches=0, lambda_val=8.0)(x16, labels) * 2.0**16).backward()
    assert x16.grad.dtype == torch.float16
    assert torch.allclose(x16.grad.float() / 2.0**16, x32.grad, rtol=2**-10, atol=0)


# ------------------------------------------------------------- determinism and memory growth
@pytest.fixture(scope='module')
def two_runs(tmp_path_factory):
    """Two fresh processes run ``tools/check_memory_growth.py`` at once with the same seed: 200
    iterations of a linear layer + RaMBOAPLoss (512 x 20, τ = 7) + SGD. Their JSON results."""
    tmp = tmp_path_factory.mktemp('runs')
    procs = [subprocess.Popen(
        [sys.executable, str(REPO_ROOT / 'tools' / 'check_memory_growth.py'), '--iters', '200',
         '--warmup', '50', '--rows', '512', '--classes', '20', '--threads', '1', '--out',
         str(tmp / f'run{i}.json')], cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=dict(os.environ, PYTHONWARNINGS='ignore')) for i in range(2)]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stdout[-2000:] + stderr[-3000:]
    return [json.loads((tmp / f'run{i}.json').read_text()) for i in range(2)]


def test_same_seed_same_data_bitwise_identical_losses(two_runs):
    first, second = two_runs
    assert len(first['losses_hex']) == 200
    assert first['losses_hex'] == second['losses_hex']
    assert first['weights_sha256'] == second['weights_sha256']
    assert len(set(first['losses_hex'])) > 1  # not a constant sequence


def test_process_memory_does_not_grow(two_runs):
    """RSS growth from iteration 50 (the memory is full after τ = 7) to 200 stays < 10 MiB (a
    leaked graph per iteration at this size adds ~25 MiB; measured growth: ~0.02 MiB)."""
    for result in two_runs:
        assert result['memory_batches_stored'] == 7 and len(result['samples']) >= 4
        assert result['growth_mb'] < 10, result['rss_mb']


def test_deterministic_algorithms_mode_is_accepted():
    """mmengine's ``randomness=dict(deterministic=True)`` turns this on: nothing may raise, and
    losses and gradients equal those computed without it (two steps: the memory too)."""

    def two_steps():
        loss_fn, out = build_loss(), []
        for step in range(2):
            scores, labels = random_batch(5 + step, rows=100)
            x = scores.requires_grad_()
            loss = loss_fn(x, labels)
            loss.backward()
            out.append((loss.detach(), x.grad))
        return out

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        reference = two_steps()
        torch.use_deterministic_algorithms(True)
        deterministic = two_steps()
    finally:
        torch.use_deterministic_algorithms(previous)
    for (loss, grad), (ref_loss, ref_grad) in zip(deterministic, reference):
        assert torch.equal(loss, ref_loss) and torch.equal(grad, ref_grad)
        assert grad.abs().sum() > 0


# ------------------------------------------------------------------------ bad input, naming
def test_nan_logits_error_names_the_loss_and_the_head(model):
    assert name_ranking_losses(model) == {
        'roi_head.bbox_head.loss_cls': 'roi_head.bbox_head.loss_cls (RaMBOAPLoss)'}
    with torch.no_grad():
        model.roi_head.bbox_head.fc_cls.weight[1, :5] = float('nan')
    with pytest.raises(ValueError) as info:
        loss_step(model, detection_batch())
    message = str(info.value)
    assert 'roi_head.bbox_head' in message and 'RaMBOAPLoss' in message
    assert 'NaN/Inf' in message


def test_name_ranking_losses_hook_before_run(faster_rcnn):
    model = nn.DataParallel(copy.deepcopy(faster_rcnn))  # a model wrapper is looked through
    runner = SimpleNamespace(model=model, logger=MMLogger.get_instance('test_robustness'))
    NameRankingLossesHook().before_run(runner)
    loss = model.module.roi_head.bbox_head.loss_cls
    assert loss.name == 'roi_head.bbox_head.loss_cls (RaMBOAPLoss)'
    with pytest.raises(ValueError, match=r'^roi_head\.bbox_head\.loss_cls \(RaMBOAPLoss\): '):
        loss(torch.randn(4, NUM_CLASSES), torch.tensor([0, 1, 7, 3]))


def test_name_given_in_the_config_is_kept():
    module = nn.Module()
    module.head = nn.Module()
    module.head.loss_cls = build_loss(name='my_head')
    module.head.other = build_loss()
    assert name_ranking_losses(module) == {'head.other': 'head.other (RaMBOAPLoss)'}
    assert module.head.loss_cls.name == 'my_head'
    assert name_ranking_losses(module) == {}  # idempotent


@pytest.mark.parametrize('bad', [[-1], [NUM_CLASSES + 1], [2**40]])
def test_labels_outside_the_range_raise(bad):
    loss_fn = build_loss(name='roi_head.bbox_head.loss_cls (RaMBOAPLoss)')
    labels = torch.tensor([0, 1, NUM_CLASSES] + bad)
    with pytest.raises(ValueError, match=r'^roi_head\.bbox_head\.loss_cls \(RaMBOAPLoss\): '
                       rf'labels must be in 0\.\.{NUM_CLASSES} .*got \[{bad[0]}\]'):
        loss_fn(torch.randn(4, NUM_CLASSES), labels)


def test_non_integer_labels_raise():
    with pytest.raises(ValueError, match='RaMBOAPLoss: labels must be an integer tensor'):
        build_loss()(torch.randn(4, 3), torch.tensor([0.0, 1.0, 3.0, 3.0]))
    with pytest.raises(ValueError, match="global_batch must be 'auto', True or False"):
        build_loss(global_batch='yes')


def test_images_without_gt_or_with_only_ignored_boxes(model):
    """Image 0 has no box, image 1 only an ignored box. mmdet's MaxIoUAssigner applies ignore
    regions only in images that have boxes (without any, every RoI is background), so every
    sampled RoI is background and (empty memory) the ranking term is 0 with zero gradient; the
    RoI head's sigmoid cross-entropy term (mode 'auto', ``bce_weight``) still pushes the
    background down, as mmdet's cross-entropy would. With ``bce_weight=0``: 0, zero gradient."""
    from mmdet.models.losses import CrossEntropyLoss
    data = detection_batch(gt=False)
    data['data_samples'][1].ignored_instances = InstanceData(
        bboxes=torch.tensor([[0., 0., IMG / 2, IMG]]), labels=torch.zeros(1, dtype=torch.long))
    loss = model.roi_head.bbox_head.loss_cls
    assert loss.bce_weight > 0
    seen = capture_loss_io(loss)
    losses, log_vars = loss_step(model, data)
    assert seen['labels'].numel() > 0 and bool((seen['labels'] == NUM_CLASSES).all())
    cross_entropy = CrossEntropyLoss(use_sigmoid=True)(  # summed over classes, mean over rows
        seen['scores'].float(), seen['labels'], avg_factor=seen['labels'].numel())
    assert float(log_vars['loss_cls']) == pytest.approx(loss.bce_weight * float(cross_entropy),
                                                 rel=1e-5)
    assert log_vars['loss_bbox'] == 0.0
    assert all_finite(log_vars)
    model.zero_grad()
    loss.bce_weight = 0.0  # the ranking term alone
    losses, log_vars = loss_step(model, data)
    assert log_vars['loss_cls'] == 0.0 and log_vars['loss_bbox'] == 0.0
    weight = model.roi_head.bbox_head.fc_cls.weight
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_empty_batch_with_memory_gives_memory_loss_and_zero_grad():
    loss_fn = build_loss(memory_batches=2, interclass_weight=0.25)
    scores, labels = random_batch(0)
    loss_fn(scores, labels)
    x = torch.zeros(0, 4, requires_grad=True)
    loss = loss_fn(x, torch.zeros(0, dtype=torch.long))
    loss.backward()
    ref = 0.75 * mean_ap_loss(scores, labels[:, None] == torch.arange(4), 0.5, 0.15)
    assert torch.allclose(loss, ref) and loss.item() > 0
    assert x.grad.shape == (0, 4) and len(loss_fn.memory) == 1  # nothing remembered
    # every row ignored: the same
    y = torch.randn(5, 4, requires_grad=True)
    loss = loss_fn(y, torch.tensor([0, 1, 2, 3, 4]), torch.zeros(5))
    loss.backward()
    assert torch.allclose(loss, ref) and torch.equal(y.grad, torch.zeros(5, 4))
    assert len(loss_fn.memory) == 1


def test_batch_without_positive_has_no_interclass_term():
    loss_fn = build_loss(memory_batches=2, interclass_weight=1.0)  # L_APC only
    loss_fn(*random_batch(0))
    x = torch.randn(20, 4, requires_grad=True)
    loss = loss_fn(x, torch.full((20, ), 4))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


def test_absent_class_leaves_map_after_tau_batches():
    """Class 0 appears once; it stays in L_mAP for τ batches, not for the (τ+1)-th."""
    tau = 3
    loss_fn = build_loss(memory_batches=tau, interclass_weight=0.0, lambda_val=10.0, margin=0.0)
    loss_fn(torch.zeros(6, 3), torch.tensor([0, 1, 3, 3, 3, 3]))  # class 0 and 1 positives at 0
    labels = torch.tensor([1, 3, 3, 3, 3, 3])
    for batch in range(1, tau + 2):
        x = torch.zeros(6, 3)
        x[:, 0] = 0.01  # above the remembered class-0 positive
        x[0, 1], x[1, 1] = 1.0, 2.0  # a class-1 positive below a negative
        x.requires_grad_()
        remembered = [s for s, _ in loss_fn.memory._batches]
        loss = loss_fn(x, labels)
        loss.backward()
        class0_in_map = bool(x.grad[:, 0].ne(0).any())
        assert class0_in_map == (batch <= tau), batch
        assert len(loss_fn.memory) == min(batch + 1, tau)
    # the (τ+1)-th batch without class 0: L_mAP is the AP loss of class 1 alone, over the batch
    # and the τ remembered batches (AP = 1 / (τ + 2): every copy of the negative ranks above)
    ranked = torch.cat([x.detach(), *remembered])
    assert ranked.shape[0] == 6 * (tau + 1)
    positive = (torch.cat([labels] * (tau + 1)) == 1)[:, None]
    ref = mean_ap_loss(ranked[:, 1:2], positive, 10.0, 0.0)
    assert torch.allclose(loss.detach(), ref) and ref.item() == pytest.approx(1 - 1 / (tau + 2))


# ------------------------------------------------------------------------ int64 rank arithmetic
def test_rank_arithmetic_is_int64_beyond_2_31():
    """A real n > 2**31 run needs > 24 GiB (8 GiB of float32 scores, 16 GiB of int64 keys), so
    the int64 paths are checked on their own: flat indices, group keys and the suffix sums of the
    negatives' histogram, with counts and indices beyond 2**31 and 2**32."""
    base = 80 * 2**28  # > 2**34, a multiple of the 80 groups
    positives = PositiveSet.from_flat_index(torch.tensor([base + 3, base + 80 + 3, base + 161]),
                                            80)
    assert positives.flat_index.dtype == torch.int64 and positives.group.tolist() == [3, 3, 1]
    assert float_order_keys(torch.tensor([1.0])).dtype == torch.int64
    keys = group_keys(torch.tensor([-1.0, 2.0]), torch.tensor([2**20, 2**20]))
    assert keys.dtype == torch.int64 and keys[0] < keys[1] and (keys >> 32).tolist() == [2**20] * 2

    one_group = PositiveSet.from_flat_index(torch.tensor([0, 1]), 1)
    sorted_pos = sort_positives(torch.tensor([1.0, 2.0]), one_group)
    bins = torch.tensor([3 * 2**31, 2**40, 5])  # negatives per placement bin (+ spare bin)
    above = negatives_above(sorted_pos, one_group, bins)
    assert above.dtype == torch.int64
    assert above.tolist() == [3 * 2**31 + 2**40, 2**40]
