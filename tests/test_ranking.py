"""The pure-torch ranking core against independent oracles (loops, argsort, sklearn)."""
import pytest
import torch
from ranking_oracle import (LoopBlackboxRanks, loop_ranks, oracle_detection_loss, oracle_map_loss,
                            oracle_recall_loss, rank_units)
from sklearn.metrics import average_precision_score

import rambo_mmdet.ranking.blackbox as blackbox
from rambo_mmdet.ranking import (ArgsortBlackboxRanks, PositiveSet, ScoreMemory, detection_ap_loss,
                                 average_precision_loss, mean_ap_loss, rank_positives,
                                 recall_loss)
from rambo_mmdet.ranking.counting import float_order_keys

# sparse: never dense (the count of entries at or above the floor includes excluded entries,
# so it can exceed the ranking's length: any finite fraction could pick dense); dense: always
STRATEGIES = {'sparse': float('inf'), 'dense': 0.0, 'auto': blackbox.DENSE_FRACTION}


@pytest.fixture(params=sorted(STRATEGIES))
def strategy(request, monkeypatch, solver_paths):
    """Run a test with the sparse path forced, the dense path forced, and the automatic choice;
    afterwards, check that some ranking problem ran and that every one ran the forced path."""
    monkeypatch.setattr(blackbox, 'DENSE_FRACTION', STRATEGIES[request.param])
    yield request.param
    assert solver_paths, 'no ranking problem was solved: the strategy was not exercised'
    if request.param != 'auto':
        forced = request.param == 'dense'
        assert all(dense == forced for dense in solver_paths), \
            f'{request.param} forced, but the solvers ran dense={solver_paths}'


def random_problem(seed, ties=False, max_n=30, max_groups=5, pos_rate=0.3):
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, max_n, (), generator=gen))
    groups = int(torch.randint(1, max_groups, (), generator=gen))
    scores = torch.randn(n, groups, generator=gen)
    if ties:  # many exact ties, between positives and negatives too
        scores = (scores * 2).round() / 2
    positive = torch.rand(n, groups, generator=gen) < pos_rate
    if not positive.any():  # something to rank, so that the forced strategy runs
        positive[0, 0] = True
    return scores, positive


def grads_of(loss_fn, scores, *args):
    x = scores.clone().requires_grad_()
    loss = loss_fn(x, *args)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize('seed', range(60))
def test_map_loss_matches_loop_oracle(seed, strategy):
    scores, positive = random_problem(seed, ties=seed % 3 == 0)
    lambda_val = [0.1, 0.5, 2.0, 10.0][seed % 4]
    margin = [0.0, 0.15, 1.0][seed % 3]
    loss, grad = grads_of(mean_ap_loss, scores, positive, lambda_val, margin)
    ref_loss, ref_grad = grads_of(oracle_map_loss, scores, positive, lambda_val, margin)
    n = scores.shape[0]
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    assert torch.equal(rank_units(grad, n, lambda_val), rank_units(ref_grad, n, lambda_val))


@pytest.mark.parametrize('seed', range(30))
@pytest.mark.parametrize('log_log', [False, True])
def test_recall_loss_matches_loop_oracle(seed, log_log, strategy):
    scores, positive = random_problem(1000 + seed, ties=seed % 2 == 0)
    lambda_val, margin = [0.5, 3.0][seed % 2], [0.0, 0.15, 0.5][seed % 3]
    loss, grad = grads_of(recall_loss, scores, positive, lambda_val, margin, log_log)
    ref_loss, ref_grad = grads_of(oracle_recall_loss, scores, positive, lambda_val, margin,
                                  log_log)
    n = scores.shape[0]
    assert torch.allclose(loss, ref_loss, atol=1e-5)
    assert torch.equal(rank_units(grad, n, lambda_val), rank_units(ref_grad, n, lambda_val))


