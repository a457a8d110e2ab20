// Colour maps. Sequential (white → blue) for probabilities, diverging (blue ← white → red)
// centred on 0 for signed effects. Same maps as mechwidgets/widgets/_svg.py.

export type RGB = [number, number, number];

export function sequential(t: number): RGB {
  const u = Math.max(0, Math.min(1, Number.isFinite(t) ? t : 0));
  return [Math.round(255 - 225 * u), Math.round(255 - 180 * u), Math.round(255 - 75 * u)];
}

export function diverging(t: number): RGB {
  const u = Math.max(-1, Math.min(1, Number.isFinite(t) ? t : 0));
  if (u >= 0) {
    const c = Math.round(255 * (1 - u) + 40 * u);
    return [255, c, c];
  }
  const s = -u;
  return [Math.round(255 * (1 - s) + 40 * s), Math.round(255 * (1 - s) + 90 * s), 255];
}

export function css([r, g, b]: RGB): string {
  return `rgb(${r},${g},${b})`;
}
