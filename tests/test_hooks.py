"""RankingLossStatsHook and the statistics RaMBOAPLoss records for it.

* The recorded statistics equal a direct computation on a small input: AP of each term against
  the loop oracle (memory, ignored rows, margin) and sklearn, the fraction of scores with a
  non-zero gradient against ``x.grad``, the score spread against ``torch.std``.
* Recording is off by default and changes neither the loss nor its gradient.
* The hook also logs each loss's calibration map (global: ``calib_scale``/``calib_bias``,
  per class: their class means ``*_mean``) with the buffers' values, and nothing for a loss
  with ``calibration=None``.
* The hook warns once per loss when the mean logit of the positives or negatives passes
  ``LOGIT_DRIFT_LIMIT`` (not at 0.99 of it), through the runner's logger or ``warnings``.
* NameRankingLossesHook advises, at before_train, the box-head cross-entropy term measured
  better with the run's optimiser (softmax with SGD, sigmoid with Adam / AdamW), and says
  nothing where there is no such term or the optimiser was not measured.
* Key prefixes: module paths without the ``loss*`` component (mmengine averages keys with
  ``loss`` in them).
* In a real mmengine Runner the hook records exactly on the iterations the LoggerHook logs (or
  every ``interval``), and the values reach the text log and ``scalars.json`` unsmoothed.
* A tiny Faster R-CNN trained by tools/train.py logs the box head's statistics.
"""
import glob
import json
import os
import os.path as osp
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from sklearn.metrics import average_precision_score
from torch import nn
from torch.utils.data import Dataset

import rambo_mmdet  # noqa: F401  (registers the losses and hooks)
from mmdet.registry import HOOKS, MODELS
from rambo_mmdet.hooks import (MEASURED_CROSS_ENTROPY, STATS, NameRankingLossesHook,
                               RankingLossStatsHook, cross_entropy_advice,
                               ranking_loss_stat_prefixes)
from rambo_mmdet.models.losses import RaMBOAPLoss
from ranking_oracle import oracle_map_loss
from test_demo import CONFIG, ROOT, _options

NUM_CLASSES = 3


def build_loss(**kwargs):
    return MODELS.build(dict(type='RaMBOAPLoss', **kwargs))


def random_batch(seed, rows=24, num_classes=NUM_CLASSES, fg_rate=0.35):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(rows, num_classes, generator=gen)
    labels = torch.randint(0, num_classes, (rows, ), generator=gen)
    labels[torch.rand(rows, generator=gen) > fg_rate] = num_classes
    return scores, labels


def one_hot(labels, num_classes=NUM_CLASSES):
    return labels[:, None] == torch.arange(num_classes)


def expected_stats(scores, labels, valid, memory, lambda_val, margin):
    """The statistics computed directly: loop oracles, x.grad excluded (see the test)."""
    s, lab = scores[valid], labels[valid]
    all_s = s if memory is None else torch.cat([s, memory[0]])
    all_lab = lab if memory is None else torch.cat([lab, memory[1]])
    pos = one_hot(lab)
    out = dict(
        ap_map=1 - oracle_map_loss(all_s, one_hot(all_lab), lambda_val, margin).item(),
        ap_apc=1 - oracle_map_loss(s.reshape(-1, 1), pos.reshape(-1, 1), lambda_val,
                                   margin).item(),
        pos_mean=s[pos].mean().item(), pos_std=s[pos].std(unbiased=False).item(),
        neg_mean=s[~pos].mean().item(), neg_std=s[~pos].std(unbiased=False).item())
    return out


def loss_call(loss_fn, scores, labels, valid=None):
    x = scores.clone().requires_grad_()
    weights = None if valid is None else valid.float()
    loss = loss_fn(x, labels, weights)
    loss.backward()
    return loss.detach(), x.grad


