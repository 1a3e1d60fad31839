//! The agent token in lookup answers (spec 1.5): recognise, mask, never leak.

/// What a lookup answer's `config.agent_token` holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupToken {
    /// A raw token (Ironic minted it for this request, or leaked a stored one below 1.62).
    Raw(String),
    /// `"******"`: a token exists, this caller does not get it.
    Masked,
    /// `null`, absent, or no `config` at all.
    Absent,
}

/// The mask Ironic uses.
pub const MASK: &str = "******";

/// Reads `config.agent_token` from a lookup answer's body. `None` if the body is not JSON.
pub fn lookup_token(body: &[u8]) -> Option<LookupToken> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(match v.get("config").and_then(|c| c.get("agent_token")) {
        Some(serde_json::Value::String(s)) if s == MASK => LookupToken::Masked,
        Some(serde_json::Value::String(s)) => LookupToken::Raw(s.clone()),
        _ => LookupToken::Absent,
    })
}

/// Rewrites the body so that `config.agent_token` holds `replacement` (a JSON literal such as
/// `"\"******\""` or `"null"`), touching no other byte, so the answer stays byte-identical
/// to Ironic's otherwise. Returns `None` if the token could not be located.
///
/// Only the top-level `config` object's `agent_token` is considered (a node's `properties` may
/// hold a key of the same name), and only when its current value is the JSON string `token`.
pub fn replace_token(body: &[u8], token: &str, replacement: &str) -> Option<Vec<u8>> {
    let (start, end) = value_span(body, &["config", "agent_token"])?;
    let current: serde_json::Value = serde_json::from_slice(&body[start..end]).ok()?;
    if current.as_str() != Some(token) {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() + replacement.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(replacement.as_bytes());
    out.extend_from_slice(&body[end..]);
    Some(out)
}

/// The byte span of the value at `path` (object keys from the top level), if the body is a
/// well-formed JSON document. With duplicate keys the last one wins, as in Python.
fn value_span(body: &[u8], path: &[&str]) -> Option<(usize, usize)> {
    let mut s = Scanner { b: body, i: 0 };
    s.ws();
    let found = s.value(path)?;
    s.ws();
    if s.i != body.len() {
        return None;
    }
    found
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    /// Skips one value; returns `Some(found)` where `found` is the span of `path` inside it
    /// (the value itself for an empty path), `None` on malformed input.
    fn value(&mut self, path: &[&str]) -> Option<Option<(usize, usize)>> {
        let start = self.i;
        let c = *self.b.get(self.i)?;
        let mut found = None;
        match c {
            b'{' => {
                self.i += 1;
                self.ws();
                if self.eat(b'}').is_none() {
                    loop {
                        self.ws();
                        let ks = self.i;
                        self.string()?;
                        let key: String = serde_json::from_slice(&self.b[ks..self.i]).ok()?;
                        self.ws();
                        self.eat(b':')?;
                        self.ws();
                        let sub = match path.split_first() {
                            Some((head, rest)) if *head == key => Some(rest),
                            _ => None,
                        };
                        let r = self.value(sub.unwrap_or(&[]))?;
                        if sub.is_some() {
                            found = r;
                        }
                        self.ws();
                        if self.eat(b',').is_some() {
                            continue;
                        }
                        self.eat(b'}')?;
                        break;
                    }
                }
            }
            b'[' => {
                self.i += 1;
                self.ws();
                if self.eat(b']').is_none() {
                    loop {
                        self.ws();
                        self.value(&[])?;
                        self.ws();
                        if self.eat(b',').is_some() {
                            continue;
                        }
                        self.eat(b']')?;
                        break;
                    }
                }
            }
            b'"' => self.string()?,
            _ => {
                let n = self.b[self.i..]
                    .iter()
                    .take_while(|c| !matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                    .count();
                if n == 0 {
                    return None;
                }
                serde_json::from_slice::<serde_json::Value>(&self.b[self.i..self.i + n]).ok()?;
                self.i += n;
            }
        }
        if path.is_empty() {
            return Some(Some((start, self.i)));
        }
        Some(found)
    }

    fn string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        while self.i < self.b.len() {
            match self.b[self.i] {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    return Some(());
                }
                _ => self.i += 1,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "cq6XlMAhfScH3HHZsTXpymqzo593zbtMhyyQ6xXCOcQ";

    /// A real 39.0.0 lookup answer (captured from the peer Ironic).
    fn body(token_json: &str) -> String {
        format!(
            r#"{{"node": {{"uuid": "a35f58fb-a7bd-47fa-a6f4-03544656895c", "properties": {{"cpu_arch": "x86_64", "memory_mb": 4096, "local_gb": 40, "agent_token": "{TOKEN}"}}, "instance_info": {{}}, "driver_internal_info": {{"agent_secret_token": "******"}}, "links": [{{"href": "http://x/v1/nodes/a35f58fb-a7bd-47fa-a6f4-03544656895c", "rel": "self"}}, {{"href": "http://x/nodes/a35f58fb-a7bd-47fa-a6f4-03544656895c", "rel": "bookmark"}}]}}, "config": {{"metrics": {{"backend": "noop", "prepend_host": false, "prepend_uuid": false, "prepend_host_reverse": true, "global_prefix": null}}, "metrics_statsd": {{"statsd_host": "localhost", "statsd_port": 8125}}, "heartbeat_timeout": 300, "agent_containers": {{"allow_arbitrary_containers": false, "allowed_containers": [], "container_steps_file": "/etc/ironic-python-agent.d/mysteps.yaml", "runner": "podman", "pull_options": [], "run_options": ["--rm", "--network=host"]}}, "agent_token": {token_json}, "agent_token_required": true, "agent_md5_checksum_enable": true, "disable_deep_image_inspection": false, "permitted_image_formats": ["raw", "gpt", "qcow2", "iso"], "agent_skip_bmc_detect": false, "enable_bios_bootloader_install": false, "tls_min_version": "1.3", "tls_cipher_suites": null}}}}"#
        )
    }

    #[test]
    fn reads_the_config_token() {
        let raw = body(&format!("\"{TOKEN}\""));
        assert_eq!(
            lookup_token(raw.as_bytes()),
            Some(LookupToken::Raw(TOKEN.to_string()))
        );
        assert_eq!(
            lookup_token(body("\"******\"").as_bytes()),
            Some(LookupToken::Masked)
        );
        assert_eq!(
            lookup_token(body("null").as_bytes()),
            Some(LookupToken::Absent)
        );
        assert_eq!(lookup_token(br#"{"node": {}}"#), Some(LookupToken::Absent));
        assert_eq!(
            lookup_token(br#"{"config": {}}"#),
            Some(LookupToken::Absent)
        );
        assert_eq!(lookup_token(br#"{"uuid": "x"}"#), Some(LookupToken::Absent));
        assert_eq!(lookup_token(b"not json"), None);
        assert_eq!(lookup_token(b""), None);
    }

    #[test]
    fn replaces_only_the_config_token() {
        let raw = body(&format!("\"{TOKEN}\""));
        let masked = replace_token(raw.as_bytes(), TOKEN, "\"******\"").unwrap();
        assert_eq!(String::from_utf8(masked).unwrap(), body("\"******\""));
        let nulled = replace_token(raw.as_bytes(), TOKEN, "null").unwrap();
        assert_eq!(String::from_utf8(nulled.clone()).unwrap(), body("null"));
        // The look-alike key in properties is untouched.
        assert!(String::from_utf8(nulled).unwrap().contains(&format!(
            "\"agent_token\": \"{TOKEN}\"}}, \"instance_info\""
        )));
    }

    #[test]
    fn refuses_when_not_found() {
        let raw = body(&format!("\"{TOKEN}\""));
        assert_eq!(replace_token(raw.as_bytes(), "other", "null"), None);
        assert_eq!(replace_token(body("null").as_bytes(), TOKEN, "null"), None);
        assert_eq!(
            replace_token(body("\"******\"").as_bytes(), TOKEN, "null"),
            None
        );
        assert_eq!(replace_token(b"garbage", TOKEN, "null"), None);
        assert_eq!(
            replace_token(br#"{"config": {"agent_token": "x"}} trailing"#, "x", "null"),
            None
        );
        assert_eq!(
            replace_token(br#"{"config": {"agent_token": "x""#, "x", "null"),
            None
        );
    }

    #[test]
    fn handles_escapes_and_compact_json() {
        let b = br#"{"node":{"p":"a\"]}"},"config":{"x":[1,{"y":2}],"agent_token":"t\u0041"}}"#;
        let out = replace_token(b, "tA", r#""******""#).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"node":{"p":"a\"]}"},"config":{"x":[1,{"y":2}],"agent_token":"******"}}"#
        );
        assert_eq!(lookup_token(b), Some(LookupToken::Raw("tA".into())));
    }
}
