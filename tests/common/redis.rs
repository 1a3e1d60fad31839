//! A private `redis-server` per test (free port, temp dir, no persistence), with outage
//! controls, and a tiny RESP client to inspect what the gateway stored.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A RESP value.
#[derive(Clone, Debug, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// Everything in it as text (arrays flattened, space separated), for secret scanning.
    pub fn to_text(&self) -> String {
        match self {
            Resp::Simple(s) | Resp::Error(s) => s.clone(),
            Resp::Int(i) => i.to_string(),
            Resp::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Resp::Bulk(None) | Resp::Array(None) => String::new(),
            Resp::Array(Some(items)) => items
                .iter()
                .map(Resp::to_text)
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Resp::Int(i) => Some(*i),
            _ => None,
        }
    }
    /// The elements of an array reply as strings.
    pub fn strings(&self) -> Vec<String> {
        match self {
            Resp::Array(Some(items)) => items.iter().map(Resp::to_text).collect(),
            _ => Vec::new(),
        }
    }
}

/// A synchronous RESP connection.
pub struct RedisConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RedisConn {
    pub fn connect(port: u16, timeout: Duration) -> std::io::Result<RedisConn> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        Ok(RedisConn {
            writer: s.try_clone()?,
            reader: BufReader::new(s),
        })
    }

    pub fn cmd(&mut self, args: &[&str]) -> std::io::Result<Resp> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&out)?;
        self.read()
    }

    /// Redis's own counters of what it did (`INFO stats`): commands processed (a command a
    /// script calls counts too) and read events on client sockets. A client that sends a batch
    /// (one command, a pipeline, a script) and waits for its answer costs one read event per
    /// batch: read events count round trips. Read over a connection kept open (one
    /// `INFO` then costs one read event, one command; a new connection would add its close).
    pub fn stats(&mut self) -> RedisStats {
        let info = self.cmd(&["INFO", "stats"]).expect("INFO stats").to_text();
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("INFO stats has no {name}"))
        };
        RedisStats {
            commands: field("total_commands_processed"),
            reads: field("total_reads_processed"),
        }
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut l = String::new();
        if self.reader.read_line(&mut l)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "redis closed",
            ));
        }
        Ok(l.trim_end_matches(['\r', '\n']).to_string())
    }

    fn read(&mut self) -> std::io::Result<Resp> {
        let l = self.line()?;
        let (t, rest) = l.split_at(1.min(l.len()));
        let bad = || {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad RESP line {l:?}"),
            )
        };
        Ok(match t {
            "+" => Resp::Simple(rest.to_string()),
            "-" => Resp::Error(rest.to_string()),
            ":" => Resp::Int(rest.parse().map_err(|_| bad())?),
            "$" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                if n < 0 {
                    Resp::Bulk(None)
                } else {
                    let mut b = vec![0u8; n as usize + 2];
                    self.reader.read_exact(&mut b)?;
                    b.truncate(n as usize);
                    Resp::Bulk(Some(b))
                }
            }
            "*" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                if n < 0 {
                    Resp::Array(None)
                } else {
                    let mut v = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        v.push(self.read()?);
                    }
                    Resp::Array(Some(v))
                }
            }
            // RESP3 types, in case: map, set, null, double, boolean, verbatim, big number.
            "%" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                let mut v = Vec::new();
                for _ in 0..n * 2 {
                    v.push(self.read()?);
                }
                Resp::Array(Some(v))
            }
            "~" | ">" => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                let mut v = Vec::new();
                for _ in 0..n {
                    v.push(self.read()?);
                }
                Resp::Array(Some(v))
            }
            "_" => Resp::Bulk(None),
            "," | "#" | "(" => Resp::Simple(rest.to_string()),
            "=" => {
                let n: usize = rest.parse().map_err(|_| bad())?;
                let mut b = vec![0u8; n + 2];
                self.reader.read_exact(&mut b)?;
                b.truncate(n);
                Resp::Bulk(Some(b))
            }
            _ => return Err(bad()),
        })
    }
}

/// Redis's counters (see [`RedisConn::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedisStats {
    pub commands: i64,
    pub reads: i64,
}

impl RedisStats {
    /// What happened between `before` and `self`, both read over one connection: the `INFO`
    /// that read `self` is one read event; the one that read `before` is one command (a
    /// command is counted once it has run, a read event as it happens).
    pub fn since(&self, before: &RedisStats) -> RedisStats {
        RedisStats {
            commands: self.commands - before.commands - 1,
            reads: self.reads - before.reads - 1,
        }
    }
}