def argsort_map_loss(scores, positive, lambda_val):
    """The same mAP loss through the paper's argsort(argsort) blackbox ranker (full ranks)."""
    n = scores.shape[0]
    ranks = ArgsortBlackboxRanks.apply(scores, lambda_val)
    among = torch.where(positive, scores, torch.full_like(scores, -float('inf')))
    among_ranks = (torch.argsort(torch.argsort(among, 0, descending=True), 0) + 1).float() / n
    precision = torch.where(positive, among_ranks / ranks, torch.zeros_like(ranks))
    count = positive.sum(0)
    ap = precision.sum(0) / count.clamp(min=1)
    return ((1 - ap) * (count > 0)).sum() / (count > 0).sum().clamp(min=1)


@pytest.mark.parametrize('seed', range(8))
def test_gradients_equal_argsort_reference_exactly(seed, strategy):
    gen = torch.Generator().manual_seed(seed)
    n, groups = [(500, 7), (2000, 3), (300, 1), (1000, 20)][seed % 4]
    scores = torch.randn(n, groups, generator=gen)  # continuous: tie-free
    positive = torch.rand(n, groups, generator=gen) < [0.01, 0.1, 0.3, 0.05][seed % 4]
    if seed % 2:  # 'trained': negatives far below
        scores = torch.where(positive, scores + 1, scores - 1)
    lambda_val = [0.5, 0.1, 2.0, 0.5][seed % 4]
    loss, grad = grads_of(mean_ap_loss, scores, positive, lambda_val, 0.0)
    ref_loss, ref_grad = grads_of(argsort_map_loss, scores, positive, lambda_val)
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    assert torch.equal(rank_units(grad, n, lambda_val), rank_units(ref_grad, n, lambda_val))
    assert grad.abs().sum() > 0  # the comparison is not vacuous


def test_tie_between_positive_and_negative_never_flatters_the_positive(strategy):
    scores = torch.tensor([[2.0], [1.0], [1.0], [0.0]])
    positive = torch.tensor([[False], [True], [False], [True]])
    rank, among = rank_positives(scores, PositiveSet.from_mask(positive), 0.5)
    # the tied negative ranks above the positive at 1.0: rk = 3, not 2
    assert (rank * 4).round().tolist() == [3.0, 4.0]
    assert (among * 4).round().tolist() == [1.0, 2.0]
    assert loop_ranks(scores, positive)[1, 0] == 3
    # positives tied with positives share a rank
    scores = torch.tensor([[1.0], [1.0], [0.5]])
    positive = torch.tensor([[True], [True], [False]])
    rank, among = rank_positives(scores, PositiveSet.from_mask(positive), 0.5)
    assert (rank * 3).round().tolist() == [1.0, 1.0]


def test_dense_backward_positive_perturbed_exactly_onto_a_negative(strategy):
    """A positive whose perturbed score ``y + λ·g`` equals a negative's score exactly (float32)
    now ranks below it (ties never flatter a positive): the negative changes placement. The
    dense backward must find it among the crossed entries (``>= lower``, not ``> lower``)."""
    scores = torch.tensor([[1.0, 0.25], [0.5, 2.0], [0.25, 0.5], [-1.0, -0.5], [0.75, 1.5],
                           [-2.0, 0.0]])
    positive = torch.tensor([[True, False], [False, True], [False, True], [True, False],
                             [False, False], [True, False]])
    positives = PositiveSet.from_mask(positive)
    lambda_val = 0.5
    # upstream gradient per positive, in flat order: (0,0) (1,1) (2,1) (3,0) (5,0)
    upstream = torch.tensor([-1.0, -1.0, 1.5, 0.5, 4.5])
    perturbed = scores.reshape(-1)[positives.flat_index] + lambda_val * upstream
    assert perturbed[0] == scores[1, 0]  # down from 1.0 onto the negative at 0.5 (past 0.75)
    assert perturbed[1] == scores[4, 1]  # down from 2.0 onto the negative at 1.5
    assert perturbed[4] == scores[2, 0]  # up from -2.0 onto the negative at 0.25: no crossing
    x = scores.clone().requires_grad_()
    rank, _ = rank_positives(x, positives, lambda_val)
    (rank * upstream).sum().backward()
    y = scores.clone().requires_grad_()
    ranks = LoopBlackboxRanks.apply(y, positive, lambda_val)
    (ranks.reshape(-1)[positives.flat_index] * upstream).sum().backward()
    n = scores.shape[0]
    assert torch.equal(rank_units(x.grad, n, lambda_val), rank_units(y.grad, n, lambda_val))


