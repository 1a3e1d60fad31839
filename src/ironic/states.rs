//! Provision states as the agent endpoints see them (Ironic `common/states.py`,
//! `agent_base.HEARTBEAT_ALLOWED`; spec 1.3 and 2.4).

/// `LOOKUP_ALLOWED_STATES`: lookup succeeds here with `[api]restrict_lookup` on.
pub const LOOKUP_ALLOWED: [&str; 9] = [
    "deploying",
    "wait call-back",
    "cleaning",
    "clean wait",
    "inspecting",
    "inspect wait",
    "rescuing",
    "rescue wait",
    "service wait",
];

/// Added to [`LOOKUP_ALLOWED`] for a node with fast track.
pub const FASTTRACK_LOOKUP_EXTRA: [&str; 5] = [
    "enroll",
    "manageable",
    "available",
    "servicing",
    "service hold",
];

/// States in which a heartbeat makes the conductor act (continue deploy, clean, rescue,
/// service): every valid heartbeat must reach Ironic.
pub const HEARTBEAT_DRIVES_WORK: [&str; 4] = [
    "wait call-back",
    "clean wait",
    "rescue wait",
    "service wait",
];

/// States in which Ironic only records a heartbeat (`agent_last_heartbeat`, `agent_url`...).
pub const HEARTBEAT_RECORD_ONLY: [&str; 10] = [
    "enroll",
    "manageable",
    "available",
    "cleaning",
    "deploying",
    "rescuing",
    "deploy hold",
    "clean hold",
    "servicing",
    "service hold",
];

/// Does Ironic allow a lookup of a node in `state`? `restrict_lookup` is Ironic's
/// `[api]restrict_lookup`; `fast_track` the node's effective fast track setting.
pub fn lookup_allowed(state: &str, fast_track: bool, restrict_lookup: bool) -> bool {
    !restrict_lookup
        || LOOKUP_ALLOWED.contains(&state)
        || (fast_track && FASTTRACK_LOOKUP_EXTRA.contains(&state))
}

/// How Ironic parses `driver_info.fast_track` (`strutils.bool_from_string(strict=True)`):
/// `Some(bool)`, or `None` for a value Ironic refuses (it then answers 400 to the lookup).
pub fn parse_fast_track(value: &serde_json::Value) -> Option<bool> {
    match value {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(1) => Some(true),
            Some(0) => Some(false),
            _ => None,
        },
        serde_json::Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "t" | "true" | "on" | "y" | "yes" => Some(true),
            "0" | "f" | "false" | "off" | "n" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lookup_states() {
        assert!(lookup_allowed("clean wait", false, true));
        assert!(lookup_allowed("service wait", false, true));
        assert!(!lookup_allowed("manageable", false, true));
        assert!(lookup_allowed("manageable", true, true));
        assert!(!lookup_allowed("active", true, true));
        assert!(!lookup_allowed("deploy hold", true, true));
        assert!(!lookup_allowed("clean failed", true, true));
        assert!(
            lookup_allowed("active", false, false),
            "restrict_lookup off allows all"
        );
    }

    #[test]
    fn fast_track_values() {
        for (v, want) in [
            (json!(true), Some(true)),
            (json!(false), Some(false)),
            (json!("True"), Some(true)),
            (json!("yes"), Some(true)),
            (json!("off"), Some(false)),
            (json!(1), Some(true)),
            (json!("maybe"), None),
            (json!(null), None),
            (json!(2), None),
        ] {
            assert_eq!(parse_fast_track(&v), want, "{v}");
        }
    }

    #[test]
    fn heartbeat_state_sets_do_not_overlap() {
        for s in HEARTBEAT_DRIVES_WORK {
            assert!(!HEARTBEAT_RECORD_ONLY.contains(&s), "{s}");
        }
    }
}
