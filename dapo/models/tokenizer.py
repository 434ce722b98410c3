"""A character-level tokenizer built with the real `tokenizers` library.

Tests and the CPU default need a tokenizer that exists without a hub: one token per character of a
given charset plus a few special tokens, wrapped in `transformers.PreTrainedTokenizerFast` so that
everything downstream (save_pretrained / from_pretrained, apply_chat_template, vLLM's loader) treats
it like any other Hugging Face tokenizer.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

# Printable ASCII without the rarely useful \r \x0b \x0c: enough for arithmetic, GSM8K-style text and code.
DEFAULT_CHARSET = string.ascii_letters + string.digits + string.punctuation + " \n\t"

# One message is "<|role|>content<eos>"; a generation prompt ends with "<|assistant|>", so a model
# trained on this format answers and then emits <eos>, which is the engine's stop token.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '" + EOS + "' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def build_char_tokenizer(charset: str = DEFAULT_CHARSET, *, extra_special: Sequence[str] = ()):
    """A char-level `PreTrainedTokenizerFast`: ids 0..3 = <pad>, <unk>, <bos>, <eos>, then the role
    tokens <|system|> <|user|> <|assistant|>, then `extra_special`, then each distinct char of
    `charset` in order of first appearance. Characters outside the charset encode to <unk>.

    No BOS is added automatically (`add_special_tokens` has nothing to add): prompts are exactly the
    characters of the text, which keeps token counts predictable for tests.
    """
    specials = [PAD, UNK, BOS, EOS, *ROLE_TOKENS, *extra_special]
    if len(set(specials)) != len(specials):
        raise ValueError(f"duplicate special tokens in {specials}")
    chars = [c for c in dict.fromkeys(charset) if c not in specials]
    if not chars:
        raise ValueError("charset is empty")
    vocab = {tok: i for i, tok in enumerate([*specials, *chars])}

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character is its own pre-token ("[\s\S]" so that newlines are characters too);
    # Fuse() joins the decoded pieces without separators.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    # Registered as special so that "<eos>" in text is one token, not five characters.
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        additional_special_tokens=[*ROLE_TOKENS, *extra_special],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped
