"""Count the operators that make the host wait for a CUDA device, on any device (pure torch).

On CUDA, an operator whose output size or value the host must read (``nonzero``, boolean-mask
indexing, ``.item()`` / ``bool()`` / ``.tolist()``, ``bincount``'s range check, ``unique``, a
copy from host data) blocks the host until the GPU has caught up; ``torch.cuda.set_sync_debug_mode``
counts them, but only on a CUDA device. :class:`SyncAudit` records the same operators as they are
dispatched, on CPU as well, so that code meant for the GPU can be kept free of them (and tested
for it) on a machine without one. It is a model of CUDA's behaviour: on a GPU,
``set_sync_debug_mode`` is the authority (``tools/benchmark_loss.py --device cuda`` reports both).

Example::

    with SyncAudit() as audit:
        loss.backward()
    assert not audit.events, audit.summary()
"""
from collections import Counter
from typing import Dict, List, Optional

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ['SyncAudit', 'sync_reason']

_aten = torch.ops.aten

#: operators that synchronise on CUDA whatever their arguments, with the reason
_ALWAYS = {
    _aten._local_scalar_dense: 'reads a value on the host (.item(), bool(), int(), .tolist())',
    _aten.nonzero: 'nonzero (output size)',
    _aten.argwhere: 'argwhere (output size)',
    _aten.masked_select: 'masked_select (output size)',
    _aten.bincount: 'bincount (reads the input range on the host)',
    _aten._unique2: 'unique (output size)',
    _aten.unique_dim: 'unique (output size)',
    _aten.unique_consecutive: 'unique_consecutive (output size)',
    _aten.histc: 'histc (reads the input range on the host)',
    _aten.equal: 'equal (returns a Python bool)',
    _aten.lift_fresh: 'tensor from host data (a host-to-device copy on CUDA)',
}
#: tensor methods that read a tensor on the host without dispatching an operator on CPU
#: (on CUDA they copy it to the host first)
_HOST_READS = {
    torch.Tensor.tolist: 'reads a value on the host (.item(), bool(), int(), .tolist())',
    torch.Tensor.numpy: 'reads the tensor on the host (.numpy())',
}
_INDEXING = (_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default,
             _aten._index_put_impl_.default)


def _is_mask(index) -> bool:
    return torch.is_tensor(index) and index.dtype in (torch.bool, torch.uint8)


def sync_reason(func, args, kwargs) -> Optional[str]:
    """Why the aten operator ``func`` called with ``args`` / ``kwargs`` synchronises on CUDA,
    or ``None`` when it does not (as far as this model knows)."""
    reason = _ALWAYS.get(func.overloadpacket)
    if reason is not None:
        return reason
    if func in _INDEXING and len(args) > 1 and any(_is_mask(i) for i in args[1]):
        return 'boolean-mask indexing (output size)'
    if func.overloadpacket is _aten.repeat_interleave and kwargs.get('output_size') is None:
        return 'repeat_interleave without output_size'
    if func.overloadpacket in (_aten._to_copy, _aten.copy_):
        source = args[1] if func.overloadpacket is _aten.copy_ else args[0]
        target = args[0].device if func.overloadpacket is _aten.copy_ else kwargs.get('device')
        if target is not None and torch.is_tensor(source) \
                and torch.device(target).type != source.device.type:
            return f'copy between devices ({source.device.type} -> {torch.device(target).type})'
    return None


class _HostReads(TorchFunctionMode):
    """Records the :data:`_HOST_READS` methods into ``events``."""

    def __init__(self, events: List[str]) -> None:
        super().__init__()
        self.events = events

    def __torch_function__(self, func, types, args=(), kwargs=None):
        reason = _HOST_READS.get(func)
        if reason is not None:
            self.events.append(f'Tensor.{func.__name__}: {reason}')
        return func(*args, **(kwargs or {}))


class SyncAudit(TorchDispatchMode):
    """Context manager recording every operator that would synchronise on CUDA: the dispatched
    aten operators (:func:`sync_reason`) and the tensor methods that read on the host without
    one on CPU (``.tolist()``, ``.numpy()``).

    Attributes:
        events (list of str): ``'<operator>: <reason>'``, in call order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: List[str] = []
        self._host_reads = _HostReads(self.events)

    def __enter__(self):
        self._host_reads.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._host_reads.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        reason = sync_reason(func, args, kwargs)
        if reason is not None:
            self.events.append(f'{func}: {reason}')
        return func(*args, **kwargs)

    def counts(self) -> Dict[str, int]:
        """Events per ``'<operator>: <reason>'``."""
        return dict(Counter(self.events))

    def summary(self) -> str:
        return '; '.join(f'{count} x {event}' for event, count in self.counts().items()) \
            or 'no synchronising operator'
