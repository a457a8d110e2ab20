"""The execution core's nnsight primitives (issue 18, first step) against independent
computations: TransformerLens's own activations and hooks on toy-lm's weights, and plain PyTorch
hooks on random GPT-NeoX (parallel attention) and Llama-style (GQA, RMSNorm, rotary) models."""

from __future__ import annotations

import copy

import pytest
import torch

from mechwidgets import zoo
from mechwidgets._nnsight import NNsightCore, find_structure
from mechwidgets.errors import ComponentError, ModelError

TOL = 1e-4
KINDS = ("hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_mlp_out", "hook_resid_post")


@pytest.fixture(scope="module")
def toy():
    tl = zoo.load("toy-lm")
    core = NNsightCore(zoo.load("toy-lm", backend="nnsight"))
    toks = tl.to_tokens("When Mary and John went to the store, John gave a drink to")
    return tl, core, toks


def test_structure_of_gpt2(toy):
    s = toy[1].structure
    assert (s.layers, s.attn, s.mlp, s.out_proj, s.final_norm) == ("transformer.h", "attn", "mlp", "attn.c_proj", "transformer.ln_f")
    assert (s.n_layers, s.n_heads, s.d_head) == (4, 4, 32)


def test_record_equals_transformer_lens(toy):
    tl, core, toks = toy
    names = [f"blocks.{layer}.{k}" for layer in (0, 3) for k in (*KINDS, "attn.hook_pattern")]
    hf_config = core.model._module.config
    attn_before = hf_config._attn_implementation
    rec = core.record(toks, names)
    _, cache = tl.run_with_cache(toks, names_filter=names)
    for n in names:
        assert rec[n].shape == cache[n].shape, n
        assert (rec[n] - cache[n]).abs().max().item() <= TOL, n
    assert core.traces == 1
    # patterns come from eager attention, switched on for the trace only
    assert hf_config._attn_implementation == attn_before
    with pytest.raises(ComponentError, match="can be read, not replaced"):
        core.run(toks, {"blocks.0.attn.hook_pattern": lambda p: p * 0})


def test_edits_equal_transformer_lens_hooks(toy):
    tl, core, toks = toy
    replacement = torch.randn(1, toks.shape[1], 128, generator=torch.Generator().manual_seed(0))

    def zero_head(z):
        z = z.clone()
        z[:, :, 2] = 0
        return z

    def tl_zero_head(z, hook):
        z[:, :, 2] = 0
        return z

    before = core.traces
    logits, rec = core.run(toks, {"blocks.1.attn.hook_z": zero_head, "blocks.2.hook_resid_pre": replacement},
                           names=["blocks.1.attn.hook_z", "blocks.3.hook_mlp_out"])
    ref_logits, cache = None, {}

    def keep(act, hook):
        cache[hook.name] = act.detach().clone()

    ref_logits = tl.run_with_hooks(toks, fwd_hooks=[
        ("blocks.1.attn.hook_z", tl_zero_head), ("blocks.1.attn.hook_z", keep),
        ("blocks.2.hook_resid_pre", lambda a, hook: replacement), ("blocks.3.hook_mlp_out", keep)])
    assert core.traces == before + 1  # one trace per call
    assert (logits - ref_logits).abs().max().item() <= TOL
    assert rec["blocks.1.attn.hook_z"][:, :, 2].abs().max().item() == 0  # recorded after the edit
    for n in cache:
        assert (rec[n] - cache[n]).abs().max().item() <= TOL, n


def test_grads_equal_transformer_lens_backward(toy):
    tl, core, toks = toy
    names = [f"blocks.{layer}.{k}" for layer in (1, 2) for k in KINDS]

    def metric(logits):
        return logits[0, -1, 5] - logits[0, -1, 7]

    value, grads = core.grads(toks, names, metric)
    acts = {}

    def keep(act, hook):
        act.retain_grad()
        acts[hook.name] = act

    with tl.hooks(fwd_hooks=[(n, keep) for n in names]):
        ref = metric(tl(toks))
        ref.backward()
    assert abs(value.item() - ref.item()) <= TOL
    for n in names:
        assert (grads[n] - acts[n].grad).abs().max().item() <= TOL, n
    assert all(p.grad is None for p in core.model._module.parameters())  # nothing left behind


def _random_lm(kind: str):
    import transformers

    tok = zoo.load("toy-lm", backend="hf").tokenizer
    common = dict(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128, max_position_embeddings=64)
    torch.manual_seed(0)
    if kind == "neox":
        cfg = transformers.GPTNeoXConfig(**common, use_parallel_residual=True, rotary_pct=0.5)
        model = transformers.GPTNeoXForCausalLM(cfg)
    elif kind == "gemma":  # norms after attention and after the MLP, a soft cap on the logits
        cfg = transformers.Gemma2Config(**common, num_key_value_heads=2, head_dim=16, final_logit_softcapping=5.0)
        model = transformers.Gemma2ForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(**common, num_key_value_heads=2)
        model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # norms that are not the identity, so that skipping one shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.5, 0.5)
    model.eval()
    return model, tok


