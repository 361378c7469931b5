"""The gallery reads each result shard once (digin.shards.keyed.iter_shards_once) and still refuses an altered or cut
shard; the originals repeated by every pair of an image are copied out once."""
import pytest


@pytest.fixture
def pairs(tmp_path):
    from digin.stages.gallery.synthetic import write_uvce_results

    return write_uvce_results(tmp_path / "uvce", n_images=4, targets_per_image=3, per_shard=2, size=48, layout="pair")


def test_pairs_of_an_image_share_its_original_bytes(pairs):
    from digin.stages.gallery.records import iter_records

    recs = list(iter_records(pairs))
    assert len(recs) == 12
    for name in ("orig", "recon"):
        assert recs[0].images[name] is recs[1].images[name] is recs[2].images[name]  # one copy, the store's id hit
        assert recs[2].images[name] is not recs[3].images[name] and recs[2].images[name] != recs[3].images[name]
    assert recs[0].images["ours"] != recs[1].images["ours"]


@pytest.mark.parametrize("damage", ["flip", "cut"])
def test_gallery_refuses_an_altered_or_cut_shard(pairs, tmp_path, damage):
    from digin.shards.manifest import ShardError, ShardSet
    from digin.tasks.gallery import Config, run

    path = ShardSet.load(pairs).path(1)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 3] ^= 0x10  # inside some member's bytes: only the sha256 can tell
    else:
        del data[-1024:]
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="sha256 differs" if damage == "flip" else "truncated"):
        run(Config(results=[str(pairs)], out=str(tmp_path / "g")))


def test_header_sizes_agree_with_pillow():
    import io

    from PIL import Image

    from digin.stages.gallery.store import image_header_size, jpeg_header_size
    from digin.stages.gallery.synthetic import base_pngs, stamp_jpeg, stamp_png

    for size, mode, progressive in (((128, 96), "RGB", False), ((40, 300), "L", True)):
        buf = io.BytesIO()
        Image.new(mode, size, 3).save(buf, format="JPEG", quality=85, progressive=progressive)
        data = stamp_jpeg(buf.getvalue(), "a comment segment first")
        assert jpeg_header_size(data) == size == Image.open(io.BytesIO(data)).size
    assert jpeg_header_size(b"\xff\xd8\xff\xda\x00\x02") is None and jpeg_header_size(b"\x89PNG") is None
    png = stamp_png(base_pngs(1, 20, seed=0)[0], "x")
    assert image_header_size(png) == (20, 20)
    bad = png[:16] + b"\x00\x00\x01\x00" + png[20:]  # a width its IHDR checksum does not match: Pillow's reading
    with __import__("pytest").raises(Exception):
        image_header_size(bad)
