"""Watching which parameters a forward pass reads, for parameters used outside their module's forward.

Forward hooks only say which module is running; a parameter can be read by any code (a parent reading
`self.child.weight`, a tied weight). During a recording forward, ParamUseMode reports every
nn.Parameter passed to a torch function, so the caller can attach it to the innermost running module.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves


class ParamUseMode(TorchFunctionMode):
    """Calls on_use(param) for each parameter argument of each torch function while active, except
    while paused() is true (the caller's own bookkeeping on parameters)."""

    def __init__(self, on_use: Callable[[nn.Parameter], None], paused: Callable[[], bool] = lambda: False):
        super().__init__()
        self.on_use = on_use
        self.paused = paused

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.paused():
            for leaf in tree_leaves((args, kwargs)):
                if isinstance(leaf, nn.Parameter):
                    self.on_use(leaf)
        return func(*args, **kwargs)
