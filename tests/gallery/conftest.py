import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

INJECTED = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'


def png(color, size=(24, 32)):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def synthetic_records():
    from digin.stages.gallery.records import ResultRecord

    recs = []
    rng = np.random.default_rng(0)
    for i, (start, target, slabel, tlabel) in enumerate(
            [(7, 8, "cock", "hen"), (7, 8, "cock", "hen"), (15, 150, "Painted Bunting", "Black/white <Vireo>")]):
        mask = np.zeros((32, 24), np.uint8)
        mask[8:24, 6:18] = 255
        recs.append(ResultRecord(
            key=f"imagenet/val/{start * 50 + i:05d}/t{target}", task="uvce", group=f"{start}_to_{target}",
            images={"orig": png((200, 10, 10)), "sd": rng.integers(0, 255, (32, 24, 3), dtype=np.uint8),
                    "ours": png((10, 10, 200 - i))},
            metrics={"start": start, "target": target, "start_label": slabel, "target_label": tlabel,
                     "index": start * 50 + i, "conf_0_sd": 0.1, "conf_0_ours": 0.2 + i / 4},
            loss_curve=[3.0, 2.0, float("nan"), 1.2, 1.0] if i != 1 else None,
            aux_images={"mask": mask} if i == 0 else {}))
    recs.append(ResultRecord(key="diff/c1_c2/00003/0", task="diff", group="3_3", images={
        "sd": png((0, 255, 0)), "ours": png((0, 0, 0))}, metrics={"class": 3, "label": "tiger shark", "i": 0},
        loss_curve=[1.0]))
    return recs


def write_diff_results(folder: Path, classes=("cat", "dog", INJECTED), per_class: int = 2):
    """A committed diff result set: conf_0 = classifier 1, conf_1 = classifier 2, 96-px images."""
    from digin.stages.gallery.synthetic import base_pngs, stamp_png
    from digin.shards.manifest import FORMAT, MANIFEST, write_json
    from digin.shards.writer import ShardWriter

    folder.mkdir(parents=True)
    write_json(folder / MANIFEST, {"format": FORMAT, "kind": "results", "name": "diff", "config": {"stage": "diff"}})
    pics = base_pngs(3, 96, seed=5)
    rng = np.random.default_rng(3)
    w = ShardWriter(folder, 0, "diff-000000.tar")
    for c, label in enumerate(classes):
        for i in range(per_class):
            p1, p2 = rng.uniform(0, 1, 2), rng.uniform(0, 1, 2)
            metrics = {"class": c, "label": label, "i": i, "start": c, "group": f"{c}_{label}", "best_iter": 2,
                       "conf_0_sd": p1[0], "conf_0_ours": p1[1], "conf_1_sd": p2[0], "conf_1_ours": p2[1],
                       "classifiers": ["madry:/ckpt/robust.pt", "vit_base"], "loss": [0.5, 0.2, -0.1],
                       "confidences": {"conf_0": [p1[0], 0.5, p1[1]], "conf_1": [p2[0], 0.5, p2[1]]}}
            key = f"diff/c{c:05d}/i{i:04d}"
            w.add(key, {"sd": ("png", stamp_png(pics[i % 3], key + "sd")),
                        "ours": ("png", stamp_png(pics[(i + 1) % 3], key + "ours")), "metrics": metrics})
    w.commit()
    return folder


def write_neuron_folder(folder: Path, neurons=(3, 9), per_neuron: int = 2, dead=()):
    """What `digin neurons` leaves: an image shard set, top images and words per neuron, visualise results; a
    neuron in `dead` has activation 0 everywhere (0 → 0, and on its top images)."""
    from digin.stages.gallery.synthetic import base_pngs, stamp_png
    from digin.shards.manifest import FORMAT, MANIFEST, write_json
    from digin.shards.writer import ShardWriter

    images = folder / "images"
    images.mkdir(parents=True)
    write_json(images / MANIFEST, {"format": FORMAT, "kind": "images", "name": "toyset", "classes": ["a", "b"]})
    pics = base_pngs(4, 40, seed=8)
    w = ShardWriter(images, 0, "toyset-000000.tar")
    for i in range(6):
        w.add(f"toyset/val/{i:05d}", {"image": ("png", stamp_png(pics[i % 4], str(i))), "meta": {"label": i % 2}})
    w.commit()
    write_json(folder / "selected_neurons.json", {"neurons": list(neurons), "images": str(images)})
    write_json(folder / "neuron_words.json", {"backend": "template", "neurons": {
        str(n): {"words": {"stripes": 2, INJECTED: 1}, "images": [], "answers": []} for n in neurons}})
    write_json(folder / "word_search.json", {"neurons": {str(n): [["stripes", 1.5], ["zebra", 0.5]]
                                                          for n in neurons}})
    for n in neurons:
        write_json(folder / f"neuron_{n}_top_images.json", {"neuron": n, "images": [
            {"key": f"toyset/val/{i:05d}", "activation": 0.0 if n in dead else 3.0 - i, "id": i}
            for i in (n % 2, 2, 4)]})
    vis = folder / "visualise"
    vis.mkdir()
    write_json(vis / MANIFEST, {"format": FORMAT, "kind": "results", "name": "neurons",
                                "config": {"stage": "neurons_visualise"}})
    w = ShardWriter(vis, 0, "neurons-000000.tar")
    for n in neurons:
        for i in range(per_neuron):
            before, after = (0.0, 0.0) if n in dead else (1.0 + i, 1.5 + n / 10 - i)
            w.add(f"neurons/n{n}/i{i}", {"sd": ("png", stamp_png(pics[0], f"{n}{i}sd")),
                                        "ours": ("png", stamp_png(pics[1], f"{n}{i}ours")), "metrics": {
                "task": "neurons", "neuron": n, "i": i, "word": "stripes", "class": 0, "loss_name": "neuron_activation",
                "activation_sd": before, "activation_ours": after, "best_iter": 1, "loss": [-before, -after],
                "confidences": {"activation": [before, after]}}})
    w.commit()
    return vis


THUMB = 64


@pytest.fixture(scope="session")
def result_world(tmp_path_factory):
    """uvce (with statuses, rejects, skips, an injected label), diff and neuron result folders, and a digin eval
    folder over the uvce results."""
    from digin.stages.gallery.synthetic import write_uvce_results
    from digin.shards.reader import iter_samples

    root = tmp_path_factory.mktemp("results")
    classes = ["tench", "goldfish", INJECTED, "hen"]
    uvce = write_uvce_results(root / "uvce", n_images=8, targets_per_image=2, classes=classes, size=96, per_shard=3,
                              nonfinite_every=5, no_improvement_every=4, layout="pair",
                              rejects_per_shard=["image:bad_png", "skip:no_pairs", "skip:no_pairs"])
    rng = np.random.default_rng(1)
    ev = root / "uvce-eval"
    ev.mkdir()
    with open(ev / "per_sample.jsonl", "w") as f:
        for s in iter_samples(uvce):
            f.write(json.dumps({"key": s["__key__"], "l1_ours": float(rng.uniform(0, 0.2)),
                                "l2_ours": float(rng.uniform(0, 0.1)), "lpips_ours": float(rng.uniform(0, .5)),
                                "guided/conf_start_orig": float(rng.uniform(0.5, 1)),
                                "guided/conf_target_orig": float(rng.uniform(0, 0.1)),
                                "guided/flip": float(rng.integers(0, 2)), "masked": "background"}) + "\n")
    return {"uvce": uvce, "eval": ev, "diff": write_diff_results(root / "diff"),
            "neurons": write_neuron_folder(root / "neurons", neurons=(3, 9, 11), dead=(11,)), "classes": classes}


def chrome_driver(profile: Path):
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.skip("Chromium not installed (/usr/bin/chromium, /usr/bin/chromedriver): "
                    "apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1200,900", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


@pytest.fixture(scope="session")
def built(result_world, tmp_path_factory):
    """The gallery over result_world (uvce with its eval rows, diff, neurons), as `digin gallery` writes it."""
    from digin.tasks.gallery import Config, run

    out = tmp_path_factory.mktemp("gallery")
    run(Config(results=[str(result_world[k]) for k in ("uvce", "diff", "neurons")], out=str(out),
               evals=[str(result_world["eval"])], thumb_size=THUMB))
    return out


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """One headless Chromium for every page test."""
    profile = tmp_path_factory.mktemp("chrome-profile")
    driver = chrome_driver(profile)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
