"""The offline ShapeWorld tokenizer and the tiny UMT5 text encoder."""

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, UMT5EncoderModel

from vidpost.models.config import ModelConfig
from vidpost.models.text import (
    EOS,
    PAD,
    UNK,
    build_shapeworld_tokenizer,
    build_tiny_text_encoder,
    shapeworld_vocabulary,
)
from vidpost.world.grammar import caption
from vidpost.world.prompts import terse_prompt, web_caption
from vidpost.world.sampling import random_spec


@pytest.fixture(scope="module")
def tokenizer():
    return build_shapeworld_tokenizer()


def test_vocabulary_is_fixed_with_t5_special_ids():
    vocab = shapeworld_vocabulary()
    assert vocab == shapeworld_vocabulary()
    assert len(set(vocab)) == len(vocab)
    assert vocab[:3] == [PAD, EOS, UNK]
    tok = build_shapeworld_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.get_vocab() == {token: i for i, token in enumerate(vocab)}


def test_lower_cases_splits_punctuation_and_appends_eos(tokenizer):
    vocab = tokenizer.get_vocab()
    ids = tokenizer("A Red  circle, moving LEFT.").input_ids
    assert ids == [vocab[w] for w in ["a", "red", "circle", ",", "moving", "left", "."]] + [vocab[EOS]]
    assert tokenizer("a purple circle").input_ids[1] == vocab[UNK]


def test_every_shapeworld_text_is_in_vocabulary_and_fits_the_default_length(tokenizer):
    rng = np.random.default_rng(0)
    longest = 0
    for _ in range(500):
        spec = random_spec(rng)
        for text in (caption(spec), terse_prompt(spec, rng)[0], web_caption(spec, rng)[0]):
            ids = tokenizer(text).input_ids
            assert tokenizer.unk_token_id not in ids, text
            longest = max(longest, len(ids))
    assert longest <= ModelConfig().max_sequence_length


def test_pads_right_to_max_length_and_keeps_eos_when_truncating(tokenizer):
    batch = tokenizer(
        ["a red circle", "a red circle and a blue square and a green triangle"],
        padding="max_length",
        max_length=6,
        truncation=True,
        return_tensors="pt",
    )
    assert batch.input_ids.shape == (2, 6)
    assert batch.input_ids[0].tolist()[3:] == [1, 0, 0]
    assert batch.attention_mask[0].tolist() == [1, 1, 1, 1, 0, 0]
    assert batch.input_ids[1, -1] == 1 and batch.attention_mask[1].all()


def test_saves_and_reloads_offline_with_auto_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    texts = ["a large red circle moving right quickly on a black background", "teal disc, falling slowly", "?"]
    for kwargs in ({}, {"padding": "max_length", "max_length": 16, "truncation": True}):
        assert reloaded(texts, **kwargs).input_ids == tokenizer(texts, **kwargs).input_ids
    assert reloaded.get_vocab() == tokenizer.get_vocab()


def test_tiny_text_encoder_is_seeded_and_saves_as_umt5(tokenizer, tmp_path):
    torch.manual_seed(0)
    encoder = build_tiny_text_encoder(len(tokenizer), d_model=32, num_layers=2, num_heads=2)
    torch.manual_seed(0)
    again = build_tiny_text_encoder(len(tokenizer), d_model=32, num_layers=2, num_heads=2)
    batch = tokenizer(
        ["a red circle", "a blue square moving up"], padding="max_length", max_length=8, return_tensors="pt"
    )
    with torch.no_grad():
        out = encoder(batch.input_ids, batch.attention_mask).last_hidden_state
        assert out.shape == (2, 8, 32)
        assert torch.equal(out, again(batch.input_ids, batch.attention_mask).last_hidden_state)
        encoder.save_pretrained(tmp_path)
        reloaded = UMT5EncoderModel.from_pretrained(tmp_path, local_files_only=True, use_safetensors=True)
        assert torch.equal(reloaded(batch.input_ids, batch.attention_mask).last_hidden_state, out)
