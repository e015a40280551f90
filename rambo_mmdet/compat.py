"""Compatibility shims between the pinned OpenMMLab stack and newer Python tooling.

Everything here is applied once, idempotently, by :func:`apply` (``import rambo_mmdet`` calls it
when mmdet is importable). Two problems are handled; each shim is a no-op where the problem does
not exist.

1. Checkpoints written by an mmengine Runner do not load under torch >= 2.6.
   torch 2.6 changed the default of ``torch.load`` to ``weights_only=True``. mmengine 0.10.7 calls
   ``torch.load(filename, map_location=...)`` without that argument (``load_from_local`` in
   ``mmengine/runner/checkpoint.py``, used by ``Runner.resume``, ``Runner.load_checkpoint``,
   ``load_checkpoint`` and so by mmdet's ``tools/test.py``). A Runner checkpoint holds, besides
   tensors, the ``message_hub`` state: ``mmengine.logging.HistoryBuffer`` objects with numpy
   arrays and numpy scalars inside. The restricted unpickler refuses those globals
   ("Unsupported global: numpy._core.multiarray.scalar", "... HistoryBuffer", "... getattr").

   Fix chosen: keep ``weights_only=True`` and allowlist exactly what such checkpoints need via
   ``torch.serialization.add_safe_globals``:

   * numpy array / scalar / dtype reconstruction (``_reconstruct``, ``ndarray``, ``scalar``,
     ``dtype`` and the ``numpy.dtypes`` classes), under both the numpy 2 (``numpy._core``) and
     numpy 1 (``numpy.core``) module names so checkpoints cross numpy major versions;
   * ``mmengine.logging.HistoryBuffer`` itself;
   * a *restricted* stand-in for ``builtins.getattr``. HistoryBuffer pickles its statistics
     methods (``HistoryBuffer.min`` ...) as ``getattr(HistoryBuffer, 'min')``. Allowlisting the
     real ``getattr`` would open the unpickler to arbitrary attribute chains (i.e. code
     execution); the stand-in only returns public plain functions defined on HistoryBuffer (or a
     subclass) and raises for anything else.

   Trade-off: this keeps torch's protection against malicious pickles for every checkpoint,
   local or downloaded, at the cost of failing on checkpoints that carry other custom objects
   (e.g. a user hook that stores its own class in the message hub); such a load fails with
   torch's "Unsupported global" message naming the class. The alternative, wrapping mmengine's
   loader to pass ``weights_only=False`` for local files, loads anything but turns every local
   ``.pth`` (including downloaded-then-copied ones) into arbitrary code execution; it is not
   done. For a checkpoint you trust that still fails, call
   ``load_checkpoint_file(path, weights_only=False)`` or allowlist the class yourself
   (``torch.serialization.add_safe_globals([...])``). torch < 2.6 already defaults to
   ``weights_only=False``; nothing is registered there.

2. mmengine 0.10.7 needs ``pkg_resources``.
   ``mmengine.utils.package_utils`` (``is_installed``, ``get_installed_path``,
   ``package2module``) imports ``pkg_resources`` (part of setuptools, removed in setuptools 82).
   ``Config.fromfile`` uses the first two to resolve ``_base_ = 'mmdet::...'`` to the installed
   ``mmdet`` package. Without pkg_resources every ``mmdet::`` config fails with an ImportError.

   Fix chosen: wrap those three functions (in ``mmengine.utils.package_utils`` and wherever
   mmengine/mmcv/mmdet modules have already imported them by name). The wrapper calls
   mmengine's original; only if that raises ``ImportError`` for ``pkg_resources`` does it fall
   back to an equivalent built on ``importlib.metadata`` / ``importlib.util.find_spec``. So when
   pkg_resources exists, behaviour is exactly mmengine's. The project environment pins
   setuptools 81 (requirements/stack.txt), where the fallback never runs; it is for user
   environments with a newer setuptools.

Public API: :func:`apply`, :func:`is_applied`, :func:`load_checkpoint_file`.
"""
import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import os.path as osp
import pickle
import sys

