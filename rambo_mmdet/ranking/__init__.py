"""Pure-torch RaMBO ranking core: blackbox-differentiated exact ranks and rank-based losses.

Imports nothing from mmdet or mmcv.
"""
from .blackbox import (STAGES, BlackboxPositiveRanks, GradScale, RankingProblem, rank_positives,
                       rank_problems, route_output_grad)
from .counting import PositiveSet
from .losses import (DetectionRankingLoss, as_positive_set, average_precision_loss,
                     check_scores, detection_ap_loss, detection_ranking_loss, mean_ap_loss,
                     recall_loss)
from .memory import ScoreMemory
from .pointwise import (CROSS_ENTROPIES, pointwise_term, sigmoid_cross_entropy,
                        sigmoid_focal_loss, softmax_cross_entropy)
from .reference import ArgsortBlackboxRanks, argsort_ranks
from .scratch import release_scratch
from .sync_audit import SyncAudit

__all__ = [
    'BlackboxPositiveRanks', 'GradScale', 'route_output_grad', 'RankingProblem', 'rank_problems',
    'rank_positives', 'STAGES', 'PositiveSet',
    'as_positive_set', 'average_precision_loss', 'check_scores',
    'detection_ap_loss', 'detection_ranking_loss', 'DetectionRankingLoss', 'mean_ap_loss',
    'recall_loss', 'ScoreMemory', 'pointwise_term', 'sigmoid_cross_entropy', 'sigmoid_focal_loss',
    'softmax_cross_entropy', 'CROSS_ENTROPIES',
    'ArgsortBlackboxRanks', 'argsort_ranks', 'release_scratch', 'SyncAudit'
]
