"""The offline WordPiece tokenizer: its vocabulary is the same on every run, and it tokenizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from xmr.models.offline_tokenizer import PREFIX, wordpiece_vocab

TEXTS = [
    "A white SUV parked near the crossing.",
    "a red sedan driving north on the highway",
    "two pedestrians waiting at the crosswalk; one carries an umbrella",
    "a black pickup truck overtaking a silver hatchback",
    "白色的轿车",
]


def test_merges_most_frequent_pair_first():
    # ab: 3+1 > bc: 2 > abc: 1, and every piece a word continues with is a "##" piece.
    vocab = wordpiece_vocab({"ab": 3, "abc": 1, "bc": 2}, 100, special_tokens=["<unk>"])
    assert vocab == ["<unk>", "a", "b", "c", "##b", "##c", "ab", "bc", "abc"]


def test_ties_and_the_size_limit_do_not_depend_on_input_order():
    # "ab" and "cd" are equally frequent: the pair with the smaller ids merges first, whichever
    # order the words come in, and the size limit then keeps only that one.
    for counts in ({"ab": 1, "cd": 1}, {"cd": 1, "ab": 1}):
        assert wordpiece_vocab(counts, 7) == ["a", "b", "c", "d", "##b", "##d", "ab"]
        assert wordpiece_vocab(counts, 100)[6:] == ["ab", "cd"]


def test_alphabet_pieces_come_first_and_merges_stop_below_min_frequency():
    vocab = wordpiece_vocab({"aab": 1}, 100, alphabet="z", min_frequency=2)
    assert vocab == ["a", "b", "z", f"{PREFIX}a", f"{PREFIX}b"]


def test_trained_tokenizer_tokenizes_and_keeps_special_ids():
    pytest.importorskip("transformers")
    from xmr.models.offline_tokenizer import SPECIAL_TOKENS, train_wordpiece

    tok = train_wordpiece(TEXTS)
    vocab = tok.get_vocab()
    assert [vocab[t] for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert tok.tokenize("A white SUV.") == ["a", "white", "suv", "."]
    # Unseen words fall apart into pieces, never into <unk>; CJK characters stand alone.
    assert tok.unk_token not in tok.tokenize("Overtakes zebras 白车")
    assert tok.tokenize("白车")[0] == "白"
    ids = tok("a red sedan")["input_ids"]
    assert ids[0] == vocab["<|startoftext|>"] and ids[-1] == vocab["<|endoftext|>"]
    assert tok.decode(ids, skip_special_tokens=True) == "a red sedan"


_SAVE = textwrap.dedent(
    """
    import json, sys
    from xmr.models.offline_tokenizer import train_wordpiece
    for i, (texts, size) in enumerate(json.loads(sys.argv[2])):
        train_wordpiece(texts, vocab_size=size).save_pretrained(f"{sys.argv[1]}/{i}")
    """
)
CASES = [(None, 8192), (TEXTS, 8192), (TEXTS, 120)]


def test_vocabulary_is_identical_across_processes(tmp_path):
    # Regression: tokenizers' own trainer numbered pieces in hash-map order (a new random seed
    # in every process) and so learnt different merges from run to run.
    pytest.importorskip("transformers")
    runs = []
    for seed in ("1", "2", "3"):
        out = tmp_path / f"seed{seed}"
        subprocess.run(
            [sys.executable, "-c", _SAVE, str(out), json.dumps(CASES)],
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            timeout=300,
        )
        runs.append([(out / str(i) / "tokenizer.json").read_bytes() for i in range(len(CASES))])
    assert len(json.loads(runs[0][2])["model"]["vocab"]) == 120
    for i, case in enumerate(CASES):
        assert runs[1][i] == runs[0][i] and runs[2][i] == runs[0][i], case
