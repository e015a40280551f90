"""The dense strategy's cells (:mod:`rambo_mmdet.ranking.counting`): a monotone map of scores to
cells, and the per-cell crossing counts, against brute force; and the dense strategy end to end
at every cell resolution (one cell per group up to one entry per cell), with ties, outliers and
extreme scores, against the argsort and loop oracles."""
import pytest
import torch
from ranking_oracle import oracle_detection_loss, rank_units

import rambo_mmdet.ranking.blackbox as blackbox
import rambo_mmdet.ranking.scratch as scratch
from rambo_mmdet.ranking import detection_ap_loss
from rambo_mmdet.ranking.counting import CellGrid, cell_crossings, cells_above, cells_of

F32_MAX = torch.finfo(torch.float32).max


def _values(seed, n=4000):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(n, generator=gen) * [0.01, 1.0, 100.0][seed % 3] - 4.6
    extra = torch.tensor([-0.0, 0.0, 1e-40, -1e-40, F32_MAX, -F32_MAX, 1e30, -1e30,
                          float('inf'), -float('inf')])
    return torch.cat([values, extra, values[:50]])  # duplicates too


@pytest.mark.parametrize('seed', range(3))
@pytest.mark.parametrize('cells', [2, 16, 1024, 1 << 18])
def test_cells_are_monotone_in_the_score(seed, cells):
    values = _values(seed)
    finite = values[values.isfinite()]
    # a grid over a sub-range too (scores outside it land in the end cells), and over the data
    for low, high in [(float(finite.min()), float(finite.max())), (-4.7, -4.5), (-1e-3, 1e-3)]:
        grid = CellGrid.spanning(low, high, cells, 1)
        cell = cells_of(grid, values[:, None])
        assert cell.dtype == torch.int32 and cell.shape == values.shape
        assert int(cell.min()) >= 0 and int(cell.max()) <= cells - 1
        order = torch.argsort(values, stable=True)
        assert (cell[order].diff() >= 0).all(), 'a higher score got a lower cell'
        assert cells_of(grid, torch.tensor([[-0.0]])) == cells_of(grid, torch.tensor([[0.0]]))
    # a grid over the bulk of the scores spreads them over many cells (not trivially constant)
    bulk = values[:4000]
    grid = CellGrid.spanning(float(bulk.min()), float(bulk.max()), cells, 1)
    assert cells_of(grid, bulk[:, None]).unique().numel() >= min(cells, 64) // 2


