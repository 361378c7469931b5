"""Existing webdataset shard sets as digin datasets: `digin shard source=webdataset urls=<pattern or list>`.

Large image datasets are distributed as webdataset tars already (ImageNet-1k: `jpg` + `cls` + `json` per sample;
img2dataset: `jpg` + `txt` + `json`). Indexing reads every tar once, in parallel over tars, and writes a digin
manifest in which shard i *is* foreign tar i: its record holds the tar's url, size, sha256, sample count, the tar's
own sample keys (`source_keys`) and the digin keys. The images are not rewritten (copy=false); copy=true re-shards
into digin's layout instead. A stage reads shard i like a digin-made one: the tar is checked against its sha256 and
count first, then each sample is mapped to digin's fields (the same mapping copy=true writes):
  image    the image member (`jpg|jpeg|png|webp`, first found, or the suffix named), bytes unchanged
  meta     {"label", "label_name", "source": <the tar's sample key>, "file": <original file name, when mapped>}
  caption  the caption (a text member such as `txt`, or a json field), when mapped
Key schemes: index (`<name>/<split>/<position>`, positions over the tars in URL order), source (`<name>/<split>/`
+ the tar's own key) and imagenet_val (the reference's class·50 + k from the original file name, so the UVCE
image list and pair tables apply to ImageNet-1k val).
A problem with the set (a pattern matching nothing, a tar that cannot be read or is cut short — no end-of-archive
marker, a short or unreadable member header: tario.tar_extent names the byte —, a sample without the image member,
a label outside the class names, a missing json field) stops indexing with one line naming the tar and sample,
before anything is written. Samples with refused members (pickle-like extensions, unsafe names, duplicates) are
indexed as rejects, as digin's reader treats them.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from digin.shards.convert import check_names, finish_dataset, is_done, pool_map, shard_file, start_dataset
from digin.shards.decode import FORBIDDEN_EXTS, IMAGE_POLICY, DecodeError, decode_json
from digin.shards.manifest import FORMAT, ShardError, ShardSet, config_hash, sha256_bytes, write_commit
from digin.shards.members import member_problem
from digin.shards.naming import BadName, check_key
from digin.shards.progress import Progress
from digin.shards.sources import IMAGENET_VAL_PER_CLASS, NAMED_CLASSES, named_classes
from digin.shards.spans import SAMPLE_HASH_HEX, tar_spans
from digin.shards.tario import TarFormatError, expand_urls, group_members, read_error, read_url, split_foreign_name
from digin.shards.writer import PARTIAL, write_shard

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
KEY_SCHEMES = ("index", "source", "imagenet_val")
SPEC_RE = re.compile(r"^(auto|none|json:[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*|[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*)$")


class WebdatasetError(ValueError):
    """A problem with a foreign webdataset set, in one line naming the tar (and the sample)."""


class _SampleProblem(ValueError):
    pass


@dataclass
class FieldMap:
    """Where digin's fields come from in a foreign sample. A spec is a member suffix (`cls`, `txt`,
    `label.txt`: the member's text), `json:<field>` (dotted for nested fields), `none`, or `auto`."""

    image: str = "auto"              # auto: first of jpg, jpeg, png, webp present in the sample
    label: str = "auto"              # auto: cls when the first sample has one, else none. An integer.
    caption: str = "auto"            # auto: txt when the first sample has one, else none
    filename: str = "none"           # original file name (key_scheme=imagenet_val needs it: json:filename)

    def check(self):
        for k, v in asdict(self).items():
            if not isinstance(v, str) or not SPEC_RE.match(v):
                raise WebdatasetError(f"{k}_member={v!r}: want a member suffix (cls, txt, ...), json:<field>, "
                                      "none or auto")
        if self.image.startswith("json:") or self.image == "none":
            raise WebdatasetError(f"image_member={self.image!r}: want auto or an image member suffix")
        if self.filename == "auto":
            raise WebdatasetError("filename_member=auto: name the member or json field (e.g. json:filename)")

    def resolved(self, first_suffixes: set[str]) -> "FieldMap":
        """`auto` label/caption decided from the first sample of the first tar (so every sample is read alike)."""
        label = ("cls" if "cls" in first_suffixes else "none") if self.label == "auto" else self.label
        caption = ("txt" if "txt" in first_suffixes else "none") if self.caption == "auto" else self.caption
        return FieldMap(self.image, label, caption, self.filename)


