//! Who is at the other end of a session, as the gate established it.

use std::fmt;

/// A session's authenticated peer. Under mutual TLS it is the name in the
/// peer's certificate; without TLS, the name the peer gave in the cookie
/// handshake (the cookie proves membership, not which hospital).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    Coordinator,
    Hospital(String),
}

const COORDINATOR: &str = "coordinator";
const HOSPITAL_PREFIX: &str = "hospital:";

impl Identity {
    /// The stamp carried by every inbound actor message (ractor's metadata).
    pub fn stamp(&self) -> Vec<u8> {
        match self {
            Self::Coordinator => COORDINATOR.as_bytes().to_vec(),
            Self::Hospital(name) => format!("{HOSPITAL_PREFIX}{name}").into_bytes(),
        }
    }

    /// The identity a stamp names; `None` for anything else.
    pub fn from_stamp(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        if text == COORDINATOR {
            return Some(Self::Coordinator);
        }
        let name = text.strip_prefix(HOSPITAL_PREFIX)?;
        crate::names::check_hospital_name(name).ok()?;
        Some(Self::Hospital(name.to_string()))
    }

    /// The hospital's name, if it is one.
    pub fn hospital(&self) -> Option<&str> {
        match self {
            Self::Hospital(name) => Some(name),
            Self::Coordinator => None,
        }
    }

    /// The prefix every ractor_cluster node name of this identity starts
    /// with: another identity cannot take over its node's name.
    pub fn node_name_prefix(&self) -> String {
        match self {
            Self::Coordinator => "medfed.coordinator".to_string(),
            Self::Hospital(name) => format!("medfed.hospital.{name}."),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Coordinator => f.write_str(COORDINATOR),
            Self::Hospital(name) => write!(f, "hospital {name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_refuse_anything_else() {
        for id in [Identity::Coordinator, Identity::Hospital("h-1".into())] {
            assert_eq!(Identity::from_stamp(&id.stamp()), Some(id));
        }
        assert_eq!(Identity::from_stamp(b"hospital:"), None);
        assert_eq!(Identity::from_stamp(b"hospital:<b>"), None);
        assert_eq!(Identity::from_stamp(b"admin"), None);
        assert_eq!(Identity::from_stamp(&[0xff, 0xfe]), None);
    }
}
