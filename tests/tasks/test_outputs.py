"""The output reference (digin/stages/outputs.py) holds exactly what the stages write: every member and every JSON
field of real outputs on the tiny models is documented, every required one is there; docs/outputs.md is the
generated page."""
from pathlib import Path

from digin.cli import main
from digin.shards.reader import iter_samples
from digin.stages.outputs import check_sample, page


def _check(task: str, folder) -> int:
    n = 0
    for s in iter_samples(folder):
        assert check_sample(task, s) == [], (task, s["__key__"], check_sample(task, s))
        n += 1
    assert n > 0, folder
    return n


def test_docs_page_is_the_generated_reference():
    doc = Path(__file__).resolve().parents[2] / "docs" / "outputs.md"
    assert doc.read_text() == page() + "\n", "regenerate: python -m digin.stages.outputs > docs/outputs.md"


def test_real_outputs_match_the_reference(small_pipeline, tmp_path, capsys):
    p = small_pipeline
    sd = [f"model_path={p['sd']}", "resolution=32", "num_ddim_steps=4", "device=cpu", "progress=false"]
    guided = ["optim_params.sgd_steps=1", "augmentation_num_cutouts=2", "batch_size=2"]
    _check("invert", p["inv"])
    assert main(["caption", f"inputs={p['images']}", f"out={tmp_path / 'cap'}", "backend=template",
                 "progress=false"]) == 0
    _check("caption", tmp_path / "cap")
    assert main(["segment", f"images={p['images']}", f"inversions={p['inv']}", f"out={tmp_path / 'seg'}", *sd]) == 0
    _check("segment", tmp_path / "seg")
    assert main(["uvce", f"images={p['images']}", f"inversions={p['inv']}", f"out={tmp_path / 'uvce'}", *sd, *guided,
                 f"classifier=tiny:{p['clf']}", "pairs=explicit", "explicit_pairs=[[0,1],[4,0]]"]) == 0
    _check("uvce", tmp_path / "uvce")
    assert main(["diff", f"out={tmp_path / 'diff'}", *sd, *guided, f"classifier1=tiny:{p['clf']}",
                 f"classifier2=tiny:{p['clf']}", f"eval_classifier=tiny:{p['clf']}", "class_names=[cat,dog,fox]",
                 "target_classes=[1]", "num_images=1", "prompts=[a photo]"]) == 0
    _check("diff", tmp_path / "diff" / "results")
    assert main(["neurons", "mode=counterfactuals", f"images={p['images']}", f"inversions={p['inv']}",
                 f"out={tmp_path / 'ncf'}", *sd, *guided, f"classifier=tiny:{p['clf']}", "pairs=[[0,1]]",
                 "num_images_per_pair=1"]) == 0
    _check("neuron_cf", tmp_path / "ncf" / "counterfactuals")
    assert main(["uvce", "--outputs"]) == 0 and "start_conf_sd" in capsys.readouterr().out
