"""Slow, obviously-correct oracles written from the formulas (explicit loops), for the tests.

Rank convention (see rambo_mmdet.ranking.counting): rank 1 = highest score; for a positive,
negatives tied with it rank above it, positives tied with it do not.
"""
import torch


def loop_ranks(scores, positive):
    """Full ranks of every entry of each column, by explicit loops: ``[n, G]`` int64.

    positive i: 1 + #{pos j: s_j > s_i} + #{neg j: s_j >= s_i}
    negative i: 1 + #{pos j: s_j > s_i} + #{neg j: s_j > s_i}
    """
    n, num_groups = scores.shape
    s, pos = scores.tolist(), positive.tolist()
    ranks = torch.zeros(n, num_groups, dtype=torch.int64)
    for g in range(num_groups):
        for i in range(n):
            above = 0
            for j in range(n):
                if j == i:
                    continue
                if s[j][g] > s[i][g] or (pos[i][g] and not pos[j][g] and s[j][g] == s[i][g]):
                    above += 1
            ranks[i, g] = 1 + above
    return ranks


def loop_ranks_among_positives(scores, positive):
    """1 + #{positives j of the column: s_j > s_i}, for every entry (meaningful at positives)."""
    n, num_groups = scores.shape
    out = torch.zeros(n, num_groups, dtype=torch.int64)
    for g in range(num_groups):
        for i in range(n):
            out[i, g] = 1 + sum(1 for j in range(n)
                                if positive[j, g] and scores[j, g] > scores[i, g])
    return out


def rank_units(grad, n, lambda_val):
    """Gradients in units of integer rank changes (exact comparisons)."""
    return (grad * n * lambda_val).round()


class LoopBlackboxRanks(torch.autograd.Function):
    """Normalised full ranks (loops) with the blackbox backward -(rk(y) - rk(y + λ g)) / λ."""

    @staticmethod
    def forward(ctx, scores, positive, lambda_val):
        ranks = loop_ranks(scores, positive).to(scores.dtype) / scores.shape[0]
        ctx.save_for_backward(scores, positive, ranks)
        ctx.lambda_val = lambda_val
        return ranks

    @staticmethod
    def backward(ctx, grad):
        scores, positive, ranks = ctx.saved_tensors
        perturbed = loop_ranks(scores + ctx.lambda_val * grad, positive).to(scores.dtype)
        return -(ranks - perturbed / scores.shape[0]) / ctx.lambda_val, None, None


def oracle_map_loss(scores, positive, lambda_val, margin):
    """Mean over columns with positives of 1 - AP, AP = mean_i rk+(i) / rk(i); loops everywhere."""
    n, num_groups = scores.shape
    shifted = scores.float() + torch.where(positive, -margin / 2, margin / 2)
    ranks = LoopBlackboxRanks.apply(shifted, positive, lambda_val)
    among = loop_ranks_among_positives(shifted.detach(), positive).float() / n
    losses = []
    for g in range(num_groups):
        idx = [i for i in range(n) if positive[i, g]]
        if not idx:
            continue
        precisions = [among[i, g] / ranks[i, g] for i in idx]
        losses.append(1 - torch.stack(precisions).mean())
    if not losses:
        return scores.float().sum() * 0
    return torch.stack(losses).mean()


def oracle_recall_loss(scores, positive, lambda_val, margin, log_log=False):
    """Mean over positives of log(1 + r_i), r_i = #negatives ranked above positive i; loops."""
    n, num_groups = scores.shape
    shifted = scores.float() + torch.where(positive, -margin / 2, margin / 2)
    ranks = LoopBlackboxRanks.apply(shifted, positive, lambda_val)
    among = loop_ranks_among_positives(shifted.detach(), positive).float() / n
    terms = []
    for g in range(num_groups):
        for i in range(n):
            if positive[i, g]:
                term = torch.log1p((ranks[i, g] - among[i, g]) * n)
                terms.append(torch.log1p(term) if log_log else term)
    if not terms:
        return scores.float().sum() * 0
    return torch.stack(terms).mean()


def oracle_detection_loss(scores, labels, memory, lambda_val, margin, beta):
    """(1 - β) mean-AP over classes on (rows + memory) + β interclass AP on the rows; loops."""
    num_classes = scores.shape[1]
    one_hot = lambda lab: lab[:, None] == torch.arange(num_classes)  # noqa: E731
    all_scores = torch.cat([scores, memory[0]]) if memory is not None else scores
    all_labels = torch.cat([labels, memory[1]]) if memory is not None else labels
    total = 0.0
    if beta < 1:
        total = total + (1 - beta) * oracle_map_loss(all_scores, one_hot(all_labels), lambda_val,
                                                     margin)
    if beta > 0:
        total = total + beta * oracle_map_loss(scores.reshape(-1, 1),
                                               one_hot(labels).reshape(-1, 1), lambda_val, margin)
    return total
