"""Evaluation corpora: named corpora read from package-registry archives, or local files.

Named corpora come from sdists fetched with :func:`jaxshare.storage.fetch.registry_file` and are read
in place (tarfile), never installed. Each is extracted once and cached as JSON under
``cache_dir()/"corpora"/<name>.json``; later loads read only that file.

Sources accepted by :func:`load_corpus`:

* a name from :data:`CORPORA`, optionally with a split: ``books:train``, ``books:validation``,
  ``books:test`` (plain ``books`` means ``books:test``), the same for ``wiki``; ``xsum`` (all) or
  ``xsum:<split>``;
* a path to a ``.txt`` file (one document) or a ``.jsonl`` file (one document per line, its
  ``"text"`` field; blank lines are skipped).

Text is decoded as UTF-8 (a leading BOM dropped) with newlines normalised to ``\\n``
(the Canterbury and Botchan files use CRLF).

Splits are by document and deterministic: the SHA-256 of a document's text, taken mod 100,
puts it in ``train`` (0-89), ``validation`` (90-94) or ``test`` (95-99). No RNG is involved, so
the split depends only on the document itself.

The evaluation protocol joins a corpus with :func:`join_documents` and tokenizes it once.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from jaxshare.errors import JaxshareError
from jaxshare.storage.fetch import FetchError, cache_dir, localize, registry_file

SPLITS = ("train", "validation", "test")
_FORMAT = 1  # bump to invalidate cached corpus files


class CorpusError(JaxshareError, ValueError):
    """A corpus could not be loaded: unknown name, missing or malformed file, bad split, empty."""


@dataclass(frozen=True)
class Corpus:
    """A named corpus: where it comes from and how it may be split."""

    description: str
    source: str  # the registry archives it is read from
    default_split: str | None  # split used when none is asked for (None: all documents)
    splittable: bool


_BB = "bigbench==1.0.0 sdist"
CORPORA: dict[str, Corpus] = {
    "books": Corpus("the Canterbury texts and Botchan cut into passages of about 2 KB at paragraph "
                    "breaks (brotli==1.2.1 and sentencepiece==0.2.3 sdists); splits train/validation/"
                    "test, default test. The default text of every command",
                    "brotli==1.2.1 sdist, sentencepiece==0.2.3 sdist", "test", True),
    "canterbury": Corpus("Canterbury corpus English texts alice29, asyoulik, lcet10, plrabn12 "
                         "(brotli==1.2.1 sdist, tests/testdata), 4 documents",
                         "brotli==1.2.1 sdist", None, False),
    "botchan": Corpus("Botchan by Natsume Soseki, English translation (sentencepiece==0.2.3 sdist, "
                      "test/botchan.txt), 1 document", "sentencepiece==0.2.3 sdist", None, False),
    "wiki": Corpus("English Wikipedia articles of BIG-bench paragraph_segmentation "
                   "(bigbench==1.0.0 sdist, which the package index no longer serves: see "
                   "docs/models.md), 1 document per article; splits train/validation/test, default test",
                   _BB, "test", True),
    "xsum": Corpus("BBC news articles, the inputs of BIG-bench gem/xsum (bigbench==1.0.0 sdist, no "
                   "longer on the package index), 1 document per article; all by default, or a split",
                   _BB, None, True),
}

# A books passage closes at the first paragraph break past this many characters (or at any line
# past twice as many: Botchan has no blank lines): 491 passages, 23 of them in the test split.
_PASSAGE_CHARS = 2000

_CANTERBURY = ("alice29", "asyoulik", "lcet10", "plrabn12")
_BB_ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks/"
_BB_MEMBERS = {"wiki": _BB_ROOT + "paragraph_segmentation/task.json", "xsum": _BB_ROOT + "gem/xsum/task.json"}
# paragraph_segmentation holds 9000 articles, 1000 per language in this order (the task.json
# has no language field; the order is checked by _english_block below).
_PS_LANGS = ("de", "en", "es", "fr", "it", "nl", "pl", "pt", "ru")
_EN_WORDS = frozenset("the of and was is by with from that which".split())


def calibration_source(source: str) -> str:
    """``source`` for fitting: a bare splittable corpus name means its train split.

    Plain ``books`` means ``books:test`` when evaluating; calibrating or training on it would leak
    the evaluation text into the weights, so every command that fits reads ``books:train``."""
    name, split = _parse_name(source)
    return f"{name}:train" if split is None and name in CORPORA and CORPORA[name].splittable else source


def describe_corpora() -> str:
    """One line per named corpus: ``name: description``."""
    return "\n".join(f"{name}: {c.description}" for name, c in CORPORA.items())


def join_documents(docs: list[str]) -> str:
    """The evaluation text of a corpus: its documents joined with a blank line (``\\n\\n``)."""
    return "\n\n".join(docs)


def split_of(doc: str) -> str:
    """The split (``train``/``validation``/``test``) a document belongs to, from its SHA-256."""
    bucket = int.from_bytes(hashlib.sha256(doc.encode("utf-8")).digest()[:8], "big") % 100
    return "train" if bucket < 90 else "validation" if bucket < 95 else "test"


def _decode(data: bytes, where: str) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{where}: not UTF-8 text ({e})") from e
    return text.replace("\r\n", "\n").replace("\r", "\n")


# ---------------------------------------------------------------------------- archive readers

def _read_members(archive: Path, wanted: dict[str, str], desc: str) -> dict[str, bytes]:
    """Read members ``wanted`` (key -> member path) from a .tar.gz in one streaming pass."""
    missing = dict(wanted)
    found: dict[str, bytes] = {}
    with open(archive, "rb") as raw, tqdm(total=archive.stat().st_size, unit="B", unit_scale=True,
                                          desc=desc, leave=False) as bar:
        class _Counting:  # reports compressed bytes consumed to the progress bar
            def read(self, n: int = -1) -> bytes:
                chunk = raw.read(n)
                bar.update(len(chunk))
                return chunk

        with tarfile.open(fileobj=_Counting(), mode="r|gz") as tar:
            for member in tar:
                key = next((k for k, p in missing.items() if p == member.name), None)
                if key is None or not member.isfile():
                    continue
                found[key] = tar.extractfile(member).read()
                del missing[key]
                if not missing:
                    break
    if missing:
        raise CorpusError(f"{archive.name}: members not found: {sorted(missing.values())}")
    return found


def _build_canterbury() -> dict[str, list[str]]:
    archive = registry_file("brotli", "1.2.1", sdist=True)
    paths = {n: f"brotli-1.2.1/tests/testdata/{n}.txt" for n in _CANTERBURY}
    raw = _read_members(archive, paths, "canterbury")
    return {"canterbury": [_decode(raw[n], paths[n]) for n in _CANTERBURY]}


def _build_botchan() -> dict[str, list[str]]:
    archive = registry_file("sentencepiece", "0.2.3", sdist=True)
    path = "sentencepiece-0.2.3/test/botchan.txt"
    return {"botchan": [_decode(_read_members(archive, {"b": path}, "botchan")["b"], path)]}


def _passages(text: str) -> list[str]:
    """Cut a book into passages at paragraph breaks (see _PASSAGE_CHARS); whitespace-only ones dropped."""
    out, cur, size = [], [], 0
    for line in text.split("\n"):
        cur.append(line)
        size += len(line) + 1
        if (size >= _PASSAGE_CHARS and not line.strip()) or size >= 2 * _PASSAGE_CHARS:
            out.append("\n".join(cur).strip())
            cur, size = [], 0
    out.append("\n".join(cur).strip())
    return [p for p in out if p]


def _build_books() -> dict[str, list[str]]:
    books = _build_canterbury()["canterbury"] + _build_botchan()["botchan"]
    return {"books": [p for book in books for p in _passages(book)]}


def _english_share(text: str) -> float:
    words = re.findall(r"\w+", text.lower())
    return sum(w in _EN_WORDS for w in words) / max(1, len(words))


def _english_block(examples: list[dict]) -> list[dict]:
    """The English examples of paragraph_segmentation, after checking the per-language layout."""
    n = len(examples) // len(_PS_LANGS)
    if n * len(_PS_LANGS) != len(examples):
        raise CorpusError(f"paragraph_segmentation: {len(examples)} examples, expected 1000 per language")
    blocks = [examples[i * n:(i + 1) * n] for i in range(len(_PS_LANGS))]
    shares = [sum(_english_share(e["input"]) for e in b) / n for b in blocks]
    en = _PS_LANGS.index("en")
    if shares[en] < 0.15 or max(s for i, s in enumerate(shares) if i != en) > 0.05:
        raise CorpusError(f"paragraph_segmentation: unexpected language layout (English shares {shares})")
    return blocks[en]


def _article(example: dict) -> str:
    """Rebuild an article from one paragraph_segmentation example.

    ``input`` holds the article's sentences, one per line (each ending in ``\\n``); ``target`` holds
    one label per sentence, ``1`` for a sentence that ends a paragraph. The sentences came from
    splitting running text at sentence boundaries (including false ones such as ``St.`` /
    ``Clair``), so sentences of a paragraph are joined with one space, which restores the original
    text; paragraphs are joined with a blank line (``\\n\\n``).
    """
    sentences = example["input"].split("\n")
    if sentences and sentences[-1] == "":
        sentences.pop()
    labels = example["target"].split()
    if len(labels) != len(sentences) or set(labels) - {"0", "1"}:
        raise CorpusError("paragraph_segmentation: labels do not match sentences")
    paragraphs, current = [], []
    for sentence, label in zip(sentences, labels):
        current.append(sentence)
        if label == "1":
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


def bigbench_sdist() -> Path:
    """The bigbench 1.0.0 sdist, from the cache or the package index.

    The index stopped serving this release in December 2026 (it lists only 0.0.1). A user who
    has the file can put it where the cache looks (the error says where); nothing else changes."""
    try:
        return registry_file("bigbench", "1.0.0", sdist=True)
    except FetchError as e:
        where = cache_dir() / "registry" / "bigbench-1.0.0-sdist" / "bigbench-1.0.0.tar.gz"
        raise CorpusError(f"{e}; the wiki and xsum corpora and the multiple-choice tasks need it: "
                          f"put a copy at {where}, or use the books corpus (e.g. --data books:test)") from e


def _build_bigbench() -> dict[str, list[str]]:
    archive = bigbench_sdist()
    raw = _read_members(archive, _BB_MEMBERS, "bigbench (reading tar)")
    wiki = [_article(e) for e in _english_block(json.loads(raw["wiki"])["examples"])]
    xsum = [e["input"].strip() for e in json.loads(raw["xsum"])["examples"]]
    return {"wiki": wiki, "xsum": xsum}


_BUILDERS = {"books": _build_books, "canterbury": _build_canterbury, "botchan": _build_botchan,
             "wiki": _build_bigbench, "xsum": _build_bigbench}


# ---------------------------------------------------------------------------- cache

def _cache_file(name: str) -> Path:
    return cache_dir() / "corpora" / f"{name}.json"


def _write_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, ensure_ascii=False)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache is ordinary shared data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_cache(name: str) -> list[str] | None:
    try:
        payload = json.loads(_cache_file(name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if payload.get("format") != _FORMAT or payload.get("name") != name:
        return None
    return payload["documents"]


def _parse_name(source: str) -> tuple[str, str | None]:
    name, _, split = source.partition(":")
    return name, (split or None)


def corpus_path(name: str) -> Path:
    """The cached JSON file of named corpus ``name`` (a ``:split`` suffix is ignored), built if needed.

    The file holds ``{"format", "name", "source", "documents"}``, all documents of the corpus.
    """
    base, _ = _parse_name(name)
    if base not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r}; known corpora: {', '.join(CORPORA)}")
    if _read_cache(base) is None:
        _build(base)
    return _cache_file(base)


def _build(base: str) -> None:
    """Extract corpus ``base`` into the cache (one archive pass may fill several corpora)."""
    for built, docs in _BUILDERS[base]().items():
        _write_atomic(_cache_file(built), {"format": _FORMAT, "name": built, "documents": docs,
                                           "source": CORPORA[built].source})


# ---------------------------------------------------------------------------- loading

def _load_txt(path: Path) -> list[str]:
    return [_decode(path.read_bytes(), str(path))]


def _load_jsonl(path: Path) -> list[str]:
    docs = []
    for lineno, line in enumerate(_decode(path.read_bytes(), str(path)).split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise CorpusError(f"{path}:{lineno}: invalid JSON ({e})") from e
        if not isinstance(record, dict) or "text" not in record:
            raise CorpusError(f"{path}:{lineno}: no \"text\" field")
        if not isinstance(record["text"], str):
            raise CorpusError(f"{path}:{lineno}: \"text\" is not a string")
        docs.append(record["text"])
    return docs


def load_corpus(source: str, split: str | None = None) -> list[str]:
    """The documents of ``source``: a named corpus (``name`` or ``name:split``) or a .txt/.jsonl path.

    ``split`` (``train``/``validation``/``test``) may be given instead of the ``:split`` suffix;
    giving both, differently, is an error. ``books`` and ``wiki`` default to ``test``; ``xsum`` to all documents;
    ``canterbury``, ``botchan`` and local files take no split. Raises :class:`CorpusError`.
    """
    source = os.fspath(source)
    name, name_split = _parse_name(source)
    if name in CORPORA:
        if split is not None and name_split is not None and split != name_split:
            raise CorpusError(f"{source!r}: split given twice ({name_split!r} and {split!r})")
        corpus = CORPORA[name]
        split = split or name_split
        if split is not None and (not corpus.splittable or split not in SPLITS):
            allowed = ", ".join(SPLITS) if corpus.splittable else "none"
            raise CorpusError(f"corpus {name!r}: bad split {split!r} (allowed: {allowed})")
        docs = _read_cache(name)
        if docs is None:
            _build(name)
            docs = _read_cache(name)
        split = split or corpus.default_split
        if split is not None:
            docs = [d for d in docs if split_of(d) == split]
        label = f"{name}:{split}" if split else name
    else:
        path = Path(source).expanduser()
        if path.suffix not in (".txt", ".jsonl"):
            raise CorpusError(f"unknown corpus {source!r}; known corpora: {', '.join(CORPORA)} "
                              "(or a path to a .txt or .jsonl file)")
        if split is not None:
            raise CorpusError(f"{source}: local files take no split (got {split!r})")
        if "://" in source:  # gs://, s3://, memory://, ...: a cached local copy, as training reads it

            path = Path(localize(source, "data"))
        if not path.is_file():
            raise CorpusError(f"{source}: no such file")
        docs = _load_txt(path) if path.suffix == ".txt" else _load_jsonl(path)
        label = str(path)
    if not any(d.strip() for d in docs):
        raise CorpusError(f"empty corpus: {label} has no non-whitespace text")
    return docs
