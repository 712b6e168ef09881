"""ZeRO-3 units of sharding: which parameters are gathered together, and which modules gather what.

Note [Stage-3 units]
A unit is a set of parameters stored as one flat buffer per (param group, dtype) (Note [Flat layout])
and gathered / freed together. Every parameter of the model belongs to exactly one unit:
- policy None (the default): each module that registers parameters directly is a unit of those
  parameters (a parameter registered under several modules, a tied weight, belongs to the first in
  `named_modules()` order);
- a sequence of module classes, or a predicate `fn(module) -> bool` (FSDP's auto-wrap policy): each
  matching module is a unit of the parameters in its subtree not claimed by a matching descendant;
  parameters left over belong to a root unit of the model itself.
A module "needs" the units whose parameters its own forward reads: the unit it roots, the owners of
the parameters it registers directly (so a module using a tied weight gathers the owner's unit), and
parameters declared or detected as used in its forward (`register_external_parameter`). Only modules
that need something (and the root) carry hooks; a need already covered by an enclosing hooked module
is dropped. Units whose needing modules enclose other hooked modules (the root unit) or that are
needed by more than one module (tied weights) stay gathered across other units' work: they are the
"pinned" units of the memory plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn

UnitPolicy = None | Sequence[type] | Callable[[nn.Module], bool]


@dataclass
class UnitSpec:
    """One unit: its name (module path, "" for the root), its parameters in registration order."""

    name: str
    params: list[nn.Parameter]
    param_names: list[str]


@dataclass
class UnitPlan:
    """Units of a model and the modules that gather them (see Note [Stage-3 units])."""

    units: list[UnitSpec]
    needs: dict[nn.Module, list[int]]  # hooked module -> unit indices, in first-need order
    owner: dict[int, int] = field(default_factory=dict)  # id(param) -> unit index

    def pinned(self) -> set[int]:
        return pinned_units(self.needs)


def pinned_units(needs: dict[nn.Module, list[int]]) -> set[int]:
    """Units that stay gathered across other units' work: needed by a hooked module that encloses
    another hooked module, or needed by more than one module (see Note [Stage-3 units])."""
    count: dict[int, int] = {}
    for us in needs.values():
        for u in us:
            count[u] = count.get(u, 0) + 1
    hooked = set(needs)
    enclosing: set[int] = set()
    for m, us in needs.items():
        if any(c in hooked for c in m.modules() if c is not m):
            enclosing.update(us)
    return enclosing | {u for u, c in count.items() if c > 1}


def _matcher(policy: UnitPolicy) -> Callable[[nn.Module], bool] | None:
    if policy is None:
        return None
    if callable(policy) and not isinstance(policy, type):
        return policy
    if isinstance(policy, type):
        policy = (policy,)
    if not isinstance(policy, Sequence) or not all(isinstance(c, type) for c in policy):
        raise TypeError(
            f"units must be None, a sequence of nn.Module classes or a predicate fn(module) -> bool, "
            f"got {policy!r}"
        )
    classes = tuple(policy)
    return lambda m: isinstance(m, classes)


def plan_units(model: nn.Module, policy: UnitPolicy = None) -> UnitPlan:
    """Splits every parameter of `model` into units and finds the modules that gather them."""
    match = _matcher(policy)
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    owner: dict[int, int] = {}
    units: list[UnitSpec] = []
    unit_of_module: dict[nn.Module, int] = {}

    def add_unit(name: str, params: list[tuple[str, nn.Parameter]]) -> int:
        units.append(UnitSpec(name, [p for _, p in params], [n for n, _ in params]))
        for _, p in params:
            owner[id(p)] = len(units) - 1
        return len(units) - 1

    if match is None:
        for mname, m in model.named_modules():
            own = [
                (f"{mname}.{n}" if mname else n, p)
                for n, p in m.named_parameters(recurse=False)
                if id(p) not in owner
            ]
            if own:
                unit_of_module[m] = add_unit(mname, own)
    else:
        roots = [(n, m) for n, m in model.named_modules() if m is not model and match(m)]
        if not roots and not match(model):
            raise ValueError(
                f"the unit policy {policy!r} matched no module of {type(model).__name__}; give module "
                "classes or a predicate that selects some of its submodules (or units=None)"
            )
        # Deepest first, so a matching module claims only what no matching descendant claimed.
        for mname, m in sorted(roots, key=lambda nm: -nm[0].count(".") if nm[0] else 0):
            own = [
                (f"{mname}.{n}", p)
                for n, p in m.named_parameters(remove_duplicate=False)
                if id(p) not in owner
            ]
            own = list({id(p): (n, p) for n, p in own}.values())
            if own:
                unit_of_module[m] = add_unit(mname, own)
        # Stable unit order: module order, not depth order.
        order = sorted(range(len(units)), key=lambda u: list(names.values()).index(units[u].name))
        remap = {old: new for new, old in enumerate(order)}
        units = [units[u] for u in order]
        owner = {k: remap[v] for k, v in owner.items()}
        unit_of_module = {m: remap[u] for m, u in unit_of_module.items()}
        left = [(n, p) for n, p in model.named_parameters() if id(p) not in owner]
        if left:
            unit_of_module[model] = add_unit("", left)

    needs: dict[nn.Module, list[int]] = {}
    for m in model.modules():
        want = [unit_of_module[m]] if m in unit_of_module else []
        for p in m.parameters(recurse=False):
            u = owner[id(p)]
            if u not in want:
                want.append(u)
        if want:
            needs[m] = want
    _drop_covered(model, needs, set())
    if model not in needs:
        needs = {model: [], **needs}
    return UnitPlan(units, needs, owner)


def _drop_covered(m: nn.Module, needs: dict[nn.Module, list[int]], covered: set[int]) -> None:
    """Removes needs an enclosing hooked module already gathers; modules left needing nothing lose hooks."""
    if m in needs:
        needs[m] = [u for u in needs[m] if u not in covered]
        if not needs[m]:
            del needs[m]
    inner = covered | set(needs.get(m, []))
    for c in m.children():
        _drop_covered(c, needs, inner)


def working_set(unit_bytes: list[int], pinned: set[int], prefetch: int) -> int:
    """Gathered bytes the stage-3 schedule can hold at once: the pinned units plus the (prefetch + 1)
    largest others (the one computing and the ones prefetched or kept for reuse)."""
    rest = sorted((b for i, b in enumerate(unit_bytes) if i not in pinned), reverse=True)
    return sum(unit_bytes[i] for i in pinned) + sum(rest[: prefetch + 1])