def test_cells_of_groups_offsets_and_both_layouts_agree():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 7, generator=gen)
    grid = CellGrid.spanning(-3.0, 3.0, 32, 7)
    cell = cells_of(grid, scores)
    group = torch.arange(7).repeat(50)
    assert torch.equal(cell, cells_of(grid, scores.reshape(-1), group))
    assert torch.equal(cell.view(50, 7) // 32, torch.arange(7).expand(50, 7).int())


def test_degenerate_grids_put_everything_in_one_cell():
    values = torch.tensor([[1.5], [1.5], [1.5]])
    grid = CellGrid.spanning(1.5, 1.5, 64, 1)  # no spread
    assert grid.scale == 0.0 and cells_of(grid, values).tolist() == [0, 0, 0]
    grid = CellGrid.spanning(0.0, 1e-44, 64, 1)  # a denormal span: scale stays finite
    assert grid.scale == 1e30
    cell = cells_of(grid, torch.tensor([[0.0], [1e-44], [1.0]]))
    assert not (cell < 0).any() and (cell.diff() >= 0).all()


def test_cells_above_counts_higher_cells_of_the_same_group():
    counts = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    grid = CellGrid(0.0, 1.0, 4, 2)
    assert cells_above(counts, grid).tolist() == [6, 5, 1, 0, 17, 8, 6, 0]


@pytest.mark.parametrize('seed', range(10))
def test_cell_crossings_equal_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    groups, cells, num = 3, 12, 9
    grid = CellGrid(0.0, 1.0, cells, groups)
    group = torch.randint(0, groups, (num, ), generator=gen)
    before = (group * cells + torch.randint(0, cells, (num, ), generator=gen)).int()
    after = (group * cells + torch.randint(0, cells, (num, ), generator=gen)).int()
    table = cell_crossings(grid, before, after)
    expected = torch.zeros(groups * cells, dtype=torch.int64)
    for k in range(groups * cells):
        for b, a in zip(before.tolist(), after.tolist()):
            if b // cells != k // cells:
                continue
            expected[k] += int(b < k < a) - int(a < k < b)
    assert torch.equal(table, expected)
    assert (table != 0).any() or seed > 5


@pytest.fixture(params=[(1, False), (4, False), (10 ** 9, False), (1, True), (4, True),
                        (10 ** 9, True)],
                ids=['cell-per-entry', 'cells-of-4', 'one-cell', 'cell-per-entry-sync-free',
                     'cells-of-4-sync-free', 'one-cell-sync-free'])
def dense_cells(request, monkeypatch, solver_paths):
    """The dense strategy forced, at a given number of entries per cell (10**9: two cells per
    group, so nearly every entry is placed exactly; 1: nearly none is), with the CPU's backward
    or the GPU's (``SYNC_FREE``: the entries of the positives' new cells found at a size fixed
    in the forward, checked here to hold them all). Every per-score temporary comes from the
    scratch pool (blocks reused, with stale contents, across calls)."""
    entries_per_cell, sync_free = request.param
    monkeypatch.setattr(blackbox, 'DENSE_FRACTION', 0.0)
    monkeypatch.setattr(scratch, 'MIN_BYTES', 0)
    monkeypatch.setattr(blackbox, 'ENTRIES_PER_CELL', entries_per_cell)
    monkeypatch.setattr(blackbox, 'SYNC_FREE', sync_free)
    padded = blackbox._nonzero_padded
    found = []

    def checked(mask, size):
        found.append(int(mask.sum()))
        assert found[-1] <= size, f'{found[-1]} entries in the new cells, room for {size}'
        return padded(mask, size)

    monkeypatch.setattr(blackbox, '_nonzero_padded', checked)
    yield entries_per_cell
    assert solver_paths and all(solver_paths), f'dense not run: {solver_paths}'
    assert bool(found) == sync_free


@pytest.mark.parametrize('seed', range(4))
def test_dense_any_upstream_equals_argsort_reference(seed, dense_cells, ranker_vs_argsort):
    """Upstream gradients of both signs (positives moving up and down across many cells), with
    ties and far outliers among the scores."""
    gen = torch.Generator().manual_seed(seed)
    n, groups = [(600, 3), (300, 1), (200, 9), (900, 2)][seed % 4]
    scores = torch.randn(n, groups, generator=gen)
    if seed % 2:
        scores = (scores * 4).round() / 4  # ties everywhere
    if seed % 4 >= 2:
        scores[0, 0], scores[-1, -1] = 1e30, -1e30  # outliers stretch the cells
    positive = torch.rand(n, groups, generator=gen) < 0.1
    positive[1, 0] = True
    upstream = torch.randn(int(positive.sum()), generator=gen) * [50, 0.5][seed % 2]
    rank, grad, reference, reference_grad = ranker_vs_argsort(scores, positive, upstream, 0.5)
    if seed % 2 == 0:  # tie-free data only: the reference breaks ties by position
        assert torch.allclose(rank, reference, atol=1e-7)
        assert torch.equal(rank_units(grad, n, 0.5), rank_units(reference_grad, n, 0.5))
    assert (grad > 0).any() and (grad < 0).any()


@pytest.mark.parametrize('seed', range(6))
def test_dense_detection_loss_with_exclusions_and_memory_equals_oracle(seed, dense_cells):
    gen = torch.Generator().manual_seed(seed)
    rows, num_classes = 120, 4
    scores = torch.randn(rows, num_classes, generator=gen) * 0.05 - 4.6  # near the prior
    if seed % 3 == 0:
        scores = (scores * 64).round() / 64  # ties
    labels = torch.full((rows, ), num_classes)
    labels[torch.randperm(rows, generator=gen)[:12]] = torch.randint(0, num_classes, (12, ),
                                                                     generator=gen)
    valid = torch.rand(rows, generator=gen) > 0.1
    valid[labels < num_classes] = True
    memory = None
    if seed % 2:
        memory = (torch.randn(30, num_classes, generator=gen) * 0.05 - 4.6,
                  torch.randint(0, num_classes + 1, (30, ), generator=gen))
    lambda_val, margin, beta = [0.5, 4.0][seed % 2], [0.0, 0.01, 0.02][seed % 3], 1 / 3
    x = scores.clone().requires_grad_()
    loss = detection_ap_loss(x, labels, (~valid).nonzero().squeeze(1), memory, lambda_val,
                             margin, beta)
    loss.backward()
    y = scores[valid].clone().requires_grad_()
    ref = oracle_detection_loss(y, labels[valid], memory, lambda_val, margin, beta)
    ref.backward()
    assert float(loss) == pytest.approx(float(ref), abs=1e-6)
    assert torch.equal(x.grad[~valid], torch.zeros_like(x.grad[~valid]))
    assert torch.allclose(x.grad[valid], y.grad, atol=1e-6)
    assert y.grad.abs().sum() > 0
