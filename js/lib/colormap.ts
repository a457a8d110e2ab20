// Colour maps. Sequential (white → blue) for probabilities, diverging (blue ← white → red)
// centred on 0 for signed effects. The maps are mechwidgets/widgets/colormaps.json, which esbuild
// bundles and mechwidgets/widgets/_svg.py reads for the static pictures: both interpolate them
// the same way (stops evenly spaced over the domain, clamped, non-finite as 0, rounded half up).

import maps from "../../mechwidgets/widgets/colormaps.json";

export type RGB = [number, number, number];

interface ColourMap {
  domain: number[];
  stops: number[][];
}

/** The colour of `cmap` at `t`. */
export function colour(cmap: ColourMap, t: number): RGB {
  const [lo, hi] = cmap.domain;
  const stops = cmap.stops;
  const v = Number.isFinite(t) ? t : 0;
  const u = ((Math.min(hi, Math.max(lo, v)) - lo) / (hi - lo)) * (stops.length - 1);
  const i = Math.min(Math.floor(u), stops.length - 2);
  const f = u - i;
  const [a, b] = [stops[i], stops[i + 1]];
  return [0, 1, 2].map((c) => Math.floor(a[c] + (b[c] - a[c]) * f + 0.5)) as RGB;
}

export function sequential(t: number): RGB {
  return colour(maps.sequential, t);
}

export function diverging(t: number): RGB {
  return colour(maps.diverging, t);
}

export function css([r, g, b]: RGB): string {
  return `rgb(${r},${g},${b})`;
}
