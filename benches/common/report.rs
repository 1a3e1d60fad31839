//! Report helpers: number formats, ratios, tables (text and Markdown) and result files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds as milliseconds with 3 significant digits (`-` for none).
pub fn ms(us: Option<u32>) -> String {
    match us {
        None => "-".into(),
        Some(u) => {
            let m = u as f64 / 1000.0;
            if m < 10.0 {
                format!("{m:.2}")
            } else if m < 100.0 {
                format!("{m:.1}")
            } else {
                format!("{m:.0}")
            }
        }
    }
}

/// A rate: whole numbers from 1000 up, one decimal below.
pub fn rate(r: f64) -> String {
    if r >= 1000.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// A small positive quantity with 3 significant digits (`-` for none).
pub fn sig3(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if !x.is_finite() => "-".into(),
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) if x.abs() >= 1.0 => format!("{x:.2}"),
        Some(0.0) => "0".into(),
        Some(x) => format!("{x:.3}"),
    }
}

/// `a / b` when both make sense.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

/// `a / b` of two optional latencies.
pub fn ratio_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => ratio(a, b),
        _ => None,
    }
}

/// `0.88x`, `147x`...
pub fn ratio_str(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(x) if x >= 100.0 => format!("{x:.0}x"),
        Some(x) if x >= 10.0 => format!("{x:.1}x"),
        Some(x) if x >= 0.1 => format!("{x:.2}x"),
        Some(x) => format!("{x:.4}x"),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table: a header, rows of cells, per-column alignment; a row may be marked (its
/// non-empty cells after the first two are bold in Markdown: the ratio rows).
pub struct Table {
    pub head: Vec<String>,
    pub align: Vec<Align>,
    pub rows: Vec<(bool, Vec<String>)>,
    /// In text, a cell longer than this (characters) does not widen its column: it runs
    /// over into the next one (long lists of counts); the first column (the row names)
    /// always fits. `None`: every column fits its cells.
    pub max_width: Option<usize>,
}

impl Table {
    pub fn new(head: &[(&str, Align)]) -> Table {
        Table {
            head: head.iter().map(|(h, _)| h.to_string()).collect(),
            align: head.iter().map(|(_, a)| *a).collect(),
            rows: Vec::new(),
            max_width: None,
        }
    }

    /// Text columns at most `w` characters wide (see [`Table::max_width`]).
    pub fn with_max_width(mut self, w: usize) -> Table {
        self.max_width = Some(w);
        self
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push((false, cells));
    }

    pub fn marked_row(&mut self, cells: Vec<String>) {
        self.rows.push((true, cells));
    }

    /// Aligned columns, two spaces apart, a rule under the header; the last column is not
    /// padded.
    pub fn text(&self) -> String {
        let n = self.head.len();
        let mut w: Vec<usize> = self.head.iter().map(|h| h.chars().count()).collect();
        for (_, cells) in &self.rows {
            for (i, c) in cells.iter().enumerate().take(n) {
                let len = c.chars().count();
                let cap = self.max_width.filter(|_| i > 0);
                w[i] = w[i].max(cap.map_or(len, |m| len.min(m)));
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            let mut s = String::new();
            for (i, width) in w.iter().enumerate() {
                let c = cells.get(i).map(String::as_str).unwrap_or("");
                let pad = width.saturating_sub(c.chars().count());
                if i > 0 {
                    s.push_str("  ");
                }
                if i + 1 == n {
                    if self.align[i] == Align::Right {
                        s.push_str(&" ".repeat(pad));
                    }
                    s.push_str(c);
                } else if self.align[i] == Align::Right {
                    let _ = write!(s, "{}{c}", " ".repeat(pad));
                } else {
                    let _ = write!(s, "{c}{}", " ".repeat(pad));
                }
            }
            let _ = writeln!(out, "{}", s.trim_end());
        };
        line(&mut out, &self.head);
        let total = w.iter().sum::<usize>() + 2 * n.saturating_sub(1);
        let _ = writeln!(out, "{}", "-".repeat(total));
        for (_, cells) in &self.rows {
            line(&mut out, cells);
        }
        out
    }

    /// A Markdown table; marked rows have their cells (from the third) in bold. Cells are
    /// trimmed (Markdown ignores their outer spaces; text indents sub-rows with them).
    pub fn markdown(&self) -> String {
        let esc = |s: &str| s.trim().replace('|', "\\|");
        let mut out = String::from("|");
        for h in &self.head {
            let _ = write!(out, " {} |", esc(h));
        }
        out.push_str("\n|");
        for a in &self.align {
            out.push_str(if *a == Align::Right {
                " ---: |"
            } else {
                " --- |"
            });
        }
        out.push('\n');
        for (marked, cells) in &self.rows {
            out.push('|');
            for (i, c) in cells.iter().enumerate() {
                if *marked && i >= 2 && !c.is_empty() && c != "-" {
                    let _ = write!(out, " **{}** |", esc(c));
                } else {
                    let _ = write!(out, " {} |", esc(c));
                }
            }
            out.push('\n');
        }
        out
    }
}

/// Seconds since the epoch (the stamp of result files).
pub fn unix_stamp(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The machine's online CPUs (not only those this process may run on: a load generator
/// is often pinned to one), and the 1-minute load average.
pub fn machine() -> (Option<usize>, Option<String>) {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string));
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let cpus = usize::try_from(online)
        .ok()
        .filter(|n| *n > 0)
        .or_else(|| std::thread::available_parallelism().map(|n| n.get()).ok());
    (cpus, load)
}

/// How many CPUs this process may run on (its affinity).
pub fn own_cpus() -> Option<usize> {
    std::thread::available_parallelism().map(|n| n.get()).ok()
}

/// Writes `<name>-<stamp>.json`, `<name>-<stamp>.md`, `<name>.json` and `<name>.md` in
/// `dir`; returns the paths in that order.
pub fn write_results(
    dir: &Path,
    name: &str,
    stamp: u64,
    json_text: &str,
    md: &str,
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for (file, text) in [
        (format!("{name}-{stamp}.json"), json_text),
        (format!("{name}-{stamp}.md"), md),
        (format!("{name}.json"), json_text),
        (format!("{name}.md"), md),
    ] {
        let p = dir.join(file);
        std::fs::write(&p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        written.push(p);
    }
    Ok(written)
}

pub(super) fn self_check() {
    assert_eq!(ms(Some(440)), "0.44");
    assert_eq!(ms(Some(131_000)), "131");
    assert_eq!(ratio_str(ratio(34331.0, 234.0)), "147x");
    assert_eq!(ratio_str(ratio(1.0, 0.0)), "-");
    assert_eq!(sig3(Some(55.26)), "55.3");
    let mut t = Table::new(&[("a", Align::Left), ("b", Align::Right), ("c", Align::Right)]);
    t.row(vec!["x".into(), "1".into(), "22".into()]);
    t.marked_row(vec!["".into(), "y/x".into(), "0.50x".into()]);
    let text = t.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "a    b      c",
            "-------------",
            "x    1     22",
            "   y/x  0.50x"
        ]
    );
    assert!(t.markdown().contains("|  | y/x | **0.50x** |"));
    // long cells run over instead of widening their column; Markdown trims
    let mut t =
        Table::new(&[("", Align::Left), ("a", Align::Left), ("b", Align::Left)]).with_max_width(3);
    t.row(vec!["  sub".into(), "long cell".into(), "z".into()]);
    t.row(vec!["r".into(), "x".into(), "y".into()]);
    let text = t.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[2..], ["  sub  long cell  z", "r      x    y"]);
    assert!(t.markdown().contains("| sub | long cell | z |"));
}
