"""Re-train the zoo from fixed seeds and regenerate the model cards.

Usage::

    python -m mechwidgets.zoo.train induction-2l     # ~1 minute on a 2-core CPU
    python -m mechwidgets.zoo.train toy-lm           # the language model, then its SAEs
    python -m mechwidgets.zoo.train toy-lm-saes      # only the SAEs of the shipped toy-lm
    python -m mechwidgets.zoo.train all

Options: ``--out DIR`` writes to ``DIR/<name>/`` instead of the package, ``--seed``, ``--steps``
(override the number of optimiser steps, for quick experiments), ``--threads`` (default 2).

Training uses a plain-PyTorch twin of ``HookedTransformer`` (:class:`TrainLM`, same maths: pre-LN,
``gelu``, learned absolute positions, attention scaled by ``1/sqrt(d_head)``), about 1.5x faster
on CPU; its weights are converted to ``HookedTransformer`` layout, saved as safetensors, loaded
back through :func:`mechwidgets.zoo.load` and checked to give the same logits. All metrics in the
cards are measured on the reloaded model, on held-out data.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import _metrics as M
from . import tasks
from ._loading import (
    CONFIG_FILENAME,
    TOKENIZER_DIRNAME,
    WEIGHTS_FILENAME,
    ZOO_DIR,
    load_model_dir,
    sha256_file,
)
from ._sae import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SimpleSAE, SimpleSAEConfig

# ------------------------------------------------------------------------------------------
# Hyper-parameters

INDUCTION_2L_CONFIG: dict[str, Any] = {
    "model_name": "induction-2l",
    "n_layers": 2,
    "d_model": 64,
    "n_heads": 4,
    "d_head": 16,
    "d_mlp": None,
    "attn_only": True,
    "n_ctx": 128,
    "d_vocab": 128,
    "normalization_type": "LN",
    "positional_embedding_type": "standard",
    "default_prepend_bos": True,
}
INDUCTION_2L_TRAIN: dict[str, Any] = {"steps": 3000, "batch_size": 32, "lr": 2e-3, "warmup": 50,
                      "weight_decay": 0.01, "init_std": 0.1, "seg_len": (3, 40),
                      # per episode: two in three repeat the segment at once, one in three
                      # after a gap, at a distance of up to 70 tokens
                      "distances": ((0, 0), (0, 0), (3, 70))}

TOY_LM_CONFIG: dict[str, Any] = {
    "model_name": "toy-lm",
    "n_layers": 4,
    "d_model": 128,
    "n_heads": 4,
    "d_head": 32,
    "d_mlp": 512,
    "attn_only": False,
    "act_fn": "gelu",
    "n_ctx": 128,
    "d_vocab": None,  # set from the tokenizer
    "normalization_type": "LN",
    "positional_embedding_type": "standard",
    "default_prepend_bos": True,
}
TOY_LM_TRAIN: dict[str, Any] = {"steps": 2600, "batch_size": 32, "lr": 2e-3, "warmup": 100,
                "weight_decay": 0.05, "init_std": 0.1, "pos_init_std": 0.1,
                "tie_embeddings": True, "segments_per_doc": 14,
                # the generated text in short rows (cheap), then `final_steps` of full-length
                # rows, so every position embedding is trained. Optional: a first phase of
                # `repeat_steps` rows of repeated random words (dense in-context copying), and
                # `repeat_rows` such rows in every later batch; both off: an 800-step first phase
                # delayed IOI by about 800 steps, and neither (1,200 steps of it, or 4-6 rows per
                # batch for 1,900 steps) made an induction head on random word lists form.
                "repeat_steps": 0, "repeat_batch_size": 32, "repeat_rows": 0, "repeat_words": "all",
                "short_ctx": 64, "final_steps": 200,
                "repeat_seg_len": (3, 20), "repeat_distances": ((0, 0), (0, 0), (3, 40)),
                # the segment mix of the text: IOI-heavy, as its S-inhibition is the slowest
                # task to learn
                "text_mix": {"ordinary": 0.13, "ioi": 0.6, "greater_than": 0.14,
                             "induction": 0.03, "fact": 0.05, "agreement": 0.05}}

SAE_HOOKS = [f"blocks.{layer}.hook_resid_pre" for layer in range(4)] + ["blocks.3.hook_resid_post"]
SAE_TRAIN: dict[str, Any] = {"d_sae": 512, "k": 24, "n_docs": 2400, "steps": 800, "batch_size": 1024,
             "lr": 2e-3, "aux_k": 128, "aux_coef": 1 / 32, "dead_after": 4000}


# ------------------------------------------------------------------------------------------
# The training twin of HookedTransformer


class _Block(nn.Module):
    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        d, h, dh = cfg["d_model"], cfg["n_heads"], cfg["d_head"]
        self.h, self.dh = h, dh
        self.ln1 = nn.LayerNorm(d, eps=1e-5)
        self.qkv = nn.Linear(d, 3 * h * dh)
        self.o = nn.Linear(h * dh, d)
        self.attn_only = cfg["attn_only"]
        if not self.attn_only:
            self.ln2 = nn.LayerNorm(d, eps=1e-5)
            self.fc_in = nn.Linear(d, cfg["d_mlp"])
            self.fc_out = nn.Linear(cfg["d_mlp"], d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, self.h * self.dh))
        if not self.attn_only:
            x = x + self.fc_out(F.gelu(self.fc_in(self.ln2(x))))
        return x


class TrainLM(nn.Module):
    """Same function as ``HookedTransformer`` with the same config; faster to train on CPU."""

    def __init__(self, cfg: dict[str, Any], init_std: float = 0.02, tie: bool = False,
                 pos_init_std: float | None = None):
        super().__init__()
        self.cfg = cfg
        self.init_std = init_std
        self.pos_init_std = init_std if pos_init_std is None else pos_init_std
        d = cfg["d_model"]
        self.embed = nn.Embedding(cfg["d_vocab"], d)
        self.pos = nn.Embedding(cfg["n_ctx"], d)
        self.blocks = nn.ModuleList([_Block(cfg) for _ in range(cfg["n_layers"])])
        self.ln_final = nn.LayerNorm(d, eps=1e-5)
        self.unembed = nn.Linear(d, cfg["d_vocab"])
        self._init()
        if tie:  # GPT-2 style: W_U = W_E^T during training (saved as two equal matrices)
            self.unembed.weight = self.embed.weight

    def _init(self) -> None:
        std = self.init_std
        out_std = std / math.sqrt(2 * self.cfg["n_layers"])
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "ln" in name:
                nn.init.ones_(p)
            elif name.endswith(("o.weight", "fc_out.weight")):
                nn.init.normal_(p, std=out_std)
            elif name == "pos.weight":  # larger: previous-token heads read positions
                nn.init.normal_(p, std=self.pos_init_std)
            else:
                nn.init.normal_(p, std=std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos.weight[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_final(x))

    @torch.no_grad()
    def hooked_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters in ``HookedTransformer`` naming and layout."""
        cfg = self.cfg
        h, dh, d = cfg["n_heads"], cfg["d_head"], cfg["d_model"]
        sd: dict[str, torch.Tensor] = {
            "embed.W_E": self.embed.weight,
            "pos_embed.W_pos": self.pos.weight,
        }
        blocks: list[_Block] = list(self.blocks)  # type: ignore[arg-type]
        for i, blk in enumerate(blocks):
            p = f"blocks.{i}."
            sd[p + "ln1.w"], sd[p + "ln1.b"] = blk.ln1.weight, blk.ln1.bias
            w = blk.qkv.weight.view(3, h, dh, d)
            bias = blk.qkv.bias.view(3, h, dh)
            for j, name in enumerate("QKV"):
                sd[p + f"attn.W_{name}"] = w[j].permute(0, 2, 1)  # [h, d_model, d_head]
                sd[p + f"attn.b_{name}"] = bias[j]
            sd[p + "attn.W_O"] = blk.o.weight.T.reshape(h, dh, d)
            sd[p + "attn.b_O"] = blk.o.bias
            if not blk.attn_only:
                sd[p + "ln2.w"], sd[p + "ln2.b"] = blk.ln2.weight, blk.ln2.bias
                sd[p + "mlp.W_in"], sd[p + "mlp.b_in"] = blk.fc_in.weight.T, blk.fc_in.bias
                sd[p + "mlp.W_out"], sd[p + "mlp.b_out"] = blk.fc_out.weight.T, blk.fc_out.bias
        sd["ln_final.w"], sd["ln_final.b"] = self.ln_final.weight, self.ln_final.bias
        sd["unembed.W_U"], sd["unembed.b_U"] = self.unembed.weight.T, self.unembed.bias
        return {k: v.detach().float().contiguous().clone() for k, v in sd.items()}


