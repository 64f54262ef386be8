"""``xmr evaluate --model`` and ``xmr predict`` as functions: load the data set, embed the split
with a bi-encoder (:func:`xmr.eval.embedded.embed_split`, the resumable pipeline of ``xmr
encode``), rank exactly, then score the rankings or write them as a validated submission."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xmr.data.readers import load_dataset
from xmr.errors import XmrError
from xmr.eval.embedded import embed_split, evaluate_embedded, rank_embedded
from xmr.eval.submission import default_submission_format, write_submission
from xmr.io.atomic import check_output_file
from xmr.workflows.text_eval import evaluate_text_model, is_text_job, predict_text


def _encoder(model, device, precision):
    if isinstance(model, str):
        from xmr.models import create_encoder

        return create_encoder(model, device=device, precision=precision)
    return model


def evaluate_model(
    model,
    data,
    *,
    split: str | None = None,
    format: str | None = None,
    directions: Sequence[str] | None = None,
    k: int = 10,
    device: Any = None,
    precision: str = "fp32",
    skip_empty: bool = False,
    text: dict[str, Any] | None = None,
    **embed_options: Any,
) -> dict[str, float]:
    """``xmr evaluate --model`` as a function: ``model`` is a spec string or an encoder, ``data``
    a path (or a loaded :class:`~xmr.data.dataset.RetrievalDataset`); ``embed_options`` go to
    :func:`embed_split` (``emb_dir``, ``batch_size``, ``workers``, ``progress``).

    Text -> text jobs (``model="bm25..."``, a hybrid in ``text``, or a corpus whose items have no
    image, such as BEIR) go to :func:`xmr.workflows.text_eval.evaluate_text_model` with the
    options in ``text`` (``bm25``, ``hybrid``, ``hybrid_weights``, ``rrf_k``, ``k_values``) and
    report ``t2t/`` keys."""
    dataset = data if hasattr(data, "splits") else load_dataset(data, format, split)
    chosen = dataset.split(split, need_relevance=True)
    text = dict(text or {})
    if is_text_job(model, chosen, text.get("hybrid")):
        if directions and set(directions) - {"t2t"}:
            raise XmrError(
                f"a text retrieval job has the one direction t2t, not {list(directions)}"
            )
        return evaluate_text_model(
            model, dataset, split=chosen.name, k=k, device=device, precision=precision,
            skip_empty=skip_empty, batch_size=embed_options.get("batch_size", 64), **text,
        )  # fmt: skip
    emb = embed_split(_encoder(model, device, precision), chosen, **embed_options)
    return evaluate_embedded(emb, directions=directions, k=k, device=device, skip_empty=skip_empty)


def predict(
    model,
    data,
    out: str | Path,
    *,
    split: str | None = None,
    format: str | None = None,
    submission_format: str | None = None,
    k: int = 10,
    device: Any = None,
    precision: str = "fp32",
    text: dict[str, Any] | None = None,
    **embed_options: Any,
) -> Path:
    """``xmr predict`` without reranking as a function: the top ``k`` of every query of the split
    (``test`` when there is one) written to ``out`` as a validated submission file. Text jobs
    (as in :func:`evaluate_model`) go to :func:`xmr.workflows.text_eval.predict_text`."""
    check_output_file(out)  # before the work, not after it
    dataset = data if hasattr(data, "splits") else load_dataset(data, format, split)
    if split is None and "test" in dataset.splits:
        split = "test"
    chosen = dataset.split(split)
    text = dict(text or {})
    if is_text_job(model, chosen, text.get("hybrid")):
        text.pop("k_values", None)
        return predict_text(
            model, dataset, out, split=chosen.name, k=k, device=device, precision=precision,
            submission_format=submission_format or "trec",
            batch_size=embed_options.get("batch_size", 64), **text,
        )  # fmt: skip
    kind = submission_format or default_submission_format(dataset, chosen)
    emb = embed_split(_encoder(model, device, precision), chosen, **embed_options)
    ranked = rank_embedded(emb, min(k, len(chosen.items)), device=device)
    return write_submission(out, ranked, chosen, kind=kind, k=k)
