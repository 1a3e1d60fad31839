//! Who the client is: the TCP peer, or, when the peer is a trusted proxy, the address that
//! proxy (and any trusted proxy before it) put in `X-Forwarded-For`. Computed once per
//! request; the replay binding, the logs and the `X-Forwarded-For` sent upstream all use it.
//!
//! Pure rules, no I/O. PROXY protocol is not supported: Pingora 0.9.1 only offers a raw
//! pre-TLS hook for it, with no parser.

use std::net::IpAddr;

/// An address block: an IP address and a prefix length (`10.0.0.0/8`, `fd00::/64`, or a bare
/// address for a single host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `ADDR` or `ADDR/PREFIX`; the address must have no bits set past the prefix, so
    /// that a typo (`10.0.0.1/8` meant as one host) is not silently widened.
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let (addr_text, prefix_text) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{text:?}: the prefix length must be 0 to {max}")),
            },
        };
        let net = IpNet { addr, prefix };
        if net.masked(addr) != bits(addr) {
            return Err(format!(
                "{text:?} has host bits set past /{prefix} (write the network address)"
            ));
        }
        Ok(net)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = unmap(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && self.masked(ip) == bits(self.addr)
    }

    fn masked(&self, ip: IpAddr) -> u128 {
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let keep = u32::from(self.prefix);
        let mask = if keep == 0 {
            0
        } else {
            (u128::MAX << (128 - keep)) >> (128 - width)
        };
        bits(ip) & mask
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// An IPv4 peer on a dual-stack socket shows as `::ffff:a.b.c.d`: the same client.
pub(crate) fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The configured `trusted_proxies`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }
}

/// A request's client, as the gateway uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientAddr {
    pub ip: IpAddr,
    /// The `X-Forwarded-For` to send upstream: the client, then each trusted proxy the request
    /// passed, ending with the TCP peer. Whatever an untrusted sender wrote is dropped.
    pub forwarded_for: String,
}

/// Trusted hops walked through at most: a longer chain of trusted proxies is not a real
/// deployment, and the walk (and the chain kept) stays bounded whatever the header holds.
const MAX_TRUSTED_HOPS: usize = 16;

/// The client of a request from `peer` carrying these `X-Forwarded-For` values (in header
/// order). From an untrusted peer the header is ignored. From a trusted one the list is read
/// right to left: each address was written by the trusted hop to its right, so the first one
/// that is not itself a trusted proxy is the client; an unparsable entry stops the walk at
/// the last address a trusted hop vouched for.
pub fn resolve<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    trusted: &TrustedProxies,
) -> ClientAddr {
    let peer = unmap(peer);
    if !trusted.contains(peer) {
        return ClientAddr {
            ip: peer,
            forwarded_for: address_text(peer),
        };
    }
    // Right to left: the hops, nearest first.
    let mut hops = vec![peer];
    'walk: for value in forwarded_for.rev() {
        for entry in value.rsplit(',') {
            if hops.len() > MAX_TRUSTED_HOPS {
                break 'walk;
            }
            let Some(ip) = parse_entry(entry) else {
                break 'walk;
            };
            hops.push(ip);
            if !trusted.contains(ip) {
                break 'walk;
            }
        }
    }
    let ip = *hops.last().unwrap_or(&peer);
    let forwarded_for = hops
        .iter()
        .rev()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    ClientAddr { ip, forwarded_for }
}

/// An address as text, in one allocation (`to_string` grows its buffer: on every request).
fn address_text(ip: IpAddr) -> String {
    use std::fmt::Write;
    // The longest IPv6 text is 39 characters, an IPv4-mapped one 45.
    let mut text = String::with_capacity(45);
    let _ = write!(text, "{ip}");
    text
}

