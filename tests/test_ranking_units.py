"""Contracts of the ranking core's building blocks, each against an independent statement of it.

Fast, in-process tests (added with the mutation run, ``make mutation``, to kill mutants the
end-to-end oracles of ``test_ranking.py`` / ``test_properties.py`` cannot see):

* :mod:`rambo_mmdet.ranking.distributed` on a simulated process group: ``W`` threads, each one
  rank, whose ``all_gather`` is a real rendezvous (a barrier) that exchanges the tensors the
  ranks actually sent and, like the real backends, refuses blocks of different shapes or dtypes
  and (like backends without bool support) bool tensors. The expected result is the plain
  concatenation of every rank's input. The 2-process gloo test (``test_distributed.py``) checks
  the same helpers with real processes, but takes a minute.
* the documented defaults and argument checks of the losses, :class:`ScoreMemory` (bounds,
  device moves on the ``meta`` device, which needs no GPU), :class:`GradScale` /
  :func:`route_output_grad`, :meth:`PositiveSet.from_labels` and :func:`argsort_ranks`;
* the balanced gradient (``RankingProblem.balanced_weight``) against its definition on top of
  the loop oracle's paper gradient (ties, exclusions, a remembered block; both strategies), and
  in ``detection_ap_loss`` (each term's weight, the ``balanced_below`` switch);
* devices: nothing is allocated on the default device instead of the inputs' one.
"""
import re
import threading

import pytest
import torch
from ranking_oracle import (loop_ranks, loop_ranks_among_positives, oracle_detection_loss,
                            oracle_map_loss, rank_units)

import rambo_mmdet.ranking.distributed as distributed
from rambo_mmdet.ranking.counting import contains
from rambo_mmdet.ranking import (GradScale, PositiveSet, RankingProblem, ScoreMemory,
                                 argsort_ranks, average_precision_loss, check_scores,
                                 detection_ap_loss,
                                 mean_ap_loss,
                                 rank_problems, recall_loss, route_output_grad)


class ThreadGroup:
    """A stand-in for ``torch.distributed`` in which each of ``world_size`` threads is a rank.

    A process group is a tuple of ranks (``None``: the world); ``all_gather`` rendezvouses the
    ranks of the group it is given, and only those.
    """

    def __init__(self, world_size):
        self.world_size = world_size
        self.local = threading.local()
        self.calls = 0
        self.lock = threading.Lock()
        self.rendezvous = {}  # group ranks -> (barrier, slots)

    def _ranks(self, group):
        return tuple(range(self.world_size)) if group is None else tuple(group)

    # the part of the torch.distributed API the helpers use
    def is_available(self):
        return True

    def is_initialized(self):
        return True

    def get_world_size(self, group=None):
        return len(self._ranks(group))

    def get_rank(self, group=None):
        return self._ranks(group).index(self.local.rank)

    def all_gather(self, out, tensor, group=None):
        ranks = self._ranks(group)
        assert self.local.rank in ranks, 'all_gather on a group this rank is not in'
        assert len(out) == len(ranks), 'one output block per rank of the group'
        if tensor.dtype == torch.bool:
            raise TypeError('this backend has no bool all_gather')
        with self.lock:
            self.calls += 1
            barrier, slots = self.rendezvous.setdefault(
                ranks, (threading.Barrier(len(ranks), timeout=20), [None] * len(ranks)))
        slots[ranks.index(self.local.rank)] = tensor.clone()
        barrier.wait()
        blocks = list(slots)
        barrier.wait()  # everyone has read before anyone sends again
        for block in blocks:
            if block.shape != tensor.shape or block.dtype != tensor.dtype:
                raise RuntimeError(f'all_gather: blocks differ: {block.shape} {block.dtype} vs '
                                   f'{tensor.shape} {tensor.dtype}')
        for target, block in zip(out, blocks):
            assert target.shape == block.shape and target.dtype == block.dtype
            target.copy_(block)

    def run(self, fn):
        """``[fn(rank) for rank in range(W)]``, each call on its own thread (rank)."""
        results, errors = [None] * self.world_size, []

        def worker(rank):
            self.local.rank = rank
            try:
                results[rank] = fn(rank)
            except BaseException as error:  # noqa: B902 - reported below
                errors.append((rank, error))
                with self.lock:
                    for barrier, _ in self.rendezvous.values():
                        barrier.abort()

        threads = [threading.Thread(target=worker, args=(r, )) for r in range(self.world_size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0][1]
        return results


@pytest.fixture
def group(monkeypatch):
    def make(world_size):
        fake = ThreadGroup(world_size)
        monkeypatch.setattr(distributed, 'dist', fake)
        return fake

    return make


def rank_rows(rank, sizes, tail=(2, ), dtype=torch.float32):
    """Rows of one rank: distinct values (rank-major), ``[sizes[rank], *tail]``."""
    numel = int(torch.tensor(tail).prod()) if tail else 1
    start = sum(sizes[:rank]) * numel
    values = torch.arange(start, start + sizes[rank] * numel) + 1
    return values.view(sizes[rank], *tail).to(dtype)


@pytest.mark.parametrize('sizes', [[3, 1], [0, 4], [2, 0, 5], [1, 1, 1], [0, 0]])
@pytest.mark.parametrize('known_sizes', [False, True])
def test_gather_rows_concatenates_every_rank_in_rank_order(group, sizes, known_sizes):
    fake = group(len(sizes))
    expected = torch.cat([rank_rows(r, sizes) for r in range(len(sizes))])

    def gather(rank):
        x = rank_rows(rank, sizes).requires_grad_()
        return x, distributed.gather_rows(x, sizes if known_sizes else None)

    for rank, (x, (rows, local)) in enumerate(fake.run(gather)):
        assert torch.equal(rows, expected)
        assert rows.dtype == torch.float32 and not rows.requires_grad
        assert local == slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))
        assert torch.equal(rows[local], x.detach())
    # collectives: the row counts (unless given), then the rows (unless every rank is empty)
    assert fake.calls == len(sizes) * ((not known_sizes) + (max(sizes) > 0))


