"""One spelling per concept across every ``xmr`` command: the real parser is walked and every
command is held to the rules of :mod:`xmr.cli.options`; the old spellings still work, warning."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from xmr.cli import build_parser, main
from xmr.cli.options import HelpFormatter

# Commands that write files or directories (they name them with --out).
WRITERS = {
    "data convert", "data synth", "model tiny", "encode", "index build", "predict", "train",
    "demo",
}  # fmt: skip
# Commands that print no result of their own (serve runs a server).
NO_RESULT = {"serve"}
# train keeps --device unset by default, so a flag not given does not override --config's
# device; its effective default is still auto (TrainConfig.device).
DEVICE_FROM_CONFIG = {"train"}


def _commands(parser: argparse.ArgumentParser, prefix: str = ""):
    """(name, parser) of every leaf command."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix.strip(), parser
        return
    for name, sub in subs[0].choices.items():
        yield from _commands(sub, f"{prefix} {name}")


COMMANDS = dict(_commands(build_parser()))


def _visible(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
    ]


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in _visible(parser) for s in a.option_strings}


def test_the_walk_sees_every_command():
    assert {"data inspect", "data convert", "data synth", "model tiny", "model info", "encode",
            "index build", "index add", "index info", "search", "evaluate", "predict",
            "similarity", "train", "serve", "demo"} <= set(COMMANDS)  # fmt: skip


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_and_shows_its_default_one_way(name):
    parser = COMMANDS[name]
    formatter = HelpFormatter(prog="xmr")
    for action in _visible(parser):
        label = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{name}: {label} has no help"
        text = formatter._get_help_string(action)
        # Defaults are shown one way: "(default: X)", appended by the formatter or written out
        # when the default is computed; never "[X]", "(X)" or "(default X)".
        assert not re.search(r"\[[^\]]*\]\s*$", text), f"{name}: {label}: {text!r}"
        assert "(default " not in text and "[%(default)s]" not in text, f"{name}: {label}"
        has_default = action.default not in (None, False, argparse.SUPPRESS)
        if has_default and (action.option_strings or action.nargs in ("?", "*")):
            assert "(default: " in text, f"{name}: {label} does not show its default"
    parser.format_help()  # renders (a bad %-placeholder in a help text would raise)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_shared_options_are_spelt_one_way(name):
    parser = COMMANDS[name]
    opts = _options(parser)
    # --k with -k, always both
    assert ("-k" in opts) == ("--k" in opts), name
    if "--k" in opts:
        assert opts["--k"] is opts["-k"]
    # --out is an option; no positional is an output
    assert not [a for a in _visible(parser) if not a.option_strings and "out" in a.dest], name
    if name in WRITERS:
        assert "--out" in opts, f"{name} writes but has no --out"
    # --json on every command that prints a result
    if name not in NO_RESULT:
        assert "--json" in opts and opts["--json"].nargs == 0, f"{name} has no --json"
    # --device: one default rule, on every command that loads a model
    if "--model" in opts or name == "model info":
        assert "--device" in opts, f"{name} loads a model but has no --device"
    if "--device" in opts:
        device = opts["--device"]
        expected = None if name in DEVICE_FROM_CONFIG else "auto"
        assert device.default == expected, f"{name}: --device defaults to {device.default!r}"
        assert "auto (cuda when available, else cpu)" in device.help, name
    # --workers is image decoding processes
    if "--workers" in opts:
        assert "decoding processes" in opts["--workers"].help, name
    # --format is the data set's; the format of the file another option names is --X-format
    for option in opts:
        if option.endswith("-format") and option != "--format":
            assert option[: -len("-format")] in opts, f"{name}: {option} names no option"
    if "--format" in opts:
        assert "data set format" in opts["--format"].help, name
    for old in ("--to", "--prediction-kind", "--submission-format"):
        assert old not in opts, f"{name} still shows {old}"
    # --fused takes a value everywhere
    if "--fused" in opts:
        assert opts["--fused"].nargs != 0, name


def test_serve_workers_became_processes():
    opts = _options(COMMANDS["serve"])
    assert "--processes" in opts and "--workers" not in opts


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("xmr: warning:")]


