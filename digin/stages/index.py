"""The body of `digin index` (digin/tasks/index.py): add each sample's byte span and hash to the commit records of
a shard set made before they had them, one shard at a time, each record replaced atomically."""
from __future__ import annotations

from digin.shards.keyed import index_record
from digin.shards.manifest import ShardError, ShardSet, write_commit
from digin.shards.progress import Progress


def index_set(path, progress: bool = True) -> int:
    """Index every shard record of the set at `path` that has no spans yet; records with spans are left as they are."""
    try:
        ss = ShardSet.load(path)
    except FileNotFoundError as e:
        raise SystemExit(f"digin index: {e}") from None
    todo = [i for i, r in ss.records.items() if not isinstance(r.get("spans"), list)]
    bar = Progress(len(todo), f"index {ss.name}", enabled=progress, unit="shard")
    for i in todo:
        try:
            rec = index_record(ss, i)
        except ShardError as e:
            raise SystemExit(f"digin index: {e}; nothing more was changed (records already rewritten stay valid)")
        write_commit(ss.dir, rec)
        bar.update(1)
    bar.close()
    print(f"[index] {ss.dir}: {len(todo)} of {len(ss.records)} shard records indexed "
          f"({len(ss.records) - len(todo)} had spans already)", flush=True)
    return 0
