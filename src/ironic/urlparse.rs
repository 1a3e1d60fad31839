//! Python 3.11's `urllib.parse.urlparse(url)` and `ParseResult.geturl()`, as Ironic uses them
//! on a heartbeat's `callback_url` (CPython 3.11.7, the interpreter of the reference Ironic).

/// `urlparse(url)`'s components.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseResult {
    pub scheme: String,
    pub netloc: String,
    pub path: String,
    pub params: String,
    pub query: String,
    pub fragment: String,
}

/// Python raised `ValueError` (bracketed host that is not IPv6/IPvFuture, unbalanced brackets,
/// or a netloc whose NFKC normalisation adds `/?#@:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueError;

const USES_PARAMS: &[&str] = &[
    "", "ftp", "hdl", "prospero", "http", "imap", "https", "shttp", "rtsp", "rtsps", "rtspu",
    "sip", "sips", "mms", "sftp", "tel",
];

const USES_NETLOC: &[&str] = &[
    "", "ftp", "http", "gopher", "nntp", "telnet", "imap", "wais", "file", "mms", "https", "shttp",
    "snews", "prospero", "rtsp", "rtsps", "rtspu", "rsync", "svn", "svn+ssh", "sftp", "nfs", "git",
    "git+ssh", "ws", "wss",
];

/// Non-ASCII characters whose NFKC form contains one of `/?#@:` (Unicode 14.0, the database of
/// Python 3.11): `urlsplit` rejects a netloc holding one.
const NFKC_URL_DELIMS: &[char] = &[
    '\u{2047}', '\u{2048}', '\u{2049}', '\u{2100}', '\u{2101}', '\u{2105}', '\u{2106}', '\u{2A74}',
    '\u{FE13}', '\u{FE16}', '\u{FE55}', '\u{FE56}', '\u{FE5F}', '\u{FE6B}', '\u{FF03}', '\u{FF0F}',
    '\u{FF1A}', '\u{FF1F}', '\u{FF20}',
];

fn is_scheme_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')
}

/// `urllib.parse.urlparse(url)`.
pub fn urlparse(url: &str) -> Result<ParseResult, ValueError> {
    let (scheme, netloc, mut path, query, fragment) = urlsplit(url)?;
    let mut params = String::new();
    if USES_PARAMS.contains(&scheme.as_str()) && path.contains(';') {
        let (p, q) = split_params(&path);
        params = q;
        path = p;
    }
    Ok(ParseResult {
        scheme,
        netloc,
        path,
        params,
        query,
        fragment,
    })
}

fn split_params(url: &str) -> (String, String) {
    let i = if let Some(slash) = url.rfind('/') {
        match url[slash..].find(';') {
            Some(j) => slash + j,
            None => return (url.to_string(), String::new()),
        }
    } else {
        match url.find(';') {
            Some(j) => j,
            None => return (url.to_string(), String::new()),
        }
    };
    (url[..i].to_string(), url[i + 1..].to_string())
}

type Split = (String, String, String, String, String);

/// `urllib.parse.urlsplit(url)`.
fn urlsplit(url: &str) -> Result<Split, ValueError> {
    let url = url.trim_start_matches(|c: char| c <= ' ');
    let mut url: String = url
        .chars()
        .filter(|c| !matches!(c, '\t' | '\r' | '\n'))
        .collect();
    let mut scheme = String::new();
    let mut netloc = String::new();
    let mut query = String::new();
    let mut fragment = String::new();
    if let Some(i) = url.find(':') {
        let first = url.chars().next();
        if i > 0
            && first.is_some_and(|c| c.is_ascii_alphabetic())
            && url[..i].chars().all(is_scheme_char)
        {
            scheme = url[..i].to_ascii_lowercase();
            url = url[i + 1..].to_string();
        }
    }
    if url.starts_with("//") {
        let rest = &url[2..];
        let delim = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        netloc = rest[..delim].to_string();
        url = rest[delim..].to_string();
        let (lb, rb) = (netloc.contains('['), netloc.contains(']'));
        if lb != rb {
            return Err(ValueError);
        }
        if lb && rb {
            let after = netloc.split_once('[').map_or("", |x| x.1);
            let host = after.split_once(']').map_or(after, |x| x.0);
            check_bracketed_host(host)?;
        }
    }
    if let Some((a, b)) = url.split_once('#') {
        fragment = b.to_string();
        url = a.to_string();
    }
    if let Some((a, b)) = url.split_once('?') {
        query = b.to_string();
        url = a.to_string();
    }
    if netloc.chars().any(|c| NFKC_URL_DELIMS.contains(&c)) {
        return Err(ValueError);
    }
    Ok((scheme, netloc, url, query, fragment))
}

