//! The cross-process half of the lookup single flight ([`crate::agent::flight`]): a lease
//! key names the process leading a flight, a result key publishes its outcome to the waiters.

use super::conn::{eval, millis, Conn, WriteStep};
use super::StoreResult;
use std::time::Duration;

/// The outcome of a lookup flight, shared with the identical lookups that waited for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FlightResult {
    /// Ironic's answer, to repeat to every waiter (errors only: never a 200, which carries
    /// node data and a token that belongs to one caller).
    Shared { status: u16, body: String },
    /// The answer was a success: each waiter asks Ironic itself.
    AskUpstream,
}

/// Where a flight stands, as seen by a waiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FlightState {
    Running,
    Done(FlightResult),
    /// No leader and no result (the leader died, or its result expired).
    Gone,
}

/// Lookup flights shared by every gateway process.
#[derive(Clone)]
pub(crate) struct FlightBoard {
    conn: Conn,
}

impl FlightBoard {
    pub(crate) fn new(conn: Conn) -> Self {
        FlightBoard { conn }
    }

    /// Tries to become the one process that sends this lookup upstream. `true`: lead it.
    pub(crate) async fn begin(&self, key: &str, owner: &str, ttl: Duration) -> StoreResult<bool> {
        let reply: Option<String> = self
            .conn
            .run(
                redis::cmd("SET")
                    .arg(self.conn.keys.flight(key))
                    .arg(owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(ttl))
                    .clone(),
            )
            .await?;
        Ok(reply.is_some())
    }

    /// Where the flight of this key stands.
    pub(crate) async fn state(&self, key: &str) -> StoreResult<FlightState> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET")
            .arg(self.conn.keys.flight_result(key))
            .cmd("EXISTS")
            .arg(self.conn.keys.flight(key));
        let (result, running): (Option<String>, bool) = self.conn.run_pipe(pipe).await?;
        if let Some(text) = result {
            return Ok(FlightState::Done(decode_result(&text)));
        }
        Ok(if running {
            FlightState::Running
        } else {
            FlightState::Gone
        })
    }

    /// Publishes the result for the waiters (kept `ttl`) and ends the flight.
    pub(crate) async fn end(
        &self,
        key: &str,
        owner: &str,
        result: &FlightResult,
        ttl: Duration,
    ) -> StoreResult<()> {
        let mut step = WriteStep::new();
        self.write_end(&mut step, key, owner, result, ttl);
        self.conn.write_step(step).await
    }

    /// [`Self::end`], in `step`.
    pub(crate) fn write_end(
        &self,
        step: &mut WriteStep,
        key: &str,
        owner: &str,
        result: &FlightResult,
        ttl: Duration,
    ) {
        // Publish the result, then release the flight only if it is still ours (it may have
        // expired and been taken by another process meanwhile).
        const END: &str = r"redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
              if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
              return 1";
        let keys = [
            self.conn.keys.flight(key),
            self.conn.keys.flight_result(key),
        ];
        step.write(eval(
            END,
            &keys,
            (owner, encode_result(result), millis(ttl)),
        ));
    }
}

/// `<status> <body>` (the body of an Ironic error answer; never a success body).
fn encode_result(r: &FlightResult) -> String {
    match r {
        FlightResult::Shared { status, body } => format!("{status} {body}"),
        FlightResult::AskUpstream => "ask".to_string(),
    }
}

fn decode_result(text: &str) -> FlightResult {
    match text.split_once(' ') {
        Some((status, body)) => match status.parse::<u16>() {
            Ok(status) if (400..600).contains(&status) => FlightResult::Shared {
                status,
                body: body.to_string(),
            },
            _ => FlightResult::AskUpstream,
        },
        None => FlightResult::AskUpstream,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flight_results_round_trip() {
        let shared = FlightResult::Shared {
            status: 404,
            body: "{\"error_message\": \"x y\"}".into(),
        };
        assert_eq!(decode_result(&encode_result(&shared)), shared);
        assert_eq!(
            decode_result(&encode_result(&FlightResult::AskUpstream)),
            FlightResult::AskUpstream
        );
        // Anything unexpected means: ask upstream (the safe answer).
        assert_eq!(decode_result("200 {}"), FlightResult::AskUpstream);
        assert_eq!(decode_result("garbage"), FlightResult::AskUpstream);
    }
}
