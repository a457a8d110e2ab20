// Bundles each widget entry in js/ into an ES module in mechwidgets/static/.
// `node js/build.mjs` builds once; `--watch` rebuilds on change (used by `make dev`
// with ANYWIDGET_HMR=1 so the open widgets reload).
import * as esbuild from "esbuild";
import { readdirSync, mkdirSync, copyFileSync } from "node:fs";

const entries = readdirSync("js")
  .filter((f) => f.endsWith(".ts") && !f.endsWith(".test.ts"))
  .map((f) => `js/${f}`);
const outdir = "mechwidgets/static";
mkdirSync(outdir, { recursive: true });
copyFileSync("js/lib/style.css", `${outdir}/style.css`);

const options = {
  entryPoints: entries,
  bundle: true,
  format: "esm",
  outdir,
  minify: !process.argv.includes("--watch"),
  target: ["es2020"],
  logLevel: "info",
};
if (process.argv.includes("--watch")) {
  const ctx = await esbuild.context(options);
  await ctx.watch();
} else {
  await esbuild.build(options);
}
