"""Optional experiment tracking (wandb) for shard stages — the reference's `wandb_project` key.

Off unless a task sets `wandb_project`; wandb is imported only then. Every rank logs to its own run, grouped by
output folder and stage, so a torchrun/Slurm job is one group. Scalars are logged when a shard commits (the point
where results become final), so a crashed and resumed run logs each committed sample once: every numeric leaf of
every dict field (the JSON metrics of a sample) is one row; multi-target fields `t<target>_<name>` become one row
per target named `<name>.<leaf>`. The local shard set and JSONL logs stay the source of truth; for clusters
without internet use `wandb_mode=offline` (then `wandb sync`).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

_TARGET_FIELD = re.compile(r"^t(\d+)_(.+)$")


def scalar_rows(output: dict) -> list[dict]:
    """One dict of numeric scalars per (field, target) of a sample's output; lists, strings and images are skipped."""
    rows: dict[str, dict] = {}
    for field, value in output.items():
        if not isinstance(value, dict):
            continue
        m = _TARGET_FIELD.match(field)
        group, name = (m.group(1), m.group(2)) if m else ("", field)
        row = rows.setdefault(group, {"target": int(group)} if group else {})
        for leaf, v in _numeric_leaves(value):
            row[f"{name}.{leaf}"] = v
    return [r for r in rows.values() if len(r) > ("target" in r)]


def _numeric_leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _numeric_leaves(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            yield f"{prefix}{k}", v


def require_wandb() -> None:
    """Fail before a stage touches its output when tracking is asked for but wandb is missing."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise RuntimeError("wandb_project is set but wandb is not installed: pip install wandb "
                           "(or digin[wandb]), or unset wandb_project") from None


class WandbTracker:
    def __init__(self, project: str, stage: str, output: Path, rank: int, world: int, config: dict,
                 entity: str | None = None, mode: str | None = None):
        import wandb

        group = f"{Path(output).name}:{stage}"
        (Path(output) / "wandb").mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, entity=entity, mode=mode, group=group, job_type=stage,
                              name=f"{group}:r{rank}", dir=str(Path(output) / "wandb"),
                              config={**config, "rank": rank, "world": world})
        self.rows = 0

    def shard_committed(self, shard: int, rows: list[dict], count: int, rejects: int) -> None:
        """rows: scalar_rows of the shard's samples, collected while it was written."""
        for row in rows:
            self.run.log({**row, "shard": shard}, step=self.rows)
            self.rows += 1
        self.run.log({"shard": shard, "shard_samples": count, "shard_rejects": rejects}, step=self.rows)
        self.rows += 1

    def finish(self, summary: dict) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))})
        self.run.finish()