# ---------------------------------------------------------------------------------------------- one sample
def refusal(members: dict) -> str | None:
    """Why digin refuses a foreign sample unread: a pickle-like member (any of its extensions)."""
    for suffix in sorted(members):
        if any(part.lower() in FORBIDDEN_EXTS for part in suffix.split(".")):
            return f"{suffix}:forbidden_member"
    return None


def _lookup(members: dict, spec: str, what: str, cache: dict):
    """The value a spec names in a sample (None for `none`); _SampleProblem when it is not there."""
    if spec == "none":
        return None
    if spec.startswith("json:"):
        if "json" not in members:
            raise _SampleProblem(f"no json member (the {what} is {spec})")
        if "json" not in cache:
            try:
                cache["json"] = decode_json(members["json"])
            except DecodeError as e:
                raise _SampleProblem(f"json member does not parse ({e})") from None
        obj = cache["json"]
        for part in spec[5:].split("."):
            if not isinstance(obj, dict) or part not in obj:
                raise _SampleProblem(f"json field {spec[5:]!r} (the {what}) is missing")
            obj = obj[part]
        return obj
    if spec not in members:
        raise _SampleProblem(f"no {spec} member (the {what})")
    try:
        return members[spec].decode("utf-8").strip()
    except UnicodeDecodeError:
        raise _SampleProblem(f"{spec} member (the {what}) is not UTF-8 text") from None


def read_fields(members: dict, fm: FieldMap) -> dict:
    """{image: suffix, label: int | None, caption: str | None, filename: str | None} of one sample."""
    cache: dict = {}
    if fm.image == "auto":
        image = next((s for s in IMAGE_SUFFIXES if s in members), None)
        if image is None:
            raise _SampleProblem(f"no image member (looked for {', '.join(IMAGE_SUFFIXES)})")
    elif fm.image in members:
        image = fm.image
    else:
        raise _SampleProblem(f"no {fm.image} member (the image)")
    label = _lookup(members, fm.label, "label", cache)
    if label is not None:
        try:
            if isinstance(label, bool) or isinstance(label, float):
                raise ValueError
            label = int(label)
        except (TypeError, ValueError):
            raise _SampleProblem(f"label {label!r} from {fm.label} is not an integer") from None
    caption = _lookup(members, fm.caption, "caption", cache)
    if caption is not None and not isinstance(caption, str):
        raise _SampleProblem(f"caption from {fm.caption} is not text: {caption!r:.60}")
    filename = _lookup(members, fm.filename, "file name", cache)
    if filename is not None and not isinstance(filename, str):
        raise _SampleProblem(f"file name from {fm.filename} is not text: {filename!r:.60}")
    return {"image": image, "label": label, "caption": caption,
            "filename": filename.replace("\\", "/").rsplit("/", 1)[-1] if filename else None}


def to_digin(source_key: str, members: dict, fm: FieldMap, classes: list[str]) -> dict:
    """A foreign sample's digin fields, pre-encoded (what copy=true writes and what a stage reads):
    image (bytes unchanged), meta.json, and caption.txt when a caption is mapped."""
    f = read_fields(members, fm)
    meta = {"source": source_key}
    if f["label"] is not None:
        lbl = f["label"]
        meta.update(label=lbl, label_name=classes[lbl] if 0 <= lbl < len(classes) else str(lbl))
    if f["filename"] is not None:
        meta["file"] = f["filename"]
    out = {"image": ("jpg" if f["image"] == "jpeg" else f["image"], members[f["image"]]),
           "meta": ("json", json.dumps(meta, sort_keys=True, allow_nan=False).encode("utf-8"))}
    if f["caption"] is not None:
        out["caption"] = ("txt", f["caption"].encode("utf-8"))
    return out


# ---------------------------------------------------------------------------------------------- one tar
def _read_tar(url: str) -> bytes:
    try:
        return read_url(url)
    except (OSError, ValueError) as e:
        raise WebdatasetError(f"tar {url}: cannot read it ({str(e)[:200]})") from None


def _groups(data: bytes, url: str) -> list:
    try:
        return group_members(data, naming="webdataset")
    except TarFormatError as e:
        raise WebdatasetError(f"tar {url}: {e}") from None


