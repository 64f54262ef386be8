"""Tokenizers built offline for tiny random models (tests, the demo): a WordPiece vocabulary
trained with the ``tokenizers`` library on the given texts, wrapped as a transformers fast
tokenizer. Lowercased, split on whitespace and punctuation, CJK characters split one by one, and
every single character kept as a piece so no word is ever entirely unknown.

The vocabulary is learnt here rather than by ``tokenizers.trainers.WordPieceTrainer``: that
trainer numbers the ``##`` pieces in the iteration order of a Rust hash map with a random seed
per process, and breaks ties between equally frequent merges by those numbers, so two runs on the
same texts learn different vocabularies (huggingface/tokenizers#1794). The same merges with ties
broken by fixed ids give one vocabulary, in one order, on every run."""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable
from itertools import pairwise
from typing import Any

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS]  # ids 0, 1, 2, 3
PREFIX = "##"  # marks a piece that continues a word
# Every word made of these stays spellable from pieces.
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"-_/()&+#%*=@"

# Built-in vocabulary when no texts are given: common English plus traffic-scene words.
BUILTIN_WORDS = """
a an the this that these those it its is are was were be been being has have had do does did
of in on at to from by with without for and or but not no nor as than then there here where when
which who whom whose what why how all any both each few more most other some such only own same so
too very can will just should now one two three four five six seven eight nine ten first second
third left right front back rear side top bottom center middle near far next behind beside between
across along around over under above below up down inside outside into onto out off through toward
photo picture image view shot scene frame camera surveillance footage street road lane highway
intersection crossing crosswalk sidewalk parking lot bridge tunnel traffic light signal sign stop
car cars vehicle vehicles sedan suv truck pickup van minivan bus coach taxi cab motorcycle motorbike
bicycle bike scooter tricycle trailer lorry jeep hatchback coupe convertible wagon estate ambulance
police fire engine tractor tanker dump cement mixer garbage delivery
person people pedestrian pedestrians man woman men women boy girl child children driver rider
walking running riding driving crossing standing waiting parked moving turning stopped going
coming heading facing carrying wearing holding pushing
white black gray grey silver red blue green yellow orange brown purple pink gold beige dark light
bright pale colored colour color two-tone striped
small large big little long short tall wide narrow new old clean dirty shiny
north south east west northbound southbound eastbound westbound
day night morning evening afternoon sunny rainy cloudy foggy snowy wet dry
shirt jacket coat hat cap helmet bag backpack umbrella pants trousers jeans skirt dress shoes
license plate wheel wheels window windows door doors roof rack mirror headlight headlights
logo brand toyota honda ford chevrolet nissan bmw audi mercedes volkswagen hyundai kia mazda
"""


