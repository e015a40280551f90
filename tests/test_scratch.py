"""The ranker's pool of reusable CPU blocks (:mod:`rambo_mmdet.ranking.scratch`): what it hands
out and keeps, and that ranking through pooled blocks (reused, with stale contents, by calls
whose graphs are alive at the same time) gives exactly the results of fresh allocations."""
import threading

import pytest
import torch

import rambo_mmdet.ranking.blackbox as blackbox
import rambo_mmdet.ranking.scratch as scratch
from rambo_mmdet.ranking import detection_ap_loss
from rambo_mmdet.ranking.scratch import ScratchPool, release_scratch, scratch_pool


@pytest.fixture
def pooled_dense(monkeypatch):
    """Dense strategy forced; every per-score temporary pooled; the pool starts empty."""
    monkeypatch.setattr(blackbox, 'DENSE_FRACTION', 0.0)
    monkeypatch.setattr(scratch, 'MIN_BYTES', 0)
    release_scratch()
    yield
    release_scratch()


def test_take_reuses_given_blocks_best_fit(monkeypatch):
    monkeypatch.setattr(scratch, 'MIN_BYTES', 0)
    pool, owner = ScratchPool(), []
    a = pool.take(1000, torch.float32, torch.device('cpu'), owner)
    b = pool.take(10, torch.int32, torch.device('cpu'), owner)
    assert a.shape == (1000, ) and a.dtype == torch.float32
    assert b.shape == (10, ) and b.dtype == torch.int32
    assert len(owner) == 2 and owner[0].numel() >= 4000 and owner[1].numel() >= 40
    blocks = {block.data_ptr() for block in owner}
    pool.give(owner)
    assert owner == [] and len(pool.free) == 2
    # the smallest block that fits: 40 bytes fit the second block, 4000 only the first
    small = pool.take(5, torch.float64, 'cpu', owner)
    assert small.data_ptr() in blocks and owner[0].numel() < 4000
    large = pool.take(800, torch.int32, 'cpu', owner)  # 3200 bytes: the first block
    assert large.data_ptr() in blocks and pool.free == []
    too_large = pool.take(2000, torch.float32, 'cpu', owner)  # nothing fits: a new block
    assert too_large.data_ptr() not in blocks and owner[-1].numel() >= 8000


def test_give_keeps_at_most_max_free_largest(monkeypatch):
    monkeypatch.setattr(scratch, 'MIN_BYTES', 0)
    pool, owner = ScratchPool(), []
    for size in range(1, scratch.MAX_FREE + 3):
        pool.take(size * 100, torch.uint8, 'cpu', owner)
    pool.give(owner)
    kept = sorted(block.numel() for block in pool.free)
    assert len(kept) == scratch.MAX_FREE
    assert kept[0] >= 300  # the two smallest were dropped
    assert pool.held_bytes() == sum(kept)


def test_small_and_non_cpu_requests_bypass_the_pool():
    pool, owner = ScratchPool(), []
    small = pool.take(10, torch.float32, 'cpu', owner)  # below MIN_BYTES
    meta = pool.take(scratch.MIN_BYTES, torch.float32, 'meta', owner)
    assert owner == [] and small.shape == (10, ) and meta.device.type == 'meta'


def test_pool_is_per_thread(monkeypatch):
    monkeypatch.setattr(scratch, 'MIN_BYTES', 0)
    release_scratch()
    owner = []
    scratch_pool.take(100, torch.uint8, 'cpu', owner)
    scratch_pool.give(owner)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(len(scratch_pool.free)))
    thread.start()
    thread.join()
    assert len(scratch_pool.free) == 1 and seen == [0]
    release_scratch()
    assert scratch_pool.free == []


def _problem(seed, n=700, classes=6):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=gen)
    labels = torch.full((n, ), classes, dtype=torch.long)
    rows = torch.randperm(n, generator=gen)[:n // 10]
    labels[rows] = torch.randint(0, classes, (rows.numel(), ), generator=gen)
    excluded = torch.randperm(n, generator=gen)[:7].sort().values
    return logits, labels, excluded


def _loss_and_grad(logits, labels, excluded, **kwargs):
    x = logits.clone().requires_grad_()
    loss = detection_ap_loss(x, labels, excluded, None, 0.5, 0.0, 1 / 3, **kwargs)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize('balanced', [False, True], ids=['paper', 'balanced'])
def test_pooled_blocks_give_fresh_results(pooled_dense, monkeypatch, balanced):
    """Same loss and gradient, bit for bit, with pooled blocks (stale garbage in them) as with
    fresh allocations; two losses whose graphs are alive at once do not share a block."""
    kwargs = dict(balanced_gain=10.0, balanced_below=1.0) if balanced else {}
    cases = [_problem(seed) for seed in range(2)]
    monkeypatch.setattr(scratch, 'MIN_BYTES', 1 << 60)  # fresh allocations only
    expected = [_loss_and_grad(*case, **kwargs) for case in cases]
    monkeypatch.setattr(scratch, 'MIN_BYTES', 0)
    # stale contents: blocks full of garbage in the pool
    owner = [torch.full((1 << 16, ), 0xA5, dtype=torch.uint8) for _ in range(3)]
    scratch_pool.give(owner)
    for _ in range(2):  # the second round reuses the blocks the first gave back
        xs = [case[0].clone().requires_grad_() for case in cases]
        losses = [detection_ap_loss(x, labels, excluded, None, 0.5, 0.0, 1 / 3, **kwargs)
                  for x, (_, labels, excluded) in zip(xs, cases)]
        sum(losses).backward()  # both graphs alive until here
        for x, loss, (loss_ref, grad_ref) in zip(xs, losses, expected):
            assert torch.equal(loss.detach(), loss_ref)
            assert torch.equal(x.grad, grad_ref)
        assert 0 < len(scratch_pool.free) <= scratch.MAX_FREE


def test_steady_state_allocates_no_new_block(pooled_dense, monkeypatch):
    """After one call, the next call of the same size takes only blocks it gave back."""
    logits, labels, excluded = _problem(3)
    _loss_and_grad(logits, labels, excluded)
    blocks = {block.data_ptr() for block in scratch_pool.free}
    assert blocks
    taken = []
    original = ScratchPool.take

    def spy(self, numel, dtype, device, owner):
        out = original(self, numel, dtype, device, owner)
        taken.append(owner[-1].data_ptr())
        return out

    monkeypatch.setattr(ScratchPool, 'take', spy)
    _loss_and_grad(logits, labels, excluded)
    assert taken and set(taken) <= blocks
