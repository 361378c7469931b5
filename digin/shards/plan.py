"""Work plans: the items a stage will process, derived from its config and its inputs' manifests alone (no sample
is read), cut into work units; output shard j is unit j.

An `Item` is one piece of work with the output key it writes, the input samples it joins (role → key), a small
JSON payload handed to the stage (`sample["item"]`) and a relative cost (1 = one inversion, one optimisation).
The plan keeps the items in a fixed order and cuts them into contiguous units of about `items_per_shard` cost
each, independent of the world size: so a resume with another number of ranks, or another schedule, finds the
same units, and results are byte-identical whatever runs them. Units go to ranks round-robin (schedule=static:
unit j → rank j % world) or are claimed (schedule=dynamic, digin.shards.claims). The plan's hash (items, costs,
joins, payloads, cut) is recorded in the output manifest; resuming with another plan is refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from digin.errors import ConfigError
from digin.shards.manifest import config_hash

AUTO_UNITS = 1024  # items_per_shard=None: about this many units (≥ 8-16 per rank up to 64-128 ranks)
MAX_ITEMS_PER_SHARD = 100_000


@dataclass(frozen=True)
class Item:
    key: str  # the output key it writes
    joins: tuple = ()  # ((input role, input key), ...): the input samples it reads, by key
    data: dict | None = None  # JSON payload for the stage (sample["item"]); part of the plan's hash
    cost: float = 1.0

    def row(self) -> list:
        return [self.key, [list(j) for j in self.joins], self.data, self.cost]


def auto_items_per_shard(total_cost: float) -> int:
    """Units of about total/AUTO_UNITS cost: enough units that round-robin balances (≤ 5 % over the mean on
    64 ranks, ≤ 15 % on 256 for the reference tables) and few enough files (~1,000 per stage)."""
    return max(1, math.ceil(total_cost / AUTO_UNITS))


def check_items_per_shard(value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ITEMS_PER_SHARD:
        raise ConfigError(f"items_per_shard={value!r} is out of range: want an integer in 1..{MAX_ITEMS_PER_SHARD} "
                          "(or leave it unset for about 1,000 units)")


def cut_units(costs: list[float], capacity: float) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges of items, each of cost ≤ capacity (an item costlier than that is a unit of
    its own). Equal costs give units of exactly `capacity` items."""
    units, start, acc = [], 0, 0.0
    for i, c in enumerate(costs):
        if i > start and acc + c > capacity + 1e-9:
            units.append((start, i))
            start, acc = i, 0.0
        acc += c
    if start < len(costs):
        units.append((start, len(costs)))
    return units


@dataclass
class Plan:
    stage: str
    items: list[Item]
    items_per_shard: int | None = None  # None: auto
    counts: dict = field(default_factory=dict)  # what the plan was made from (e.g. pairs in the table, images)
    missing: dict = field(default_factory=dict)  # role → items whose joined key is not in that input's manifest
    units: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self):
        check_items_per_shard(self.items_per_shard)
        seen: set = set()
        for it in self.items:
            if it.key in seen:
                raise ConfigError(f"the {self.stage} plan lists output key {it.key!r} twice")
            seen.add(it.key)
        self.resolved_items_per_shard = self.items_per_shard or auto_items_per_shard(self.total_cost)
        self.units = cut_units([it.cost for it in self.items], self.resolved_items_per_shard)

    @property
    def total_cost(self) -> float:
        return float(sum(it.cost for it in self.items))

    @property
    def num_units(self) -> int:
        return len(self.units)

    def unit_items(self, j: int) -> list[Item]:
        s, e = self.units[j]
        return self.items[s:e]

    def unit_costs(self) -> list[float]:
        return [sum(it.cost for it in self.items[s:e]) for s, e in self.units]

    def hash(self) -> str:
        if not hasattr(self, "_hash"):
            self._hash = config_hash({"stage": self.stage, "items": [it.row() for it in self.items],
                                      "units": [list(u) for u in self.units]})
        return self._hash

    def record(self) -> dict:
        """What the output manifest records (the full unit → keys list goes to plan.json)."""
        return {"hash": self.hash(), "items": len(self.items), "units": self.num_units,
                "items_per_shard": self.resolved_items_per_shard, "cost": self.total_cost, "counts": self.counts,
                "missing": self.missing}

    def listing(self) -> dict:
        """plan.json: every unit's item keys and cost (for `digin verify` and status tools)."""
        return {"hash": self.hash(), "stage": self.stage,
                "units": [{"keys": [it.key for it in self.unit_items(j)], "cost": c}
                          for j, c in enumerate(self.unit_costs())]}


def join_items(keys, roles) -> list[Item]:
    """One item per key, reading that key from every input role (a stage that maps each input sample to one
    output sample: invert, caption, segment)."""
    return [Item(k, tuple((r, k) for r in roles)) for k in keys]


def drop_not_yet_present(items: list[Item], present: dict) -> tuple[list[Item], int]:
    """allow_incomplete: the items every input already has (a key missing now may be in an uncommitted shard, so
    its item is left out of the plan rather than rejected) and how many were left out."""
    kept = [it for it in items if all(k in present[r] for r, k in it.joins if r in present)]
    return kept, len(items) - len(kept)


def missing_joins(items: list[Item], present: dict) -> dict:
    """role → number of items whose key for that role is not among `present[role]` (sets of keys from the
    manifests): those items will be rejected, naming the key; `plan=true` shows the count before the run."""
    out = {}
    for role, keys in present.items():
        n = sum(1 for it in items for r, k in it.joins if r == role and k not in keys)
        if n:
            out[role] = n
    return out


# ---------------------------------------------------------------------------------------------- balance
def static_loads(unit_costs: list[float], world: int) -> list[float]:
    """Work per rank when unit j runs on rank j % world."""
    loads = [0.0] * world
    for j, c in enumerate(unit_costs):
        loads[j % world] += c
    return loads


def lpt_makespan(costs: list[float], world: int) -> float:
    """Longest-processing-time-first list schedule of single items on `world` ranks: what a schedule of these
    indivisible items achieves (optimal for equal costs, within 4/3 of optimal otherwise)."""
    import heapq

    loads = [0.0] * world
    for c in sorted(costs, reverse=True):
        heapq.heapreplace(loads, loads[0] + c)
    return max(loads, default=0.0)


def balance(unit_costs: list[float], item_costs: list[float], world: int) -> dict:
    """Per-rank work of schedule=static on `world` ranks: busiest ÷ mean, and the best a schedule of these
    indivisible items does (LPT over single items ÷ mean: a table of 14 pairs cannot keep 64 ranks busy)."""
    loads = static_loads(unit_costs, world)
    total = sum(unit_costs)
    mean = total / world if world else 0.0
    best = lpt_makespan(item_costs, world) / mean if mean else 1.0
    return {"world": world, "busiest": max(loads, default=0.0), "mean": mean,
            "busiest_over_mean": (max(loads) / mean) if mean else 1.0, "best_possible": best,
            "idle_ranks": sum(1 for x in loads if x == 0)}
