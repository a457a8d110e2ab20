"""Static rendering: saved state, exported HTML, the static SVG picture, and their safety and size.

- Every widget in :data:`WIDGETS` (one line per widget) has a static SVG fallback that is valid,
  sensibly sized XML; ``widget.to_html(path)`` writes one self-contained page whose payload
  round-trips the widget's state; its saved state on a 128-token toy-lm prompt is <= 2 MB.
- ``python -m mechwidgets export`` turns an executed notebook (state saved by nbclient) into one
  HTML file with no CDN script; widgets that cannot be drawn fall back to their picture or text.
- Untrusted strings (HTML, ``</script>``, quotes, right-to-left marks, very long tokens) stay data.
- The built JS contains no http(s) URL but XML namespaces, and the package imports no ipywidgets
  containers (both break marimo / VS Code / Colab or need the network).

The browser side (tests/browser/test_export_browser.py) opens what these tests write.
"""

from __future__ import annotations

import ast
import base64
import json
import re
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
    from mechwidgets.analysis.scrubbing import Node

    n = prompt.shape[-1] if isinstance(prompt, torch.Tensor) else len(model.to_str_tokens(prompt))
    half = (n - 1) // 2
    g = torch.Generator().manual_seed(0)
    seg = torch.randint(2, 40, (24, half), generator=g)
    extra = torch.randint(2, 40, (24, n - 1 - 2 * half), generator=g)
    bos = torch.full((24, 1), int(model.tokenizer.bos_token_id))
    data = torch.cat([bos, seg, seg, extra], 1)
    last = model.cfg.n_layers - 1
    hyp = Node("output", children=[
        Node(f"L{last}H0", children=[
            Node("q", children=[Node("embed", "token")]),
            Node("k", children=[Node("L0H1", "previous_token")]),
        ]),
        Node("embed", "token"),
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

    try:
        return zoo.load("toy-lm")
    except Exception as exc:  # the zoo is built by `python -m mechwidgets.zoo.train toy-lm`
        pytest.skip(f"zoo model toy-lm unavailable ({type(exc).__name__}: {exc})")


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
