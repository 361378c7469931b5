"""Static HTML galleries over result records (see html.py for the layout, records.py for the inputs)."""
from digin.gallery.check import check_gallery  # noqa: F401
from digin.gallery.html import write_gallery  # noqa: F401
from digin.gallery.records import ResultRecord, ShardFields, records_from_shards  # noqa: F401