/// A private redis-server. Dropping it kills it.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    frozen: bool,
    /// More arguments for redis-server (`--replicaof`, ...).
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts redis-server on a free port and waits until PING answers.
    pub fn start() -> RedisServer {
        Self::start_with(Vec::new())
    }

    /// [`Self::start`] with more redis-server arguments.
    pub fn start_with(extra: Vec<String>) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("edge-redis-")
            .tempdir()
            .unwrap();
        let mut r = RedisServer {
            port: super::free_port(),
            dir,
            child: None,
            frozen: false,
            extra,
        };
        r.spawn();
        r
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir.path().to_str().unwrap(),
            "--logfile",
            self.log_path().to_str().unwrap(),
        ])
        .args(&self.extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        super::die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("spawn redis-server (is it installed?)");
        self.child = Some(child);
        self.frozen = false;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = RedisConn::connect(self.port, Duration::from_millis(500)) {
                if let Ok(Resp::Simple(s)) = c.cmd(&["PING"]) {
                    if s == "PONG" {
                        return;
                    }
                }
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "redis-server on port {} exited with {st}: {}",
                    self.port,
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "redis-server on port {} did not answer PING: {}",
                    self.port,
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    /// What redis-server logged (for diagnostics).
    pub fn log(&self) -> String {
        read_to_string_lossy(&self.log_path())
    }
    /// `redis://127.0.0.1:PORT/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL (a crash): the port stops answering, the data is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.frozen {
                super::signal(c.id(), libc::SIGCONT);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.frozen = false;
    }

    /// Starts it again on the same port (empty).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP: connections stay open (the kernel accepts) but nothing answers.
    pub fn freeze(&mut self) {
        let pid = self.pid().expect("redis not running");
        super::signal(pid, libc::SIGSTOP);
        self.frozen = true;
    }

    /// SIGCONT.
    pub fn thaw(&mut self) {
        if let Some(pid) = self.pid() {
            super::signal(pid, libc::SIGCONT);
        }
        self.frozen = false;
    }

    pub fn conn(&self) -> RedisConn {
        RedisConn::connect(self.port, Duration::from_secs(5)).expect("connect to redis")
    }

    /// Runs one command (panics on I/O errors).
    pub fn cmd(&self, args: &[&str]) -> Resp {
        self.conn().cmd(args).expect("redis command")
    }

    /// Every key (all databases 0..16 that hold keys).
    pub fn keys(&self) -> Vec<String> {
        self.scan_all().into_iter().map(|(k, _)| k).collect()
    }

    /// Every key of every database with its value as text (`db<N>:<key>` → value), whatever its
    /// type (string, hash, list, set, zset, stream), for secret scanning.
    pub fn scan_all(&self) -> Vec<(String, String)> {
        let mut c = self.conn();
        let mut out = Vec::new();
        for db in 0..16 {
            if let Ok(Resp::Error(_)) = c.cmd(&["SELECT", &db.to_string()]) {
                break;
            }
            let mut cursor = "0".to_string();
            loop {
                let r = c.cmd(&["SCAN", &cursor, "COUNT", "1000"]).expect("SCAN");
                let Resp::Array(Some(parts)) = r else {
                    panic!("SCAN reply {r:?}")
                };
                cursor = parts[0].to_text();
                for key in parts[1].strings() {
                    let ty = c.cmd(&["TYPE", &key]).expect("TYPE").to_text();
                    let v = match ty.as_str() {
                        "string" => c.cmd(&["GET", &key]),
                        "hash" => c.cmd(&["HGETALL", &key]),
                        "list" => c.cmd(&["LRANGE", &key, "0", "-1"]),
                        "set" => c.cmd(&["SMEMBERS", &key]),
                        "zset" => c.cmd(&["ZRANGE", &key, "0", "-1", "WITHSCORES"]),
                        "stream" => c.cmd(&["XRANGE", &key, "-", "+"]),
                        _ => Ok(Resp::Bulk(None)),
                    }
                    .expect("read value");
                    out.push((format!("db{db}:{key}"), format!("{ty} {}", v.to_text())));
                }
                if cursor == "0" {
                    break;
                }
            }
        }
        out
    }

    /// Panics if `secret` occurs in any key or value.
    pub fn assert_absent(&self, secret: &str) {
        for (k, v) in self.scan_all() {
            assert!(!k.contains(secret), "secret found in redis key {k}");
            assert!(
                !v.contains(secret),
                "secret found in redis value of {k}: {v}"
            );
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads everything the server wrote to a file (for diagnostics).
pub fn read_to_string_lossy(p: &std::path::Path) -> String {
    let mut s = Vec::new();
    if let Ok(mut f) = std::fs::File::open(p) {
        let _ = f.read_to_end(&mut s);
    }
    String::from_utf8_lossy(&s).into_owned()
}
