//! Server-rendered SVG line charts and sparklines for the dashboard, so an appliance's history is
//! readable without JavaScript and under a `style-src 'self'` Content-Security-Policy.
//!
//! [`line_chart`] draws one or more [`Series`] over a time window as an inline `<svg>` element
//! with a fixed 720×240 view box and `width="100%"`, so it shrinks on a phone; [`sparkline`]
//! draws a 120×24 trend for a table cell. Neither writes a `style` attribute or a `<style>`
//! element: all styling is in [`CHART_CSS`], which the page's stylesheet must include (series
//! colours are the classes `s0`..`s7`, restyled there for dark mode).
//!
//! What the output promises, to the page and to browser tests:
//! - each series is one `<path class="series sN">` (N = its index mod 8, plus `dashed` for a
//!   projection) with `data-series` (its name), `data-points` (its points inside the window,
//!   before any thinning) and `data-drawn` (the vertices the path has, after clipping and
//!   thinning; a lone point's `h0` does not count);
//! - points outside `from..=to` are dropped from a solid series; a dashed series (a forecast)
//!   is cut at the window's edge instead, so a line towards a date far ahead keeps its slope;
//! - a gap (two consecutive points more than 3× the median spacing apart) starts a new subpath
//!   instead of joining the days that sent no report;
//! - each point of a solid series is marked by the path's markers (one `<marker>` per colour, so
//!   a mark costs no bytes); a dashed series is not, its points are not reports;
//! - a series with more points than the plot has pixel columns keeps only the lowest and the
//!   highest point of each column (and its first and last), so a one-day spike survives;
//! - non-finite values are dropped, magnitudes above 1e300 clamped and below 1e-100 drawn as
//!   zero, so the output never says NaN or inf;
//! - every string from the caller is escaped; the element id is `chart-` and the caller's `id`
//!   reduced to `[A-Za-z0-9_-]`.

use std::fmt::Write;

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Timelike, Utc};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 240.0;
/// Room for y labels such as "-1.25k" or "100%". Fixed rather than measured, so that charts
/// stacked on one page line up their time axes.
const LEFT: f64 = 56.0;
/// Room for half of the last date label, which is centred on its tick.
const RIGHT: f64 = 24.0;
/// Room for the title line.
const TOP: f64 = 26.0;
const X_LABELS: f64 = 22.0;
const LEGEND_ROW: f64 = 16.0;
/// More legend rows would leave too little plot in 240 units; the rest is "+N more".
const LEGEND_ROWS: usize = 2;
const LEGEND_CHARS: usize = 24;
const TITLE_CHARS: usize = 100;
/// Average advance of an 11 px system-ui glyph; layout only needs a fair estimate.
const CHAR_W: f64 = 6.2;
/// Fewest units between two date ticks: the widest label ("Mar 2025") is about 50.
const MIN_TICK_GAP: f64 = 80.0;
const SPARK_W: f64 = 120.0;
const SPARK_H: f64 = 24.0;
const SPARK_PAD: f64 = 2.0;
/// Bounds that keep every sum and difference of two values finite.
const MAX_ABS: f64 = 1e300;
const MIN_ABS: f64 = 1e-100;
/// Values closer together than this fraction of their size are drawn as one level: the
/// difference is float noise (an i64 near 2^63 has no exact f64) and would need unreadable ticks.
const FLAT: f64 = 1e-6;
const GAP_FACTOR: f64 = 3.0;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// 1970-01-05, the first Monday after the epoch: weekly ticks fall on Mondays.
const MONDAY_MS: i64 = 4 * DAY_MS;

/// The stylesheet rules for what [`line_chart`] and [`sparkline`] draw; include it in the page's
/// stylesheet (the SVG itself carries no styles, see the module docs).
pub const CHART_CSS: &str = "\
.chart{display:block;max-width:720px;height:auto}\
.chart text{font:11px system-ui,sans-serif;fill:#555}\
.chart .ttl{font-weight:600;fill:#1d1d1f}\
.chart .nodata{font-size:13px;fill:#888}\
.chart .grid{stroke:#e8e8ec}\
.chart .zero{stroke:#999}\
.chart .frame{fill:none;stroke:#c8c8cc}\
.chart .series{fill:none;stroke-width:1.6;stroke-linejoin:round;stroke-linecap:round}\
.chart .dashed{stroke-dasharray:6 4}\
.chart .key{stroke-width:2.5}\
.chart .dot{fill:none;stroke-width:1.6}\
.chart .s0{stroke:#0072b2}.chart .s1{stroke:#d55e00}.chart .s2{stroke:#009e73}\
.chart .s3{stroke:#cc79a7}.chart .s4{stroke:#b8860b}.chart .s5{stroke:#56b4e9}\
.chart .s6{stroke:#6a3d9a}.chart .s7{stroke:#555}\
.spark{vertical-align:middle}\
.spark-line{fill:none;stroke:currentColor;stroke-width:1.2;stroke-linejoin:round;stroke-linecap:round}\
.spark-last{fill:currentColor}\
.spark-none{font:9px system-ui,sans-serif;fill:#888}\
@media (prefers-color-scheme:dark){\
.chart text{fill:#b0b0b8}.chart .ttl{fill:#e8e8ed}.chart .nodata{fill:#999}\
.chart .grid{stroke:#2e2e33}.chart .zero{stroke:#777}.chart .frame{stroke:#48484e}\
.chart .s0{stroke:#56b4e9}.chart .s1{stroke:#ff8c42}.chart .s2{stroke:#3ddc97}\
.chart .s3{stroke:#e7a3cf}.chart .s4{stroke:#f0c040}.chart .s5{stroke:#9ad0f5}\
.chart .s6{stroke:#b39ddb}.chart .s7{stroke:#bbb}\
.spark-none{fill:#999}}";

/// One line of a chart.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Series {
    /// Shown in the legend and in `data-series`; may come from an appliance (it is escaped).
    pub name: String,
    /// In any order; non-finite values are dropped.
    pub points: Vec<(DateTime<Utc>, f64)>,
    /// A projection rather than reports: dashed, without point marks, cut at the window's edge.
    pub dashed: bool,
}

impl Series {
    /// A solid series.
    pub fn new(name: impl Into<String>, points: Vec<(DateTime<Utc>, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            dashed: false,
        }
    }

    /// A solid series of counters. Above 2^53 a value becomes the nearest f64, an error far
    /// smaller than a pixel.
    pub fn counter(name: impl Into<String>, points: &[(DateTime<Utc>, i64)]) -> Self {
        Self::new(name, points.iter().map(|&(t, v)| (t, v as f64)).collect())
    }
}

/// A line chart over the window `from..=to` (swapped if reversed; a single instant is widened
/// to the day around it).
#[derive(Debug, Clone)]
pub struct Chart<'a> {
    /// Becomes the element id `chart-<id>`, reduced to `[A-Za-z0-9_-]` (others become `_`), at
    /// most 64 characters; it also names the point markers, so ids must differ on one page.
    pub id: &'a str,
    pub title: &'a str,
    /// `%` and units starting with `°` are written on every tick ("40°C"); any other unit is
    /// named once after the title, and ticks are compact ("1.2k", "3.4M", "5G").
    pub unit: &'a str,
    /// Colours follow the index: series `i` has class `s{i % 8}`.
    pub series: Vec<Series>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Include zero in the y axis (counters, percentages); otherwise it fits the data.
    pub y_from_zero: bool,
}

/// A point in chart terms: milliseconds since the epoch, and the value.
type Pt = (f64, f64);

/// The plot area in view-box units, and the time window it shows.
#[derive(Clone, Copy)]
struct Plot {
    left: f64,
    top: f64,
    right: f64,
    bottom: f64,
    a: f64,
    b: f64,
}

impl Plot {
    fn x(&self, ms: f64) -> f64 {
        self.left + (ms - self.a) / (self.b - self.a).max(1.0) * (self.right - self.left)
    }

