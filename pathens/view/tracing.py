"""Finding a model's stem, blocks and head without a model adapter.

fx_parts: torch.fx traces the model's forward with the block modules kept as leaves, checks that
    they form a chain (stem -> block -> block -> ... -> head) and cuts the graph around them.
CapturedStem: the stem of a model adapter that gives none: the model's own forward, stopped
    by a hook where it calls its first block; what that block receives is the stem's output
    (the residual stream) and the context (its other arguments, e.g. an attention mask).
"""
from __future__ import annotations


import torch
from torch import fx, nn

from ..adapters import ModelParts
from ..adapters.calls import Reached, block_call
from ..errors import WrapError
from ..data.inputs import call_model, logits_of


class _BlockTracer(fx.Tracer):
    """Traces through everything but the residual blocks, which stay single calls."""

    def __init__(self, block_types: set):
        super().__init__()
        self.block_types = tuple(block_types)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.block_types) or super().is_leaf_module(m, qualname)


def fx_parts(model: nn.Module, block_modules: list) -> ModelParts:
    """ModelParts of a model whose forward torch.fx can trace."""
    try:
        graph = _BlockTracer(set(map(type, block_modules))).trace(model)
    except Exception as err:  # fx raises many kinds; all mean "forward is not traceable"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WrapError(f"cannot trace {type(model).__name__}.forward with torch.fx ({first}); "
                        f"name its blocks and head with pathens.register_model (a model adapter) "
                        f"instead") from None
    gm = fx.GraphModule(model, graph)
    stem, block_nodes, head = _split(gm, model, {id(m) for m in block_modules})
    return ModelParts(blocks=[gm.get_submodule(n.target) for n in block_nodes], stem=stem,
                      head=_Logits(head))


class _Logits(nn.Module):
    """The traced head, returning the logits of whatever the model returns."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.graph_head = head

    def forward(self, h):
        return logits_of(self.graph_head(h))


def _split(gm: fx.GraphModule, model: nn.Module, block_ids: set):
    """Cut the traced graph into (stem GraphModule, block call nodes in order, head GraphModule)."""
    is_block = lambda n: n.op == "call_module" and id(gm.get_submodule(n.target)) in block_ids
    nodes = list(gm.graph.nodes)
    block_nodes = [n for n in nodes if is_block(n)]
    if not block_nodes:
        raise WrapError(f"{type(model).__name__}.forward calls none of its residual blocks")
    targets = [n.target for n in block_nodes]
    reused = {t for t in targets if targets.count(t) > 1}
    if reused:
        raise WrapError(f"block {sorted(reused)[0]} is called more than once in "
                        f"{type(model).__name__}.forward; pathens needs each block used once")
    for node in block_nodes:
        if node.kwargs:
            raise WrapError(f"block {node.target} is called with keyword arguments "
                            f"({', '.join(node.kwargs)}) in the traced {type(model).__name__}."
                            f"forward; name its blocks and head with pathens.register_model "
                            f"(a model adapter) instead")
    for prev, node in zip(block_nodes, block_nodes[1:]):
        if node.args != (prev,) or len(prev.users) != 1:
            raise WrapError(
                f"blocks {prev.target} and {node.target} are not chained: the output of "
                f"{prev.target} must feed {node.target} directly and nothing else "
                f"(found something between or beside them)")
    first, last = block_nodes[0], block_nodes[-1]
    if len(first.args) != 1 or first.kwargs or not isinstance(first.args[0], fx.Node):
        raise WrapError(f"block {first.target} must be called with a single tensor")

    # Stem: every node the first block's input depends on; it takes the model's inputs.
    stem_graph, env = fx.Graph(), {}
    needed = _ancestors(first.args[0])
    for n in nodes:
        if n.op == "placeholder" or n in needed:
            env[n] = stem_graph.node_copy(n, lambda a: env[a])
    stem_graph.output(env[first.args[0]])

    # Head: every node after the last block; it may use only the last block's output.
    head_graph = fx.Graph()
    env = {last: head_graph.placeholder("h")}
    for n in nodes[nodes.index(last) + 1:]:
        missing = [a for a in n.all_input_nodes if a not in env]
        if missing:
            raise WrapError(f"the head of {type(model).__name__} uses {missing[0].name}, computed "
                            f"before the last block {last.target}; pathens needs the head to "
                            f"depend on the last block's output only")
        if n.op == "output":
            head_graph.output(fx.map_arg(n.args[0], lambda a: env[a]))
        else:
            env[n] = head_graph.node_copy(n, lambda a: env[a])
    return fx.GraphModule(gm, stem_graph), block_nodes, fx.GraphModule(gm, head_graph)


def _ancestors(node: fx.Node) -> set:
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(n.all_input_nodes)
    return seen



class CapturedStem:
    """inputs -> (h, ctx): the model's own forward up to (not into) its first block."""

    def __init__(self, model: nn.Module, first_block: nn.Module):
        self.model, self.first_block = model, first_block

    @staticmethod
    def _stop(module, args, kwargs):
        raise Reached(*block_call(module, args, kwargs))

    def __call__(self, inputs):
        handle = self.first_block.register_forward_pre_hook(self._stop, with_kwargs=True)
        try:
            call_model(self.model, inputs)
        except Reached as reached:
            if not torch.is_tensor(reached.h):
                raise WrapError(f"the first block of {type(self.model).__name__} receives "
                                f"{type(reached.h).__name__}, not a tensor") from None
            return reached.h, reached.ctx
        finally:
            handle.remove()
        raise WrapError(f"{type(self.model).__name__}.forward never calls its first block "
                        f"({type(self.first_block).__name__}); give the model adapter a stem")