def test_automatic_choice_sparse_for_separated_scores_dense_near_init(solver_paths):
    """Trained-like scores (positives well above the negatives) take the sparse path; logits near
    their initial prior (almost every entry above the lowest positive) take the dense path."""
    gen = torch.Generator().manual_seed(0)
    n, num_classes = 3000, 5
    labels = torch.randint(0, num_classes, (n, ), generator=gen)
    labels[torch.rand(n, generator=gen) > 0.05] = num_classes  # 5 % foreground
    positive = labels[:, None] == torch.arange(num_classes)
    noise = torch.randn(n, num_classes, generator=gen)
    separated = torch.where(positive, 3.0 + 0.1 * noise, -3.0 + noise)
    near_init = -4.6 + 0.01 * noise  # sigmoid(-4.6) ~ 0.01: RetinaNet's prior
    for scores, dense in ((separated, False), (near_init, True)):
        solver_paths.clear()
        mean_ap_loss(scores, positive, 0.5, 0.15)
        assert solver_paths == [dense]
        solver_paths.clear()
        detection_ap_loss(scores, labels)  # per-class and interclass rankings
        assert solver_paths == [dense, dense]


@pytest.mark.parametrize('extra', [0, 1])
def test_automatic_choice_threshold(extra, solver_paths):
    """Dense exactly when more than DENSE_FRACTION of the ``n * G`` entries score at or above the
    lowest positive of their group (entries tied with it included)."""
    n, groups = 400, 2
    limit = blackbox.DENSE_FRACTION * n * groups
    assert limit == int(limit) and limit > 10
    scores = torch.full((n, groups), -1.0)
    positive = torch.zeros(n, groups, dtype=torch.bool)
    positive[:2] = True
    scores[0], scores[1] = 0.0, 1.0  # the lowest positive of each group scores 0
    surviving = int(limit) + extra - 4  # negatives at or above it: half tied with it
    negatives = scores[2:].view(-1)  # row-major over both groups
    negatives[:surviving] = torch.tensor([0.0, 0.5]).repeat(surviving)[:surviving]
    rank_positives(scores, PositiveSet.from_mask(positive), 0.5)
    assert solver_paths == [bool(extra)]


def test_negative_zero_equals_positive_zero():
    keys = float_order_keys(torch.tensor([-0.0, 0.0, -1e-30, 1e-30, -float('inf'), 3.0]))
    assert keys[0] == keys[1]
    assert keys[4] < keys[2] < keys[1] < keys[3] < keys[5]


@pytest.mark.parametrize('seed', range(10))
def test_ap_equals_sklearn_on_tie_free_data(seed, strategy):
    gen = torch.Generator().manual_seed(seed)
    n, groups = 200, 4
    scores = torch.randn(n, groups, generator=gen)
    positive = torch.rand(n, groups, generator=gen) < 0.2
    positive[0] = True  # every column has a positive
    loss, _ = average_precision_loss(scores, positive, 0.5, margin=0.0)
    expected = [average_precision_score(positive[:, g].numpy(), scores[:, g].numpy())
                for g in range(groups)]
    assert torch.allclose(1 - loss, torch.tensor(expected, dtype=torch.float32), atol=1e-6)