__all__ = ['apply', 'is_applied', 'load_checkpoint_file']

_APPLIED = False
# Marks the functions this module installed, so that a second apply() (or a reload of this
# module) never wraps a wrapper.
_MARK = '__rambo_compat_shim__'
# Module prefixes whose already-imported references to mmengine's package utils get patched.
_PATCHED_PREFIXES = ('mmengine', 'mmcv', 'mmdet')


def apply():
    """Apply all shims once; later calls do nothing. Returns None."""
    global _APPLIED
    if _APPLIED:
        return
    _register_checkpoint_safe_globals()
    _patch_mmengine_package_utils()
    _APPLIED = True


def is_applied():
    """Whether :func:`apply` has run in this process."""
    return _APPLIED


# --------------------------------------------------------------------------------------------
# 1. Loading mmengine Runner checkpoints under torch >= 2.6
# --------------------------------------------------------------------------------------------

def load_checkpoint_file(path, map_location='cpu', *, weights_only=True):
    """Load a checkpoint file (e.g. ``work_dirs/x/iter_100.pth``) with the shims applied.

    Args:
        path (str | os.PathLike): local checkpoint file.
        map_location: as for :func:`torch.load`; ``'cpu'`` by default.
        weights_only (bool): ``True`` (default) uses torch's restricted unpickler with the
            allowlist of this module: enough for checkpoints saved by an mmengine Runner and for
            plain state dicts. ``False`` unpickles anything: only for files you trust.

    Returns:
        The loaded object (a dict with ``state_dict``/``meta``/``message_hub``/... for a Runner
        checkpoint).
    """
    import torch

    apply()
    path = osp.expanduser(os.fspath(path))
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    return torch.load(path, map_location=map_location, weights_only=weights_only)


def _torch_needs_allowlist(torch):
    """True for torch >= 2.6, whose ``torch.load`` defaults to ``weights_only=True``."""
    try:
        major, minor = (int(part) for part in torch.__version__.split('.')[:2])
    except ValueError:  # unparsable local build: assume a modern torch
        return hasattr(torch.serialization, 'add_safe_globals')
    return (major, minor) >= (2, 6) and hasattr(torch.serialization, 'add_safe_globals')


def _numpy_safe_globals():
    """(object, 'module.name') pairs for numpy arrays, scalars and dtypes in a pickle."""
    import numpy as np

    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    pairs = []
    # numpy 2 pickles these as numpy._core.multiarray.*, numpy 1 as numpy.core.multiarray.*.
    for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        pairs.append((multiarray._reconstruct, f'{module}._reconstruct'))
        pairs.append((multiarray.scalar, f'{module}.scalar'))
    pairs.append((np.ndarray, 'numpy.ndarray'))
    pairs.append((np.dtype, 'numpy.dtype'))
    dtypes = getattr(np, 'dtypes', None)  # numpy >= 1.25
    if dtypes is not None:
        for name in dir(dtypes):
            cls = getattr(dtypes, name)
            if isinstance(cls, type) and issubclass(cls, np.dtype):
                pairs.append((cls, f'numpy.dtypes.{name}'))
    return pairs


def _history_buffer_getattr(obj, name, *default):
    """Stand-in for ``builtins.getattr`` inside the restricted unpickler.

    Resolves only ``getattr(HistoryBuffer-or-subclass, 'public_method')`` to that plain function,
    which is how pickle stores ``HistoryBuffer._statistics_methods``. Anything else raises.
    """
    from mmengine.logging import HistoryBuffer

    if not default and isinstance(obj, type) and issubclass(obj, HistoryBuffer) \
            and isinstance(name, str) and not name.startswith('_'):
        value = inspect.getattr_static(obj, name, None)
        if inspect.isfunction(value):
            return value
    raise pickle.UnpicklingError(
        f'rambo_mmdet.compat: refusing getattr({obj!r}, {name!r}) while loading a checkpoint '
        'with weights_only=True (only HistoryBuffer statistics methods are allowed)')


