"""Property-based tests of the ranking core (hypothesis) against the loop oracles of
``ranking_oracle.py``, with the sparse and the dense strategy each forced.

Examples are tiny score matrices drawn from a few values of a 1/8 grid, so ties are everywhere:
among positives, between positives and negatives, ``-0.0`` against ``0.0``, whole columns; with
all-positive and all-negative columns, excluded rows, a constant memory block, margins and λ.
Values, margins, λ and the chosen upstream gradients are multiples of 1/8 or powers of 2, so in
float32 the ranker's ``s - α``, the oracle's ``s ∓ α/2`` and the blackbox perturbation
``y + λ·g`` are all exact: an upstream gradient that lands a perturbed positive on another score
lands it there exactly in both. Every example checks that each ranking problem ran the forced
strategy. The oracles are the paper's loss and gradient (``balanced_gain=None``).

Derandomized (the same examples on every run, no example database) and bounded to a few seconds.
"""
from contextlib import contextmanager

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from ranking_oracle import (LoopBlackboxRanks, loop_ranks_among_positives, oracle_detection_loss,
                            oracle_map_loss, oracle_recall_loss, rank_units)

import rambo_mmdet.ranking.blackbox as blackbox
from rambo_mmdet.ranking import (PositiveSet, RankingProblem, detection_ap_loss, mean_ap_loss,
                                 rank_problems, recall_loss)

FORCED_FRACTION = {'sparse': float('inf'), 'dense': 0.0}
# function-scoped fixtures are fine here: `forced` resets its record at every example
EXAMPLES = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
VALUES = [-0.0] + [k / 8 for k in range(-12, 13)]  # float32-exact, -0.0 beside 0.0
# at most 4 values per example (many ties), often with both zeros (-0.0 must tie with 0.0)
PALETTES = st.tuples(st.lists(st.sampled_from(VALUES), min_size=1, max_size=4),
                     st.booleans()).map(lambda p: p[0] + [-0.0, 0.0] if p[1] else p[0])
LAMBDAS = st.sampled_from([0.25, 0.5, 1.0, 2.0])
MARGINS = st.sampled_from([0.0, 0.125, 0.25, 1.0])
STEPS = st.integers(-32, 32).map(lambda k: k / 8)  # upstream gradients, float32-exact


@pytest.fixture(params=sorted(FORCED_FRACTION))
def forced(request, monkeypatch, solver_paths):
    """Force one strategy; returns a context manager for one example that checks afterwards that
    something was ranked and that every ranking problem ran the forced strategy."""
    monkeypatch.setattr(blackbox, 'DENSE_FRACTION', FORCED_FRACTION[request.param])
    dense = request.param == 'dense'

    @contextmanager
    def example():
        solver_paths.clear()
        yield
        assert solver_paths, 'nothing was ranked'
        assert all(path == dense for path in solver_paths), \
            f'{request.param} forced, the solvers ran dense={solver_paths}'

    return example


def sized_lists(elements, size):
    return st.lists(elements, min_size=size, max_size=size)


@st.composite
def score_blocks(draw, rows, cols, palette):
    """``[rows, cols]`` float32 scores drawn from ``palette``."""
    values = draw(sized_lists(st.sampled_from(palette), rows * cols))
    return torch.tensor(values, dtype=torch.float32).reshape(rows, cols)


@st.composite
def positive_masks(draw, rows, cols):
    """``[rows, cols]`` bool; each column mixed, all positive or all negative."""
    mixed = torch.tensor(draw(sized_lists(st.booleans(), rows * cols)),
                         dtype=torch.bool).reshape(rows, cols)
    kind = torch.tensor(draw(sized_lists(st.integers(0, 2), cols)))
    return torch.where(kind == 0, mixed, kind == 1)


