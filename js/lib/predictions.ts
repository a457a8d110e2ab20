// The next-token predictions table (attention, features, lens and patching show one): a "#"
// column, then for each run its top tokens and their probabilities side by side.

import { decodeArray, isEncoded, type Encoded } from "./array";
import { fmt, h, showToken } from "./dom";

/** A run's top next tokens, as Python sends them (analysis `top_predictions`). */
export interface Predictions {
  tokens: string[];
  token_ids?: number[];
  probs: Encoded;
}

/** The mean of a run's per-token losses (`loss_before`, `loss_after`); 0 for none. */
export function meanLoss(loss: Encoded): number {
  const values = decodeArray(loss).data;
  let sum = 0;
  for (const v of values) sum += v;
  return sum / Math.max(1, values.length);
}

/** One run's columns in the table. */
export interface PredictionsColumn {
  /** The header over the run's tokens. */
  label: string;
  tokens: string[];
  /** The tokens' probabilities; absent: the p cells stay empty. */
  probs?: Encoded | null;
  /** Test id of each token cell, `${cellTestid}-${k}`, and of the header (optional). */
  cellTestid?: string;
  headerTestid?: string;
}

/** A table of runs' top tokens: one row per rank, as many rows as the longest run has tokens.
 * Tokens go in as text (showToken), never as HTML. */
export function predictionsTable(columns: PredictionsColumn[], testid?: string): HTMLTableElement {
  const head = h("tr", {}, h("th", {}, "#"));
  for (const c of columns) head.append(h("th", { "data-testid": c.headerTestid }, c.label), h("th", {}, "p"));
  const probs = columns.map((c) => (isEncoded(c.probs) ? decodeArray(c.probs).data : null));
  const n = Math.max(0, ...columns.map((c) => c.tokens.length));
  const body = h("tbody", {});
  for (let k = 0; k < n; k++) {
    const row = h("tr", {}, h("td", {}, k + 1));
    columns.forEach((c, i) => {
      const p = probs[i];
      row.append(
        h("td", { class: "mw-tok", "data-testid": c.cellTestid && `${c.cellTestid}-${k}` }, showToken(c.tokens[k] ?? "")),
        h("td", { class: "mw-num" }, p ? fmt(p[k] ?? NaN, 3) : ""),
      );
    });
    body.append(row);
  }
  return h("table", { class: "mw-table", "data-testid": testid }, h("thead", {}, head), body);
}