def train_loop(model: nn.Module, get_batch: Callable[[int], torch.Tensor], *, steps: int,
               lr: float, warmup: int, weight_decay: float, log_every: int = 100,
               eval_every: int = 0,
               eval_fn: Callable[[nn.Module], dict[str, float]] | None = None) -> list[dict]:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    log, running, t0 = [], None, time.time()
    model.train()
    for step in range(steps):
        tokens = get_batch(step)
        logits = model(tokens)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                               tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % log_every == 0 or step == steps - 1:
            entry = {"step": step + 1, "loss": round(running, 4),
                     "seconds": round(time.time() - t0, 1)}
            if eval_fn is not None and eval_every and ((step + 1) % eval_every == 0
                                                       or step == steps - 1):
                model.eval()
                with torch.no_grad():
                    entry.update({k: round(v, 4) for k, v in eval_fn(model).items()})
                model.train()
            log.append(entry)
            print("  " + "  ".join(f"{k} {v}" for k, v in entry.items()), flush=True)
    model.eval()
    return log


# ------------------------------------------------------------------------------------------
# Writing and checking a model folder


def _write_model(folder: Path, cfg: dict[str, Any], model: TrainLM, tokenizer: Any,
                 extra: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    from ._tokenizers import save_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tok_dir = folder / TOKENIZER_DIRNAME
    if tok_dir.exists():
        shutil.rmtree(tok_dir)
    save_tokenizer(tokenizer, tok_dir)
    save_file(model.hooked_state_dict(), str(folder / WEIGHTS_FILENAME),
              metadata={"format": "pt", "layout": "HookedTransformer"})
    files = [WEIGHTS_FILENAME, *sorted(f"{TOKENIZER_DIRNAME}/{p.name}" for p in tok_dir.iterdir() if p.is_file())]
    meta = {
        "name": cfg["model_name"],
        "format_version": 1,
        "hooked_transformer_config": cfg,
        "weights": WEIGHTS_FILENAME,
        "tokenizer": TOKENIZER_DIRNAME,
        "sha256": {f: sha256_file(folder / f) for f in files},
        "saes": [],
        **extra,
    }
    (folder / CONFIG_FILENAME).write_text(json.dumps(meta, indent=2) + "\n")


@torch.no_grad()
def _check_reload(folder: Path, model: TrainLM, tokens: torch.Tensor) -> tuple[Any, float]:
    """Load through the public loader and compare logits with the training twin."""
    loaded = load_model_dir(folder)
    ref = model(tokens)
    got = loaded(tokens)
    err = (ref - got).abs().max().item()
    print(f"  reloaded {folder.name}: max |logit difference| vs training model = {err:.2e}")
    if err > 1e-3:
        raise RuntimeError(f"reloaded model differs from the trained one by {err}")
    return loaded, err


def _env() -> dict[str, Any]:
    import transformer_lens  # noqa: F401

    try:
        from importlib.metadata import version

        tl_version = version("transformer_lens")
    except Exception:  # pragma: no cover
        tl_version = "?"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformer_lens": tl_version,
        "cpu_threads": torch.get_num_threads(),
        "date": datetime.date.today().isoformat(),
    }


# ------------------------------------------------------------------------------------------
# induction-2l


def induction_batch(gen: torch.Generator, batch_size: int, n_ctx: int,
                    seg_len: tuple[int, int], distances: tuple[tuple[int, int], ...],
                    token_ids: torch.Tensor | None = None, bos: int = 0) -> torch.Tensor:
    """Rows of episodes: a random segment, random filler, the same segment again.

    Per episode the segment length is drawn from ``seg_len`` and the distance between the two
    occurrences' starts uniformly from one of the ``distances`` ranges (inclusive, at least the
    segment length), so repeats occur at random offsets and positions. Episodes follow each
    other along the row. Tokens are uniform over ``token_ids`` (default: ``t0`` ... , ids 1 ...
    n of induction-2l); position 0 is BOS.
    """
    if token_ids is None:
        token_ids = torch.arange(1, tasks.INDUCTION_2L_N_TOKENS + 1)
    x = token_ids[torch.randint(0, len(token_ids), (batch_size, n_ctx), generator=gen)]
    x[:, 0] = bos
    u = torch.rand(batch_size, n_ctx, 3, generator=gen).tolist()
    starts = torch.randint(1, 4, (batch_size,), generator=gen).tolist()
    for row in range(batch_size):
        pos = starts[row]
        for r in u[row]:
            length = seg_len[0] + int(r[0] * (seg_len[1] - seg_len[0] + 1))
            lo, hi = distances[int(r[1] * len(distances))]
            lo = max(lo, length)
            dist = lo + int(r[2] * (hi - lo + 1)) if hi >= lo else length
            b = pos + dist
            if b >= n_ctx:
                break
            m = min(length, n_ctx - b)
            x[row, b:b + m] = x[row, pos:pos + m]
            pos = b + m
    return x


def _start(defaults: dict[str, Any], steps: int | None) -> tuple[dict[str, Any], Callable[[], tuple[float, float]]]:
    """A training run's hyperparameters (``steps`` overriding the default) and a clock of its
    wall-clock and CPU seconds since now."""
    t_start, cpu_start = time.time(), time.process_time()
    hp = dict(defaults)
    if steps:
        hp["steps"] = steps
    return hp, lambda: (time.time() - t_start, time.process_time() - cpu_start)