@st.composite
def problems(draw, max_rows=8, max_cols=4, max_memory=0, exclusions=False):
    """Scores ``[n, G]`` drawn from a palette (many ties), their positives, and
    optionally excluded rows (``[n]`` bool, without positives) and a constant block with its
    positives (``None`` when empty)."""
    rows, cols = draw(st.integers(1, max_rows)), draw(st.integers(1, max_cols))
    palette = draw(PALETTES)
    excluded = torch.zeros(rows, dtype=torch.bool)
    if exclusions:
        excluded = torch.tensor(draw(sized_lists(st.booleans(), rows)), dtype=torch.bool)
    positive = draw(positive_masks(rows, cols)) & ~excluded[:, None]
    memory_rows = draw(st.integers(0, max_memory))
    memory = None
    if memory_rows:
        memory = (draw(score_blocks(memory_rows, cols, palette)),
                  draw(positive_masks(memory_rows, cols)))
    return dict(scores=draw(score_blocks(rows, cols, palette)), positive=positive,
                excluded=excluded, memory=memory)


def loss_and_grad(fn, scores, *args):
    x = scores.clone().requires_grad_()
    loss = fn(x, *args)
    loss.backward()
    return loss.detach(), x.grad


@EXAMPLES
@given(problem=problems(max_memory=3, exclusions=True), lambda_val=LAMBDAS, margin=MARGINS,
       data=st.data())
def test_ranks_and_gradient_for_any_upstream_equal_loop_oracle(forced, problem, lambda_val,
                                                               margin, data):
    """One ranking problem with excluded rows and a constant block, any upstream gradient per
    positive: either a free one (both signs: positives move up or down) or the one that lands the
    perturbed positive exactly on another entry of its column (positive or negative). Ranks,
    ranks among positives and the score gradient equal the oracle's on the kept rows followed by
    the constant rows; excluded rows get no gradient."""
    scores, excluded, memory = problem['scores'], problem['excluded'], problem['memory']
    cols = scores.shape[1]
    full = scores[~excluded]  # what is ranked: the kept rows, then the constant ones
    full_pos = problem['positive'][~excluded]
    if memory is not None:
        full, full_pos = torch.cat([full, memory[0]]), torch.cat([full_pos, memory[1]])
    num_pos, length = int(full_pos.sum()), full.shape[0]
    assume(num_pos)  # something to rank

    shift = torch.where(full_pos, -margin / 2, margin / 2)  # the oracle's margin
    shifted = full + shift
    row, col = full_pos.nonzero().unbind(1)  # row-major: the ranker's order of the positives
    land = torch.tensor(data.draw(sized_lists(st.booleans(), num_pos)))
    target = torch.tensor(data.draw(sized_lists(st.integers(0, length - 1), num_pos)))
    free = torch.tensor(data.draw(sized_lists(STEPS, num_pos)), dtype=torch.float32)
    upstream = torch.where(land, (shifted[target, col] - shifted[row, col]) / lambda_val, free)

    flat_index = problem['positive'].reshape(-1).nonzero().squeeze(1)  # live, then constant
    if memory is not None:
        flat_index = torch.cat([flat_index,
                                scores.numel() + memory[1].reshape(-1).nonzero().squeeze(1)])
    ranking = RankingProblem(cols, PositiveSet.from_flat_index(flat_index, cols),
                             excluded.nonzero().squeeze(1) if excluded.any() else None,
                             None if memory is None else memory[0])
    x = scores.clone().requires_grad_()
    with forced():
        [(rank, among)] = rank_problems(x, [ranking], lambda_val, margin)
        (rank * upstream).sum().backward()

    y = full.clone().requires_grad_()
    ref_rank = LoopBlackboxRanks.apply(y + shift, full_pos, lambda_val)[row, col]
    (ref_rank * upstream).sum().backward()
    ref_among = loop_ranks_among_positives(shifted, full_pos)[row, col].float() / length
    assert torch.equal(rank.detach(), ref_rank.detach())
    assert torch.equal(among, ref_among)
    kept = int((~excluded).sum())
    assert torch.equal(rank_units(x.grad[~excluded], length, lambda_val),
                       rank_units(y.grad[:kept], length, lambda_val))
    assert not x.grad[excluded].any()


