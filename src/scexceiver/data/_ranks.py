"""A process's place among the DDP processes, for samplers that shard themselves."""

from __future__ import annotations

import torch


def replica_rank(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """``(num_replicas, rank)``, each read from :mod:`torch.distributed` when ``None``.

    Without an initialised process group they default to one process of rank 0.

    Raises
    ------
    ValueError
        If ``rank`` is not in ``[0, num_replicas)``.
    """
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if num_replicas is None:
        num_replicas = torch.distributed.get_world_size() if distributed else 1
    if rank is None:
        rank = torch.distributed.get_rank() if distributed else 0
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} is not in [0, num_replicas={num_replicas}).")
    return num_replicas, rank
