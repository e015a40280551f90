"""RaMBOAPLoss / RaMBORecallLoss (mmdet adapters) against the loop oracle and their contracts."""
import gc
import weakref

import pytest
import torch
from mmdet.registry import MODELS
from ranking_oracle import oracle_map_loss, oracle_recall_loss

import rambo_mmdet  # noqa: F401  (registers the losses)


def build(**kwargs):
    """RaMBOAPLoss in the paper's mode (the oracle implements the paper's loss and gradient)."""
    kwargs.setdefault('mode', 'paper')
    return MODELS.build(dict(type='RaMBOAPLoss', **kwargs))


def one_hot(labels, num_classes):
    return labels[:, None] == torch.arange(num_classes)


def oracle_rambo_loss(scores, labels, memory, lambda_val, margin, beta):
    """(1 - β) mean-AP over classes on (batch + memory) + β interclass AP on the batch."""
    num_classes = scores.shape[1]
    all_scores = torch.cat([scores.float(), *[m[0] for m in memory]])
    all_labels = torch.cat([labels, *[m[1] for m in memory]])
    class_term = oracle_map_loss(all_scores, one_hot(all_labels, num_classes), lambda_val, margin)
    flat = oracle_map_loss(scores.float().reshape(-1, 1),
                           one_hot(labels, num_classes).reshape(-1, 1), lambda_val, margin)
    return (1 - beta) * class_term + beta * flat


def random_batch(gen, rows=12, num_classes=3, fg_rate=0.3):
    scores = torch.randn(rows, num_classes, generator=gen)
    labels = torch.randint(0, num_classes, (rows, ), generator=gen)
    background = torch.rand(rows, generator=gen) > fg_rate
    return scores, torch.where(background, torch.full_like(labels, num_classes), labels)


@pytest.mark.parametrize('seed', range(6))
def test_loss_with_memory_matches_oracle_over_steps(seed):
    gen = torch.Generator().manual_seed(seed)
    lambda_val, margin = [0.5, 2.0, 0.1][seed % 3], [0.15, 0.0][seed % 2]
    beta, tau = [1 / 3, 0.0, 1.0][seed % 3], [7, 2, 0][seed % 3]
    loss_fn = build(lambda_val=lambda_val, margin=margin, interclass_weight=beta,
                    memory_batches=tau)
    history = []
    for _ in range(4):
        scores, labels = random_batch(gen)
        x = scores.clone().requires_grad_()
        loss = loss_fn(x, labels)
        loss.backward()
        y = scores.clone().requires_grad_()
        memory = history[-tau:] if tau else []
        ref = oracle_rambo_loss(y, labels, memory, lambda_val, margin, beta)
        ref.backward()
        history.append((scores.clone(), labels.clone()))
        assert torch.allclose(loss, ref, atol=1e-6)
        assert torch.allclose(x.grad, y.grad, atol=1e-6)


def test_ignored_rows_are_left_out():
    gen = torch.Generator().manual_seed(0)
    scores, labels = random_batch(gen, rows=20)
    weights = (torch.rand(20, generator=gen) > 0.3).float()
    loss_fn = build(memory_batches=0)
    x = scores.clone().requires_grad_()
    loss = loss_fn(x, labels, weights)
    loss.backward()
    keep = weights > 0
    y = scores[keep].clone().requires_grad_()
    ref = loss_fn(y, labels[keep])
    ref.backward()
    assert torch.allclose(loss, ref)
    assert torch.equal(x.grad[~keep], torch.zeros_like(x.grad[~keep]))
    assert torch.allclose(x.grad[keep], y.grad)


@pytest.mark.parametrize('case', ['no_positives', 'all_ignored', 'empty'])
def test_degenerate_batches_give_zero_loss_and_zero_grad(case):
    loss_fn = build()
    rows = 0 if case == 'empty' else 10
    x = torch.randn(rows, 4, requires_grad=True)
    labels = torch.full((rows, ), 4) if case == 'no_positives' else torch.randint(0, 5, (rows, ))
    weights = torch.zeros(rows) if case == 'all_ignored' else torch.ones(rows)
    loss = loss_fn(x, labels, weights)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_memory_positives_still_train_a_batch_without_positives():
    loss_fn = build(interclass_weight=0.0, lambda_val=10.0, margin=0.0)
    loss_fn(torch.zeros(10, 3), torch.tensor([0, 1, 2] + [3] * 7))
    x = torch.zeros(10, 3)
    x[:, 0] = 0.01  # background rows just above the remembered class-0 positive
    x.requires_grad_()
    loss = loss_fn(x, torch.full((10, ), 3))
    loss.backward()
    assert loss.item() > 0 and x.grad[:, 0].gt(0).all()


