"""Cross-cutting: bad paths given to any command end in one `xmr: error:` line naming the path
and exit status 2, never a traceback."""

from __future__ import annotations

import pytest

from xmr.cli import main


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("xmr: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "command",
    [
        ["data", "inspect", "{missing}"],
        ["data", "inspect", "{empty_dir}"],
        ["data", "convert", "{missing}", "{tmp}/out", "--to", "csv"],
        ["index", "build", "{missing}", "--out", "{tmp}/idx"],
        ["index", "build", "{a_file}", "--out", "{tmp}/idx"],
        ["index", "build", "{empty_dir}", "--out", "{tmp}/idx"],
        ["index", "info", "{a_file}"],
        ["index", "info", "{empty_dir}"],
        ["index", "add", "{missing}", "{empty_dir}"],
        ["search", "{a_file}", "a red car"],
        ["search", "{empty_dir}", "a red car"],
        ["serve", "{a_file}"],
        ["evaluate", "--predictions", "{empty_dir}", "--data", "{missing}"],
        ["evaluate", "--predictions", "{a_file}", "--data", "{empty_dir}"],
        ["train", "--config", "{empty_dir}"],
        ["train", "--config", "{non_utf8}"],
    ],
)
def test_bad_paths_are_one_line_errors(tmp_path, capsys, command):
    paths = {
        "tmp": tmp_path,
        "missing": tmp_path / "missing",
        "empty_dir": tmp_path / "empty_dir",
        "a_file": tmp_path / "a_file.txt",
        "non_utf8": tmp_path / "latin1.yaml",
    }
    paths["empty_dir"].mkdir()
    paths["a_file"].write_text("not what was expected\n")
    paths["non_utf8"].write_bytes(b"model: caf\xe9\n")
    args = [part.format(**paths) for part in command]
    assert main(args) == 2
    line = _one_error_line(capsys)
    named = [str(p) for p in paths.values() if str(p) in " ".join(args)]
    assert any(p in line for p in named), line


def test_system_refusals_are_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    """What the library does not name itself (a permission refused, a full disk) still ends in
    one line with the file, not a traceback."""
    import xmr.cli.data

    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "secret.txt"))

    monkeypatch.setattr(xmr.cli.data, "load_dataset", refuse)  # the reader the command calls
    assert main(["data", "inspect", str(tmp_path)]) == 2
    assert _one_error_line(capsys) == f"xmr: error: {tmp_path / 'secret.txt'}: Permission denied"
