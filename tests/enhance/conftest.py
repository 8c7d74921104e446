"""A tiny Hugging Face chat LM to train as an enhancer: a random 2-layer Qwen2 with a real byte-level BPE tokenizer
trained offline on ShapeWorld sentences and a ChatML chat template (as Qwen's), and the tiny video model its
rewrites are made into."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from vidpost.enhance.pairs import training_pair

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SYSTEM_PROMPT = "Rewrite the prompt as one exact caption."


def build_chat_lm(directory, sentences: list[str], seed: int = 0):
    """Train a byte-level BPE on `sentences`, build a random 2-layer Qwen2 over it, save both to `directory`."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(sentences, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=512,
    )
    tokenizer.chat_template = CHATML
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def chat_lm(tmp_path_factory):
    """The tiny chat LM folder, its BPE trained on 300 ShapeWorld terse prompts and canonical captions."""
    sentences = [text for i in range(300) for text in training_pair(0, i)] + [SYSTEM_PROMPT]
    return build_chat_lm(tmp_path_factory.mktemp("chat_lm"), sentences)


@pytest.fixture(scope="session")
def video_model(tiny_video_model):
    """A tiny random video model with a card (2 steps, 3 frames of 16x16): what enhanced prompts are made into."""
    return tiny_video_model("video_model", {"steps": 2, "shift": 2.0, "guidance": 1.0})
