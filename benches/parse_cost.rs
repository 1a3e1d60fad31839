//! parse_cost: the CPU the gateway's Ironic checks spend on the worst-shaped agent inputs.
//!
//! `scripts/bench.sh` (`make bench`) runs it first (before any service starts); by hand:
//! `cargo bench --bench parse_cost`. For each shape it builds inputs of 256 KiB, 512 KiB and
//! 1 MiB, runs the check the gateway runs on them (body limits + parameter gathering + every
//! API-side check; the lookup's checks; version negotiation), and prints, per shape, the CPU
//! time of one check at each size (this thread's CPU clock, the best of several runs), the CPU
//! ms per MiB at 1 MiB and the ratio cost(1 MiB) / cost(512 KiB): about 2 when linear, 4 when
//! quadratic. A request target or header is capped at about 64 KiB by the HTTP stack; the
//! lookup and header shapes are measured beyond that to show how they grow.
//!
//! Environment: `BENCH_OUT` (a folder: the table is also written to `parse_cost.md` there).
//! Run without `--bench` (as `cargo test --all-targets` does) it checks each shape once at
//! 16 KiB and exits: a smoke test, no figures.

use ironic_edge::ironic::heartbeat::{check_body_limit, check_heartbeat};
use ironic_edge::ironic::lookup::check_lookup;
use ironic_edge::ironic::version::negotiate_values;
use ironic_edge::ironic::{ApiVersion, VersionRange};
use std::time::Duration;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const NODE: &str = "808a5551-9a5d-4b12-bf3f-1389a674b400";
const RANGE: VersionRange = VersionRange {
    min: ApiVersion::new(1, 1),
    max: ApiVersion::new(1, 115),
};

/// One worst-case shape: how to build an input of about `n` bytes, and the check to run.
struct Shape {
    name: &'static str,
    build: fn(usize) -> String,
    check: fn(&str),
}

/// Items `item(0), item(1), ...` joined with `sep`, between `open` and `close`, up to `n`
/// bytes in all.
fn fill(n: usize, open: &str, sep: &str, close: &str, item: impl Fn(usize) -> String) -> String {
    let mut s = open.to_string();
    for i in 0.. {
        let it = item(i);
        let extra = if i == 0 { 0 } else { sep.len() };
        if s.len() + extra + it.len() + close.len() > n {
            break;
        }
        if i > 0 {
            s.push_str(sep);
        }
        s.push_str(&it);
    }
    s.push_str(close);
    s
}

fn mac(i: usize) -> String {
    let b = (i as u32).to_be_bytes();
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
}

fn heartbeat(ct: &str, body: &str) {
    let ct = Some(ct);
    // The gateway applies the body limits first, then every API-side check.
    let _ = check_body_limit(ct, body.as_bytes());
    let _ = check_heartbeat(NODE, None, ct, body.as_bytes(), ApiVersion::new(1, 68));
}

fn lookup(query: &str) {
    let _ = check_lookup(Some(query), ApiVersion::new(1, 62));
}

const MULTIPART_CT: &str = "multipart/form-data; boundary=XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX";

