//! A private `redis-server` for the store's unit tests (and their callers'): a unix socket in a
//! temporary directory, no persistence, killed when dropped.

use super::Stores;
use crate::config::EdgeConfig;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct TestRedis {
    child: Child,
    _dir: tempfile::TempDir,
    pub(crate) stores: Stores,
}

impl TestRedis {
    /// Starts one and waits until the store's handles reach it.
    pub(crate) async fn start() -> TestRedis {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("redis.sock");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn redis-server (is it installed?)");
        let mut cfg = EdgeConfig::default();
        cfg.redis.url = format!("unix://{}", socket.display());
        let stores = Stores::new(&cfg).expect("store configuration");
        let redis = TestRedis {
            child,
            _dir: dir,
            stores,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis
            .stores
            .lease
            .hold("ready", "test", Duration::from_millis(1))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not answer");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        redis
    }

    /// Empties Redis, as a flush, an eviction or a restart without persistence would.
    pub(crate) async fn flush(&self) {
        let _: () = self
            .stores
            .conn
            .run(redis::cmd("FLUSHALL").clone())
            .await
            .expect("FLUSHALL");
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
