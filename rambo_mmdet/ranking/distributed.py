"""Gathering variable-length batches across data-parallel ranks (pure ``torch.distributed``).

Ranking losses are not sums over samples: under data parallelism each rank would rank only its
own share of the batch. :func:`gather_rows` gives every rank the rows of all ranks, concatenated in
rank order, so that a ranking loss can be computed on the global batch.

The helpers work with any backend (``gloo`` on CPU tensors, ``nccl`` on CUDA tensors): every
buffer they communicate is allocated on the device of the input tensor, nothing is moved to a
device of its own choosing. Everything gathered is detached (no gradient flows through the
collectives); the caller puts its own differentiable rows back in place of its slice.

Each helper is a collective: every rank of the group must call it, the same number of times and
in the same order, or the ranks that did call it wait forever (until the process group timeout).
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ['is_distributed', 'get_rank_and_world_size', 'all_gather_ints', 'gather_rows',
           'resolve_global_batch']


def is_distributed(group=None) -> bool:
    """Whether ``torch.distributed`` is initialised with more than one rank (in ``group``)."""
    return (dist.is_available() and dist.is_initialized()
            and dist.get_world_size(group) > 1)


def get_rank_and_world_size(group=None) -> Tuple[int, int]:
    """``(rank, world_size)`` of this process in ``group``; ``(0, 1)`` when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def resolve_global_batch(option) -> bool:
    """``'auto'``: on when distributed with world size > 1; ``True``/``False``: forced.

    ``True`` without an initialised process group of more than one rank is the single-process
    case (the global batch is the local batch), not an error.
    """
    if option == 'auto':
        return is_distributed()
    if isinstance(option, bool):
        return option and is_distributed()
    raise ValueError(f"global_batch must be 'auto', True or False, got {option!r}")


def all_gather_ints(values: Sequence[int], device: torch.device, group=None) -> Tensor:
    """All-gather a few integers per rank (one collective): ``[world_size, len(values)]`` int64
    on ``device``. Not distributed: ``values`` as a ``[1, k]`` tensor."""
    local = torch.tensor([list(values)], dtype=torch.int64, device=device)
    if not is_distributed(group):
        return local
    out = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, local, group=group)
    return torch.cat(out)


def gather_rows(tensor: Tensor, sizes: Optional[Sequence[int]] = None,
                group=None) -> Tuple[Tensor, slice]:
    """Concatenate the rows of ``tensor`` of every rank, in rank order.

    Ranks may hold different numbers of rows (zero included); the other dimensions and the dtype
    must agree. The row counts are all-gathered first (unless given), each rank pads its rows to
    the largest count, the padded blocks are all-gathered, and the padding is dropped.

    Args:
        tensor (Tensor): ``[n_r, *rest]`` on this rank (detached for the gather; bool is sent as
            uint8, as not every backend reduces bool).
        sizes (Sequence[int], optional): the row counts of all ranks, if already known (saves a
            collective; e.g. from :func:`all_gather_ints`). ``sizes[rank]`` must equal ``n_r``.
        group: process group (default: the world).

    Returns:
        tuple: ``global_rows`` ``[sum_r n_r, *rest]`` (detached, same dtype and device as
        ``tensor``) and ``local_slice`` (the rows of this rank inside ``global_rows``). Not
        distributed: ``(tensor.detach(), slice(0, n))``.
    """
    tensor = tensor.detach()
    rank, world_size = get_rank_and_world_size(group)
    if world_size == 1:
        return tensor, slice(0, tensor.shape[0])
    if sizes is None:
        sizes = all_gather_ints([tensor.shape[0]], tensor.device, group)[:, 0].tolist()
    sizes = [int(size) for size in sizes]
    if len(sizes) != world_size or sizes[rank] != tensor.shape[0]:
        raise ValueError(f'gather_rows: sizes {sizes} do not match world size {world_size} and '
                         f'the {tensor.shape[0]} local rows of rank {rank}')
    start = sum(sizes[:rank])
    local_slice = slice(start, start + sizes[rank])
    longest = max(sizes)
    if longest == 0:
        return tensor, local_slice
    is_bool = tensor.dtype == torch.bool
    send = tensor.to(torch.uint8) if is_bool else tensor
    if send.shape[0] < longest:
        send = torch.cat([send, send.new_zeros(longest - send.shape[0], *send.shape[1:])])
    send = send.contiguous()
    blocks: List[Tensor] = [torch.empty_like(send) for _ in range(world_size)]
    dist.all_gather(blocks, send, group=group)
    rows = torch.cat([block[:size] for block, size in zip(blocks, sizes)])
    return (rows.bool() if is_bool else rows), local_slice