@pytest.mark.parametrize('seed', range(5))
def test_step_along_negative_gradient_lowers_the_loss(seed):
    """Finite-difference sanity: the piecewise-constant loss goes down along -grad on average."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(400, 6, generator=gen)
    positive = torch.rand(400, 6, generator=gen) < 0.1
    x = scores.clone().requires_grad_()
    loss = mean_ap_loss(x, positive, 0.5, 0.15)
    loss.backward()
    direction = x.grad / x.grad.norm()
    drops = []
    for step in (0.5, 1.0, 2.0, 4.0):
        moved = mean_ap_loss(scores - step * direction, positive, 0.5, 0.15)
        drops.append(float(loss - moved))
    assert sum(drops) / len(drops) > 0
    up = mean_ap_loss(scores + 2.0 * direction, positive, 0.5, 0.15)
    assert up > loss


def test_no_positives_gives_zero_loss_zero_grad_graph_intact(solver_paths):
    x = torch.randn(50, 3, requires_grad=True)
    none = torch.zeros(50, 3, dtype=torch.bool)
    for loss in (mean_ap_loss(x, none), recall_loss(x, none)):
        assert loss.item() == 0.0 and loss.requires_grad
        x.grad = None
        loss.backward()
        assert torch.equal(x.grad, torch.zeros_like(x))
    assert solver_paths == []  # nothing to rank: no solver runs (so no strategy to force)


def test_empty_input_and_single_class():
    x = torch.zeros(0, 4, requires_grad=True)
    loss = mean_ap_loss(x, torch.zeros(0, 4, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    x = torch.tensor([[0.3], [0.9], [-0.2]], requires_grad=True)
    loss = mean_ap_loss(x, torch.tensor([[True], [False], [False]]), 0.5, 0.0)
    assert loss.item() == pytest.approx(0.5)  # the positive ranks 2nd: AP = 1/2


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_non_finite_scores_raise_a_clear_error(bad):
    x = torch.randn(10, 2)
    x[3, 1] = bad
    with pytest.raises(ValueError, match='NaN/Inf'):
        mean_ap_loss(x, torch.rand(10, 2) < 0.5)


def test_malformed_input_raises():
    with pytest.raises(ValueError, match=r'shape \[n, G\]'):
        mean_ap_loss(torch.randn(10), torch.ones(10, dtype=torch.bool))
    with pytest.raises(ValueError, match='positive mask'):
        mean_ap_loss(torch.randn(10, 2), torch.ones(10, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match='lambda_val'):
        mean_ap_loss(torch.randn(10, 2), torch.ones(10, 2, dtype=torch.bool), lambda_val=0)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_input_computes_in_float32(dtype):
    scores, positive = random_problem(7, max_n=200)
    x = scores.to(dtype).requires_grad_()
    loss = mean_ap_loss(x, positive, 0.5, 0.15)
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == dtype
    ref = mean_ap_loss(scores.to(dtype).float(), positive, 0.5, 0.15)
    assert torch.allclose(loss, ref)


def test_large_ranks_do_not_overflow():
    """Rank arithmetic is int64: ranks beyond 2**24 (float32's exact integers) stay exact."""
    n = 2**24 + 10
    scores = torch.zeros(n, 1)
    scores[-1] = -1.0
    positive = torch.zeros(n, 1, dtype=torch.bool)
    positive[-1] = True
    rank, among = rank_positives(scores, PositiveSet.from_mask(positive), 0.5)
    assert among.item() == pytest.approx(1 / n)
    assert rank.item() == 1.0  # the positive is last: rk = n


class TestScoreMemory:

    def test_bounded_detached_and_ordered(self):
        memory = ScoreMemory(num_batches=3, max_rows=5)
        for step in range(5):
            scores = torch.full((8, 2), float(step), requires_grad=True) * 1.0
            labels = torch.tensor([2, 2, 0, 2, 2, 2, 1, 2])
            memory.push(scores, labels)
        assert len(memory) == 3
        stacked, labels = memory.extend(torch.zeros(1, 2), torch.tensor([2]))
        assert stacked.shape == (1 + 3 * 5, 2) and not stacked[1:].requires_grad
        assert stacked[1:, 0].tolist() == [2.0] * 5 + [3.0] * 5 + [4.0] * 5
        # positive rows are always kept when a batch is cut to max_rows
        assert (labels[1:] < 2).sum() == 3 * 2

    @pytest.mark.parametrize('targets', ['labels', 'mask'])
    def test_cut_keeps_positive_rows_then_the_highest_negatives(self, targets):
        """Rows with distinct maxima: the negatives kept are those with the highest max score
        (the only ones that can rank above positives), after every positive row."""
        gen = torch.Generator().manual_seed(0)
        num_rows, num_classes, max_rows = 12, 3, 5
        row_max = torch.randperm(num_rows, generator=gen).float()
        offsets = -torch.rand(num_rows, num_classes, generator=gen) - 0.1
        offsets[torch.arange(num_rows), torch.randint(0, num_classes, (num_rows, ),
                                                      generator=gen)] = 0.0
        scores = row_max[:, None] + offsets  # row r's maximum is row_max[r]
        labels = torch.full((num_rows, ), num_classes)
        positive_rows = row_max.argsort()[:2]  # the two lowest-scoring rows are positives
        labels[positive_rows] = torch.tensor([0, 2])
        negative_rows = (labels == num_classes).nonzero().squeeze(1)
        highest = negative_rows[row_max[negative_rows].argsort(descending=True)[:3]]
        expected = torch.cat([positive_rows, highest]).sort().values
        memory = ScoreMemory(num_batches=1, max_rows=max_rows)
        stored_targets = labels if targets == 'labels' else \
            labels[:, None] == torch.arange(num_classes)
        memory.push(scores, stored_targets)
        kept_scores, kept_targets = memory.contents(scores)
        assert torch.equal(kept_scores, scores[expected])
        assert torch.equal(kept_targets, stored_targets[expected])

    def test_keeps_no_graph_alive(self):
        memory = ScoreMemory(num_batches=2)
        x = torch.randn(4, 3, requires_grad=True)
        memory.push(x * 2, torch.tensor([0, 1, 3, 3]))
        stored = memory.extend(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))[0]
        assert stored.grad_fn is None and not stored.requires_grad

    def test_moves_with_module(self):
        memory = ScoreMemory(num_batches=2)
        memory.push(torch.randn(4, 3), torch.tensor([0, 1, 3, 3]))
        memory.to(torch.float64)  # dtype casts leave the float32 memory as it is
        memory.to('cpu')
        assert memory._batches[0][0].dtype == torch.float32

    def test_class_count_change_resets(self):
        memory = ScoreMemory(num_batches=4)
        memory.push(torch.randn(4, 3), torch.tensor([0, 1, 3, 3]))
        memory.push(torch.randn(4, 5), torch.tensor([0, 1, 5, 5]))
        assert len(memory) == 1


