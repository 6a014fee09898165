//! The report's charts as inline SVG, drawn here rather than by a charting library so that the
//! page needs no script and no network: a time-series chart (lines or stacked bars over the run
//! history, with a second axis for one line), and horizontal bars for per-item figures.
//!
//! Every text that reaches the SVG goes through `util::escape::html` (names, labels); numbers
//! are formatted here.

use crate::util::escape::html;
use std::fmt::Write as _;

/// Width and height of every chart's drawing, in SVG units (the page scales it to its width).
pub const W: f64 = 900.0;
const H: f64 = 260.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 70.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 44.0;

/// The colours of series, in order (distinct in print and for the common colour blindnesses).
pub const PALETTE: [&str; 8] = [
    "#1f77b4", "#d95f02", "#1b9e77", "#7570b3", "#e7298a", "#a6761d", "#666666", "#e6ab02",
];

/// What an axis counts, which decides its ticks and their labels.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fmt {
    /// Bytes: ticks on round numbers of a binary unit, labelled "4.0 MiB".
    Bytes,
    /// Counts and other plain numbers.
    Number,
}

impl Fmt {
    fn label(self, v: f64) -> String {
        match self {
            Fmt::Bytes => crate::util::units::human_bytes(v),
            Fmt::Number => fmt_num(v),
        }
    }
}

/// A number with at most two decimals, trailing zeros dropped (0.25, 2.5, 10), or in thousands
/// and millions when large.
pub fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        return format!("{:.1}M", v / 1e6);
    }
    if v >= 1e4 {
        return format!("{:.0}k", v / 1e3);
    }
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// One series of a time chart.
pub struct Series {
    pub name: String,
    pub color: &'static str,
    /// One value per bucket; None draws nothing there (a gap in a line).
    pub values: Vec<Option<f64>>,
    /// Drawn against the right-hand axis (a line only).
    pub right: bool,
}

/// A time chart's x axis: `n` buckets of `width` seconds from `t0`.
#[derive(Clone, Copy)]
pub struct TimeAxis {
    pub t0: f64,
    pub width: f64,
    pub n: usize,
}

/// Ticks of an axis: round numbers, or for bytes round numbers of the binary unit the maximum
/// is in (1, 2, 4 MiB rather than 1.0, 1.9, 3.8 MiB).
fn axis_ticks(max: f64, fmt: Fmt) -> Vec<f64> {
    if fmt == Fmt::Bytes && max >= 1024.0 {
        let unit = 1024f64.powf((max.log(1024.0)).floor());
        return ticks(max / unit).into_iter().map(|t| t * unit).collect();
    }
    ticks(max)
}

/// Round numbers from 0 to at least `max`, about five of them.
fn ticks(max: f64) -> Vec<f64> {
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| max / s <= 5.0)
        .unwrap_or(10.0 * mag);
    let top = (max / step).ceil() as usize;
    // Rounded so that 3 × 0.2 is labelled 0.6.
    (0..=top)
        .map(|i| (i as f64 * step * 1e9).round() / 1e9)
        .collect()
}

/// Tick times on round clock values (UTC), about six over the span, with their labels.
fn time_ticks(t0: f64, t1: f64) -> Vec<(f64, String)> {
    const STEPS: [f64; 20] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
        10800.0, 21600.0, 43200.0, 86400.0, 172800.0, 604800.0,
    ];
    let span = (t1 - t0).max(1.0);
    let step = STEPS
        .iter()
        .copied()
        .find(|s| span / s <= 7.0)
        .unwrap_or(span / 6.0);
    let mut out = Vec::new();
    let mut t = (t0 / step).ceil() * step;
    while t <= t1 && out.len() < 12 {
        out.push((t, clock(t, step)));
        t += step;
    }
    out
}

/// A time as a tick shows it: the date at midnight and for steps of a day or more, else the
/// time of day (with seconds when the step is under a minute).
pub fn clock(t: f64, step: f64) -> String {
    let secs = t.round() as i64;
    let (days, s) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (_, m, d) = crate::util::time::civil_from_days(days);
    let (hh, mm, ss) = (s / 3600, s / 60 % 60, s % 60);
    if step >= 86_400.0 || s == 0 {
        format!("{m:02}-{d:02}")
    } else if step < 60.0 {
        format!("{hh:02}:{mm:02}:{ss:02}")
    } else {
        format!("{hh:02}:{mm:02}")
    }
}

fn num(v: f64) -> String {
    format!("{:.1}", v)
}

