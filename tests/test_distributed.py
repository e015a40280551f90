"""RaMBOAPLoss under data parallelism, for real: 2 CPU processes on the gloo backend.

The test launches two fresh interpreters running this file as a worker (``__main__`` below),
rendezvous on a free port of 127.0.0.1. Each rank feeds RaMBOAPLoss (``global_batch=True``,
memory on) its own batches: different row counts, a rank with no positive, a rank with an empty
batch, ignored rows. The parent checks, against the single-process loss on the concatenated
batches:

* the loss is the same on both ranks (bitwise) and equals the single-process loss;
* each rank's gradient w.r.t. its scores is ``W *`` its slice of the single-process gradient
  (``W = 2``: the factor that undoes DDP's gradient averaging; exactly the slice with
  ``scale_grad_by_world_size=False``), and a DDP-wrapped linear layer gets the parameter
  gradient of single-process training on the global batch;
* both ranks' memories are identical (bitwise) and equal the single-process memory;
* ``gather_rows`` handles uneven, empty, bool and 3-D inputs;
* NaN on one rank makes *both* ranks raise (no rank is left waiting in a collective).

A second run of the workers (scenario ``zero_roi``) drives mmdet's RoI box head
(``Shared2FCBBoxHead`` in DDP, ``BBoxHead.loss``) with a rank that has no RoI at all, or only
ignored ones: mmdet skips the classification loss on an empty batch, which would leave the other
rank waiting in the gather; :mod:`rambo_mmdet.models.bbox_head_patch` makes every rank call it.
No rank hangs, the loss equals the single-process loss on the concatenated RoIs, and the
gradients are finite (the classifier's equal to single-process training).
"""
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

NUM_CLASSES = 4
WORLD_SIZE = 2
STEPS = 3
TAU = 2
REPO_ROOT = Path(__file__).resolve().parents[1]


def make_batch(rank, step):
    """Scores ``[n, C]`` (with ties), labels ``[n]``, label weights ``[n]`` of one rank's step.

    rank 0: 12, 9, 7 rows; rank 1: 10 rows without positive, an empty batch, 15 rows. Some rows
    are ignored (weight 0).
    """
    gen = torch.Generator().manual_seed(1000 * rank + step)
    rows = [[12, 9, 7], [10, 0, 15]][rank][step]
    scores = (torch.randn(rows, NUM_CLASSES, generator=gen) * 4).round() / 4
    labels = torch.randint(0, NUM_CLASSES, (rows, ), generator=gen)
    labels[torch.rand(rows, generator=gen) < 0.5] = NUM_CLASSES
    if rank == 1 and step == 0:
        labels[:] = NUM_CLASSES  # no positive on this rank
    weights = (torch.rand(rows, generator=gen) > 0.2).float()
    return scores, labels, weights


def make_features(rank, step):
    """Inputs of the DDP linear-layer check: ``[n, 6]`` features with the batch's targets."""
    _, labels, weights = make_batch(rank, step)
    gen = torch.Generator().manual_seed(77 + 1000 * rank + step)
    return torch.randn(labels.shape[0], 6, generator=gen), labels, weights


ROI_CLASSES = 3
ROI_ROWS = [(6, 0), (4, 3), (0, 5)]  # RoIs of (rank 0, rank 1) at each step


def make_rois(rank, step):
    """Inputs of ``BBoxHead.loss`` on one rank: RoI features ``[n, 4, 2, 2]``, rois, labels, label
    weights, box targets and box weights. Rank 1 has no RoI at step 0, only ignored ones
    (weight 0) at step 1; rank 0 none at step 2."""
    gen = torch.Generator().manual_seed(500 + 1000 * rank + step)
    rows = ROI_ROWS[step][rank]
    feats = torch.randn(rows, 4, 2, 2, generator=gen)
    rois = torch.cat([torch.zeros(rows, 1), torch.rand(rows, 4, generator=gen) * 10], dim=1)
    labels = torch.randint(0, ROI_CLASSES + 1, (rows, ), generator=gen)
    weights = torch.full((rows, ), float(not (rank == 1 and step == 1)))
    return feats, rois, labels, weights, torch.randn(rows, 4, generator=gen), torch.ones(rows, 4)


