"""Every process of a torch.distributed run must measure the same model on the same data: the
sums they all-reduce are meant to be one measurement cut into shards. The command line is the
same on every rank (cli.py compares it), but the files it names may differ between machines
(another checkpoint, another copy of the data); a mixture of them would be reported as one
network's numbers. So every command (command_inputs.setup) and path_gradients compare the
model's and the data's fingerprints (fingerprint.py; lesion sweeps compare theirs with the
sweep's settings) and every rank refuses when one differs.
"""
from __future__ import annotations

from .. import distributed
from ..errors import PathensError
from .fingerprint import fingerprint_model, fingerprint_tensors


def data_fingerprint(view, data) -> str:
    """The fingerprint of data as a lesion sweep records it: a batches.Data, an (inputs,
    targets) pair, or a loader."""
    from .batches import Data
    if isinstance(data, Data):
        return data.fingerprint()
    if isinstance(data, tuple):
        return fingerprint_tensors(list(data))
    return Data(view, data, None).fingerprint()


def check_same_inputs(view, data) -> None:
    """Under torch.distributed, a one-line PathensError on every rank if any rank's model
    weights or data differ from rank 0's (naming the rank and its host); nothing in one
    process. Collective: every rank must call it."""
    if not distributed.active():
        return
    mine = (fingerprint_model(view.model), data_fingerprint(view, data), distributed.host())
    every = distributed.gather(mine)
    for what, k, fix in (("model weights", 0, "the same checkpoint"),
                         ("data", 1, "the same data files")):
        for r, theirs in enumerate(every):
            if theirs[k] != every[0][k]:
                raise PathensError(
                    f"rank {r} (on {theirs[2]}) holds other {what} than rank 0 (on "
                    f"{every[0][2]}): fingerprints {theirs[k]} and {every[0][k]}; the same "
                    f"command read different files (do they differ between the machines?): "
                    f"give every process {fix}")
