package bench

import (
	"fmt"
	"html"
	"math"
	"slices"
	"strings"
)

// Chart is a small line chart rendered as standalone SVG: one polyline with
// markers per series, axes with ticks, a legend. No external tools.
type Chart struct {
	Title          string
	XLabel, YLabel string
	LogX, LogY     bool
	// XTicks are the x values to label (default: every x of the data).
	XTicks []float64
	// FormatX and FormatY print tick values (default: %g).
	FormatX, FormatY func(float64) string
	Series           []Series
}

// Series is one line: points (X[i], Y[i]). NaN values are left out.
type Series struct {
	Name   string
	X, Y   []float64
	Color  string // "" = the palette's next colour
	Dashed bool
}

// Chart geometry: the legend is right of the plot area.
const (
	svgW, svgH                           = 920, 420
	padLeft, padRight, padTop, padBottom = 80, 300, 44, 64
)

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"}

// niceStep returns a round step (1, 2 or 5 × 10^k) giving about n ticks
// over span.
func niceStep(span float64, n int) float64 {
	if span <= 0 || n <= 0 {
		return 1
	}
	raw := span / float64(n)
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= raw {
			return m * p
		}
	}
	return 10 * p
}

// axis maps data values to pixels along one axis.
type axis struct {
	log      bool
	lo, hi   float64 // in data units (log10 of them if log)
	p0, p1   float64 // pixels
	ticks    []float64
	format   func(float64) string
	explicit bool
}

func (a *axis) tr(v float64) float64 {
	if a.log {
		v = math.Log10(v)
	}
	if a.hi == a.lo {
		return (a.p0 + a.p1) / 2
	}
	return a.p0 + (v-a.lo)/(a.hi-a.lo)*(a.p1-a.p0)
}

func usable(v float64, log bool) bool {
	return !math.IsNaN(v) && !math.IsInf(v, 0) && (!log || v > 0)
}

// setup computes the range and ticks of an axis from its values.
func (a *axis) setup(vals []float64, fromZero bool) {
	var vs []float64
	for _, v := range vals {
		if usable(v, a.log) {
			vs = append(vs, v)
		}
	}
	if len(vs) == 0 {
		vs = []float64{1}
	}
	lo, hi := slices.Min(vs), slices.Max(vs)
	if a.log {
		l, h := math.Log10(lo), math.Log10(hi)
		pad := 0.06 * (h - l)
		if pad == 0 {
			pad = 0.5
		}
		a.lo, a.hi = l-pad, h+pad
		if !a.explicit {
			for e := math.Floor(a.lo); e <= math.Ceil(a.hi); e++ {
				for _, m := range []float64{1, 2, 5} {
					v := m * math.Pow(10, e)
					if lv := math.Log10(v); lv >= a.lo && lv <= a.hi && (m == 1 || h-l < 1.5) {
						a.ticks = append(a.ticks, v)
					}
				}
			}
		}
		return
	}
	if fromZero && lo > 0 {
		lo = 0
	}
	if lo == hi {
		hi = lo + 1
	}
	step := niceStep(hi-lo, 5)
	a.lo, a.hi = math.Floor(lo/step)*step, math.Ceil(hi/step)*step
	if !a.explicit {
		for v := a.lo; v <= a.hi+step/2; v += step {
			a.ticks = append(a.ticks, v)
		}
	}
}

