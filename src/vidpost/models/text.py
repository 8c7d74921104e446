"""Offline text side of ShapeWorld-scale models: a word-level tokenizer and a tiny UMT5 encoder.

Nothing here downloads anything. The tokenizer is a `tokenizers` WordLevel model over the ShapeWorld
vocabulary (every word the canonical grammar, the terse prompts and the web captions can produce, plus a
few grammar words), wrapped as a `transformers.PreTrainedTokenizerFast`, so it saves with
`save_pretrained` and reloads with `AutoTokenizer.from_pretrained(dir)` like the UMT5 tokenizer of a real
Wan checkpoint. It follows T5's conventions: `<pad>` = 0, `</s>` = 1 appended to every text, `<unk>` = 2.
Text is NFKC-normalised and lower-cased, split on whitespace, and every punctuation character is its own
token ("a red circle, moving left" -> a | red | circle | , | moving | left | </s>).

The text encoder is the class Wan uses (`UMT5EncoderModel`), only small.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from vidpost.world.prompts import (
    ALL_STILL_WORDS,
    COLOUR_WORDS,
    DIRECTION_WORDS,
    SHAPE_WORDS,
    SIZE_WORDS,
    SPEED_WORDS,
    STILL_WORDS,
)
from vidpost.world.spec import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, SIZES, SPEEDS, STILL

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, EOS, UNK)  # ids 0, 1, 2, as in T5
PUNCTUATION = tuple(",.:;!?-'\"()")
# Words of the caption templates (grammar, prompts) that are not attribute values, and a few more that
# hand-written prompts about ShapeWorld scenes commonly use.
GRAMMAR_WORDS = (
    "a",
    "an",
    "the",
    "and",
    "with",
    "on",
    "in",
    "of",
    "to",
    "against",
    "background",
    "size",
    "moving",
    "staying",
    "that",
    "is",
    "are",
    "does",
    "not",
    "move",
    "both",
    "all",
    "none",
    "them",
    "one",
    "two",
    "three",
    "object",
    "objects",
    "shape",
    "shapes",
    "video",
    "scene",
    "very",
)


def shapeworld_vocabulary() -> list[str]:
    """Every token, in id order: the special tokens, punctuation, then the sorted ShapeWorld words."""
    phrases: list[str] = [*COLOURS, *BACKGROUNDS, *SHAPES, *SIZES, *DIRECTIONS, *SPEEDS, STILL, *GRAMMAR_WORDS]
    for synonyms in (SHAPE_WORDS, COLOUR_WORDS, SIZE_WORDS, DIRECTION_WORDS, SPEED_WORDS, ALL_STILL_WORDS):
        for options in synonyms.values():
            phrases += options
    phrases += STILL_WORDS
    words = sorted({word for phrase in phrases for word in phrase.lower().split()})
    return [*SPECIAL_TOKENS, *PUNCTUATION, *words]


def build_shapeworld_tokenizer(model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """The word-level ShapeWorld tokenizer; the same vocabulary and ids on every call."""
    vocab = {token: i for i, token in enumerate(shapeworld_vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side="right",
    )


def build_tiny_text_encoder(
    vocab_size: int, d_model: int = 32, num_layers: int = 2, num_heads: int = 2, d_ff: int = 64
) -> UMT5EncoderModel:
    """A randomly initialised UMT5 encoder (seed with torch.manual_seed before calling), in eval mode.

    Per-head width is d_model // num_heads; dropout is 0 so that training and evaluation agree.
    """
    if d_model % num_heads:
        raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_model // num_heads,
        d_ff=d_ff,
        num_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return UMT5EncoderModel(config).eval()
