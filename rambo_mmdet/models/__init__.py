"""mmdet adapters of the ranking core; importing this registers them into mmdet's MODELS."""
from . import dense_heads, losses  # noqa: F401
