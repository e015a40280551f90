"""Demo data of rambo_mmdet (no mmdet import here: usable from plain numpy/PIL tooling)."""
from .fashion_det import (FASHION_CLASS_TITLES, FASHION_CLASSES, GENERATOR_VERSION,
                          FashionDetConfig, FashionDetValidationError, build_fashion_det,
                          validate_fashion_det)

__all__ = [
    'FASHION_CLASSES', 'FASHION_CLASS_TITLES', 'GENERATOR_VERSION', 'FashionDetConfig',
    'FashionDetValidationError', 'build_fashion_det', 'validate_fashion_det'
]