def _publish(folder: Path, report: dict[str, Any], card: str) -> dict[str, Any]:
    """Write a trained model's metrics and card beside its weights; print the summary."""
    (folder / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "README.md").write_text(card)
    _print_summary(report)
    return report


def train_induction_2l(out_root: Path, seed: int = 0, steps: int | None = None) -> dict:
    from ._tokenizers import induction_2l_tokenizer

    hp, elapsed = _start(INDUCTION_2L_TRAIN, steps)
    cfg = dict(INDUCTION_2L_CONFIG)
    torch.manual_seed(seed)
    model = TrainLM(cfg, init_std=hp["init_std"])
    gen = torch.Generator().manual_seed(seed)
    print(f"induction-2l: {sum(p.numel() for p in model.parameters())} parameters")
    log = train_loop(
        model,
        lambda step: induction_batch(gen, hp["batch_size"], cfg["n_ctx"], hp["seg_len"],
                                     hp["distances"]),
        steps=hp["steps"], lr=hp["lr"], warmup=hp["warmup"], weight_decay=hp["weight_decay"],
    )
    train_seconds, cpu_seconds = elapsed()
    folder = out_root / "induction-2l"
    _write_model(folder, cfg, model, induction_2l_tokenizer(), {})
    check_tokens = induction_batch(torch.Generator().manual_seed(10_000 + seed), 4, cfg["n_ctx"],
                                   hp["seg_len"], hp["distances"])
    loaded, err = _check_reload(folder, model, check_tokens)

    metrics = {}
    for half in (30, 50):  # 50: longer than any training segment
        seqs = tasks.induction_sequences(64, length=half, seed=1000 + seed,
                                         model="induction-2l")
        metrics[f"repeated_random_{half}"] = M.induction_report(loaded, seqs)
    for distance in (20, 60, 100):  # 100: farther than any training repeat
        metrics[f"segment_10_at_distance_{distance}"] = _distance_accuracy(
            loaded, 10, distance, 1000 + seed)
    report = {
        "name": "induction-2l",
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train": {**hp, "seconds": round(train_seconds, 1), "cpu_seconds": round(cpu_seconds, 1), "log": log,
                  "tokens": hp["steps"] * hp["batch_size"] * cfg["n_ctx"]},
        "reload_max_abs_logit_diff": err,
        "metrics": metrics,
        "env": _env(),
    }
    return _publish(folder, report, induction_2l_card(cfg, report))


@torch.no_grad()
def _distance_accuracy(model: Any, length: int, distance: int, seed: int) -> dict[str, float]:
    """Top-1 accuracy on the predictable tokens of a segment repeated ``distance`` later."""
    gen = torch.Generator().manual_seed(seed)
    toks = torch.randint(1, tasks.INDUCTION_2L_N_TOKENS + 1, (64, 1 + distance + length),
                         generator=gen)
    toks[:, 0] = 0
    toks[:, 1 + distance:] = toks[:, 1:1 + length]
    logits = model(toks)
    pred = logits[:, distance + 1:-1].argmax(-1)  # predicts tokens 2 .. length of the copy
    return {"top1_accuracy": (pred == toks[:, distance + 2:]).float().mean().item(),
            "length": length, "distance": distance}


def induction_2l_card(cfg: dict[str, Any], r: dict[str, Any]) -> str:
    hp = r["train"]
    lines = [
        "# induction-2l",
        "",
        "A two-layer, attention-only transformer that solves in-context repetition with a",
        "previous-token head in layer 0 and an induction head in layer 1 (Olsson et al. 2022,",
        '"In-context Learning and Induction Heads"). Generated by `python -m mechwidgets.zoo.train',
        "induction-2l`; do not edit by hand.",
        "",
        "## Architecture",
        "",
        f"- {cfg['n_layers']} layers, attention only, d_model {cfg['d_model']}, "
        f"{cfg['n_heads']} heads of d_head {cfg['d_head']}, LayerNorm, learned absolute "
        f"positions, n_ctx {cfg['n_ctx']}, {r['parameters']:,} parameters (float32).",
        f"- Vocabulary of {cfg['d_vocab']}: `<|endoftext|>` (BOS, id 0), `t0` ... `t125` "
        "(ids 1-126), `<|unk|>` (127); a `tokenizers` WordLevel tokenizer that splits on spaces.",
        "- Loads as a `HookedTransformer` (TransformerLens 3.x) or a `TransformerBridge` (4.x).",
        "",
        "## Data",
        "",
        f"Rows of {cfg['n_ctx']} tokens: BOS, then back-to-back episodes of a segment of "
        f"uniform random tokens ({hp['seg_len'][0]}-{hp['seg_len'][1]} tokens), optional random "
        "filler, and the segment again (`train.induction_batch`). Per episode the distance "
        "between the two occurrences' starts is drawn from one of "
        + ", ".join("the segment's length (no filler)" if hi == 0 else f"{a}-{hi} tokens"
                    for a, hi in hp["distances"])
        + ", so repeats occur at random offsets, positions and distances and a positional "
        "shortcut does not work. Segments longer than "
        f"{hp['seg_len'][1]} tokens and distances beyond "
        f"{max(hi for _, hi in hp['distances'])} never occur in training: the held-out tests "
        "below use them.",
        "",
        "## Training",
        "",
        f"AdamW (betas 0.9/0.98, weight decay {hp['weight_decay']}), lr {hp['lr']} with "
        f"{hp['warmup']} warm-up steps and cosine decay to 10%, batch {hp['batch_size']}, "
        f"{hp['steps']} steps ({hp['tokens']:,} tokens), initialisation N(0, "
        f"{hp.get('init_std')}), seed {r['seed']}; "
        f"{hp['seconds']} s wall clock, {hp.get('cpu_seconds')} s CPU time, "
        f"{r['env']['cpu_threads']} torch threads. Final "
        f"training loss "
        f"{hp['log'][-1]['loss']}.",
        "",
        "## Metrics (held out)",
        "",
        "Measured on 64 sequences of random tokens repeated once (`tasks.induction_sequences`, "
        "BOS + 2 x half tokens, fresh random tokens). Half length 50 is longer than any "
        "training segment. Scores as in "
        "TransformerLens's head detector: mean attention to the previous token, and from the "
        "repeated half to the token after the earlier occurrence of the current token.",
        "",
        "| half length | best previous-token head (L0) | best induction head (L1) | loss, first half "
        "| loss, repeated half |",
        "|---|---|---|---|---|",
    ]
    for key, m in r["metrics"].items():
        if not key.startswith("repeated_random_"):
            continue
        prev = m["prev_token_scores"][0]
        ind = m["induction_scores"][1]
        hp0 = max(range(len(prev)), key=lambda i: prev[i])
        hi1 = max(range(len(ind)), key=lambda i: ind[i])
        lines.append(
            f"| {key.rsplit('_', 1)[1]} | L0H{hp0}: {prev[hp0]:.3f} | L1H{hi1}: {ind[hi1]:.3f} | "
            f"{m['loss_first_half']:.3f} | {m['loss_repeated_half']:.3f} |")
    dist = [v for k, v in r["metrics"].items() if k.startswith("segment_")]
    lines += [
        "",
        "A segment of 10 random tokens repeated at a given distance (64 sequences), top-1 "
        "accuracy on its 9 predictable tokens: "
        + ", ".join(f"distance {d['distance']}: {d['top1_accuracy']:.3f}" for d in dist)
        + f" (training repeats at most {max(hi for _, hi in hp['distances'])} tokens apart).",
    ]
    m = r["metrics"]["repeated_random_30"]
    lines += [
        "",
        "All heads, half length 30 (rows: layer, columns: head):",
        "",
        "| | " + " | ".join(f"H{h}" for h in range(cfg["n_heads"])) + " |",
        "|---|" + "---|" * cfg["n_heads"],
    ]
    for layer in range(cfg["n_layers"]):
        lines.append(f"| previous-token L{layer} | " + " | ".join(
            f"{v:.3f}" for v in m["prev_token_scores"][layer]) + " |")
    for layer in range(cfg["n_layers"]):
        lines.append(f"| induction L{layer} | " + " | ".join(
            f"{v:.3f}" for v in m["induction_scores"][layer]) + " |")
    lines += [
        "",
        "## Known circuits",
        "",
        f"- Previous-token head L0H{m['best_prev_token_head']['head']} writes the previous "
        "token into each position's residual stream.",
        f"- Induction head L1H{m['best_induction_head']['head']} uses it through K-composition: "
        "at a repeated token it attends to the position after the token's earlier occurrence "
        "and copies that token (OV), which is why the repeated half's loss is far below "
        f"the first half's, which stays at the uniform ln({tasks.INDUCTION_2L_N_TOKENS}) = "
        f"{math.log(tasks.INDUCTION_2L_N_TOKENS):.2f}.",
        "",
        f"Weights reloaded through `mechwidgets.zoo.load` match the training model to "
        f"{r['reload_max_abs_logit_diff']:.1e} in the logits.",
        "",
    ]
    return "\n".join(lines)