/// `urllib.parse._check_bracketed_host`.
fn check_bracketed_host(host: &str) -> Result<(), ValueError> {
    if let Some(rest) = host.strip_prefix('v') {
        // re.match(r"\Av[a-fA-F0-9]+\..+\Z", host)
        let hex_len = rest.bytes().take_while(u8::is_ascii_hexdigit).count();
        let after = &rest[hex_len..];
        let ok =
            hex_len > 0 && after.starts_with('.') && after.len() > 1 && !after[1..].contains('\n');
        return if ok { Ok(()) } else { Err(ValueError) };
    }
    if is_ipv4(host) {
        return Err(ValueError); // "An IPv4 address cannot be in brackets"
    }
    if is_ipv6(host) {
        Ok(())
    } else {
        Err(ValueError)
    }
}

/// `ipaddress.IPv4Address(s)` succeeds.
fn is_ipv4(s: &str) -> bool {
    if s.is_empty() || s.contains('/') {
        return false;
    }
    let octets: Vec<&str> = s.split('.').collect();
    octets.len() == 4
        && octets.iter().all(|o| {
            !o.is_empty()
                && o.len() <= 3
                && o.bytes().all(|b| b.is_ascii_digit())
                && (*o == "0" || !o.starts_with('0'))
                && o.parse::<u16>().is_ok_and(|v| v <= 255)
        })
}

/// `ipaddress.IPv6Address(s)` succeeds (scope ids included).
fn is_ipv6(s: &str) -> bool {
    if s.contains('/') {
        return false;
    }
    let addr = match s.split_once('%') {
        Some((a, scope)) => {
            if scope.is_empty() || scope.contains('%') {
                return false;
            }
            a
        }
        None => s,
    };
    if addr.is_empty() {
        return false;
    }
    let mut parts: Vec<String> = addr.split(':').map(str::to_string).collect();
    if parts.len() < 3 {
        return false;
    }
    if parts.last().is_some_and(|p| p.contains('.')) {
        let v4 = parts.pop().unwrap_or_default();
        if !is_ipv4(&v4) {
            return false;
        }
        let n: u32 = v4
            .split('.')
            .fold(0u32, |acc, o| (acc << 8) | o.parse::<u32>().unwrap_or(0));
        parts.push(format!("{:x}", (n >> 16) & 0xffff));
        parts.push(format!("{:x}", n & 0xffff));
    }
    if parts.len() > 9 {
        return false;
    }
    let mut skip_index = None;
    for (i, p) in parts.iter().enumerate().take(parts.len() - 1).skip(1) {
        if p.is_empty() {
            if skip_index.is_some() {
                return false;
            }
            skip_index = Some(i);
        }
    }
    let n = parts.len();
    let (parts_hi, parts_lo) = if let Some(skip) = skip_index {
        let mut hi = skip;
        let mut lo = n - skip - 1;
        if parts[0].is_empty() {
            hi -= 1;
            if hi > 0 {
                return false;
            }
        }
        if parts[n - 1].is_empty() {
            lo -= 1;
            if lo > 0 {
                return false;
            }
        }
        if 8 < hi + lo + 1 {
            return false;
        }
        (hi, lo)
    } else {
        if n != 8 || parts[0].is_empty() || parts[n - 1].is_empty() {
            return false;
        }
        (n, 0)
    };
    let hextet =
        |h: &str| !h.is_empty() && h.len() <= 4 && h.bytes().all(|b| b.is_ascii_hexdigit());
    parts[..parts_hi].iter().all(|h| hextet(h)) && parts[n - parts_lo..].iter().all(|h| hextet(h))
}

