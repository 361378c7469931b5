"""Static HTML galleries over result records (build.py: the layout; records.py: the inputs; summary.py: the
numbers; store.py: images and thumbnails; thumbs.py: the thumbnails the stages write; overview.py: the task pages;
detail.py: every result in full; neurons.py: a neuron's top images and words; compare.py: two runs on one page;
labels.py: what metrics are called; svg.py: plots; figure.py + pdf.py: exported figures; static/: the shared CSS
and JavaScript)."""
from digin.stages.gallery.build import write_gallery  # noqa: F401
from digin.stages.gallery.check import check_gallery  # noqa: F401
from digin.stages.gallery.records import ResultRecord, ShardFields, iter_records, records_from_shards  # noqa: F401