    fn columns(&self) -> f64 {
        self.right - self.left
    }
}

/// A series reduced to what is drawn.
struct Drawn<'s> {
    name: &'s str,
    class: usize,
    dashed: bool,
    inside: usize,
    segments: Vec<Vec<Pt>>,
}

impl Drawn<'_> {
    fn drawn(&self) -> usize {
        self.segments.iter().map(Vec::len).sum()
    }

    fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.segments.iter().flatten().map(|p| p.1)
    }
}

/// Draws a line chart as an inline `<svg>` element (see the module docs for what it contains).
pub fn line_chart(c: &Chart) -> String {
    let (from, to) = if c.to < c.from {
        (c.to, c.from)
    } else {
        (c.from, c.to)
    };
    let (wfrom, wto) = widen(from, to);
    let id = safe_id(c.id);
    let mut plot = Plot {
        left: LEFT,
        top: TOP,
        right: WIDTH - RIGHT,
        bottom: HEIGHT - X_LABELS,
        a: ms(wfrom),
        b: ms(wto),
    };
    let drawn: Vec<Drawn> = c
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| prepare(s, i, &plot))
        .collect();
    let legend = if drawn.len() > 1 {
        layout_legend(&drawn)
    } else {
        Legend::default()
    };
    if legend.rows > 0 {
        plot.bottom -= legend.rows as f64 * LEGEND_ROW + 4.0;
    }
    let plain = plain_unit(c.unit);
    let axis = value_range(drawn.iter().flat_map(Drawn::values))
        .map(|(lo, hi, integral)| y_axis(lo, hi, c.y_from_zero, integral));
    let max_ticks = (plot.columns() / MIN_TICK_GAP).floor() as usize;
    let xticks = x_ticks(wfrom, wto, max_ticks);

    let heading = if c.unit.is_empty() || plain {
        c.title.to_string()
    } else {
        format!("{} ({})", c.title, c.unit)
    };
    let summary = match drawn.len() {
        _ if axis.is_none() => "no data in this period".to_string(),
        1 => "1 series".to_string(),
        n => format!("{n} series"),
    };
    let label = format!(
        "{heading}, {} to {}: {summary}",
        from.format("%Y-%m-%d"),
        to.format("%Y-%m-%d")
    );
    let step = axis.as_ref().map_or(1.0, |a| a.step);
    let desc: Vec<String> = drawn.iter().map(|d| describe(d, step, c.unit)).collect();

    let mut out = String::with_capacity(4096 + drawn.iter().map(Drawn::drawn).sum::<usize>() * 12);
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"{id}\" class=\"chart\" \
viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"100%\" role=\"img\" aria-label=\"{}\">\
<title>{}</title><desc>{}</desc>",
        esc(&label),
        esc(&heading),
        esc(&desc.join("; "))
    );

    // Point marks cost nothing per point as markers; their colour comes from a class, so there
    // is one marker per colour in use.
    let mut used = [false; 8];
    for d in drawn.iter().filter(|d| !d.dashed && d.drawn() > 0) {
        if let Some(u) = used.get_mut(d.class) {
            *u = true;
        }
    }
    if used.contains(&true) {
        out.push_str("<defs>");
        for (n, _) in used.iter().enumerate().filter(|(_, u)| **u) {
            let _ = write!(
                out,
                "<marker id=\"{id}-m{n}\" viewBox=\"-2 -2 4 4\" markerWidth=\"4\" \
markerHeight=\"4\" markerUnits=\"userSpaceOnUse\"><circle class=\"dot s{n}\" r=\".8\"/></marker>"
            );
        }
        out.push_str("</defs>");
    }

    let _ = write!(
        out,
        "<text class=\"ttl\" x=\"8\" y=\"16\">{}</text>",
        esc(&truncate(&heading, TITLE_CHARS))
    );

    let mut grid = String::new();
    if let Some(axis) = &axis {
        for &v in &axis.ticks {
            grid.push('M');
            num(&mut grid, plot.left);
            grid.push(' ');
            num(&mut grid, axis.y(&plot, v));
            grid.push('H');
            num(&mut grid, plot.right);
        }
    }
    for (t, _) in &xticks {
        grid.push('M');
        num(&mut grid, plot.x(ms(*t)));
        grid.push(' ');
        num(&mut grid, plot.top);
        grid.push('V');
        num(&mut grid, plot.bottom);
    }
    if !grid.is_empty() {
        let _ = write!(out, "<path class=\"grid\" d=\"{grid}\"/>");
    }
    out.push_str("<rect class=\"frame\" fill=\"none\" x=\"");
    num(&mut out, plot.left);
    out.push_str("\" y=\"");
    num(&mut out, plot.top);
    out.push_str("\" width=\"");
    num(&mut out, plot.columns());
    out.push_str("\" height=\"");
    num(&mut out, plot.bottom - plot.top);
    out.push_str("\"/>");

    if let Some(axis) = &axis {
        // Negative values (a counter reset, a shrinking delta) read wrongly without a baseline.
        if axis.lo < 0.0 && axis.hi > 0.0 {
            out.push_str("<path class=\"zero\" d=\"M");
            num(&mut out, plot.left);
            out.push(' ');
            num(&mut out, axis.y(&plot, 0.0));
            out.push('H');
            num(&mut out, plot.right);
            out.push_str("\"/>");
        }
        out.push_str("<g class=\"ylab\" text-anchor=\"end\">");
        for &v in &axis.ticks {
            out.push_str("<text x=\"");
            num(&mut out, plot.left - 6.0);
            out.push_str("\" y=\"");
            num(&mut out, axis.y(&plot, v));
            let _ = write!(
                out,
                "\" dy=\".32em\">{}</text>",
                esc(&tick_label(v, axis.step, c.unit))
            );
        }
        out.push_str("</g>");
    }
    if !xticks.is_empty() {
        out.push_str("<g class=\"xlab\" text-anchor=\"middle\">");
        for (t, text) in &xticks {
            out.push_str("<text x=\"");
            num(&mut out, plot.x(ms(*t)));
            out.push_str("\" y=\"");
            num(&mut out, plot.bottom + 15.0);
            let _ = write!(out, "\">{}</text>", esc(text));
        }
        out.push_str("</g>");
    }

    // A presentation attribute, not a style: without the stylesheet a path is not a black blob.
    out.push_str("<g class=\"lines\" fill=\"none\" stroke=\"currentColor\">");
    for d in &drawn {
        let name = esc(d.name);
        let _ = write!(
            out,
            "<path class=\"series s{}{}\" data-series=\"{name}\" data-points=\"{}\" data-drawn=\"{}\"",
            d.class,
            if d.dashed { " dashed" } else { "" },
            d.inside,
            d.drawn()
        );
        if d.drawn() > 0 {
            if !d.dashed {
                let m = format!("url(#{id}-m{})", d.class);
                let _ = write!(
                    out,
                    " marker-start=\"{m}\" marker-mid=\"{m}\" marker-end=\"{m}\""
                );
            }
            out.push_str(" d=\"");
            if let Some(axis) = &axis {
                path_data(&mut out, &d.segments, |t| plot.x(t), |v| axis.y(&plot, v));
            }
            out.push('"');
        }
        let _ = write!(out, "><title>{name}</title></path>");
    }
    out.push_str("</g>");

    if axis.is_none() {
        out.push_str("<text class=\"nodata\" text-anchor=\"middle\" x=\"");
        num(&mut out, (plot.left + plot.right) / 2.0);
        out.push_str("\" y=\"");
        num(&mut out, (plot.top + plot.bottom) / 2.0);
        out.push_str("\">no data in this period</text>");
    }

    if !legend.items.is_empty() {
        out.push_str("<g class=\"legend\">");
        for item in &legend.items {
            let base = plot.bottom + X_LABELS + (item.row as f64 + 1.0) * LEGEND_ROW - 4.0;
            let _ = write!(
                out,
                "<path class=\"key s{}{}\" d=\"M",
                item.class,
                if item.dashed { " dashed" } else { "" }
            );
            num(&mut out, item.x);
            out.push(' ');
            num(&mut out, base - 4.0);
            out.push_str("h16\"/><text x=\"");
            num(&mut out, item.x + 20.0);
            out.push_str("\" y=\"");
            num(&mut out, base);
            let _ = write!(out, "\">{}</text>", esc(&item.text));
        }
        if legend.hidden > 0 {
            let base = plot.bottom + X_LABELS + legend.rows as f64 * LEGEND_ROW - 4.0;
            out.push_str("<text x=\"");
            num(&mut out, legend.end);
            out.push_str("\" y=\"");
            num(&mut out, base);
            let _ = write!(out, "\">+{} more</text>", legend.hidden);
        }
        out.push_str("</g>");
    }
    out.push_str("</svg>");
    out
}

