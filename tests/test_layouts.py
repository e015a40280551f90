"""Any memory layout of the scores ranks exactly like a contiguous copy of them.

Every entry point (the mmdet losses ``RaMBOAPLoss`` and ``RaMBORecallLoss``, the functional losses
and the ranker) gets transposed, sliced (every other row / column) and expanded (stride 0) scores,
in the sparse and in the dense strategy (forced, and checked to have run). Loss and gradient must
equal, bit for bit, those of a contiguous copy, and the gradient comes back in the input's shape.
``RaMBORecallLoss`` transposes its ``[Q, M]`` scores itself, so there a contiguous input is the
non-contiguous case (the crash of the issue "Reliability: a crash in the recall loss").
"""
import zlib

import pytest
import torch
from mmdet.registry import MODELS

import rambo_mmdet  # noqa: F401  (registers the losses)
import rambo_mmdet.ranking.blackbox as blackbox
from rambo_mmdet.ranking import (PositiveSet, average_precision_loss, detection_ap_loss,
                                 mean_ap_loss, rank_positives, recall_loss)

FORCED_FRACTION = {'sparse': float('inf'), 'dense': 0.0}
LAYOUTS = ['transposed', 'every_other_column', 'every_other_row', 'expanded']
ROWS, COLS = 240, 4


def in_layout(name, rows, cols, gen):
    """A float32 ``[rows, cols]`` tensor of random scores, laid out as ``name``."""
    if name == 'contiguous':
        return torch.randn(rows, cols, generator=gen)
    if name == 'transposed':
        return torch.randn(cols, rows, generator=gen).t()
    if name == 'every_other_column':
        return torch.randn(rows, 2 * cols, generator=gen)[:, ::2]
    if name == 'every_other_row':
        return torch.randn(2 * rows, cols, generator=gen)[::2]
    if name == 'expanded':  # stride 0 along the short side: each ranking the same scores
        if rows >= cols:
            return torch.randn(rows, 1, generator=gen).expand(rows, cols)
        return torch.randn(1, cols, generator=gen).expand(rows, cols)
    raise ValueError(name)


def relevance(scores, regime, gen):
    """``[n, G]`` bool: most of the top scores (few entries above the lowest positive: the sparse
    regime) or a random few (most entries above the lowest positive: the dense regime)."""
    chosen = torch.rand(scores.shape, generator=gen)
    if regime == 'sparse':
        return (scores >= scores.quantile(0.95)) & (chosen < 0.6)
    return chosen < 0.03


def detection_labels(scores, regime, gen):
    """``[N]`` labels: the best class of most of the top-scoring rows (sparse regime) or a random
    class for a random third of the rows (dense regime); the others background (``C``)."""
    num_classes = scores.shape[1]
    chosen = torch.rand(scores.shape[:1], generator=gen)
    if regime == 'sparse':
        best, label = scores.max(dim=1)
        foreground = (best >= best.quantile(0.92)) & (chosen < 0.6)
    else:
        label = torch.randint(0, num_classes, scores.shape[:1], generator=gen)
        foreground = chosen < 0.3
    return torch.where(foreground, label, torch.full_like(label, num_classes))


def run(fn, scores):
    """Loss and score gradient of ``fn(scores)`` (a non-scalar output is weighted 1, 2, ...)."""
    x = scores.detach().requires_grad_()
    out = fn(x)
    weights = torch.arange(1, out.numel() + 1, dtype=out.dtype).reshape(out.shape)
    (out * weights).sum().backward()
    assert x.grad.shape == x.shape
    return out.detach(), x.grad


def contiguous_copy(scores, loss_type):
    """A copy of ``scores`` that the ranker receives contiguous: a contiguous one, or for
    ``RaMBORecallLoss`` (which ranks ``scores.t()``) a transposed one."""
    if loss_type == 'RaMBORecallLoss':
        return scores.t().contiguous().t()
    return scores.clone(memory_format=torch.contiguous_format)


