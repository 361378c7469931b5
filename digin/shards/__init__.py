"""webdataset I/O for digin: dataset converters, rank-split reader, atomic writer, manifests, stage runner.

On-disk protocol (see README_section.md):
- a shard set is a folder holding `manifest.json` (global: kind, name, split, classes, config + hash) and one
  commit record per shard under `commits/<file>.json` (index, file, count, sha256, bytes, first/last key, keys).
  A shard without a commit record does not exist.
- tar members are named `<encoded key>.<field>.<ext>`; see `naming.py` for the key encoding. Tars are written and
  read with the webdataset library's primitives (`tario.py`).
- an existing webdataset shard set is indexed in place (`wdsindex.py`): its records point at the foreign tars.
"""
from digin.shards.naming import decode_key, encode_key, member_name, parse_member_name  # noqa: F401
