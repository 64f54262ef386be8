"""Data sets: the RetrievalDataset model, format readers, image loading, synthetic data."""

from xmr.data.dataset import Item, Query, RetrievalDataset, Split
from xmr.data.images import ImageRef
from xmr.data.readers import detect_format, list_readers, load_dataset, register_reader

__all__ = [
    "ImageRef",
    "Item",
    "Query",
    "RetrievalDataset",
    "Split",
    "detect_format",
    "list_readers",
    "load_dataset",
    "register_reader",
]
