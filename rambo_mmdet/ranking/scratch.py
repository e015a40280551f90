"""Reusable CPU buffers for the ranker's per-score temporaries.

The dense strategy needs a few temporaries of one element per score (the cells, int32; flag
gathers, bool; a second problem's gradient, float32): 20 MB each at 5M scores. On CPU, glibc
serves blocks that large with fresh pages (``mmap``, or a heap top it trimmed), so every call
pays a page fault per 4 KB before doing any work (measured: ~18k faults, about a quarter of a 5M
call). A :class:`ScratchPool` keeps such blocks between calls, as CUDA's caching allocator does
on the GPU (where the pool is not used: it hands out plain ``torch.empty`` there).

Between calls the pool holds the blocks one call needed at the same time (at most
:data:`MAX_FREE` of them; about 9 bytes per score of the largest call for the shipped dense
loss). :func:`release_scratch` frees them.
"""
import threading
from typing import List

import torch
from torch import Tensor

__all__ = ['ScratchPool', 'scratch_pool', 'release_scratch', 'MAX_FREE', 'MIN_BYTES']

#: At most this many free blocks are kept (the smallest beyond are dropped).
MAX_FREE = 6
#: Blocks below this size come from the allocator (no page-fault cost worth saving).
MIN_BYTES = 1 << 20


class ScratchPool(threading.local):
    """Free flat byte blocks, per thread; :meth:`take` views one as a typed tensor.

    A caller takes blocks into an ``owner`` list and gives the whole list back with
    :meth:`give` when the temporaries are dead. Blocks that are never given back (a forward
    without its backward) are simply freed with their last reference.
    """

    def __init__(self) -> None:
        self.free: List[Tensor] = []

    def take(self, numel: int, dtype: torch.dtype, device: torch.device,
             owner: List[Tensor]) -> Tensor:
        """An uninitialised ``[numel]`` tensor of ``dtype`` (a pooled block on CPU)."""
        nbytes = numel * dtype.itemsize
        if torch.device(device).type != 'cpu' or nbytes < MIN_BYTES:
            return torch.empty(numel, dtype=dtype, device=device)
        fitting = [block for block in self.free if block.numel() >= nbytes]
        if fitting:
            block = min(fitting, key=Tensor.numel)
            self.free = [b for b in self.free if b is not block]
        else:
            # a quarter of headroom, so that slightly larger calls (other image sizes) reuse it
            block = torch.empty(nbytes + nbytes // 4, dtype=torch.uint8)
        owner.append(block)
        return block[:nbytes].view(dtype)

    def give(self, owner: List[Tensor]) -> None:
        """Return the blocks of ``owner`` (and empty it); their tensors must be dead."""
        self.free.extend(owner)
        owner.clear()
        if len(self.free) > MAX_FREE:
            self.free.sort(key=Tensor.numel, reverse=True)
            del self.free[MAX_FREE:]

    def held_bytes(self) -> int:
        return sum(block.numel() for block in self.free)


scratch_pool = ScratchPool()


def release_scratch() -> None:
    """Free the calling thread's pooled blocks."""
    scratch_pool.free.clear()
