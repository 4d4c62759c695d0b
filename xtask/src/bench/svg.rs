//! The copy plot (time against size).

use super::*;

/// One plotted line: label, colour, (bytes, ns) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// The copy plot: time against size, log-log, one line per kind of copy.
pub(super) fn copy_svg(medians: &BTreeMap<String, f64>) -> String {
    let series = [
        ("virtual_untouched", "virtual copy, untouched", "#1f77b4"),
        ("virtual_resident", "virtual copy, resident", "#2ca02c"),
        ("eager", "eager copy (bytes)", "#d62728"),
        ("memcpy", "memcpy (host)", "#7f7f7f"),
    ];
    let lines: Vec<Series> = series
        .iter()
        .map(|&(id, label, colour)| {
            let prefix = format!("copy/{id}/");
            let mut pts: Vec<(f64, f64)> = medians
                .iter()
                .filter_map(|(k, &v)| Some((k.strip_prefix(&prefix)?.parse::<f64>().ok()?, v)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (label, colour, pts)
        })
        .collect();
    let all: Vec<(f64, f64)> = lines.iter().flat_map(|l| l.2.iter().copied()).collect();
    let (w, h, left, right, top, bottom) = (760.0, 480.0, 80.0, 230.0, 30.0, 50.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"18\" font-size=\"14\">machvm: copy time against size (median, log-log)</text>\n"
    );
    if all.is_empty() {
        svg.push_str("<text x=\"80\" y=\"100\">no copy results</text>\n</svg>\n");
        return svg;
    }
    let lg = |v: f64| v.max(1e-3).log10();
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
    let (pw, ph) = (w - left - right, h - top - bottom);
    let px = |v: f64| left + (lg(v) - x0) / (x1 - x0) * pw;
    let py = |v: f64| top + ph - (lg(v) - y0) / (y1 - y0) * ph;
    let _ = writeln!(
        svg,
        "<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"black\"/>"
    );
    // Decades of time.
    let mut d = y0 as i32;
    while d as f64 <= y1 {
        let v = 10f64.powi(d);
        let y = py(v);
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left + pw,
            left - 6.0,
            y + 4.0,
            fmt_decade(d)
        );
        d += 1;
    }
    // Sizes: every power of 4 in range.
    let mut s = 10f64.powf(x0).round();
    while lg(s) <= x1 + 1e-9 {
        let x = px(s);
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            top + ph,
            top + ph + 16.0,
            fmt_bytes(s as u64)
        );
        s *= 4.0;
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">bytes copied</text>",
        left + pw / 2.0,
        h - 10.0
    );
    for (k, (label, colour, pts)) in lines.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
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
                px(x),
                py(y)
            );
        }
        let ly = top + 20.0 + 20.0 * k as f64;
        let lx = left + pw + 15.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{:.1}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{label}</text>",
            lx + 20.0,
            lx + 26.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}