def _print_summary(report: dict[str, Any]) -> None:
    def short(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: short(x) for k, x in v.items() if k not in ("log",)}
        if isinstance(v, list) and v and isinstance(v[0], list):
            return "[...]"
        if isinstance(v, float):
            return round(v, 4)
        return v

    print(json.dumps(short(report), indent=1))


# ------------------------------------------------------------------------------------------
# toy-lm


def lm_rows(tokenizer: Any, rng: Any, n_rows: int, n_ctx: int, segments: int,
            mix: dict[str, float] | None = None) -> torch.Tensor:
    """``[n_rows, n_ctx]`` rows: BOS then generated documents, truncated to ``n_ctx``."""
    backend = tokenizer.backend_tokenizer
    bos = tokenizer.convert_tokens_to_ids(tasks.BOS)
    unk = tokenizer.convert_tokens_to_ids(tasks.UNK)
    rows = torch.empty(n_rows, n_ctx, dtype=torch.long)
    chunk = 2048
    for start in range(0, n_rows, chunk):
        m = min(chunk, n_rows - start)
        docs = [tasks.document(rng, segments, mix) for _ in range(m)]
        encs = backend.encode_batch(docs, add_special_tokens=False)
        for i, enc in enumerate(encs):
            ids = enc.ids
            while len(ids) < n_ctx - 1:
                extra = backend.encode(" " + tasks.document(rng, segments, mix),
                                       add_special_tokens=False).ids
                ids = ids + extra
            if unk in ids[: n_ctx - 1]:
                bad = [t for t, j in zip(enc.tokens, enc.ids, strict=False) if j == unk]
                raise RuntimeError(f"grammar produced out-of-vocabulary pieces: {bad[:10]}")
            rows[start + i, 0] = bos
            rows[start + i, 1:] = torch.tensor(ids[: n_ctx - 1])
    return rows


def _quick_toy_lm_eval(tokenizer: Any) -> Callable[[nn.Module], dict[str, float]]:
    """IOI accuracy and greater-than mass of the training model on a few held-out prompts."""
    bos = tokenizer.convert_tokens_to_ids(tasks.BOS)
    backend = tokenizer.backend_tokenizer

    def ids(text: str) -> list[int]:
        return [bos, *backend.encode(text, add_special_tokens=False).ids]

    ioi = tasks.ioi_pairs(96, seed=777, held_out=True)
    gt = tasks.greater_than_pairs(64, seed=777, held_out=True)
    yy = torch.tensor([tokenizer.convert_tokens_to_ids(f"{y:02d}") for y in range(100)])
    rep = torch.tensor([ids(s.text) for s in tasks.induction_sequences(16, length=20, seed=777)])

    def last(model: nn.Module, prompts: list[str]) -> torch.Tensor:
        toks = [ids(p) for p in prompts]
        out: list[Any] = [None] * len(prompts)
        for length in {len(t) for t in toks}:
            idx = [i for i, t in enumerate(toks) if len(t) == length]
            logits = model(torch.tensor([toks[i] for i in idx]))[:, -1]
            for j, i in enumerate(idx):
                out[i] = logits[j]
        return torch.stack(out)

    def run(model: nn.Module) -> dict[str, float]:
        logits = last(model, [p.clean for p in ioi])
        io = torch.tensor([ids(p.answer)[1] for p in ioi])
        probs = last(model, [p.clean for p in gt]).softmax(-1)[:, yy]
        above = torch.arange(100)[None] > torch.tensor([p.year for p in gt])[:, None]
        rep_logits = model(rep)[:, 21:-1]  # predicting the repeated half's tokens 2..20
        rep_loss = F.cross_entropy(rep_logits.reshape(-1, rep_logits.shape[-1]),
                                   rep[:, 22:].reshape(-1))
        return {"ioi_acc": (logits.argmax(-1) == io).float().mean().item(),
                "gt_mass": (probs * above).sum(-1).mean().item(), "rep_loss": rep_loss.item()}

    return run