def assert_ran(solver_paths, regime, case):
    """Some ranking problem was solved, and every one with the ``regime`` strategy."""
    assert solver_paths, f'{case}: nothing was ranked'
    assert all(dense == (regime == 'dense') for dense in solver_paths), \
        f'{case}: {regime} forced, the solvers ran dense={solver_paths}'


def entry_point(name, scores, regime, gen):
    """A function of the scores computing ``name``'s loss on data of ``regime``."""
    if name in ('RaMBOAPLoss', 'detection_ap_loss'):
        labels = detection_labels(scores, regime, gen)
        weights = (torch.rand(labels.shape, generator=gen) > 0.1).float()  # ignored rows too
        if name == 'RaMBOAPLoss':
            return lambda x: MODELS.build(dict(type='RaMBOAPLoss'))(x, labels, weights)
        num_classes = scores.shape[1]
        memory = (torch.randn(num_classes, 30, generator=gen).t(),  # a transposed memory too
                  torch.randint(0, num_classes + 1, (30, ), generator=gen))
        excluded = (weights == 0).nonzero().squeeze(1)
        return lambda x: detection_ap_loss(x, labels, excluded, memory)
    positive = relevance(scores, regime, gen)
    if name == 'RaMBORecallLoss':
        return lambda x: MODELS.build(dict(type='RaMBORecallLoss'))(x, positive)
    if name == 'mean_ap_loss':
        return lambda x: mean_ap_loss(x, positive, 0.5, 0.15)
    if name == 'recall_loss':
        return lambda x: recall_loss(x, positive, 0.5, 0.15)
    if name == 'average_precision_loss':
        return lambda x: average_precision_loss(x, positive, 0.5, 0.15)[0]
    if name == 'rank_positives':
        return lambda x: rank_positives(x, PositiveSet.from_mask(positive), 0.5, 0.15)[0]
    raise ValueError(name)


ENTRY_POINTS = ['RaMBOAPLoss', 'RaMBORecallLoss', 'mean_ap_loss', 'recall_loss',
                'detection_ap_loss', 'average_precision_loss', 'rank_positives']


@pytest.mark.parametrize('name', ENTRY_POINTS)
def test_every_layout_and_strategy_gives_bit_identical_loss_and_gradient(name, solver_paths,
                                                                         monkeypatch):
    """Each layout, in each strategy: loss and gradient equal those of a contiguous copy."""
    # RaMBORecallLoss takes [queries, gallery] (few queries, a long gallery) and transposes it:
    # its contiguous input is the non-contiguous case (and its transposed one the contiguous)
    recall = name == 'RaMBORecallLoss'
    shape = (COLS, ROWS) if recall else (ROWS, COLS)
    for layout in LAYOUTS + (['contiguous'] if recall else []):
        for regime in sorted(FORCED_FRACTION):
            case = f'{name}, {layout} scores, {regime} strategy'
            monkeypatch.setattr(blackbox, 'DENSE_FRACTION', FORCED_FRACTION[regime])
            gen = torch.Generator().manual_seed(zlib.crc32(case.encode()))
            scores = in_layout(layout, *shape, gen)
            ranked = scores.t() if recall else scores  # what the ranker receives
            assert ranked.is_contiguous() == (recall and layout == 'transposed')
            fn = entry_point(name, scores, regime, gen)
            solver_paths.clear()
            loss, grad = run(fn, scores)
            assert_ran(solver_paths, regime, case)
            ref_loss, ref_grad = run(fn, contiguous_copy(scores, name))
            assert torch.equal(loss, ref_loss), case
            assert torch.equal(grad, ref_grad), case
            assert grad.abs().sum() > 0, case  # not vacuous