@EXAMPLES
@given(problem=problems(), lambda_val=LAMBDAS, margin=MARGINS)
def test_mean_ap_loss_and_gradient_equal_loop_oracle(forced, problem, lambda_val, margin):
    """``mean_ap_loss``, with the upstream gradient of the loss itself."""
    scores, positive = problem['scores'], problem['positive']
    assume(positive.any())
    with forced():
        loss, grad = loss_and_grad(mean_ap_loss, scores, positive, lambda_val, margin)
    ref_loss, ref_grad = loss_and_grad(oracle_map_loss, scores, positive, lambda_val, margin)
    n = scores.shape[0]
    assert torch.allclose(loss, ref_loss, atol=1e-6, rtol=0)
    assert torch.equal(rank_units(grad, n, lambda_val), rank_units(ref_grad, n, lambda_val))


@EXAMPLES
@given(problem=problems(), lambda_val=LAMBDAS, margin=MARGINS, log_log=st.booleans())
def test_recall_loss_and_gradient_equal_loop_oracle(forced, problem, lambda_val, margin, log_log):
    """``recall_loss``, ``log(1 + r)`` and ``log(1 + log(1 + r))``."""
    scores, positive = problem['scores'], problem['positive']
    assume(positive.any())
    with forced():
        loss, grad = loss_and_grad(recall_loss, scores, positive, lambda_val, margin, log_log)
    ref_loss, ref_grad = loss_and_grad(oracle_recall_loss, scores, positive, lambda_val, margin,
                                       log_log)
    n = scores.shape[0]
    assert torch.allclose(loss, ref_loss, atol=1e-6, rtol=0)
    assert torch.equal(rank_units(grad, n, lambda_val), rank_units(ref_grad, n, lambda_val))


@st.composite
def detection_batches(draw, max_rows=8, max_classes=4, max_memory=4):
    """Scores ``[N, C]``, labels ``[N]`` (``C``: background), valid rows ``[N]`` and a memory
    ``(scores [M, C], labels [M])`` or None, drawn from a palette (many ties)."""
    rows, classes = draw(st.integers(1, max_rows)), draw(st.integers(1, max_classes))
    palette = draw(PALETTES)
    labels = st.integers(0, classes)
    memory_rows = draw(st.integers(0, max_memory))
    memory = None
    if memory_rows:
        memory = (draw(score_blocks(memory_rows, classes, palette)),
                  torch.tensor(draw(sized_lists(labels, memory_rows))))
    return dict(scores=draw(score_blocks(rows, classes, palette)),
                labels=torch.tensor(draw(sized_lists(labels, rows))),
                valid=torch.tensor(draw(sized_lists(st.booleans(), rows)), dtype=torch.bool),
                memory=memory)


@EXAMPLES
@given(batch=detection_batches(), lambda_val=LAMBDAS, margin=MARGINS,
       beta=st.sampled_from([0.0, 0.25, 0.5, 1.0]))
def test_detection_loss_with_exclusions_and_memory_equals_loop_oracle(forced, batch, lambda_val,
                                                                      margin, beta):
    """``(1 - β) L_mAP + β L_APC`` with ignored rows and a memory equals the oracle on the kept
    rows (and the memory); ignored rows get exactly zero gradient."""
    scores, labels, valid, memory = batch['scores'], batch['labels'], batch['valid'], \
        batch['memory']
    num_classes = scores.shape[1]
    in_memory = memory is not None and beta < 1 and bool((memory[1] < num_classes).any())
    assume(((labels < num_classes) & valid).any() or in_memory)  # something to rank
    excluded = (~valid).nonzero().squeeze(1)
    with forced():
        loss, grad = loss_and_grad(
            lambda x: detection_ap_loss(x, labels, excluded, memory, lambda_val=lambda_val,
                                        margin=margin, interclass_weight=beta,
                                        balanced_gain=None), scores)  # the paper's gradient
    ref_loss, ref_grad = loss_and_grad(oracle_detection_loss, scores[valid], labels[valid],
                                       memory, lambda_val, margin, beta)
    assert torch.allclose(loss, ref_loss, atol=1e-6, rtol=0)
    assert not grad[~valid].any()
    assert torch.allclose(grad[valid], ref_grad, atol=1e-6, rtol=0)
