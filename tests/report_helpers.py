"""Generated data for the report tests: a synthetic Track2 split whose first text holds HTML,
and a prediction file that ranks each text's relevant images at a chosen depth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from xmr.cli import main
from xmr.data.readers import load_dataset

EVIL = '<img src="http://example.com/x.png" onerror="alert(1)"> <b>bold</b> & "quoted"'


def synth_split(root: Path, n_test: int = 30):
    """``xmr data synth`` with ``n_test`` test images; the first test text becomes ``EVIL``."""
    assert main(["data", "synth", "--out", str(root), "--n-train", "4", "--n-test", str(n_test),
                 "--n-valid", "4", "--image-size", "32"]) == 0  # fmt: skip
    test = root / "test"
    first = (test / "test_text.txt").read_text().splitlines()[0]
    for name in ("test_text.txt", "test_gt.txt", "test_label.txt"):
        path = test / name
        path.write_text(path.read_text().replace(first, EVIL))
    return load_dataset(root, None, "test").split("test", need_relevance=True)


def track2_predictions(path: Path, split, seed: int = 0) -> dict[str, list[str]]:
    """Per text, 10 image names: the relevant ones put at a seeded depth (0 for about a third, else 0..12, so some are
    missed; none for ``EVIL``), the rest shuffled. Returns text -> names as written."""
    rng = np.random.default_rng(seed)
    names = sorted(split.item_names.get(i, i) for i in split.items)
    results = {}
    for qid, query in split.queries.items():
        relevant = sorted(split.item_names.get(i, i) for i in split.relevance.get(qid, ()))
        rest = [n for n in names if n not in relevant]
        rng.shuffle(rest)
        # The HTML text finds nothing, so it is among the worst the gallery shows.
        at = 10 if query.text == EVIL else int(rng.integers(0, 13)) * (rng.random() > 0.3)
        ranked = (rest[:at] + relevant + rest[at:])[:10]
        results[query.text] = ranked
    body = {"results": [{"text": t, "image_names": r} for t, r in results.items()]}
    path.write_text(json.dumps(body, ensure_ascii=False))
    return results
