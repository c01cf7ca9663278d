"""More than one process (torchrun): examples sharded across ranks, sums all-reduced.

Every measurement pathens makes is a sum over examples: a lesion condition's error count, loss
sum and number of items; the squared norm, by path length, of the gradient's rows (disjoint
examples); the number of items a mean runs over. So each rank measures its own shard, the sums
are all-reduced in float64 (integers exact up to 2^53), and every rank then holds the numbers
one process would have computed on all the examples (the losses to rounding).

    torchrun --nproc_per_node 2 -m pathens lesion CKPT ...    # the command line, as it is
    torch.distributed.init_process_group("gloo")              # or from Python: then every
    pathens.lesion.delete_each(view, data)                    # analysis shards and reduces

Shards are contiguous and without padding (unlike DistributedSampler, which repeats examples
to make the shards equal): rank r of W holds examples [r N / W, (r + 1) N / W). Rank 0 alone
writes files; what it read from disk (finished conditions) is broadcast to the others.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
from datetime import timedelta
from typing import Any, Optional

import numpy as np
import torch

from .errors import PathensError

TIMEOUT = timedelta(minutes=30)  # a rank that stops answering fails the others after this
# how long a process started with WORLD_SIZE > 1 waits for the others to join (seconds; a lone
# rank used to wait TIMEOUT, silently)
RENDEZVOUS_ENV, RENDEZVOUS_DEFAULT = "PATHENS_RENDEZVOUS_TIMEOUT", 60.0


def active() -> bool:
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


def rank() -> int:
    return torch.distributed.get_rank() if active() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if active() else 1


def is_writer() -> bool:
    """True on the process that writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def launched() -> bool:
    """True under torchrun (or any launcher that sets WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str) -> str:
    """Join the process group torchrun describes (gloo on CPUs, NCCL on GPUs) and return this
    rank's device: cuda:LOCAL_RANK for --device cuda, else the device given."""
    if not launched() or active():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", local + 1))
    cuda = device.startswith("cuda")
    if cuda:  # checked alike on every rank of a node, so that rank 0 says it too
        have = torch.cuda.device_count()
        if per_node > have:
            raise PathensError(f"--device cuda under torchrun: {per_node} processes on this node "
                               f"but {have} GPU{'s' * (have != 1)}; start at most {have} per "
                               f"node (--nproc_per_node {have}) or use --device cpu")
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    _join("nccl" if cuda else "gloo")
    return device


def _join(backend: str) -> None:
    """init_process_group from torchrun's environment, the other processes awaited at most
    PATHENS_RENDEZVOUS_TIMEOUT seconds (default 60; a line on stderr says what this process
    waits for once it has waited a while), then TIMEOUT for each collective. Under torchrun's
    own agent (TORCHELASTIC_USE_AGENT_STORE) the agents have met already: joined as they
    say."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        torch.distributed.init_process_group(backend, timeout=TIMEOUT)
        return
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    world = os.environ.get("WORLD_SIZE")
    if missing:
        raise PathensError(f"WORLD_SIZE={world} asks for {world} processes, but "
                           f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                           f"set: start them with torchrun (--nproc_per_node {world}), or unset "
                           f"WORLD_SIZE to run in one process")
    rank, world = int(os.environ["RANK"]), int(world)
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    raw = os.environ.get(RENDEZVOUS_ENV, str(RENDEZVOUS_DEFAULT))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise PathensError(f"{RENDEZVOUS_ENV}={raw!r} must be a positive number of seconds")
    note = threading.Timer(min(5.0, seconds / 2), lambda: print(
        f"pathens: rank {rank} of {world}: waiting up to {seconds:g} s for the other "
        f"{world - 1} process{'es' * (world > 2)} to join at {where} ({RENDEZVOUS_ENV})",
        file=sys.stderr, flush=True))
    note.daemon = True
    note.start()
    try:
        store = torch.distributed.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
            is_master=rank == 0, timeout=timedelta(seconds=seconds), wait_for_workers=True,
            multi_tenant=True)  # as torch's env:// rendezvous makes it
    except RuntimeError as err:  # DistStoreError / DistNetworkError: no one came
        raise RendezvousError(f"rank {rank} of {world}: the other processes did not join within "
                           f"{seconds:g} s at {where} ({str(err).strip().splitlines()[0][:120]}):"
                           f" start all {world} (torchrun --nproc_per_node {world}, or the same "
                           f"command on every node), or unset WORLD_SIZE to run in one process; "
                           f"{RENDEZVOUS_ENV} sets the wait in seconds") from None
    finally:
        note.cancel()
    store.set_timeout(TIMEOUT)  # joined: from now on, the collectives' patience
    torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=world,
                                         timeout=TIMEOUT)


def _device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_sum(values) -> np.ndarray:
    """Element-wise sum over ranks of an array of numbers, in float64 (identity in one process)."""
    array = np.asarray(values, dtype=np.float64)
    if not active():
        return array
    t = torch.as_tensor(array, device=_device()).clone()
    torch.distributed.all_reduce(t)
    return t.cpu().numpy()


def all_sum_tensor(t: torch.Tensor) -> torch.Tensor:
    """A tensor summed over ranks (in place; identity in one process)."""
    if active():
        moved = t.to(_device())
        torch.distributed.all_reduce(moved)
        t.copy_(moved)
    return t


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (any picklable object; identity in one process)."""
    if not active():
        return obj
    box = [obj if rank() == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0, device=_device())
    return box[0]


