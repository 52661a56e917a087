//! Human-readable causes for tokio-postgres errors. Its `Display` says only "db error" for an
//! error the server sent and hides I/O causes in `source()`; operators need the server's own
//! message (wrong password, missing database) and, for connection failures, the address.
use std::error::Error as _;

/// The cause of `e`: the server's severity, message, SQLSTATE, detail and hint when the server
/// sent an error; otherwise the whole chain of causes.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(d) = db.detail() {
            s.push_str("; detail: ");
            s.push_str(d);
        }
        if let Some(h) = db.hint() {
            s.push_str("; hint: ");
            s.push_str(h);
        }
        return s;
    }
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// `host:port` list of a libpq-style connection string or URL, for error messages (never the
/// password).
pub fn address_of(conninfo: &str) -> String {
    let Ok(config) = conninfo.parse::<tokio_postgres::Config>() else {
        return "upstream".to_string();
    };
    let ports = config.get_ports();
    config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_without_secrets() {
        assert_eq!(
            address_of("postgres://u:secret@db.internal:6543/app"),
            "db.internal:6543"
        );
        assert_eq!(address_of("host=a port=5433 password=x"), "a:5433");
    }
}
