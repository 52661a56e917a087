//! The catalogue of errors tokengate reports to clients. Each code has a stable id (`TG001`),
//! an SQLSTATE and a hint. `docs/errors.md` documents the same list; a test keeps them in step.
use crate::wire::backend::{ErrorFields, Severity};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    UpstreamUnavailable,
    UpstreamLost,
    MalformedMessage,
    MessageTooLarge,
    StartupTimeout,
    ReplicationRefused,
    ShuttingDown,
    UnsupportedProtocol,
    ChannelBindingUnavailable,
    AlertTerminated,
    AuditUnavailable,
    Unproven,
    StatementKindDenied,
    FilterDenied,
    WriteDenied,
    ColumnDenied,
    DerivedDenied,
    AmbiguousColumn,
    RowLimit,
    UnsupportedValue,
    LineageMismatch,
    CatalogUnavailable,
    AuthLookupFailed,
    ScramNegotiation,
    UpstreamAuthMismatch,
}

impl Code {
    pub const ALL: [Code; 25] = [
        Code::UpstreamUnavailable,
        Code::UpstreamLost,
        Code::MalformedMessage,
        Code::MessageTooLarge,
        Code::StartupTimeout,
        Code::ReplicationRefused,
        Code::ShuttingDown,
        Code::UnsupportedProtocol,
        Code::ChannelBindingUnavailable,
        Code::AlertTerminated,
        Code::AuditUnavailable,
        Code::Unproven,
        Code::StatementKindDenied,
        Code::FilterDenied,
        Code::WriteDenied,
        Code::ColumnDenied,
        Code::DerivedDenied,
        Code::AmbiguousColumn,
        Code::RowLimit,
        Code::UnsupportedValue,
        Code::LineageMismatch,
        Code::CatalogUnavailable,
        Code::AuthLookupFailed,
        Code::ScramNegotiation,
        Code::UpstreamAuthMismatch,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Code::UpstreamUnavailable => "TG001",
            Code::UpstreamLost => "TG002",
            Code::MalformedMessage => "TG003",
            Code::MessageTooLarge => "TG004",
            Code::StartupTimeout => "TG005",
            Code::ReplicationRefused => "TG006",
            Code::ShuttingDown => "TG007",
            Code::UnsupportedProtocol => "TG008",
            Code::ChannelBindingUnavailable => "TG009",
            Code::AlertTerminated => "TG010",
            Code::AuditUnavailable => "TG112",
            Code::Unproven => "TG101",
            Code::StatementKindDenied => "TG102",
            Code::FilterDenied => "TG103",
            Code::WriteDenied => "TG104",
            Code::ColumnDenied => "TG105",
            Code::DerivedDenied => "TG106",
            Code::AmbiguousColumn => "TG107",
            Code::RowLimit => "TG108",
            Code::UnsupportedValue => "TG109",
            Code::LineageMismatch => "TG110",
            Code::CatalogUnavailable => "TG111",
            Code::AuthLookupFailed => "TG025",
            Code::ScramNegotiation => "TG026",
            Code::UpstreamAuthMismatch => "TG027",
        }
    }

    pub fn sqlstate(self) -> &'static str {
        match self {
            Code::UpstreamUnavailable => "08001",
            Code::UpstreamLost => "08006",
            Code::MalformedMessage | Code::MessageTooLarge | Code::StartupTimeout => "08P01",
            Code::ReplicationRefused => "42501",
            Code::ShuttingDown => "57P01",
            Code::UnsupportedProtocol => "0A000",
            Code::ChannelBindingUnavailable => "28000",
            Code::AlertTerminated => "57P01",
            Code::AuditUnavailable => "58030",
            Code::Unproven
            | Code::StatementKindDenied
            | Code::FilterDenied
            | Code::WriteDenied
            | Code::ColumnDenied
            | Code::DerivedDenied
            | Code::AmbiguousColumn
            | Code::RowLimit
            | Code::UnsupportedValue
            | Code::LineageMismatch
            | Code::CatalogUnavailable => "42501",
            Code::AuthLookupFailed => "08001",
            Code::ScramNegotiation => "08P01",
            Code::UpstreamAuthMismatch => "28000",
        }
    }

    /// Connection problems end the session; policy refusals (TG1xx) keep it usable.
    pub fn severity(self) -> Severity {
        if self.id().starts_with("TG1") {
            Severity::Error
        } else {
            Severity::Fatal
        }
    }

    pub fn hint(self) -> &'static str {
        match self {
            Code::UpstreamUnavailable => {
                "Check that the upstream PostgreSQL is running and reachable from tokengate, and its sslmode settings; /readyz shows upstream health."
            }
            Code::UpstreamLost => {
                "The upstream server closed the connection or became unreachable; reconnect when it is back."
            }
            Code::MalformedMessage => {
                "The client sent bytes that are not a valid PostgreSQL protocol message; check the driver."
            }
            Code::MessageTooLarge => {
                "Send smaller messages (e.g. split large COPY or Bind payloads) or raise max_message_bytes."
            }
            Code::StartupTimeout => {
                "The connection did not complete startup and authentication in time; raise startup_timeout_secs if clients are slow."
            }
            Code::ReplicationRefused => {
                "Replication connections bypass tokengate's policies; set allow_replication: true only if that is intended."
            }
            Code::ShuttingDown => "tokengate is shutting down; reconnect to another replica.",
            Code::UnsupportedProtocol => {
                "tokengate speaks protocol 3.x; upgrade the client driver."
            }
            Code::Unproven => {
                "Rewrite the statement with plain column references to known tables, or ask for the role's policy to allow it."
            }
            Code::StatementKindDenied => "See the role's `statements:` rule in the policy.",
            Code::FilterDenied => {
                "Filter on unprotected columns, or add the label to the role's `filter_on` list."
            }
            Code::WriteDenied => {
                "Copy unprotected columns only, or run it as a role that sees the values in clear."
            }
            Code::ColumnDenied => "Remove the column from the select list.",
            Code::DerivedDenied => {
                "Select the column itself (it is then tokenized or masked) or drop the expression."
            }
            Code::AmbiguousColumn => "Return the columns separately.",
            Code::RowLimit => {
                "Add a LIMIT or a narrower WHERE clause, or ask for a higher row_limit."
            }
            Code::UnsupportedValue => {
                "Select the column in text format, cast in a view the policy labels, or use a supported type."
            }
            Code::LineageMismatch => {
                "Report the statement; select protected columns by plain reference."
            }
            Code::CatalogUnavailable => {
                "Check catalog_user/catalog_password and the upstream; fully trusted roles are not affected."
            }
            Code::AlertTerminated => {
                "The role crossed an alert threshold of its policy (alerts: action terminate); see the audit log and tokengate_alerts_total."
            }
            Code::AuditUnavailable => {
                "The audit log cannot be written (disk full, permissions) and the policy fails closed (on_failure: refuse); fix the log's storage."
            }
            Code::ChannelBindingUnavailable => {
                "Configure auth_query so tokengate completes SCRAM itself (see README, Authentication), connect with channel_binding=disable, or run the upstream leg without TLS on a trusted network."
            }
            Code::AuthLookupFailed => {
                "Check auth_query, auth_user/auth_password and that the lookup function exists in the database; the log has the server's message."
            }
            Code::ScramNegotiation => {
                "The client's SCRAM messages do not follow the protocol (or claim channel binding is unavailable while tokengate offers it); check the driver."
            }
            Code::UpstreamAuthMismatch => {
                "The upstream's SCRAM secret differs from what auth_query returned (a password changed during login, a different server, or an interceptor on the upstream leg); retry, and check the upstream address and auth_query."
            }
        }
    }

    /// Builds the ErrorResponse fields: the message starts with the code so users can look it up.
    pub fn error(self, message: impl std::fmt::Display) -> ErrorFields {
        ErrorFields {
            severity: self.severity(),
            sqlstate: self.sqlstate(),
            message: format!("tokengate {}: {message}", self.id()),
            detail: None,
            hint: Some(self.hint().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_documented() {
        let doc = include_str!("../docs/errors.md");
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.id()), "duplicate id {}", code.id());
            let row = format!("| {} | {} |", code.id(), code.sqlstate());
            assert!(doc.contains(&row), "docs/errors.md lacks the row {row}");
        }
    }

    #[test]
    fn error_message_names_the_code() {
        let e = Code::UpstreamUnavailable.error("could not connect to upstream 127.0.0.1:1");
        assert_eq!(e.sqlstate, "08001");
        assert!(e.message.starts_with("tokengate TG001: could not connect"));
        assert!(e.hint.is_some());
    }
}
