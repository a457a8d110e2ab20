"""The measurements reported in the zoo's model cards, re-run by the tests.

They work on a ``HookedTransformer`` (TransformerLens 3.x) and a ``TransformerBridge`` (4.x): only
``to_tokens``, ``to_single_token``-like lookups through the tokenizer, ``forward`` and
``run_with_cache`` with a ``names_filter`` are used.

- Previous-token / induction scores follow TransformerLens's head detector and Olsson et al.
  2022: the mean attention from each position to the previous position, and from each position of
  the repeated half to the position just after the earlier occurrence of its token.
- IOI: top-1 accuracy and logit difference ``logit(IO) - logit(S)`` (Wang et al. 2022).
- Greater-than: probability mass on two-digit tokens above the start year (Hanna et al. 2023).
- SAEs: explained variance ``1 - sum|x - x_hat|^2 / sum|x - mean(x)|^2``, mean L0, and the
  fraction of features never active, over non-BOS, non-padding positions of held-out text.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


def single_token_id(model: Any, s: str) -> int:
    ids = model.tokenizer.encode(s, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"{s!r} is not a single token of this model: {ids}")
    return int(ids[0])


def tokens_of(model: Any, text: str) -> torch.Tensor:
    """``[pos]`` tokens of ``text`` with BOS prepended."""
    return model.to_tokens(text, prepend_bos=True)[0].cpu()


@torch.no_grad()
def last_logits(model: Any, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """``[n, d_vocab]`` logits at the last position of each prompt (BOS prepended)."""
    toks = [tokens_of(model, p) for p in prompts]
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(toks):
        by_len[len(t)].append(i)
    out: list[torch.Tensor | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    for idx in by_len.values():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            batch = torch.stack([toks[i] for i in chunk]).to(device)
            logits = model(batch)[:, -1].float().cpu()
            for j, i in enumerate(chunk):
                out[i] = logits[j]
    return torch.stack(out)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# Induction


@torch.no_grad()
def patterns(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``[n_layers, batch, n_heads, pos, pos]`` attention patterns."""
    device = next(model.parameters()).device
    _, cache = model.run_with_cache(tokens.to(device),
                                    names_filter=lambda n: n.endswith("attn.hook_pattern"))
    n_layers = model.cfg.n_layers
    return torch.stack([cache[f"blocks.{i}.attn.hook_pattern"].float().cpu()
                        for i in range(n_layers)])


def repeated_tokens(model: Any, seqs: Sequence[Any]) -> torch.Tensor:
    """``[batch, 1 + 2 * half]`` tokens of :func:`tasks.induction_sequences` output."""
    toks = torch.stack([tokens_of(model, s.text) for s in seqs])
    half = seqs[0].half_length
    if toks.shape[1] != 1 + 2 * half:
        raise ValueError(f"expected {1 + 2 * half} tokens, got {toks.shape[1]}")
    return toks


def prev_token_scores(pats: torch.Tensor) -> torch.Tensor:
    """``[n_layers, n_heads]``: mean attention from position ``i`` to ``i - 1`` (i >= 1)."""
    diag = pats.diagonal(offset=-1, dim1=-2, dim2=-1)  # [L, B, H, pos-1]
    return diag.mean(dim=(1, 3))


def induction_scores(pats: torch.Tensor, half: int) -> torch.Tensor:
    """``[n_layers, n_heads]``: mean attention from ``i`` in the repeated half to ``i - half + 1``.

    Tokens are ``[BOS, x_1..x_half, x_1..x_half]``; position ``i > half`` holds the token at
    ``i - half``, whose successor in the first occurrence is at ``i - half + 1``.
    """
    diag = pats.diagonal(offset=-(half - 1), dim1=-2, dim2=-1)  # query i, key i-half+1
    # diag[..., j] is query j + half - 1; keep queries half+1 .. 2*half -> j = 2 .. half+1
    return diag[..., 2:half + 2].mean(dim=(1, 3))


