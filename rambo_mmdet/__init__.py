"""rambo_mmdet: RaMBO rank-based losses (AP, recall) for MMDetection 3.x.

Importing the package applies the compatibility shims of :mod:`rambo_mmdet.compat` and registers
the losses and heads into mmdet's registries, so a config needs only::

    custom_imports = dict(imports=['rambo_mmdet'], allow_failed_imports=False)

The ranking core :mod:`rambo_mmdet.ranking` is pure torch and stays importable without mmdet.
"""
__version__ = '0.1.0'

try:
    import mmdet  # noqa: F401
except ImportError:  # pure-torch use of rambo_mmdet.ranking (e.g. benchmarking on a GPU box)
    HAS_MMDET = False
else:
    HAS_MMDET = True
    from . import compat

    compat.apply()
    from . import hooks, models  # noqa: F401,E402  (registers modules)
