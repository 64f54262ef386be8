"""XMR_PLUGINS: modules that register readers (or other axes) work from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PLUGIN = textwrap.dedent(
    '''
    from pathlib import Path

    from xmr.data.dataset import Item, Query, RetrievalDataset, Split
    from xmr.data.readers import register_reader


    @register_reader("lines")
    class LinesReader:
        """A toy format: a directory with queries.lines, one 'query<TAB>item,item' per line."""

        name = "lines"

        @staticmethod
        def detect(path):
            return (Path(path) / "queries.lines").is_file()

        def read(self, path, *, split=None, images=None, skip_bad=False):
            split_ = Split("test")
            for n, line in enumerate((Path(path) / "queries.lines").read_text().splitlines()):
                text, ids = line.split("\\t")
                split_.queries[f"q{n}"] = Query(f"q{n}", text)
                split_.relevance[f"q{n}"] = set(ids.split(","))
                for i in ids.split(","):
                    split_.items.setdefault(i, Item(i, captions=[f"doc {i}"]))
            return RetrievalDataset("lines", Path(path), {"test": split_})
    '''
)


def run(args, env_plugins, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), "XMR_PLUGINS": env_plugins}
    return subprocess.run(
        [sys.executable, "-m", "xmr", *args], capture_output=True, text=True, env=env
    )


def test_a_plugin_reader_is_detected_and_read(tmp_path):
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    data = tmp_path / "data"
    data.mkdir()
    (data / "queries.lines").write_text("red\ta,b\nblue\tc\n")
    out = run(["data", "inspect", str(data), "--json"], "my_plugin", tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["format"] == "lines"
    assert report["splits"]["test"]["n_queries"] == 2
    assert report["splits"]["test"]["n_relevant_pairs"] == 3
    # Without the plugin, the directory is not a data set xmr knows.
    out = run(["data", "inspect", str(data)], "", tmp_path)
    assert out.returncode == 2 and "cannot detect" in out.stderr


def test_a_missing_plugin_is_a_clear_error(tmp_path):
    out = run(["data", "inspect", str(tmp_path)], "no_such_plugin_module", tmp_path)
    assert out.returncode == 2
    assert "XMR_PLUGINS" in out.stderr and "no_such_plugin_module" in out.stderr
    assert "Traceback" not in out.stderr
