import os
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


_OMP_PROBE = """
import os, sys
from xmr.cli import main
assert "torch" not in sys.modules
main(["data", "inspect", "/no/such/data"])
print(os.environ.get("OMP_WAIT_POLICY"))
if sys.argv[1] == "torch":  # OpenMP reads the policy when torch loads it, after main set it
    import torch
    torch.ones(256, 256) @ torch.ones(256, 256)
"""


def _omp_probe(env_policy, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if env_policy:
        env["OMP_WAIT_POLICY"] = env_policy
    env["OMP_DISPLAY_ENV"] = "VERBOSE"
    return subprocess.run(
        [sys.executable, "-c", _OMP_PROBE, *(args or ["plain"])],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )


def test_cli_makes_openmp_threads_sleep_unless_told_otherwise():
    assert _omp_probe(None).stdout.strip() == "PASSIVE"
    assert _omp_probe("ACTIVE").stdout.strip() == "ACTIVE"  # the user's choice stands
    pytest.importorskip("torch")
    out = _omp_probe(None, "torch")
    if "GOMP_SPINCOUNT" in out.stderr:  # GNU OpenMP (Linux torch wheels) shows what it read
        assert "GOMP_SPINCOUNT = '0'" in out.stderr, out.stderr