fn shapes() -> Vec<Shape> {
    vec![
        Shape {
            name: "heartbeat form, distinct names (f0&f1&...)",
            build: |n| fill(n, "", "&", "", |i| format!("f{i}")),
            check: |b| heartbeat("application/x-www-form-urlencoded", b),
        },
        Shape {
            name: "heartbeat form, one name repeated",
            build: |n| fill(n, "", "&", "", |_| "callback_url=x".into()),
            check: |b| heartbeat("application/x-www-form-urlencoded", b),
        },
        Shape {
            name: "heartbeat JSON object, distinct keys",
            build: |n| fill(n, "{", ",", "}", |i| format!("\"{i}\":0")),
            check: |b| heartbeat("application/json", b),
        },
        Shape {
            name: "heartbeat JSON, nested duplicated keys",
            build: |n| {
                // Keys 0..p with 0, then again from p-1 down to 0 with 1: each key keeps its
                // first position and takes its last value (entries are at most 10 bytes).
                let p = n / 22;
                let mut inner: Vec<String> = (0..p).map(|k| format!("\"{k}\":0")).collect();
                inner.extend((0..p).rev().map(|k| format!("\"{k}\":1")));
                format!(
                    "{{\"callback_url\": \"https://h:1\", \"agent_token\": {{{}}}}}",
                    inner.join(",")
                )
            },
            check: |b| heartbeat("application/json", b),
        },
        Shape {
            name: "heartbeat javascript object, distinct keys",
            build: |n| fill(n, "{", ",", "}", |i| format!("\"{i}\":0")),
            check: |b| heartbeat("application/javascript", b),
        },
        Shape {
            name: "heartbeat multipart, line breaks",
            build: |n| {
                let head = "--XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n";
                format!("{head}{}", "\n".repeat(n - head.len()))
            },
            check: |b| heartbeat(MULTIPART_CT, b),
        },
        Shape {
            name: "lookup query, distinct valid MACs",
            build: |n| fill(n, "addresses=", ",", "", mac),
            check: lookup,
        },
        Shape {
            name: "lookup query, distinct invalid addresses",
            build: |n| fill(n, "addresses=", ",", "", |i| format!("{}0", mac(i))),
            check: lookup,
        },
        Shape {
            name: "lookup query, distinct unknown names",
            build: |n| fill(n, "", "&", "", |i| format!("p{i}")),
            check: lookup,
        },
        Shape {
            name: "version header, many entries",
            build: |n| fill(n, "", ",", "", |i| format!("compute 2.{i}")),
            check: |h| {
                let _ = negotiate_values(Some(h), None, &RANGE);
            },
        },
    ]
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec; CLOCK_THREAD_CPUTIME_ID exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The best CPU time of one check over several runs (at least 3, about 300 ms in all).
fn cost(check: fn(&str), input: &str) -> Duration {
    let mut best = Duration::MAX;
    let mut spent = Duration::ZERO;
    let mut runs = 0;
    while runs < 3 || (spent < Duration::from_millis(300) && runs < 50) {
        let t0 = thread_cpu();
        check(std::hint::black_box(input));
        let d = thread_cpu() - t0;
        best = best.min(d);
        spent += d;
        runs += 1;
    }
    best
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    if !benching {
        for s in shapes() {
            (s.check)(&(s.build)(16 * KIB));
        }
        println!(
            "parse_cost: smoke run (16 KiB per shape); `cargo bench --bench parse_cost` measures"
        );
        return;
    }
    let sizes = [256 * KIB, 512 * KIB, MIB];
    let mut table = String::from(
        "| shape | 256 KiB | 512 KiB | 1 MiB | CPU ms per MiB | 1 MiB / 512 KiB |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    // Rows as they are measured (a slow shape shows at once).
    print!("{table}");
    for s in shapes() {
        let costs: Vec<Duration> = sizes
            .iter()
            .map(|&n| {
                let input = (s.build)(n);
                assert!(input.len() <= n, "{}: {} bytes", s.name, input.len());
                cost(s.check, &input)
            })
            .collect();
        let per_mib = ms(costs[2]);
        let ratio = costs[2].as_secs_f64() / costs[1].as_secs_f64().max(1e-9);
        let row = format!(
            "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} | {:.2} |\n",
            s.name,
            ms(costs[0]),
            ms(costs[1]),
            ms(costs[2]),
            per_mib,
            ratio
        );
        print!("{row}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        table.push_str(&row);
    }
    if let Ok(dir) = std::env::var("BENCH_OUT") {
        let path = std::path::Path::new(&dir).join("parse_cost.md");
        if std::fs::create_dir_all(&dir).is_ok() && std::fs::write(&path, &table).is_ok() {
            println!("written to {}", path.display());
        }
    }
}