@pytest.mark.parametrize(
    ("argv", "dest", "value", "warning"),
    [
        (["evaluate", "--predictions", "p", "--data", "d", "--prediction-kind", "trec"],
         "predictions_format", "trec", "--prediction-kind is deprecated; use --predictions-format"),
        (["predict", "--model", "m", "--data", "d", "--out", "o", "--submission-format", "muge"],
         "out_format", "muge", "--submission-format is deprecated; use --out-format"),
        (["data", "convert", "d", "--out", "o", "--to", "beir"],
         "out_format", "beir", "--to is deprecated; use --out-format"),
        (["data", "convert", "d", "--out-format", "csv", "o"],
         "out", "o", "a positional OUT is deprecated; use --out OUT"),
        (["data", "synth", "o"], "out", "o", "a positional OUT is deprecated; use --out OUT"),
        (["model", "tiny", "o"], "out", "o", "a positional OUT is deprecated; use --out OUT"),
        (["serve", "idx", "--workers", "3"],
         "processes", 3, "--workers is deprecated; use --processes"),
        (["train", "--fused", "--model", "m"],
         "fused", "bare", "--fused without a value is deprecated; use --fused W"),
    ],
)  # fmt: skip
def test_old_spellings_still_work_with_one_warning(argv, dest, value, warning, capsys):
    args = _parse(argv)
    assert getattr(args, dest) == value
    assert [w for w in _warnings(capsys.readouterr().err) if warning in w] != []
    # the new spelling is silent
    assert not _warnings(capsys.readouterr().err)


def test_a_repeated_old_spelling_warns_once(capsys):
    args = _parse(["data", "convert", "d", "--to", "csv", "--to", "beir", "o"])
    assert (args.out, args.out_format) == ("o", "beir")
    assert len(_warnings(capsys.readouterr().err)) == 2  # --to once, the positional OUT once


def test_new_spellings_do_not_warn(capsys):
    _parse(["data", "convert", "d", "--out", "o", "--out-format", "csv"])
    _parse(["predict", "--model", "m", "--data", "d", "--out", "o", "--out-format", "muge"])
    _parse(["serve", "idx", "--processes", "2"])
    args = _parse(["train", "--fused", "0.3", "--model", "m", "epochs=2"])
    assert args.fused == "0.3" and args.overrides == ["epochs=2"]
    assert not _warnings(capsys.readouterr().err)


def test_a_key_value_swallowed_by_a_bare_fused_goes_back_to_the_overrides(capsys):
    args = _parse(["train", "--model", "m", "--fused", "epochs=2", "lr=0.1"])
    assert args.fused == "bare" and args.overrides == ["epochs=2", "lr=0.1"]
    assert _warnings(capsys.readouterr().err)


def test_out_is_required_and_given_once(capsys):
    for argv in (["data", "synth"], ["data", "convert", "d", "--out-format", "csv"],
                 ["data", "synth", "a", "--out", "b"], ["data", "convert", "d", "--out", "o"]):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            _parse(argv)
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "required: --out" in err and "OUT given twice" in err and "--out-format" in err


def test_k_and_short_k_are_one_option(capsys):
    assert _parse(["search", "idx", "q", "-k", "3"]).k == 3
    assert _parse(["search", "idx", "q", "--k", "4"]).k == 4
    assert _parse(["evaluate", "--predictions", "p", "--data", "d", "-k", "5"]).k == 5
    with pytest.raises(SystemExit):
        _parse(["predict", "--model", "m", "--data", "d", "--out", "o", "--k", "0"])
    assert "argument -k/--k: must be at least 1, not 0" in capsys.readouterr().err


def test_help_shows_defaults_the_same_way(capsys):
    with pytest.raises(SystemExit):
        main(["encode", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "inputs per shard (default: 4096)" in out
    assert "--device D where the model runs: auto (cuda when available, else cpu)" in out
    assert "(default: auto)" in out


def test_old_positional_out_end_to_end(tmp_path, capsys):
    """The deprecated forms do the real work: synth then convert, into the named directories."""
    data, converted = tmp_path / "data", tmp_path / "csv"
    assert main(["data", "synth", str(data), "--n-train", "8", "--n-test", "4",
                 "--image-size", "16", "--json"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert json.loads(captured.out)["splits"]["test"]["n_items"] == 4
    assert len(_warnings(captured.err)) == 1
    assert main(["data", "convert", str(data), "--to", "csv", str(converted), "--split", "test",
                 "--json"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["format"] == "csv" and summary["n_items"] == 4
    assert (converted / "test.csv").is_file()
    assert len(_warnings(captured.err)) == 2
    again = tmp_path / "csv2"
    assert main(["data", "convert", str(data), "--out", str(again), "--out-format", "csv",
                 "--split", "test"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert not _warnings(captured.err) and (again / "test.csv").is_file()
    assert "wrote" in captured.out