@pytest.mark.parametrize('sizes', [[2, 3], [0, 3], [3, 0]])
def test_gather_rows_bool_and_3d(group, sizes):
    fake = group(len(sizes))
    flags = [torch.tensor([True, False, True])[:n] for n in sizes]
    flags = [f if r % 2 else ~f for r, f in enumerate(flags)]
    cubes = [rank_rows(r, sizes, tail=(2, 3), dtype=torch.int64) for r in range(len(sizes))]

    def gather(rank):
        return distributed.gather_rows(flags[rank]), distributed.gather_rows(cubes[rank])

    for rank, ((bools, local_b), (rows3d, local_3d)) in enumerate(fake.run(gather)):
        assert bools.dtype == torch.bool and torch.equal(bools, torch.cat(flags))
        assert rows3d.dtype == torch.int64 and torch.equal(rows3d, torch.cat(cubes))
        assert local_b == local_3d == slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))


def test_gather_rows_sizes_that_do_not_match_raise(group):
    fake = group(2)
    # fewer sizes than ranks
    with pytest.raises(ValueError, match='do not match world size 2'):
        fake.run(lambda rank: distributed.gather_rows(torch.zeros(2, 1), sizes=[2]))
    # this rank's own count wrong (checked before any collective, so no rank waits)
    fake = group(2)
    with pytest.raises(ValueError, match='the 2 local rows of rank 1'):
        fake.run(lambda rank: distributed.gather_rows(torch.zeros(2, 1), sizes=[2, 3]))


@pytest.mark.parametrize('world_size', [2, 3])
def test_all_gather_ints_and_rank_queries(group, world_size):
    fake = group(world_size)

    def query(rank):
        return (distributed.all_gather_ints([rank, 10 * rank + 1], torch.device('cpu')),
                distributed.get_rank_and_world_size(), distributed.is_distributed(),
                distributed.resolve_global_batch('auto'), distributed.resolve_global_batch(True),
                distributed.resolve_global_batch(False),
                # a group of this rank alone: not distributed, rank 0 of 1
                distributed.is_distributed([rank]), distributed.get_rank_and_world_size([rank]))

    for rank, (ints, rank_world, is_dist, auto, forced_on, forced_off, alone_dist,
               alone) in enumerate(fake.run(query)):
        assert ints.dtype == torch.int64 and torch.equal(
            ints, torch.tensor([[r, 10 * r + 1] for r in range(world_size)]))
        assert rank_world == (rank, world_size)
        assert is_dist is True and auto is True and forced_on is True and forced_off is False
        assert alone_dist is False and alone == (0, 1)


def test_collectives_stay_inside_the_given_group(group):
    """4 ranks in two groups, (0, 1) and (2, 3): each gathers its own group's rows only."""
    fake = group(4)
    sizes = [2, 1, 0, 3]
    rows = [rank_rows(r, sizes) for r in range(4)]

    def gather(rank):
        pair = (0, 1) if rank < 2 else (2, 3)
        return (pair, distributed.gather_rows(rows[rank], group=pair),
                distributed.all_gather_ints([rank], torch.device('cpu'), group=pair),
                distributed.get_rank_and_world_size(pair), distributed.is_distributed(pair))

    for rank, (pair, (got, local), ints, rank_world, is_dist) in enumerate(fake.run(gather)):
        assert torch.equal(got, torch.cat([rows[r] for r in pair]))
        first = sizes[pair[0]]
        assert local == (slice(0, first) if rank == pair[0] else
                         slice(first, first + sizes[rank]))
        assert torch.equal(ints, torch.tensor([[pair[0]], [pair[1]]]))
        assert rank_world == (pair.index(rank), 2) and is_dist is True


def test_a_group_of_one_rank_communicates_nothing(group):
    fake = group(2)
    out = fake.run(lambda rank: (distributed.gather_rows(rank_rows(rank, [2, 3]), group=(rank, )),
                                 distributed.all_gather_ints([rank], torch.device('cpu'),
                                                             group=(rank, ))))
    for rank, ((rows, local), ints) in enumerate(out):
        assert torch.equal(rows, rank_rows(rank, [2, 3])) and local == slice(0, [2, 3][rank])
        assert torch.equal(ints, torch.tensor([[rank]]))
    assert fake.calls == 0


def test_gather_rows_allocates_on_the_input_device(group):
    """Every buffer follows the input tensor's device, never the default device (here 'meta'
    while the rows are on the CPU): what NCCL needs, CUDA rows in CUDA buffers."""
    fake = group(2)
    sizes = [1, 3]
    expected = torch.cat([rank_rows(r, sizes) for r in range(2)])

    def gather(rank):
        rows = rank_rows(rank, sizes)
        with torch.device('meta'):
            return distributed.gather_rows(rows)

    for rows, _ in fake.run(gather):
        assert rows.device.type == 'cpu' and torch.equal(rows, expected)


def test_all_gather_ints_on_the_requested_device():
    # 'meta' stands for a second device: the result is allocated there, not on the CPU
    ints = distributed.all_gather_ints([3, 4], torch.device('meta'))
    assert ints.device.type == 'meta' and ints.dtype == torch.int64 and ints.shape == (1, 2)


def test_single_process_behaviour(group):
    # no process group: local values, and nothing is communicated
    assert distributed.get_rank_and_world_size() == (0, 1)
    assert distributed.is_distributed() is False
    assert distributed.resolve_global_batch('auto') is False
    assert distributed.resolve_global_batch(True) is False  # the local batch is the global one
    assert torch.equal(distributed.all_gather_ints([4, 5], torch.device('cpu')),
                       torch.tensor([[4, 5]]))
    x = torch.ones(3, 2, requires_grad=True)
    rows, local = distributed.gather_rows(x)
    assert torch.equal(rows, x.detach()) and not rows.requires_grad and local == slice(0, 3)
    for bad in ['yes', None, 1]:
        with pytest.raises(ValueError, match="global_batch must be 'auto', True or False"):
            distributed.resolve_global_batch(bad)
    # a process group of one rank is not distributed either
    fake = group(1)
    assert fake.run(lambda rank: (distributed.is_distributed(),
                                  distributed.get_rank_and_world_size(),
                                  distributed.gather_rows(torch.ones(2, 1))[1])) == [
        (False, (0, 1), slice(0, 2))]
    assert fake.calls == 0