@torch.no_grad()
def repeated_half_losses(model: Any, tokens: torch.Tensor) -> tuple[float, float]:
    """Mean next-token loss on the first half and on the repeated half (its first token excluded,
    it cannot be predicted)."""
    half = (tokens.shape[1] - 1) // 2
    device = next(model.parameters()).device
    logits = model(tokens.to(device)).float().cpu()
    lp = F.log_softmax(logits[:, :-1], dim=-1)
    nll = -lp.gather(-1, tokens[:, 1:, None]).squeeze(-1)  # [B, pos-1]; col j predicts token j+1
    first = nll[:, 1:half].mean().item()  # targets 2..half
    second = nll[:, half + 1:].mean().item()  # targets half+2..2*half
    return first, second


def induction_report(model: Any, seqs: Sequence[Any]) -> dict[str, Any]:
    toks = repeated_tokens(model, seqs)
    pats = patterns(model, toks)
    prev = prev_token_scores(pats)
    ind = induction_scores(pats, seqs[0].half_length)
    first, second = repeated_half_losses(model, toks)
    return {
        "prev_token_scores": prev.tolist(),
        "induction_scores": ind.tolist(),
        "best_prev_token_head": _argmax_head(prev),
        "best_induction_head": _argmax_head(ind),
        "loss_first_half": first,
        "loss_repeated_half": second,
    }


def _argmax_head(scores: torch.Tensor) -> dict[str, Any]:
    flat = int(scores.argmax())
    layer, head = divmod(flat, scores.shape[1])
    return {"layer": layer, "head": head, "score": float(scores[layer, head])}


# ------------------------------------------------------------------------------------------
# toy-lm tasks


def ioi_report(model: Any, pairs: Sequence[Any]) -> dict[str, float]:
    clean = last_logits(model, [p.clean for p in pairs])
    corrupted = last_logits(model, [p.corrupted for p in pairs])
    io = torch.tensor([single_token_id(model, p.answer) for p in pairs])
    s = torch.tensor([single_token_id(model, p.wrong_answer) for p in pairs])
    ar = torch.arange(len(pairs))
    probs = clean.softmax(-1)
    return {
        "n": len(pairs),
        "top1_accuracy": (clean.argmax(-1) == io).float().mean().item(),
        "io_beats_s": (clean[ar, io] > clean[ar, s]).float().mean().item(),
        "logit_diff": (clean[ar, io] - clean[ar, s]).mean().item(),
        "corrupted_logit_diff": (corrupted[ar, io] - corrupted[ar, s]).mean().item(),
        "p_io": probs[ar, io].mean().item(),
    }


def greater_than_report(model: Any, pairs: Sequence[Any]) -> dict[str, float]:
    clean = last_logits(model, [p.clean for p in pairs]).softmax(-1)
    corrupted = last_logits(model, [p.corrupted for p in pairs]).softmax(-1)
    yy_ids = torch.tensor([single_token_id(model, f"{y:02d}") for y in range(100)])
    clean_yy = clean[:, yy_ids]  # [n, 100]
    corr_yy = corrupted[:, yy_ids]
    years = torch.tensor([p.year for p in pairs])
    above = torch.arange(100)[None, :] > years[:, None]
    mass = (clean_yy * above).sum(-1)
    below = (clean_yy * ~above).sum(-1)
    return {
        "n": len(pairs),
        "valid_year_mass": mass.mean().item(),
        "prob_diff": (mass - below).mean().item(),
        "two_digit_mass": clean_yy.sum(-1).mean().item(),
        "corrupted_valid_year_mass": (corr_yy * above).sum(-1).mean().item(),
        "corrupted_prob_diff": ((corr_yy * above).sum(-1) - (corr_yy * ~above).sum(-1))
        .mean().item(),
    }


def facts_report(model: Any, facts: Sequence[Any]) -> dict[str, Any]:
    logits = last_logits(model, [f.prompt for f in facts])
    ids = torch.tensor([single_token_id(model, f.answer) for f in facts])
    hit = logits.argmax(-1) == ids
    kinds = sorted({f.kind for f in facts})
    return {
        "n": len(facts),
        "top1_accuracy": hit.float().mean().item(),
        **{f"top1_accuracy_{k}": hit[[f.kind == k for f in facts]].float().mean().item()
           for k in kinds},
    }


