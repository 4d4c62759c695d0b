//! The copy plot (time against size), with the run's provenance.

use super::ids;
use super::*;

/// One plotted line: legend label and note, colour, dashed (Linux), and
/// its (bytes, ns) points sorted by size.
struct Series {
    label: &'static str,
    note: &'static str,
    colour: &'static str,
    dashed: bool,
    pts: Vec<(f64, f64)>,
}

/// machvm's kinds of copy: benchmark id, label, note, colour.
const MACHVM: [(&str, &str, &str, &str); 4] = [
    (
        ids::VIRTUAL_UNTOUCHED,
        "virtual copy, untouched",
        "machvm; moves no byte",
        "#1f77b4",
    ),
    (
        ids::VIRTUAL_RESIDENT,
        "virtual copy, resident",
        "machvm; write-protects, moves no byte",
        "#2ca02c",
    ),
    (ids::EAGER, "eager copy (bytes)", "machvm", "#d62728"),
    (
        ids::MEMCPY,
        "memcpy (host glibc)",
        "moves every byte",
        "#7f7f7f",
    ),
];

/// The probe's key prefix for `mprotect(PROT_READ)` of a resident range.
const LINUX_MPROTECT: &str = "linux_mprotect_ns_";

/// Image size and margins (left, right, top, bottom), in pixels.
const W: f64 = 820.0;
const H: f64 = 540.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 270.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 100.0;

/// The copy plot: time against size, log-log, one line per kind of copy,
/// Linux's write-protect of the same resident range where measured.
pub(super) fn copy_svg(i: &Input) -> String {
    let lines = series(i);
    let all: Vec<(f64, f64)> = lines.iter().flat_map(|l| l.pts.iter().copied()).collect();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"18\" font-size=\"14\">machvm: copy time against size (median, log-log)</text>\n"
    );
    provenance(&mut svg, i);
    let Some(plot) = Plot::fitting(&all) else {
        svg.push_str("<text x=\"90\" y=\"100\">no copy results</text>\n</svg>\n");
        return svg;
    };
    let _ = writeln!(
        svg,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>",
        plot.pw, plot.ph
    );
    plot.time_grid(&mut svg);
    plot.size_grid(&mut svg);
    for (k, line) in lines.iter().filter(|l| !l.pts.is_empty()).enumerate() {
        plot.line(&mut svg, k, line);
    }
    svg.push_str("</svg>\n");
    svg
}

/// Machine, date, commit, profile and where Linux's figures come from,
/// under the plot.
fn provenance(svg: &mut String, i: &Input) {
    let run = if i.quick {
        "quick run (smoke test: short, noisy)"
    } else {
        "full run"
    };
    let linux = match i.linux.as_ref().and_then(|l| l.get("linux_release")) {
        Some(r) => format!("Linux series: measured in this run by linux-probe on Linux {r}"),
        None => "Linux not measured in this run (no --vs-linux): no Linux series".into(),
    };
    for (k, text) in [
        format!("{} · {} · commit {} · {run}", i.machine, i.date, i.commit),
        linux,
    ]
    .iter()
    .enumerate()
    {
        let _ = writeln!(
            svg,
            "<text x=\"10\" y=\"{:.1}\" font-size=\"11\" fill=\"#444\">{}</text>",
            H - 26.0 + 15.0 * k as f64,
            xml(text)
        );
    }
}

/// `text` with XML's special characters escaped.
fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// machvm's series from the medians, then Linux's from the probe.
fn series(i: &Input) -> Vec<Series> {
    let mut out: Vec<Series> = MACHVM
        .iter()
        .map(|&(id, label, note, colour)| {
            let prefix = ids::prefix(ids::COPY, id);
            let pts = i
                .medians
                .iter()
                .filter_map(|(k, &v)| Some((k.strip_prefix(&prefix)?.parse::<f64>().ok()?, v)))
                .collect();
            Series {
                label,
                note,
                colour,
                dashed: false,
                pts: sorted(pts),
            }
        })
        .collect();
    let linux = i.linux.iter().flatten().filter_map(|(k, v)| {
        Some((
            k.strip_prefix(LINUX_MPROTECT)?.parse::<f64>().ok()?,
            v.parse::<f64>().ok()?,
        ))
    });
    out.push(Series {
        label: "Linux mprotect(PROT_READ)",
        note: "same resident range; system call",
        colour: "#9467bd",
        dashed: true,
        pts: sorted(linux.collect()),
    });
    out
}