# ----------------------------------------------------------------------------------------------
# losses: documented defaults and input checks


def problem(seed=0, n=40, groups=3):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, groups, generator=gen)
    positive = torch.rand(n, groups, generator=gen) < 0.3
    positive[0] = True
    return scores, positive


def loss_and_grad(fn, scores, *args, **kwargs):
    x = scores.clone().requires_grad_()
    loss = fn(x, *args, **kwargs)
    loss.sum().backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize('fn, explicit', [
    (mean_ap_loss, dict(lambda_val=0.5, margin=0.0)),
    (lambda s, p, **kw: average_precision_loss(s, p, **kw)[0], dict(lambda_val=0.5, margin=0.0)),
    (recall_loss, dict(lambda_val=0.5, margin=0.0, log_log=False)),
])
def test_loss_defaults_are_the_documented_ones(fn, explicit):
    """README: λ = 0.5, margin 0 (and plain log for the recall loss) unless given. Each default
    changes the value or the gradient on this problem (checked against other settings)."""
    scores, positive = problem()
    loss, grad = loss_and_grad(fn, scores, positive)
    ref_loss, ref_grad = loss_and_grad(fn, scores, positive, **explicit)
    assert torch.equal(loss, ref_loss) and torch.equal(grad, ref_grad)
    for key, other in dict(lambda_val=1.5, margin=1.0, log_log=True).items():
        if key in explicit:
            changed = loss_and_grad(fn, scores, positive, **{**explicit, key: other})
            assert not (torch.equal(changed[0], loss) and torch.equal(changed[1], grad)), key


def test_positive_set_must_match_the_scores():
    scores, positive = problem(groups=3)
    positives = PositiveSet.from_mask(positive)
    # the same positives as a mask or as a PositiveSet: the same loss
    assert torch.equal(mean_ap_loss(scores, positives), mean_ap_loss(scores, positive))
    with pytest.raises(ValueError, match='the positives describe 3 rankings, the scores 2'):
        mean_ap_loss(scores[:, :2], positives)


@pytest.mark.parametrize('bad, described', [
    (lambda p: p.float(), 'torch.float32 (40, 3)'),          # right shape, wrong dtype
    (lambda p: p[:, :2], 'torch.bool (40, 2)'),               # wrong shape
    (lambda p: p.tolist(), 'list ()'),                        # not a tensor
])
def test_bad_positive_masks_are_described(bad, described):
    scores, positive = problem()
    with pytest.raises(ValueError, match=re.escape(
            f'positive mask must be a bool tensor of shape (40, 3), got {described}')):
        mean_ap_loss(scores, bad(positive))


# ----------------------------------------------------------------------------------------------
# GradScale / route_output_grad


def ranked_loss(x, positive, grad_scale=None):
    problem_ = RankingProblem(x.shape[1], PositiveSet.from_mask(positive))
    (rank, among), = rank_problems(x, [problem_], 0.5, 0.0, grad_scale)
    return 1 - (among / rank).mean()


def test_an_unwritten_grad_scale_scales_by_one():
    scores, positive = problem(1)
    x = scores.clone().requires_grad_()
    ranked_loss(x, positive).backward()
    y = scores.clone().requires_grad_()
    ranked_loss(y, positive, GradScale()).backward()  # value never written: factor 1
    assert x.grad.abs().sum() > 0 and torch.equal(y.grad, x.grad)


def test_route_output_grad_multiplies_the_outside_factor():
    scores, positive = problem(2)
    x = scores.clone().requires_grad_()
    ranked_loss(x, positive).backward()
    grad_scale = GradScale()
    y = scores.clone().requires_grad_()
    routed = route_output_grad(ranked_loss(y, positive, grad_scale), grad_scale, factor=3.0)
    (2.0 * routed).backward()  # the outside weight 2 and the factor 3 scale the gradient, not λ
    assert torch.allclose(y.grad, 6.0 * x.grad, rtol=1e-6, atol=0)
    assert grad_scale.value.item() == 6.0


# ----------------------------------------------------------------------------------------------
# ScoreMemory


def labelled_batch(rows, num_classes=3, value=0.0):
    scores = torch.full((rows, num_classes), value)
    labels = torch.full((rows, ), num_classes)
    labels[0] = 0
    return scores, labels


def test_memory_defaults_tau_7_and_4096_rows():
    memory = ScoreMemory()
    for step in range(9):
        memory.push(*labelled_batch(2, value=float(step)))
    assert len(memory) == 7
    assert memory.contents(torch.zeros(1, 3))[0][:, 0].unique().tolist() == list(range(2, 9))
    memory = ScoreMemory(num_batches=1)
    memory.push(*labelled_batch(5000))
    assert memory.contents(torch.zeros(1, 3))[0].shape == (4096, 3)


def test_memory_of_one_batch_and_one_row():
    memory = ScoreMemory(num_batches=1, max_rows=1)
    for step in range(3):
        memory.push(*labelled_batch(4, value=float(step)))
    scores, labels = memory.contents(torch.zeros(1, 3))
    assert len(memory) == 1 and scores.tolist() == [[2.0] * 3] and labels.tolist() == [0]


@pytest.mark.parametrize('num_batches, max_rows', [(-1, 5), (3, 0), (-1, 0)])
def test_memory_bounds_are_checked(num_batches, max_rows):
    with pytest.raises(ValueError, match=f'ScoreMemory needs num_batches >= 0 and max_rows >= 1, '
                                         f'got {num_batches}, {max_rows}'):
        ScoreMemory(num_batches, max_rows)