# ------------------------------------------------------------------------- the loss's stats
@pytest.mark.parametrize('margin,ignore', [(0.0, False), (0.15, True)])
def test_recorded_stats_match_a_direct_computation(margin, ignore):
    # the ranking's gradient alone (test_gradient_fraction_counts_the_ranking_gradient_only)
    loss_fn = build_loss(margin=margin, lambda_val=5.0, memory_batches=2, bce_weight=0.0)
    loss_fn.record_stats = True
    memory, fractions = None, []
    for step in range(3):  # the memory fills: L_mAP ranks the batch with the last 2 batches
        scores, labels = random_batch(step)
        valid = torch.ones(len(labels), dtype=torch.bool)
        if ignore:
            valid[::5] = False
        _, grad = loss_call(loss_fn, scores, labels, valid if ignore else None)
        stats = {k: v.item() for k, v in loss_fn.stats.items()}
        assert set(stats) == set(STATS)
        want = expected_stats(scores, labels, valid, memory, loss_fn.lambda_val, margin)
        want['grad_frac'] = (grad[valid] != 0).float().mean().item()
        fractions.append(want['grad_frac'])
        for key, value in want.items():
            assert stats[key] == pytest.approx(value, abs=1e-5), (step, key)
        memory = _last_batches(step, ignore)  # what the loss remembers for the next step
    assert all(0 < f < 1 for f in fractions), fractions  # the count is not trivially 0 or 1


def test_gradient_fraction_counts_the_ranking_gradient_only():
    # the default cross-entropy term of RoI-like batches gives every score a gradient; grad_frac
    # is the ranking's (the same as without the term)
    scores, labels = random_batch(3, rows=200)
    fractions = []
    for bce_weight in (0.0, 0.5):
        loss_fn = build_loss(memory_batches=0, bce_weight=bce_weight)
        loss_fn.record_stats = True
        _, grad = loss_call(loss_fn, scores, labels)
        fractions.append(loss_fn.stats['grad_frac'].item())
    assert (grad != 0).float().mean().item() == 1.0  # the total gradient is dense
    assert fractions[0] == fractions[1] < 0.9, fractions


def _last_batches(step, ignore):
    """The valid rows of batches ``step - 1`` and ``step`` (memory_batches=2)."""
    rows = []
    for s in (step - 1, step):
        if s < 0:
            continue
        scores, labels = random_batch(s)
        valid = torch.ones(len(labels), dtype=torch.bool)
        if ignore:
            valid[::5] = False
        rows.append((scores[valid], labels[valid]))
    return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])


def test_interclass_ap_agrees_with_sklearn():
    scores, labels = random_batch(7, rows=200)  # continuous scores: no ties
    loss_fn = build_loss(margin=0.0, memory_batches=0)
    loss_fn.record_stats = True
    loss_call(loss_fn, scores, labels)
    pos = one_hot(labels)
    apc = average_precision_score(pos.reshape(-1).numpy(), scores.reshape(-1).numpy())
    per_class = [average_precision_score(pos[:, c].numpy(), scores[:, c].numpy())
                 for c in range(NUM_CLASSES) if pos[:, c].any()]
    assert loss_fn.stats['ap_apc'].item() == pytest.approx(apc, abs=1e-5)
    assert loss_fn.stats['ap_map'].item() == pytest.approx(sum(per_class) / len(per_class),
                                                           abs=1e-5)


@pytest.mark.parametrize('beta', [0.0, 1.0])
def test_a_term_with_weight_zero_is_not_reported(beta):
    loss_fn = build_loss(interclass_weight=beta, memory_batches=0, bce_weight=0.0)
    loss_fn.record_stats = True
    scores, labels = random_batch(3)
    loss, _ = loss_call(loss_fn, scores, labels)
    present, absent = ('ap_map', 'ap_apc') if beta == 0 else ('ap_apc', 'ap_map')
    assert absent not in loss_fn.stats
    assert loss_fn.stats[present].item() == pytest.approx(1 - loss.item(), abs=1e-6)


def test_undefined_stats_are_nan_without_positives():
    loss_fn = build_loss(memory_batches=0)
    loss_fn.record_stats = True
    scores, _ = random_batch(4)
    loss_call(loss_fn, scores, torch.full((len(scores), ), NUM_CLASSES))
    stats = loss_fn.stats
    for key in ('ap_map', 'ap_apc', 'pos_mean', 'pos_std'):
        assert torch.isnan(stats[key]), key
    assert stats['grad_frac'].item() == 0.0
    assert stats['neg_mean'].item() == pytest.approx(scores.mean().item(), abs=1e-6)