def scan_tar(job) -> dict:
    """Read one foreign tar: size, sha256, and per sample its key and what the mapping reads (or why it is a
    reject). Runs in a pool worker; a problem comes back as `problem` (the main process stops on the first)."""
    url, fm = job
    try:
        data = _read_tar(url)
        samples = []
        for key, members in _groups(data, url):
            reason = members if isinstance(members, str) else refusal(members)
            if reason:
                samples.append({"key": key, "reject": reason})
                continue
            try:
                f = read_fields(members, fm)
            except _SampleProblem as e:
                raise WebdatasetError(f"tar {url}: sample {key!r}: {e}") from None
            samples.append({"key": key, "label": f["label"], "filename": f["filename"]})
        if not samples:
            raise WebdatasetError(f"tar {url}: holds no samples")
        spans = _spans(data, url, len(samples))
        return {"url": url, "bytes": len(data), "sha256": sha256_bytes(data), "samples": samples, "problem": None,
                "spans": [list(sp) for sp in spans],
                "sample_sha256": [sha256_bytes(data[o:o + n])[:SAMPLE_HASH_HEX] for o, n in spans]}
    except WebdatasetError as e:
        return {"url": url, "problem": str(e)}


def _spans(data: bytes, url: str, count: int) -> list:
    """Each sample's byte span in the tar (digin.shards.keyed): stages read a sample by key with one seek."""
    try:
        spans = tar_spans(data, "webdataset")
    except ShardError as e:
        raise WebdatasetError(f"tar {url}: {e}") from None
    if len(spans) != count:
        raise WebdatasetError(f"tar {url}: {len(spans)} member groups by offset, {count} by name (unusual layout)")
    return spans


def first_sample_suffixes(url: str) -> set[str]:
    """Member suffixes of the first sample of a tar, read as a stream (only its first members are fetched)."""
    from webdataset.gopen import gopen
    from webdataset.tariterators import tar_file_iterator

    first, suffixes = None, set()
    try:
        stream = gopen(url, "rb")
    except (OSError, ValueError) as e:
        raise WebdatasetError(f"tar {url}: cannot read it ({str(e)[:200]})") from None
    try:
        for m in tar_file_iterator(stream, skip_meta=None):
            try:
                key, suffix = split_foreign_name(m["fname"])
            except BadName:
                continue
            if first is not None and key != first:
                break
            first = key
            suffixes.add(suffix)
    except Exception as e:  # noqa: BLE001 — any failure here is the tar's; it is reported with its name
        raise WebdatasetError(f"tar {url}: unreadable ({read_error(e)})") from None
    finally:
        try:
            stream.close()
        except Exception:  # noqa: BLE001 — a pipe closed early exits with SIGPIPE; nothing was lost
            pass
    return suffixes


# ---------------------------------------------------------------------------------------------- the set
def resolve_urls(urls) -> list[str]:
    """Brace-expanded URLs; local paths made absolute and required to exist (pipe: and other URLs are read
    when scanned)."""
    if not urls:
        raise WebdatasetError("urls= is empty: give a brace pattern (/data/x-{0000..0063}.tar) or a list")
    out = expand_urls(urls)
    local = [u for u in out if urlparse(u).scheme in ("", "file")]
    missing = [u for u in local if not os.path.isfile(re.sub(r"^file://?", "/", u) if u.startswith("file:") else u)]
    if local and len(missing) == len(out):
        raise WebdatasetError(f"urls={urls!r} matches no file (expanded to {len(out)} path(s), e.g. {out[0]})")
    if missing:
        raise WebdatasetError(f"urls: {len(missing)} of {len(out)} tars do not exist, e.g. {missing[0]}")
    out = [os.path.abspath(u) if urlparse(u).scheme == "" else u for u in out]
    dup = next((u for i, u in enumerate(out) if u in out[:i]), None)
    if dup:
        raise WebdatasetError(f"urls: {dup} is listed twice")
    return out