def test_memory_moves_between_devices_and_keeps_its_bound():
    """``module.to(device)`` moves the stored rows (``meta``: a second device without a GPU),
    keeps them float32, keeps τ; ``contents`` returns them on the device it is asked for."""
    memory = ScoreMemory(num_batches=2)
    memory.push(*labelled_batch(3, value=1.0))
    memory.to('meta')
    assert all(s.device.type == 'meta' and t.device.type == 'meta' and s.dtype == torch.float32
               for s, t in memory._batches)
    for step in range(3):
        memory.push(*labelled_batch(3, value=float(step)))
    assert len(memory) == 2  # still bounded after the move
    memory.to('cpu')
    scores, labels = memory.contents(torch.zeros(1, 3, device='meta'))
    assert scores.device.type == 'meta' and labels.device.type == 'meta'
    scores, labels = memory.contents(torch.zeros(1, 3))
    assert scores.device.type == 'cpu' and scores[:, 0].tolist() == [1.0] * 3 + [2.0] * 3


# ----------------------------------------------------------------------------------------------
# PositiveSet.from_labels, argsort_ranks


@pytest.mark.parametrize('flatten', [False, True])
def test_positive_set_from_labels_equals_the_one_hot_mask(flatten):
    labels = torch.tensor([3, 0, 2, 3, 2, 1, 3])  # C = 3: label 3 is background
    one_hot = labels[:, None] == torch.arange(3)
    mask = one_hot.reshape(-1, 1) if flatten else one_hot
    got = PositiveSet.from_labels(labels, 3, flatten=True) if flatten else \
        PositiveSet.from_labels(labels, 3)  # default: one ranking per class
    expected = PositiveSet.from_mask(mask)
    for field in ('flat_index', 'group', 'group_start', 'group_end'):
        assert torch.equal(getattr(got, field), getattr(expected, field)), field
    assert got.max_count == expected.max_count == (4 if flatten else 2)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_argsort_ranks_in_the_scores_dtype(dtype):
    scores = torch.tensor([[0.1, 5.0], [0.7, -1.0], [0.3, 2.0]], dtype=dtype)
    ranks = argsort_ranks(scores)
    assert ranks.dtype == dtype
    assert torch.equal(ranks, torch.tensor([[3, 1], [1, 3], [2, 2]], dtype=dtype) / 3)


# ----------------------------------------------------------------------------------------------
# The balanced gradient (RankingProblem.balanced_weight) against its definition, written on top
# of the loop oracle's paper gradient: the same entries, each group's paper rank changes times
# one factor, share_g / max(gained_g, P_g) per unit of rank, share_g = w (1 - AP_g) / K.


def balanced_oracle(scores, positive, excluded, constant, lambda_val, margin, weight, scale=1.0):
    """Expected gradient of ``scale * (1 - mean_g AP_g)`` (groups with positives) w.r.t. the live
    scores (``scale`` sets the blackbox perturbation, not the balanced gradient's size)."""
    live_rows = (~excluded).nonzero().squeeze(1)
    ranked = scores[live_rows]
    ranked_pos = positive[live_rows]
    if constant is not None:
        ranked = torch.cat([ranked, constant[0]])
        ranked_pos = torch.cat([ranked_pos, constant[1]])
    n, groups = ranked.shape
    x = ranked.clone().requires_grad_()
    (scale * oracle_map_loss(x, ranked_pos, lambda_val, margin)).backward()
    delta = rank_units(x.grad, n, lambda_val)  # rank_after - rank, integers, every entry
    shifted = ranked + torch.where(ranked_pos, -margin / 2, margin / 2)
    precision = loop_ranks_among_positives(shifted, ranked_pos).double() \
        / loop_ranks(shifted, ranked_pos).double()
    count = ranked_pos.sum(0)
    ap = torch.where(ranked_pos, precision, 0).sum(0) / count.clamp(min=1)
    share = weight * (1 - ap) / (count > 0).sum()
    gained = -torch.where(ranked_pos, delta, 0).sum(0).double()
    unit = torch.where(gained > 0, share / torch.maximum(gained, count.double()).clamp(min=1), 0)
    expected = torch.zeros(scores.shape, dtype=torch.float64)
    expected[live_rows] = (delta.double() * unit)[:live_rows.numel()]
    return expected


def balanced_problem(seed):
    gen = torch.Generator().manual_seed(seed)
    rows, groups = int(torch.randint(2, 9, (), generator=gen)), int(torch.randint(1, 4, (),
                                                                                 generator=gen))
    palette = torch.randint(-8, 9, (4, ), generator=gen).float() / 8  # few values: many ties
    pick = lambda *shape: palette[torch.randint(0, 4, shape, generator=gen)]  # noqa: E731
    scores = pick(rows, groups)
    positive = torch.rand(rows, groups, generator=gen) < 0.4
    positive[0, 0] = True
    excluded = torch.zeros(rows, dtype=torch.bool)
    if seed % 3 == 1:
        excluded[-1] = True
        positive[-1] = False
    constant = None
    if seed % 3 == 2:  # a remembered block with its positives
        memory_rows = int(torch.randint(1, 4, (), generator=gen))
        constant = (pick(memory_rows, groups), torch.rand(memory_rows, groups, generator=gen) < 0.4)
    return scores, positive, excluded, constant


@pytest.mark.parametrize('forced', ['sparse', 'dense'])
@pytest.mark.parametrize('seed', range(24))
def test_balanced_gradient_equals_its_definition(seed, forced, monkeypatch, solver_paths):
    import rambo_mmdet.ranking.blackbox as blackbox

    monkeypatch.setattr(blackbox, 'DENSE_FRACTION', 0.0 if forced == 'dense' else float('inf'))
    scores, positive, excluded, constant = balanced_problem(seed)
    lambda_val = [0.25, 0.5, 2.0][seed % 3]
    margin = [0.0, 0.25][seed % 2]
    weight = [10.0, 1.0][seed % 2]
    groups = scores.shape[1]
    flat = positive.reshape(-1).nonzero().squeeze(1)
    if constant is not None:
        flat = torch.cat([flat, scores.numel() + constant[1].reshape(-1).nonzero().squeeze(1)])
    positives = PositiveSet.from_flat_index(flat, groups)
    problem_ = RankingProblem(groups, positives, excluded.nonzero().squeeze(1) if excluded.any()
                              else None, None if constant is None else constant[0], weight)
    x = scores.clone().requires_grad_()
    (rank, among), = rank_problems(x, [problem_], lambda_val, margin)
    count = (positives.group_end - positives.group_start)
    ap = torch.zeros(groups).index_add(0, positives.group, among / rank) / count.clamp(min=1)
    (1 - ap)[count > 0].mean().backward()
    expected = balanced_oracle(scores, positive, excluded, constant, lambda_val, margin, weight)
    assert solver_paths == [forced == 'dense']
    assert torch.allclose(x.grad.double(), expected, rtol=1e-5, atol=1e-7), (x.grad, expected)


