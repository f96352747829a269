"""The storage floor (jaxshare/storage): outputs to URLs through the same writers as local ones.

memory:// is fsspec's in-process filesystem, so the CLI is called in-process (jaxshare.cli.main.main).
"""
from __future__ import annotations

import ast
import uuid
from pathlib import Path

import numpy as np
import pytest

import jaxshare as js
from tests.conftest import random_hf_model
from jaxshare.cli.main import main
from jaxshare.storage import atomic, paths
from jaxshare.storage.fetch import MissingInput
from jaxshare.storage.markers import COMMIT_MARKER, OUTPUT_MARKER, UPLOAD_MARKER

STORAGE = Path(js.__file__).parent / "storage"


def _url(name: str) -> str:
    return f"memory://jaxshare-storage-test/{uuid.uuid4().hex[:8]}/{name}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("storage") / "m"
    random_hf_model("llama").save_pretrained(d)
    return d


def test_the_floor_imports_nothing_from_jaxshare_but_errors():
    for f in STORAGE.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for n in names:
                assert not n.startswith("jaxshare") or n.startswith(("jaxshare.storage", "jaxshare.errors")), (f, n)


def test_cli_export_and_convert_write_marked_copies_to_a_url(model_dir, capsys):
    hf, native = _url("hf"), _url("native")
    assert main(["export", str(model_dir), hf]) == 0
    assert (paths.as_path(hf) / COMMIT_MARKER).exists() and (paths.as_path(hf) / "config.json").exists()
    assert main(["convert", str(model_dir), native]) == 0
    assert (paths.as_path(native) / COMMIT_MARKER).exists()
    assert main(["export", str(model_dir), hf]) == 2  # taken, and no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(model_dir), hf, "--overwrite"]) == 0
    toks = np.arange(12, dtype=np.int32)[None]
    want = np.asarray(js.forward(js.load(model_dir).params, js.load(model_dir).cfg, toks))
    for url in (hf, native):
        m = js.load(url)
        np.testing.assert_allclose(np.asarray(js.forward(m.params, m.cfg, toks)), want, atol=1e-5, rtol=0)


def test_an_upload_killed_midway_is_never_read_and_is_replaced_next_time(model_dir, monkeypatch):
    m, url = js.load(model_dir), _url("native")
    real, sent = paths.upload_file, []

    def dying(src, target):
        if len(sent) == 2:  # the output marker and one more file are up
            raise KeyboardInterrupt
        sent.append(target.name)
        real(src, target)

    monkeypatch.setattr(paths, "upload_file", dying)
    with pytest.raises(KeyboardInterrupt):
        js.save(m, url)
    monkeypatch.setattr(paths, "upload_file", real)
    dest = paths.as_path(url)
    assert sent[0] == OUTPUT_MARKER and (dest / UPLOAD_MARKER).exists() and not (dest / COMMIT_MARKER).exists()
    with pytest.raises(MissingInput, match="did not finish"):
        js.load(url)
    js.save(m, url)  # an unfinished upload of ours is replaced without --overwrite
    assert (dest / COMMIT_MARKER).exists() and not (dest / UPLOAD_MARKER).exists()
    assert sorted(c.name for c in dest.iterdir()) == sorted(
        {*__import__("json").loads((dest / OUTPUT_MARKER).read_text())["files"], OUTPUT_MARKER, COMMIT_MARKER})


def test_overwrite_of_a_url_replaces_only_jaxshare_outputs(model_dir):
    m, url = js.load(model_dir), _url("theirs")
    (paths.as_path(url) / "notes.txt").write_text("mine")
    with pytest.raises(atomic.OutputExistsError, match="--overwrite"):
        js.save(m, url)
    with pytest.raises(atomic.OutputError, match="not a jaxshare output"):
        js.save(m, url, overwrite=True)
    assert (paths.as_path(url) / "notes.txt").read_text() == "mine"
    ours = _url("ours")
    js.save(m, ours)
    (paths.as_path(ours) / "notes.txt").write_text("mine")
    with pytest.raises(atomic.OutputError, match="notes.txt"):
        js.save(m, ours, overwrite=True)
    assert (paths.as_path(ours) / "notes.txt").read_text() == "mine"


def test_gguf_export_to_a_url(model_dir):
    pytest.importorskip("gguf")
    from jaxshare.storage.fetch import localize

    m, url = js.load(model_dir), _url("m.gguf")
    assert js.export_gguf(m, url, gguf_type="f32") == url
    assert paths.as_path(url).stat().length > 0
    with pytest.raises(atomic.OutputExistsError):
        js.export_gguf(m, url, gguf_type="f32")
    js.export_gguf(m, url, gguf_type="f32", overwrite=True)  # ours: read back to tell
    import gguf

    reader = gguf.GGUFReader(localize(url, "GGUF file"))
    assert "jaxshare.export_version" in reader.fields
    assert len(reader.tensors) > 0