def test_recording_is_off_by_default_and_changes_nothing():
    scores, labels = random_batch(5)
    plain = build_loss()
    assert plain.record_stats is False
    loss, grad = loss_call(plain, scores, labels)
    assert plain.stats is None
    recording = build_loss()
    recording.record_stats = True
    loss_r, grad_r = loss_call(recording, scores, labels)
    assert recording.stats is not None
    assert torch.equal(loss, loss_r) and torch.equal(grad, grad_r)


# ------------------------------------------------------------------------- key prefixes
def test_key_prefixes_drop_the_loss_component():
    model = nn.Module()
    model.rpn_head = nn.Module()
    model.rpn_head.loss_cls = build_loss()
    model.roi_head = nn.Module()
    model.roi_head.bbox_head = nn.Module()
    model.roi_head.bbox_head.loss_cls = build_loss()
    model.two = nn.Module()
    model.two.loss_a, model.two.loss_b = build_loss(), build_loss()
    model.ce = nn.CrossEntropyLoss()
    prefixes = ranking_loss_stat_prefixes(nn.DataParallel(model))
    assert prefixes == {'rpn_head': model.rpn_head.loss_cls,
                        'roi_head.bbox_head': model.roi_head.bbox_head.loss_cls,
                        'two.rank_a': model.two.loss_a, 'two.rank_b': model.two.loss_b}


def test_hook_arguments_are_checked():
    with pytest.raises(ValueError, match='unknown stats'):
        RankingLossStatsHook(stats=('ap_map', 'auc'))
    with pytest.raises(ValueError, match='interval'):
        RankingLossStatsHook(interval=0)
    assert HOOKS.get('RankingLossStatsHook') is RankingLossStatsHook


def test_hook_skips_undefined_values_and_resets_the_flag():
    from mmengine.logging import MessageHub

    model = nn.Module()
    model.loss_cls = build_loss(memory_batches=0)
    hub = MessageHub.get_instance('test_hooks_nan')
    runner = SimpleNamespace(model=model, message_hub=hub, hooks=[], logger=None,
                             train_dataloader=range(100))
    hook = RankingLossStatsHook(interval=1)
    hook._losses = ranking_loss_stat_prefixes(model)  # before_run without a logger
    hook.before_train_iter(runner, 0)
    assert model.loss_cls.record_stats
    scores, _ = random_batch(6)
    loss_call(model.loss_cls, scores, torch.full((len(scores), ), NUM_CLASSES))  # no positive
    hook.after_train_iter(runner, 0)
    assert not model.loss_cls.record_stats and model.loss_cls.stats is None
    logged = {k for k in hub.log_scalars if k.startswith('train/rank_cls/')}
    assert logged == {'train/rank_cls/grad_frac', 'train/rank_cls/neg_mean',
                      'train/rank_cls/neg_std',  # and the calibration map (always defined)
                      'train/rank_cls/calib_scale', 'train/rank_cls/calib_bias'}


# ------------------------------------------------------------------------- logit drift
def _drift_run(hook, runner, loss_fn, batches):
    """One hook-recorded loss call per ``(scores, labels)``; the drift warnings of each call."""
    import warnings

    warned = []
    for it, (scores, labels) in enumerate(batches):
        hook.before_train_iter(runner, it)
        loss_call(loss_fn, scores, labels)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            hook.after_train_iter(runner, it)
        warned.append([str(w.message) for w in caught if 'drifted' in str(w.message)])
    return warned


