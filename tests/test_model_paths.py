"""A model spec that looks like a local path but names nothing says "no such directory" instead
of asking the hub (issue 13): ``hf:qs/nosuch`` beside a ``qs/`` directory, ``hf:./x``, absolute
paths, paths with more than one ``/``. A bare ``org/name`` stays a hub id."""

from __future__ import annotations

import pytest

from xmr.cli import main
from xmr.errors import XmrError
from xmr.models import create_encoder
from xmr.models.cross_encoders import create_cross_encoder
from xmr.models.registry import looks_local


@pytest.fixture
def here(tmp_path, monkeypatch):
    (tmp_path / "qs").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("target", ["qs/nosuch", "./x", "../x", "~/nosuch-xmr", "a/b/c", "/abs/x"])
def test_local_looking_targets(here, target):
    assert looks_local(target)
    with pytest.raises(XmrError, match=r"no such directory$"):
        create_encoder(f"hf:{target}")
    with pytest.raises(XmrError, match=r"no such directory$"):
        create_cross_encoder(f"hf:{target}")


@pytest.mark.parametrize("target", ["openai/clip-vit-base-patch32", "clip-vit-base", "org/x"])
def test_hub_ids_stay_hub_ids(here, target):
    assert not looks_local(target)


def test_cli_says_no_such_directory_in_one_line(here, capsys):
    assert main(["model", "info", "hf:qs/nosuch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["xmr: error: model qs/nosuch: no such directory"]
