import pytest

from digin.cli import main


@pytest.mark.slow
def test_demo_tiny_world_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", f"out={out}", "world=tiny", "sgd_steps=2", "num_ddim_steps=4"]) == 0
    index = out / "gallery" / "index.html"
    assert index.exists()
    text = capsys.readouterr().out
    assert f"gallery: {index}" in text
    from digin.stages.gallery import check_gallery

    problems, pages, images = check_gallery(out / "gallery")
    assert not problems and pages >= 3 and images >= 12


@pytest.mark.slow
def test_demo_toy_world_end_to_end(tmp_path, capsys):
    toy = pytest.importorskip("digin.toy")
    if not toy.available():
        pytest.skip("toy-world models not built (digin toy-train)")
    out = tmp_path / "demo"
    assert main(["demo", f"out={out}", "images_per_class=1", "sgd_steps=2", "num_ddim_steps=6"]) == 0
    assert "world=toy" in capsys.readouterr().out
    from digin.stages.gallery import check_gallery

    problems, pages, images = check_gallery(out / "gallery")
    assert not problems and pages >= 3
