import { describe, expect, it } from "vitest";
import cases from "../../tests/colormap_cases.json";
import maps from "../../mechwidgets/widgets/colormaps.json";
import { colour, css, diverging, sequential } from "./colormap";

// tests/colormap_cases.json: colours computed apart from either implementation; the Python side
// (tests/test_colormaps.py) checks the same cases against _svg.py.
describe("colour maps from mechwidgets/widgets/colormaps.json", () => {
  it("draw the shared cases", () => {
    expect(cases.cases.length).toBeGreaterThan(10);
    for (const c of cases.cases) {
      const rgb = c.map === "sequential" ? sequential(c.t) : diverging(c.t);
      expect([c.map, c.t, rgb]).toEqual([c.map, c.t, c.rgb]);
    }
  });

  it("read the stops from the JSON and treat non-finite values as 0", () => {
    expect(sequential(1)).toEqual(maps.sequential.stops[1]);
    expect(diverging(-1)).toEqual(maps.diverging.stops[0]);
    expect(diverging(NaN)).toEqual([255, 255, 255]);
    expect(sequential(Infinity)).toEqual([255, 255, 255]);
    expect(colour({ domain: [0, 2], stops: [[0, 0, 0], [100, 50, 10], [200, 0, 0]] }, 1.5)).toEqual([150, 25, 5]);
    expect(css([1, 2, 3])).toBe("rgb(1,2,3)");
  });
});
