"""A tiny random-weight Llama with a small trained BPE tokenizer and a ChatML template,
saved as a local model directory: the real transformers engine, without a download."""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CORPUS = [
    'recall({"page_ids": [1, 2, 3]}) recall error page pages bookmark [p7:Lisbon,budget] 0 1 2 3 4 5 6 7 8 9 10 11 12',
    "You are a helpful assistant. Older parts of this conversation were moved out of view into numbered pages.",
    "user assistant system tool the a of and to in is my what where when how I you we it was Lisbon trip budget",
    "locker code dentist appointment Friday kitchen renovation turn page brought back for this question turns",
]


def build(path: Path, seed: int = 0, hidden: int = 64, heads: int = 4) -> Path:
    """vLLM's CPU attention needs a head size of 32 or more: build(path, hidden=128, heads=2)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    tok.add_tokens(["recall("])  # one token, so a logit bias can open a call in a single step
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=heads,
        num_key_value_heads=heads // 2, max_position_embeddings=4096, eos_token_id=fast.eos_token_id, bos_token_id=fast.bos_token_id,
        pad_token_id=fast.pad_token_id, tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path