def agreement_report(model: Any, pairs: Sequence[Any]) -> dict[str, float]:
    logits = last_logits(model, [p.clean for p in pairs])
    good = torch.tensor([single_token_id(model, p.answer) for p in pairs])
    bad = torch.tensor([single_token_id(model, p.wrong_answer) for p in pairs])
    ar = torch.arange(len(pairs))
    return {
        "n": len(pairs),
        "accuracy": (logits[ar, good] > logits[ar, bad]).float().mean().item(),
        "logit_diff": (logits[ar, good] - logits[ar, bad]).mean().item(),
    }


@torch.no_grad()
def text_loss(model: Any, texts: Sequence[str]) -> float:
    """Mean next-token loss over documents (truncated to ``n_ctx``)."""
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for t in texts:
        toks = tokens_of(model, t)[: model.cfg.n_ctx][None].to(device)
        logits = model(toks).float()
        loss = F.cross_entropy(logits[0, :-1], toks[0, 1:], reduction="sum")
        total += loss.item()
        count += toks.shape[1] - 1
    return total / count


# ------------------------------------------------------------------------------------------
# SAEs


@torch.no_grad()
def activations(model: Any, texts: Sequence[str], hook_names: Sequence[str],
                batch_size: int = 16) -> dict[str, torch.Tensor]:
    """``{hook: [n_tokens, d_model]}`` at non-BOS positions of ``texts`` (truncated to n_ctx)."""
    device = next(model.parameters()).device
    n_ctx = model.cfg.n_ctx
    toks = [tokens_of(model, t)[:n_ctx] for t in texts]
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hook_names}
    wanted = set(hook_names)
    for start in range(0, len(toks), batch_size):
        chunk = toks[start:start + batch_size]
        length = max(len(t) for t in chunk)
        batch = torch.zeros(len(chunk), length, dtype=torch.long)
        mask = torch.zeros(len(chunk), length, dtype=torch.bool)
        for i, t in enumerate(chunk):
            batch[i, : len(t)] = t
            batch[i, len(t):] = t[0]
            mask[i, 1: len(t)] = True  # skip BOS and right padding (causal: padding is inert)
        _, cache = model.run_with_cache(batch.to(device), names_filter=lambda n: n in wanted)
        for h in hook_names:
            out[h].append(cache[h].float().cpu()[mask])
    return {h: torch.cat(v) for h, v in out.items()}


@torch.no_grad()
def sae_report(sae: Any, acts: torch.Tensor, batch_size: int = 4096) -> dict[str, float]:
    """Explained variance, mean L0 and dead-feature fraction of ``sae`` on ``acts`` [n, d_in]."""
    err, l0, fired = 0.0, 0.0, None
    for start in range(0, len(acts), batch_size):
        x = acts[start:start + batch_size]
        dtype = sae.W_enc.dtype
        f = sae.encode(x.to(dtype))
        x_hat = sae.decode(f).float()
        err += ((x - x_hat) ** 2).sum().item()
        active = f != 0
        l0 += active.sum().item()
        fired = active.any(0) if fired is None else fired | active.any(0)
    total = ((acts - acts.mean(0)) ** 2).sum().item()
    assert fired is not None
    return {
        "n_tokens": len(acts),
        "explained_variance": 1.0 - err / total,
        "mean_l0": l0 / len(acts),
        "dead_fraction": 1.0 - fired.float().mean().item(),
    }


# ------------------------------------------------------------------------------------------
# IOI circuit summary (for the model card)


def _name_positions(model: Any, prompt: str, io: str, s: str) -> tuple[int, int, int]:
    """Token positions (BOS included) of IO, S1 and S2 in an IOI prompt."""
    strs = model.to_str_tokens(prompt)
    io_pos = [i for i, t in enumerate(strs) if t.strip() == io]
    s_pos = [i for i, t in enumerate(strs) if t.strip() == s]
    if len(io_pos) != 1 or len(s_pos) != 2:
        raise ValueError(f"unexpected IOI prompt {prompt!r}")
    return io_pos[0], s_pos[0], s_pos[1]


