//! Complexity tests: the work (loop iterations and key comparisons, see [`super::work`]) the
//! checks spend on the worst shape of each input grows about 2x when the input doubles. No
//! wall time is measured. `work::tests` shows the same count gives about 4x for the linear
//! search per element these parsers used to do.

use super::heartbeat::check_heartbeat;
use super::lookup::check_lookup;
use super::version::{negotiate_values, ApiVersion, VersionRange};
use super::work::counter::doubling_ratio;

/// Below this the growth is linear (or n log n at these sizes); a quadratic one gives 4.
const LINEAR: f64 = 2.6;

const NODE: &str = "808a5551-9a5d-4b12-bf3f-1389a674b400";
const V: ApiVersion = ApiVersion::new(1, 68);
const RANGE: VersionRange = VersionRange {
    min: ApiVersion::new(1, 1),
    max: ApiVersion::new(1, 115),
};

/// Items `0..n` through `item`, joined with `sep`.
fn joined(n: usize, sep: &str, item: impl Fn(usize) -> String) -> String {
    (0..n).map(item).collect::<Vec<_>>().join(sep)
}

fn assert_linear(shape: &str, ratio: f64) {
    assert!(ratio < LINEAR, "{shape}: steps(2N)/steps(N) = {ratio:.2}");
}

fn heartbeat_ratio(n: usize, ct: Option<&'static str>, body: impl Fn(usize) -> String) {
    let shape = format!("heartbeat body {ct:?}");
    let r = doubling_ratio(n, body, |b| {
        let _ = check_heartbeat(NODE, None, ct, b.as_bytes(), V);
    });
    assert_linear(&shape, r);
}

#[test]
fn form_of_distinct_names_is_linear() {
    heartbeat_ratio(10_000, Some("application/x-www-form-urlencoded"), |n| {
        joined(n, "&", |i| format!("f{i}"))
    });
}

#[test]
fn form_without_content_type_is_linear() {
    heartbeat_ratio(10_000, None, |n| joined(n, "&", |i| format!("f{i}=%41+")));
}

#[test]
fn form_of_one_repeated_name_is_linear() {
    heartbeat_ratio(10_000, Some("application/x-www-form-urlencoded"), |n| {
        joined(n, "&", |_| "callback_url=x".to_string())
    });
}

#[test]
fn json_object_of_distinct_keys_is_linear() {
    heartbeat_ratio(10_000, Some("application/json"), |n| {
        format!("{{{}}}", joined(n, ",", |i| format!("\"{i}\":0")))
    });
}

#[test]
fn javascript_object_of_distinct_keys_is_linear() {
    heartbeat_ratio(10_000, Some("application/javascript"), |n| {
        format!("{{{}}}", joined(n, ",", |i| format!("\"{i}\":0")))
    });
}

#[test]
fn json_of_duplicated_keys_is_linear() {
    heartbeat_ratio(10_000, Some("application/json"), |n| {
        let mut keys: Vec<String> = (0..n).map(|i| format!("\"{i}\":0")).collect();
        keys.extend((0..n).rev().map(|i| format!("\"{i}\":1")));
        format!(
            "{{\"callback_url\": \"https://h:1\", \"agent_token\": {{{}}}}}",
            keys.join(",")
        )
    });
}

#[test]
fn json_of_one_key_repeated_is_linear() {
    heartbeat_ratio(10_000, Some("application/json"), |n| {
        format!(
            "{{{}}}",
            joined(n, ",", |i| format!("\"callback_url\":\"{i}\""))
        )
    });
}

#[test]
fn multipart_of_many_line_breaks_is_linear() {
    heartbeat_ratio(
        10_000,
        Some("multipart/form-data; boundary=b0undaryb0undaryb0undaryb0undaryb0undary0"),
        |n| {
            format!(
                "--b0undaryb0undaryb0undaryb0undaryb0undary0\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n{}",
                "\n".repeat(n)
            )
        },
    );
}

#[test]
fn multipart_of_many_parts_is_linear() {
    heartbeat_ratio(2_000, Some("multipart/form-data; boundary=B"), |n| {
        let part =
            |i: usize| format!("--B\r\nContent-Disposition: form-data; name=\"f{i}\"\r\n\r\nv\r\n");
        format!("{}--B--\r\n", joined(n, "", part))
    });
}

#[test]
fn heartbeat_query_of_distinct_names_is_linear() {
    let r = doubling_ratio(
        10_000,
        |n| joined(n, "&", |i| format!("q{i}")),
        |q| {
            let _ = check_heartbeat(NODE, Some(q), Some("application/json"), b"{}", V);
        },
    );
    assert_linear("heartbeat query", r);
}

fn lookup_ratio(shape: &str, n: usize, query: impl Fn(usize) -> String) {
    let r = doubling_ratio(n, query, |q| {
        let _ = check_lookup(Some(q), ApiVersion::new(1, 62));
    });
    assert_linear(shape, r);
}

fn mac(i: usize) -> String {
    let b = (i as u32).to_be_bytes();
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

#[test]
fn lookup_of_distinct_valid_macs_is_linear() {
    lookup_ratio("valid macs", 5_000, |n| {
        format!("addresses={}", joined(n, ",", mac))
    });
}

#[test]
fn lookup_of_distinct_invalid_addresses_is_linear() {
    lookup_ratio("invalid addresses", 5_000, |n| {
        format!("addresses={}", joined(n, ",", |i| format!("{}0", mac(i))))
    });
}

#[test]
fn lookup_of_repeated_addresses_parameters_is_linear() {
    lookup_ratio("repeated addresses", 5_000, |n| {
        joined(n, "&", |i| format!("addresses={}", mac(i)))
    });
}

#[test]
fn lookup_of_distinct_unknown_names_is_linear() {
    lookup_ratio("unknown names", 5_000, |n| {
        joined(n, ";", |i| format!("p{i}"))
    });
}

fn version_ratio(
    shape: &str,
    n: usize,
    header: impl Fn(usize) -> (Option<String>, Option<String>),
) {
    let r = doubling_ratio(n, header, |(standard, legacy)| {
        let _ = negotiate_values(standard.as_deref(), legacy.as_deref(), &RANGE);
    });
    assert_linear(shape, r);
}

#[test]
fn standard_header_of_many_entries_is_linear() {
    version_ratio("standard entries", 5_000, |n| {
        (Some(joined(n, ", ", |i| format!("compute 2.{i}"))), None)
    });
}

#[test]
fn version_of_many_digits_is_linear() {
    version_ratio("digits", 5_000, |n| {
        (None, Some(format!("1.{}", "0_1".repeat(n))))
    });
}

#[test]
fn legacy_header_of_many_commas_is_linear() {
    version_ratio("legacy commas", 5_000, |n| {
        (None, Some(",".repeat(n) + "1.5"))
    });
}