/// `pts` in ascending size.
fn sorted(mut pts: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    pts
}

/// log10, floored at 10⁻³ so that a zero stays plottable.
fn lg(v: f64) -> f64 {
    v.max(1e-3).log10()
}

/// The plotting area: its size and the decades (log10) it spans.
struct Plot {
    pw: f64,
    ph: f64,
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Plot {
    /// An area spanning every point (at least a decade each way); `None`
    /// without points.
    fn fitting(all: &[(f64, f64)]) -> Option<Plot> {
        if all.is_empty() {
            return None;
        }
        let x0 = all.iter().map(|p| lg(p.0)).fold(f64::MAX, f64::min);
        let x1 = all
            .iter()
            .map(|p| lg(p.0))
            .fold(f64::MIN, f64::max)
            .max(x0 + 1.0);
        let y0 = all.iter().map(|p| lg(p.1)).fold(f64::MAX, f64::min).floor();
        let y1 = all
            .iter()
            .map(|p| lg(p.1))
            .fold(f64::MIN, f64::max)
            .ceil()
            .max(y0 + 1.0);
        let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
        Some(Plot {
            pw,
            ph,
            x0,
            x1,
            y0,
            y1,
        })
    }

    fn px(&self, v: f64) -> f64 {
        LEFT + (lg(v) - self.x0) / (self.x1 - self.x0) * self.pw
    }

    fn py(&self, v: f64) -> f64 {
        TOP + self.ph - (lg(v) - self.y0) / (self.y1 - self.y0) * self.ph
    }

    /// A grid line and label per decade of time, and the axis title with
    /// the units its labels use.
    fn time_grid(&self, svg: &mut String) {
        let mut units: Vec<String> = Vec::new();
        let mut d = self.y0 as i32;
        while d as f64 <= self.y1 {
            let y = self.py(10f64.powi(d));
            let label = fmt_decade(d);
            if let Some(u) = label
                .split(' ')
                .nth(1)
                .filter(|u| !units.iter().any(|x| x == u))
            {
                units.push(u.to_string());
            }
            let _ = writeln!(
                svg,
                "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
                LEFT + self.pw,
                LEFT - 6.0,
                y + 4.0,
            );
            d += 1;
        }
        let (x, y) = (18.0, TOP + self.ph / 2.0);
        let _ = writeln!(
            svg,
            "<text x=\"{x}\" y=\"{y:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 {x} {y:.1})\">\
             time per copy, median ({}; log scale)</text>",
            units.join(", ")
        );
    }

    /// A grid line and label per power of 4 of size, and the axis title.
    fn size_grid(&self, svg: &mut String) {
        let mut s = 10f64.powf(self.x0).round();
        while lg(s) <= self.x1 + 1e-9 {
            let x = self.px(s);
            let _ = writeln!(
                svg,
                "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>\
                 <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                TOP + self.ph,
                TOP + self.ph + 16.0,
                fmt_bytes(s as u64)
            );
            s *= 4.0;
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">copy size (bytes; log scale)</text>",
            LEFT + self.pw / 2.0,
            TOP + self.ph + 36.0
        );
    }

    /// Series `k`: its line, its points and its legend entry (label and
    /// note).
    fn line(&self, svg: &mut String, k: usize, s: &Series) {
        let path: Vec<String> = s
            .pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", self.px(x), self.py(y)))
            .collect();
        let dash = if s.dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let colour = s.colour;
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
            path.join(" ")
        );
        for &(x, y) in &s.pts {
            let _ = writeln!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>",
                self.px(x),
                self.py(y)
            );
        }
        let ly = TOP + 20.0 + 36.0 * k as f64;
        let lx = LEFT + self.pw + 15.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{:.1}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/>\
             <text x=\"{tx:.1}\" y=\"{:.1}\">{}</text>\
             <text x=\"{tx:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#555\">{}</text>",
            lx + 20.0,
            ly + 4.0,
            xml(s.label),
            ly + 17.0,
            xml(s.note),
            tx = lx + 26.0,
        );
    }
}
