//! The copy plot (time against size).

use super::*;
use machvm_benches::ids;

/// One plotted line: label, colour, (bytes, ns) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// The kinds of copy plotted: benchmark id, label, colour.
const SERIES: [(&str, &str, &str); 4] = [
    (ids::VIRTUAL_UNTOUCHED, "virtual copy, untouched", "#1f77b4"),
    (ids::VIRTUAL_RESIDENT, "virtual copy, resident", "#2ca02c"),
    (ids::EAGER, "eager copy (bytes)", "#d62728"),
    (ids::MEMCPY, "memcpy (host)", "#7f7f7f"),
];

/// Image size and margins (left, right, top, bottom), in pixels.
const W: f64 = 760.0;
const H: f64 = 480.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 230.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;

/// The copy plot: time against size, log-log, one line per kind of copy.
pub(super) fn copy_svg(medians: &BTreeMap<String, f64>) -> String {
    let lines = series(medians);
    let all: Vec<(f64, f64)> = lines.iter().flat_map(|l| l.2.iter().copied()).collect();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{LEFT}\" y=\"18\" font-size=\"14\">machvm: copy time against size (median, log-log)</text>\n"
    );
    let Some(plot) = Plot::fitting(&all) else {
        svg.push_str("<text x=\"80\" y=\"100\">no copy results</text>\n</svg>\n");
        return svg;
    };
    let _ = writeln!(
        svg,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>",
        plot.pw, plot.ph
    );
    plot.time_grid(&mut svg);
    plot.size_grid(&mut svg);
    for (k, line) in lines.iter().enumerate() {
        plot.line(&mut svg, k, line);
    }
    svg.push_str("</svg>\n");
    svg
}

/// The (bytes, ns) points of every kind of copy, sorted by size.
fn series(medians: &BTreeMap<String, f64>) -> Vec<Series<'static>> {
    SERIES
        .iter()
        .map(|&(id, label, colour)| {
            let prefix = ids::prefix(ids::COPY, id);
            let mut pts: Vec<(f64, f64)> = medians
                .iter()
                .filter_map(|(k, &v)| Some((k.strip_prefix(&prefix)?.parse::<f64>().ok()?, v)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (label, colour, pts)
        })
        .collect()
}

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

    /// A grid line and label per decade of time.
    fn time_grid(&self, svg: &mut String) {
        let mut d = self.y0 as i32;
        while d as f64 <= self.y1 {
            let y = self.py(10f64.powi(d));
            let _ = writeln!(
                svg,
                "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                LEFT + self.pw,
                LEFT - 6.0,
                y + 4.0,
                fmt_decade(d)
            );
            d += 1;
        }
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
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">bytes copied</text>",
            LEFT + self.pw / 2.0,
            H - 10.0
        );
    }

    /// Series `k`: its line, its points and its legend entry.
    fn line(&self, svg: &mut String, k: usize, (label, colour, pts): &Series<'_>) {
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", self.px(x), self.py(y)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        for &(x, y) in pts {
            let _ = writeln!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>",
                self.px(x),
                self.py(y)
            );
        }
        let ly = TOP + 20.0 + 20.0 * k as f64;
        let lx = LEFT + self.pw + 15.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{:.1}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{label}</text>",
            lx + 20.0,
            lx + 26.0,
            ly + 4.0
        );
    }
}
