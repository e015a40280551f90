"""mmdet adapters of the ranking core; importing this registers them into mmdet's MODELS (and
makes mmdet's RoI box head call a ranking loss also on a process without RoIs, see
:mod:`rambo_mmdet.models.bbox_head_patch`)."""
from . import bbox_head_patch, dense_heads, losses  # noqa: F401

bbox_head_patch.apply()
