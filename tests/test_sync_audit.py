"""The ranking loss's backward reads nothing on the host: no operator that would make a CUDA
host wait for the device (counted on CPU by :class:`SyncAudit`, a model of
``torch.cuda.set_sync_debug_mode``), in every strategy, gradient mode and input layout; and
``grad_nonnegative``, which makes that possible for the sparse strategy, changes no result."""
from pathlib import Path

import pytest
import torch

from rambo_mmdet.ranking import (GradScale, PositiveSet, blackbox, detection_ranking_loss,
                                 rank_problems, recall_loss, route_output_grad)
from rambo_mmdet.ranking.blackbox import RankingProblem
from rambo_mmdet.ranking import SyncAudit

# ----------------------------------------------------------------------------------------------
# the audit itself: it must see what synchronises, and only that

SYNCHRONISING = {
    'nonzero': lambda x, m: x.nonzero(),
    'bool()': lambda x, m: bool(x.sum() > 0),
    'item': lambda x, m: x.sum().item(),
    'int()': lambda x, m: int(x.argmax()),
    'tolist': lambda x, m: x[:3].tolist(),
    'mask index': lambda x, m: x[m],
    'mask assign': lambda x, m: x.clone().__setitem__(m, 0.0),
    'masked_select': lambda x, m: x.masked_select(m),
    'bincount': lambda x, m: torch.bincount(m.long()),
    'unique': lambda x, m: torch.unique(m.long()),
    'repeat_interleave': lambda x, m: torch.repeat_interleave(m.long()),
    'tensor from host data': lambda x, m: torch.tensor([1.0, 2.0]),
    'where(cond)': lambda x, m: torch.where(m),
}

ASYNC = {
    'index_add_': lambda x, m: torch.zeros(4).index_add_(0, m.long()[:4], x[:4]),
    'masked_fill_': lambda x, m: x.clone().masked_fill_(m, 0.0),
    'where': lambda x, m: torch.where(m, x, 0.0),
    'nonzero_static': lambda x, m: torch.nonzero_static(m, size=5, fill_value=-1),
    'index_fill_': lambda x, m: x.clone().index_fill_(0, torch.arange(3), 0.0),
    'searchsorted': lambda x, m: torch.searchsorted(x.sort().values, x),
    'sort + cumsum': lambda x, m: x.sort().values.cumsum(0),
    'scatter_reduce': lambda x, m: torch.zeros(2).scatter_reduce(0, m.long(), x, 'amin'),
    'full': lambda x, m: torch.full((), 0.5),
    'index_put_ (integer index)': lambda x, m: x.clone().index_put_((torch.arange(2), ),
                                                                   x[:2]),
}


def _operands():
    x = torch.linspace(-1, 1, 10)
    return x, x > 0


@pytest.mark.parametrize('name', sorted(SYNCHRONISING))
def test_audit_sees_each_synchronising_operator(name):
    with SyncAudit() as audit:
        SYNCHRONISING[name](*_operands())
    assert audit.events, f'{name} not seen'


@pytest.mark.parametrize('name', sorted(ASYNC))
def test_audit_leaves_asynchronous_operators_alone(name):
    with SyncAudit() as audit:
        ASYNC[name](*_operands())
    assert not audit.events, audit.summary()


def test_audit_names_operator_and_reason():
    x, m = _operands()
    with SyncAudit() as audit:
        x[m]
        bool(m.any())
    assert audit.counts() == {
        'aten.index.Tensor: boolean-mask indexing (output size)': 1,
        'aten._local_scalar_dense.default: reads a value on the host (.item(), bool(), int(), '
        '.tolist())': 1}
    assert '1 x aten.index.Tensor' in audit.summary()


def test_cpu_keeps_its_shortcut_and_other_devices_run_sync_free(monkeypatch):
    """SYNC_FREE None: the host-read-free backward on every device but the CPU (where a host
    read is free and the pass it saves is not); True / False force it (tests, benchmarks)."""
    problem = RankingProblem(2, PositiveSet.from_mask(torch.eye(3, 2, dtype=torch.bool)))
    for device, forced, expected in [('cpu', None, False), ('meta', None, True),
                                     ('cpu', True, True), ('meta', False, False)]:
        monkeypatch.setattr(blackbox, 'SYNC_FREE', forced)
        live = torch.zeros(3, 2, device=device)
        positives = problem.positives._replace(
            **{k: getattr(problem.positives, k).to(device)
               for k in ('flat_index', 'group', 'group_start', 'group_end')})
        solver = blackbox._Solver(problem._replace(positives=positives), live, 0.0)
        assert solver.sync_free == expected, (device, forced)