def build_roi_head(global_batch):
    """A small ``Shared2FCBBoxHead`` with RaMBOAPLoss (the same weights on every call)."""
    from mmdet.registry import MODELS
    torch.manual_seed(0)
    return MODELS.build(dict(
        type='Shared2FCBBoxHead', in_channels=4, fc_out_channels=8, roi_feat_size=2,
        num_classes=ROI_CLASSES, loss_cls=dict(type='RaMBOAPLoss', use_sigmoid=True,
                                               memory_batches=TAU, global_batch=global_batch)))


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------- worker
def worker(rank, world_size, port, out_dir, scenario='main'):
    import datetime

    import torch.distributed as dist

    import rambo_mmdet  # noqa: F401
    from rambo_mmdet.ranking.distributed import is_distributed

    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=60))
    assert is_distributed()
    out = zero_roi_worker(rank) if scenario == 'zero_roi' else main_worker(rank)
    torch.save(out, os.path.join(out_dir, f'rank{rank}.pt'))
    dist.barrier()
    dist.destroy_process_group()


def zero_roi_worker(rank):
    """mmdet's box-head loss in DDP, steps of ``ROI_ROWS``: loss keys, ``loss_cls`` and the
    parameter gradients of each step."""
    from torch import nn

    head = build_roi_head(global_batch=True)
    ddp = nn.parallel.DistributedDataParallel(head)
    out = dict(keys=[], losses=[], grads=[])
    for step in range(len(ROI_ROWS)):
        feats, rois, labels, weights, targets, target_weights = make_rois(rank, step)
        ddp.zero_grad()
        cls_score, bbox_pred = ddp(feats)
        losses = head.loss(cls_score, bbox_pred, rois, labels, weights, targets, target_weights)
        sum(value for key, value in losses.items() if key.startswith('loss')).backward()
        out['keys'].append(list(losses))
        out['losses'].append(losses.get('loss_cls'))  # None if missing: checked by the test
        out['grads'].append({name: None if p.grad is None else p.grad.clone()
                             for name, p in head.named_parameters()})
    return out


def main_worker(rank):
    """RaMBOAPLoss alone, gather_rows, DDP and bad input (see the module docstring)."""
    from torch import nn

    from mmdet.registry import MODELS
    from rambo_mmdet.ranking.distributed import gather_rows

    out = dict(losses=[], grads=[], local_losses=[], unscaled_grads=[])

    loss_fn = MODELS.build(dict(type='RaMBOAPLoss', memory_batches=TAU, global_batch=True))
    auto_fn = MODELS.build(dict(type='RaMBOAPLoss', memory_batches=0))  # 'auto'
    local_fn = MODELS.build(dict(type='RaMBOAPLoss', memory_batches=0, global_batch=False))
    unscaled_fn = MODELS.build(dict(type='RaMBOAPLoss', memory_batches=TAU,
                                    scale_grad_by_world_size=False))
    for step in range(STEPS):
        scores, labels, weights = make_batch(rank, step)
        x = scores.clone().requires_grad_()
        loss = loss_fn(x, labels, weights)
        loss.backward()
        out['losses'].append(loss.detach())
        out['grads'].append(x.grad)
        y = scores.clone().requires_grad_()
        unscaled_fn(y, labels, weights).backward()
        out['unscaled_grads'].append(y.grad)
        out.setdefault('auto_losses', []).append(auto_fn(scores, labels, weights))
        out['local_losses'].append(local_fn(scores, labels, weights))
    out['memory'] = [(s.clone(), t.clone()) for s, t in loss_fn.memory._batches]
    # the score calibration map (sums all-reduced: the same update on every rank)
    out['calib'] = [loss_fn.calib_scale.clone(), loss_fn.calib_bias.clone(),
                    loss_fn.calib_updates.clone()]

    # gather_rows on its own: uneven sizes (0 on rank 1), bool, 3-D
    sizes = [3, 0]
    out['gather_float'] = gather_rows(torch.full((sizes[rank], 2), float(rank)))
    out['gather_bool'] = gather_rows(torch.tensor([True, False, rank == 1]))
    out['gather_3d'] = gather_rows(torch.arange(4 * (rank + 1) * 2).view(-1, 2, 2) + 100 * rank)

    # DDP: a linear classifier trained with the global-batch loss
    torch.manual_seed(0)
    model = nn.Linear(6, NUM_CLASSES)
    ddp = nn.parallel.DistributedDataParallel(model)
    ddp_loss = MODELS.build(dict(type='RaMBOAPLoss', memory_batches=TAU))
    for step in range(STEPS):
        features, labels, weights = make_features(rank, step)
        ddp.zero_grad()
        ddp_loss(ddp(features), labels, weights).backward()
        out.setdefault('ddp_grads', []).append(
            [p.grad.clone() for p in model.parameters()])

    # bad input on rank 1 only: both ranks must raise
    scores, labels, _ = make_batch(rank, 0)
    if rank == 1:
        scores[0, 0] = float('nan')
    try:
        loss_fn(scores, labels)
    except ValueError as err:
        out['error'] = str(err)
    return out


