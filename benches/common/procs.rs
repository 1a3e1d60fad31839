//! What a server process costs and what a Redis did, read from outside.
//!
//! CPU: `utime + stime` of `/proc/<pid>/stat` (every thread of the process, in clock ticks,
//! `sysconf(_SC_CLK_TCK)`, 100 per second on Linux: read over windows of seconds).
//! Memory: `VmRSS` / `VmHWM` of `/proc/<pid>/status`. Redis: `INFO stats` through a minimal
//! RESP client ([`Redis`]: one kept connection, one command at a time).

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Clock ticks per second of `/proc/<pid>/stat`.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `utime + stime` of one process in ticks; `None` if it is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name (field 2) is in parentheses and may hold spaces: count after it
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields 14 (utime) and 15 (stime); `rest` starts at field 3
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU seconds of a set of processes (`None` if any is gone).
pub fn cpu_seconds(pids: &[u32]) -> Option<f64> {
    let mut ticks = 0;
    for &p in pids {
        ticks += cpu_ticks(p)?;
    }
    Some(ticks as f64 / clock_ticks())
}

/// This process's own CPU seconds (`getrusage`, microsecond resolution).
pub fn self_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`...), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Resident memory of a set of processes, in KiB.
pub fn rss_kib(pids: &[u32]) -> Option<u64> {
    pids.iter().map(|&p| status_kib(p, "VmRSS")).sum()
}

/// A RESP reply, as far as the benches need one.
#[derive(Debug, Clone, PartialEq)]
pub enum RespValue {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
}

/// One connection to Redis, for commands one at a time (kept open: readings over it add a
/// fixed overhead, no connection events).
pub struct Redis {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    timeout: Duration,
}

impl Redis {
    pub fn new(addr: SocketAddr, timeout: Duration) -> Redis {
        Redis {
            addr,
            stream: None,
            timeout,
        }
    }

    /// Sends one command and reads its (non-array) reply; on an error the connection goes.
    pub async fn command(&mut self, args: &[&str]) -> Result<RespValue, String> {
        let addr = self.addr;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        let mut stream = self.stream.take();
        let fut = async {
            let s = match stream.as_mut() {
                Some(s) => s,
                None => stream.insert(
                    TcpStream::connect(addr)
                        .await
                        .map_err(|e| format!("redis {addr}: {e}"))?,
                ),
            };
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| format!("redis {addr}: {e}"))?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 16 << 10];
            loop {
                if let Some(v) = parse_reply(&buf)? {
                    return Ok(v);
                }
                let n = s
                    .read(&mut chunk)
                    .await
                    .map_err(|e| format!("redis {addr}: {e}"))?;
                if n == 0 {
                    return Err(format!("redis {addr}: closed"));
                }
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > 16 << 20 {
                    return Err(format!("redis {addr}: reply too large"));
                }
            }
        };
        let out = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| format!("redis {addr}: no reply within {:?}", self.timeout))?;
        if out.is_ok() {
            self.stream = stream;
        }
        out
    }

    /// The numeric fields of `INFO <section>` (`total_commands_processed`, `used_memory`...).
    pub async fn info(
        &mut self,
        section: &str,
    ) -> Result<std::collections::BTreeMap<String, f64>, String> {
        match self.command(&["INFO", section]).await? {
            RespValue::Bulk(Some(b)) => Ok(String::from_utf8_lossy(&b)
                .lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    Some((k.to_string(), v.trim().parse().ok()?))
                })
                .collect()),
            other => Err(format!("INFO {section}: {other:?}")),
        }
    }

    pub async fn counters(&mut self) -> Result<RedisCounters, String> {
        let info = self.info("stats").await?;
        let get = |k: &str| {
            info.get(k)
                .map(|v| *v as u64)
                .ok_or_else(|| format!("INFO stats: no {k}"))
        };
        Ok(RedisCounters {
            commands: get("total_commands_processed")?,
            reads: get("total_reads_processed")?,
        })
    }

    /// What two back-to-back readings of [`Redis::counters`] add themselves (1 command, the
    /// first `INFO`, counted once answered; 1 read, the second one's): subtract it from the
    /// difference of two readings around something. The least of three tries.
    pub async fn overhead(&mut self) -> Result<RedisCounters, String> {
        let mut best: Option<RedisCounters> = None;
        for _ in 0..3 {
            let a = self.counters().await?;
            let b = self.counters().await?;
            let d = b.since(&a, &RedisCounters::default());
            best = Some(match best {
                Some(x) => RedisCounters {
                    commands: x.commands.min(d.commands),
                    reads: x.reads.min(d.reads),
                },
                None => d,
            });
        }
        Ok(best.unwrap_or_default())
    }
}

/// A complete reply at the start of `buf`, `None` if more bytes are needed.
fn parse_reply(buf: &[u8]) -> Result<Option<RespValue>, String> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&buf[1..eol]).into_owned();
    Ok(Some(match buf[0] {
        b'+' => RespValue::Simple(line),
        b'-' => RespValue::Error(line),
        b':' => RespValue::Int(line.parse().map_err(|_| format!("bad integer {line:?}"))?),
        b'$' => {
            let n: i64 = line.parse().map_err(|_| format!("bad length {line:?}"))?;
            if n < 0 {
                RespValue::Bulk(None)
            } else {
                let (start, n) = (eol + 2, n as usize);
                if buf.len() < start + n + 2 {
                    return Ok(None);
                }
                RespValue::Bulk(Some(buf[start..start + n].to_vec()))
            }
        }
        other => return Err(format!("unsupported RESP reply type {:?}", other as char)),
    }))
}

/// Two counters of `INFO stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedisCounters {
    /// `total_commands_processed`: every command, those run inside Lua scripts (`EVALSHA`)
    /// too; the `INFO` that reads it is counted only afterwards.
    pub commands: u64,
    /// `total_reads_processed`: read events on client sockets. For one client sending one
    /// request (or one pipeline) at a time and waiting for the answer, one per round trip;
    /// under concurrency several clients' requests may arrive in one read.
    pub reads: u64,
}

impl RedisCounters {
    /// `self - earlier - overhead`, saturating.
    pub fn since(&self, earlier: &RedisCounters, overhead: &RedisCounters) -> RedisCounters {
        RedisCounters {
            commands: self
                .commands
                .saturating_sub(earlier.commands)
                .saturating_sub(overhead.commands),
            reads: self
                .reads
                .saturating_sub(earlier.reads)
                .saturating_sub(overhead.reads),
        }
    }
}

pub(super) fn self_check() {
    let me = std::process::id();
    assert!(cpu_ticks(me).is_some(), "reads /proc/self/stat");
    assert!(status_kib(me, "VmRSS").is_some_and(|k| k > 0));
    assert_eq!(
        parse_reply(b"$5\r\nab:12\r\n"),
        Ok(Some(RespValue::Bulk(Some(b"ab:12".to_vec()))))
    );
    assert_eq!(parse_reply(b"$5\r\nab"), Ok(None));
    assert_eq!(parse_reply(b":42\r\n"), Ok(Some(RespValue::Int(42))));
}
