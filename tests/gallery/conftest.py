import io

import numpy as np
import pytest


def png(color, size=(24, 32)):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def synthetic_records():
    from digin.gallery.records import ResultRecord

    recs = []
    rng = np.random.default_rng(0)
    for i, (start, target, slabel, tlabel) in enumerate(
            [(7, 8, "cock", "hen"), (7, 8, "cock", "hen"), (15, 150, "Painted Bunting", "Black/white <Vireo>")]):
        mask = np.zeros((32, 24), np.uint8)
        mask[8:24, 6:18] = 255
        recs.append(ResultRecord(
            key=f"imagenet/val/{start * 50 + i:05d}/t{target}", task="uvce", group=f"{start}_to_{target}",
            images={"orig": png((200, 10, 10)), "sd": rng.integers(0, 255, (32, 24, 3), dtype=np.uint8),
                    "ours": png((10, 10, 200))},
            metrics={"start": start, "target": target, "start_label": slabel, "target_label": tlabel,
                     "index": start * 50 + i, "conf_start_ours": 0.1 + i / 10, "conf_target_ours": 0.8},
            loss_curve=[3.0, 2.0, float("nan"), 1.2, 1.0] if i != 1 else None,
            aux_images={"mask": mask} if i == 0 else {}))
    recs.append(ResultRecord(key="diff/c1_c2/00003/0", task="diff", group="3_3", images={
        "sd": png((0, 255, 0)), "ours": png((0, 0, 0))}, metrics={"class": 3, "label": "tiger shark", "i": 0},
        loss_curve=[1.0]))
    return recs
