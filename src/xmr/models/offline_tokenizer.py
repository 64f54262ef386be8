"""Tokenizers built offline for tiny random models (tests, the demo): a WordPiece vocabulary
trained with the ``tokenizers`` library on the given texts, wrapped as a transformers fast
tokenizer. Lowercased, split on whitespace and punctuation, CJK characters split one by one, and
every single character kept as a piece so no word is ever entirely unknown."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS]  # ids 0, 1, 2, 3
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
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    corpus = list(texts) if texts is not None else BUILTIN_WORDS.split()
    # Each character once as a word start and once as a continuation ("##c"), so unseen words
    # decompose into pieces instead of becoming <unk>.
    corpus += [ch + ch for ch in ALPHABET]
    tok = Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=list(ALPHABET),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
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