# ----------------------------------------------------------------------------------------------
# the losses' backward, as it runs on a GPU


@pytest.fixture(autouse=True)
def gpu_backward(monkeypatch):
    """The backward the ranker runs on every device but the CPU (``SYNC_FREE``)."""
    monkeypatch.setattr(blackbox, 'SYNC_FREE', True)


def _batch(regime, seed, rows=400, classes=6):
    """Detection logits, labels, excluded rows and a memory block. ``init``: every logit near
    the prior (both rankings dense); ``trained``: negatives far below (both sparse)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.full((rows, ), classes, dtype=torch.long)
    pos = torch.randperm(rows, generator=gen)[:rows // 10]
    labels[pos] = torch.randint(0, classes, (pos.numel(), ), generator=gen)
    if regime == 'init':
        logits = torch.randn(rows, classes, generator=gen) * 0.1 - 4.6
    else:
        logits = torch.randn(rows, classes, generator=gen) - 8.0
        logits[pos, labels[pos]] += 9.0
        logits.view(-1)[torch.randperm(rows * classes, generator=gen)[:rows // 5]] += 7.0
    excluded = torch.randperm(rows, generator=gen)[:rows // 20].sort().values
    excluded = excluded[labels[excluded] == classes]
    memory = (logits[:60].clone() + 0.01, labels[:60].clone())
    return logits, labels, excluded, memory


GRADIENTS = dict(paper={}, balanced=dict(balanced_gain=1.0),
                 error_driven=dict(balanced_gain=1.0, error_driven=True))


@pytest.mark.parametrize('regime', ['init', 'trained'])
@pytest.mark.parametrize('gradient', sorted(GRADIENTS))
@pytest.mark.parametrize('with_excluded', [False, True], ids=['all-rows', 'excluded'])
@pytest.mark.parametrize('with_memory', [False, True], ids=['no-memory', 'memory'])
def test_detection_loss_backward_reads_nothing_on_the_host(regime, gradient, with_excluded,
                                                           with_memory, solver_paths):
    logits, labels, excluded, memory = _batch(regime, seed=len(solver_paths))
    x = logits.clone().requires_grad_()
    grad_scale = GradScale()
    loss, _ = detection_ranking_loss(x, labels, excluded if with_excluded else None,
                                     memory if with_memory else None, 0.5, 0.15, 1 / 3,
                                     grad_scale, **GRADIENTS[gradient])
    loss = 2.0 * route_output_grad(loss, grad_scale)
    assert solver_paths == [regime == 'init'] * 2  # both rankings ran the intended strategy
    with SyncAudit() as audit:
        loss.backward()
    assert not audit.events, audit.summary()
    assert (x.grad > 0).any() and (x.grad < 0).any()


def test_recall_loss_backward_reads_nothing_on_the_host():
    logits, labels, _, _ = _batch('trained', 0)
    positive = labels[:, None] == torch.arange(logits.shape[1])
    x = logits.clone().requires_grad_()
    grad_scale = GradScale()
    loss = route_output_grad(recall_loss(x, positive, grad_scale=grad_scale), grad_scale)
    with SyncAudit() as audit:
        loss.backward()
    assert not audit.events, audit.summary()
    assert x.grad.abs().sum() > 0


def _shipped_losses():
    from mmengine.config import Config

    from rambo_mmdet.models.losses import RaMBOAPLoss
    cfg = Config.fromfile(str(Path(__file__).parents[1] / 'configs' / '_base_' /
                              'rambo_losses.py'))
    built = {}
    for name in ('rambo_dense_head_loss', 'rambo_box_head_loss'):
        kwargs = {k: v for k, v in cfg[name].to_dict().items() if k not in ('_delete_', 'type')}
        built[name] = RaMBOAPLoss(**kwargs)
    built['paper'] = RaMBOAPLoss(mode='paper')
    built['rambo_dense_head_loss'].detections_from_head = True
    built['rambo_dense_head_loss'].sampled_rows = False
    built['rambo_box_head_loss'].sampled_rows = True
    return built


@pytest.mark.parametrize('loss_name', ['rambo_dense_head_loss', 'rambo_box_head_loss', 'paper'])
@pytest.mark.parametrize('regime', ['init', 'trained'])
def test_shipped_loss_backward_reads_nothing_on_the_host(loss_name, regime):
    """RaMBOAPLoss as the shipped configs build it (and mode='paper'), in training, with
    ignored rows (label weight 0) and, for those with a score memory, a filled memory."""
    pytest.importorskip('mmdet')
    module = _shipped_losses()[loss_name].train()
    logits, labels, excluded, _ = _batch(regime, 1)
    weights = torch.ones(len(labels))
    weights[excluded] = 0
    for _ in range(2):  # the second call ranks the memory of the first
        x = logits.clone().requires_grad_()
        loss = module(x, labels, weights)
    with SyncAudit() as audit:
        loss.backward()
    assert not audit.events, audit.summary()
    assert x.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------
# grad_nonnegative


def _ranked(scores, positive, upstream, grad_nonnegative):
    x = scores.clone().requires_grad_()
    problem = RankingProblem(scores.shape[1], PositiveSet.from_mask(positive))
    rank, _ = rank_problems(x, [problem], 0.5, 0.0, None, grad_nonnegative)[0]
    (rank * upstream).sum().backward()
    return x.grad


@pytest.mark.parametrize('strategy', ['sparse', 'dense'])
@pytest.mark.parametrize('seed', range(3))
def test_grad_nonnegative_changes_nothing_for_nonnegative_gradients(strategy, seed, monkeypatch,
                                                                    solver_paths):
    """With a nonnegative upstream gradient the flag only skips a check: identical gradients.
    A negative entry counts as 0 (a positive that would move down does not move)."""
    monkeypatch.setattr(blackbox, 'DENSE_FRACTION', 0.0 if strategy == 'dense' else 1.0)
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(300, 3, generator=gen)
    positive = torch.rand(300, 3, generator=gen) < 0.1
    upstream = torch.rand(int(positive.sum()), generator=gen) * 40
    upstream[::3] = 0
    assert torch.equal(_ranked(scores, positive, upstream, True),
                       _ranked(scores, positive, upstream, False))
    signed = upstream - 20
    assert torch.equal(_ranked(scores, positive, signed, True),
                       _ranked(scores, positive, signed.clamp(min=0), False))
    assert not torch.equal(_ranked(scores, positive, signed, True),
                           _ranked(scores, positive, signed, False))
    assert set(solver_paths) == {strategy == 'dense'}


@pytest.mark.parametrize('dtype', [torch.int32, torch.int64])
def test_histogram_counts_like_bincount(dtype):
    from rambo_mmdet.ranking.counting import add_counts, histogram
    index = torch.randint(0, 37, (5000, ), generator=torch.Generator().manual_seed(0))
    expected = torch.bincount(index, minlength=40)
    assert torch.equal(histogram(index, 40, dtype).long(), expected)
    counts = torch.zeros(40, dtype=dtype)
    assert add_counts(counts, index.int(), -2) is counts  # in place
    assert torch.equal(counts.long(), -2 * expected)
    assert torch.equal(add_counts(counts, index, 2).long(), torch.zeros(40, dtype=torch.long))
    assert histogram(index[:0], 3, dtype).tolist() == [0, 0, 0]


def test_score_memory_sorts_and_counts_its_negatives_without_host_reads():
    """The GPU path of the counted memory (SYNC_FREE, as on every device but the CPU): sorting a
    stored batch's negatives and counting them at or above the positives read nothing on the
    host (on the CPU by default numpy does both, where a host read is free)."""
    from rambo_mmdet.ranking import ScoreMemory
    from rambo_mmdet.ranking.counting import count_at_or_above, sort_positives
    gen = torch.Generator().manual_seed(0)
    memory = ScoreMemory(num_batches=3)
    for _ in range(3):
        memory.push(torch.randn(50, 4, generator=gen), torch.randint(0, 5, (50, ), generator=gen))
    positives = PositiveSet.from_flat_index(torch.tensor([1, 6, 11, 40]), 4)
    scores = torch.randn(4, generator=gen)
    with SyncAudit() as audit:
        blocks = memory.sorted_negatives(scores[None].expand(1, 4))
        counts = count_at_or_above(blocks, sort_positives(scores, positives))
    assert not audit.events, audit.summary()
    assert counts.sum() > 0