@pytest.mark.parametrize('seed', range(6))
def test_any_upstream_gradient_matches_argsort_reference(seed, strategy, ranker_vs_argsort):
    """The ranker alone, with upstream gradients of both signs (positives moving down too)."""
    gen = torch.Generator().manual_seed(seed)
    n, groups = 400, 3
    scores = torch.randn(n, groups, generator=gen)
    positive = torch.rand(n, groups, generator=gen) < 0.1
    upstream = torch.randn(int(positive.sum()), generator=gen) * 50
    _, grad, _, reference_grad = ranker_vs_argsort(scores, positive, upstream, 0.5)
    assert torch.equal(rank_units(grad, n, 0.5), rank_units(reference_grad, n, 0.5))
    assert (grad > 0).any() and (grad < 0).any()


@pytest.mark.parametrize('seed', range(24))
def test_detection_loss_with_exclusions_and_memory_matches_oracle(seed, strategy):
    """Ignored rows and a constant memory block, inside the ranker, equal the oracle on the kept
    rows concatenated with the memory; excluded rows get exactly zero gradient."""
    gen = torch.Generator().manual_seed(seed)
    rows, num_classes = int(torch.randint(2, 16, (), generator=gen)), 3
    scores = torch.randn(rows, num_classes, generator=gen)
    if seed % 3 == 0:
        scores = (scores * 2).round() / 2  # ties
    labels = torch.randint(0, num_classes + 1, (rows, ), generator=gen)
    valid = torch.rand(rows, generator=gen) > 0.3
    memory = None
    if seed % 2:
        memory = (torch.randn(6, num_classes, generator=gen),
                  torch.randint(0, num_classes + 1, (6, ), generator=gen))
    lambda_val, margin = [0.5, 4.0, 0.1][seed % 3], [0.15, 0.0][seed % 2]
    beta = [1 / 3, 0.0, 1.0, 0.5][seed % 4]
    ranked_memory = memory is not None and beta < 1 and bool((memory[1] < num_classes).any())
    if not ((labels < num_classes) & valid).any() and not ranked_memory:
        # nothing to rank (tested in test_no_positives_...): give the forced strategy some work
        labels[0], valid[0] = 0, True

    x = scores.clone().requires_grad_()
    excluded = (~valid).nonzero().squeeze(1)
    loss = detection_ap_loss(x, labels, excluded, memory, lambda_val, margin, beta)
    loss.backward()
    y = scores[valid].clone().requires_grad_()
    ref = oracle_detection_loss(y, labels[valid], memory, lambda_val, margin, beta)
    if torch.is_tensor(ref) and ref.requires_grad:
        ref.backward()
    assert float(loss) == pytest.approx(float(ref), abs=1e-6)
    assert torch.equal(x.grad[~valid], torch.zeros_like(x.grad[~valid]))
    if y.grad is not None:
        assert torch.allclose(x.grad[valid], y.grad, atol=1e-6)
    else:
        assert torch.equal(x.grad, torch.zeros_like(x.grad))


