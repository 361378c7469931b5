"""Static HTML galleries over result records (build.py: the layout; records.py: the inputs; summary.py: the
numbers; store.py: images and thumbnails; overview.py: the task pages; static/: the shared CSS and JavaScript)."""
from digin.gallery.build import write_gallery  # noqa: F401
from digin.gallery.check import check_gallery  # noqa: F401
from digin.gallery.records import ResultRecord, ShardFields, iter_records, records_from_shards  # noqa: F401