/// Draws a 120×24 trend for a table cell: the line, gaps broken as in [`line_chart`], and a dot
/// on the newest point; no axes. Its x range is the points' own, its y range their min to max.
/// The `<path class="spark-line">` carries `data-points` and `data-drawn` as in [`line_chart`].
pub fn sparkline(points: &[(DateTime<Utc>, f64)]) -> String {
    let pts = clean(points);
    let head = "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"spark\" viewBox=\"0 0 120 24\" \
width=\"120\" height=\"24\" role=\"img\"";
    let (Some(first), Some(last)) = (pts.first().copied(), pts.last().copied()) else {
        return format!(
            "{head} aria-label=\"no data\"><title>no data</title>\
<text class=\"spark-none\" x=\"60\" y=\"15\" text-anchor=\"middle\">no data</text></svg>"
        );
    };
    let (mut a, mut b) = (first.0, last.0);
    if b <= a {
        // One instant has no width: put it in the middle.
        a -= 1.0;
        b += 1.0;
    }
    let plot = Plot {
        left: SPARK_PAD,
        top: SPARK_PAD,
        right: SPARK_W - SPARK_PAD,
        bottom: SPARK_H - SPARK_PAD,
        a,
        b,
    };
    let (lo, hi) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    let y = |v: f64| {
        if hi > lo {
            plot.bottom - (v - lo) / (hi - lo) * (plot.bottom - plot.top)
        } else {
            (plot.top + plot.bottom) / 2.0
        }
    };
    let segments = thin(
        split_gaps(&pts).into_iter().map(<[Pt]>::to_vec).collect(),
        &plot,
    );
    let drawn: usize = segments.iter().map(Vec::len).sum();
    let step = precision(lo.abs().max(hi.abs()));
    let label = format!(
        "{} point{}, {} to {}: min {}, max {}, last {}",
        pts.len(),
        if pts.len() == 1 { "" } else { "s" },
        date(first.0),
        date(last.0),
        tick_label(lo, step, ""),
        tick_label(hi, step, ""),
        tick_label(last.1, step, "")
    );
    let mut out = String::with_capacity(256 + drawn * 12);
    let _ = write!(
        out,
        "{head} aria-label=\"{label}\"><title>{label}</title>\
<path class=\"spark-line\" data-points=\"{}\" data-drawn=\"{drawn}\" d=\"",
        pts.len()
    );
    path_data(&mut out, &segments, |t| plot.x(t), y);
    out.push_str("\"/><circle class=\"spark-last\" r=\"1.8\" cx=\"");
    num(&mut out, plot.x(last.0));
    out.push_str("\" cy=\"");
    num(&mut out, y(last.1));
    out.push_str("\"/></svg>");
    out
}

fn ms(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64
}

fn date(t: f64) -> String {
    DateTime::from_timestamp_millis(t as i64)
        .map_or_else(String::new, |t| t.format("%Y-%m-%d").to_string())
}

/// An instant has no width; the day around it shows its points in the middle.
fn widen(from: DateTime<Utc>, to: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    if from < to {
        return (from, to);
    }
    let half = TimeDelta::hours(12);
    (
        from.checked_sub_signed(half).unwrap_or(from),
        to.checked_add_signed(half).unwrap_or(to),
    )
}

/// Finite points in time order, values bounded so that no arithmetic on them overflows.
fn clean(points: &[(DateTime<Utc>, f64)]) -> Vec<Pt> {
    let mut pts: Vec<Pt> = points
        .iter()
        .filter(|(_, v)| v.is_finite())
        .map(|&(t, v)| {
            let v = v.clamp(-MAX_ABS, MAX_ABS);
            (ms(t), if v.abs() < MIN_ABS { 0.0 } else { v })
        })
        .collect();
    pts.sort_by(|p, q| p.0.total_cmp(&q.0));
    pts
}

fn prepare<'s>(s: &'s Series, index: usize, plot: &Plot) -> Drawn<'s> {
    let pts = clean(&s.points);
    let (a, b) = (plot.a, plot.b);
    let inside = pts.iter().filter(|p| (a..=b).contains(&p.0)).count();
    let mut segments = Vec::new();
    for run in split_gaps(&pts) {
        if s.dashed {
            segments.extend(clip(run, a, b));
        } else {
            // Sorted, so the points inside are one contiguous run.
            let kept: Vec<Pt> = run
                .iter()
                .copied()
                .filter(|p| (a..=b).contains(&p.0))
                .collect();
            if !kept.is_empty() {
                segments.push(kept);
            }
        }
    }
    Drawn {
        name: &s.name,
        class: index % 8,
        dashed: s.dashed,
        inside,
        segments: thin(segments, plot),
    }
}

/// Runs of points without a gap, a gap being more than [`GAP_FACTOR`] times the median spacing.
/// Equal timestamps do not count as a spacing, or duplicates would make every step a gap.
fn split_gaps(pts: &[Pt]) -> Vec<&[Pt]> {
    if pts.is_empty() {
        return Vec::new();
    }
    let pairs = || pts.iter().zip(pts.iter().skip(1));
    let mut spacings: Vec<f64> = pairs()
        .map(|(p, q)| q.0 - p.0)
        .filter(|d| *d > 0.0)
        .collect();
    spacings.sort_by(f64::total_cmp);
    let mid = spacings.len() / 2;
    let median = if spacings.len() % 2 == 0 {
        match (spacings.get(mid.wrapping_sub(1)), spacings.get(mid)) {
            (Some(x), Some(y)) => (x + y) / 2.0,
            _ => f64::INFINITY,
        }
    } else {
        spacings.get(mid).copied().unwrap_or(f64::INFINITY)
    };
    let limit = median * GAP_FACTOR;
    let mut runs = Vec::new();
    let mut start = 0;
    for (i, (p, q)) in pairs().enumerate() {
        if q.0 - p.0 > limit {
            runs.extend(pts.get(start..=i));
            start = i + 1;
        }
    }
    runs.extend(pts.get(start..));
    runs
}

