"""Library errors name parameters (``split=``); the command line prints them as its flags."""

from __future__ import annotations

import pytest

from xmr.cli import build_parser, main
from xmr.cli.error_terms import in_cli_terms, option_flags
from xmr.data.synth import generate_synthetic
from xmr.errors import XmrError


def test_parameters_become_the_parsers_flags_and_nothing_else_changes():
    flags = option_flags(build_parser())
    assert flags["split"] == "--split" and flags["api_base"] == "--api-base"
    assert in_cli_terms("choose a split with split= (splits: a, b)", flags) == (
        "choose a split with --split (splits: a, b)"
    )
    assert in_cli_terms("not found (pass images=DIR)", flags) == "not found (pass --images DIR)"
    assert in_cli_terms("uri= and collection= (backend=milvus)", flags) == (
        "--uri and --collection (--backend milvus)"
    )
    # a switch's True is the bare flag
    assert in_cli_terms("already there (upsert=True replaces it)", flags) == (
        "already there (--upsert replaces it)"
    )
    # unknown names, and key=value inside a spec, are left as written
    spec = "not a BM25 spec (bm25:k1=..,b=..,tokenizer=..); reranker= is missing"
    assert in_cli_terms(spec, flags) == spec


def test_the_same_error_in_library_and_cli_terms(tmp_path, capsys):
    from xmr.data.readers import load_dataset

    data = generate_synthetic(tmp_path / "d", n_train=4, n_test=4, image_size=16, seed=0)
    with pytest.raises(XmrError, match="choose a split with split="):
        load_dataset(data).split(None)
    assert main(["data", "inspect", str(data), "--images", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--images applies to one split; choose it with --split" in err and "split=" not in err
