"""`digin shard key=value ...` through the CLI entry point."""
from digin.cli import main
from digin.shards.manifest import ShardSet
from digin.shards.synthetic import make_image_folder


def test_cli_shard_imagefolder(tmp_path):
    make_image_folder(tmp_path / "src" / "val", classes=2, n_per_class=3, size=16)
    rc = main(["shard", "source=imagefolder", f"root={tmp_path / 'src'}", "split=val", f"out={tmp_path / 'out'}",
               "name=mini", "samples_per_shard=4", "workers=2", "verify=true"])
    assert rc == 0
    ss = ShardSet.load(tmp_path / "out")
    assert ss.meta["num_samples"] == 6 and [r["count"] for r in ss.records.values()] == [4, 2]
    assert ss.records[1]["first_key"] == "mini/val/00004"
    (tmp_path / "out" / "mini-val-000001.tar").write_bytes(b"x")
    assert main(["shard", "source=imagefolder", f"root={tmp_path / 'src'}", "split=val",
                 f"out={tmp_path / 'out'}", "name=mini", "samples_per_shard=4", "workers=1", "verify=true"]) == 0
    # the damaged shard no longer matched its record's size, so it was rewritten
    assert ShardSet.load(tmp_path / "out").verify() == []