@pytest.mark.parametrize('seed', range(4))
def test_contains_equals_membership(seed):
    gen = torch.Generator().manual_seed(seed)
    sorted_index = torch.randperm(30, generator=gen)[:seed * 4].sort().values
    index = torch.randint(0, 32, (25, ), generator=gen)
    got = contains(sorted_index, index)
    assert got.dtype == torch.bool and got.shape == index.shape
    assert got.tolist() == [i in set(sorted_index.tolist()) for i in index.tolist()]


# ----------------------------------------------------------------------------------------------
# detection_ap_loss: defaults and the balanced/paper switch (balanced_below)


def test_detection_loss_defaults_are_the_documented_ones():
    """λ 0.5, α 0.15, β 1/3 unless given (each changes the value or the gradient here)."""
    scores, positive = problem(3, n=30, groups=4)
    labels = torch.where(positive[:, 0], torch.arange(30) % 4, 4)
    loss, grad = loss_and_grad(detection_ap_loss, scores, labels)
    explicit = dict(lambda_val=0.5, margin=0.15, interclass_weight=1 / 3)
    assert all(torch.equal(a, b) for a, b in zip(
        (loss, grad), loss_and_grad(detection_ap_loss, scores, labels, **explicit)))
    for key, other in dict(lambda_val=1.5, margin=1.15, interclass_weight=0.5).items():
        changed = loss_and_grad(detection_ap_loss, scores, labels, **{**explicit, key: other})
        assert not (torch.equal(changed[0], loss) and torch.equal(changed[1], grad)), key


def switch_case(live_rows, excluded, memory_rows, live_pos, memory_pos, seed=0):
    """Scores ``[live_rows + excluded, 2]`` (the excluded rows last, labelled foreground: they
    must not count), ``live_pos`` positive rows among the valid ones, and a memory of
    ``memory_rows`` rows of which ``memory_pos`` are positive."""
    gen = torch.Generator().manual_seed(seed)
    rows = live_rows + excluded
    scores = torch.randn(rows, 2, generator=gen) * 0.01  # close: perturbations cross entries
    labels = torch.full((rows, ), 2)
    labels[:live_pos] = torch.arange(live_pos) % 2
    labels[live_rows:] = 0  # excluded: foreground labels, left out all the same
    excluded_rows = torch.arange(live_rows, rows) if excluded else None
    memory = None
    if memory_rows:
        memory_labels = torch.full((memory_rows, ), 2)
        memory_labels[:memory_pos] = 1
        memory = (torch.randn(memory_rows, 2, generator=gen) * 0.01, memory_labels)
    return scores, labels, excluded_rows, memory


@pytest.mark.parametrize('below', [0.25, 0.5])
@pytest.mark.parametrize('excluded', [0, 2])
@pytest.mark.parametrize('memory_rows', [0, 3])
def test_balanced_below_counts_valid_and_memory_rows(below, excluded, memory_rows):
    """The switch of ``balanced_below``: the paper's gradient exactly when the positives (valid
    rows and memory) are at least ``below`` times the ranked rows (valid rows plus memory rows),
    else the balanced one, swept across the threshold."""
    live_rows = 8
    for live_pos in range(1, 6):
        for memory_pos in range(min(memory_rows, 2) + 1):
            case = switch_case(live_rows, excluded, memory_rows, live_pos, memory_pos)
            kwargs = dict(excluded_rows=case[2], memory=case[3], margin=0.0)
            auto = loss_and_grad(detection_ap_loss, *case[:2], balanced_gain=10.0,
                                 balanced_below=below, **kwargs)[1]
            balanced = loss_and_grad(detection_ap_loss, *case[:2], balanced_gain=10.0,
                                     **kwargs)[1]
            paper = loss_and_grad(detection_ap_loss, *case[:2], **kwargs)[1]
            assert not torch.allclose(balanced, paper)
            use_paper = live_pos + memory_pos >= below * (live_rows + memory_rows)
            assert torch.equal(auto, paper if use_paper else balanced), \
                (live_pos, memory_pos, use_paper)


@pytest.mark.parametrize('seed', range(8))
def test_detection_balanced_gradient_is_each_terms_balanced_gradient(seed):
    """``balanced_gain=g``: the class rankings get the balanced gradient of weight g (1 - β) and
    the flattened ranking that of weight g β (each from the loop oracle, perturbed by its own
    term's upstream gradient), with memory rows and excluded rows."""
    gen = torch.Generator().manual_seed(seed)
    rows, classes = 7, 3
    scores = (torch.randn(rows, classes, generator=gen) * 2).round() / 8  # ties
    labels = torch.randint(0, classes + 1, (rows, ), generator=gen)
    labels[0] = seed % classes
    excluded = torch.zeros(rows, dtype=torch.bool)
    excluded[-1] = seed % 2 == 1
    memory = None
    if seed % 4 >= 2:
        memory = ((torch.randn(3, classes, generator=gen) * 2).round() / 8,
                  torch.tensor([classes, 1, classes]))
    beta, gain, lambda_val, margin = [1 / 3, 0.5][seed % 2], 10.0, [0.5, 2.0][seed % 3 > 0], 0.0
    x = scores.clone().requires_grad_()
    detection_ap_loss(x, labels, excluded.nonzero().squeeze(1) if excluded.any() else None,
                      memory, lambda_val, margin, beta, balanced_gain=gain).backward()
    one_hot = lambda lab: lab[:, None] == torch.arange(classes)  # noqa: E731
    positive = one_hot(labels) & ~excluded[:, None]
    constant = None if memory is None else (memory[0], one_hot(memory[1]))
    expected = balanced_oracle(scores, positive, excluded, constant, lambda_val, margin,
                               gain * (1 - beta), scale=1 - beta)
    expected += balanced_oracle(scores.reshape(-1, 1), positive.reshape(-1, 1),
                                excluded.repeat_interleave(classes), None, lambda_val, margin,
                                gain * beta, scale=beta).reshape(rows, classes)
    assert expected.abs().sum() > 0
    assert torch.allclose(x.grad.double(), expected, rtol=1e-5, atol=1e-7), (x.grad, expected)


