//! Prometheus text pages (the gateway's `/metrics`) as numbers.
//!
//! A sample is keyed by its whole name as written, labels included
//! (`ironic_edge_requests_total{outcome="local",route="lookup"}`: labels in
//! the order the exposition writes them, sorted by name); comments and lines whose
//! value is not a number are skipped.

use std::collections::BTreeMap;

/// Samples by name (labels included).
pub type Samples = BTreeMap<String, f64>;

/// The samples of `text` whose name starts with `prefix` (`""`: all of them).
pub fn parse(text: &str, prefix: &str) -> Samples {
    let mut m = Samples::new();
    for line in text.lines() {
        if line.starts_with('#') || !line.starts_with(prefix) {
            continue;
        }
        if let Some((k, v)) = line.rsplit_once(' ') {
            if let Ok(x) = v.trim().parse::<f64>() {
                m.insert(k.trim().to_string(), x);
            }
        }
    }
    m
}

/// The sum of a metric family's series (`name` alone, or `name{...}`).
pub fn family_sum(m: &Samples, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.split('{').next() == Some(name))
        .map(|(_, v)| v)
        .sum()
}

/// What changed from `before` to `after` (a sample missing before counts from 0); samples
/// that did not change are left out.
pub fn delta(before: &Samples, after: &Samples) -> Samples {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Several processes' pages as one (the gateways of a fleet run): every sample summed, except
/// those named in `same_everywhere` (a gauge each process reads from the shared Redis, such as
/// the relay's backlog of all processes: summed, it would count the backlog once per process),
/// of which the largest is kept.
pub fn merge(pages: &[Samples], same_everywhere: &[&str]) -> Samples {
    let mut m = Samples::new();
    for page in pages {
        for (k, v) in page {
            let shared = same_everywhere.contains(&k.split('{').next().unwrap_or(k));
            m.entry(k.clone())
                .and_modify(|x| *x = if shared { x.max(*v) } else { *x + v })
                .or_insert(*v);
        }
    }
    m
}

pub(super) fn self_check() {
    let page = "# HELP x\nironic_edge_a{lane=\"hb\"} 2\nironic_edge_a{lane=\"all\"} 3\n\
                ironic_edge_a_total 7\nother_b 1\nironic_edge_c NaNx\n";
    let all = parse(page, "");
    assert_eq!(all.len(), 4);
    let m = parse(page, "ironic_edge_");
    assert_eq!(m.len(), 3);
    assert_eq!(family_sum(&m, "ironic_edge_a"), 5.0);
    let mut later = m.clone();
    later.insert("ironic_edge_a_total".into(), 9.0);
    later.insert("ironic_edge_new".into(), 1.0);
    let d = delta(&m, &later);
    assert_eq!(
        d.into_iter().collect::<Vec<_>>(),
        [
            ("ironic_edge_a_total".to_string(), 2.0),
            ("ironic_edge_new".to_string(), 1.0)
        ]
    );
    // two gateways: counters add up, a gauge of the shared Redis is not counted twice
    let a = parse("ironic_edge_a_total 2\nironic_edge_kept 5\n", "");
    let b = parse(
        "ironic_edge_a_total 3\nironic_edge_kept 4\nironic_edge_b 1\n",
        "",
    );
    let both = merge(&[a.clone(), b], &["ironic_edge_kept"]);
    assert_eq!(
        both.into_iter().collect::<Vec<_>>(),
        [
            ("ironic_edge_a_total".to_string(), 5.0),
            ("ironic_edge_b".to_string(), 1.0),
            ("ironic_edge_kept".to_string(), 5.0)
        ]
    );
    assert_eq!(merge(std::slice::from_ref(&a), &[]), a);
    assert!(merge(&[], &[]).is_empty());
}
