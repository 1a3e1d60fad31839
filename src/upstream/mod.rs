//! Talking to the upstream Ironic: the client for the agent requests the gateway forwards
//! itself, the pre-built peer, and the discovery of the upstream's API version range.

pub mod client;
pub(crate) mod governor;
pub mod headers;
pub mod versions;

pub use client::{UpstreamClient, UpstreamError, UpstreamResponse};
pub use versions::{UpstreamInfo, VersionDiscovery, VersionState};