/// The frame of a time chart: axes, grid, tick labels and axis titles.
fn frame(
    out: &mut String,
    x: &TimeAxis,
    left: (&[f64], Fmt, &str),
    right: Option<(&[f64], Fmt, &str)>,
) {
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let t1 = x.t0 + x.width * x.n as f64;
    let ymax = left.0.last().copied().unwrap_or(1.0).max(f64::MIN_POSITIVE);
    for v in left.0 {
        let y = TOP + ph - v / ymax * ph;
        let _ = write!(
            out,
            r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end" class="tick">{}</text>"##,
            num(LEFT),
            num(y),
            num(LEFT + pw),
            num(y),
            num(LEFT - 6.0),
            num(y + 4.0),
            html(&left.1.label(*v))
        );
    }
    if let Some((vals, fmt, _)) = right {
        let rmax = vals.last().copied().unwrap_or(1.0).max(f64::MIN_POSITIVE);
        for v in vals {
            let y = TOP + ph - v / rmax * ph;
            let _ = write!(
                out,
                r#"<text x="{}" y="{}" class="tick">{}</text>"#,
                num(LEFT + pw + 6.0),
                num(y + 4.0),
                html(&fmt.label(*v))
            );
        }
    }
    for (t, label) in time_ticks(x.t0, t1) {
        let px = LEFT + (t - x.t0) / (t1 - x.t0).max(f64::MIN_POSITIVE) * pw;
        let _ = write!(
            out,
            r##"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="#eee"/><line x1="{0}" y1="{2}" x2="{0}" y2="{3}" stroke="#333"/><text x="{0}" y="{4}" text-anchor="middle" class="tick">{5}</text>"##,
            num(px),
            num(TOP),
            num(TOP + ph),
            num(TOP + ph + 5.0),
            num(TOP + ph + 18.0),
            html(&label)
        );
    }
    let _ = write!(
        out,
        r##"<line x1="{l}" y1="{b}" x2="{r}" y2="{b}" stroke="#333"/><line x1="{l}" y1="{t}" x2="{l}" y2="{b}" stroke="#333"/>"##,
        l = num(LEFT),
        r = num(LEFT + pw),
        t = num(TOP),
        b = num(TOP + ph)
    );
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle" class="axis">time (UTC)</text><text transform="translate(14 {}) rotate(-90)" text-anchor="middle" class="axis">{}</text>"#,
        num(LEFT + pw / 2.0),
        num(H - 6.0),
        num(TOP + ph / 2.0),
        html(left.2)
    );
    if let Some((_, _, title)) = right {
        let _ = write!(
            out,
            r#"<text transform="translate({} {}) rotate(90)" text-anchor="middle" class="axis">{}</text>"#,
            num(W - 8.0),
            num(TOP + ph / 2.0),
            html(title)
        );
    }
}

fn legend(out: &mut String, series: &[(&str, &str)]) {
    out.push_str(r#"<div class="legend">"#);
    for (name, color) in series {
        let _ = write!(
            out,
            r#"<span><i style="background:{color}"></i>{}</span>"#,
            html(name)
        );
    }
    out.push_str("</div>");
}

/// Lines over time (`bars` false) or bars stacked per bucket (`bars` true; right-axis series
/// are drawn as lines over them). `attrs` goes into the `<svg>` tag as it is (data attributes
/// the caller built from numbers). `label` is the chart's accessible name.
#[allow(clippy::too_many_arguments)]
pub fn time_chart(
    label: &str,
    x: &TimeAxis,
    series: &[Series],
    bars: bool,
    y: (Fmt, &str),
    right: Option<(Fmt, &str)>,
    attrs: &str,
) -> String {
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let n = x.n.max(1);
    let left_max = if bars {
        (0..n)
            .map(|i| {
                series
                    .iter()
                    .filter(|s| !s.right)
                    .map(|s| s.values.get(i).copied().flatten().unwrap_or(0.0))
                    .sum::<f64>()
            })
            .fold(0.0, f64::max)
    } else {
        series
            .iter()
            .filter(|s| !s.right)
            .flat_map(|s| s.values.iter().flatten())
            .copied()
            .fold(0.0, f64::max)
    };
    let right_max = series
        .iter()
        .filter(|s| s.right)
        .flat_map(|s| s.values.iter().flatten())
        .copied()
        .fold(0.0, f64::max);
    let (lt, rt) = (
        axis_ticks(left_max, y.0),
        axis_ticks(right_max, right.map_or(y.0, |r| r.0)),
    );
    let (lmax, rmax) = (
        lt.last().copied().unwrap_or(1.0),
        rt.last().copied().unwrap_or(1.0),
    );
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg viewBox="0 0 {W} {H}" role="img" aria-label="{}" {attrs}>"#,
        html(label)
    );
    frame(
        &mut out,
        x,
        (&lt, y.0, y.1),
        right.map(|(f, t)| (rt.as_slice(), f, t)),
    );
    let bw = pw / n as f64;
    let px = |i: usize| LEFT + (i as f64 + 0.5) * bw;
    let py = |v: f64, max: f64| TOP + ph - v / max * ph;
    if bars {
        let mut base = vec![0.0; n];
        for s in series.iter().filter(|s| !s.right) {
            for (i, v) in s.values.iter().enumerate().take(n) {
                let v = v.unwrap_or(0.0);
                if v <= 0.0 {
                    continue;
                }
                let (y0, y1) = (py(base[i], lmax), py(base[i] + v, lmax));
                let _ = write!(
                    out,
                    r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{}"/>"#,
                    num(LEFT + i as f64 * bw + bw * 0.1),
                    num(y1),
                    num((bw * 0.8).max(0.5)),
                    num((y0 - y1).max(0.5)),
                    s.color
                );
                base[i] += v;
            }
        }
    }
    for s in series.iter().filter(|s| s.right || !bars) {
        let max = if s.right { rmax } else { lmax };
        let mut d = String::new();
        let mut pen = false;
        for (i, v) in s.values.iter().enumerate().take(n) {
            let next = s.values.get(i + 1).copied().flatten();
            match v {
                // A point with no neighbour draws no line: a dot shows it.
                Some(v) if !pen && next.is_none() => {
                    let _ = write!(
                        out,
                        r#"<circle cx="{}" cy="{}" r="3" fill="{}"/>"#,
                        num(px(i)),
                        num(py(*v, max)),
                        s.color
                    );
                }
                Some(v) => {
                    let _ = write!(
                        d,
                        "{}{} {} ",
                        if pen { "L" } else { "M" },
                        num(px(i)),
                        num(py(*v, max))
                    );
                    pen = true;
                }
                None => pen = false,
            }
        }
        if !d.is_empty() {
            let dash = if s.right && !bars {
                r#" stroke-dasharray="5 3""#
            } else {
                ""
            };
            let _ = write!(
                out,
                r#"<path d="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                d.trim_end(),
                s.color
            );
        }
    }
    out.push_str("</svg>");
    legend(
        &mut out,
        &series
            .iter()
            .map(|s| (s.name.as_str(), s.color))
            .collect::<Vec<_>>(),
    );
    out
}

