"""A folder of images, searched recursively: items only (to index and search), no queries.

Item ids are the paths relative to the folder, with ``/`` separators (``cars/0001.jpg``); hidden
files and directories are left out. One split, ``all``.
"""

from __future__ import annotations

import os
from pathlib import Path

from xmr.data.dataset import Item, RetrievalDataset, Split
from xmr.data.images import ImageRef
from xmr.data.readers import register_reader
from xmr.data.readers._common import choose_splits, image_files, is_image_name, require_path
from xmr.errors import XmrError

SPLIT = "all"


@register_reader("folder")
class FolderReader:
    name = "folder"

    @staticmethod
    def detect(path: Path) -> bool:
        if not path.is_dir():
            return False
        for _, dirnames, filenames in os.walk(path):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            if any(is_image_name(f) and not f.startswith(".") for f in filenames):
                return True
        return False

    def read(
        self,
        path: Path,
        *,
        split: str | None = None,
        images: str | Path | None = None,
        skip_bad: bool = False,
    ) -> RetrievalDataset:
        path = Path(path)
        require_path(path)
        if not path.is_dir():
            raise XmrError(f"{path}: the folder format needs a directory of images")
        choose_splits([SPLIT], split, path)
        result = Split(SPLIT)
        for file in image_files(path, recursive=True):
            iid = file.relative_to(path).as_posix()
            result.items[iid] = Item(iid, ImageRef(path=str(file)))
        return RetrievalDataset(format=self.name, root=path, splits={SPLIT: result})
