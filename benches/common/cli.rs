//! Command-line options with environment fall-backs.
//!
//! Every option is `--name VALUE` or `--name=VALUE` (plus aliases); an option not on the
//! command line is read from the environment as `<PREFIX><NAME>` (upper case, `-` → `_`,
//! e.g. `timeout-ms` → `BENCH_TIMEOUT_MS`); empty values count as absent. The command line
//! wins over the environment. What cargo and libtest pass to bench binaries (`--bench`,
//! `--test`, `--nocapture`, `--quiet`, `-q`, `--test-threads[=]N`) is skipped. `-h`/`--help`
//! prints the usage and exits 0.

use std::collections::BTreeMap;
use std::time::Duration;

/// One option: its name (`--name` on the command line) and aliases (written in full,
/// e.g. `"-c"`, `"--concurrency"`).
pub struct Opt {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
}

impl Opt {
    /// An option without aliases.
    pub const fn new(name: &'static str) -> Opt {
        Opt { name, aliases: &[] }
    }
}

/// What to do with an argument that is not an option.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// Print `<prog>: ignoring unknown argument ...` and go on.
    Warn,
    /// Fail.
    Error,
}

pub struct Spec<'a> {
    /// Program name, for messages.
    pub prog: &'a str,
    pub options: &'a [Opt],
    /// Environment prefix, e.g. `"BENCH_"`.
    pub env_prefix: &'a str,
    pub unknown: Unknown,
    pub usage: &'a str,
}

/// The options given, by name.
#[derive(Debug, Default, Clone)]
pub struct Args {
    values: BTreeMap<String, String>,
}

/// Arguments cargo and libtest pass that are not ours; `true` if it takes the next one too.
fn foreign(a: &str) -> Option<bool> {
    match a {
        "--bench" | "--test" | "--nocapture" | "--quiet" | "-q" | "--exact" | "--ignored"
        | "--include-ignored" => Some(false),
        "--test-threads" => Some(true),
        _ if a.starts_with("--test-threads=") => Some(false),
        _ => None,
    }
}

impl Spec<'_> {
    /// The process's own arguments and environment.
    pub fn parse(&self) -> Result<Args, String> {
        self.parse_from(std::env::args().skip(1), |k| std::env::var(k).ok())
    }

    pub fn parse_from(
        &self,
        argv: impl IntoIterator<Item = String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Args, String> {
        let mut values = BTreeMap::new();
        let mut args = argv.into_iter();
        while let Some(a) = args.next() {
            if let Some(takes_value) = foreign(&a) {
                if takes_value {
                    args.next();
                }
                continue;
            }
            if a == "-h" || a == "--help" {
                println!("{}", self.usage);
                std::process::exit(0);
            }
            let (key, inline) = match a.split_once('=') {
                Some((k, v)) if k.starts_with('-') => (k.to_string(), Some(v.to_string())),
                _ => (a.clone(), None),
            };
            let opt = self
                .options
                .iter()
                .find(|o| key.strip_prefix("--") == Some(o.name) || o.aliases.contains(&&*key));
            let Some(opt) = opt else {
                match self.unknown {
                    Unknown::Warn => {
                        eprintln!("{}: ignoring unknown argument {key:?}", self.prog);
                        continue;
                    }
                    Unknown::Error if key.starts_with('-') => {
                        return Err(format!("unknown option {key}"))
                    }
                    Unknown::Error => return Err(format!("unexpected argument {a:?}")),
                }
            };
            let val = match inline {
                Some(v) => v,
                None => args.next().ok_or_else(|| format!("{key} needs a value"))?,
            };
            values.insert(opt.name.to_string(), val);
        }
        for o in self.options {
            if values.contains_key(o.name) {
                continue;
            }
            let var = env_name(self.env_prefix, o.name);
            if let Some(v) = env(&var).filter(|v| !v.is_empty()) {
                values.insert(o.name.to_string(), v);
            }
        }
        Ok(Args { values })
    }
}

/// `BENCH_` + `timeout-ms` → `BENCH_TIMEOUT_MS`.
pub fn env_name(prefix: &str, name: &str) -> String {
    format!("{prefix}{}", name.to_uppercase().replace('-', "_"))
}

impl Args {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn string(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_string)
    }

    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.values.insert(name.to_string(), value.into());
    }

    pub fn contains(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// `name` as a number within `min..=max`, `default` when absent.
    pub fn f64_in(&self, name: &str, default: f64, min: f64, max: f64) -> Result<f64, String> {
        match self.get(name) {
            None => Ok(default),
            Some(s) => number(name, s, min, max),
        }
    }
}

/// A number within `min..=max`.
pub fn number(what: &str, s: &str, min: f64, max: f64) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{what}: not a number: {s}"))?;
    if !(min..=max).contains(&v) {
        return Err(format!("{what}: must be within {min}..{max}: {s}"));
    }
    Ok(v)
}

/// Seconds (fractions allowed) within 0..3600.
pub fn secs(what: &str, s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{what}: not a number: {s}"))?;
    if !(0.0..=3600.0).contains(&v) {
        return Err(format!("{what}: must be within 0..3600 s: {s}"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Whole milliseconds, at most `max`.
pub fn millis(what: &str, s: &str, max: u64) -> Result<Duration, String> {
    let v: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{what}: not an integer: {s}"))?;
    if v > max {
        return Err(format!("{what}: at most {max} ms: {s}"));
    }
    Ok(Duration::from_millis(v))
}

/// An integer within `range`.
pub fn integer(
    what: &str,
    s: &str,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, String> {
    s.trim()
        .parse()
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| format!("{what} must be {}..{}: {s}", range.start(), range.end()))
}

/// `BENCH_STRICT=1`-style flags: `1` or `true`.
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1" || v == "true")
}

pub(super) fn self_check() {
    const OPTS: &[Opt] = &[
        Opt {
            name: "conc",
            aliases: &["--concurrency"],
        },
        Opt {
            name: "timeout-ms",
            aliases: &[],
        },
        Opt {
            name: "config",
            aliases: &["-c"],
        },
    ];
    let spec = Spec {
        prog: "self-check",
        options: OPTS,
        env_prefix: "BENCH_",
        unknown: Unknown::Error,
        usage: "",
    };
    let argv = [
        "--bench",
        "--test-threads",
        "4",
        "--concurrency=8",
        "-c",
        "f.json",
    ];
    let env = |k: &str| (k == "BENCH_TIMEOUT_MS" || k == "BENCH_CONC").then(|| "5".to_string());
    let a = spec
        .parse_from(argv.iter().map(|s| s.to_string()), env)
        .expect("parses");
    assert_eq!(a.get("conc"), Some("8"), "the command line wins");
    assert_eq!(a.get("timeout-ms"), Some("5"), "the environment fills in");
    assert_eq!(a.get("config"), Some("f.json"));
    assert!(spec.parse_from(["--nope=1".to_string()], |_| None).is_err());
    assert_eq!(secs("d", "1.5").unwrap(), Duration::from_millis(1500));
    assert!(millis("t", "70000", 60_000).is_err());
    assert_eq!(integer("n", "16", 1..=1024), Ok(16));
}