def test_eval_mode_neither_reads_nor_writes_the_memory():
    loss_fn = build(interclass_weight=0.0)
    loss_fn(torch.randn(10, 3), torch.tensor([0, 1, 2] + [3] * 7))
    loss_fn.eval()
    loss = loss_fn(torch.randn(5, 3), torch.full((5, ), 3))
    assert loss.item() == 0.0 and len(loss_fn.memory) == 1


def test_memory_keeps_no_graph_alive():
    loss_fn = build()
    x = torch.randn(30, 3, requires_grad=True)
    scores = x * 2.0
    probe = weakref.ref(scores)
    loss_fn(scores, torch.randint(0, 4, (30, ))).backward()
    assert len(loss_fn.memory) == 1
    del scores
    gc.collect()
    assert probe() is None


def test_bad_input_raises_clear_errors():
    loss_fn = build(name='roi_head.bbox_head.loss_cls')
    nan = torch.randn(6, 3)
    nan[2, 1] = float('nan')
    with pytest.raises(ValueError, match=r'roi_head.bbox_head.loss_cls.*NaN/Inf'):
        loss_fn(nan, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match=r'labels must be in 0\.\.3'):
        loss_fn(torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 4, 0]))
    with pytest.raises(ValueError, match='labels must have shape'):
        loss_fn(torch.randn(6, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r'cls_score must have shape \[N, C\]'):
        loss_fn(torch.randn(6), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match='use_sigmoid=False'):
        build(use_sigmoid=False)
    with pytest.raises(ValueError, match='score_activation'):
        build(score_activation='softmax')


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_logits(dtype):
    gen = torch.Generator().manual_seed(3)
    scores, labels = random_batch(gen, rows=40)
    x = scores.to(dtype).requires_grad_()
    loss = build(memory_batches=0)(x, labels)
    loss.backward()
    ref = build(memory_batches=0)(scores.to(dtype).float(), labels)
    assert loss.dtype == torch.float32 and x.grad.dtype == dtype
    assert torch.allclose(loss, ref)


def test_sigmoid_activation_ranks_probabilities():
    gen = torch.Generator().manual_seed(4)
    scores, labels = random_batch(gen, rows=30)
    loss = build(memory_batches=0, score_activation='sigmoid')(scores, labels)
    ref = build(memory_batches=0)(scores.sigmoid(), labels)
    assert torch.allclose(loss, ref)


def test_box_head_hooks():
    loss_fn = build()
    assert loss_fn.get_cls_channels(7) == 7
    logits = torch.randn(5, 7)
    scores = loss_fn.get_activation(logits)
    assert scores.shape == (5, 8) and torch.equal(scores[:, -1], torch.zeros(5))
    assert torch.allclose(scores[:, :7], logits.sigmoid())
    labels = torch.tensor([logits[0].argmax(), logits[1].argmax(), 7, 7, (logits[4].argmax() + 1) % 7])
    assert loss_fn.get_accuracy(logits, labels)['acc'].item() == pytest.approx(200 / 3)


@pytest.mark.parametrize('log_log', [False, True])
def test_recall_loss_matches_oracle_with_memory(log_log):
    gen = torch.Generator().manual_seed(5)
    loss_fn = MODELS.build(dict(type='RaMBORecallLoss', lambda_val=0.5, margin=0.1,
                                log_log=log_log, memory_batches=2))
    history = []
    for _ in range(3):
        scores = torch.randn(3, 15, generator=gen)
        relevance = torch.rand(3, 15, generator=gen) < 0.3
        x = scores.clone().requires_grad_()
        loss = loss_fn(x, relevance)
        loss.backward()
        y = scores.clone().requires_grad_()
        gallery = torch.cat([y.t(), *[s.t() for s, _ in history[-2:]]])
        relevant = torch.cat([relevance.t(), *[r.t() for _, r in history[-2:]]])
        ref = oracle_recall_loss(gallery, relevant, 0.5, 0.1, log_log)
        ref.backward()
        history.append((scores, relevance))
        assert torch.allclose(loss, ref, atol=1e-5)
        assert torch.allclose(x.grad, y.grad, atol=1e-6)


def test_recall_loss_weight_scales_the_gradient_not_lambda():
    gen = torch.Generator().manual_seed(6)
    scores = torch.randn(3, 40, generator=gen)
    relevance = torch.rand(3, 40, generator=gen) < 0.3
    grads = []
    for weight in (1.0, 8.0):
        x = scores.clone().requires_grad_()
        loss_fn = MODELS.build(dict(type='RaMBORecallLoss', loss_weight=weight))
        (loss_fn(x, relevance) * 2.0**16).backward()
        grads.append(x.grad)
    assert grads[0].abs().sum() > 0
    assert torch.equal(grads[1], grads[0] * 8.0)
