//! Which sources may use a listener. The provisioning and cleaning networks are known blocks:
//! each listener may name the blocks it serves (`allow`) and those it never serves (`deny`).
//! The check runs before anything else, on the client address as the trusted-proxy rule
//! resolves it (`client_addr`), and a refused source gets Ironic's own 403 shape.
//!
//! [`SourcePolicy`] and [`ListenerPolicies`] are pure and table-tested;
//! [`SourcePolicyPlugin`] is the plugin that applies them.

use crate::client_addr::IpNet;
use crate::config::{ConfigError, EdgeConfig};
use crate::disposition::{Disposition, Rule};
use crate::edge::{Edge, LocalAnswer};
use crate::ironic::error::access_denied;
use crate::plugin::{Plugin, RequestCtx};
use async_trait::async_trait;
use pingora::proxy::Session;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// One listener's rule: a source in `deny` is refused; with `allow` set, so is one outside it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SourcePolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl SourcePolicy {
    pub(crate) fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        SourcePolicy { allow, deny }
    }

    /// Parses a listener's `allow` and `deny` lists; an error names the entry.
    pub(crate) fn parse(
        listener: usize,
        allow: &[String],
        deny: &[String],
    ) -> Result<Self, ConfigError> {
        let nets = |name: &str, list: &[String]| -> Result<Vec<IpNet>, ConfigError> {
            list.iter()
                .enumerate()
                .map(|(j, text)| {
                    IpNet::parse(text).map_err(|r| {
                        ConfigError::new(
                            format!("ironic_edge.listeners[{listener}].{name}[{j}]"),
                            r,
                        )
                    })
                })
                .collect()
        };
        Ok(SourcePolicy::new(
            nets("allow", allow)?,
            nets("deny", deny)?,
        ))
    }

    /// Whether nothing is restricted.
    pub(crate) fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    pub(crate) fn admits(&self, ip: IpAddr) -> bool {
        if self.deny.iter().any(|n| n.contains(ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(ip))
    }
}

/// What belongs to the listener bound to `local`: the entry of that very address, else the
/// one of the wildcard address of the same family on that port.
pub(crate) fn listener_for_local<T>(
    listeners: &[(SocketAddr, T)],
    local: SocketAddr,
) -> Option<&T> {
    let local = SocketAddr::new(crate::client_addr::unmap(local.ip()), local.port());
    let exact = listeners.iter().find(|(a, _)| *a == local);
    let wildcard = || {
        listeners.iter().find(|(a, _)| {
            a.port() == local.port()
                && a.ip().is_unspecified()
                && (a.is_ipv4() == local.is_ipv4() || a.is_ipv6())
        })
    };
    exact.or_else(wildcard).map(|(_, t)| t)
}

/// Every listener's rule, found by the local address a connection was accepted on.
#[derive(Clone, Debug, Default)]
pub(crate) struct ListenerPolicies {
    listeners: Vec<(SocketAddr, SourcePolicy)>,
}

impl ListenerPolicies {
    pub(crate) fn new(listeners: Vec<(SocketAddr, SourcePolicy)>) -> Self {
        ListenerPolicies { listeners }
    }

    pub(crate) fn from_config(cfg: &EdgeConfig) -> Result<Self, ConfigError> {
        let mut listeners = Vec::with_capacity(cfg.listeners.len());
        for (i, l) in cfg.listeners.iter().enumerate() {
            let policy = SourcePolicy::parse(i, &l.allow, &l.deny)?;
            let addr = crate::config::parse_socket_addr(&l.address)
                .map_err(|r| ConfigError::new(format!("ironic_edge.listeners[{i}].address"), r))?;
            listeners.push((addr, policy));
        }
        Ok(ListenerPolicies::new(listeners))
    }

    /// Whether no listener restricts its sources (the plugin then costs nothing).
    pub(crate) fn is_open(&self) -> bool {
        self.listeners.iter().all(|(_, p)| p.is_open())
    }

    /// The rule of the listener bound to `local`: the one bound to that very address, else
    /// the one bound to the wildcard address of the same family on that port.
    pub(crate) fn for_local(&self, local: SocketAddr) -> Option<&SourcePolicy> {
        listener_for_local(&self.listeners, local)
    }

    /// Whether a request from `source` on the listener bound to `local` may go on. A
    /// connection on an address no listener names (not expected) is judged by the strictest
    /// rule: refused if any listener restricts its sources and refuses this one.
    pub(crate) fn admits(&self, local: Option<SocketAddr>, source: IpAddr) -> bool {
        match local.and_then(|l| self.for_local(l)) {
            Some(policy) => policy.admits(source),
            None => self.listeners.iter().all(|(_, p)| p.admits(source)),
        }
    }
}

