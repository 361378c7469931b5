"""`digin bench workloads=[plan]`: the work plans of the reference's own tables, counted without a GPU.

Rows (one JSON object each):
  plan      per table × world size: items, units, busiest rank ÷ mean rank work under schedule=static, and the best
            any schedule could do with these indivisible items (a table of 14 pairs cannot keep 64 ranks busy)
  schedule  a simulated run (event by event, unit costs from the cost rows): 25 % of the ranks at half speed, one
            rank killed halfway; schedule=dynamic (claims with a lease) against the ideal (the work spread
            perfectly over the speed that is there: fluid), schedule=static beside it
  pipeline  the ImageNet UVCE pipeline as the README documents it (invert select=uvce, then uvce): items and
            EFLOP from the cost rows, and what inverting every val image would add
The tables are built from the shipped pair tables and synthetic manifests of the datasets' key layouts (ImageNet
val: class·50 + k), through the same plan code the stages run (digin.stages.plans).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass

from digin.shards.plan import Item, Plan, balance
from digin.stages import pairs as P

WORLDS = (8, 32, 64, 256)
TARGET = {8: 1.05, 32: 1.05, 64: 1.05, 256: 1.15}
IMAGENET_VAL = 50_000


def _uvce_items(pairs, dataset: str) -> list[Item]:
    rows = sorted({(p.index, p.target): p for p in pairs}.values(), key=lambda p: (p.index, p.target))
    return [Item(f"{dataset}/val/{p.index:05d}/t{p.target}", (("images", f"{dataset}/val/{p.index:05d}"),),
                 {"start": p.start, "target": p.target}) for p in rows]


def reference_tables() -> dict[str, list[Item]]:
    """The items of the reference's shipped tables, planned as the stages plan them (one per pair)."""
    madry = P.default_pairs()
    labels = {f"imagenet/val/{i:05d}": i // 50 for i in range(IMAGENET_VAL)}
    per_key = P.neurons_per_key(madry, labels, None, 42)
    food = P.random_pairs([(i, i // 250) for i in range(25_250)], 101, 1000, 42)  # Food-101 test: 250 per class
    return {
        "imagenet_uvce": _uvce_items(P.imagenet_uvce_pairs(), "imagenet"),
        "madry_counterfactuals": [Item(f"{k}/n{n}", (("images", k),)) for k in sorted(per_key) for n in per_key[k]],
        "cub_uvce": _uvce_items(P.fine_grained_pairs("cub"), "cub"),
        "cars_uvce": _uvce_items(P.fine_grained_pairs("cars"), "cars"),
        "food101_random_1000": _uvce_items(food, "food101"),
    }


def plan_rows(items_per_shard: int | None = None) -> list[dict]:
    rows = []
    for name, items in reference_tables().items():
        plan = Plan(name, items, items_per_shard)
        costs = plan.unit_costs()
        for world in WORLDS:
            b = balance(costs, [it.cost for it in items], world)
            limit = max(TARGET[world], b["best_possible"])
            rows.append(dict(kind="plan", status="ok", table=name, world=world, items=len(items), units=plan.num_units,
                             items_per_shard=plan.resolved_items_per_shard,
                             busiest_over_mean=round(b["busiest_over_mean"], 4),
                             best_possible=round(b["best_possible"], 4), idle_ranks=b["idle_ranks"],
                             target=TARGET[world], meets_target=b["busiest_over_mean"] <= limit + 1e-9))
    return rows


# ---------------------------------------------------------------------------------------------- simulation
@dataclass
class SimSettings:
    world: int = 8
    slow_share: float = 0.25  # ranks at half speed
    lease_s: float = 300.0  # schedule=dynamic: a dead holder's unit is claimable this long after its last beat
    overhead_s: float = 1.0  # per unit: claim, read, fsync, commit
    seconds_per_item: float = 17.7  # 2.65 PFLOP per UVCE pair at 150 TFLOP/s effective per GPU


def _speeds(s: SimSettings) -> list[float]:
    """The last `slow_share` of the ranks run at half speed."""
    n_slow = int(round(s.world * s.slow_share))
    return [0.5 if r >= s.world - n_slow else 1.0 for r in range(s.world)]


def ideal_makespan(total_s: float, speeds: list[float], dead: int | None, t_kill: float | None) -> float:
    """Fluid ideal: the work spread perfectly over the speed there is (the dead rank's only until it dies)."""
    full = sum(speeds)
    if dead is None or t_kill is None:
        return total_s / full
    before = full * t_kill
    if total_s <= before:
        return total_s / full
    return t_kill + (total_s - before) / (full - speeds[dead])


def simulate_dynamic(unit_s: list[float], s: SimSettings, dead: int | None, t_kill: float | None) -> float:
    """Ranks claim units in order as they get free; the unit a dead rank held becomes claimable `lease_s` after
    it died (its work lost). Returns the makespan."""
    speeds = _speeds(s)
    free = [(0.0, r) for r in range(s.world)]
    heapq.heapify(free)
    queue = list(range(len(unit_s)))  # claimable units, in order
    retake: list[tuple[float, int]] = []  # (claimable at, unit)
    finish = 0.0
    qi = 0
    while free:
        t, r = heapq.heappop(free)
        if dead == r and t_kill is not None and t >= t_kill:
            continue  # the dead rank claims nothing more
        while retake and retake[0][0] <= t:
            queue.append(heapq.heappop(retake)[1])
        if qi >= len(queue):
            if retake:  # everything else is done or held: wait for the dead rank's lease
                heapq.heappush(free, (retake[0][0], r))
                continue
            continue
        j = queue[qi]
        qi += 1
        end = t + unit_s[j] / speeds[r] + s.overhead_s
        if dead == r and t_kill is not None and t < t_kill < end:
            heapq.heappush(retake, (t_kill + s.lease_s, j))  # dies mid-unit: the unit is retaken after the lease
            continue
        finish = max(finish, end)
        heapq.heappush(free, (end, r))
    return finish


def simulate_static(unit_s: list[float], s: SimSettings) -> float:
    speeds = _speeds(s)
    load = [0.0] * s.world
    for j, d in enumerate(unit_s):
        load[j % s.world] += d / speeds[j % s.world] + s.overhead_s
    return max(load)


def schedule_rows(items_per_shard: int | None = None, seconds_per_item: float | None = None) -> list[dict]:
    rows = []
    items = reference_tables()["imagenet_uvce"]
    plan = Plan("imagenet_uvce", items, items_per_shard)
    for world in (8, 32, 64):
        for lease in (300.0, 600.0):
            s = SimSettings(world=world, lease_s=lease)
            if seconds_per_item:
                s.seconds_per_item = seconds_per_item
            unit_s = [c * s.seconds_per_item for c in plan.unit_costs()]
            speeds = _speeds(s)
            total = sum(unit_s) + s.overhead_s * len(unit_s)
            t_kill = 0.5 * ideal_makespan(total, speeds, None, None)
            dead = 0  # a full-speed rank
            ideal = ideal_makespan(total, speeds, dead, t_kill)
            dyn = simulate_dynamic(unit_s, s, dead, t_kill)
            static = simulate_static(unit_s, s)
            rows.append(dict(kind="schedule", status="ok", table="imagenet_uvce", world=world, units=plan.num_units,
                             slow_ranks=sum(v < 1 for v in speeds), killed_rank_at_s=round(t_kill, 1), lease_s=lease,
                             seconds_per_item=s.seconds_per_item, ideal_s=round(ideal, 1), dynamic_s=round(dyn, 1),
                             dynamic_over_ideal=round(dyn / ideal, 4),
                             static_no_kill_s=round(static, 1), static_over_ideal=round(static / ideal, 4),
                             static_with_kill="never: the dead rank's units wait for a rerun"))
    return rows


def pipeline_rows(inversion_flop: float, guidance_flop: float, uvce_flop: float | None = None) -> list[dict]:
    """The README's ImageNet UVCE pipeline (select=uvce) against inverting all 50,000 val images."""
    images = len({it.joins[0][1] for it in reference_tables()["imagenet_uvce"]})
    table_images = len({row[0] for row in P.load_table("imagenet_uvce_images")})
    pairs = len(reference_tables()["imagenet_uvce"])
    selected = table_images * inversion_flop + pairs * guidance_flop
    everything = IMAGENET_VAL * inversion_flop + pairs * guidance_flop
    return [dict(kind="pipeline", status="ok", pipeline="imagenet_uvce (README: invert select=uvce, then uvce)",
                 cost_models="sd15",
                 inversions=table_images, images_with_pairs=images, uvce_pairs=pairs,
                 eflop=round(selected / 1e18, 3), eflop_inverting_all_val=round(everything / 1e18, 3),
                 pflop_per_inversion=inversion_flop / 1e15, pflop_per_pair=guidance_flop / 1e15,
                 # the stage's own per-pair cost (its schedule search and initial pass included), when counted
                 eflop_with_uvce_cost_rows=(round((table_images * inversion_flop + pairs * uvce_flop) / 1e18, 3)
                                            if uvce_flop else None))]


def bench_rows(cost_rows: list[dict]) -> list[dict]:
    def flop(workload):
        return next(r["flop_per_image"] for r in cost_rows if r.get("workload") == workload and r["mode"] == "fast")

    g = flop("guidance")
    u = next((r["flop_per_image"] for r in cost_rows if r.get("workload") == "uvce" and r["mode"] == "fast"), None)
    return plan_rows() + schedule_rows(seconds_per_item=g / 150e12) + pipeline_rows(flop("inversion"), g, u)