/// One row of a horizontal bar chart.
pub struct Bar {
    pub label: String,
    pub value: f64,
    /// What the row's end says (the value formatted, with anything else worth saying).
    pub text: String,
}

/// Horizontal bars, one per row, scaled to the largest. `attrs` as for `time_chart`.
pub fn hbars(label: &str, rows: &[Bar], color: &str, attrs: &str) -> String {
    const ROW: f64 = 22.0;
    const LABEL: f64 = 230.0;
    let h = ROW * rows.len().max(1) as f64 + 8.0;
    let max = rows.iter().map(|r| r.value).fold(0.0, f64::max);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg viewBox="0 0 {W} {}" role="img" aria-label="{}" {attrs}>"#,
        num(h),
        html(label)
    );
    for (i, r) in rows.iter().enumerate() {
        let y = 4.0 + i as f64 * ROW;
        let len = if max > 0.0 {
            r.value / max * (W - LABEL - 260.0)
        } else {
            0.0
        };
        // Long labels (paths) are cut for the drawing; the table beside it has them whole.
        let shown: String = if r.label.chars().count() > 34 {
            let tail: String = r
                .label
                .chars()
                .rev()
                .take(33)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!("…{tail}")
        } else {
            r.label.clone()
        };
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" text-anchor="end" class="tick"><title>{}</title>{}</text><rect x="{}" y="{}" width="{}" height="{}" fill="{color}"/><text x="{}" y="{}" class="tick">{}</text>"##,
            num(LABEL - 8.0),
            num(y + 15.0),
            html(&r.label),
            html(&shown),
            num(LABEL),
            num(y + 3.0),
            num(len.max(if r.value > 0.0 { 1.0 } else { 0.0 })),
            num(ROW - 8.0),
            num(LABEL + len + 6.0),
            num(y + 15.0),
            html(&r.text)
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_maximum() {
        assert_eq!(ticks(9.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(1000.0), vec![0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]);
        assert_eq!(ticks(0.0), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        let t = ticks(123_456.0);
        assert!(*t.last().unwrap() >= 123_456.0 && t.len() <= 7, "{t:?}");
    }

    #[test]
    fn time_ticks_fall_on_round_clock_times() {
        // 2023-11-14 22:13:20 UTC, over three hours: a tick every half hour, midnight as the
        // date.
        let t = time_ticks(1_700_000_000.0, 1_700_010_800.0);
        assert_eq!(t.first().unwrap().1, "22:30");
        assert!(t.iter().any(|(_, l)| l == "11-15"), "{t:?}");
        assert!(t.len() <= 7);
    }

    #[test]
    fn text_in_charts_is_escaped() {
        let s = hbars(
            "<x>",
            &[Bar {
                label: "<script>\"'&".into(),
                value: 1.0,
                text: "1 <b>".into(),
            }],
            "#000",
            "",
        );
        assert!(
            !s.contains("<script>") && !s.contains("<b>") && !s.contains("<x>"),
            "{s}"
        );
        assert!(s.contains("&lt;script&gt;&quot;&#39;&amp;"), "{s}");
    }
}
