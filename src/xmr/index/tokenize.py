"""Tokenisers for lexical (BM25) indexes, one registry, named in the index manifest.

* ``words``: lower-cased Unicode letter/digit runs (``[^\\W_]+``). Right for English and other
  space-separated languages; a run of Chinese characters would be one token, so it is wrong
  for Chinese.
* ``cjk-bigram``: Latin/digit runs as in ``words``; every run of CJK characters becomes its
  overlapping character bigrams (a one-character run stays a unigram). No dictionary needed,
  the common choice of Lucene's CJKAnalyzer.
* ``jieba``: Chinese word segmentation by jieba (accurate mode, optional extra ``xmr[text]``),
  lower-cased, punctuation and spaces dropped.
* ``auto`` (the default) is resolved once, at build time, from the corpus: ``words`` when no
  text holds a CJK character, else ``jieba`` when it is installed, else ``cjk-bigram``. The
  resolved name is what the manifest records, so queries are always cut the way the corpus was.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from xmr.errors import XmrError
from xmr.registry import Registry

Tokenizer = Callable[[str], list[str]]
TOKENIZERS: Registry[Tokenizer] = Registry("tokenizer")
register_tokenizer = TOKENIZERS.register

# CJK Unified Ideographs (+ extension A, compatibility ideographs), kana and hangul: scripts
# written without spaces between words.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_CJK_RE = re.compile(f"[{_CJK}]")
_WORD_RE = re.compile(r"[^\W_]+")
_SPLIT_RE = re.compile(f"([{_CJK}]+)")


@register_tokenizer("words")
def words(text: str) -> list[str]:
    """Lower-cased letter/digit runs: ``"A white SUV, 4x4"`` -> ``["a", "white", "suv", "4x4"]``."""
    return _WORD_RE.findall(text.lower())


@register_tokenizer("cjk-bigram")
def cjk_bigrams(text: str) -> list[str]:
    """Words for Latin text, overlapping character bigrams for CJK runs:
    ``"胖妹妹 pants"`` -> ``["胖妹", "妹妹", "pants"]``."""
    out: list[str] = []
    for part in _SPLIT_RE.split(text.lower()):
        if not part:
            continue
        if _CJK_RE.match(part):
            out += [part] if len(part) == 1 else [part[i : i + 2] for i in range(len(part) - 1)]
        else:
            out += _WORD_RE.findall(part)
    return out


@register_tokenizer("jieba")
def jieba_words(text: str) -> list[str]:
    """jieba's accurate-mode segmentation, lower-cased, without punctuation or spaces."""
    try:
        import jieba
    except ImportError:
        raise XmrError(
            "the jieba tokenizer needs jieba (pip install 'xmr[text]'), or use "
            "tokenizer=cjk-bigram, which needs no dictionary"
        ) from None
    jieba.setLogLevel(60)  # its "Building prefix dict" banner goes to stderr otherwise
    return [t for t in (w.strip().lower() for w in jieba.lcut(text)) if _WORD_RE.search(t)]


def has_cjk(texts: Iterable[str]) -> bool:
    return any(_CJK_RE.search(t) for t in texts)


def jieba_available() -> bool:
    try:
        import jieba  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_tokenizer(name: str, texts: Iterable[str] = ()) -> tuple[str, str | None]:
    """The registered tokenizer ``name`` means (``auto`` resolved from ``texts``) and, for
    ``auto``, why in words."""
    if name != "auto":
        TOKENIZERS.get(name)  # an unknown name is an error listing the known ones
        return name, None
    if not has_cjk(texts):
        return "words", "auto: no CJK text in the corpus, words"
    if jieba_available():
        return "jieba", "auto: CJK text in the corpus, jieba word segmentation"
    return "cjk-bigram", "auto: CJK text in the corpus and jieba not installed, character bigrams"


def get_tokenizer(name: str) -> Tokenizer:
    return TOKENIZERS.get(name)


def list_tokenizers() -> list[str]:
    return ["auto", *TOKENIZERS.names()]
