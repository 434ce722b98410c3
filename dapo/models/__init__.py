"""dapo.models: load any Hugging Face causal LM (local dir, hub id, GGUF file) and build tiny ones.

tok = build_char_tokenizer()                      # char-level, real `tokenizers` + chat template
model = build_tiny_model(tok, "5m", seed=0)       # random-init Qwen2 (or arch="llama")
path = save_pretrained_pair(model, tok, "/tmp/m")
model, tok = load_model_and_tokenizer(path)       # or a hub id, or a .gguf file
"""

from dapo.models.loading import (
    SMOLLM2_ALIAS,
    ModelPathError,
    load_model_and_tokenizer,
    resolve_model_path,
    save_pretrained_pair,
    smollm2_gguf_path,
)
from dapo.models.tiny import SIZES, build_tiny_model, num_parameters
from dapo.models.tokenizer import DEFAULT_CHARSET, build_char_tokenizer

__all__ = [
    "DEFAULT_CHARSET",
    "SIZES",
    "SMOLLM2_ALIAS",
    "ModelPathError",
    "build_char_tokenizer",
    "build_tiny_model",
    "load_model_and_tokenizer",
    "num_parameters",
    "resolve_model_path",
    "save_pretrained_pair",
    "smollm2_gguf_path",
]
