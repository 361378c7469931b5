"""Foreign webdataset shard sets written by `webdataset.ShardWriter`, from toy-world scenes (64 px JPEGs):

  imagenet      jpg + cls + json {"filename": "ILSVRC2012_val_NNNNNNNN.JPEG"}   (ImageNet-1k webdataset layout)
  img2dataset   jpg + txt + json {"key", "url", "caption", "label", "status"}   (img2dataset layout)
"""
import io

import numpy as np

LAYOUTS = ("imagenet", "img2dataset")


def scene_jpeg(seed: int):
    from digin.toy import world

    img, caption, labels = world.make_scene(seed)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue(), caption, labels["shape_id"]


def write_foreign_set(folder, layout: str, n: int = 7, per_tar: int = 3, seed: int = 0) -> dict:
    """n samples in ceil(n / per_tar) tars `<folder>/<layout>-NNNN.tar`. Returns {pattern, tars, samples}, samples
    in tar order: {key, jpg, caption, label, filename}. ImageNet file numbers are shuffled against the order."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    file_numbers = np.random.default_rng(seed).permutation(n) + 1
    samples = []
    with wds.ShardWriter(str(folder / f"{layout}-%04d.tar"), maxcount=per_tar, verbose=0) as sink:
        for i in range(n):
            jpg, caption, label = scene_jpeg(seed * 1000 + i)
            key = f"{layout[:3]}{i:06d}"
            s = {"key": key, "jpg": jpg, "caption": caption, "label": label,
                 "filename": f"ILSVRC2012_val_{file_numbers[i]:08d}.JPEG"}
            samples.append(s)
            if layout == "imagenet":
                sink.write({"__key__": key, "jpg": jpg, "cls": label, "json": {"filename": s["filename"]}})
            else:
                sink.write({"__key__": key, "jpg": jpg, "txt": caption,
                            "json": {"key": key, "url": f"https://example.org/{key}.jpg", "caption": caption,
                                     "label": label, "status": "success"}})
    n_tars = -(-n // per_tar)
    return {"pattern": str(folder / f"{layout}-{{0000..{n_tars - 1:04d}}}.tar"),
            "tars": [folder / f"{layout}-{i:04d}.tar" for i in range(n_tars)], "samples": samples}
