//! The untagged packets a client sends before the regular protocol starts: StartupMessage,
//! SSLRequest, GSSENCRequest and CancelRequest.
use super::{Reader, WireError};

pub const SSL_REQUEST_CODE: u32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// PostgreSQL refuses startup packets longer than this (MAX_STARTUP_PACKET_LENGTH).
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// The first byte of a TLS handshake record: a client doing PostgreSQL 17 "direct TLS".
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// A decoded startup-phase packet. `StartupMessage` keeps the parameters we care about; the
/// original bytes are forwarded unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    Ssl,
    GssEnc,
    Cancel(CancelKey),
    Startup(StartupMessage),
}

/// A backend key: process id plus a secret (4 bytes in protocol 3.0, up to 256 in 3.2).
#[derive(Clone, PartialEq, Eq)]
pub struct CancelKey {
    pub pid: u32,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for CancelKey {
    // The secret authorises cancelling a session: keep it out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CancelKey {{ pid: {}, secret: [redacted] }}", self.pid)
    }
}

impl CancelKey {
    /// Encodes a CancelRequest packet for this key.
    pub fn cancel_request(&self) -> Vec<u8> {
        let len = 12 + self.secret.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
        out.extend_from_slice(&self.pid.to_be_bytes());
        out.extend_from_slice(&self.secret);
        out
    }

    /// Compares secrets in time independent of where they differ.
    pub fn matches(&self, other: &CancelKey) -> bool {
        if self.pid != other.pid || self.secret.len() != other.secret.len() {
            return false;
        }
        self.secret
            .iter()
            .zip(&other.secret)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub major: u16,
    pub minor: u16,
    /// All parameters in the order sent (user, database, options, application_name, ...).
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// A parameter's value. PostgreSQL keeps the last of repeated parameters
    /// (`database=app … database=crm` connects to `crm`), so tokengate does too.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn user(&self) -> Option<&str> {
        self.param("user")
    }

    /// The database, which PostgreSQL defaults to the user name.
    pub fn database(&self) -> Option<&str> {
        self.param("database").or(self.user())
    }

    /// True when the client asks for a replication connection (`replication=true|database|...`).
    pub fn wants_replication(&self) -> bool {
        match self.param("replication") {
            None => false,
            Some(v) => !matches!(
                v.to_ascii_lowercase().as_str(),
                "false" | "off" | "no" | "0"
            ),
        }
    }
}

/// Decodes a startup packet body: everything after the 4-byte length.
pub fn parse_startup_packet(body: &[u8]) -> Result<StartupPacket, WireError> {
    let mut r = Reader::new(body, "startup");
    let code = r.u32()?;
    match code {
        SSL_REQUEST_CODE => {
            r.finish()?;
            Ok(StartupPacket::Ssl)
        }
        GSSENC_REQUEST_CODE => {
            r.finish()?;
            Ok(StartupPacket::GssEnc)
        }
        CANCEL_REQUEST_CODE => {
            let pid = r.u32()?;
            let secret = r.remaining();
            if secret.is_empty() || secret.len() > 256 {
                return Err(WireError::Malformed("cancel request"));
            }
            Ok(StartupPacket::Cancel(CancelKey {
                pid,
                secret: secret.to_vec(),
            }))
        }
        version => {
            let major = (version >> 16) as u16;
            let minor = (version & 0xffff) as u16;
            let mut params = Vec::new();
            loop {
                let key = r.cstr()?;
                if key.is_empty() {
                    break;
                }
                let value = r.cstr()?;
                params.push((
                    String::from_utf8_lossy(key).into_owned(),
                    String::from_utf8_lossy(value).into_owned(),
                ));
            }
            r.finish()?;
            Ok(StartupPacket::Startup(StartupMessage {
                major,
                minor,
                params,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: u32, rest: &[u8]) -> Vec<u8> {
        let mut v = code.to_be_bytes().to_vec();
        v.extend_from_slice(rest);
        v
    }

    #[test]
    fn parses_ssl_and_gss_requests() {
        assert_eq!(
            parse_startup_packet(&body(SSL_REQUEST_CODE, b"")),
            Ok(StartupPacket::Ssl)
        );
        assert_eq!(
            parse_startup_packet(&body(GSSENC_REQUEST_CODE, b"")),
            Ok(StartupPacket::GssEnc)
        );
        assert!(parse_startup_packet(&body(SSL_REQUEST_CODE, b"x")).is_err());
    }

    #[test]
    fn parses_startup_parameters() {
        let p = parse_startup_packet(&body(
            196_608,
            b"user\0alice\0database\0crm\0replication\0database\0\0",
        ))
        .unwrap();
        let StartupPacket::Startup(m) = p else {
            panic!("expected startup, got {p:?}")
        };
        assert_eq!((m.major, m.minor), (3, 0));
        assert_eq!(m.user(), Some("alice"));
        assert_eq!(m.database(), Some("crm"));
        assert!(m.wants_replication());
    }

    #[test]
    fn repeated_parameters_keep_the_last_as_postgresql_does() {
        let m = StartupMessage {
            major: 3,
            minor: 0,
            params: vec![
                ("user".into(), "alice".into()),
                ("database".into(), "app".into()),
                ("database".into(), "crm".into()),
            ],
        };
        assert_eq!(m.database(), Some("crm"));
    }

    #[test]
    fn database_defaults_to_user() {
        let p = parse_startup_packet(&body(196_610, b"user\0bob\0\0")).unwrap();
        let StartupPacket::Startup(m) = p else {
            panic!()
        };
        assert_eq!(m.minor, 2);
        assert_eq!(m.database(), Some("bob"));
        assert!(!m.wants_replication());
    }

    #[test]
    fn rejects_unterminated_parameters() {
        assert!(parse_startup_packet(&body(196_608, b"user\0bob")).is_err());
        assert!(parse_startup_packet(&body(196_608, b"user\0bob\0")).is_err());
        assert!(parse_startup_packet(b"\0\0").is_err());
    }

    #[test]
    fn cancel_keys_of_any_length_round_trip() {
        let key = CancelKey {
            pid: 42,
            secret: vec![7; 32],
        };
        let packet = key.cancel_request();
        assert_eq!(packet.len(), 44);
        let parsed = parse_startup_packet(&packet[4..]).unwrap();
        assert_eq!(parsed, StartupPacket::Cancel(key.clone()));
        let other = CancelKey {
            pid: 42,
            secret: vec![8; 32],
        };
        assert!(key.matches(&key.clone()));
        assert!(!key.matches(&other));
        assert!(!format!("{key:?}").contains('7'));
    }
}