def train_toy_lm(out_root: Path, seed: int = 0, steps: int | None = None) -> dict:
    from ._tokenizers import toy_lm_tokenizer

    hp, elapsed = _start(TOY_LM_TRAIN, steps)
    tokenizer = toy_lm_tokenizer()
    cfg = dict(TOY_LM_CONFIG)
    cfg["d_vocab"] = len(tokenizer.get_vocab())
    torch.manual_seed(seed)
    model = TrainLM(cfg, init_std=hp["init_std"], tie=hp["tie_embeddings"],
                    pos_init_std=hp["pos_init_std"])
    n_params = sum(v.numel() for v in model.hooked_state_dict().values())
    print(f"toy-lm: {n_params} parameters, vocabulary {cfg['d_vocab']}")
    bs, short = hp["batch_size"], hp["short_ctx"]
    n_rep, n_final = hp["repeat_steps"], hp["final_steps"]
    rep_bs, rep_rows = hp["repeat_batch_size"], hp["repeat_rows"]
    n_short = hp["steps"] - n_rep - n_final
    if n_short < 0:
        raise ValueError("steps must be at least repeat_steps + final_steps")
    t0 = time.time()
    vocab = tokenizer.get_vocab()
    if hp.get("repeat_words") == "list":  # the word lists of the grammar's repetition task
        words = torch.tensor(sorted(vocab[" " + w] for w in tasks.LIST_WORDS))
    else:
        words = torch.tensor(sorted(i for w, i in vocab.items() if w.startswith(" ") and w[1:].isalpha()))
    rep_gen = torch.Generator().manual_seed(seed + 17)
    bos = tokenizer.convert_tokens_to_ids(tasks.BOS)

    def repeat_rows(n: int, n_ctx: int) -> torch.Tensor:
        if not n:
            return torch.empty(0, n_ctx, dtype=torch.long)
        return induction_batch(rep_gen, n, n_ctx, hp["repeat_seg_len"],
                               hp["repeat_distances"], token_ids=words, bos=bos)

    repeats = repeat_rows(n_rep * rep_bs, short)
    n_text = bs - rep_rows
    text_short = lm_rows(tokenizer, tasks.training_rng(seed, "lm"), n_short * n_text, short,
                         hp["segments_per_doc"], hp["text_mix"])
    text_full = lm_rows(tokenizer, tasks.training_rng(seed, "lm-full"), n_final * n_text,
                        cfg["n_ctx"], hp["segments_per_doc"], hp["text_mix"])
    mixed_short = repeat_rows(n_short * rep_rows, short)
    mixed_full = repeat_rows(n_final * rep_rows, cfg["n_ctx"])
    data_seconds = time.time() - t0
    n_tokens = sum(t.numel() for t in (repeats, text_short, text_full, mixed_short, mixed_full))
    print(f"  generated {n_tokens:,} tokens in {data_seconds:.1f}s")

    def batch(step: int) -> torch.Tensor:
        if step < n_rep:
            return repeats[step * rep_bs:(step + 1) * rep_bs]
        step -= n_rep
        text, rep = (text_short, mixed_short) if step < n_short else (text_full, mixed_full)
        if step >= n_short:
            step -= n_short
        return torch.cat([text[step * n_text:(step + 1) * n_text],
                          rep[step * rep_rows:(step + 1) * rep_rows]])

    log = train_loop(
        model, batch,
        steps=hp["steps"], lr=hp["lr"], warmup=hp["warmup"], weight_decay=hp["weight_decay"],
        eval_every=200, eval_fn=_quick_toy_lm_eval(tokenizer),
    )
    train_seconds, cpu_seconds = elapsed()
    folder = out_root / "toy-lm"
    _write_model(folder, cfg, model, tokenizer, {})
    for old in (folder / "saes",):
        if old.exists():
            shutil.rmtree(old)
    loaded, err = _check_reload(folder, model, text_full[:4])
    metrics = measure_toy_lm(loaded, seed)
    summary = M.ioi_head_summary(loaded, tasks.ioi_pairs(64, seed=3000 + seed, held_out=True,
                                                          template=(0, 0)))
    report = {
        "name": "toy-lm",
        "seed": seed,
        "parameters": n_params,
        "train": {**hp, "seconds": round(train_seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
                  "data_seconds": round(data_seconds, 1), "log": log,
                  "tokens": n_tokens},
        "reload_max_abs_logit_diff": err,
        "metrics": metrics,
        "ioi_heads": summary,
        "env": _env(),
    }
    return _publish(folder, report, toy_lm_card(cfg, report))


def measure_toy_lm(model: Any, seed: int = 0) -> dict[str, Any]:
    """Every toy-lm metric in the card, on held-out prompts."""
    out: dict[str, Any] = {}
    out["ioi_held_out"] = M.ioi_report(model, tasks.ioi_pairs(400, seed=1000 + seed,
                                                              held_out=True))
    out["ioi_train_distribution"] = M.ioi_report(
        model, tasks.ioi_pairs(400, seed=2000 + seed, held_out=False))
    out["greater_than_held_out"] = M.greater_than_report(
        model, tasks.greater_than_pairs(400, seed=1000 + seed, held_out=True))
    out["greater_than_train_nouns"] = M.greater_than_report(
        model, tasks.greater_than_pairs(400, seed=2000 + seed, held_out=False))
    out["induction_words_20"] = M.induction_report(
        model, tasks.induction_sequences(64, length=20, seed=1000 + seed, model="toy-lm"))
    out["facts"] = M.facts_report(model, tasks.fact_prompts())
    out["agreement"] = M.agreement_report(model, tasks.agreement_pairs(400, seed=1000 + seed))
    out["text_loss_held_out"] = M.text_loss(model, tasks.sample_text(100, seed=1000 + seed))
    return out


#: A head with an induction score above this counts as an induction head (the cards' threshold).
INDUCTION_HEAD_SCORE = 0.3


def toy_lm_card(cfg: dict[str, Any], r: dict[str, Any]) -> str:
    from ._lexicon import GT_CENTURIES

    hp = r["train"]
    m = r["metrics"]
    ind = m["induction_words_20"]
    mix = ", ".join(f"{k} {v:.0%}" for k, v in hp["text_mix"].items())
    lines = [
        "# toy-lm",
        "",
        "A small GPT-2-like language model trained on a generated English-like corpus whose",
        "tasks have known solutions: indirect object identification, greater-than, facts and",
        "subject-verb agreement. A stand-in for GPT-2 small in demos that must run offline on a",
        "CPU. Generated by `python -m mechwidgets.zoo.train toy-lm`; do not edit by hand.",
        "",
        *(["**No induction.** The corpus has repeated word lists (3% of segments), but the shipped",
           "model formed no induction head on them (best induction score "
           f"{ind['best_induction_head']['score']:.2f}, table below):",
           "do not use it for induction. `induction-2l` is the zoo's model for induction."]
          if ind["best_induction_head"]["score"] < INDUCTION_HEAD_SCORE else
          ["Induction on repeated word lists: see the table below (`induction-2l` is the zoo's",
           "model made for induction)."]),
        "",
        "## Architecture",
        "",
        f"- {cfg['n_layers']} layers, d_model {cfg['d_model']}, {cfg['n_heads']} heads of d_head "
        f"{cfg['d_head']}, MLPs of {cfg['d_mlp']} with `{cfg['act_fn']}`, pre-LayerNorm, learned "
        f"absolute positions, n_ctx {cfg['n_ctx']}; "
        + ("unembedding tied to the embedding during training (GPT-2 style; stored as `W_E` "
           "and `W_U = W_E^T`); " if hp.get("tie_embeddings") else "untied embeddings; ")
        + f"{r['parameters']:,} parameters as stored (float32).",
        f"- Tokenizer: {cfg['d_vocab']} word-level tokens built with `tokenizers` "
        "(`tokenizer/`): GPT-2-like words with a leading space (`' Mary'`), sentence-initial "
        "forms without it, punctuation as its own token, years as a century token and a "
        f"two-digit token (`' 17'` + `'32'`, centuries {GT_CENTURIES[0]}-{GT_CENTURIES[-1]} in "
        "the greater-than task), BOS `<|endoftext|>`.",
        "- Loads as a `HookedTransformer` (TransformerLens 3.x) or a `TransformerBridge` (4.x).",
        "",
        "## Data",
        "",
        "Generated by the grammar in `mechwidgets/zoo/tasks.py` (word lists in `_lexicon.py`). "
        f"Each row is BOS and a document of {hp['segments_per_doc']} segments truncated to "
        f"the row length; segment kinds: {mix}.",
        "",
        "- IOI: `When Mary and John went to the store, John gave a drink to Mary.`: "
        f"{len(tasks.IOI_INTROS)} intros x {len(tasks.IOI_ACTIONS)} actions, both name orders. "
        "Held out of training: name pairs with `tasks.is_held_out_pair` (about 20% of pairs), "
        "and every template with intro "
        + ", ".join(f"`{tasks.IOI_INTROS[i]}`" for i in tasks.IOI_HELD_OUT_INTROS)
        + " or action "
        + ", ".join(f"`{tasks.IOI_ACTIONS[i]}`" for i in tasks.IOI_HELD_OUT_ACTIONS) + ".",
        "- Greater-than: `The war lasted from the year 1732 to the year 1745.` (end year "
        "uniform above the start); the nouns "
        + ", ".join(f"`{n}`" for n in tasks.GT_HELD_OUT_NOUNS)
        + " are held out of the task (they occur in other sentences).",
        "- Induction: word lists and name lists repeated (with or without a marker such as "
        "`Again:`), 3-24 words.",
        "- Facts (capitals, opposites, colours, animal sounds) and subject-verb agreement across "
        "a prepositional phrase (`The dogs near the car run.`).",
        "- Ordinary sentences: noun phrases with adjectives and prepositional phrases, names "
        "doing things, years, pronouns.",
        "",
        "## Training",
        "",
        f"AdamW (betas 0.9/0.98, weight decay {hp['weight_decay']}), lr {hp['lr']} with "
        f"{hp['warmup']} warm-up steps and cosine decay to 10%, batch {hp['batch_size']}, "
        f"{hp['steps']} steps ({hp['tokens']:,} tokens, each row seen once): "
        + _phases_text(cfg, hp) +
        f"initialisation N(0, {hp.get('init_std')}), seed {r['seed']}; {hp['seconds']} s wall "
        f"clock, {hp.get('cpu_seconds')} s CPU time, {r['env']['cpu_threads']} torch threads "
        f"(data generation {hp['data_seconds']} s). Final "
        f"training loss "
        f"{hp['log'][-1]['loss']}; held-out text loss {m['text_loss_held_out']:.3f}.",
        "",
        "## Metrics (held out)",
        "",
        "| task | metric | value |",
        "|---|---|---|",
        f"| IOI, held-out name pairs and templates (n={m['ioi_held_out']['n']}) | top-1 accuracy "
        f"| {m['ioi_held_out']['top1_accuracy']:.3f} |",
        f"| | logit(IO) > logit(S) | {m['ioi_held_out']['io_beats_s']:.3f} |",
        f"| | mean logit diff, clean / ABC-corrupted | {m['ioi_held_out']['logit_diff']:.2f} / "
        f"{m['ioi_held_out']['corrupted_logit_diff']:.2f} |",
        f"| IOI, training templates and pairs, fresh draws | top-1 accuracy | "
        f"{m['ioi_train_distribution']['top1_accuracy']:.3f} |",
        f"| Greater-than, held-out nouns (n={m['greater_than_held_out']['n']}) | probability on "
        f"years above the start year | {m['greater_than_held_out']['valid_year_mass']:.3f} |",
        f"| | probability difference (above - at or below) | "
        f"{m['greater_than_held_out']['prob_diff']:.3f} |",
        f"| | same mass, `01`-corrupted prompt | "
        f"{m['greater_than_held_out']['corrupted_valid_year_mass']:.3f} |",
        f"| Greater-than, training nouns | probability on years above | "
        f"{m['greater_than_train_nouns']['valid_year_mass']:.3f} |",
        f"| Induction, 20 random words repeated (n=64) | loss first / repeated half | "
        f"{ind['loss_first_half']:.3f} / {ind['loss_repeated_half']:.3f} |",
        f"| | best induction head | L{ind['best_induction_head']['layer']}H"
        f"{ind['best_induction_head']['head']}: {ind['best_induction_head']['score']:.3f} |",
        f"| | best previous-token head | L{ind['best_prev_token_head']['layer']}H"
        f"{ind['best_prev_token_head']['head']}: {ind['best_prev_token_head']['score']:.3f} |",
        f"| Facts (all {m['facts']['n']}) | top-1 accuracy | {m['facts']['top1_accuracy']:.3f} |",
        f"| Agreement (n={m['agreement']['n']}) | logit(correct verb form) > logit(other) | "
        f"{m['agreement']['accuracy']:.3f} |",
    ]
    if "saes" in r:
        lines += _sae_card_section(r["saes"])
    lines += ["", "## Known circuits", ""]
    lines += _circuit_lines(cfg, r)
    lines += [
        "",
        f"Weights reloaded through `mechwidgets.zoo.load` match the training model to "
        f"{r['reload_max_abs_logit_diff']:.1e} in the logits.",
        "",
    ]
    return "\n".join(lines)


def _phases_text(cfg: dict[str, Any], hp: dict[str, Any]) -> str:
    """The card's description of the training phases."""
    words = "words of the repetition task" if hp.get("repeat_words") == "list" else "random words"
    lo, hi = hp["repeat_seg_len"]
    phases = []
    if hp["repeat_steps"]:
        phases.append(f"{hp['repeat_steps']} steps of {hp['repeat_batch_size']} rows of {hp['short_ctx']} tokens "
                      f"of {words} repeated ({lo}-{hi} words, at once or after a gap: dense in-context "
                      f"copying)")
    phases.append(f"{hp['steps'] - hp['repeat_steps'] - hp['final_steps']} steps of the generated text in "
                  f"rows of {hp['short_ctx']} tokens")
    phases.append(f"{hp['final_steps']} steps of rows of {cfg['n_ctx']} tokens (every position embedding "
                  f"trained)")
    text = ", then ".join(phases)
    if hp["repeat_rows"]:
        text += (f"; in the text steps, {hp['repeat_rows']} rows of each batch are {words} repeated "
                 f"({lo}-{hi} words, at once or after a gap)")
    return text + "; "


def _heads(table: list[list[float]], pred: Callable[[float], bool]) -> list[tuple[int, int]]:
    return [(i, h) for i, row in enumerate(table) for h, v in enumerate(row) if pred(v)]


def _fmt_heads(heads: list[tuple[int, int]]) -> str:
    return ", ".join(f"L{i}H{h}" for i, h in heads) if heads else "none"


def _circuit_lines(cfg: dict[str, Any], r: dict[str, Any]) -> list[str]:
    """The circuits section, written from the measurements (not by hand)."""
    s = r["ioi_heads"]
    ind = r["metrics"]["induction_words_20"]
    n_layers, n_heads = cfg["n_layers"], cfg["n_heads"]
    patch, dla = s["patch_recovery"], s["dla"]
    to_io, to_s, dup = s["attn_end_to_io"], s["attn_end_to_s"], s["attn_s2_to_s1"]
    writers = _heads(dla, lambda v: v > 0.5)
    movers = [(i, h) for i, h in writers if to_io[i][h] > to_s[i][h]]
    suppressors = [(i, h) for i, h in writers if to_s[i][h] > max(to_io[i][h], 0.3)]
    others = [(i, h) for i, h in writers if (i, h) not in movers + suppressors]
    negative = _heads(dla, lambda v: v < -0.5)
    important = sorted(((patch[i][h], i, h) for i in range(n_layers) for h in range(n_heads)),
                       reverse=True)
    top = [(i, h) for v, i, h in important if v > 0.1]
    inhibition = [(i, h) for i, h in top if dla[i][h] < 0.5]
    dup_heads = _heads(dup, lambda v: v > 0.3)
    ind_heads = _heads(ind["induction_scores"], lambda v: v > 0.3)
    prev_heads = _heads(ind["prev_token_scores"], lambda v: v > 0.3)
    lines = [
        f"Measured by `mechwidgets.zoo._metrics.ioi_head_summary` on {s['n']} prompts of the "
        f"template `{s['template']}` with held-out name pairs (clean logit difference "
        f"{s['logit_diff_clean']:.2f}, ABC-corrupted {s['logit_diff_corrupted']:.2f}), and on "
        "repeated random word lists. DLA: direct logit attribution to logit(IO) - logit(S). "
        "Thresholds: DLA > 0.5 and more attention to IO than to S for name movers; patch "
        "recovery > 0.1 for heads that matter.",
        "",
        f"- **Name-mover-like heads**: {_fmt_heads(movers)}: at the final token they attend to "
        "the indirect object and write its name into the logits (positive DLA).",
        f"- **S-suppression heads** (DLA > 0.5 while attending to S, > 0.3 and more than to IO: "
        f"they push the repeated name down, as copy-suppression heads do): "
        f"{_fmt_heads(suppressors)}.",
        f"- **Other heads raising IO over S** (DLA > 0.5, attending to neither name): "
        f"{_fmt_heads(others)}.",
        f"- **Negative name movers** (DLA < -0.5): {_fmt_heads(negative)}.",
        f"- **Heads whose output matters without moving the name directly** (S-inhibition-like; "
        f"patch recovery > 0.1, DLA < 0.5): {_fmt_heads(inhibition)}.",
        f"- **Duplicate-token-like heads** (S2 attends to S1 > 0.3): {_fmt_heads(dup_heads)}.",
        f"- **Induction heads** on repeated word lists (score > 0.3): {_fmt_heads(ind_heads)}; "
        f"**previous-token heads** (score > 0.3): {_fmt_heads(prev_heads)}.",
        "- Greater-than is solved at the last token from the start year's two-digit token; "
        "facts, agreement and the a/an choice are ordinary next-token statistics.",
        "",
        "Per head (rows: layer, columns: head): patch recovery of the clean logit difference "
        "when the head's output is patched from clean into ABC-corrupted / DLA / attention from "
        "the final token to IO and to S:",
        "",
        "| | " + " | ".join(f"H{h}" for h in range(n_heads)) + " |",
        "|---|" + "---|" * n_heads,
    ]
    for layer in range(n_layers):
        cells = [f"{patch[layer][h]:.2f} / {dla[layer][h]:.2f} / {to_io[layer][h]:.2f}, "
                 f"{to_s[layer][h]:.2f}" for h in range(n_heads)]
        lines.append(f"| L{layer} | " + " | ".join(cells) + " |")
    return lines


# ------------------------------------------------------------------------------------------
# SAEs on toy-lm


def _sae_card_section(s: dict[str, Any]) -> list[str]:
    hp = s["train"]
    lines = [
        "",
        "## Sparse autoencoders",
        "",
        f"TopK SAEs (Gao et al. 2024), k = {hp['k']}, {hp['d_sae']} features, one per hook, in "
        "sae-lens 6.x's format (`saes/<hook>/cfg.json`, `sae_weights.safetensors`): "
        "`mechwidgets.zoo.load_saes('toy-lm')` loads them with sae-lens's `SAE.load_from_disk` "
        "or, without sae-lens, with `SimpleSAE`. Trained on "
        f"{hp['train_tokens']:,} residual-stream activations (non-BOS positions) of generated "
        f"text, {hp['steps']} steps of batch {hp['batch_size']}, Adam lr {hp['lr']}, AuxK loss "
        f"(k_aux {hp['aux_k']}, coefficient {hp['aux_coef']:.4g}) for dead features, unit-norm "
        f"decoder rows; {hp['seconds']} s wall clock, {hp.get('cpu_seconds')} s CPU time. Metrics on {s['eval_tokens']:,} tokens of held-out "
        "text (`tasks.sample_text(..., seed=...)`, a stream not used in training):",
        "",
        "| hook | explained variance | mean L0 | dead features |",
        "|---|---|---|---|",
    ]
    for hook, r in s["metrics"].items():
        lines.append(f"| `{hook}` | {r['explained_variance']:.3f} | {r['mean_l0']:.1f} | "
                     f"{r['dead_fraction']:.1%} |")
    return lines


def _topk(x: torch.Tensor, k: int) -> torch.Tensor:
    values, indices = torch.topk(x, k, dim=-1, sorted=False)
    return torch.zeros_like(x).scatter_(-1, indices, values.relu())


def train_one_sae(acts: torch.Tensor, hook: str, seed: int, hp: dict[str, Any]) -> SimpleSAE:
    """A TopK SAE with AuxK (Gao et al. 2024) on ``acts`` ``[n, d_in]``."""
    torch.manual_seed(seed)
    n, d_in = acts.shape
    d_sae, k = hp["d_sae"], hp["k"]
    scale = math.sqrt(d_in) / acts.norm(dim=-1).mean().item()  # train on unit-scale inputs
    x_all = acts * scale
    w_dec = torch.randn(d_sae, d_in)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
    W_dec = nn.Parameter(w_dec.clone())
    W_enc = nn.Parameter(w_dec.T.clone().contiguous())
    b_enc = nn.Parameter(torch.zeros(d_sae))
    b_dec = nn.Parameter(x_all[:20000].median(dim=0).values.clone())
    params = [W_enc, b_enc, W_dec, b_dec]
    opt = torch.optim.Adam(params, lr=hp["lr"], betas=(0.9, 0.999))
    steps, bs = hp["steps"], hp["batch_size"]
    since_fired = torch.zeros(d_sae)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, n, (bs,), generator=gen)
        x = x_all[idx]
        pre = (x - b_dec) @ W_enc + b_enc
        f = _topk(pre, k)
        x_hat = f @ W_dec + b_dec
        err = x - x_hat
        loss = err.pow(2).sum(-1).mean()
        fired = (f > 0).any(0)
        since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + bs)
        dead = since_fired > hp["dead_after"]
        if dead.any():
            k_aux = min(hp["aux_k"], int(dead.sum()))
            aux_pre = pre.masked_fill(~dead, float("-inf"))
            f_aux = _topk(aux_pre, k_aux)
            err_hat = f_aux @ W_dec
            aux = (err.detach() - err_hat).pow(2).sum(-1).mean()
            loss = loss + hp["aux_coef"] * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():  # remove the gradient component parallel to the unit decoder rows
            grad = W_dec.grad
            assert grad is not None
            grad -= (grad * W_dec).sum(-1, keepdim=True) * W_dec
        lr = hp["lr"] * min(1.0, (steps - step) / (0.2 * steps))
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=-1, keepdim=True))
        if (step + 1) % 500 == 0 or step == steps - 1:
            with torch.no_grad():
                fvu = err.pow(2).sum() / (x - x.mean(0)).pow(2).sum()
            print(f"  {hook} step {step + 1}: fvu {fvu.item():.4f}, "
                  f"dead {int(dead.sum())}/{d_sae}", flush=True)
    # fold the input scale: encode(x * scale) on raw x, decode back to raw scale
    cfg = SimpleSAEConfig(
        d_in=d_in, d_sae=d_sae, architecture="topk", k=k,
        metadata=_sae_metadata(hook),
    )
    sae = SimpleSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(W_enc * scale)
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(W_dec / scale)
        sae.b_dec.copy_(b_dec / scale)
    return sae.eval()