@torch.no_grad()
def ioi_head_summary(model: Any, pairs: Sequence[Any]) -> dict[str, Any]:
    """Per-head evidence for the IOI circuit on ``pairs`` of one template (aligned positions).

    Returns ``[n_layers, n_heads]`` lists of:

    - ``attn_end_to_io`` / ``attn_end_to_s``: attention from the final token to IO / to S1+S2;
    - ``dla``: direct logit attribution of the head's output at the final position to
      ``logit(IO) - logit(S)`` (through the final LayerNorm's scale);
    - ``patch_recovery``: fraction of the clean-minus-corrupted logit difference restored when
      the head's output (``hook_z``, all positions) is patched from the clean run into the
      ABC-corrupted run (denoising);
    - ``attn_s2_to_s1``: attention from S2 to S1 (duplicate-token behaviour).
    """
    cfg = model.cfg
    n_layers, n_heads = cfg.n_layers, cfg.n_heads
    device = next(model.parameters()).device
    clean = torch.stack([tokens_of(model, p.clean) for p in pairs]).to(device)
    corrupted = torch.stack([tokens_of(model, p.corrupted) for p in pairs]).to(device)
    pos = torch.tensor([_name_positions(model, p.clean, p.io, p.s) for p in pairs])
    io_id = torch.tensor([single_token_id(model, p.answer) for p in pairs])
    s_id = torch.tensor([single_token_id(model, p.wrong_answer) for p in pairs])
    ar = torch.arange(len(pairs))

    def logit_diff(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1].float().cpu()
        return (last[ar, io_id] - last[ar, s_id]).mean()

    clean_logits, cache = model.run_with_cache(clean)
    corrupted_logits, _corr_cache = model.run_with_cache(
        corrupted, names_filter=lambda n: n.endswith("hook_z"))
    ld_clean, ld_corr = logit_diff(clean_logits), logit_diff(corrupted_logits)
    w_u = model.W_U.float().cpu()
    direction = (w_u[:, io_id] - w_u[:, s_id]).T  # [n, d_model]
    scale = cache["ln_final.hook_scale"][:, -1].float().cpu()  # [n, 1]
    attn_io = torch.zeros(n_layers, n_heads)
    attn_s = torch.zeros(n_layers, n_heads)
    attn_s2_s1 = torch.zeros(n_layers, n_heads)
    dla = torch.zeros(n_layers, n_heads)
    patch = torch.zeros(n_layers, n_heads)
    w_o = model.W_O.float().cpu()  # [L, H, d_head, d_model]
    for layer in range(n_layers):
        pat = cache[f"blocks.{layer}.attn.hook_pattern"].float().cpu()  # [n, H, q, k]
        last = pat[:, :, -1]  # [n, H, k]
        attn_io[layer] = last[ar, :, pos[:, 0]].mean(0)
        attn_s[layer] = (last[ar, :, pos[:, 1]] + last[ar, :, pos[:, 2]]).mean(0)
        attn_s2_s1[layer] = pat[ar, :, pos[:, 2], pos[:, 1]].mean(0)
        z = cache[f"blocks.{layer}.attn.hook_z"][:, -1].float().cpu()  # [n, H, d_head]
        out = torch.einsum("nhe,hed->nhd", z, w_o[layer]) / scale[:, None]
        dla[layer] = torch.einsum("nhd,nd->nh", out, direction).mean(0)
        for head in range(n_heads):
            clean_z = cache[f"blocks.{layer}.attn.hook_z"]

            def hook(z: torch.Tensor, hook: Any, head: int = head,
                     clean_z: torch.Tensor = clean_z) -> torch.Tensor:
                z = z.clone()
                z[:, :, head] = clean_z[:, :, head]
                return z

            logits = model.run_with_hooks(corrupted,
                                          fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
            patch[layer, head] = (logit_diff(logits) - ld_corr) / (ld_clean - ld_corr)
    return {
        "n": len(pairs),
        "template": pairs[0].template,
        "logit_diff_clean": ld_clean.item(),
        "logit_diff_corrupted": ld_corr.item(),
        "attn_end_to_io": attn_io.tolist(),
        "attn_end_to_s": attn_s.tolist(),
        "attn_s2_to_s1": attn_s2_s1.tolist(),
        "dla": dla.tolist(),
        "patch_recovery": patch.tolist(),
    }
