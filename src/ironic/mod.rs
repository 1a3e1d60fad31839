//! Ironic's rules for the two agent endpoints, as pure functions (no I/O).
//!
//! Everything here mirrors Ironic 39.0.0 (see `README.md`, "Compatibility"): the order in
//! which the API validates, its exact messages, and its JSON formatting (Python's `json.dumps`).
//!
//! The order in which Ironic answers a request, outermost first, and where each step lives:
//! 1. the JSON body-limit middleware, on any path and method ([`heartbeat::check_body_limit`]);
//! 2. version negotiation, 406 ([`version::negotiate`]);
//! 3. routing: 405 for a wrong method; then, for the agent endpoints, query-string decoding
//!    (framework 400) and pecan's `_method` override (405), both inside
//!    [`lookup::check_lookup`] / [`heartbeat::check_heartbeat`];
//! 4. argument validation and the controller's own checks (same functions).
//!
//! Modules besides the endpoint rules: [`params`] (webob/pecan/cgi parameter gathering),
//! [`urlparse`] (Python's `urllib.parse.urlparse`/`geturl`), [`pyjson`] (`json.dumps`,
//! `json.loads`, `repr`).

pub(crate) mod accept;
pub mod error;
pub mod heartbeat;
pub mod ident;
pub mod lookup;
pub mod params;
pub mod pyjson;
mod pyprintable;
pub(crate) mod root;
pub mod states;
pub mod token;
pub mod urlparse;
pub mod version;

pub use error::{HeaderSet, IronicError};

pub(crate) mod work;

#[cfg(test)]
mod cost_tests;
pub use version::{ApiVersion, VersionRange};
