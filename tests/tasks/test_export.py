import pytest

from digin.stages.gallery.records import ResultRecord
from digin.stages.export import export_records, export_relpaths
from tests.gallery.conftest import png

IMG = {"orig": png((1, 2, 3)), "sd": png((4, 5, 6)), "ours": png((7, 8, 9))}


def rec(task, key, **metrics):
    return ResultRecord(key=key, task=task, group="g", images=dict(IMG), metrics=metrics)


def test_reference_layouts():
    uvce = rec("uvce", "imagenet/val/00360/t8", start=7, target=8, start_label="cock", target_label="hen")
    assert export_relpaths(uvce) == {"orig": "7_cock/360.png", "sd": "7_cock/360_8_hen_sd.png",
                                     "ours": "7_cock/360_8_hen_ours.png"}
    cars = rec("uvce", "cars/test/01741/t143", start=55, target=143, index=1741,
               start_label="Chevrolet Corvette ZR1 2012", target_label="Ram C/V Cargo Van Minivan 2012")
    assert export_relpaths(cars)["sd"] == \
        "55_Chevrolet Corvette ZR1 2012/1741_143_Ram C_V Cargo Van Minivan 2012_sd.png"
    diff = rec("diff", "diff/x/00003/2", **{"class": 3, "label": "tiger shark", "i": 2})
    diff.images.pop("orig")
    assert export_relpaths(diff) == {"sd": "3_3_tiger shark/2_sd.png", "ours": "3_3_tiger shark/2_ours.png"}
    neu = rec("neurons", "neurons/x/00310/4", neuron=310, i=4)
    assert export_relpaths(neu)["ours"] == "neuron_310/4_ours.png"
    cf = rec("neuron_cf", "imagenet/val/04151/n565", start=83, start_label="prairie chicken", neuron=565)
    assert export_relpaths(cf) == {"orig": "83_prairie chicken_neuron_565/4151.png",
                                   "sd": "83_prairie chicken_neuron_565/4151_sd.png",
                                   "ours": "83_prairie chicken_neuron_565/4151_ours.png"}
    with pytest.raises(KeyError):
        export_relpaths(rec("uvce", "imagenet/val/00360/t8", start=7))
    with pytest.raises(ValueError):
        export_relpaths(rec("bench", "a/b/1"))


def test_export_writes_files_and_refuses_collisions(tmp_path):
    a = rec("uvce", "imagenet/val/00360/t8", start=7, target=8, start_label="cock", target_label="hen")
    b = rec("uvce", "imagenet/val/00360/t9", start=7, target=9, start_label="cock", target_label="ostrich")
    paths = export_records([a, b], tmp_path / "x")  # the original of image 360 is shared: written once
    names = sorted(p.relative_to(tmp_path / "x").as_posix() for p in paths)
    assert names == ["7_cock/360.png", "7_cock/360_8_hen_ours.png", "7_cock/360_8_hen_sd.png",
                     "7_cock/360_9_ostrich_ours.png", "7_cock/360_9_ostrich_sd.png"]
    assert (tmp_path / "x" / "7_cock" / "360_9_ostrich_sd.png").read_bytes() == IMG["sd"]
    with pytest.raises(FileExistsError):
        export_records([a], tmp_path / "x")
    export_records([a], tmp_path / "x", overwrite=True)
    b.images["orig"] = png((0, 0, 0))  # a different original under the same name is a real collision
    with pytest.raises(ValueError):
        export_records([a, b], tmp_path / "y")


def test_export_task_run_from_shards(tmp_path):
    from digin.tasks.export import Config, run
    from tests.gallery.test_records import write_result_shards

    folder = write_result_shards(tmp_path / "res")
    paths = run(Config(results=[str(folder)], out=str(tmp_path / "out")))
    rel = sorted(p.relative_to(tmp_path / "out").as_posix() for p in paths)
    assert rel == ["7_cock/350.png", "7_cock/350_8_hen_ours.png", "7_cock/350_8_hen_sd.png",
                   "7_cock/351.png", "7_cock/351_9_ostrich_ours.png", "7_cock/351_9_ostrich_sd.png"]