@pytest.mark.parametrize('loss_type', ['RaMBOAPLoss', 'RaMBORecallLoss'])
def test_memory_of_non_contiguous_batches(loss_type, solver_paths, monkeypatch):
    """Three training steps with the score memory on, in each strategy: non-contiguous batches
    are remembered and ranked exactly like contiguous ones."""
    for regime in sorted(FORCED_FRACTION):
        monkeypatch.setattr(blackbox, 'DENSE_FRACTION', FORCED_FRACTION[regime])
        gen = torch.Generator().manual_seed(7)
        batches = []
        for _ in range(3):
            if loss_type == 'RaMBOAPLoss':
                scores = in_layout('transposed', ROWS, COLS, gen)
                batches.append((scores, detection_labels(scores, regime, gen)))
            else:  # a [Q, M] input that the loss transposes: non-contiguous inside
                scores = in_layout('contiguous', COLS, ROWS, gen)
                batches.append((scores, relevance(scores, regime, gen)))
        cfg = dict(type=loss_type, memory_batches=2)
        losses = {}
        solver_paths.clear()
        for copy in (False, True):
            loss_fn, losses[copy] = MODELS.build(cfg), []
            for scores, targets in batches:
                if copy:
                    scores = contiguous_copy(scores, loss_type)
                losses[copy].append(run(lambda x: loss_fn(x, targets), scores))
        assert len(loss_fn.memory) == 2
        for step, ((loss, grad), (ref_loss, ref_grad)) in enumerate(zip(losses[False],
                                                                          losses[True])):
            assert torch.equal(loss, ref_loss), (regime, step)
            assert torch.equal(grad, ref_grad), (regime, step)
        assert_ran(solver_paths, regime, f'{loss_type} with memory')


def test_issue_reproduction_recall_loss_8_queries_5000_items(solver_paths):
    """The issue's case: ``RaMBORecallLoss()`` with its defaults, 8 queries x 5000 gallery items,
    10 relevant items per query scoring clearly above the rest (the automatic choice: sparse).
    It raised ``view size is not compatible with input tensor's size and stride``."""
    gen = torch.Generator().manual_seed(0)
    queries, gallery = 8, 5000
    scores = torch.randn(queries, gallery, generator=gen)
    relevant = torch.zeros(queries, gallery, dtype=torch.bool)
    for q in range(queries):
        relevant[q, torch.randperm(gallery, generator=gen)[:10]] = True
    scores = torch.where(relevant, scores + 6.0, scores)
    x = scores.clone().requires_grad_()
    loss = MODELS.build(dict(type='RaMBORecallLoss'))(x, relevant)
    loss.backward()
    assert torch.isfinite(loss) and x.grad.shape == x.shape and x.grad.abs().sum() > 0
    assert solver_paths == [False]  # sparse
    # the same ranking fed as a contiguous [gallery, queries] matrix to the functional loss
    y = scores.clone().requires_grad_()
    ref = recall_loss(y.t().contiguous(), relevant.t(), 0.5, 0.15)
    ref.backward()
    assert torch.equal(loss.detach(), ref.detach())
    assert torch.equal(x.grad, y.grad)


def test_contiguous_float32_scores_are_ranked_without_a_copy(monkeypatch):
    """The layout handling costs nothing on the hot path: contiguous float32 scores reach every
    ranking problem as they are (same memory), and so does a contiguous memory block."""
    seen = []
    original = blackbox._Solver.__init__

    def init(self, problem, live, margin):
        seen.append((live.data_ptr(), problem.constant.data_ptr()
                     if problem.constant is not None else None))
        original(self, problem, live, margin)

    monkeypatch.setattr(blackbox._Solver, '__init__', init)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(ROWS, COLS, generator=gen).requires_grad_()
    labels = detection_labels(x.detach(), 'dense', gen)
    memory = (torch.randn(30, COLS, generator=gen), torch.randint(0, COLS + 1, (30, ),
                                                                  generator=gen))
    detection_ap_loss(x, labels, memory=memory).backward()
    assert seen == [(x.data_ptr(), memory[0].data_ptr()), (x.data_ptr(), None)]
