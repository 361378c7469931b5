import json

import numpy as np
import pytest
import torch

from digin.stages.gallery.records import ResultRecord
from digin.stages import eval as S
from digin.tasks import eval as E


def records():
    rng = np.random.default_rng(0)
    out = []
    for i, (start, target) in enumerate([(1, 2), (1, 2), (3, 0)]):
        orig = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        ours = orig.copy()
        ours[:16] = 255 - ours[:16]  # top half changed
        mask = np.zeros((32, 32), np.uint8)
        mask[:16] = 255  # ... which is the foreground
        out.append(ResultRecord(key=f"ds/val/{i:05d}/t{target}", task="uvce", group=f"{start}_to_{target}",
                                images={"orig": orig, "sd": orig.copy(), "ours": ours},
                                metrics={"start": start, "target": target},
                                aux_images={"mask": mask} if i != 2 else {}))
    return out


class ConstClassifier(torch.nn.Module):
    """Logits that favour class 2 for bright top halves (ours) and class 1 otherwise."""

    def forward(self, x):
        top = x[:, :, :16].mean(dim=(1, 2, 3))
        base = torch.tensor([0.0, 1.0, 0.0, 0.0])
        logits = base.expand(x.shape[0], 4).clone()
        logits[:, 2] = (top - 0.5) * 40
        return logits


def test_sample_metrics_masked_distances_and_flip():
    recs = records()
    row = S.sample_metrics(recs[0], {"c": ConstClassifier()})
    x = S.to_tensor(recs[0].image_array("ours"))
    y = S.to_tensor(recs[0].image_array("orig"))
    # mask = changed half: background distance is 0, the unmasked record 2 sees the whole change
    assert row["masked"] == "background" and row["l1_ours"] == pytest.approx(0.0, abs=1e-4)
    row2 = S.sample_metrics(recs[2], {})
    x2, y2 = (S.to_tensor(recs[2].image_array(n)) for n in ("ours", "orig"))
    assert row2["masked"] == "none" and row2["l1_ours"] == pytest.approx((x2 - y2).abs().sum().item(), rel=1e-5)
    assert row["l1_sd"] == 0.0
    top_ours = x[:, :, :16].mean().item()
    assert row["c/flip"] == float(top_ours > 0.5 + 1 / 40)
    assert 0.0 < row["c/conf_target_ours"] < 1.0 and "c/conf_start_orig" in row


def test_evaluate_and_write_summary_with_tiny_classifier(tmp_path):
    from digin.engine.classifiers import load_classifier
    from digin.stages.metrics import InceptionPool

    clf = load_classifier("tiny")
    recs = records()
    result = S.evaluate_records(recs, {"tiny": clf}, inception=InceptionPool(random_init_seed=0))
    assert result["tasks"]["uvce"]["n"] == 3
    assert result["tasks"]["uvce"]["fid_ours_orig"] > 0
    assert set(result["groups"]) == {"uvce/1_to_2", "uvce/3_to_0"}
    assert result["groups"]["uvce/1_to_2"]["n"] == 2
    flips = [r["tiny/flip"] for r in result["rows"]]
    assert result["tasks"]["uvce"]["tiny/flip"] == pytest.approx(np.mean(flips))
    S.write_summary(result, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["tasks"]["uvce"]["n"] == 3
    assert len((tmp_path / "per_sample.jsonl").read_text().splitlines()) == 3
    md = (tmp_path / "summary.md").read_text()
    assert "| uvce | 3 |" in md and "| uvce/1_to_2 | 2 |" in md


def test_run_without_inception_notes_skipped_fid(tmp_path):
    cfg = E.Config(out=str(tmp_path), lpips=True, lpips_random_trunk=True)
    E.run(cfg, records=records(), classifiers={})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "FID skipped: no inception_weights given" in summary["notes"]
    assert "fid_ours_orig" not in summary["tasks"]["uvce"]
    assert summary["tasks"]["uvce"]["lpips_sd"] == pytest.approx(0.0, abs=1e-6)
    assert summary["tasks"]["uvce"]["lpips_ours"] >= 0.0


def test_lpips_key_when_the_alexnet_file_is_missing_or_present(tmp_path, monkeypatch):
    from tests.engine.lpips_trunk import torch_home_with_alexnet

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    # lpips=true: one line naming the missing file, before anything is computed or written
    with pytest.raises(SystemExit, match="lpips=true: .*alexnet-owt-7be5be79.pth"):
        E.run(E.Config(out=str(tmp_path / "required"), lpips=True), records=records(), classifiers={})
    assert not (tmp_path / "required").exists()
    # default: skipped with a note saying how to require it; lpips=false: off without a note
    E.run(E.Config(out=str(tmp_path / "auto")), records=records(), classifiers={})
    auto = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert any(n.startswith("LPIPS skipped") and "alexnet-owt-7be5be79.pth" in n for n in auto["notes"])
    assert "lpips_ours" not in auto["tasks"]["uvce"]
    E.run(E.Config(out=str(tmp_path / "off"), lpips=False), records=records(), classifiers={})
    off = json.loads((tmp_path / "off" / "summary.json").read_text())
    assert not any("LPIPS" in n for n in off["notes"]) and "lpips_ours" not in off["tasks"]["uvce"]
    # default with the file in the hub cache: computed through the real loader
    with torch_home_with_alexnet(tmp_path / "hub-home"):
        E.run(E.Config(out=str(tmp_path / "present")), records=records(), classifiers={})
    present = json.loads((tmp_path / "present" / "summary.json").read_text())
    assert present["tasks"]["uvce"]["lpips_ours"] > 0.0 and present["tasks"]["uvce"]["lpips_sd"] == pytest.approx(
        0.0, abs=1e-6)