def test_hook_warns_once_when_the_logits_drift():
    from rambo_mmdet.hooks import LOGIT_DRIFT_LIMIT

    model = nn.Module()
    model.loss_cls = build_loss(memory_batches=0)
    model.loss_cls.name = 'bbox_head.loss_cls (RaMBOAPLoss)'
    runner = _hub_runner(model, 'test_hooks_drift')
    hook = RankingLossStatsHook(interval=1)
    hook._losses = ranking_loss_stat_prefixes(model)
    scores, labels = random_batch(3)
    pos = one_hot(labels)
    # the positives' mean just inside the limit, then beyond it (twice), the negatives' level 0
    inside = scores - scores[pos].mean() + 0.99 * LOGIT_DRIFT_LIMIT * pos
    beyond = scores - scores[pos].mean() + 1.5 * LOGIT_DRIFT_LIMIT * pos
    warned = _drift_run(hook, runner, model.loss_cls, [(inside, labels), (beyond, labels),
                                                        (beyond, labels)])
    assert [len(w) for w in warned] == [0, 1, 0]  # once per loss
    message = warned[1][0]
    assert 'bbox_head.loss_cls (RaMBOAPLoss)' in message and 'memory_batches' in message
    mean = beyond[pos].mean().item()
    assert f'{mean:.4g} over the positives' in message
    # the logged values are those of the calls, drifted or not
    assert runner.message_hub.log_scalars['train/rank_cls/pos_mean'].current() == \
        pytest.approx(mean, rel=1e-5)


def test_hook_warns_about_negatives_through_the_runner_logger():
    model = nn.Module()
    model.loss_cls = build_loss(memory_batches=0)
    messages = []
    runner = _hub_runner(model, 'test_hooks_drift_neg')
    runner.logger = SimpleNamespace(warning=messages.append)
    hook = RankingLossStatsHook(interval=1)
    hook._losses = ranking_loss_stat_prefixes(model)
    scores, _ = random_batch(4)
    background = torch.full((len(scores), ), NUM_CLASSES)  # no positive: pos_mean undefined
    _drift_run(hook, runner, model.loss_cls, [(scores - 250.0, background)])
    assert len(messages) == 1
    assert 'over the negatives' in messages[0] and 'over the positives' not in messages[0]
    # a hook that does not record the means cannot tell, and says nothing
    quiet = RankingLossStatsHook(interval=1, stats=('ap_map', 'grad_frac'))
    quiet._losses = hook._losses
    messages.clear()
    _drift_run(quiet, runner, model.loss_cls, [(scores - 250.0, background)])
    assert messages == []


# ------------------------------------------------------------------------- the calibration map
def _hub_runner(model, name):
    from mmengine.logging import MessageHub

    hub = MessageHub.get_instance(name)
    return SimpleNamespace(model=model, message_hub=hub, hooks=[], logger=None,
                           train_dataloader=range(100))


@pytest.mark.parametrize('calibration', ['global', 'per_class'])
def test_hook_logs_the_calibration_map(calibration):
    model = nn.Module()
    model.head = nn.Module()
    model.head.loss_cls = build_loss(memory_batches=0, calibration=calibration,
                                     num_classes=NUM_CLASSES, calibration_rate=0.5)
    loss_fn = model.head.loss_cls
    runner = _hub_runner(model, f'test_hooks_calib_{calibration}')
    hook = RankingLossStatsHook(interval=2)
    hook._losses = ranking_loss_stat_prefixes(model)
    suffix = '_mean' if calibration == 'per_class' else ''
    keys = {f'train/head/calib_scale{suffix}': 'calib_scale',
            f'train/head/calib_bias{suffix}': 'calib_bias'}
    seen = []
    for it in range(6):  # batch_idx 1, 3 and 5 are recorded
        hook.before_train_iter(runner, it)
        scores, labels = random_batch(10 + it)
        loss_call(loss_fn, 3 * scores + 2 * one_hot(labels), labels)  # informative logits
        hook.after_train_iter(runner, it)
        scalars = runner.message_hub.log_scalars
        assert {k for k in scalars if 'calib' in k} == (set(keys) if it else set()), it
        for key, buffer in (keys.items() if it else ()):
            count = len(scalars[key].data[0])
            assert count == (it + 1) // 2, (it, key)  # updated on the recorded iterations only
            if it % 2 == 1:  # the map after this iteration's update (the mean over the classes)
                value = getattr(loss_fn, buffer)
                assert value.dim() == (1 if calibration == 'per_class' else 0)
                assert scalars[key].current() == pytest.approx(value.mean().item(), rel=1e-6)
                seen.append((key, scalars[key].current()))
    assert int(loss_fn.calib_updates) == 6  # the map is updated on every call, logged or not
    # the map moved away from the identity, so the values compared above are not the defaults
    assert not torch.allclose(loss_fn.calib_scale, torch.ones_like(loss_fn.calib_scale))
    assert not torch.allclose(loss_fn.calib_bias, torch.zeros_like(loss_fn.calib_bias))
    if calibration == 'per_class':  # the classes' maps differ: a mean, not one of them
        assert loss_fn.calib_scale.unique().numel() == NUM_CLASSES
    scale_values = [v for k, v in seen if 'scale' in k]
    assert len(set(scale_values)) == 3  # a fresh value on each logged iteration