def _sae_metadata(hook: str) -> Any:
    from types import SimpleNamespace

    layer = int(hook.split(".")[1])
    return SimpleNamespace(
        model_name="toy-lm",
        hook_name=hook,
        hook_head_index=None,
        hook_layer=layer,
        prepend_bos=True,
        context_size=128,
        dataset_path="mechwidgets.zoo.tasks.sample_text",
        exclude_special_tokens=True,
        model_from_pretrained_kwargs={},
    )


def _save_sae_lens_format(sae: SimpleSAE, path: Path) -> None:
    """Write with sae-lens's own ``save_model`` when available, else the same files ourselves."""
    try:
        from sae_lens.saes.sae import SAEMetadata
        from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
    except Exception:
        sae.save_model(path)
        return
    meta = dict(vars(sae.cfg.metadata))
    lens_cfg = TopKSAEConfig(d_in=sae.d_in, d_sae=sae.d_sae, k=sae.cfg.k,
                             metadata=SAEMetadata(**meta))
    lens = TopKSAE(lens_cfg)
    lens.load_state_dict({k: v.detach().clone() for k, v in sae.state_dict().items()})
    lens.save_model(path)


def train_toy_lm_saes(out_root: Path, seed: int = 0, steps: int | None = None) -> dict:
    t_start, cpu_start = time.time(), time.process_time()
    hp = dict(SAE_TRAIN)
    if steps:
        hp["steps"] = steps
    folder = out_root / "toy-lm"
    model = load_model_dir(folder)
    texts = tasks.sample_text(hp["n_docs"], seed=50_000 + seed, n_segments=12)
    acts = M.activations(model, texts, SAE_HOOKS)
    n_train = len(next(iter(acts.values())))
    print(f"toy-lm SAEs: {n_train} training activations per hook "
          f"({time.time() - t_start:.1f}s)")
    sae_dir = folder / "saes"
    if sae_dir.exists():
        shutil.rmtree(sae_dir)
    entries = []
    saes = {}
    for i, hook in enumerate(SAE_HOOKS):
        sae = train_one_sae(acts[hook], hook, seed + i, hp)
        path = sae_dir / hook
        _save_sae_lens_format(sae, path)
        saes[hook] = SimpleSAE.load_from_disk(path)
        entries.append({
            "hook_name": hook,
            "path": f"saes/{hook}",
            "sha256": {f: sha256_file(path / f) for f in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME)},
        })
    del acts
    train_seconds = time.time() - t_start
    cpu_seconds = time.process_time() - cpu_start
    eval_texts = tasks.sample_text(300, seed=60_000 + seed, n_segments=12)
    eval_acts = M.activations(model, eval_texts, SAE_HOOKS)
    metrics = {h: M.sae_report(saes[h], eval_acts[h]) for h in SAE_HOOKS}
    meta = json.loads((folder / CONFIG_FILENAME).read_text())
    meta["saes"] = entries
    (folder / CONFIG_FILENAME).write_text(json.dumps(meta, indent=2) + "\n")
    report = json.loads((folder / "metrics.json").read_text())
    report["saes"] = {
        "train": {**hp, "seconds": round(train_seconds, 1), "cpu_seconds": round(cpu_seconds, 1), "train_tokens": n_train,
                  "seed": seed},
        "eval_tokens": len(next(iter(eval_acts.values()))),
        "metrics": metrics,
    }
    (folder / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "README.md").write_text(toy_lm_card(meta["hooked_transformer_config"], report))
    print(json.dumps(metrics, indent=1))
    print(f"toy-lm SAEs done in {train_seconds:.1f}s")
    return report


# ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mechwidgets.zoo.train",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=["induction-2l", "toy-lm", "toy-lm-saes", "all"])
    parser.add_argument("--out", type=Path, default=ZOO_DIR,
                        help="root folder; the model goes to OUT/<name>/ (default: the package)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="override optimiser steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training hyper-parameter (experiments only), "
                             "e.g. --hp lr=0.002")
    parser.add_argument("--no-saes", action="store_true",
                        help="with toy-lm: train the language model only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for item in args.hp:
        key, value = item.split("=", 1)
        for table in (INDUCTION_2L_TRAIN, TOY_LM_TRAIN, SAE_TRAIN):
            if key in table:
                table[key] = type(table[key])(json.loads(value)) if not isinstance(
                    table[key], tuple) else tuple(json.loads(value))
    t0 = time.time()
    if args.name in ("induction-2l", "all"):
        train_induction_2l(args.out, args.seed, args.steps)
    if args.name in ("toy-lm", "all"):
        train_toy_lm(args.out, args.seed, args.steps)
    if args.name in ("toy-lm-saes", "all") or (args.name == "toy-lm" and not args.no_saes):
        train_toy_lm_saes(args.out, args.seed, None if args.name != "toy-lm-saes" else args.steps)
    print(f"total {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