def gather(obj: Any) -> list:
    """[rank 0's obj, rank 1's obj, ...] on every rank."""
    if not active():
        return [obj]
    out = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def shard(n: int) -> slice:
    """This rank's contiguous share of n examples: every example on exactly one rank."""
    r, w = rank(), world_size()
    if w > n:
        raise PathensError(f"{n} examples cannot be shared among {w} processes: every process "
                           f"needs at least one; use fewer processes or more examples")
    return slice(r * n // w, (r + 1) * n // w)


def agree(check) -> Any:
    """Run check() on rank 0 only (it touches shared state: the output folder) and return its
    result on every rank; if it fails, every rank fails (rank 0 with its own error, the others
    with Stopped), so that no rank waits for the others forever."""
    result, error = None, None
    if is_writer():
        try:
            result = check()
        except Exception as err:  # noqa: BLE001 - whatever it is, the others must stop too
            error = err
    if broadcast(None if error is None else str(error)) is not None:
        if is_writer():
            raise error
        raise Stopped("rank 0 stopped (its message says why)")
    return broadcast(result)


def all_agree(step) -> Any:
    """Run step() on every rank (loading and checking its inputs) and stop every rank if any
    failed: rank 0 raises the first failing rank's PathensError (naming the rank), the others
    Stopped. Returns this rank's own result. One process: step()."""
    if not active():
        return step()
    result, error = None, None
    try:
        result = step()
    except PathensError as err:
        error = str(err)
    errors = gather(error)
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if failed:
        r, message = failed[0]
        if is_writer():
            raise PathensError(message if r == 0 else f"rank {r}: {message}")
        raise Stopped(message)
    return result


def same_everywhere(what: str, value) -> None:
    """Refuse to go on when the ranks were started with different `value`s (e.g. their command
    lines), naming the first rank that differs."""
    values = gather(value)
    for r, v in enumerate(values):
        if v != values[0]:
            raise PathensError(f"the processes were started with different {what}: rank {r} "
                               f"differs from rank 0 ({host()}); start every rank with the same "
                               f"command")


class RendezvousError(PathensError):
    """This process found no others to join: said by every rank (no rank 0 speaks for it)."""


class Stopped(PathensError):
    """Raised on ranks other than 0 when rank 0 reported an error (printed there once)."""


def host() -> str:
    return socket.gethostname()


def describe() -> Optional[str]:
    """'rank r of W (backend)' under torch.distributed, else None (recorded in configs)."""
    if not active():
        return None
    return f"{world_size()} processes ({torch.distributed.get_backend()})"