# ----------------------------------------------------------------------------------------------
# the memory's negatives, sorted once and counted (ScoreMemory.sorted_negatives)


@pytest.mark.parametrize('on_host', [False, True])
@pytest.mark.parametrize('seed', range(8))
def test_count_at_or_above_matches_brute_force(seed, on_host):
    """Counts of sorted negatives at or above each positive, against a direct count: ties
    (negatives tied with a positive count), -0.0 against +0.0, the blocks' own positives left
    out, several blocks of different lengths."""
    from rambo_mmdet.ranking.counting import (PositiveSet, count_at_or_above, sort_negatives,
                                              sort_positives)
    gen = torch.Generator().manual_seed(seed)
    groups = int(torch.randint(1, 5, (), generator=gen))
    blocks, masks = [], []
    for rows in torch.randint(1, 12, (3, ), generator=gen).tolist():
        block = (torch.randn(rows, groups, generator=gen) * 2).round() / 2
        block[block == 0] = -0.0 if seed % 2 else 0.0
        blocks.append(block)
        masks.append(torch.rand(rows, groups, generator=gen) < 0.3)
    sorted_blocks = [sort_negatives(b, m, on_host) for b, m in zip(blocks, masks)]
    queries = (torch.randn(20, groups, generator=gen) * 2).round() / 2
    positives = PositiveSet.from_mask(torch.rand(20, groups, generator=gen) < 0.5)
    pos_scores = queries.reshape(-1)[positives.flat_index]
    counts = count_at_or_above(sorted_blocks, sort_positives(pos_scores, positives), on_host)
    expected = [sum(int(((b[:, g] >= s) & ~m[:, g]).sum()) for b, m in zip(blocks, masks))
                for s, g in zip(pos_scores.tolist(), positives.group.tolist())]
    assert counts.tolist() == expected
    assert any(expected), 'nothing counted: the test would pass with zero counts'


def _memory_problem(seed, rows=40, num_classes=4, batches=3):
    """A batch and a filled ScoreMemory (ties, ignored rows)."""
    gen = torch.Generator().manual_seed(seed)
    memory = ScoreMemory(num_batches=batches)
    for _ in range(batches):
        stored = (torch.randn(rows, num_classes, generator=gen) * 2).round() / 2
        memory.push(stored, torch.randint(0, num_classes + 1, (rows, ), generator=gen),
                    torch.rand(rows, generator=gen) > 0.2)
    scores = (torch.randn(rows, num_classes, generator=gen) * 2).round() / 2
    labels = torch.randint(0, num_classes + 1, (rows, ), generator=gen)
    excluded = (torch.rand(rows, generator=gen) < 0.2).nonzero().squeeze(1)
    return scores, labels, excluded, memory