def _hooked_reference(hf, s, toks, edit_layer, edit_head):
    """Plain PyTorch hooks: each named point of every layer, and the logits, with head
    ``edit_head`` of layer ``edit_layer`` zeroed at the output projection's input."""
    out, handles = {}, []
    layers = hf.get_submodule(s.layers)
    for i, block in enumerate(layers):
        attn, mlp = block.get_submodule(s.attn_out), block.get_submodule(s.mlp_out)
        proj = block.get_submodule(s.out_proj)

        def pre(mod, args, kwargs=None, i=i):
            out[f"blocks.{i}.hook_resid_pre"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

        def z_pre(mod, args, i=i):
            z = args[0].reshape(*args[0].shape[:-1], s.n_heads, s.d_head).clone()
            if i == edit_layer:
                z[:, :, edit_head] = 0
            out[f"blocks.{i}.attn.hook_z"] = z.detach().clone()
            return (z.reshape(args[0].shape),)

        handles += [
            block.register_forward_pre_hook(pre, with_kwargs=True),
            proj.register_forward_pre_hook(z_pre),
            attn.register_forward_hook(lambda m, a, o, i=i: out.__setitem__(
                f"blocks.{i}.hook_attn_out", (o[0] if isinstance(o, tuple) else o).detach().clone())),
            mlp.register_forward_hook(lambda m, a, o, i=i: out.__setitem__(f"blocks.{i}.hook_mlp_out", o.detach().clone())),
            block.register_forward_hook(lambda m, a, o, i=i: out.__setitem__(
                f"blocks.{i}.hook_resid_post", (o[0] if isinstance(o, tuple) else o).detach().clone())),
        ]
    try:
        with torch.no_grad():
            logits = hf(toks).logits
    finally:
        for h in handles:
            h.remove()
    return logits, out


@pytest.mark.parametrize("kind", ["neox", "llama", "gemma"])
def test_other_families_equal_plain_hooks(kind):
    hf, tok = _random_lm(kind)
    reference = copy.deepcopy(hf)  # nnsight patches the forward of the model it wraps
    # not at collection: importing nnsight breaks a later `import marimo` (measured)
    from nnsight import LanguageModel

    core = NNsightCore(LanguageModel(hf, tokenizer=tok))
    s = core.structure
    assert s.n_layers == 2 and s.n_heads == 4 and s.d_head == 16
    toks = torch.randint(1, len(tok), (2, 12), generator=torch.Generator().manual_seed(1))
    names = [f"blocks.{i}.{k}" for i in range(2) for k in KINDS]

    def zero_head(z):
        z = z.clone()
        z[:, :, 1] = 0
        return z

    logits, rec = core.run(toks, {"blocks.0.attn.hook_z": zero_head}, names=names)
    ref_logits, ref = _hooked_reference(reference, find_structure(reference), toks, 0, 1)
    assert (logits - ref_logits).abs().max().item() <= TOL
    for n in names:
        assert (rec[n] - ref[n]).abs().max().item() <= TOL, n
    # independent of which modules the names were read from: the block adds exactly attn_out and
    # mlp_out to its input (in parallel or one after the other)
    for i in range(2):
        post = rec[f"blocks.{i}.hook_resid_pre"] + rec[f"blocks.{i}.hook_attn_out"] + rec[f"blocks.{i}.hook_mlp_out"]
        assert (post - rec[f"blocks.{i}.hook_resid_post"]).abs().max().item() <= TOL
    # the handle's unembedding of the last stream is the model's logits (Gemma's soft cap too)
    from mechwidgets._nnsight import NNsightHandle

    handle = NNsightHandle(core.model)
    unembedded = handle.unembed(rec["blocks.1.hook_resid_post"])
    assert (unembedded - ref_logits).abs().max().item() <= TOL
    # W_O: z through the per-head output weights is attn_out (before any post-norm)
    w_o, b_o = handle.head_out_weights(0)
    z = rec["blocks.0.attn.hook_z"]
    attn = torch.einsum("bphd,hdm->bpm", z, w_o) + b_o
    assert (attn - handle.attn_out_from_z(0, z)).abs().max().item() <= TOL


def test_bad_names_and_models(toy):
    with pytest.raises(ModelError, match=r"unknown activation name 'blocks\.0\.hook_q'"):
        toy[1].record(toy[2], ["blocks.0.hook_q"])
    with pytest.raises(ModelError, match="expected an nnsight model"):
        NNsightCore(toy[0])


def test_remote_local_serialises_and_equals_local(toy):
    """``remote="local"`` serialises each trace as for NDIF (this module shipped by value:
    mechwidgets is not installed there) and runs it here: same numbers as a local trace."""
    _, core, toks = toy
    remote = NNsightCore(core.model, remote="local")

    def zero_head(z):
        z = z.clone()
        z[:, :, 1] = 0
        return z

    a, ra = core.run(toks, {"blocks.2.attn.hook_z": zero_head}, names=["blocks.3.hook_resid_post"])
    b, rb = remote.run(toks, {"blocks.2.attn.hook_z": zero_head}, names=["blocks.3.hook_resid_post"])
    assert (a - b).abs().max().item() <= TOL
    assert (ra["blocks.3.hook_resid_post"] - rb["blocks.3.hook_resid_post"]).abs().max().item() <= TOL
    va, ga = core.grads(toks, ["blocks.1.hook_resid_pre"], lambda lg: lg[0, -1].logsumexp(-1))
    vb, gb = remote.grads(toks, ["blocks.1.hook_resid_pre"], lambda lg: lg[0, -1].logsumexp(-1))
    assert abs(va.item() - vb.item()) <= TOL
    assert (ga["blocks.1.hook_resid_pre"] - gb["blocks.1.hook_resid_pre"]).abs().max().item() <= TOL


def test_the_model_is_left_as_it_was(toy):
    _, core, toks = toy
    hf = core.model._module
    hf.train()
    hf.transformer.h[0].eval()  # modules' own flags differ
    weights = {k: v.clone() for k, v in hf.state_dict().items()}
    grad_mode = torch.is_grad_enabled()
    core.grads(toks, ["blocks.0.hook_resid_post"], lambda lg: lg.sum())
    core.run(toks, {"blocks.0.hook_resid_post": lambda x: x * 0})
    try:
        assert hf.training and not hf.transformer.h[0].training and hf.transformer.h[1].training
        assert torch.is_grad_enabled() == grad_mode
        assert all(p.grad is None for p in hf.parameters())
        assert all(torch.equal(v, weights[k]) for k, v in hf.state_dict().items())
    finally:
        hf.eval()


# ------------------------------------------------------------------ remote failures, offline
class _FakeNDIF:
    """A 127.0.0.1 stand-in for NDIF's two endpoints that a blocking remote trace uses: the
    websocket ``/subscribe`` (hands out a session id) and ``POST /request``, which answers as
    NDIF does when it refuses the key (401 with a detail) or does not host the model (an ERROR
    status). nnsight's own client raises its own errors from these answers."""

    def __init__(self, mode: str):
        import base64
        import hashlib
        import http.server
        import json
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # the websocket handshake, then one text frame
                key = self.headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
                self.send_response(101)
                self.send_header("Upgrade", "websocket")
                self.send_header("Connection", "Upgrade")
                self.send_header("Sec-WebSocket-Accept", base64.b64encode(hashlib.sha1(key.encode()).digest()).decode())
                self.end_headers()
                payload = json.dumps({"session_id": "s1"}).encode()
                self.wfile.write(bytes([0x81, len(payload)]) + payload)
                self.wfile.flush()
                self.rfile.read(1)  # hold the socket until the client closes it

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                if mode == "key":
                    status, body = 401, {"detail": "Invalid API key."}
                else:
                    status, body = 200, {"id": "j1", "status": "ERROR",
                                         "description": "Model openai-community/gpt2 is not hosted."}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def remote_lm(monkeypatch):
    """toy-lm through nnsight, named as a hosted model would be (the hub lookup of its id
    answered from nnsight's cache: this machine is offline)."""
    import nnsight
    from nnsight.modeling import huggingface

    lm = zoo.load("toy-lm", backend="nnsight")
    lm.repo_id = "openai-community/gpt2"
    monkeypatch.setitem(huggingface._ID_CACHE, lm.repo_id, lm.repo_id)
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", "test-key")
    return lm


@pytest.mark.parametrize(("mode", "message"), [
    ("key", r"NDIF refused the API key.*Invalid API key.*remote=False"),
    ("model", r"NDIF does not host 'openai-community/gpt2'.*ndif_status.*remote=False"),
])
def test_remote_failures_say_what_to_do(remote_lm, monkeypatch, mode, message):
    import nnsight

    from mechwidgets.errors import RemoteError

    fake = _FakeNDIF(mode)
    monkeypatch.setattr(nnsight.CONFIG.API, "HOST", fake.host)
    try:
        core = NNsightCore(remote_lm, remote=True)
        toks = torch.tensor([[0, 5, 6]])
        with pytest.raises(RemoteError, match=message):
            core.record(toks, ["blocks.0.hook_resid_post"])
        # the same model still runs here
        assert NNsightCore(remote_lm).record(toks, ["blocks.0.hook_resid_post"])["blocks.0.hook_resid_post"].shape == (1, 3, 128)
    finally:
        fake.close()


def test_remote_refused_before_sending(remote_lm, monkeypatch):
    import nnsight

    from mechwidgets.errors import RemoteError

    monkeypatch.setattr(nnsight.CONFIG.API, "HOST", "http://127.0.0.1:9")  # a closed port
    core = NNsightCore(remote_lm, remote=True)
    with pytest.raises(RemoteError, match=r"NDIF at http://127\.0\.0\.1:9 could not be reached"):
        core.record(torch.tensor([[0, 5]]), ["blocks.0.hook_resid_post"])
    monkeypatch.setattr(nnsight.CONFIG.API, "APIKEY", None)
    with pytest.raises(RemoteError, match="no NDIF API key is set"):
        NNsightCore(remote_lm, remote=True)
    with pytest.raises(RemoteError, match="built from a model object"):
        NNsightCore(zoo.load("toy-lm", backend="nnsight"), remote=True)


# ------------------------------------------------------------------ analyses and widgets on nnsight
IOI = ("When Mary and John went to the store, John gave a drink to",
       "When Mary and John went to the store, Mary gave a drink to")


@pytest.fixture(scope="module")
def lm():
    return zoo.load("toy-lm", backend="nnsight")


def test_handle_answers_as_transformer_lens_does(toy, lm):
    from mechwidgets._model import ModelHandle
    from mechwidgets._nnsight import NNsightHandle

    h, ht = ModelHandle.wrap(lm), ModelHandle.wrap(toy[0])
    assert isinstance(h, NNsightHandle)
    assert torch.equal(h.tokens(IOI[0]).cpu(), ht.tokens(IOI[0]).cpu())
    assert h.str_tokens(h.tokens(IOI[0])) == ht.str_tokens(ht.tokens(IOI[0]))
    assert h.single_token(" Mary") == ht.single_token(" Mary")
    for a, b in zip(h.unembedding(), ht.unembedding(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(h.embedding(), ht.embedding())
    na, nb = h.final_norm(), ht.final_norm()
    assert (na.kind, na.eps) == (nb.kind, nb.eps) and torch.equal(na.w, nb.w) and torch.equal(na.b, nb.b)
    for layer in range(4):
        for a, b in zip(h.head_out_weights(layer), ht.head_out_weights(layer), strict=True):
            assert (a - b).abs().max().item() <= 1e-6


@pytest.mark.parametrize("component", ["resid_pre", "attn_out", "mlp_out", "head_out"])
def test_patching_on_nnsight_equals_transformer_lens(toy, lm, component):
    from mechwidgets.analysis import activation_patch, attribution_patch

    kw = dict(component=component, answer=" Mary", wrong_answer=" John")
    a, b = activation_patch(lm, *IOI, **kw), activation_patch(toy[0], *IOI, **kw)
    assert (a.values - b.values).abs().max().item() <= TOL
    a, b = attribution_patch(lm, *IOI, **kw), attribution_patch(toy[0], *IOI, **kw)
    assert (a.values - b.values).abs().max().item() <= TOL


def test_widgets_on_nnsight_equal_transformer_lens(toy, lm):
    """show_patching, show_features and show_attention take an nnsight model and show the
    numbers they show for the TransformerLens model of the same weights; the lens, which needs
    values (hook_v), says what is missing."""
    from mechwidgets import show_attention, show_features, show_patching

    a = show_patching(lm, *IOI, answer=" Mary", wrong_answer=" John")
    b = show_patching(toy[0], *IOI, answer=" Mary", wrong_answer=" John")
    assert a.error == "" and (torch.as_tensor(a.values()) - torch.as_tensor(b.values())).abs().max().item() <= TOL
    saes = zoo.load_saes("toy-lm")
    fa, fb = show_features(lm, saes, IOI[0]), show_features(toy[0], saes, IOI[0])
    ta, tb = fa.trace, fb.trace
    assert torch.equal(ta.top_indices, tb.top_indices)
    assert (ta.top_values - tb.top_values).abs().max().item() <= TOL
    aa, ab = show_attention(lm, IOI[0]), show_attention(toy[0], IOI[0])
    for layer in range(4):
        assert (aa.analysis.pattern(layer, 1) - ab.analysis.pattern(layer, 1)).abs().max().item() <= TOL
    for k in ab.scores_tensors:
        assert (aa.scores_tensors[k] - ab.scores_tensors[k]).abs().max().item() <= TOL, k
    ra, rb = aa.ablate([(3, 0)]), ab.ablate([(3, 0)])
    assert (torch.as_tensor(ra.loss_after) - torch.as_tensor(rb.loss_after)).abs().max().item() <= TOL
    from mechwidgets import show_logit_lens

    with pytest.raises(ComponentError, match="q/k/v and MLP neurons are not read from nnsight models"):
        show_logit_lens(lm, IOI[0], answer=" Mary")
