from digin.cli import build_config
from digin.shards.manifest import ShardSet
from digin.shards.reader import iter_shard


def run_caption(overrides):
    from digin.tasks import caption

    cfg = build_config(caption.Config, ["device=cpu", "progress=false"] + list(overrides))
    return caption.run(cfg)


def read_set(folder) -> dict:
    ss = ShardSet.load(folder)
    out = {}
    for i in ss.indices():
        for s in iter_shard(ss, i):
            out[s["__key__"]] = s
    return out
