import marimo

__generated_with = "0.25.2"
app = marimo.App(width="full")


@app.cell
def _():
    import marimo as mo

    return (mo,)


@app.cell
def _(mo):
    mo.md(
        """
        # Attention heads in marimo

        `mechwidgets` widgets are plain [anywidget](https://anywidget.dev) widgets, so marimo
        shows them with `mo.ui.anywidget(widget)`. Click a head's thumbnail to see its full
        pattern; the cell below it re-runs with the selection. Everything runs offline on the
        zoo's `toy-lm` (4 layers, 4 heads each, a word-level tokenizer).
        """
    )
    return


@app.cell
def _():
    import mechwidgets
    from mechwidgets import zoo

    model = zoo.load("toy-lm")
    return mechwidgets, model, zoo


@app.cell
def _(mo, zoo):
    ioi = zoo.tasks.ioi_pairs(1, seed=0)[0]
    repeated = zoo.tasks.induction_sequences(1, length=12, seed=0)[0]
    prompts = {
        "indirect object identification": ioi.clean + ioi.answer + ".",
        "a repeated word list (induction)": repeated.text,
    }
    choice = mo.ui.dropdown(options=prompts, value="indirect object identification", label="prompt")
    choice
    return (choice,)


@app.cell
def _(choice, mechwidgets, mo, model):
    attention = mechwidgets.show_attention(model, choice.value)
    view = mo.ui.anywidget(attention)
    view
    return attention, view


@app.cell
def _(mo, view):
    selected = view.value.get("selected") or {}
    mo.md(
        f"Selected head: **L{selected['layer']}H{selected['head']}**"
        if selected
        else "Click a head's thumbnail to select it."
    )
    return


@app.cell
def _(attention, mo):
    # the same widget from Python: the head that scores highest as an induction head
    scores = attention.scores_tensors["induction"]
    best = int(scores.argmax())
    layer, head = attention.layers[best // scores.shape[1]], best % scores.shape[1]
    mo.md(f"Highest induction score on this prompt: **L{layer}H{head}** ({float(scores.flatten()[best]):.2f}).")
    return


if __name__ == "__main__":
    app.run()