# ----------------------------------------------------------------------------------------------
# Devices: every tensor the core allocates follows its inputs' device, never the default one
# (on a GPU machine: CUDA scores, CUDA buffers). Checked without a GPU by making 'meta' the
# default device while the inputs live on the CPU: an allocation without an explicit device
# would land on 'meta' and fail (or return 'meta' tensors).


@pytest.mark.parametrize('forced', ['sparse', 'dense'])
def test_core_allocates_on_the_inputs_device(forced, monkeypatch):
    import rambo_mmdet.ranking.blackbox as blackbox

    monkeypatch.setattr(blackbox, 'DENSE_FRACTION', 0.0 if forced == 'dense' else float('inf'))
    gen = torch.Generator().manual_seed(0)
    scores = (torch.randn(40, 4, generator=gen) * 4).round() / 8
    labels = torch.randint(0, 5, (40, ), generator=gen)
    memory = ((torch.randn(6, 4, generator=gen) * 4).round() / 8, torch.tensor([4, 1, 4, 2, 4, 4]))
    excluded = torch.tensor([3, 7])
    positive = scores > 0.3
    calls = [
        lambda x: detection_ap_loss(x, labels, excluded, memory),
        lambda x: detection_ap_loss(x, labels, excluded, memory, balanced_gain=10.0),
        lambda x: mean_ap_loss(x, positive, 0.5, 0.25),
        lambda x: recall_loss(x, positive, 0.5, 0.25),
    ]
    for call in calls:
        expected = loss_and_grad(call, scores)
        with torch.device('meta'):
            got = loss_and_grad(call, scores)
        assert all(t.device.type == 'cpu' for t in got)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    memory_ = ScoreMemory(num_batches=2, max_rows=4)
    with torch.device('meta'):
        memory_.push(scores, labels)
        stored, stored_labels = memory_.contents(scores)
    assert stored.device.type == 'cpu' and stored.shape == (4, 4)
    assert (stored_labels < 4).sum() == min(4, int((labels < 4).sum()))


# ----------------------------------------------------------------------------------------------
# check_scores


def test_check_scores_names_the_input_and_refuses_non_float():
    with pytest.raises(ValueError, match=r'^scores must have shape \[n, G\]'):
        check_scores(torch.zeros(3))
    with pytest.raises(ValueError, match=r'^logits must be a floating-point tensor, got Tensor '
                                         r'torch\.int64'):
        check_scores(torch.zeros(3, 2, dtype=torch.int64), 'logits')
    with pytest.raises(ValueError, match=r'^scores must be a floating-point tensor, got list $'):
        check_scores([[0.5, 1.0]])
    check_scores(torch.zeros(3, 2, dtype=torch.float16))  # any floating dtype is fine
    scores = torch.zeros(10, 2)
    scores[4, 1] = float('nan')
    with pytest.raises(ValueError, match=r'^scores contains 1 NaN/Inf value\(s\)'):
        check_scores(scores)


class _Ctx:
    """A bare autograd context, to call the Function's forward and backward directly."""

    def mark_non_differentiable(self, *tensors):
        pass


@pytest.mark.parametrize('forced', ['sparse', 'dense'])
@pytest.mark.parametrize('balanced', [False, True])
def test_blackbox_backward_allocates_on_the_inputs_device(forced, balanced, monkeypatch):
    """The same for the backward, called directly: autograd runs a backward without the
    default-device mode of the forward, so ``loss.backward()`` alone would not notice."""
    import rambo_mmdet.ranking.blackbox as blackbox

    monkeypatch.setattr(blackbox, 'DENSE_FRACTION', 0.0 if forced == 'dense' else float('inf'))
    scores, positive = problem(4, n=30, groups=3)
    scores = (scores * 4).round() / 8
    flat = positive.reshape(-1).nonzero().squeeze(1)
    memory = (scores[:4] + 0.125, torch.tensor([[True, False, False]] * 4))
    flat = torch.cat([flat, scores.numel() + memory[1].reshape(-1).nonzero().squeeze(1)])
    problems = [RankingProblem(3, PositiveSet.from_flat_index(flat, 3), torch.tensor([2, 5]),
                               memory[0], 10.0 if balanced else None),
                RankingProblem(1, PositiveSet.from_flat_index(positive.reshape(-1).nonzero()
                                                              .squeeze(1), 1))]
    grad_scale = GradScale()
    grad_scale.value = torch.tensor(2.0)

    def run():
        ctx = _Ctx()
        outputs = blackbox.BlackboxPositiveRanks.forward(ctx, scores, problems, 0.5, 0.25,
                                                         grad_scale)
        upstream = [torch.full_like(o, 3.0) for o in outputs]
        return blackbox.BlackboxPositiveRanks.backward(ctx, *upstream)[0]

    expected = run()
    with torch.device('meta'):
        got = run()
    assert expected.abs().sum() > 0
    assert got.device.type == 'cpu' and torch.equal(got, expected)


