//! OpenMetrics 1.0 text (what `prometheus-client` writes) → Prometheus text format 0.0.4.
//!
//! Differences handled (OpenMetrics spec "Text format"; Prometheus "Exposition formats"):
//! - `# EOF` and `# UNIT` lines do not exist in 0.0.4: dropped;
//! - a counter family `x` has `# TYPE x counter` and samples `x_total` in OpenMetrics; in
//!   0.0.4 the `# HELP` / `# TYPE` lines name the sample, `x_total`;
//! - `unknown` is `untyped` in 0.0.4;
//! - exemplars (` # {labels} value [timestamp]` after a sample's value) are dropped.
//!
//! Label values are skipped with their escapes (`\\`, `\"`, `\n`), so a label value that
//! contains ` # {` is not mistaken for an exemplar.

/// Converts a whole OpenMetrics text exposition to Prometheus text 0.0.4.
pub(crate) fn openmetrics_to_prometheus(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    // `# HELP` comes before `# TYPE` and its name depends on the type: hold it.
    let mut pending_help: Option<(&str, &str)> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, pending_help.take());
            pending_help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.rsplit_once(' ').unwrap_or((rest, "untyped"));
            let (sample_name, ty) = match ty {
                "counter" => (format!("{name}_total"), "counter"),
                "gauge" | "histogram" | "summary" => (name.to_string(), ty),
                // unknown, info, stateset, gaugehistogram: no 0.0.4 counterpart.
                _ => (name.to_string(), "untyped"),
            };
            match pending_help.take() {
                Some((help_name, text)) if help_name == name => {
                    out.push_str("# HELP ");
                    out.push_str(&sample_name);
                    out.push(' ');
                    out.push_str(text);
                    out.push('\n');
                }
                other => flush_help(&mut out, other),
            }
            out.push_str("# TYPE ");
            out.push_str(&sample_name);
            out.push(' ');
            out.push_str(ty);
            out.push('\n');
            continue;
        }
        flush_help(&mut out, pending_help.take());
        if line.starts_with('#') || line.is_empty() {
            // `# EOF`, `# UNIT`, other comments.
            continue;
        }
        out.push_str(strip_exemplar(line));
        out.push('\n');
    }
    flush_help(&mut out, pending_help);
    out
}

fn flush_help(out: &mut String, help: Option<(&str, &str)>) {
    if let Some((name, text)) = help {
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        out.push_str(text);
        out.push('\n');
    }
}

/// The sample line up to (not including) its exemplar, if any.
pub(crate) fn strip_exemplar(line: &str) -> &str {
    let bytes = line.as_bytes();
    // End of the metric name (and of its label set, if any).
    let mut i = bytes
        .iter()
        .position(|&b| b == b'{' || b == b' ')
        .unwrap_or(bytes.len());
    if bytes.get(i) == Some(&b'{') {
        let mut in_quotes = false;
        let mut escaped = false;
        i += 1;
        while i < bytes.len() {
            let b = bytes[i];
            i += 1;
            if in_quotes {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_quotes = false;
                }
            } else if b == b'"' {
                in_quotes = true;
            } else if b == b'}' {
                break;
            }
        }
    }
    match line[i..].find(" # ") {
        Some(j) => &line[..i + j],
        None => line,
    }
}
