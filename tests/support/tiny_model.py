"""Build a tiny, random-weight Qwen2 model with a locally trained tokenizer.

No model hub is reachable from the project's machines, so tests and CPU smoke runs
use a model built here: a byte-level BPE tokenizer (Qwen2's pre-tokenizer regex,
NFC, byte-level decoder) trained with ``tokenizers`` on a small built-in corpus,
wrapped as ``Qwen2Tokenizer`` with Qwen2.5's added tokens and a Qwen2.5-style chat
template with tool support, plus a 2-layer ``Qwen2ForCausalLM`` with random weights.
The output directory loads with ``AutoTokenizer``/``AutoModelForCausalLM`` and works
with LLaMA-Factory's ``qwen`` template, for training and for serving.

The build is deterministic for a given ``vocab_size`` and ``seed``.

Usage::

    HF_HUB_OFFLINE=1 PYTHONPATH=include:tests python -m support.tiny_model OUT_DIR
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = ["ADDED_TOKENS", "CHAT_TEMPLATE", "build_tiny_qwen2", "main"]

# Qwen2's pre-tokenizer split pattern (same as transformers' Qwen2Tokenizer).
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2.5's added tokens in id order (content, special); the tool-response tags come
# from later Qwen releases and are what LLaMA-Factory's ``qwen`` template emits.
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
)

# Qwen2.5's chat template (verbatim, except that tool-call arguments may also be a JSON
# string, as in OpenAI-style requests).
CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {%- if tool_call.arguments is string %}
                {{- tool_call.arguments }}
            {%- else %}
                {{- tool_call.arguments | tojson }}
            {%- endif %}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

_WORDS_TEXT = """
customer account plan roaming data voice sms balance invoice bill payment refund network
outage signal tower coverage sim card esim activation suspend resume line device phone
number port transfer upgrade downgrade contract subscription usage gigabytes minutes
international overage credit debit charge fee discount promotion ticket support agent
technician appointment address city postal code status active inactive pending cancelled
verified identity password reset apn settings mobile broadband fiber router modem speed
latency dropped call voicemail hotspot tethering
"""
_WORDS = tuple(_WORDS_TEXT.split())
_TOOLS = (
    "get_customer_by_id",
    "get_customer_by_phone",
    "get_details_by_id",
    "get_bills_for_customer",
    "suspend_line",
    "resume_line",
    "enable_roaming",
    "disable_roaming",
    "refuel_data",
    "send_payment_request",
    "transfer_to_human_agents",
    "toggle_airplane_mode",
    "check_network_status",
)
_CHAT = (
    "Hello, how can I help you today?",
    "Hi, my phone has no service since this morning.",
    "I can look into that. Could you give me your customer ID or phone number?",
    "Sure, it's {num}. I'm travelling abroad and roaming seems off.",
    "Thanks. I found your account; your line {num} is active on the {word} plan.",
    "Roaming is now enabled. Please restart your device and check the signal.",
    "Your bill for last month was ${price}, and a payment of ${price} is pending.",
    "I'm sorry, I cannot do that. Let me transfer you to a human agent.",
    "Is there anything else I can help you with?",
    "No, that's all. Thank you very much!",
    "You're welcome. Have a great day!",
)


_SYLLABLES_TEXT = """
ka ri to ma ne su lo vi da pe han mir sol ter bel cor ann ell ros gar win ton ber ley
son mar tin ez ov ski li chen wu pat el ia no ra de ve an ge
"""
_SYLLABLES = tuple(_SYLLABLES_TEXT.split())
_STREETS = ("Main Street", "Oak Avenue", "Maple Road", "Elm Drive", "Harbor Lane", "Pine Court")


def _name(rng: random.Random) -> str:
    """A pseudo-random capitalised name built from syllables."""
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def _corpus(seed: int) -> Iterator[str]:
    """Yield the built-in training text: chat turns, tool calls, JSON, telecom words."""
    rng = random.Random(seed)
    yield " ".join(_WORDS)
    yield " ".join(w.capitalize() for w in _WORDS)
    for _ in range(4000):
        first, last = _name(rng), _name(rng)
        yield (
            f'{{"name": "{first} {last}", "email": "{first.lower()}.{last.lower()}@example.com", '
            f'"address": "{rng.randint(1, 9999)} {rng.choice(_STREETS)}, {_name(rng)}", '
            f'"date": "20{rng.randint(10, 30)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}", '
            f'"id": "{rng.getrandbits(64):016x}"}}'
        )
        topic, state = rng.choice(_WORDS), rng.choice(_WORDS)
        yield f"Dear {first}, your {topic} request for {last} is {state}."
        num = f"{rng.randint(100, 999)}-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
        price = f"{rng.randint(1, 400)}.{rng.randint(0, 99):02d}"
        word, other = rng.choice(_WORDS), rng.choice(_WORDS)
        tool = rng.choice(_TOOLS)
        cid = f"C{rng.randint(1000, 9999)}"
        yield rng.choice(_CHAT).format(num=num, price=price, word=word)
        yield (
            f'<tool_call>\n{{"name": "{tool}", "arguments": {{"customer_id": "{cid}", '
            f'"{word}": "{other}"}}}}\n</tool_call>'
        )
        yield (
            f'<tool_response>\n{{"customer_id": "{cid}", "phone_number": "{num}", '
            f'"status": "{rng.choice(["Active", "Suspended", "Pending"])}", '
            f'"{word}_{other}": {price}, "items": [{rng.randint(0, 99)}, true, null]}}\n</tool_response>'
        )
        yield (
            f'{{"type": "function", "function": {{"name": "{tool}", "description": '
            f'"Look up the {word} {other} for a customer.", "parameters": {{"type": "object", '
            f'"properties": {{"customer_id": {{"type": "string", "description": "The {word} id"}}}}, '
            f'"required": ["customer_id"]}}}}}}'
        )
        yield f"<|im_start|>user\nWhy is my {word} {other} {rng.choice(_WORDS)}?<|im_end|>\n"


def _train_tokenizer(vocab_size: int, seed: int) -> Tokenizer:
    """Train the byte-level BPE ``tokenizers.Tokenizer`` (added tokens appended last)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tokenizer = Tokenizer(BPE(unk_token=None, byte_fallback=False, fuse_unk=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size - len(ADDED_TOKENS),
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(_corpus(seed), trainer=trainer)
    for content, special in ADDED_TOKENS:  # one at a time keeps Qwen's id order
        token = AddedToken(content, special=special, normalized=False)
        if special:
            tokenizer.add_special_tokens([token])
        else:
            tokenizer.add_tokens([token])
    return tokenizer


def build_tiny_qwen2(out_dir: Path, *, vocab_size: int = 4096, seed: int = 0) -> Path:
    """Build the tiny Qwen2 model and tokenizer into ``out_dir`` and return it.

    Args:
        out_dir: Target directory (created if needed; existing files are overwritten).
        vocab_size: Embedding rows; the tokenizer (BPE + added tokens) has at most this
            many tokens (fewer if the corpus runs out of merges).
        seed: Seeds both the corpus sampling and the weight initialisation.

    Returns:
        ``out_dir``, holding tokenizer files, ``config.json``, ``generation_config.json``
        and ``model.safetensors``.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

    if vocab_size <= len(ADDED_TOKENS) + 256:
        raise ValueError(f"vocab_size must exceed {len(ADDED_TOKENS) + 256}, got {vocab_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = Qwen2Tokenizer(
        tokenizer_object=_train_tokenizer(vocab_size, seed),
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=[c for c, special in ADDED_TOKENS[1:] if special],
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        errors="replace",
        split_special_tokens=False,
    )
    if len(tokenizer) > vocab_size:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens > vocab_size {vocab_size}")
    tokenizer.save_pretrained(out_dir)

    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        bos_token_id=endoftext,
        eos_token_id=im_end,
        pad_token_id=endoftext,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=endoftext, eos_token_id=[im_end, endoftext], pad_token_id=endoftext
    )
    model.save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m support.tiny_model OUT_DIR [--vocab-size N] [--seed S]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = build_tiny_qwen2(args.out_dir, vocab_size=args.vocab_size, seed=args.seed)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