def test_results_do_not_depend_on_the_default_dtype():
    """float32 scores rank and get float32 gradients whatever ``torch.get_default_dtype()``:
    no buffer is created in the default dtype and then mixed with float32 ones."""
    scores, positive = problem(5, n=30, groups=3)
    scores = (scores * 4).round() / 8
    labels = torch.where(positive[:, 0], torch.arange(30) % 3, 3)
    memory = (scores[:5] + 0.125, torch.tensor([0, 3, 1, 3, 3]))
    calls = [lambda x: detection_ap_loss(x, labels, torch.tensor([4]), memory),
             lambda x: detection_ap_loss(x, labels, torch.tensor([4]), memory, balanced_gain=10.0),
             lambda x: mean_ap_loss(x, positive, 0.5, 0.25),
             lambda x: recall_loss(x, positive, 0.5, 0.25)]
    expected = [loss_and_grad(call, scores) for call in calls]
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = [loss_and_grad(call, scores) for call in calls]
    finally:
        torch.set_default_dtype(default)
    for (loss, grad), (ref_loss, ref_grad) in zip(got, expected):
        assert loss.dtype == grad.dtype == torch.float32
        assert torch.equal(loss, ref_loss) and torch.equal(grad, ref_grad)


# ----------------------------------------------------------------------------------------------
# rank_problems: default margin, argument checks, single use of the backward


def test_rank_problems_default_margin_is_zero_and_checked():
    scores, positive = problem(6)
    problems = [RankingProblem(3, PositiveSet.from_mask(positive))]
    for (rank, among), (ref_rank, ref_among) in zip(rank_problems(scores, problems, 0.5),
                                                    rank_problems(scores, problems, 0.5, 0.0)):
        assert torch.equal(rank, ref_rank) and torch.equal(among, ref_among)
    assert not torch.equal(rank_problems(scores, problems, 0.5, 1.0)[0][0], ref_rank)
    with pytest.raises(ValueError, match=r'^margin must be >= 0, got -0\.1$'):
        rank_problems(scores, problems, 0.5, -0.1)
    with pytest.raises(ValueError, match=r'^lambda_val must be > 0, got 0$'):
        rank_problems(scores, problems, 0)


def test_a_second_backward_through_the_ranker_raises():
    """The blackbox backward frees its state: backpropagating twice through the same graph
    (``retain_graph=True``) must fail loudly, never return a silent zero gradient."""
    scores, positive = problem(7)
    x = scores.clone().requires_grad_()
    loss = mean_ap_loss(x, positive, 0.5, 0.0)
    loss.backward(retain_graph=True)
    assert x.grad.abs().sum() > 0
    with pytest.raises(Exception):
        loss.backward()


@pytest.mark.parametrize('rows', [0, 1])
def test_tiny_batches_ranked_with_a_memory_equal_the_oracle(rows):
    """A batch of 0 or 1 rows (one class) ranked with remembered rows: the memory block is read
    where the batch ends, whatever the batch's size."""
    scores = torch.tensor([[0.25]])[:rows]
    labels = torch.tensor([0])[:rows]
    memory = (torch.tensor([[0.5], [0.0], [0.375]]), torch.tensor([1, 0, 1]))
    x = scores.clone().requires_grad_()
    loss = detection_ap_loss(x, labels, None, memory, 0.5, 0.0, 1 / 3)
    loss.backward()
    y = scores.clone().requires_grad_()
    expected = oracle_detection_loss(y, labels, memory, 0.5, 0.0, 1 / 3)
    assert torch.allclose(loss, expected.float(), atol=1e-6)
    if rows:
        expected.backward()
        assert torch.allclose(x.grad, y.grad.float(), atol=1e-6)


