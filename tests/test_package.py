import subprocess
import sys

import pytest


def test_import_is_light():
    # `import xmr` and `xmr --help` must not pull torch, transformers or faiss.
    code = (
        "import sys, xmr, xmr.cli; xmr.cli.build_parser(); "
        "heavy = [m for m in ('torch', 'transformers', 'faiss') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_lazy_exports_resolve():
    import xmr

    assert xmr.RetrievalDataset.__name__ == "RetrievalDataset"
    for name in xmr.__all__:  # every documented export exists under its own name
        value = getattr(xmr, name)
        assert value is not None and (name == "__version__" or value.__name__ == name), name
    with pytest.raises(AttributeError):
        _ = xmr.not_a_thing


def test_cli_reports_user_errors_without_traceback(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "xmr", "data", "inspect", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "missing" in out.stderr