/// The parts of a polyline inside `a..=b`, ends interpolated at the window's edges.
fn clip(run: &[Pt], a: f64, b: f64) -> Vec<Vec<Pt>> {
    if let [p] = run {
        return if (a..=b).contains(&p.0) {
            vec![vec![*p]]
        } else {
            Vec::new()
        };
    }
    let mut out = Vec::new();
    let mut cur: Vec<Pt> = Vec::new();
    for (&p, &q) in run.iter().zip(run.iter().skip(1)) {
        let (lo, hi) = (p.0.max(a), q.0.min(b));
        if lo > hi {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        let start = (lo, lerp(p, q, lo));
        let end = (hi, lerp(p, q, hi));
        if cur.last() != Some(&start) {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            cur.push(start);
        }
        if end != start {
            cur.push(end);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The value at `t` on the line from `p` to `q`, exact at the ends so that clipped pieces meet.
fn lerp(p: Pt, q: Pt, t: f64) -> f64 {
    if t <= p.0 || q.0 <= p.0 {
        p.1
    } else if t >= q.0 {
        q.1
    } else {
        p.1 + (q.1 - p.1) * ((t - p.0) / (q.0 - p.0))
    }
}

/// Keeps the lowest and highest point of each pixel column when a series has more points than
/// the plot has columns: drawing more only costs bytes, and the extremes are what an operator
/// looks for. A run's first and last points stay too, so the line starts and ends where the
/// data does.
fn thin(segments: Vec<Vec<Pt>>, plot: &Plot) -> Vec<Vec<Pt>> {
    let total: usize = segments.iter().map(Vec::len).sum();
    if (total as f64) <= plot.columns() {
        return segments;
    }
    segments
        .into_iter()
        .map(|seg| {
            let mut out = Vec::new();
            for bucket in seg.chunk_by(|p, q| plot.x(p.0).floor() == plot.x(q.0).floor()) {
                let mut lo = 0;
                let mut hi = 0;
                for (i, p) in bucket.iter().enumerate() {
                    if bucket.get(lo).is_some_and(|l| p.1 < l.1) {
                        lo = i;
                    }
                    if bucket.get(hi).is_some_and(|h| p.1 > h.1) {
                        hi = i;
                    }
                }
                let first = if out.is_empty() { 0 } else { lo.min(hi) };
                for i in [first, lo.min(hi), lo.max(hi)] {
                    push_new(&mut out, bucket.get(i));
                }
            }
            push_new(&mut out, seg.last());
            out
        })
        .collect()
}

fn push_new(out: &mut Vec<Pt>, p: Option<&Pt>) {
    if let Some(p) = p {
        if out.last() != Some(p) {
            out.push(*p);
        }
    }
}

fn path_data(
    out: &mut String,
    segments: &[Vec<Pt>],
    x: impl Fn(f64) -> f64,
    y: impl Fn(f64) -> f64,
) {
    for seg in segments {
        for (i, p) in seg.iter().enumerate() {
            out.push(if i == 0 { 'M' } else { 'L' });
            num(out, x(p.0));
            out.push(' ');
            num(out, y(p.1));
        }
        // A lone point has no length to stroke; a zero-length segment shows it as a round cap.
        if seg.len() == 1 {
            out.push_str("h0");
        }
    }
}

/// A coordinate to a tenth of a unit (finer is invisible and costs bytes).
fn num(out: &mut String, v: f64) {
    let r = (v * 10.0).round() / 10.0;
    let r = if r.is_finite() { r } else { 0.0 };
    if r.fract() == 0.0 {
        let _ = write!(out, "{}", r as i64);
    } else {
        let _ = write!(out, "{r:.1}");
    }
}

/// The smallest and largest value, and whether all are whole numbers.
fn value_range(values: impl Iterator<Item = f64>) -> Option<(f64, f64, bool)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v, v.fract() == 0.0)),
        Some((lo, hi, int)) => Some((lo.min(v), hi.max(v), int && v.fract() == 0.0)),
    })
}

struct YAxis {
    lo: f64,
    hi: f64,
    step: f64,
    ticks: Vec<f64>,
}

impl YAxis {
    fn y(&self, plot: &Plot, v: f64) -> f64 {
        let span = self.hi - self.lo;
        if span > 0.0 {
            plot.bottom - (v - self.lo) / span * (plot.bottom - plot.top)
        } else {
            (plot.top + plot.bottom) / 2.0
        }
    }
}

/// An axis from a tick to a tick, about four steps of 1, 2 or 5 × 10^n; whole-number data
/// never gets fractional ticks.
fn y_axis(min: f64, max: f64, from_zero: bool, integral: bool) -> YAxis {
    let (mut lo, mut hi) = (min, max);
    if from_zero {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    let mag = lo.abs().max(hi.abs());
    if hi - lo <= mag * FLAT {
        if mag == 0.0 {
            hi = 1.0;
        } else {
            let pad = mag * 0.1;
            lo -= pad;
            hi += pad;
        }
    }
    let mut step = nice_step((hi - lo) / 4.0);
    if integral {
        step = step.max(1.0);
    }
    let t_lo = (lo / step).floor() * step;
    let n = ((hi - t_lo) / step - 1e-9).ceil().clamp(1.0, 20.0);
    let ticks: Vec<f64> = (0..=n as usize)
        .map(|i| {
            let t = t_lo + i as f64 * step;
            // 0.1 + 0.2 is not 0.3; a tick that should be zero must print as "0", not "-0".
            if t.abs() < step * 1e-6 { 0.0 } else { t }
        })
        .collect();
    YAxis {
        lo: t_lo,
        hi: t_lo + n * step,
        step,
        ticks,
    }
}

fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let base = 10f64.powf(raw.log10().floor());
    let f = raw / base;
    // Rounded rather than raised, so an axis has three to seven steps, not two to four.
    let n = if f < 1.5 {
        1.0
    } else if f < 3.0 {
        2.0
    } else if f < 7.0 {
        5.0
    } else {
        10.0
    };
    n * base
}

/// Percentages and temperatures are read as plain numbers with their unit on every tick.
fn plain_unit(unit: &str) -> bool {
    unit == "%" || unit.starts_with('°')
}

/// A tick value as short as its axis allows: `1.2k`, `3.4M`, `5G`, or `40°C`, `12.5%`.
fn tick_label(v: f64, step: f64, unit: &str) -> String {
    let suffix = if plain_unit(unit) { unit } else { "" };
    if v == 0.0 {
        return format!("0{suffix}");
    }
    let abs = v.abs();
    if plain_unit(unit) && abs < 1e4 {
        return format!("{}{suffix}", fixed(v, decimals(step)));
    }
    if abs >= 1e21 {
        return format!("{v:.1e}{suffix}");
    }
    const SCALES: [(f64, &str); 6] = [
        (1e18, "E"),
        (1e15, "P"),
        (1e12, "T"),
        (1e9, "G"),
        (1e6, "M"),
        (1e3, "k"),
    ];
    let (scale, letter) = SCALES
        .iter()
        .copied()
        .find(|(s, _)| abs >= *s)
        .unwrap_or((1.0, ""));
    let d = decimals(step / scale);
    // "1.00005M" is harder to read than "1000050"; a suffix is only worth it when short.
    if d > 2 && abs < 1e7 {
        return format!("{}{suffix}", fixed(v, decimals(step)));
    }
    format!("{}{letter}{suffix}", fixed(v / scale, d.min(6)))
}

/// Decimals needed to tell apart values `step` apart.
fn decimals(step: f64) -> usize {
    if !(step > 0.0 && step < 1.0) {
        return 0;
    }
    (-step.log10() - 1e-9).ceil().clamp(0.0, 9.0) as usize
}