@pytest.mark.parametrize('forced', ['sparse', 'dense'])
def test_a_non_contiguous_constant_block_ranks_like_a_contiguous_one(forced, monkeypatch):
    import rambo_mmdet.ranking.blackbox as blackbox

    monkeypatch.setattr(blackbox, 'DENSE_FRACTION', 0.0 if forced == 'dense' else float('inf'))
    scores, positive = problem(8, n=12, groups=3)
    block = torch.tensor([[0.3, -1.0, 2.0, 0.1], [0.0, 0.5, -0.2, 1.5], [1.0, 0.2, 0.4, -0.3]])
    constant = block.t()  # [4, 3], not contiguous
    assert not constant.is_contiguous()
    flat = torch.cat([positive.reshape(-1).nonzero().squeeze(1),
                      scores.numel() + torch.tensor([0, 4, 8])])  # a remembered positive per group
    results = []
    for const in (constant, constant.contiguous()):
        x = scores.clone().requires_grad_()
        problems = [RankingProblem(3, PositiveSet.from_flat_index(flat, 3), None, const)]
        (rank, among), = rank_problems(x, problems, 0.5, 0.0)
        (1 - among / rank).sum().backward()
        results.append((rank.detach(), x.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_positive_set_without_positives():
    empty = PositiveSet.from_mask(torch.zeros(5, 3, dtype=torch.bool))
    assert empty.max_count == 0 and empty.flat_index.numel() == 0
    assert empty.group_start.tolist() == empty.group_end.tolist() == [0, 0, 0]


def _trained_detection_batch(seed, n=160, classes=5):
    """Logits of a trained detector (negatives far below, a few hard ones near the positives),
    labels, and excluded rows: both rankings of detection_ap_loss run sparse."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.full((n, ), classes, dtype=torch.long)
    rows = torch.randperm(n, generator=gen)[:n // 12]
    labels[rows] = torch.randint(0, classes, (rows.numel(), ), generator=gen)
    logits = torch.randn(n, classes, generator=gen) - 6.0
    logits[rows, labels[rows]] += 6.5
    hard = torch.randperm(n * classes, generator=gen)[:n // 4]
    logits.view(-1)[hard] += 5.5
    excluded = torch.randperm(n, generator=gen)[:9].sort().values
    return logits, labels, excluded


@pytest.mark.parametrize('seed', range(2))
def test_sparse_problems_filter_the_scores_once(seed, monkeypatch, solver_paths):
    """The per-class and the interclass ranking (both sparse) take their candidates from one
    filtered list (the lowest floor's), with exactly the results of each filtering all scores,
    and of a list that holds every entry (any superset of the candidates must do)."""
    from rambo_mmdet.ranking import blackbox, detection_ap_loss

    logits, labels, excluded = _trained_detection_batch(seed)

    def run():
        x = logits.clone().requires_grad_()
        loss = detection_ap_loss(x, labels, excluded, None, 0.5, 0.15, 1 / 3)
        loss.backward()
        return loss.detach(), x.grad

    filtered = []
    index = blackbox._SharedCandidates.index

    def spy(self):
        filtered.append(self.floor)
        return index(self)

    monkeypatch.setattr(blackbox._SharedCandidates, 'index', spy)
    shared = run()
    assert solver_paths == [False, False]
    assert len(filtered) == 2  # asked by both problems (computed once, cached)
    monkeypatch.setattr(blackbox._SharedCandidates, 'index',
                        lambda self: torch.arange(self.live.numel()))
    everything = run()
    # no sharing: each problem filters all scores itself
    monkeypatch.setattr(blackbox.BlackboxPositiveRanks, 'forward',
                        staticmethod(_forward_without_sharing))
    alone = run()
    for other in (everything, alone):
        assert torch.equal(shared[0], other[0]) and torch.equal(shared[1], other[1])
    kept = torch.ones(len(labels), dtype=torch.bool)
    kept[excluded] = False
    oracle = oracle_detection_loss(logits[kept], labels[kept], None, 0.5, 0.15, 1 / 3)
    assert float(shared[0]) == pytest.approx(float(oracle), abs=1e-6)


def _forward_without_sharing(ctx, live, problems, lambda_val, margin, grad_scale=None,
                            grad_nonnegative=False):
    """BlackboxPositiveRanks.forward with every problem filtering all scores itself."""
    from rambo_mmdet.ranking import blackbox
    live = live.contiguous()
    ctx.solvers = [blackbox._Solver(problem, live, margin) for problem in problems]
    ctx.lambda_val, ctx.shape, ctx.grad_scale = lambda_val, live.shape, grad_scale
    ctx.grad_nonnegative = grad_nonnegative
    outputs = []
    blackbox._select_strategies(ctx.solvers)
    for solver in ctx.solvers:
        rank, rank_among = solver.forward(None)
        outputs += [rank.to(live.dtype) / solver.length,
                    rank_among.to(live.dtype) / solver.length]
    ctx.mark_non_differentiable(*outputs[1::2])
    return tuple(outputs)


# ----------------------------------------------------------------------------------------------
# error_driven: each positive gets its own share of its ranking's loss


def error_driven_oracle(scores, positive, excluded, constant, margin, weight):
    """``-w (1 - precision_i) / (K P_g)`` for each live positive, ``precision_i = rk+ / rk``
    from the loop ranks (positives lowered by the margin); 0 elsewhere."""
    live_rows = (~excluded).nonzero().squeeze(1)
    ranked, ranked_pos = scores[live_rows], positive[live_rows]
    if constant is not None:
        ranked = torch.cat([ranked, constant[0]])
        ranked_pos = torch.cat([ranked_pos, constant[1]])
    shifted = ranked.double() - margin * ranked_pos.double()
    precision = (loop_ranks_among_positives(shifted, ranked_pos).double()
                 / loop_ranks(shifted, ranked_pos).double())
    count = ranked_pos.sum(0)
    num_with = int((count > 0).sum())
    share = -weight * (1 - precision) / (num_with * count.clamp(min=1))
    expected = torch.zeros_like(scores, dtype=torch.float64)
    live_positive = ranked_pos[:live_rows.numel()]
    expected[live_rows] = torch.where(live_positive, share[:live_rows.numel()], 0.0)
    return expected


@pytest.mark.parametrize('forced', ['sparse', 'dense'])
@pytest.mark.parametrize('seed', range(12))
def test_error_driven_positives_get_their_share_and_negatives_are_unchanged(
        seed, forced, monkeypatch, solver_paths):
    """``error_driven``: each live positive's gradient is ``-w (1 - precision_i) / (K P_g)``
    (loop oracle), the negatives' gradient is the balanced one (its definition, above), with
    ties, margins, excluded rows and constant rows; without a balanced weight it changes
    nothing."""
    import rambo_mmdet.ranking.blackbox as blackbox

    monkeypatch.setattr(blackbox, 'DENSE_FRACTION', 0.0 if forced == 'dense' else float('inf'))
    scores, positive, excluded, constant = balanced_problem(seed)
    lambda_val, margin, weight = [0.25, 0.5, 2.0][seed % 3], [0.0, 0.25][seed % 2], \
        [10.0, 1.0][seed % 2]
    groups = scores.shape[1]
    flat = positive.reshape(-1).nonzero().squeeze(1)
    if constant is not None:
        flat = torch.cat([flat, scores.numel() + constant[1].reshape(-1).nonzero().squeeze(1)])
    positives = PositiveSet.from_flat_index(flat, groups)

    def grad_of(balanced_weight, error_driven):
        problem_ = RankingProblem(groups, positives, excluded.nonzero().squeeze(1)
                                  if excluded.any() else None,
                                  None if constant is None else constant[0], balanced_weight,
                                  error_driven)
        x = scores.clone().requires_grad_()
        (rank, among), = rank_problems(x, [problem_], lambda_val, margin)
        count = (positives.group_end - positives.group_start)
        ap = torch.zeros(groups).index_add(0, positives.group, among / rank) \
            / count.clamp(min=1)
        (1 - ap)[count > 0].mean().backward()
        return x.grad.double()

    got = grad_of(weight, True)
    live_positive = positive & ~excluded[:, None]
    expected = error_driven_oracle(scores, positive & ~excluded[:, None], excluded, constant,
                                   margin, weight)
    # (seeds 1, 4, 6, 7, 9: every positive on top, all zero: the sum below is what changes)
    assert torch.allclose(got[live_positive], expected[live_positive], rtol=1e-5, atol=1e-7)
    crossings = balanced_oracle(scores, positive, excluded, constant, lambda_val, margin, weight)
    assert torch.allclose(got[~live_positive], crossings[~live_positive], rtol=1e-5, atol=1e-7)
    assert torch.equal(grad_of(None, True), grad_of(None, False))
