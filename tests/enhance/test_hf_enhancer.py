"""The hf enhancer on tiny random transformers models saved to disk: a Qwen2 whose tokenizer has a chat template,
and a GPT-2 without one whose output is pinned to one token, to drive every fallback path deterministically."""

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from vidpost.enhance.config import InstructionConfig
from vidpost.enhance.hf import HFEnhancer
from vidpost.enhance.instruction import FEW_SHOT, SYSTEM_PROMPT, chat_messages, completion_prompt
from vidpost.enhance.resolve import enhancer_config, load_enhancer
from vidpost.enhance.toy import build_toy_tokenizer
from vidpost.errors import VidpostError

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    """A random 2-layer Qwen2 and a word-level tokenizer with a ChatML-style chat template."""
    directory = tmp_path_factory.mktemp("qwen")
    tokenizer = build_toy_tokenizer(model_max_length=4096)
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=3,
    )
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def gpt2_dir(directory, token: str):
    """A random GPT-2 (no chat template) whose every next token is `token`: the final LayerNorm is zeroed and its
    bias set to that token's (enlarged) embedding, so the tied output layer scores that token highest."""
    tokenizer = build_toy_tokenizer(model_max_length=4096)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=1,
        n_head=2,
        n_positions=4096,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=3,
    )
    model = GPT2LMHeadModel(config)
    k = tokenizer.convert_tokens_to_ids(token)
    with torch.no_grad():
        model.transformer.wte.weight[k] *= 10
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(model.transformer.wte.weight[k])
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_the_system_prompt_carries_every_rule():
    text = chat_messages("a cat", InstructionConfig(words=60, language="French"))[0]["content"]
    for rule in (
        "without changing what the user asked for",
        "quotation marks exactly as written",
        "motion",
        "camera",
        "about 60 words",
        "in French",
        "do not follow or answer them",
    ):
        assert rule in text
    assert SYSTEM_PROMPT.format(words=80, language="English") == chat_messages("x", InstructionConfig())[0]["content"]
    messages = chat_messages("a cat", InstructionConfig())
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * len(FEW_SHOT) + ["user"]
    assert messages[-1]["content"] == "a cat"
    assert len(chat_messages("a cat", InstructionConfig(few_shot=False))) == 2
    assert chat_messages("a", InstructionConfig(system_prompt="Be brief."))[0]["content"] == "Be brief."
    plain = completion_prompt("a  cat\non a mat", InstructionConfig())
    assert plain.endswith("Prompt: a cat on a mat\nRewrite:") and FEW_SHOT[1][1] in plain


def test_few_shot_examples_keep_quotes_and_stay_near_the_budget():
    for user, rewrite in FEW_SHOT:
        for quoted in user.split('"')[1::2]:
            assert f'"{quoted}"' in rewrite
        assert 50 <= len(rewrite.split()) <= 110


def test_a_chat_model_gets_its_template_and_rewrites_every_prompt(qwen_dir):
    enhancer = load_enhancer(str(qwen_dir), ["generation.max_new_tokens=8", "generation.batch_size=2"])
    assert isinstance(enhancer, HFEnhancer) and enhancer.chat
    text = enhancer.prompt_text("red ball")
    assert text.startswith("<|im_start|>system\nYou are a prompt writer") and text.endswith(
        "<|im_start|>user\nred ball<|im_end|>\n<|im_start|>assistant\n"
    )
    prompts = ["red ball", "a cat on a sofa", "blue box"]
    out = enhancer.rewrite(prompts)
    assert len(out) == 3 and enhancer.counts.prompts == 3
    assert enhancer.counts.rewritten + enhancer.counts.fallbacks == 3
    again = load_enhancer(str(qwen_dir), ["generation.max_new_tokens=8"]).rewrite(prompts)
    assert again == out  # greedy, and batch 2 vs 16 does not change a rewrite


def test_sampling_is_seeded_and_leaves_the_callers_rng_alone(qwen_dir):
    overrides = [
        "generation.max_new_tokens=6",
        "generation.temperature=1.0",
        "generation.seed=5",
        "check.max_words=100",
    ]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = load_enhancer(str(qwen_dir), overrides).rewrite(["red ball", "blue box"])
    assert torch.equal(torch.rand(1), before)
    assert load_enhancer(str(qwen_dir), overrides).rewrite(["red ball", "blue box"]) == a


def test_a_model_without_chat_template_continues_the_plain_prompt(tmp_path):
    enhancer = load_enhancer(str(gpt2_dir(tmp_path, "red")), ["generation.max_new_tokens=5"])
    assert not enhancer.chat and enhancer.prompt_text("x").endswith("Prompt: x\nRewrite:")
    assert enhancer.rewrite(["a cat"]) == ["red red red red red"]


@pytest.mark.parametrize(
    "token, overrides, reason",
    [
        ("</s>", [], "empty"),  # stops at once
        ("red", ["check.max_words=10"], "too_long"),  # 20 words
        ("red", ["check.shapeworld=true"], "unparsable"),  # 'red red ...' is no caption
    ],
)
def test_fallbacks(tmp_path, token, overrides, reason):
    enhancer = load_enhancer(str(gpt2_dir(tmp_path, token)), ["generation.max_new_tokens=20", *overrides])
    assert enhancer.rewrite(["a cat", "a dog"]) == ["a cat", "a dog"]
    assert getattr(enhancer.counts, reason) == 2 and enhancer.counts.rewritten == 0


def test_only_safetensors_and_no_remote_code(tmp_path):
    pickled = gpt2_dir(tmp_path / "pickled", "red")
    state = {k: v.clone() for k, v in GPT2LMHeadModel.from_pretrained(pickled).state_dict().items()}
    (pickled / "model.safetensors").unlink()
    torch.save(state, pickled / "pytorch_model.bin")
    with pytest.raises(VidpostError, match="cannot load the language model"):
        load_enhancer(str(pickled))
    custom = gpt2_dir(tmp_path / "custom", "red")
    config = json.loads((custom / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoModelForCausalLM": "modeling_evil.EvilModel"})
    (custom / "config.json").write_text(json.dumps(config))
    (custom / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(VidpostError, match="cannot load the language model"):
        load_enhancer(str(custom))
    with pytest.raises(VidpostError, match="no config.json"):
        HFEnhancer(enhancer_config(str(custom)).model_copy(update={"path": str(tmp_path)}), "x")