// SVG renders the chart.
func (c Chart) SVG() []byte {
	var xs, ys []float64
	for _, s := range c.Series {
		for i := range s.X {
			if i < len(s.Y) && usable(s.X[i], c.LogX) && usable(s.Y[i], c.LogY) {
				xs = append(xs, s.X[i])
				ys = append(ys, s.Y[i])
			}
		}
	}
	x := &axis{log: c.LogX, p0: padLeft, p1: svgW - padRight, format: c.FormatX}
	y := &axis{log: c.LogY, p0: svgH - padBottom, p1: padTop, format: c.FormatY}
	if len(c.XTicks) > 0 {
		x.ticks, x.explicit = c.XTicks, true
		xs = append(xs, c.XTicks...)
	} else if c.LogX || len(xs) <= 8 {
		x.ticks = uniqueSorted(xs)
		x.explicit = len(x.ticks) > 0
	}
	x.setup(xs, false)
	y.setup(ys, true)
	for _, a := range []*axis{x, y} {
		if a.format == nil {
			a.format = func(v float64) string { return fmt.Sprintf("%g", v) }
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		svgW, svgH, svgW, svgH)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", svgW, svgH)
	fmt.Fprintf(&b, `<text x="%d" y="24" text-anchor="middle" font-size="15" font-weight="bold">%s</text>`+"\n", (padLeft+svgW-padRight)/2, html.EscapeString(c.Title))
	// Grid and ticks.
	for _, t := range y.ticks {
		if !usable(t, y.log) {
			continue
		}
		py := y.tr(t)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", padLeft, py, svgW-padRight, py)
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" dominant-baseline="middle">%s</text>`+"\n", padLeft-6, py, html.EscapeString(y.format(t)))
	}
	for _, t := range x.ticks {
		if !usable(t, x.log) {
			continue
		}
		px := x.tr(t)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#eee"/>`+"\n", px, padTop, px, svgH-padBottom)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", px, svgH-padBottom+18, html.EscapeString(x.format(t)))
	}
	// Axes and labels.
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", padLeft, svgH-padBottom, svgW-padRight, svgH-padBottom)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", padLeft, padTop, padLeft, svgH-padBottom)
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", (padLeft+svgW-padRight)/2, svgH-18, html.EscapeString(c.XLabel))
	fmt.Fprintf(&b, `<text x="18" y="%d" text-anchor="middle" transform="rotate(-90 18 %d)">%s</text>`+"\n",
		(padTop+svgH-padBottom)/2, (padTop+svgH-padBottom)/2, html.EscapeString(c.YLabel))
	// Series, then the legend over them (top left inside the plot area).
	colors := make([]string, len(c.Series))
	next := 0
	for i, s := range c.Series {
		colors[i] = s.Color
		if colors[i] == "" {
			colors[i] = palette[next%len(palette)]
			next++
		}
	}
	dash := func(s Series) string {
		if s.Dashed {
			return ` stroke-dasharray="6 4"`
		}
		return ""
	}
	for i, s := range c.Series {
		color := colors[i]
		var pts [][2]float64
		for j := range s.X {
			if j < len(s.Y) && usable(s.X[j], c.LogX) && usable(s.Y[j], c.LogY) {
				pts = append(pts, [2]float64{x.tr(s.X[j]), y.tr(s.Y[j])})
			}
		}
		if len(pts) > 1 {
			var ps []string
			for _, p := range pts {
				ps = append(ps, fmt.Sprintf("%.1f,%.1f", p[0], p[1]))
			}
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>`+"\n", color, dash(s), strings.Join(ps, " "))
		}
		for _, p := range pts {
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"/>`+"\n", p[0], p[1], color)
		}
	}
	lx := svgW - padRight + 16
	for i, s := range c.Series {
		ly := padTop + 8 + 20*i
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>`+"\n", lx, ly, lx+28, ly, colors[i], dash(s))
		fmt.Fprintf(&b, `<circle cx="%d" cy="%d" r="3.5" fill="%s"/>`+"\n", lx+14, ly, colors[i])
		fmt.Fprintf(&b, `<text x="%d" y="%d" dominant-baseline="middle">%s</text>`+"\n", lx+36, ly, html.EscapeString(s.Name))
	}
	b.WriteString("</svg>\n")
	return []byte(b.String())
}

func uniqueSorted(xs []float64) []float64 {
	out := slices.Clone(xs)
	slices.Sort(out)
	return slices.Compact(out)
}