/// Refuses requests from sources their listener does not serve, with Ironic's 403.
pub(crate) struct SourcePolicyPlugin {
    edge: Arc<Edge>,
    policies: ListenerPolicies,
}

impl SourcePolicyPlugin {
    /// The plugin of the listeners' source blocks (checked, naming the field); `None` when no
    /// listener has one: it would admit every request.
    pub(crate) fn new(edge: Arc<Edge>) -> Result<Option<Self>, ConfigError> {
        let policies = ListenerPolicies::from_config(&edge.config)?;
        if policies.is_open() {
            return Ok(None);
        }
        Ok(Some(SourcePolicyPlugin { edge, policies }))
    }
}

#[async_trait]
impl Plugin for SourcePolicyPlugin {
    async fn handle(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Disposition> {
        let local = session
            .server_addr()
            .and_then(|a| a.as_inet())
            .map(|a| SocketAddr::new(a.ip(), a.port()));
        // A peer without an IP address (not expected on TCP listeners) has no source to admit.
        let admitted = ctx
            .client
            .as_ref()
            .is_some_and(|c| self.policies.admits(local, c.ip));
        if admitted {
            return Ok(Disposition::Continue);
        }
        let req = session.req_header();
        ctx.route = ctx.kind;
        let path = req.uri.path().to_string();
        let info = self.edge.versions.get();
        let version = info.as_ref().and_then(|i| {
            crate::ironic::version::negotiate(&session.req_header().headers, &i.range).ok()
        });
        Ok(Disposition::answer(
            Rule::RefusedSource,
            LocalAnswer::error(&access_denied(&path)),
            info,
            version,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|t| IpNet::parse(t).unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn deny_wins_then_allow_decides() {
        let policy = SourcePolicy::new(
            nets(&["10.20.0.0/16", "fd00:20::/64"]),
            nets(&["10.20.9.0/24"]),
        );
        for (source, admitted) in [
            ("10.20.1.7", true),
            ("10.20.9.7", false),
            ("10.21.0.1", false),
            ("fd00:20::5", true),
            ("fd00:21::5", false),
            // An IPv4 client on a dual-stack socket.
            ("::ffff:10.20.1.7", true),
            ("::ffff:10.20.9.7", false),
        ] {
            assert_eq!(policy.admits(ip(source)), admitted, "{source}");
        }
    }

    #[test]
    fn no_allow_list_admits_all_but_the_denied() {
        let policy = SourcePolicy::new(vec![], nets(&["192.0.2.0/24"]));
        assert!(policy.admits(ip("198.51.100.1")));
        assert!(!policy.admits(ip("192.0.2.10")));
        assert!(SourcePolicy::default().is_open());
        assert!(SourcePolicy::default().admits(ip("203.0.113.9")));
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_listener_applies_its_own_rule() {
        let provisioning = SourcePolicy::new(nets(&["10.1.0.0/16"]), vec![]);
        let cleaning = SourcePolicy::new(nets(&["10.2.0.0/16"]), vec![]);
        let policies = ListenerPolicies::new(vec![
            (addr("10.1.0.1:6385"), provisioning.clone()),
            (addr("0.0.0.0:6386"), cleaning.clone()),
            (addr("[::]:6387"), SourcePolicy::default()),
        ]);
        assert_eq!(
            policies.for_local(addr("10.1.0.1:6385")),
            Some(&provisioning)
        );
        assert_eq!(
            policies.for_local(addr("10.2.0.1:6386")),
            Some(&cleaning),
            "a wildcard listener serves every local address on its port"
        );
        assert_eq!(
            policies.for_local(addr("[::ffff:10.2.0.1]:6386")),
            Some(&cleaning)
        );
        assert_eq!(
            policies.for_local(addr("10.9.0.1:6387")),
            Some(&SourcePolicy::default()),
            "an IPv6 wildcard also takes IPv4 connections"
        );
        assert!(policies.admits(Some(addr("10.1.0.1:6385")), ip("10.1.3.3")));
        assert!(!policies.admits(Some(addr("10.1.0.1:6385")), ip("10.2.3.3")));
        assert!(policies.admits(Some(addr("10.2.0.1:6386")), ip("10.2.3.3")));
        // An address no listener names: refused unless every rule admits the source.
        assert!(!policies.admits(Some(addr("10.7.0.1:9999")), ip("10.2.3.3")));
        assert!(!policies.admits(None, ip("10.1.3.3")));
    }

    #[test]
    fn a_bad_entry_is_named() {
        let e =
            SourcePolicy::parse(1, &["10.0.0.0/8".into()], &["10.0.0.1/33".into()]).unwrap_err();
        assert_eq!(e.field, "ironic_edge.listeners[1].deny[0]");
        let e = SourcePolicy::parse(0, &["nowhere".into()], &[]).unwrap_err();
        assert_eq!(e.field, "ironic_edge.listeners[0].allow[0]");
    }
}