/// One `X-Forwarded-For` element: `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]` or `[::1]:80`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(unmap(ip));
    }
    if let Some(rest) = e.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return inside
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|v6| unmap(v6.into()));
    }
    let (host, port) = e.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| IpNet::parse(n).unwrap()).collect())
    }

    #[test]
    fn cidr_parsing() {
        let cases: &[(&str, bool)] = &[
            ("10.0.0.0/8", true),
            ("10.1.2.3", true),
            ("0.0.0.0/0", true),
            ("fd00::/64", true),
            ("::1", true),
            ("::/0", true),
            ("10.0.0.1/8", false),
            ("10.0.0.0/33", false),
            ("fd00::/129", false),
            ("10.0.0.0/", false),
            ("10.0.0.0/x", false),
            ("example.org", false),
            ("", false),
        ];
        for (text, ok) in cases {
            assert_eq!(IpNet::parse(text).is_ok(), *ok, "{text}");
        }
    }

    #[test]
    fn cidr_membership() {
        let cases: &[(&str, &str, bool)] = &[
            ("10.0.0.0/8", "10.200.3.4", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("10.1.2.3", "10.1.2.3", true),
            ("10.1.2.3", "10.1.2.4", false),
            ("0.0.0.0/0", "192.0.2.1", true),
            ("0.0.0.0/0", "2001:db8::1", false),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("127.0.0.1", "::ffff:127.0.0.1", true),
            ("::/0", "10.0.0.1", false),
        ];
        for (net, addr, want) in cases {
            assert_eq!(
                IpNet::parse(net).unwrap().contains(ip(addr)),
                *want,
                "{net} {addr}"
            );
        }
    }

    /// (trusted, peer, X-Forwarded-For values, client, forwarded chain)
    #[test]
    fn client_resolution() {
        type Case<'a> = (&'a [&'a str], &'a str, &'a [&'a str], &'a str, &'a str);
        let cases: &[Case] = &[
            // No trusted proxies: the peer, whatever the header says.
            (&[], "192.0.2.7", &["10.9.9.9"], "192.0.2.7", "192.0.2.7"),
            // An untrusted peer's header is ignored.
            (
                &["10.0.0.1"],
                "192.0.2.7",
                &["10.9.9.9"],
                "192.0.2.7",
                "192.0.2.7",
            ),
            // A trusted proxy: its right-most entry.
            (
                &["10.0.0.1"],
                "10.0.0.1",
                &["192.0.2.7"],
                "192.0.2.7",
                "192.0.2.7, 10.0.0.1",
            ),
            // What the client itself wrote (left of its own address) is not believed.
            (
                &["10.0.0.1"],
                "10.0.0.1",
                &["6.6.6.6, 192.0.2.7"],
                "192.0.2.7",
                "192.0.2.7, 10.0.0.1",
            ),
            // Two trusted hops, in one header or two.
            (
                &["10.0.0.0/24"],
                "10.0.0.1",
                &["6.6.6.6, 192.0.2.7, 10.0.0.2"],
                "192.0.2.7",
                "192.0.2.7, 10.0.0.2, 10.0.0.1",
            ),
            (
                &["10.0.0.0/24"],
                "10.0.0.1",
                &["6.6.6.6, 192.0.2.7", "10.0.0.2"],
                "192.0.2.7",
                "192.0.2.7, 10.0.0.2, 10.0.0.1",
            ),
            // A trusted proxy that sent no header: it is the client.
            (&["10.0.0.1"], "10.0.0.1", &[], "10.0.0.1", "10.0.0.1"),
            // Every entry trusted: the left-most one.
            (
                &["10.0.0.0/24"],
                "10.0.0.1",
                &["10.0.0.3, 10.0.0.2"],
                "10.0.0.3",
                "10.0.0.3, 10.0.0.2, 10.0.0.1",
            ),
            // Garbage stops the walk at the last vouched-for address.
            (
                &["10.0.0.0/24"],
                "10.0.0.1",
                &["192.0.2.7, bogus, 10.0.0.2"],
                "10.0.0.2",
                "10.0.0.2, 10.0.0.1",
            ),
            (&["10.0.0.1"], "10.0.0.1", &[""], "10.0.0.1", "10.0.0.1"),
            // Ports and brackets, IPv6, mapped IPv4.
            (
                &["10.0.0.1"],
                "10.0.0.1",
                &["192.0.2.7:4711"],
                "192.0.2.7",
                "192.0.2.7, 10.0.0.1",
            ),
            (
                &["10.0.0.1"],
                "10.0.0.1",
                &["[2001:db8::7]:4711"],
                "2001:db8::7",
                "2001:db8::7, 10.0.0.1",
            ),
            (
                &["fd00::/64"],
                "fd00::1",
                &["2001:db8::7"],
                "2001:db8::7",
                "2001:db8::7, fd00::1",
            ),
            (
                &["127.0.0.1"],
                "::ffff:127.0.0.1",
                &["::ffff:192.0.2.7"],
                "192.0.2.7",
                "192.0.2.7, 127.0.0.1",
            ),
        ];
        for (nets, peer, xff, client, chain) in cases {
            let got = resolve(ip(peer), xff.iter().copied(), &trusted(nets));
            assert_eq!(
                (got.ip, got.forwarded_for.as_str()),
                (ip(client), *chain),
                "{nets:?} {peer} {xff:?}"
            );
        }
    }

    #[test]
    fn a_long_chain_of_trusted_entries_is_walked_a_bounded_distance() {
        let header = vec!["10.0.0.2"; 100_000].join(", ");
        let got = resolve(
            ip("10.0.0.1"),
            [header.as_str()].into_iter(),
            &trusted(&["10.0.0.0/24"]),
        );
        assert_eq!(got.ip, ip("10.0.0.2"));
        assert_eq!(got.forwarded_for.matches(',').count(), MAX_TRUSTED_HOPS);
    }

    #[test]
    fn entry_forms() {
        let cases: &[(&str, Option<&str>)] = &[
            (" 192.0.2.1 ", Some("192.0.2.1")),
            ("192.0.2.1:80", Some("192.0.2.1")),
            ("[::1]", Some("::1")),
            ("[::1]:8080", Some("::1")),
            ("::1", Some("::1")),
            ("[::1]x", None),
            ("192.0.2.1:", None),
            ("192.0.2.1:123456", None),
            ("unknown", None),
            ("_hidden", None),
        ];
        for (entry, want) in cases {
            assert_eq!(parse_entry(entry), want.map(ip), "{entry:?}");
        }
    }
}