/// `v` with `d` decimals, trailing zeros dropped.
fn fixed(v: f64, d: usize) -> String {
    let s = format!("{v:.d$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" { "0".to_string() } else { s }
}

/// A step giving about three significant digits of `v`.
fn precision(v: f64) -> f64 {
    if v > 0.0 {
        10f64.powf(v.log10().floor() - 2.0)
    } else {
        1.0
    }
}

/// A series in words, for the chart's `<desc>` (screen readers do not see the lines).
fn describe(d: &Drawn, step: f64, unit: &str) -> String {
    let Some((lo, hi, _)) = value_range(d.values()) else {
        return format!("{}: no data", d.name);
    };
    let last = d
        .segments
        .last()
        .and_then(|s| s.last())
        .map_or(0.0, |p| p.1);
    let step = step.min(precision(lo.abs().max(hi.abs())));
    format!(
        "{}: {} point{}, min {}, max {}, last {}",
        d.name,
        d.inside,
        if d.inside == 1 { "" } else { "s" },
        tick_label(lo, step, unit),
        tick_label(hi, step, unit),
        tick_label(last, step, unit)
    )
}

#[derive(Clone, Copy)]
enum TickStep {
    Every { ms: i64, offset: i64 },
    Months(i64),
}

impl TickStep {
    fn approx_ms(self) -> f64 {
        match self {
            TickStep::Every { ms, .. } => ms as f64,
            TickStep::Months(m) => m as f64 * 30.436_875 * DAY_MS as f64,
        }
    }
}

const TICK_STEPS: [TickStep; 24] = [
    TickStep::Every {
        ms: HOUR_MS,
        offset: 0,
    },
    TickStep::Every {
        ms: 2 * HOUR_MS,
        offset: 0,
    },
    TickStep::Every {
        ms: 3 * HOUR_MS,
        offset: 0,
    },
    TickStep::Every {
        ms: 6 * HOUR_MS,
        offset: 0,
    },
    TickStep::Every {
        ms: 12 * HOUR_MS,
        offset: 0,
    },
    TickStep::Every {
        ms: DAY_MS,
        offset: 0,
    },
    TickStep::Every {
        ms: 2 * DAY_MS,
        offset: 0,
    },
    TickStep::Every {
        ms: 7 * DAY_MS,
        offset: MONDAY_MS,
    },
    TickStep::Every {
        ms: 14 * DAY_MS,
        offset: MONDAY_MS,
    },
    TickStep::Months(1),
    TickStep::Months(2),
    TickStep::Months(3),
    TickStep::Months(6),
    TickStep::Months(12),
    TickStep::Months(24),
    TickStep::Months(60),
    TickStep::Months(120),
    TickStep::Months(240),
    TickStep::Months(600),
    TickStep::Months(1_200),
    TickStep::Months(6_000),
    TickStep::Months(12_000),
    TickStep::Months(120_000),
    TickStep::Months(1_200_000),
];

/// Date ticks inside `from..=to` at the finest calendar step that gives at most `max` intervals,
/// so labels never overlap: days, Mondays, first of the month, years.
fn x_ticks(from: DateTime<Utc>, to: DateTime<Utc>, max: usize) -> Vec<(DateTime<Utc>, String)> {
    let span = ms(to) - ms(from);
    let Some(step) = TICK_STEPS
        .iter()
        .copied()
        .find(|s| span / s.approx_ms() <= max as f64)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    match step {
        TickStep::Every { ms: every, offset } => {
            let (a, b) = (from.timestamp_millis(), to.timestamp_millis());
            let k = a.saturating_sub(offset).div_euclid(every);
            let mut t = k.saturating_mul(every).saturating_add(offset);
            if t < a {
                t = t.saturating_add(every);
            }
            for _ in 0..=max {
                if t > b {
                    break;
                }
                if let Some(at) = DateTime::from_timestamp_millis(t) {
                    let midnight = at.hour() == 0 && at.minute() == 0;
                    let fmt = if every < DAY_MS && !midnight {
                        "%H:%M"
                    } else {
                        "%b %d"
                    };
                    out.push((at, at.format(fmt).to_string()));
                }
                let Some(next) = t.checked_add(every) else {
                    break;
                };
                t = next;
            }
        }
        TickStep::Months(m) => {
            let mut idx = i64::from(from.year()) * 12 + i64::from(from.month0());
            if first_of_month(idx) != Some(from) {
                idx = idx.saturating_add(1);
            }
            let r = idx.rem_euclid(m);
            if r != 0 {
                idx = idx.saturating_add(m - r);
            }
            let fmt = if m < 12 { "%b %Y" } else { "%Y" };
            for _ in 0..=max {
                let Some(at) = first_of_month(idx) else {
                    break;
                };
                if at > to {
                    break;
                }
                out.push((at, at.format(fmt).to_string()));
                idx = idx.saturating_add(m);
            }
        }
    }
    out
}

/// Midnight on the first day of month `idx` (year × 12 + month0).
fn first_of_month(idx: i64) -> Option<DateTime<Utc>> {
    let year = i32::try_from(idx.div_euclid(12)).ok()?;
    let month = u32::try_from(idx.rem_euclid(12) + 1).ok()?;
    Some(
        NaiveDate::from_ymd_opt(year, month, 1)?
            .and_hms_opt(0, 0, 0)?
            .and_utc(),
    )
}

#[derive(Default)]
struct Legend {
    items: Vec<LegendItem>,
    rows: usize,
    hidden: usize,
    /// Where "+N more" goes, after the last item shown.
    end: f64,
}

struct LegendItem {
    class: usize,
    dashed: bool,
    x: f64,
    row: usize,
    text: String,
}

/// Legend entries left to right, wrapped onto at most [`LEGEND_ROWS`] rows below the dates.
fn layout_legend(drawn: &[Drawn]) -> Legend {
    const MORE: f64 = 60.0;
    let limit = WIDTH - RIGHT;
    let mut legend = Legend::default();
    let (mut x, mut row) = (LEFT, 0);
    for (i, d) in drawn.iter().enumerate() {
        let mut text = truncate(d.name, LEGEND_CHARS);
        if d.drawn() == 0 {
            text.push_str(" (no data)");
        }
        let w = 20.0 + text.chars().count() as f64 * CHAR_W + 14.0;
        let last = i + 1 == drawn.len();
        // The last row keeps room for "+N more" unless this is the last entry.
        let room = if row + 1 == LEGEND_ROWS && !last {
            MORE
        } else {
            0.0
        };
        if x + w + room > limit && x > LEFT {
            row += 1;
            x = LEFT;
        }
        if row >= LEGEND_ROWS {
            legend.hidden = drawn.len() - i;
            break;
        }
        legend.items.push(LegendItem {
            class: d.class,
            dashed: d.dashed,
            x,
            row,
            text,
        });
        x += w;
        legend.end = x;
    }
    legend.rows = legend.items.last().map_or(0, |item| item.row + 1);
    legend
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

fn safe_id(id: &str) -> String {
    let mut out = String::from("chart-");
    out.extend(id.chars().take(64).map(|c| {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            c
        } else {
            '_'
        }
    }));
    out
}

/// Escapes text for an attribute or element content. Control characters are not allowed in
/// XML and become U+FFFD. (Its own copy, so that the module depends on nothing in the crate.)
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn day(n: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap() + TimeDelta::days(n)
    }

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
    }

    fn daily(n: i64, f: impl Fn(i64) -> f64) -> Vec<(DateTime<Utc>, f64)> {
        (0..n).map(|i| (day(i), f(i))).collect()
    }

    fn chart<'a>(series: Vec<Series>, from: DateTime<Utc>, to: DateTime<Utc>) -> Chart<'a> {
        Chart {
            id: "t",
            title: "Test",
            unit: "",
            series,
            from,
            to,
            y_from_zero: false,
        }
    }

    /// Checks the SVG is well-formed: tags balanced, attributes quoted, every `&` an entity we
    /// write, nothing that is not a number where a number should be.
    fn check(svg: &str) {
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.ends_with("</svg>"));
        for bad in [
            "NaN", "inf", "Infinity", "style=", "<style", "<script", "<img",
        ] {
            assert!(!svg.contains(bad), "{bad:?} in the SVG");
        }
        let mut stack: Vec<&str> = Vec::new();
        let mut rest = svg;
        while let Some(lt) = rest.find('<') {
            text_ok(&rest[..lt]);
            rest = &rest[lt + 1..];
            let gt = rest.find('>').expect("tag not closed");
            let tag = &rest[..gt];
            rest = &rest[gt + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop(), Some(name), "mismatched </{name}>");
                continue;
            }
            let (body, closed) = match tag.strip_suffix('/') {
                Some(b) => (b, true),
                None => (tag, false),
            };
            let (name, mut attrs) = body.split_once(' ').unwrap_or((body, ""));
            assert!(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphabetic()),
                "bad tag {name:?}"
            );
            while !attrs.is_empty() {
                let (key, after) = attrs.split_once("=\"").expect("unquoted attribute");
                assert!(
                    key.chars().all(|c| c.is_ascii_alphabetic() || c == '-'),
                    "bad attribute name {key:?} in <{tag}>"
                );
                assert!(!key.starts_with("on"), "event handler {key} in <{tag}>");
                let (value, after) = after.split_once('"').expect("attribute not closed");
                text_ok(value);
                if key == "d" {
                    assert!(
                        value.chars().all(|c| "MLHVh0123456789.- ".contains(c)),
                        "bad path {value}"
                    );
                }
                attrs = after.strip_prefix(' ').unwrap_or(after);
                assert!(after.is_empty() || after.starts_with(' '), "in <{tag}>");
            }
            if !closed {
                stack.push(name);
            }
        }
        text_ok(rest);
        assert!(stack.is_empty(), "unclosed {stack:?}");
    }

    fn text_ok(t: &str) {
        assert!(!t.contains('>'), "raw > in {t:?}");
        let mut rest = t;
        while let Some(i) = rest.find('&') {
            rest = &rest[i..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&#39;"]
                    .iter()
                    .any(|e| rest.starts_with(e)),
                "bare & in {t:?}"
            );
            rest = &rest[1..];
        }
    }

    /// The value of attribute `key` on every element that has it, in order.
    fn attrs<'s>(svg: &'s str, key: &str) -> Vec<&'s str> {
        let pat = format!(" {key}=\"");
        svg.match_indices(&pat)
            .map(|(i, _)| {
                let v = &svg[i + pat.len()..];
                &v[..v.find('"').unwrap()]
            })
            .collect()
    }

    /// The `d` of each series path.
    fn series_paths(svg: &str) -> Vec<String> {
        svg.split("<path class=\"series")
            .skip(1)
            .map(|p| {
                let tag = &p[..p.find('>').unwrap()];
                attrs(tag, "d")
                    .first()
                    .map_or(String::new(), |d| d.to_string())
            })
            .collect()
    }

    fn vertices(d: &str) -> usize {
        d.matches(['M', 'L']).count()
    }

    /// The inside of `<g class="{name}">`.
    fn group<'s>(svg: &'s str, name: &str) -> &'s str {
        let start = svg.find(&format!("<g class=\"{name}\"")).unwrap();
        let g = &svg[start..];
        &g[..g.find("</g>").unwrap()]
    }

    fn texts<'s>(svg: &'s str, name: &str) -> Vec<&'s str> {
        group(svg, name)
            .split("<text ")
            .skip(1)
            .map(|t| &t[t.find('>').unwrap() + 1..t.find("</text>").unwrap()])
            .collect()
    }

    #[test]
    fn hostile_names_are_escaped() {
        let script = "<script>alert(1)</script>";
        let img = "\"><img src=x onerror=alert(1)>";
        let c = Chart {
            id: "x\" onload=\"alert(1)",
            title: "Temp & <b>bold</b>",
            unit: "<u>'",
            series: vec![
                Series::new(script, daily(5, |i| i as f64)),
                Series::new(img, daily(5, |i| i as f64)),
                Series::new("nul\u{0}bell\u{7}", daily(5, |i| i as f64)),
            ],
            from: day(0),
            to: day(4),
            y_from_zero: true,
        };
        let svg = line_chart(&c);
        check(&svg);
        assert_eq!(
            attrs(&svg, "data-series"),
            [
                "&lt;script&gt;alert(1)&lt;/script&gt;",
                "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;",
                "nul\u{FFFD}bell\u{FFFD}",
            ]
        );
        assert_eq!(attrs(&svg, "id")[0], "chart-x__onload__alert_1_");
        assert!(svg.contains("<title>Temp &amp; &lt;b&gt;bold&lt;/b&gt; (&lt;u&gt;&#39;)</title>"));
        assert!(svg.contains("<title>&lt;script&gt;alert(1)&lt;/script&gt;</title></path>"));
        // The legend shortens names, escaping after cutting (never inside an entity).
        assert!(svg.contains(">&lt;script&gt;alert(1)&lt;/scrip…</text>"));
        assert_eq!(esc("&<>\"'a"), "&amp;&lt;&gt;&quot;&#39;a");
    }

    #[test]
    fn data_points_count_points_inside_the_window() {
        // 40 daily points; the window holds days 5..=34, i.e. 30 of them.
        let s = Series::new("temp", daily(40, |i| 30.0 + (i % 7) as f64));
        let svg = line_chart(&chart(vec![s], day(5), day(34)));
        check(&svg);
        assert_eq!(attrs(&svg, "data-points"), ["30"]);
        assert_eq!(attrs(&svg, "data-drawn"), ["30"]);
        let d = &series_paths(&svg)[0];
        assert_eq!(vertices(d), 30);
        // The first and last points sit on the frame's left and right edges.
        assert!(d.starts_with("M56 "), "{d}");
        assert!(d.contains("L696 "), "{d}");
        assert_eq!(attrs(&svg, "class")[0], "chart");
        assert!(svg.contains("class=\"series s0\""));
        assert!(svg.contains("marker-mid=\"url(#chart-t-m0)\""));
        assert!(svg.contains("<marker id=\"chart-t-m0\""));
    }

    #[test]
    fn gaps_split_the_line_and_regular_spacing_does_not() {
        let mut pts = daily(10, |i| i as f64);
        pts.extend((15..25).map(|i| (day(i), i as f64)));
        let svg = line_chart(&chart(vec![Series::new("a", pts)], day(0), day(30)));
        check(&svg);
        let d = &series_paths(&svg)[0];
        assert_eq!(d.matches('M').count(), 2, "{d}");
        assert_eq!(vertices(d), 20);
        assert_eq!(attrs(&svg, "data-points"), ["20"]);

        // Every other day missing is 2× the median spacing at most: no gap.
        let pts: Vec<_> = (0..30)
            .filter(|i| i % 4 != 3)
            .map(|i| (day(i), 1.0))
            .collect();
        let svg = line_chart(&chart(vec![Series::new("a", pts)], day(0), day(30)));
        assert_eq!(series_paths(&svg)[0].matches('M').count(), 1);

        // A lone point between two gaps still shows, as a zero-length segment.
        let pts = vec![
            (day(0), 1.0),
            (day(1), 2.0),
            (day(2), 3.0),
            (day(10), 4.0),
            (day(20), 5.0),
            (day(21), 6.0),
        ];
        let svg = line_chart(&chart(vec![Series::new("a", pts)], day(0), day(21)));
        check(&svg);
        let d = &series_paths(&svg)[0];
        assert_eq!(d.matches('M').count(), 3, "{d}");
        assert_eq!(d.matches("h0").count(), 1, "{d}");
    }

    #[test]
    fn a_year_of_four_series_stays_under_budget() {
        let series = vec![
            Series::new("reallocated sectors", daily(365, |i| (i / 30) as f64)),
            Series::new("pending sectors", daily(365, |i| ((i * 7919) % 13) as f64)),
            Series::counter(
                "CRC errors",
                &(0..365)
                    .map(|i| (day(i), i64::MAX - 1_000_000 * (365 - i)))
                    .collect::<Vec<_>>(),
            ),
            Series::new(
                "media errors",
                daily(365, |i| (i as f64 * 1.37).sin() * 1e6),
            ),
        ];
        let c = Chart {
            id: "errors",
            title: "Error counters",
            unit: "errors",
            series,
            from: day(0),
            to: day(364),
            y_from_zero: true,
        };
        let svg = line_chart(&c);
        check(&svg);
        eprintln!("365 points x 4 series: {} bytes", svg.len());
        assert!(svg.len() < 40_000, "{} bytes", svg.len());
        assert_eq!(attrs(&svg, "data-points"), ["365"; 4]);
        assert_eq!(attrs(&svg, "data-drawn"), ["365"; 4]);
        for d in series_paths(&svg) {
            assert_eq!(vertices(&d), 365);
        }
        // Four series: a legend with four keys, each naming its series.
        assert_eq!(
            texts(&svg, "legend"),
            [
                "reallocated sectors",
                "pending sectors",
                "CRC errors",
                "media errors"
            ]
        );
        assert_eq!(svg.matches("class=\"key s").count(), 4);
    }

    #[test]
    fn too_many_points_keep_each_columns_extremes() {
        // 10 points an hour for 90 days: 21,600 points on 640 columns.
        let from = day(0);
        let pts: Vec<_> = (0..21_600i64)
            .map(|i| {
                let v = match i {
                    10_000 => 500.0,
                    15_000 => -300.0,
                    _ => (i % 10) as f64,
                };
                (from + TimeDelta::minutes(6 * i), v)
            })
            .collect();
        let svg = line_chart(&chart(vec![Series::new("a", pts)], from, day(90)));
        check(&svg);
        assert_eq!(attrs(&svg, "data-points"), ["21600"]);
        let drawn: usize = attrs(&svg, "data-drawn")[0].parse().unwrap();
        assert!((640..=2 * 641).contains(&drawn), "{drawn}");
        assert_eq!(vertices(&series_paths(&svg)[0]), drawn);
        // The spike and the dip survive: they are the y axis's extremes.
        assert!(svg.contains("<desc>a: 21600 points, min -300, max 500, last 9</desc>"));
        assert!(svg.contains("min -300"));

        let plot = Plot {
            left: 0.0,
            top: 0.0,
            right: 2.0,
            bottom: 1.0,
            a: 0.0,
            b: 8.0,
        };
        // Two columns: x = ms / 4. Column 0 keeps its first point, 9 and -4; column 1 keeps 3
        // and 8 and the run's last point, and drops 7.
        let seg: Vec<Pt> = [
            (0.0, 1.0),
            (1.0, 9.0),
            (2.0, -4.0),
            (3.0, 2.0),
            (5.0, 7.0),
            (6.0, 3.0),
            (7.0, 8.0),
            (7.5, 5.0),
        ]
        .into();
        assert_eq!(
            thin(vec![seg], &plot),
            [vec![
                (0.0, 1.0),
                (1.0, 9.0),
                (2.0, -4.0),
                (6.0, 3.0),
                (7.0, 8.0),
                (7.5, 5.0)
            ]]
        );
    }

    #[test]
    fn dashed_forecast_is_cut_at_the_window_edge() {
        let used = Series::new("/var", daily(30, |i| 50.0 + i as f64));
        // From today at 79 % to full (100 %) in 21 days, beyond the window's end.
        let forecast = Series {
            name: "/var forecast".into(),
            points: vec![(day(29), 79.0), (day(50), 100.0)],
            dashed: true,
        };
        let c = Chart {
            unit: "%",
            y_from_zero: true,
            ..chart(vec![used, forecast], day(0), day(36))
        };
        let svg = line_chart(&c);
        check(&svg);
        assert!(svg.contains("class=\"series s1 dashed\""));
        assert_eq!(attrs(&svg, "data-points"), ["30", "1"]);
        assert_eq!(attrs(&svg, "data-drawn"), ["30", "2"]);
        let d = &series_paths(&svg)[1];
        assert!(d.starts_with("M") && d.contains("L696 "), "{d}");
        // Only the reports are marked.
        assert_eq!(svg.matches("marker-mid=").count(), 1);
        assert_eq!(
            texts(&svg, "ylab"),
            ["0%", "20%", "40%", "60%", "80%", "100%"]
        );
        // 79 + 7/21 × 21 = 86 at the edge: the line keeps its slope.
        assert!(svg.contains("/var forecast: 1 point, min 79%, max 86%, last 86%"));
    }

    #[test]
    fn edge_cases_render_without_nan() {
        let big = i64::MAX as f64;
        let cases: Vec<(&str, Chart)> = vec![
            ("no series", chart(vec![], day(0), day(7))),
            (
                "empty series",
                chart(vec![Series::new("a", vec![])], day(0), day(7)),
            ),
            (
                "single point",
                chart(vec![Series::new("a", vec![(day(3), 5.0)])], day(0), day(7)),
            ),
            (
                "all equal",
                chart(vec![Series::new("a", daily(8, |_| 42.0))], day(0), day(7)),
            ),
            (
                "all zero",
                chart(vec![Series::new("a", daily(8, |_| 0.0))], day(0), day(7)),
            ),
            (
                "near i64::MAX",
                chart(
                    vec![Series::new("a", daily(8, |i| big - i as f64 * 1024.0))],
                    day(0),
                    day(7),
                ),
            ),
            (
                "0 and i64::MAX",
                chart(
                    vec![Series::new(
                        "a",
                        daily(8, |i| if i % 2 == 0 { 0.0 } else { big }),
                    )],
                    day(0),
                    day(7),
                ),
            ),
            (
                "i64::MIN..i64::MAX",
                chart(
                    vec![Series::new("a", vec![(day(1), -big), (day(2), big)])],
                    day(0),
                    day(7),
                ),
            ),
            (
                "negative",
                chart(
                    vec![Series::new("a", daily(8, |i| -(i as f64) - 3.0))],
                    day(0),
                    day(7),
                ),
            ),
            (
                "all outside",
                chart(
                    vec![Series::new("a", daily(8, |i| i as f64))],
                    day(20),
                    day(27),
                ),
            ),
            (
                "from == to",
                chart(vec![Series::new("a", vec![(day(3), 1.0)])], day(3), day(3)),
            ),
            (
                "to before from",
                chart(
                    vec![Series::new("a", daily(8, |i| i as f64))],
                    day(7),
                    day(0),
                ),
            ),
            (
                "non-finite and huge",
                chart(
                    vec![Series::new(
                        "a",
                        vec![
                            (day(1), f64::NAN),
                            (day(2), f64::INFINITY),
                            (day(3), f64::MAX),
                            (day(4), -f64::MAX),
                            (day(5), f64::MIN_POSITIVE / 4.0),
                        ],
                    )],
                    day(0),
                    day(7),
                ),
            ),
            (
                "unsorted duplicates",
                chart(
                    vec![Series::new(
                        "a",
                        vec![(day(3), 1.0), (day(1), 2.0), (day(3), 3.0), (day(1), 4.0)],
                    )],
                    day(0),
                    day(7),
                ),
            ),
            (
                "extreme window",
                chart(
                    vec![Series::new("a", vec![(day(1), 1.0)])],
                    DateTime::<Utc>::MIN_UTC,
                    DateTime::<Utc>::MAX_UTC,
                ),
            ),
            (
                "twenty series",
                chart(
                    (0..20)
                        .map(|i| {
                            Series::new(format!("a rather long series name {i}"), daily(8, |_| 1.0))
                        })
                        .collect(),
                    day(0),
                    day(7),
                ),
            ),
        ];
        for (what, c) in &cases {
            let svg = line_chart(c);
            check(&svg);
            assert!(svg.len() < 40_000, "{what}");
            eprintln!("{what}: {} bytes", svg.len());
        }
        let svg = |i: usize| line_chart(&cases[i].1);

        for i in [0, 1, 9] {
            assert!(
                svg(i).contains(">no data in this period</text>"),
                "{}",
                cases[i].0
            );
        }
        assert!(svg(1).contains("data-points=\"0\" data-drawn=\"0\"><title>"));
        assert!(svg(2).contains("data-points=\"1\""));
        assert!(series_paths(&svg(2))[0].ends_with("h0"));
        assert_eq!(
            texts(&svg(3), "ylab"),
            ["36", "38", "40", "42", "44", "46", "48"]
        );
        assert_eq!(texts(&svg(4), "ylab"), ["0", "1"]);
        assert_eq!(texts(&svg(6), "ylab"), ["0", "2E", "4E", "6E", "8E", "10E"]);
        assert_eq!(texts(&svg(8), "ylab"), ["-10", "-8", "-6", "-4", "-2"]);
        assert!(svg(7).contains("<path class=\"zero\""));
        // from == to: the point sits in the middle of a day-wide window.
        let d = &series_paths(&svg(10))[0];
        assert!(d.starts_with("M376 ") && d.ends_with("h0"), "{d}");
        assert_eq!(attrs(&svg(11), "data-points"), ["8"]);
        assert_eq!(attrs(&svg(12), "data-points"), ["3"]);
        assert_eq!(attrs(&svg(13), "data-points"), ["4"]);
        let many = svg(15);
        assert_eq!(many.matches("<path class=\"series").count(), 20);
        let shown = many.matches("class=\"key s").count();
        assert!((4..20).contains(&shown), "{shown}");
        assert!(many.contains(&format!(">+{} more</text>", 20 - shown)));
    }

    #[test]
    fn y_ticks_are_nice_and_compact() {
        let labels = |lo: f64, hi: f64, zero: bool, int: bool, unit: &str| {
            let a = y_axis(lo, hi, zero, int);
            a.ticks
                .iter()
                .map(|&v| tick_label(v, a.step, unit))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            labels(3.0, 97.0, true, false, "%"),
            ["0%", "20%", "40%", "60%", "80%", "100%"]
        );
        assert_eq!(
            labels(31.0, 47.0, false, true, "°C"),
            ["30°C", "35°C", "40°C", "45°C", "50°C"]
        );
        assert_eq!(
            labels(0.0, 1_234_567.0, true, true, ""),
            ["0", "500k", "1M", "1.5M"]
        );
        assert_eq!(
            labels(0.0, 1_700.0, true, true, "errors"),
            ["0", "500", "1k", "1.5k", "2k"]
        );
        assert_eq!(
            labels(0.0, 5e9, true, true, ""),
            ["0", "1G", "2G", "3G", "4G", "5G"]
        );
        assert_eq!(labels(0.0, 3.0, true, true, ""), ["0", "1", "2", "3"]);
        assert_eq!(
            labels(0.1, 0.35, false, false, ""),
            ["0.1", "0.15", "0.2", "0.25", "0.3", "0.35"]
        );
        assert_eq!(
            labels(-37.0, 12.0, false, true, ""),
            ["-40", "-30", "-20", "-10", "0", "10", "20"]
        );
        assert_eq!(
            labels(1_000_000.0, 1_000_050.0, false, true, "")[0],
            "1000000"
        );
        assert_eq!(tick_label(1234.0, 100.0, ""), "1.2k");
        assert_eq!(tick_label(3.4e6, 1e5, ""), "3.4M");
        assert_eq!(tick_label(5e9, 1e9, ""), "5G");
        assert_eq!(tick_label(12.5, 0.5, "%"), "12.5%");
        assert_eq!(tick_label(-0.0, 1.0, "°C"), "0°C");
    }

    #[test]
    fn x_ticks_are_dates_that_do_not_overlap() {
        let labels = |from, to| {
            x_ticks(from, to, 8)
                .into_iter()
                .map(|(_, l)| l)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            labels(at(2024, 12, 1), at(2024, 12, 8)),
            [
                "Dec 01", "Dec 02", "Dec 03", "Dec 04", "Dec 05", "Dec 06", "Dec 07", "Dec 08"
            ]
        );
        // Mondays.
        assert_eq!(
            labels(at(2024, 11, 8), at(2024, 12, 8)),
            ["Nov 11", "Nov 18", "Nov 25", "Dec 02"]
        );
        assert_eq!(
            labels(at(2024, 9, 9), at(2024, 12, 8)),
            ["Sep 16", "Sep 30", "Oct 14", "Oct 28", "Nov 11", "Nov 25"]
        );
        assert_eq!(
            labels(at(2023, 12, 8), at(2024, 12, 7)),
            [
                "Jan 2024", "Mar 2024", "May 2024", "Jul 2024", "Sep 2024", "Nov 2024"
            ]
        );
        assert_eq!(
            labels(at(2024, 3, 5), at(2024, 3, 5) + TimeDelta::days(1)),
            [
                "Mar 05", "03:00", "06:00", "09:00", "12:00", "15:00", "18:00", "21:00", "Mar 06"
            ]
        );
        // In the chart, for every range: label centres at least MIN_TICK_GAP apart, which is
        // wider than the widest label.
        for days in [1, 7, 30, 90, 365, 3650] {
            let (from, to) = (at(2024, 1, 1), at(2024, 1, 1) + TimeDelta::days(days));
            let svg = line_chart(&chart(vec![], from, to));
            let xs: Vec<f64> = attrs(group(&svg, "xlab"), "x")
                .iter()
                .map(|x| x.parse().unwrap())
                .collect();
            let widest = texts(&svg, "xlab")
                .iter()
                .map(|t| t.chars().count())
                .max()
                .unwrap();
            assert!((3..=9).contains(&xs.len()), "{days} days: {xs:?}");
            assert!(widest as f64 * CHAR_W < MIN_TICK_GAP);
            for w in xs.windows(2) {
                assert!(w[1] - w[0] >= 72.0, "{days} days: {xs:?}");
            }
        }
    }

    #[test]
    fn sparkline_draws_the_trend() {
        let pts = daily(400, |i| (i / 10) as f64);
        let s = sparkline(&pts);
        check(&s);
        assert!(s.contains("width=\"120\" height=\"24\""));
        assert_eq!(attrs(&s, "data-points"), ["400"]);
        let drawn: usize = attrs(&s, "data-drawn")[0].parse().unwrap();
        assert!(drawn <= 2 * 117, "{drawn}");
        assert_eq!(vertices(attrs(&s, "d")[0]), drawn);
        assert!(s.contains(
            "aria-label=\"400 points, 2024-01-01 to 2025-02-03: min 0, max 39, last 39\""
        ));
        // Newest point: the right end, at the top.
        assert!(s.contains("cx=\"118\" cy=\"2\""), "{s}");

        for pts in [
            vec![],
            vec![(day(0), 7.0)],
            daily(5, |_| 3.0),
            vec![(day(0), f64::NAN)],
            daily(5, |i| if i == 2 { i64::MAX as f64 } else { 0.0 }),
        ] {
            let s = sparkline(&pts);
            check(&s);
            assert!(s.len() < 1_000);
        }
        assert!(sparkline(&[]).contains(">no data</text>"));
        assert!(sparkline(&[(day(0), 7.0)]).contains("d=\"M60 12h0\""));
        assert!(sparkline(&daily(5, |_| 3.0)).contains("d=\"M2 12L31 12"));
    }

    #[test]
    fn css_styles_every_class_the_svg_uses() {
        for n in 0..8 {
            assert_eq!(CHART_CSS.matches(&format!(".chart .s{n}{{")).count(), 2);
        }
        assert!(CHART_CSS.contains("@media (prefers-color-scheme:dark){"));
        for class in [
            "ttl",
            "nodata",
            "grid",
            "zero",
            "frame",
            "series",
            "dashed",
            "key",
            "dot",
            "spark-line",
            "spark-last",
            "spark-none",
        ] {
            assert!(CHART_CSS.contains(&format!(".{class}{{")), "{class}");
        }
        assert_eq!(
            CHART_CSS.matches('{').count(),
            CHART_CSS.matches('}').count()
        );
        let svg = line_chart(&chart(
            vec![Series::new("a", daily(3, |i| i as f64))],
            day(0),
            day(2),
        ));
        for class in attrs(&svg, "class") {
            for c in class.split(' ') {
                assert!(
                    CHART_CSS.contains(&format!(".{c}"))
                        || ["chart", "ylab", "xlab", "lines", "legend"].contains(&c),
                    "{c}"
                );
            }
        }
    }
}