@pytest.mark.parametrize('loss_calibration,hook_calibration', [(None, True), ('global', False)])
def test_hook_logs_no_calibration_without_a_map(loss_calibration, hook_calibration):
    model = nn.Module()
    model.loss_cls = build_loss(memory_batches=0, calibration=loss_calibration)
    assert (loss_calibration is None) == (not hasattr(model.loss_cls, 'calib_scale'))
    runner = _hub_runner(model, f'test_hooks_no_calib_{loss_calibration}')
    hook = RankingLossStatsHook(interval=1, calibration=hook_calibration)
    hook._losses = ranking_loss_stat_prefixes(model)
    hook.before_train_iter(runner, 0)
    scores, labels = random_batch(8)
    loss_call(model.loss_cls, scores, labels)
    hook.after_train_iter(runner, 0)
    logged = {k for k in runner.message_hub.log_scalars if k.startswith('train/rank_cls/')}
    assert logged == {f'train/rank_cls/{name}' for name in STATS}


# ------------------------------------------------------------------------- a real Runner
class _RankingModel:
    """A toy 'detector': a linear classifier of C classes trained with RaMBOAPLoss."""

    @staticmethod
    def build():
        from mmengine.model import BaseModel

        class Head(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc_cls = nn.Linear(4, NUM_CLASSES)
                self.loss_cls = build_loss(memory_batches=2, lambda_val=5.0)

        class Model(BaseModel):
            def __init__(self):
                super().__init__()
                self.head = Head()
                self.recording = []  # loss.record_stats seen by each forward

            def forward(self, inputs, labels=None, mode='tensor'):
                logits = self.head.fc_cls(torch.cat(inputs))
                if mode != 'loss':
                    return logits
                self.recording.append(self.head.loss_cls.record_stats)
                return dict(loss_cls=self.head.loss_cls(logits, torch.cat(labels)))

        return Model()


class _RankingData(Dataset):
    """8 samples of 16 rows each; 2 samples a batch, so an epoch is 4 iterations."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        gen = torch.Generator().manual_seed(i)
        labels = torch.randint(0, NUM_CLASSES + 1, (16, ), generator=gen)
        feats = torch.randn(16, 4, generator=gen) + 0.5 * nn.functional.one_hot(labels, 4)
        return dict(inputs=feats, labels=labels)


class _CurrentValues:
    """Records after every iteration (after the LoggerHook) ``{key: (updates, current value)}``
    of the message hub's ``train/head/`` keys, in ``rows[iteration]``."""

    def __init__(self):
        from mmengine.hooks import Hook

        outer = self

        class Record(Hook):
            priority = 'LOWEST'

            def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
                scalars = runner.message_hub.log_scalars
                outer.rows[runner.iter + 1] = {
                    k: (len(v.data[0]), v.current()) for k, v in scalars.items()
                    if k.startswith('train/head/')}

        self.rows = {}
        self.hook = Record()


def _train(work_dir, max_iters, logger_interval, stats_hook, ignore_last=True):
    from mmengine.runner import Runner

    record = _CurrentValues()
    model = _RankingModel.build()
    runner = Runner(
        model=model, work_dir=str(work_dir), experiment_name='stats',
        train_dataloader=dict(dataset=_RankingData(), batch_size=2, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=False)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=10_000),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=logger_interval,
                                       ignore_last=ignore_last),
                           checkpoint=None),
        log_processor=dict(window_size=10, by_epoch=False),
        custom_hooks=[stats_hook, record.hook],
        default_scope='mmdet', randomness=dict(seed=0), log_level='INFO')
    runner.train()
    scalars = glob.glob(osp.join(str(work_dir), '*', 'vis_data', 'scalars.json'))
    logs = glob.glob(osp.join(str(work_dir), '*', '*.log'))
    rows = [json.loads(line) for line in open(scalars[0])]
    return model, record.rows, rows, open(logs[0]).read()