/// `ParseResult.geturl()` (`urlunparse`).
pub fn geturl(p: &ParseResult) -> String {
    let mut url = p.path.clone();
    if !p.params.is_empty() {
        url = format!("{url};{}", p.params);
    }
    // urlunsplit
    if !p.netloc.is_empty()
        || (!p.scheme.is_empty()
            && USES_NETLOC.contains(&p.scheme.as_str())
            && !url.starts_with("//"))
    {
        if !url.is_empty() && !url.starts_with('/') {
            url = format!("/{url}");
        }
        url = format!("//{}{url}", p.netloc);
    }
    if !p.scheme.is_empty() {
        url = format!("{}:{url}", p.scheme);
    }
    if !p.query.is_empty() {
        url = format!("{url}?{}", p.query);
    }
    if !p.fragment.is_empty() {
        url = format!("{url}#{}", p.fragment);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(u: &str) -> Result<(String, String), ValueError> {
        let p = urlparse(u)?;
        Ok((p.scheme.clone(), geturl(&p)))
    }

    #[test]
    fn geturl_like_python() {
        // (input, scheme, geturl()) from CPython 3.11.7.
        let cases: &[(&str, &str, &str)] = &[
            ("https://1.2.3.4:9999", "https", "https://1.2.3.4:9999"),
            ("HTTPS://h:1", "https", "https://h:1"),
            ("HtTp://H:1/", "http", "http://H:1/"),
            ("https://h:1/?", "https", "https://h:1/"),
            ("https://h:1/#", "https", "https://h:1/"),
            ("https://h:1?#", "https", "https://h:1"),
            ("https://h:1/p;x?q=1#f", "https", "https://h:1/p;x?q=1#f"),
            ("https://h:1/a;b/c;d", "https", "https://h:1/a;b/c;d"),
            ("http:foo", "http", "http:///foo"),
            ("https:", "https", "https://"),
            ("https:/x", "https", "https:///x"),
            ("  https://h", "https", "https://h"),
            ("\u{0}\u{1f} https://h", "https", "https://h"),
            ("ht\ttp://h\n:1\r", "http", "http://h:1"),
            ("https://h ", "https", "https://h "),
            ("https://[::1]:9999", "https", "https://[::1]:9999"),
            (
                "https://[fe80::1%eth0]:1",
                "https",
                "https://[fe80::1%eth0]:1",
            ),
            ("https://[v1.x]:1", "https", "https://[v1.x]:1"),
            (
                "https://[::ffff:1.2.3.4]",
                "https",
                "https://[::ffff:1.2.3.4]",
            ),
            ("xhttpx://h", "xhttpx", "xhttpx://h"),
            ("foo://h", "foo", "foo://h"),
            ("//h:1/x", "", "//h:1/x"),
            ("h:1", "h", "h:1"),
            ("1http://h", "", "1http://h"),
            ("", "", ""),
            ("a+b-c.d:x", "a+b-c.d", "a+b-c.d:x"),
            ("é://h", "", "é://h"),
            ("https://é.example", "https", "https://é.example"),
            ("https://h/path?", "https", "https://h/path"),
            ("file:///x", "file", "file:///x"),
            ("https://u:p@h:1", "https", "https://u:p@h:1"),
        ];
        for (u, scheme, out) in cases {
            assert_eq!(norm(u), Ok((scheme.to_string(), out.to_string())), "{u:?}");
        }
    }

    #[test]
    fn value_errors_like_python() {
        for u in [
            "https://[::1",
            "https://::1]",
            "https://[1.2.3.4]",
            "https://[::1::2]",
            "https://[abc]",
            "https://[]",
            "https://[v1]",
            "https://[vx.a]",
            "https://[fe80::1%]",
            "https://[1:2:3:4:5:6:7:8:9]",
            "https://[:1:2]",
            "https://[1:2:]",
            "https://[12345::]",
            "https://h\u{2100}x",
            "https://h\u{ff0f}x",
            "https://h\u{fe55}",
            "https://[V1.x]",
        ] {
            assert_eq!(urlparse(u), Err(ValueError), "{u:?}");
        }
        for u in [
            "https://[::]",
            "https://[1:2:3:4:5:6:7:8]",
            "https://[1::8]",
            "https://[::1.2.3.4]",
            "https://[1:2:3:4:5:6:1.2.3.4]",
            "https://hé",
        ] {
            assert!(urlparse(u).is_ok(), "{u:?}");
        }
    }

    #[test]
    fn params_like_python() {
        for (u, out) in [
            ("http://h;p", "http://h;p"),
            ("https://h:1;x", "https://h:1;x"),
            ("https://h/;", "https://h/"),
            ("https://h/a;", "https://h/a"),
            ("HTTPs:foo;bar", "https:///foo;bar"),
            ("tel:123;x", "tel:123;x"),
            ("https://h#a?b", "https://h#a?b"),
            ("https://h?a#b?c", "https://h?a#b?c"),
        ] {
            assert_eq!(geturl(&urlparse(u).unwrap()), out, "{u:?}");
        }
        let p = urlparse("https://h/a;b?q#f").unwrap();
        assert_eq!(
            (
                p.path.as_str(),
                p.params.as_str(),
                p.query.as_str(),
                p.fragment.as_str()
            ),
            ("/a", "b", "q", "f")
        );
    }
}