def train_wordpiece(
    texts: Iterable[str] | None = None,
    vocab_size: int = 8192,
    model_max_length: int = 77,
    bos: bool = True,
    eos: bool = True,
) -> Any:
    """Train a WordPiece tokenizer on ``texts`` (the built-in words when None) and wrap it as a
    transformers ``PreTrainedTokenizerFast`` with pad/unk/bos/eos tokens (ids 0..3). Encoded
    texts read ``<|startoftext|> ... <|endoftext|>`` (CLIP pools at the end token)."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    corpus = list(texts) if texts is not None else BUILTIN_WORDS.split()
    # Each character once as a word start and once as a continuation ("##c"), so unseen words
    # decompose into pieces instead of becoming <unk>.
    corpus += [ch + ch for ch in ALPHABET]
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in corpus:
        normalized = normalizer.normalize_str(text)
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalized))
    vocab = wordpiece_vocab(words, vocab_size, special_tokens=SPECIAL_TOKENS, alphabet=ALPHABET)
    tok = Tokenizer(
        models.WordPiece(
            {piece: i for i, piece in enumerate(vocab)},
            unk_token=UNK,
            continuing_subword_prefix=PREFIX,
            max_input_chars_per_word=100,
        )
    )
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece(prefix=PREFIX)
    tok.add_special_tokens(SPECIAL_TOKENS)
    template = " ".join(t for t, on in ((BOS, bos), ("$A", True), (EOS, eos)) if on)
    pair = " ".join(
        t for t, on in ((BOS, bos), ("$A", True), (EOS, eos), ("$B", True), (EOS, eos)) if on
    )
    specials = [(t, SPECIAL_TOKENS.index(t)) for t, on in ((BOS, bos), (EOS, eos)) if on]
    tok.post_processor = processors.TemplateProcessing(
        single=template, pair=pair, special_tokens=specials
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
        model_input_names=["input_ids", "attention_mask"],
    )


def wordpiece_vocab(
    word_counts: dict[str, int],
    vocab_size: int,
    *,
    special_tokens: Iterable[str] = (),
    alphabet: Iterable[str] = (),
    min_frequency: int = 1,
) -> list[str]:
    """A WordPiece vocabulary learnt by byte-pair merges, as the ``tokenizers`` trainer does.

    The vocabulary starts with ``special_tokens``, every character (``alphabet`` and those in the
    words) and, as ``##c``, every character that continues a word, each group in code point order.
    Then the most frequent adjacent pair of pieces is merged into a new piece until there are
    ``vocab_size`` pieces or no pair occurs ``min_frequency`` times; equally frequent pairs are
    merged in the order of their pieces' ids. The result depends on nothing but the arguments.

    Returns:
        The pieces in id order.
    """
    vocab: list[str] = []
    ids: dict[str, int] = {}

    def add(piece: str) -> int:
        if piece not in ids:
            ids[piece] = len(vocab)
            vocab.append(piece)
        return ids[piece]

    for token in special_tokens:
        add(token)
    for ch in sorted(set(alphabet).union(*word_counts)):
        add(ch)
    for ch in sorted({ch for word in word_counts for ch in word[1:]}):
        add(PREFIX + ch)

    words = sorted(w for w in word_counts if w)
    counts = [int(word_counts[w]) for w in words]
    pieces = [[ids[w[0]]] + [ids[PREFIX + ch] for ch in w[1:]] for w in words]
    pair_counts: Counter[tuple[int, int]] = Counter()
    where: dict[tuple[int, int], set[int]] = {}
    for i, word in enumerate(pieces):
        for pair in pairwise(word):
            pair_counts[pair] += counts[i]
            where.setdefault(pair, set()).add(i)
    # Max-heap on count, then ascending ids; entries whose count went stale are re-queued.
    queue = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(queue)
    while queue and len(vocab) < vocab_size:
        neg_count, pair = heapq.heappop(queue)
        count = pair_counts[pair]
        if count != -neg_count:
            if count > 0:
                heapq.heappush(queue, (-count, pair))
            continue
        if count < max(1, min_frequency):
            break
        first, second = vocab[pair[0]], vocab[pair[1]]
        new = add(first + second.removeprefix(PREFIX))
        changed: set[tuple[int, int]] = set()
        for i in sorted(where.pop(pair, ())):
            word = pieces[i]
            merged = _merge_pair(word, pair, new)
            if merged is None:
                continue
            for p in pairwise(word):
                pair_counts[p] -= counts[i]
            for p in pairwise(merged):
                pair_counts[p] += counts[i]
                where.setdefault(p, set()).add(i)
                changed.add(p)
            pieces[i] = merged
        for p in sorted(changed):
            if pair_counts[p] > 0:
                heapq.heappush(queue, (-pair_counts[p], p))
    return vocab


def _merge_pair(word: list[int], pair: tuple[int, int], new: int) -> list[int] | None:
    """``word`` with each non-overlapping occurrence of ``pair`` (left to right) made ``new``;
    None when it has none."""
    out: list[int] = []
    i, found = 0, False
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(new)
            i += 2
            found = True
        else:
            out.append(word[i])
            i += 1
    return out if found else None