def test_runner_logs_the_stats_on_the_logged_iterations(tmp_path):
    # LoggerHook(interval=3, ignore_last=False) over 7 iterations of a 4-batch epoch logs
    # iterations 3, 6 and 4 (the end of the dataloader's first pass): record exactly there
    model, current, rows, log = _train(tmp_path, max_iters=7, logger_interval=3,
                                       stats_hook=dict(type='RankingLossStatsHook'),
                                       ignore_last=False)
    logged = [row['iter'] for row in rows]
    assert logged == [3, 4, 6]
    assert model.recording == [it in logged for it in range(1, 8)]
    keys = {f'head/{name}' for name in STATS}
    for row in rows:
        assert keys <= set(row), row
        assert 0 <= row['head/ap_map'] <= 1 and 0 <= row['head/ap_apc'] <= 1
        assert 0 <= row['head/grad_frac'] <= 1
        assert row['head/pos_std'] > 0 and row['head/neg_std'] > 0
        # the logged value is that iteration's (not a window mean over earlier updates)
        it = row['iter']
        for key in keys:
            count, value = current[it][f'train/{key}']
            assert count == logged.index(it) + 1, (key, it)  # one update per logged iteration
            assert row[key] == pytest.approx(value, rel=1e-6)
    for it in range(1, 8):  # no update between the logged iterations
        if it not in logged:
            previous = max([i for i in logged if i < it], default=None)
            want = 0 if previous is None else logged.index(previous) + 1
            assert all(c == want for c, _ in current[it].values()), (it, current[it])
    assert any(row['head/grad_frac'] > 0 for row in rows)
    line = [ln for ln in log.splitlines() if 'Iter(train) [6/7]' in ln]
    assert line and 'head/ap_map: ' in line[0] and 'head/grad_frac: ' in line[0], line
    assert not model.head.loss_cls.record_stats


def test_runner_own_interval_and_selected_stats(tmp_path):
    model, current, rows, _ = _train(
        tmp_path, max_iters=6, logger_interval=1,
        stats_hook=dict(type='RankingLossStatsHook', interval=2, stats=['ap_map', 'grad_frac']))
    assert model.recording == [False, True, False, True, False, True]
    # the selected stats, and the calibration map of the loss (calibration='global')
    assert set(current[6]) == {'train/head/ap_map', 'train/head/grad_frac',
                               'train/head/calib_scale', 'train/head/calib_bias'}
    assert [c for c, _ in current[6].values()] == [3, 3, 3, 3]
    assert [row['iter'] for row in rows if 'head/ap_map' in row] == [2, 3, 4, 5, 6]
    # iteration 6 is the last: its logged map is the loss's final one, also in scalars.json
    loss_fn = model.head.loss_cls
    assert int(loss_fn.calib_updates) == 6
    assert not torch.allclose(loss_fn.calib_scale, torch.ones(()))
    last = [row for row in rows if row['iter'] == 6 and 'head/ap_map' in row][0]
    for key in ('calib_scale', 'calib_bias'):
        assert current[6][f'train/head/{key}'][1] == pytest.approx(
            getattr(loss_fn, key).item(), rel=1e-6)
        assert last[f'head/{key}'] == pytest.approx(getattr(loss_fn, key).item(), rel=1e-6)


# ------------------------------------------------------------------------- a tiny detector
def _run(cmd):
    """Run a tool (the thread count of this process's environment, 1 by default)."""
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    env.setdefault('OMP_NUM_THREADS', '1')
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f'{" ".join(cmd[:3])} ... exited {proc.returncode}\n'
                    f'{(proc.stdout + proc.stderr)[-4000:]}')
    return proc


