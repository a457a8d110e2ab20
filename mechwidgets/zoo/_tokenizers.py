"""Building the zoo's word-level tokenizers with the ``tokenizers`` library (training time only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .tasks import BOS, INDUCTION_2L_N_TOKENS, TOY_LM_SPLIT_PATTERN, UNK, toy_lm_vocabulary


def _fast(tok: Any, unk: str | None) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=BOS, pad_token=BOS, unk_token=unk,
        clean_up_tokenization_spaces=False, model_max_length=1 << 20,
    )


def induction_2l_tokenizer() -> Any:
    """BOS ``<|endoftext|>`` (id 0) then ``t0`` ... ``t125`` (ids 1 ... 126), UNK 127."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {BOS: 0, **{f"t{i}": i + 1 for i in range(INDUCTION_2L_N_TOKENS)}, UNK: 127}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([BOS])
    return _fast(tok, UNK)


def toy_lm_tokenizer() -> Any:
    """GPT-2-like word tokens (``" Mary"``), years as ``" 17"`` + ``"32"``, punctuation alone."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(toy_lm_vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(TOY_LM_SPLIT_PATTERN), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([BOS])
    return _fast(tok, UNK)


def save_tokenizer(tok: Any, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(folder))