if __name__ == '__main__':
    worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], *sys.argv[5:])
    sys.exit(0)


# ------------------------------------------------------------------------------------------ test
import pytest  # noqa: E402

import rambo_mmdet  # noqa: E402,F401
from mmdet.registry import MODELS  # noqa: E402


def run_workers(tmp_path, scenario='main'):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO_ROOT), os.environ.get('PYTHONPATH', '')]), PYTHONWARNINGS='ignore',
        OMP_NUM_THREADS='1')
    for attempt in range(2):  # the free port may be taken between bind and rendezvous
        port = free_port()
        procs = [subprocess.Popen([sys.executable, __file__, str(rank), str(WORLD_SIZE), str(port),
                                   str(tmp_path), scenario], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
                 for rank in range(WORLD_SIZE)]
        logs = []
        for proc in procs:
            try:
                logs.append(proc.communicate(timeout=120)[0])
            except subprocess.TimeoutExpired:
                for other in procs:
                    other.kill()
                pytest.fail('distributed workers timed out (a rank is waiting in a collective)')
        if all(proc.returncode == 0 for proc in procs):
            return [torch.load(tmp_path / f'rank{rank}.pt', weights_only=False)  # our own files
                    for rank in range(WORLD_SIZE)]
        if attempt == 0 and any('Address already in use' in log for log in logs):
            continue
        pytest.fail('distributed workers failed:\n' + '\n'.join(
            f'--- rank {rank} (exit {proc.returncode}) ---\n{log[-4000:]}'
            for rank, (proc, log) in enumerate(zip(procs, logs))))


@pytest.fixture(scope='module')
def results(tmp_path_factory):
    return run_workers(tmp_path_factory.mktemp('dist'))


def concatenated(step, make=make_batch):
    parts = [make(rank, step) for rank in range(WORLD_SIZE)]
    return [torch.cat([part[i] for part in parts]) for i in range(3)], [
        part[1].shape[0] for part in parts]


def single_process_reference():
    """Loss values, score gradients and final memory of one process on the global batches."""
    loss_fn = MODELS.build(dict(type='RaMBOAPLoss', memory_batches=TAU, global_batch=False))
    losses, grads = [], []
    for step in range(STEPS):
        (scores, labels, weights), sizes = concatenated(step)
        x = scores.clone().requires_grad_()
        loss = loss_fn(x, labels, weights)
        loss.backward()
        losses.append(loss.detach())
        grads.append(x.grad.split(sizes))
    return losses, grads, list(loss_fn.memory._batches)


def test_loss_equal_on_every_rank_and_to_single_process(results):
    ref_losses, _, _ = single_process_reference()
    for step in range(STEPS):
        values = [r['losses'][step] for r in results]
        assert torch.equal(values[0], values[1])  # bitwise, every rank
        assert torch.allclose(values[0], ref_losses[step], atol=1e-6, rtol=0)
        # 'auto' is on under a world size of 2 (no memory: compare with a fresh reference)
        (scores, labels, weights), _ = concatenated(step)
        ref = MODELS.build(dict(type='RaMBOAPLoss', memory_batches=0))(scores, labels, weights)
        for r in results:
            assert torch.allclose(r['auto_losses'][step], ref, atol=1e-6, rtol=0)
    assert any(float(v) > 0 for v in ref_losses)  # not vacuous


def test_calibration_map_identical_on_every_rank_and_equal_to_single_process(results):
    """Under the global batch every rank takes the same calibration step (the BCE sums of the
    ranks' rows are all-reduced): the maps are bitwise equal and equal the single-process map
    learned on the concatenated batches (up to the summation order)."""
    reference = MODELS.build(dict(type='RaMBOAPLoss', memory_batches=TAU, global_batch=False))
    for step in range(STEPS):
        (scores, labels, weights), _ = concatenated(step)
        reference(scores, labels, weights)
    maps = [out['calib'] for out in results]
    assert all(torch.equal(a, b) for a, b in zip(*maps))
    assert maps[0][2].item() == STEPS
    assert maps[0][0].item() != 1.0  # it moved
    assert maps[0][0].item() == pytest.approx(reference.calib_scale.item(), rel=1e-5)
    assert maps[0][1].item() == pytest.approx(reference.calib_bias.item(), rel=1e-5, abs=1e-6)


def test_global_batch_false_ranks_the_local_batch_only(results):
    local_fn = MODELS.build(dict(type='RaMBOAPLoss', memory_batches=0, global_batch=False))
    for rank, r in enumerate(results):
        for step in range(STEPS):
            ref = local_fn(*make_batch(rank, step))
            assert torch.allclose(r['local_losses'][step], ref, atol=1e-6, rtol=0)


def test_score_gradients_are_world_size_times_the_reference_slices(results):
    _, ref_grads, _ = single_process_reference()
    nonzero = 0
    for step in range(STEPS):
        for rank, r in enumerate(results):
            grad, ref = r['grads'][step], ref_grads[step][rank]
            assert grad.shape == ref.shape
            assert torch.allclose(grad, WORLD_SIZE * ref, atol=1e-7, rtol=1e-6)
            # scale_grad_by_world_size=False: exactly the single-process gradient
            assert torch.allclose(r['unscaled_grads'][step], ref, atol=1e-7, rtol=1e-6)
            nonzero += int(ref.ne(0).sum())
    assert nonzero > 0


def test_memories_identical_on_every_rank_and_equal_to_single_process(results):
    _, _, ref_memory = single_process_reference()
    memories = [r['memory'] for r in results]
    assert len(memories[0]) == len(memories[1]) == len(ref_memory) == TAU
    for (s0, t0), (s1, t1), (s, t) in zip(*memories, ref_memory):
        assert torch.equal(s0, s1) and torch.equal(t0, t1)
        assert torch.equal(s0, s) and torch.equal(t0, t)


def test_ddp_parameter_gradients_equal_single_process_training(results):
    from torch import nn
    torch.manual_seed(0)
    model = nn.Linear(6, NUM_CLASSES)
    loss_fn = MODELS.build(dict(type='RaMBOAPLoss', memory_batches=TAU, global_batch=False))
    for step in range(STEPS):
        (features, labels, weights), _ = concatenated(step, make_features)
        model.zero_grad()
        loss_fn(model(features), labels, weights).backward()
        for rank, r in enumerate(results):
            for grad, ref in zip(r['ddp_grads'][step], model.parameters()):
                assert torch.allclose(grad, ref.grad, atol=1e-6, rtol=1e-5), (step, rank)
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


def test_gather_rows_uneven_empty_bool_and_3d(results):
    for rank, r in enumerate(results):
        rows, local = r['gather_float']
        assert torch.equal(rows, torch.zeros(3, 2)) and local == [slice(0, 3), slice(3, 3)][rank]
        rows, local = r['gather_bool']
        assert rows.dtype == torch.bool
        assert rows.tolist() == [True, False, False, True, False, True]
        assert local == slice(3 * rank, 3 * rank + 3)
        rows, local = r['gather_3d']
        expected = torch.cat([torch.arange(8).view(-1, 2, 2),
                              torch.arange(16).view(-1, 2, 2) + 100])
        assert torch.equal(rows, expected) and local == [slice(0, 2), slice(2, 6)][rank]


def test_bad_input_on_one_rank_stops_every_rank(results):
    assert 'NaN/Inf' in results[1]['error'] and 'rank 1 of 2' in results[1]['error']
    assert 'invalid input on rank(s) [1] of 2' in results[0]['error']
    assert all(r['error'].startswith('RaMBOAPLoss:') for r in results)


@pytest.fixture(scope='module')
def zero_roi_results(tmp_path_factory):
    return run_workers(tmp_path_factory.mktemp('zero_roi'), 'zero_roi')


def test_rank_without_rois_joins_the_global_batch_of_the_box_head(zero_roi_results):
    """A rank without RoIs (or with only ignored ones) still calls the ranking loss in mmdet's
    box head: no hang, the same loss keys and value on both ranks, equal to the single-process
    loss on the concatenated RoIs; finite gradients, the classifier's equal to single-process
    training on the concatenated RoIs (DDP averaging undone by the loss)."""
    head = build_roi_head(global_batch=False)
    losses = []
    for step in range(len(ROI_ROWS)):
        parts = [make_rois(rank, step) for rank in range(WORLD_SIZE)]
        feats, rois, labels, weights, targets, target_weights = [
            torch.cat([part[i] for part in parts]) for i in range(6)]
        head.zero_grad()
        cls_score, bbox_pred = head(feats)
        ref = head.loss(cls_score, bbox_pred, rois, labels, weights, targets,
                        target_weights)['loss_cls']
        ref.backward()
        losses.append(ref.detach())
        r0, r1 = zero_roi_results
        assert r0['keys'][step] == r1['keys'][step] and 'loss_cls' in r0['keys'][step]
        assert torch.equal(r0['losses'][step], r1['losses'][step])  # bitwise, every rank
        assert torch.allclose(r0['losses'][step], ref, atol=1e-6, rtol=0), step
        for r in zero_roi_results:
            assert all(grad is not None and torch.isfinite(grad).all()
                       for grad in r['grads'][step].values())
            for name in ('fc_cls.weight', 'fc_cls.bias'):
                assert torch.allclose(r['grads'][step][name], head.get_parameter(name).grad,
                                      atol=1e-6, rtol=1e-5), (step, name)
    assert all(float(loss) > 0 for loss in losses)  # not vacuous


def test_box_head_calls_only_a_ranking_loss_on_zero_rois():
    """One process, no RoI: the box head returns ``loss_cls`` and ``acc`` of a ranking loss (0,
    graph intact, zero gradient); with cross-entropy mmdet's behaviour (no ``loss_cls``) stays."""
    feats, *targets = make_rois(1, 0)
    head = build_roi_head(global_batch=False)
    losses = head.loss(*head(feats), *targets)
    assert list(losses) == ['loss_cls', 'acc', 'loss_bbox'] and float(losses['loss_cls']) == 0
    losses['loss_cls'].backward()
    assert not head.fc_cls.weight.grad.any()
    ce_head = MODELS.build(dict(type='Shared2FCBBoxHead', in_channels=4, fc_out_channels=8,
                                roi_feat_size=2, num_classes=ROI_CLASSES))
    assert list(ce_head.loss(*ce_head(feats), *targets)) == ['loss_bbox']
