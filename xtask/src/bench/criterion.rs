//! Reading criterion's results: the median of every benchmark.

use super::*;

/// `key=value` lines into a map (other lines ignored).
pub(super) fn parse_key_values(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Every `<id>/new/` result under `dir`: criterion's full id → median (ns).
pub(super) fn read_medians(dir: &Path) -> Result<BTreeMap<String, f64>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        for e in entries.flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            if p.file_name().is_some_and(|n| n == "new") {
                let bench = std::fs::read_to_string(p.join("benchmark.json"));
                let est = std::fs::read_to_string(p.join("estimates.json"));
                if let (Ok(b), Ok(e)) = (bench, est)
                    && let (Some(id), Some(m)) = (json_string(&b, "full_id"), median_ns(&e))
                {
                    out.insert(id, m);
                }
            } else {
                stack.push(p);
            }
        }
    }
    Ok(out)
}

/// The string value of `"key":"…"` in flat JSON (ids hold no quotes).
pub(super) fn json_string(json: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":\"");
    let at = json.find(&pat)? + pat.len();
    let end = json[at..].find('"')?;
    Some(json[at..at + end].to_string())
}

/// `median.point_estimate` of criterion's `estimates.json`.
pub(super) fn median_ns(json: &str) -> Option<f64> {
    let m = json.find("\"median\":")?;
    let pat = "\"point_estimate\":";
    let at = m + json[m..].find(pat)? + pat.len();
    let end = json[at..].find([',', '}']).map_or(json.len(), |e| at + e);
    json[at..end].trim().parse().ok()
}