def load_classes(spec) -> list[str] | None:
    """classes=: a list of names, a shipped table (imagenet, cub, cars, food101, flowers102), or a file (.json
    list or {"0": name} table, or .txt with one name per line)."""
    if spec is None or isinstance(spec, (list, tuple)):
        return None if spec is None else [str(c) for c in spec]
    spec = str(spec)
    if spec in NAMED_CLASSES:
        return named_classes(spec)
    p = Path(spec)
    if not p.is_file():
        raise WebdatasetError(f"classes={spec!r}: not a list, a table ({', '.join(sorted(NAMED_CLASSES))}) "
                              "or a file")
    try:
        if p.suffix == ".json":
            obj = json.loads(p.read_text())
            return [str(c) for c in (obj if isinstance(obj, list) else [obj[str(i)] for i in range(len(obj))])]
        return [line.strip() for line in p.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise WebdatasetError(f"classes={spec}: not a JSON list / {{\"0\": name}} table or a text file ({e})") from None


def _check_labels(scans: list[dict], classes: list[str] | None, fm: FieldMap) -> list[str]:
    labelled = [(sc["url"], s) for sc in scans for s in sc["samples"] if "reject" not in s]
    if fm.label == "none":
        return classes or []
    if classes is None:
        top = max(s["label"] for _, s in labelled)
        print(f"[shard] no class names given (classes=): labels 0..{top} are named by their numbers", flush=True)
        classes = [str(i) for i in range(top + 1)]
    for url, s in labelled:
        if not 0 <= s["label"] < len(classes):
            raise WebdatasetError(f"tar {url}: sample {s['key']!r}: label {s['label']} is outside the "
                                  f"{len(classes)} class names")
    return classes


def _index_keys(scans, name, split, scheme) -> list[list[str]]:
    """Digin keys for every sample of every tar (rejects get `rejected-<tar>-<pos>`)."""
    n_ok = sum(1 for sc in scans for s in sc["samples"] if "reject" not in s)
    width = max(5, len(str(n_ok - 1)))
    index_of: dict[tuple[int, int], int] = {}
    if scheme == "imagenet_val":
        by_class: dict[int, list] = {}
        for i, sc in enumerate(scans):
            for pos, s in enumerate(sc["samples"]):
                if "reject" in s:
                    continue
                if s["label"] is None or s["filename"] is None:
                    raise WebdatasetError(f"tar {sc['url']}: sample {s['key']!r}: key_scheme=imagenet_val needs a "
                                          "label and the original file name (label_member=, filename_member=)")
                by_class.setdefault(s["label"], []).append((s["filename"], i, pos))
        for label, files in sorted(by_class.items()):
            files.sort()
            if len(files) > IMAGENET_VAL_PER_CLASS:
                raise WebdatasetError(f"key_scheme=imagenet_val: class {label} has {len(files)} images, ImageNet "
                                      f"val has {IMAGENET_VAL_PER_CLASS} per class")
            for k, (fname, i, pos) in enumerate(files):
                if k and files[k - 1][0] == fname:
                    raise WebdatasetError(f"tar {scans[i]['url']}: sample {scans[i]['samples'][pos]['key']!r}: "
                                          f"file name {fname!r} appears twice in class {label}")
                index_of[(i, pos)] = label * IMAGENET_VAL_PER_CLASS + k
        partial = [c for c, f in by_class.items() if len(f) < IMAGENET_VAL_PER_CLASS]
        if partial:
            print(f"[shard] key_scheme=imagenet_val: {len(partial)} class(es) have fewer than {IMAGENET_VAL_PER_CLASS} "
                  "images; their indices count only the images present", flush=True)
        width = 5
    keys, n, first_tar = [], 0, {}
    for i, sc in enumerate(scans):
        row = []
        for pos, s in enumerate(sc["samples"]):
            if "reject" in s:
                key = f"{name}/{split}/rejected-{i:06d}-{pos:06d}"
            elif scheme == "index":
                key, n = f"{name}/{split}/{n:0{width}d}", n + 1
            elif scheme == "imagenet_val":
                key = f"{name}/{split}/{index_of[(i, pos)]:0{width}d}"
            else:
                key = f"{name}/{split}/{s['key']}"
                try:
                    check_key(key)
                except BadName:
                    raise WebdatasetError(f"tar {sc['url']}: sample {s['key']!r}: not usable in a digin key "
                                          "(key_scheme=source); use key_scheme=index") from None
            if key in first_tar:
                raise WebdatasetError(f"tar {sc['url']}: sample {s['key']!r}: key {key} is also in tar "
                                      f"{scans[first_tar[key]]['url']}")
            first_tar[key] = i
            row.append(key)
        keys.append(row)
    return keys


def _file_labels(urls: list[str]) -> list[str]:
    """Plain, distinct file names for the records (the tar's base name); the record's `url` is what is read."""
    bases = [(re.findall(r"[A-Za-z0-9_.-]+\.tar(?![A-Za-z0-9_.-])", u) or [""])[-1] for u in urls]
    return [b if b and not b.startswith(".") and bases.count(b) == 1 else f"shard-{i:06d}.tar"
            for i, b in enumerate(bases)]


def index_webdataset(urls, out, name: str | None = None, split: str = "val", fields: FieldMap | None = None,
                     key_scheme: str = "index", classes=None, dataset: str | None = None, copy: bool = False,
                     workers: int = 1, force: bool = False, progress: bool = True) -> ShardSet:
    """Index (copy=False) or re-shard (copy=True) a webdataset shard set into a digin dataset in `out`."""
    fm = fields or FieldMap()
    fm.check()
    if key_scheme not in KEY_SCHEMES:
        raise WebdatasetError(f"key_scheme={key_scheme!r}: one of {', '.join(KEY_SCHEMES)}")
    if key_scheme == "imagenet_val" and fm.filename == "none":
        fm = FieldMap(fm.image, fm.label, fm.caption, "json:filename")
    dataset = dataset or ("imagenet" if key_scheme == "imagenet_val" else "webdataset")
    name = name or dataset
    check_names(name, split)
    class_names = load_classes(classes if classes is not None else ("imagenet" if dataset == "imagenet" else None))
    url_list = resolve_urls(urls)
    fm = fm.resolved(first_sample_suffixes(url_list[0]))
    t0 = time.monotonic()
    bar = Progress(len(url_list), f"index {name}-{split}", enabled=progress, unit="tar")
    scans = []
    for sc in pool_map(scan_tar, [(u, fm) for u in url_list], workers, ordered=True):
        if sc["problem"]:
            bar.close()
            raise WebdatasetError(sc["problem"])
        scans.append(sc)
        bar.update(1)
    bar.close()
    if all("reject" in s for sc in scans for s in sc["samples"]):
        raise WebdatasetError(f"urls={urls!r}: every sample is refused (see the rejects of tar {url_list[0]})")
    class_names = _check_labels(scans, class_names, fm)
    keys = _index_keys(scans, name, split, key_scheme)
    listing = hashlib.sha256("\n".join(f"{sc['url']}\t{sc['sha256']}" for sc in scans).encode()).hexdigest()[:16]
    n_samples = sum(len(sc["samples"]) for sc in scans)
    config = {"source": "webdataset", "urls": url_list, "split": split, "name": name, "fields": asdict(fm),
              "key_scheme": key_scheme, "dataset": dataset, "copy": copy, "listing_sha256": listing,
              "classes_sha256": sha256_bytes(json.dumps(class_names).encode())[:16], "num_samples": n_samples}
    chash = config_hash(config)
    wds = {"fields": asdict(fm), "key_scheme": key_scheme, "urls": url_list}
    meta = {"format": FORMAT, "kind": "dataset", "name": name, "split": split, "source": dataset,
            "classes": class_names, "config": config, "config_hash": chash, "num_shards": len(scans),
            "num_samples": n_samples, "image_policy": IMAGE_POLICY, "key_format": f"{name}/{split}/<{key_scheme}>",
            ("copied_from" if copy else "webdataset"): wds}
    out = Path(out)
    start_dataset(out, meta, force)  # first write: every tar was read and every sample checked
    labels = _file_labels(url_list)
    records = [_record(i, sc, keys[i], labels[i], chash) for i, sc in enumerate(scans)]
    if copy:
        _copy(out, name, split, records, fm, class_names, chash, workers, progress)
    else:
        for rec in records:
            write_commit(out, rec)
    ss = finish_dataset(out, meta)
    n_rej = sum(len(r["rejects"]) for r in records)
    print(f"[shard] {name}-{split}: {'copied' if copy else 'indexed'} {len(scans)} webdataset tars, "
          f"{n_samples - n_rej} samples ({n_rej} refused) -> {out} in {time.monotonic() - t0:.1f}s", flush=True)
    return ss


def _record(i: int, sc: dict, keys: list[str], file_label: str, chash: str) -> dict:
    rejects = [{"key": k, "reason": s["reject"], "pos": pos, "source_key": s["key"]}
               for pos, (k, s) in enumerate(zip(keys, sc["samples"])) if "reject" in s]
    return {"index": i, "file": file_label, "url": sc["url"], "count": len(keys),
            "bytes": sc["bytes"], "sha256": sc["sha256"], "first_key": keys[0], "last_key": keys[-1],
            "keys": keys, "source_keys": [s["key"] for s in sc["samples"]], "rejects": rejects,
            "spans": sc["spans"], "sample_sha256": sc["sample_sha256"],
            "labels": [s.get("label") for s in sc["samples"]], "config_hash": chash}


# ---------------------------------------------------------------------------------------------- copy=true
def _copy_tar(job) -> dict:
    """Re-shard one foreign tar into digin's layout (checked against its scan first). Runs in a pool worker."""
    out, name, split, rec, fm, classes, chash = job
    data = _read_tar(rec["url"])
    if len(data) != rec["bytes"] or sha256_bytes(data) != rec["sha256"]:
        raise WebdatasetError(f"tar {rec['url']}: changed while it was being indexed")
    groups = _groups(data, rec["url"])
    rejected = {r["pos"] for r in rec["rejects"]}
    samples = ((key, to_digin(src, members, fm, classes))
               for pos, (key, (src, members)) in enumerate(zip(rec["keys"], groups)) if pos not in rejected)
    return write_shard(out, rec["index"], shard_file(name, split, rec["index"]), samples,
                       {"config_hash": chash}, [{k: r[k] for k in ("key", "reason", "pos")} for r in rec["rejects"]])


def _copy(out, name, split, records, fm, classes, chash, workers, progress):
    # a shard with a damaged record is copied again: a copy of a tar pinned by its sha256 is byte-identical
    done = ShardSet.load(out, damaged="skip")
    jobs = []
    for rec in records:
        if is_done(out, done.records.get(rec["index"]), chash):
            continue
        (out / (shard_file(name, split, rec["index"]) + PARTIAL)).unlink(missing_ok=True)
        jobs.append((str(out), name, split, rec, fm, classes, chash))
    bar = Progress(sum(j[3]["count"] for j in jobs), f"copy {name}-{split}", enabled=progress)
    for rec in pool_map(_copy_tar, jobs, workers):
        bar.update(rec["count"] + len(rec["rejects"]))
    bar.close()


# ---------------------------------------------------------------------------------------------- reading
def foreign_sample(ss: ShardSet, index: int, source_key: str, members) -> dict | str:
    """A group of an indexed foreign tar -> digin fields {field: (ext, bytes)}, or the reason it is a reject."""
    if isinstance(members, str):
        return members
    reason = refusal(members)
    if reason:
        return reason
    fm = FieldMap(**ss.meta["webdataset"]["fields"])
    try:
        return to_digin(source_key, members, fm, ss.classes)
    except _SampleProblem as e:  # only when the tar changed and its hash was not checked
        raise ShardError(f"shard {ss.where(index)}: sample {source_key!r}: {e}") from None


def verify_foreign_shard(ss: ShardSet, index: int, check_hash: bool, deep: bool, add) -> int:
    """`digin verify` of one indexed foreign tar: size and sha256 against the record, and with `deep` its samples
    (count, the tar's keys, refused members, the mapped members' headers). Problems go to add(kind, path, detail);
    returns the bytes read."""
    rec, url = ss.records[index], ss.where(index)
    local = urlparse(url).scheme == ""
    if local and not os.path.isfile(url):
        add("missing", url, f"shard {index}: the indexed webdataset tar is missing")
        return 0
    if local and not (check_hash or deep):
        size = os.path.getsize(url)
        if size != rec["bytes"]:
            add("size", url, f"shard {index}: {size} bytes, record says {rec['bytes']} (truncated or altered)")
        return 0
    try:
        data = _read_tar(url)
    except WebdatasetError as e:
        add("unreadable", url, str(e))
        return 0
    if len(data) != rec["bytes"]:
        add("size", url, f"shard {index}: {len(data)} bytes, record says {rec['bytes']} (truncated or altered)")
        return len(data)
    if check_hash and sha256_bytes(data) != rec["sha256"]:
        add("sha256", url, f"shard {index}: sha256 differs from the record (altered after indexing)")
        return len(data)
    if deep:
        try:
            groups = _groups(data, url)
        except WebdatasetError as e:
            add("tar", url, str(e))
            return len(data)
        if [g[0] for g in groups] != rec["source_keys"]:
            add("keys" if len(groups) == rec["count"] else "count", url,
                f"shard {index}: {len(groups)} samples in the tar, their keys differ from the record")
            return len(data)
        for key, members in groups:
            fields = foreign_sample(ss, index, key, members)
            if isinstance(fields, str):
                add("member", url, f"shard {index} sample {key}: {fields}")
                continue
            for name, (ext, payload) in sorted(fields.items()):
                problem = member_problem(ext, payload)
                if problem:
                    add("member", url, f"shard {index} sample {key} member {name}.{ext}: {problem}")
    return len(data)
