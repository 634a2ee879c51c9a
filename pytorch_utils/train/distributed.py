"""torch.distributed helpers: the engine works the same with or without ``torchrun`` (call :func:`init_distributed`
first; only rank 0 logs and writes files)."""
import os
from typing import Tuple

import torch
import torch.distributed as dist

from pytorch_utils.errors import ConfigError


def is_distributed() -> bool:
    """True inside an initialized process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """True on rank 0, the only rank that prints and writes checkpoints/plots."""
    return get_rank() == 0


def launched_by_torchrun() -> bool:
    """True when the torchrun environment variables are set."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def init_distributed(backend: str = None, device=None) -> Tuple[int, int, torch.device]:
    """Join torchrun's process group (nccl on GPU, gloo on CPU) -> ``(rank, world_size, device)``; outside torchrun
    ``(0, 1, cuda-or-cpu)``. ``device="cpu"`` or ``backend="gloo"`` keeps ranks on the CPU, else rank ``LOCAL_RANK``
    takes GPU ``LOCAL_RANK``. ConfigError for more ranks than GPUs or a device naming one GPU."""
    if not launched_by_torchrun():
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    local_rank = int(os.environ["LOCAL_RANK"])
    wanted = None if device is None or str(device) == "auto" else torch.device(device)
    if wanted is not None and wanted.type == "cuda" and wanted.index is not None:
        raise ConfigError(f"device {str(wanted)!r} names one GPU, but under torchrun each rank takes the GPU of its "
                          "LOCAL_RANK; pass device='cuda' (or device='cpu')")
    use_cuda = torch.cuda.is_available() and backend != "gloo" and (wanted is None or wanted.type == "cuda")
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"torchrun started rank {local_rank} on a node with {torch.cuda.device_count()} GPU(s); "
                              "use torchrun --nproc_per_node <= the number of GPUs, or device='cpu'")
        torch.cuda.set_device(local_rank)
    if not is_distributed():
        dist.init_process_group(backend=backend or ("nccl" if use_cuda else "gloo"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def cleanup_distributed() -> None:
    """Leave the process group if one is initialized, after every rank got here: a rank that tears its gloo
    connections down while rank 0 still writes its files can abort ("terminate called without an active exception",
    seen once in CI: the torchrun CLI test on the CPU)."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` across ranks (returns it unchanged when not distributed)."""
    if not is_distributed():
        return tensor
    out = tensor.clone()
    if dist.get_backend() == "gloo" and out.dtype == torch.float64 and out.device.type != "cpu":
        out = out.cpu()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def barrier() -> None:
    """Wait for all ranks (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (returned unchanged when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
