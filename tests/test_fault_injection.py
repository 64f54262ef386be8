"""Every write path under a full disk (ENOSPC) and a refused permission (EACCES): the command
ends in one line ``xmr: error: FILE: reason``, the previous artefact is intact, and no temporary
is left behind (issue 13).

The failures are injected where the bytes go: files opened for writing under a chosen directory
get a raw file whose ``write`` fails as a full disk's does (Python's buffered I/O, numpy's zip
writer, torch.save and faiss, which writes through a Python file, all hit it), and creating a file
or directory there is refused as in a read-only directory. One test uses a real kernel limit
(``RLIMIT_FSIZE``) in a subprocess, so nothing is simulated there at all.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xmr.cli import main
from xmr.io.failures import WriteError

NO_SPACE = os.strerror(errno.ENOSPC)
# RLIMIT_FSIZE and SIGXFSZ: the kernel refuses writes past a size, no injection involved.
needs_rlimit = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="needs RLIMIT_FSIZE / SIGXFSZ (Linux)"
)
DENIED = os.strerror(errno.EACCES)


class _FullDiskFile(io.FileIO):
    """A raw file on a full disk: opening works, writing bytes does not."""

    def write(self, data) -> int:
        if len(memoryview(data)) == 0:
            return 0
        raise OSError(errno.ENOSPC, NO_SPACE)


class Faults:
    """Injects write failures for paths under ``root`` whose name contains ``match``."""

    def __init__(self, monkeypatch) -> None:
        self.monkeypatch = monkeypatch
        self.hits = 0

    def _ours(self, path, root: Path, match: str) -> bool:
        """``path`` is inside ``root`` (not ``root`` itself) and its name contains ``match``."""
        if isinstance(path, int):
            return False
        p = Path(os.fsdecode(path)).absolute()
        return p != root and p.is_relative_to(root) and match in p.name

    def full(self, root: Path, match: str = "") -> None:
        """Writes to files under ``root`` fail with ENOSPC (buffered data: at the flush)."""
        real_open = builtins.open
        root = Path(root).absolute()

        def fake_open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None,
                      closefd=True, opener=None):  # fmt: skip
            if not any(c in mode for c in "wax+") or not self._ours(file, root, match):
                return real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
            self.hits += 1
            raw_mode = mode.replace("b", "").replace("t", "")
            raw = _FullDiskFile(file, raw_mode)
            buffered = io.BufferedRandom(raw) if "+" in mode else io.BufferedWriter(raw)
            if "b" in mode:
                return buffered
            return io.TextIOWrapper(buffered, encoding=encoding or "utf-8", errors=errors,
                                    newline=newline)  # fmt: skip

        self.monkeypatch.setattr(builtins, "open", fake_open)
        self.monkeypatch.setattr(io, "open", fake_open)

    def read_only(self, root: Path) -> None:
        """Creating files or directories under ``root`` fails with EACCES (as root, chmod would
        not stop this process, so the refusal is injected)."""
        real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
        root = Path(root).absolute()

        def refuse(path):
            self.hits += 1
            raise PermissionError(errno.EACCES, DENIED, os.fsdecode(path))

        def fake_open(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and self._ours(file, root, ""):
                refuse(file)
            return real_open(file, mode, *args, **kwargs)

        def fake_os_open(path, flags, *args, **kwargs):
            if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR) and self._ours(path, root, ""):
                refuse(path)
            return real_os_open(path, flags, *args, **kwargs)

        def fake_mkdir(path, *args, **kwargs):
            if self._ours(path, root, ""):
                refuse(path)
            return real_mkdir(path, *args, **kwargs)

        self.monkeypatch.setattr(builtins, "open", fake_open)
        self.monkeypatch.setattr(io, "open", fake_open)
        self.monkeypatch.setattr(os, "open", fake_os_open)
        self.monkeypatch.setattr(os, "mkdir", fake_mkdir)

    def clear(self) -> None:
        self.monkeypatch.undo()


@pytest.fixture
def faults(monkeypatch):
    injected = Faults(monkeypatch)
    yield injected
    injected.clear()


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a directory)."""
    return {
        str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
        for p in sorted(Path(root).rglob("*"))
    }


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("xmr: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A small data set, a tiny model, its test-split embeddings and an index, made once."""
    root = tmp_path_factory.mktemp("faults")
    data, model, emb = root / "data", root / "model", root / "out" / "emb"
    for argv in (
        ["data", "synth", str(data), "--n-train", "8", "--n-test", "12", "--n-valid", "0",
         "--image-size", "16"],
        ["model", "tiny", str(model), "--data", str(data)],
        ["encode", "--model", f"hf:{model}", "--data", str(data), "--split", "test", "--out",
         str(emb), "--workers", "0", "--json"],
        ["index", "build", str(emb), "--out", str(root / "out" / "index")],
    ):  # fmt: skip
        assert main(argv) == 0, argv
    return root


def _cli(work: Path, *args: str) -> list[str]:
    return [a.format(root=work, data=work / "data", model=work / "model") for a in args]


# --- index build / add ------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["full", "read_only"])
def test_index_build_keeps_the_old_index(work, faults, capsys, failure):
    from xmr.index import load_index

    out = work / "out"
    index = out / "index"
    before, ids = snapshot(out), load_index(index).ids
    capsys.readouterr()
    getattr(faults, failure)(out)
    code = main(["index", "build", str(out / "emb"), "--out", str(index), "--spec", "Flat"])
    faults.clear()
    assert code == 2 and faults.hits
    line = one_error_line(capsys)
    if failure == "full":
        assert line == f"xmr: error: {index / 'index.faiss'}: {NO_SPACE}"
    else:
        assert line == f"xmr: error: {index}: {DENIED}"
    assert snapshot(out) == before  # the old index, byte for byte, and no temporary beside it
    assert load_index(index).ids == ids


def test_index_add_keeps_the_old_index(work, faults, capsys, tmp_path):
    from xmr.index import load_index

    index = tmp_path / "index"
    assert main(["index", "build", str(work / "out" / "emb"), "--out", str(index)]) == 0
    # New ids from another split of the same data and model.
    emb = tmp_path / "train_emb"
    argv = _cli(work, "encode", "--model", "hf:{model}", "--data", "{data}", "--split", "train",
                "--out", str(emb), "--workers", "0", "--kinds", "images", "--json")  # fmt: skip
    assert main(argv) == 0
    before = snapshot(tmp_path)
    capsys.readouterr()
    faults.full(tmp_path, match="items.jsonl")
    code = main(["index", "add", str(index), str(emb)])
    faults.clear()
    assert code == 2
    assert one_error_line(capsys) == f"xmr: error: {index / 'items.jsonl'}: {NO_SPACE}"
    assert snapshot(tmp_path) == before
    assert len(load_index(index)) == 12


@needs_rlimit
def test_a_real_file_size_limit_is_one_line_not_a_truncated_index(work, tmp_path):
    """No injection: the kernel refuses writes past RLIMIT_FSIZE (EFBIG), in a subprocess. faiss'
    own file writer ignored a failed fclose, so a small index could come out truncated."""
    index = tmp_path / "index"
    assert main(["index", "build", str(work / "out" / "emb"), "--out", str(index)]) == 0
    before = snapshot(tmp_path)
    script = textwrap.dedent(
        """
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write(), not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))
        from xmr.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    argv = ["index", "build", str(work / "out" / "emb"), "--out", str(index), "--spec", "Flat"]
    done = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=300
    )
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("xmr: error:")]
    assert done.returncode == 2, done.stderr
    assert errors == [f"xmr: error: {index / 'index.faiss'}: {os.strerror(errno.EFBIG)}"]
    assert "Traceback" not in done.stderr
    assert snapshot(tmp_path) == before


# --- embedding shards and manifests -----------------------------------------------------------


def test_encode_rerun_on_a_full_disk_keeps_the_embeddings(work, faults, capsys):
    emb = work / "out" / "emb"
    before = snapshot(emb)
    capsys.readouterr()
    faults.full(emb)
    argv = _cli(work, "encode", "--model", "hf:{model}", "--data", "{data}", "--split", "test",
                "--out", str(emb), "--workers", "0", "--json")  # fmt: skip
    code = main(argv)
    faults.clear()
    assert code == 2
    assert one_error_line(capsys) == f"xmr: error: {emb / 'manifest.json'}: {NO_SPACE}"
    assert snapshot(emb) == before


@pytest.mark.parametrize("failure", ["full", "read_only"])
def test_a_shard_that_cannot_be_written_names_itself_and_resumes(work, faults, capsys, tmp_path,
                                                                 failure):  # fmt: skip
    emb = tmp_path / "emb"
    argv = _cli(work, "encode", "--model", "hf:{model}", "--data", "{data}", "--split", "test",
                "--out", str(emb), "--workers", "0", "--json")  # fmt: skip
    capsys.readouterr()
    if failure == "full":
        faults.full(emb / "images", match="00000.npz")
    else:
        faults.read_only(emb / "images")  # the directory may be created, nothing in it
    code = main(argv)
    faults.clear()
    assert code == 2
    reason = NO_SPACE if failure == "full" else DENIED
    assert one_error_line(capsys) == f"xmr: error: {emb / 'images' / '00000.npz'}: {reason}"
    assert list((emb / "images").iterdir()) == []  # no temporary shard
    assert main(argv) == 0  # the same command, with room again, finishes the job
    from xmr.encode import load_embeddings

    assert len(load_embeddings(emb, "images")) == 12


# --- predictions, per-query reports, checkpoints ----------------------------------------------


def test_predict_keeps_the_previous_submission(work, faults, capsys, tmp_path):
    sub = tmp_path / "submission.json"
    argv = _cli(work, "predict", "--model", "hf:{model}", "--data", "{data}", "--out", str(sub),
                "--emb-dir", str(work / "out" / "emb"), "--workers", "0", "--json")  # fmt: skip
    assert main(argv) == 0
    before = snapshot(tmp_path)
    capsys.readouterr()
    faults.full(tmp_path, match="submission.json")
    code = main(argv)
    faults.clear()
    assert code == 2
    assert one_error_line(capsys) == f"xmr: error: {sub}: {NO_SPACE}"
    assert snapshot(tmp_path) == before

    # The per-query report of `xmr evaluate` is written the same way.
    report = tmp_path / "per_query.csv"
    argv = _cli(work, "evaluate", "--predictions", str(sub), "--data", "{data}", "--split",
                "test", "--per-query", str(report), "--json")  # fmt: skip
    assert main(argv) == 0
    before = snapshot(tmp_path)
    capsys.readouterr()
    faults.read_only(tmp_path)
    code = main(argv)
    faults.clear()
    assert code == 2
    assert one_error_line(capsys) == f"xmr: error: {report}: {DENIED}"
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["muge", "trec"])
def test_write_predictions_raises_write_error(faults, tmp_path, kind):
    from xmr.eval.predictions import write_predictions

    path = tmp_path / f"run.{kind}"
    write_predictions(path, {"1": ["a", "b"]}, kind=kind)
    before = snapshot(tmp_path)
    faults.full(tmp_path)
    with pytest.raises(WriteError) as info:
        write_predictions(path, {"1": ["b", "a"]}, kind=kind)
    faults.clear()
    assert (info.value.path, info.value.reason) == (str(path), NO_SPACE)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("failure", ["full", "read_only"])
def test_a_checkpoint_save_that_fails_keeps_the_last_checkpoint(faults, tmp_path, failure):
    import torch

    from xmr.train.checkpoint import atomic_torch_save

    path = tmp_path / "checkpoints" / "last.pt"
    atomic_torch_save({"step": 1, "w": torch.arange(4.0)}, path)
    before = snapshot(tmp_path)
    getattr(faults, failure)(tmp_path / "checkpoints")
    with pytest.raises(WriteError) as info:
        atomic_torch_save({"step": 2, "w": torch.zeros(4096)}, path)
    faults.clear()
    assert info.value.path == str(path)
    assert info.value.reason == (NO_SPACE if failure == "full" else DENIED)
    assert snapshot(tmp_path) == before
    assert torch.load(path)["step"] == 1


def test_a_json_artefact_that_fails_keeps_the_old_one(faults, tmp_path):
    from xmr.io.atomic import atomic_write_json

    path = tmp_path / "manifest.json"
    atomic_write_json(path, {"v": 1})
    faults.full(tmp_path)
    with pytest.raises(WriteError, match=f"manifest.json: {NO_SPACE}"):
        atomic_write_json(path, {"v": 2, "pad": "x" * 100_000})
    faults.clear()
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    assert path.read_text() == '{\n  "v": 1\n}\n'


def test_failure_reasons_of_cpp_writers_are_one_line():
    """faiss' and torch's C++ errors become the reason after the file name, without the
    source location."""
    from xmr.io.failures import failure_reason

    faiss_error = RuntimeError(
        "Error in void faiss::write_index(const Index*, IOWriter*, int) at "
        "/project/faiss/impl/index_write.cpp:499: Error: 'ret == (size * 4)' failed: write "
        "error in /x/index.faiss: 4051 != 320320 (No space left on device)"
    )
    assert failure_reason(faiss_error) == "No space left on device"
    opening = RuntimeError(
        "Error in faiss::FileIOWriter::FileIOWriter(const char*) at /project/faiss/impl/io.cpp:"
        "103: Error: 'f' failed: could not open /x for writing: Permission denied"
    )
    assert failure_reason(opening) == "could not open /x for writing: Permission denied"
    torch_error = RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64")
    assert (
        failure_reason(torch_error)
        == "[enforce fail at inline_container.cc:603] . unexpected pos 64"
    )
    assert failure_reason(OSError(errno.EACCES, DENIED)) == DENIED


@needs_rlimit
def test_a_model_save_past_a_real_file_size_limit_is_a_write_error(work, tmp_path):
    """safetensors writes from Rust, past any Python hook: a real kernel limit (EFBIG) in a
    subprocess shows its SafetensorError becomes a WriteError naming the directory."""
    script = textwrap.dedent(
        """
        import resource, signal, sys
        from xmr.io.failures import WriteError
        from xmr.models import create_encoder
        encoder = create_encoder(sys.argv[1], device="cpu")
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            encoder.save(sys.argv[2])
        except WriteError as exc:
            print(f"WriteError|{exc.path}|{exc.reason}")
        """
    )
    out = tmp_path / "saved"
    done = subprocess.run(
        [sys.executable, "-c", script, f"hf:{work / 'model'}", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"WriteError|{out}|{os.strerror(errno.EFBIG)}", done.stderr


def test_a_training_log_rewrite_that_fails_keeps_the_log(faults, tmp_path):
    """Resuming rewrites the logs without the rows after the checkpoint; on a full disk the
    finished steps' log must survive, and an append names its file."""
    from xmr.train.logs import MetricLog

    log = MetricLog(tmp_path, "train_log")
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 1.0 / step})
    before = snapshot(tmp_path)
    faults.full(tmp_path)
    with pytest.raises(WriteError) as info:
        log.truncate_after(2)
    assert (info.value.path, info.value.reason) == (str(tmp_path / "train_log.jsonl"), NO_SPACE)
    with pytest.raises(OSError) as appended:
        MetricLog(tmp_path, "train_log").write({"step": 4, "loss": 0.2})
    faults.clear()
    assert appended.value.filename == str(tmp_path / "train_log.jsonl")
    assert snapshot(tmp_path) == before
    assert [r["step"] for r in MetricLog(tmp_path, "train_log").rows()] == [1, 2, 3]


def test_synth_on_a_full_disk_names_the_file(faults, capsys, tmp_path):
    faults.full(tmp_path / "d", match=".jpg")
    code = main(["data", "synth", str(tmp_path / "d"), "--n-train", "4", "--n-test", "2"])
    faults.clear()
    assert code == 2
    line = one_error_line(capsys)
    assert line.startswith(f"xmr: error: {tmp_path / 'd' / 'train' / 'train_images'}/")
    assert line.endswith(f".jpg: {NO_SPACE}")