def test_tiny_faster_rcnn_logs_the_box_head_stats(tmp_path):

    data = tmp_path / 'fashion_det'
    _run([sys.executable, osp.join(ROOT, 'tools', 'make_fashion_det.py'), '--small', '--out',
          str(data), '--img-size', '64', '--min-size', '8', '--max-size', '32',
          '--max-objects', '3', '--workers', '1', '--quiet'])
    config = tmp_path / 'faster_rcnn_stats.py'
    config.write_text(f"_base_ = [{CONFIG!r}]\n"
                      "custom_hooks = [dict(type='NameRankingLossesHook'),\n"
                      "                dict(type='RankingLossStatsHook')]\n")
    work_dir = tmp_path / 'work'
    options = [o for o in _options(data) if not o.startswith('train_cfg.val_interval')]
    proc = _run([sys.executable, osp.join(ROOT, 'tools', 'train.py'), str(config),
                 '--work-dir', str(work_dir), '--cfg-options'] + options
                + ['train_cfg.val_interval=100'])
    (scalars, ) = glob.glob(osp.join(str(work_dir), '*', 'vis_data', 'scalars.json'))
    rows = [json.loads(line) for line in open(scalars) if '"loss"' in line]
    assert [row['iter'] for row in rows] == [1, 2, 3, 4]
    for row in rows:
        for name in STATS:
            assert f'roi_head.bbox_head/{name}' in row, (name, row)
        assert 0 <= row['roi_head.bbox_head/ap_apc'] <= 1
        assert 0 < row['roi_head.bbox_head/grad_frac'] <= 1
        assert row['roi_head.bbox_head/calib_scale'] > 0  # calibration='global' (a > 0)
        assert 'roi_head.bbox_head/calib_bias' in row
    assert 'roi_head.bbox_head/ap_map: ' in proc.stdout + proc.stderr


# ----------------------------------------------------------------- cross-entropy term advice
def _box_head_model(num_classes=3, **loss_kwargs):
    from mmdet.models.roi_heads.bbox_heads import Shared2FCBBoxHead
    loss_cls = dict(type='RaMBOAPLoss', use_sigmoid=True, **loss_kwargs)
    head = Shared2FCBBoxHead(in_channels=4, fc_out_channels=8, roi_feat_size=2,
                             num_classes=num_classes, loss_cls=loss_cls)
    return nn.ModuleDict(dict(roi_head=nn.ModuleDict(dict(bbox_head=head))))


@pytest.mark.parametrize('optimizer, cross_entropy, advised', [
    ('SGD', 'sigmoid', 'softmax'), ('SGD', 'softmax', None),
    ('AdamW', 'softmax', 'sigmoid'), ('AdamW', 'sigmoid', None),
    ('Adam', 'softmax', 'sigmoid'), ('RMSprop', 'sigmoid', None)])
def test_hook_advises_the_cross_entropy_term_measured_better_with_the_optimiser(
        optimizer, cross_entropy, advised):
    model = _box_head_model(cross_entropy=cross_entropy)
    opt = getattr(torch.optim, optimizer)(model.parameters(), lr=0.01)
    messages = cross_entropy_advice(model, opt)
    if advised is None:
        assert messages == []
    else:
        (message, ) = messages
        assert message.startswith('roi_head.bbox_head.loss_cls (RaMBOAPLoss): '
                                  f"cross_entropy='{cross_entropy}' with {optimizer};")
        assert f"loss_cls.cross_entropy='{advised}'" in message
        assert MEASURED_CROSS_ENTROPY[optimizer][1] in message  # how much, measured
    # through the hook, at before_train, with the runner's logger (a wrapped model too)
    logged = []
    runner = SimpleNamespace(model=model, optim_wrapper=SimpleNamespace(optimizer=opt),
                             logger=SimpleNamespace(warning=logged.append))
    NameRankingLossesHook().before_train(runner)
    assert logged == messages


def test_no_cross_entropy_advice_without_a_box_head_term():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    # no term (bce_weight 0, other modes), one class (identical terms), not a box head
    for model in (_box_head_model(bce_weight=0.0), _box_head_model(mode='paper'),
                  _box_head_model(mode='balanced'), _box_head_model(num_classes=1)):
        assert cross_entropy_advice(model, opt) == []
    dense = nn.ModuleDict(dict(bbox_head=nn.Module()))
    dense.bbox_head.loss_cls = RaMBOAPLoss(use_sigmoid=True)
    dense.bbox_head.num_classes = 3
    assert cross_entropy_advice(dense, opt) == []
    assert cross_entropy_advice(_box_head_model(), None) == []  # no optimiser (yet)