_MEMORY_MODES = {
    'paper': dict(margin=0.15),
    'balanced': dict(margin=0.15, balanced_gain=1.0),
    'error_driven': dict(margin=0.0, balanced_gain=1.0, error_driven=True),
}


@pytest.mark.parametrize('sync_free', [False, True])
@pytest.mark.parametrize('mode', sorted(_MEMORY_MODES))
@pytest.mark.parametrize('seed', range(4))
def test_counted_memory_negatives_change_nothing(seed, mode, sync_free, strategy, monkeypatch):
    """Ranking the memory with its negatives counted (sorted once) gives bit-identically the
    loss and gradient of placing them on every call, in both strategies, with and without host
    reads (numpy's search on the CPU, torch's elsewhere)."""
    from rambo_mmdet.ranking import detection_ranking_loss
    monkeypatch.setattr(blackbox, 'SYNC_FREE', sync_free)
    scores, labels, excluded, memory = _memory_problem(seed)
    results = []
    for negatives in (None, memory.sorted_negatives(scores)):
        x = scores.clone().requires_grad_()
        # a large λ: the perturbations cross entries (a zero gradient would prove nothing)
        loss = detection_ranking_loss(x, labels, excluded, memory.contents(scores), 20.0,
                                      memory_negatives=negatives, **_MEMORY_MODES[mode]).loss
        loss.backward()
        results.append((loss.detach(), x.grad))
    (loss, grad), (counted_loss, counted_grad) = results
    assert torch.equal(loss, counted_loss) and torch.equal(grad, counted_grad)
    assert grad.abs().sum() > 0


def test_sorted_negatives_are_sorted_once_and_never_rewritten():
    """Each stored batch is sorted at its first use only; a graph built before a push still
    backpropagates exactly as it would have without the push (nothing it holds is rewritten)."""
    from rambo_mmdet.ranking import detection_ranking_loss
    scores, labels, excluded, memory = _memory_problem(0)
    first = memory.sorted_negatives(scores)
    assert [b.keys.data_ptr() for b in memory.sorted_negatives(scores)] == \
        [b.keys.data_ptr() for b in first]

    def grad_of(push_before_backward):
        x = scores.clone().requires_grad_()
        loss = detection_ranking_loss(x, labels, excluded, memory.contents(scores), 0.5,
                                      memory_negatives=memory.sorted_negatives(scores)).loss
        if push_before_backward:
            kept = [b.keys.clone() for b in first]
            memory.push(scores * 3, labels)
            memory.sorted_negatives(scores)
            assert all(torch.equal(k, b.keys) for k, b in zip(kept, first))
        loss.backward()
        return x.grad

    expected = grad_of(False)
    assert torch.equal(grad_of(True), expected)


def test_sorted_negatives_of_a_relevance_memory_leave_its_positives_out():
    """A memory of ``[m, C]`` bool targets: the marked entries are positives, not counted."""
    from rambo_mmdet.ranking.counting import PositiveSet, count_at_or_above, sort_positives
    memory = ScoreMemory(num_batches=1)
    stored = torch.tensor([[3.0, 1.0], [2.0, 0.0]])
    memory.push(stored, torch.tensor([[True, False], [False, False]]))
    positives = PositiveSet.from_flat_index(torch.tensor([0, 1]), 2)  # scores 1.5 and -1
    sorted_pos = sort_positives(torch.tensor([1.5, -1.0]), positives)
    counts = count_at_or_above(memory.sorted_negatives(stored), sorted_pos)
    assert counts.tolist() == [1, 2]  # class 0: only 2.0 (3.0 is a positive); class 1: both


def test_count_at_or_above_without_blocks_counts_nothing():
    from rambo_mmdet.ranking.counting import PositiveSet, count_at_or_above, sort_positives
    positives = PositiveSet.from_flat_index(torch.tensor([0, 3]), 2)
    counts = count_at_or_above([], sort_positives(torch.tensor([0.5, -1.0]), positives))
    assert counts.tolist() == [0, 0] and counts.dtype == torch.int64
