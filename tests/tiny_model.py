"""A tiny random-weight Llama with a small trained BPE tokenizer and a ChatML template,
saved as a local model directory: the real transformers engine, without a download.
`template=HERMES_TEMPLATE` gives it a chat template with native tools (Qwen2.5's layout:
tools in the system message, calls in `<tool_call>` blocks, results as `<tool_response>`)."""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

HERMES_TEMPLATE = (
    "{%- if tools %}{{ '<|im_start|>system\\n' }}{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}"
    "{{ '# Tools\\n<tools>' }}{% for tool in tools %}{{ '\\n' + (tool | tojson) }}{% endfor %}"
    "{{ '\\n</tools>\\nFor each call, return a JSON object with name and arguments inside <tool_call></tool_call> tags.<|im_end|>\\n' }}"
    "{%- elif messages[0]['role'] == 'system' %}{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' and loop.first %}"
    "{%- elif message['role'] == 'assistant' and message['tool_calls'] %}{{ '<|im_start|>assistant\\n' + (message['content'] or '') }}"
    "{%- for call in message['tool_calls'] %}{{ '\\n<tool_call>\\n{\"name\": \"' + call['function']['name'] + '\", \"arguments\": ' + (call['function']['arguments'] | tojson) + '}\\n</tool_call>' }}{%- endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'tool' %}{{ '<|im_start|>user\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)

CORPUS = [
    'recall({"page_ids": [1, 2, 3]}) recall error page pages bookmark [p7:Lisbon,budget] 0 1 2 3 4 5 6 7 8 9 10 11 12',
    "You are a helpful assistant. Older parts of this conversation were moved out of view into numbered pages.",
    "user assistant system tool the a of and to in is my what where when how I you we it was Lisbon trip budget",
    "locker code dentist appointment Friday kitchen renovation turn page brought back for this question turns",
    '{"name": "read_file", "arguments": {"path": "notes.txt"}} search query tools function tool_response',
]


def tokenizer(template: str = CHATML):
    """The tiny model's tokenizer alone (a second or so): for tests of rendering and the answering loop."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    tok.add_tokens(["recall(", "<tool_call>", "</tool_call>"])  # one token each, so a logit bias can open a call in a single step
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = template
    return fast


def build(path: Path, seed: int = 0, hidden: int = 64, heads: int = 4, template: str = CHATML) -> Path:
    """vLLM's CPU attention needs a head size of 32 or more: build(path, hidden=128, heads=2)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fast = tokenizer(template)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=heads,
        num_key_value_heads=heads // 2, max_position_embeddings=4096, eos_token_id=fast.eos_token_id, bos_token_id=fast.bos_token_id,
        pad_token_id=fast.pad_token_id, tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path