def _register_checkpoint_safe_globals():
    """Allowlist what mmengine Runner checkpoints contain (torch >= 2.6 only)."""
    try:
        import torch
    except ImportError:
        return
    if not _torch_needs_allowlist(torch):
        return
    entries = _numpy_safe_globals()
    try:
        from mmengine.logging import HistoryBuffer
    except ImportError:
        HistoryBuffer = None
    if HistoryBuffer is not None:
        entries.append(HistoryBuffer)
        entries.append((_history_buffer_getattr, 'builtins.getattr'))
    torch.serialization.add_safe_globals(entries)


# --------------------------------------------------------------------------------------------
# 2. mmengine without pkg_resources
# --------------------------------------------------------------------------------------------

def _is_pkg_resources_error(err):
    return err.name == 'pkg_resources' or 'pkg_resources' in str(err)


def _distribution(package):
    importlib.invalidate_caches()  # see packages installed after start, like pkg_resources.reload
    return importlib.metadata.distribution(package)


def _spec_path(package):
    """Directory of an importable (non-namespace) package, or None if not importable."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        return None
    if spec.origin is None:
        raise RuntimeError(f'{package} is a namespace package, which is invalid '
                           'for `get_installed_path`')
    return osp.dirname(spec.origin)


def _metadata_is_installed(package):
    """``mmengine.utils.is_installed`` without pkg_resources."""
    try:
        _distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(package)
        return spec is not None and spec.origin is not None


def _metadata_package2module(package):
    """``mmengine.utils.package_utils.package2module`` without pkg_resources."""
    top_level = _distribution(package).read_text('top_level.txt')
    if top_level:
        return top_level.split('\n')[0]
    raise ValueError(f'can not infer the module name of {package}')


def _metadata_get_installed_path(package):
    """``mmengine.utils.get_installed_path`` without pkg_resources."""
    try:
        dist = _distribution(package)
    except importlib.metadata.PackageNotFoundError:
        path = _spec_path(package)
        if path is None:
            raise
        return path
    location = str(dist.locate_file(''))
    candidate = osp.join(location, package)
    if osp.exists(candidate):
        return candidate
    try:
        candidate = osp.join(location, _metadata_package2module(package))
        if osp.exists(candidate):
            return candidate
    except ValueError:
        pass
    # e.g. an editable install, whose code is not next to its metadata
    return _spec_path(package) or candidate


def _with_fallback(original, fallback):
    """``original``, but ``fallback`` when ``original`` cannot import pkg_resources."""
    if getattr(original, _MARK, False):
        return original

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        except ImportError as err:
            if not _is_pkg_resources_error(err):
                raise
            return fallback(*args, **kwargs)

    setattr(wrapper, _MARK, True)
    return wrapper


def _patch_mmengine_package_utils():
    """Install the pkg_resources-free fallbacks into mmengine (and modules that imported them)."""
    try:
        package_utils = importlib.import_module('mmengine.utils.package_utils')
    except ImportError:
        return
    fallbacks = {
        'is_installed': _metadata_is_installed,
        'get_installed_path': _metadata_get_installed_path,
        'package2module': _metadata_package2module,
    }
    for name, fallback in fallbacks.items():
        original = getattr(package_utils, name, None)
        if original is None or getattr(original, _MARK, False):
            continue
        wrapper = _with_fallback(original, fallback)
        _replace_references(original, wrapper)


def _replace_references(original, wrapper):
    """Rebind every module-level name in mmengine/mmcv/mmdet modules that is ``original``."""
    for mod_name, module in list(sys.modules.items()):
        if module is None or not mod_name.startswith(_PATCHED_PREFIXES):
            continue
        namespace = getattr(module, '__dict__', None)
        if not namespace:
            continue
        for attr, value in list(namespace.items()):
            if value is original:
                setattr(module, attr, wrapper)
