from digin.cli import build_config
from digin.stages.gallery.records import records_from_shards
from digin.tasks import segment


def test_segment_writes_masks_and_word_maps(small_pipeline, tmp_path):
    p = small_pipeline
    cfg = build_config(segment.Config, [f"images={p['images']}", f"inversions={p['inv']}", f"out={tmp_path / 'seg'}",
                                        f"model_path={p['sd']}", "resolution=32", "num_ddim_steps=4", "device=cpu",
                                        "progress=false", "segmentation.postprocessing=[]"])
    assert segment.run(cfg) == 0
    recs = records_from_shards(tmp_path / "seg")
    assert len(recs) == 6
    for r in recs:
        mask = r.image_array("mask")[..., 0]  # the reader decodes every image to RGB
        att = r.image_array("attention")[..., 0]
        assert mask.shape == (32, 32) and mask.max() > 0
        words = r.metrics["words"]
        assert r.metrics["label"] in words and att.shape == (32, 32 * len(words))
        assert 0 < r.metrics["mask_area"] <= 1
