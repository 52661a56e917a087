//! The catalogue of errors tokengate reports to clients. Each code has a stable id (`TG001`),
//! an SQLSTATE, a meaning and a hint, written once in the [`codes!`] table below.
//! `docs/errors.md` shows the same table; a test checks it row for row (and rewrites it with
//! `TOKENGATE_BLESS_DOCS=1 cargo test --lib errors::`).
use crate::wire::backend::{ErrorFields, Severity};

/// What one code is: its id, SQLSTATE, what it means (docs) and the hint the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeInfo {
    pub id: &'static str,
    pub sqlstate: &'static str,
    pub meaning: &'static str,
    pub hint: &'static str,
}

/// Defines [`Code`], [`Code::ALL`] and [`Code::info`] from one table. To add a code, add one
/// entry: `Variant { id: "TGnnn", sqlstate: "xxxxx", meaning: "...", hint: "..." }`.
macro_rules! codes {
    ($($variant:ident { id: $id:literal, sqlstate: $sqlstate:literal, meaning: $meaning:literal, hint: $hint:literal, })*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($variant,)*
        }

        impl Code {
            /// Every code, in id order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            pub const fn info(self) -> &'static CodeInfo {
                match self {
                    $(Code::$variant => &CodeInfo {
                        id: $id,
                        sqlstate: $sqlstate,
                        meaning: $meaning,
                        hint: $hint,
                    },)*
                }
            }
        }
    };
}

codes! {
    UpstreamUnavailable {
        id: "TG001",
        sqlstate: "08001",
        meaning: "tokengate could not connect to the upstream PostgreSQL (refused, unreachable, timeout, or TLS negotiation failed under the configured `sslmode`). The message names the upstream address.",
        hint: "Check that the upstream PostgreSQL is running and reachable from tokengate, and its sslmode settings; /readyz shows upstream health.",
    }
    UpstreamLost {
        id: "TG002",
        sqlstate: "08006",
        meaning: "The upstream connection was lost in the middle of a session without the server sending an error.",
        hint: "The upstream server closed the connection or became unreachable; reconnect when it is back.",
    }
    MalformedMessage {
        id: "TG003",
        sqlstate: "08P01",
        meaning: "The client sent a malformed message (bad length, unknown message type, or a startup packet that is not valid). The session ends; other sessions go on.",
        hint: "The client sent bytes that are not a valid PostgreSQL protocol message; check the driver.",
    }
    MessageTooLarge {
        id: "TG004",
        sqlstate: "08P01",
        meaning: "A client message is larger than `max_message_bytes` (default 64 MiB). The session ends.",
        hint: "Send smaller messages (e.g. split large COPY or Bind payloads) or raise max_message_bytes.",
    }
    StartupTimeout {
        id: "TG005",
        sqlstate: "08P01",
        meaning: "The connection did not finish startup and authentication within `startup_timeout` (default 30s).",
        hint: "The connection did not complete startup and authentication in time; raise startup_timeout (e.g. 60s) if clients are slow.",
    }
    ReplicationRefused {
        id: "TG006",
        sqlstate: "42501",
        meaning: "The client asked for a replication connection (`replication=...`), which would bypass every policy.",
        hint: "Replication connections bypass tokengate's policies; set allow_replication: true only if that is intended.",
    }
    ShuttingDown {
        id: "TG007",
        sqlstate: "57P01",
        meaning: "tokengate is shutting down and its drain period ended.",
        hint: "tokengate is shutting down; reconnect to another replica.",
    }
    UnsupportedProtocol {
        id: "TG008",
        sqlstate: "0A000",
        meaning: "The client asked for a protocol major version other than 3.",
        hint: "tokengate speaks protocol 3.x; upgrade the client driver.",
    }
    ChannelBindingUnavailable {
        id: "TG009",
        sqlstate: "28000",
        meaning: "The client uses SCRAM and supports channel binding on its TLS connection to tokengate, while the upstream leg is TLS too. Channel binding cannot cross a TLS-terminating proxy, and PostgreSQL's downgrade protection would reject the login with \"SCRAM channel binding negotiation error\"; tokengate says why instead.",
        hint: "Configure auth_query so tokengate completes SCRAM itself (see README, Authentication), connect with channel_binding=disable, or run the upstream leg without TLS on a trusted network.",
    }
    AlertTerminated {
        id: "TG010",
        sqlstate: "57P01",
        meaning: "The session was ended because its role crossed an alert threshold whose action is `terminate` (protected values or refusals per minute).",
        hint: "The role crossed an alert threshold of its policy (alerts: action terminate); see the audit log and tokengate_alerts_total.",
    }
    ProtocolMismatch {
        id: "TG020",
        sqlstate: "08P01",
        meaning: "The server sent a reply that does not fit the messages the session sent (checked for every reply code, in order, by the protocol state). tokengate ends the session instead of attributing rows to a guessed statement; nothing of that reply is forwarded.",
        hint: "The server's replies no longer matched the messages sent, so tokengate ended the session rather than guess which statement rows belong to; reconnect, and report the message sequence.",
    }
    SettingFromProtectedStatement {
        id: "TG021",
        sqlstate: "42501",
        meaning: "A statement that reads, uses or writes protected columns changed a setting the server reports (ParameterStatus, e.g. `set_config('application_name', ...)`). The session is ended so the value can't be read back with SHOW or current_setting.",
        hint: "A statement that reads protected columns changed a reported setting (e.g. set_config('application_name', ...)); the session was ended so the value cannot be read back. Set settings from literals only.",
    }
    AuthLookupFailed {
        id: "TG025",
        sqlstate: "08001",
        meaning: "SCRAM termination is configured (`auth_query`) and the lookup of the login role's stored secret failed: the auth connection could not be opened or the query raised an error. The log names the server's message. Logins are refused rather than silently passed through.",
        hint: "Check auth_query, auth_user/auth_password and that the lookup function exists in the database; the log has the server's message.",
    }
    ScramNegotiation {
        id: "TG026",
        sqlstate: "08P01",
        meaning: "The client's SCRAM exchange with tokengate broke the protocol: a malformed message, a mechanism tokengate did not offer, a channel-binding flag that does not match the mechanism, the `y` flag while tokengate offers SCRAM-SHA-256-PLUS (a downgrade), or channel-binding data that is not tokengate's certificate.",
        hint: "The client's SCRAM messages do not follow the protocol (or claim channel binding is unavailable while tokengate offers it); check the driver.",
    }
    UpstreamAuthMismatch {
        id: "TG027",
        sqlstate: "28000",
        meaning: "tokengate verified the client, but the upstream's SCRAM parameters (salt, iterations) differ from the looked-up secret, or the upstream's final signature does not prove it holds the same secret.",
        hint: "The upstream's SCRAM secret differs from what auth_query returned (a password changed during login, a different server, or an interceptor on the upstream leg); retry, and check the upstream address and auth_query.",
    }
    TooManyConnections {
        id: "TG035",
        sqlstate: "53300",
        meaning: "sorry, too many clients already: tokengate already serves `max_client_connections` sessions (or as many as its file descriptor limit allows). Sent after the StartupMessage, as PostgreSQL does.",
        hint: "tokengate serves at most max_client_connections sessions (also bounded by its file descriptor limit); retry later, use a connection pool, or raise the limit.",
    }
    UpstreamTimeout {
        id: "TG036",
        sqlstate: "08006",
        meaning: "The upstream stopped answering: a request waited longer than `query_timeout` for its result, or the upstream did not answer during startup. The session is closed.",
        hint: "The upstream stopped answering (query_timeout, or a stalled network path); check the upstream and the network, or raise query_timeout (e.g. 60s).",
    }
    IdleTimeout {
        id: "TG037",
        sqlstate: "57P05",
        meaning: "The session was idle (nothing in flight, no traffic) longer than `idle_timeout` and was closed.",
        hint: "The session was idle longer than idle_timeout; reconnect.",
    }
    Unproven {
        id: "TG101",
        sqlstate: "42501",
        meaning: "tokengate cannot prove this statement safe for your role (it could not parse or resolve it, or it calls a function whose output it cannot trace).",
        hint: "Rewrite the statement with plain column references to known tables, or ask for the role's policy to allow it.",
    }
    StatementKindDenied {
        id: "TG102",
        sqlstate: "42501",
        meaning: "The role's policy does not allow this kind of statement.",
        hint: "See the role's `statements:` rule in the policy.",
    }
    FilterDenied {
        id: "TG103",
        sqlstate: "42501",
        meaning: "The statement uses a protected column in WHERE, JOIN, ORDER BY, GROUP BY, HAVING, a window or DISTINCT ON, which would let values be inferred.",
        hint: "Filter on unprotected columns, or add the label to the role's `filter_on` list.",
    }
    WriteDenied {
        id: "TG104",
        sqlstate: "42501",
        meaning: "The statement would copy protected values into stored data (CREATE TABLE AS, SELECT INTO, INSERT ... SELECT, UPDATE ... SET from another column).",
        hint: "Copy unprotected columns only, or run it as a role that sees the values in clear.",
    }
    ColumnDenied {
        id: "TG105",
        sqlstate: "42501",
        meaning: "The statement returns a column whose label the role may not see at all (action deny).",
        hint: "Remove the column from the select list.",
    }
    DerivedDenied {
        id: "TG106",
        sqlstate: "42501",
        meaning: "The statement returns an expression computed from a protected column (a function, operator, cast or aggregate), which could reveal it.",
        hint: "Select the column itself (it is then tokenized or masked) or drop the expression.",
    }
    AmbiguousColumn {
        id: "TG107",
        sqlstate: "42501",
        meaning: "One result column carries values of protected columns with different labels or actions (e.g. a UNION of email and phone).",
        hint: "Return the columns separately.",
    }
    RowLimit {
        id: "TG108",
        sqlstate: "42501",
        meaning: "The result exceeded the role's row limit and was stopped (not truncated silently).",
        hint: "Add a LIMIT or a narrower WHERE clause, or ask for a higher row_limit.",
    }
    UnsupportedValue {
        id: "TG109",
        sqlstate: "42501",
        meaning: "A protected column's type or wire format has no transform (for example a binary COPY or an unsupported type), so it is refused rather than sent in clear.",
        hint: "Select the column in text format, cast in a view the policy labels, or use a supported type.",
    }
    LineageMismatch {
        id: "TG110",
        sqlstate: "42501",
        meaning: "The server's description of a result column disagrees with tokengate's analysis of the SQL, so the statement is refused.",
        hint: "Report the statement; select protected columns by plain reference.",
    }
    CatalogUnavailable {
        id: "TG111",
        sqlstate: "42501",
        meaning: "tokengate could not read the upstream catalog it needs to enforce the policy for your role.",
        hint: "Check catalog_user/catalog_password and the upstream; fully trusted roles are not affected.",
    }
    AuditUnavailable {
        id: "TG112",
        sqlstate: "58030",
        meaning: "The audit log cannot be written and `on_failure: refuse` is configured, so statements that must be audited are refused (fail closed).",
        hint: "The audit log cannot be written (disk full, permissions) and the policy fails closed (on_failure: refuse); fix the log's storage.",
    }
    TooDeep {
        id: "TG120",
        sqlstate: "42501",
        meaning: "The statement nests deeper than the analyser accepts (1,000 levels, counting each operator of a chain such as `id=0 OR id=1 OR …` and each parenthesis). Refused before it is parsed, so no statement can exhaust a stack.",
        hint: "Split the statement, or replace long OR/AND chains with IN (...) or = ANY($1).",
    }
    LexerMismatch {
        id: "TG121",
        sqlstate: "42501",
        meaning: "PostgreSQL's lexer and the analyser's parser would read the text differently (a `--` comment ended by a carriage return, a string whose end depends on `standard_conforming_strings`, a string continued across a newline, an operator or literal form sqlparser reads otherwise), or the text lexes differently across PostgreSQL versions (`0x1F`, `1_000`, `123abc`, identifiers over 63 bytes).",
        hint: "Write the statement without the construct the message names (a comment ended by a carriage return, backslashes in strings with standard_conforming_strings off, 0x/1_000 numbers, an operator sqlparser reads differently).",
    }
    NotBuiltin {
        id: "TG122",
        sqlstate: "42501",
        meaning: "The statement uses an operator, type or cast that is not a known PostgreSQL built-in (`OPERATOR(myschema.+)`, `::mydomain`), so it could run code the analyser never sees.",
        hint: "Use built-in operators, types and functions from pg_catalog only, or ask for the role's policy to allow it.",
    }
    CopyOption {
        id: "TG123",
        sqlstate: "42501",
        meaning: "A COPY option tokengate cannot apply to the rows (an unknown format, a non-UTF8 ENCODING, a delimiter that is not one ASCII character, an option it does not know).",
        hint: "Use COPY with FORMAT text or csv and the options DELIMITER, HEADER, QUOTE, ESCAPE, FREEZE, ENCODING 'UTF8' only.",
    }
    NotAToken {
        id: "TG124",
        sqlstate: "22023",
        meaning: "A role shown tokens of a column (`token`, column not stored as tokens) compared that column by equality (`=`, `<>`, `IN`, `= ANY`) with a literal or parameter that is not a token of the label's format: tokengate reads such values as tokens and decrypts them before PostgreSQL compares them with the stored plaintext, and a value that does not decrypt (wrong length or characters, a plaintext, a fragment) is refused rather than compared as written or turned into NULL.",
        hint: "Compare with a token exactly as tokengate showed it to you; LIKE, ranges and expressions compare the stored plaintext as filter_on allows.",
    }
    TokenLookupUnsupported {
        id: "TG125",
        sqlstate: "42501",
        meaning: "An equality lookup by token on a column the role is shown as tokens is in a form where tokengate cannot decrypt the value PostgreSQL will compare, or where the decrypted value could reach the role: SQL PREPARE/EXECUTE or EXPLAIN of such a lookup, a comparison with a column of a view, subquery or CTE, a name that means two columns, a string literal other than '...', a parameter also used elsewhere or declared with a non-text type, a literal lookup in a message that also writes or calls current_query(), a role with `see_activity: true` (statement texts carry the decrypted value), or a session search_path that puts a schema before pg_catalog (a type or operator created there since tokengate read the catalog would see the decrypted value).",
        hint: "Compare the table's own column with a plain '...' literal or a parameter ($1, bound as text) in a SELECT, through the extended protocol's Parse/Bind or a simple query of its own, with pg_catalog first on the search_path.",
    }
    MessageWithheld {
        id: "TG140",
        sqlstate: "42501",
        meaning: "A statement involving protected columns failed or raised a notice; the server's text (message, DETAIL, HINT, CONTEXT...) could quote protected values, so only its severity, own SQLSTATE and position are kept.",
        hint: "The statement involves protected columns, so the server's error or notice text is withheld (only its SQLSTATE and position are kept); rerun it without the protected columns to see the server's message.",
    }
    SessionStateChanging {
        id: "TG141",
        sqlstate: "42501",
        meaning: "The statement came before tokengate could re-read the session's search_path, temp schema or catalog after a statement that may have changed them (SET/RESET/set_config/DISCARD/DDL, or the end of a transaction that changed them).",
        hint: "The statement may have changed the search_path, temp objects or the catalog; tokengate re-reads them once the server has answered. Send the next statement after the previous one completes (not in the same message or pipeline).",
    }
    AtRestSnapshotChanged {
        id: "TG142",
        sqlstate: "40001",
        meaning: "The statement touches a column stored as tokens whose recorded state (key version, generation) changed since the transaction may have taken its snapshot (a `tokengate migrate` or `rekey` finished meanwhile). The snapshot may still show the rows as they were (plaintext, or tokens of the old key version), which tokengate would treat by the new state. Counted from the first message after the server last reported the session idle, so also applies in READ COMMITTED and to a pipeline sent before that; the refusal aborts the transaction as any error does.",
        hint: "The column's at-rest state changed during this transaction; ROLLBACK and retry.",
    }
    AtRestSnapshotImport {
        id: "TG143",
        sqlstate: "0A000",
        meaning: "`SET TRANSACTION SNAPSHOT` (in any form: `SET LOCAL`, `SET SESSION`, after `BEGIN`) is refused for every role while the policy stores columns as tokens: the imported snapshot was exported by a session tokengate does not see and may predate a migrate or rekey, so it could show plaintext or tokens of an old key version.",
        hint: "Run the transaction without importing a snapshot, or connect directly to PostgreSQL for snapshot-synchronized exports.",
    }
    AtRestCursorChanged {
        id: "TG144",
        sqlstate: "55000",
        meaning: "FETCH or MOVE on a cursor whose DECLARE touched a column stored as tokens, after that column's recorded state (key version, generation) changed since the cursor was declared (a `WITH HOLD` cursor kept across a `tokengate migrate` or `rekey`): its rows were read under the old state.",
        hint: "CLOSE the cursor and declare it again.",
    }
    CodeBlock {
        id: "TG170",
        sqlstate: "42501",
        meaning: "Anonymous or procedural code (a DO block, CALL, a procedural statement) runs statements tokengate never sees; restricted roles are refused by design.",
        hint: "Run the statements the code block would run directly, or use a role whose policy is clear for this work.",
    }
    SideChannelArgument {
        id: "TG171",
        sqlstate: "42501",
        meaning: "A protected column reaches an argument that leaves the statement: a notification payload (pg_notify), a setting (set_config), an advisory lock key, a WAL message.",
        hint: "Pass only unprotected values or literals to pg_notify, set_config and advisory lock functions.",
    }
    DataReaching {
        id: "TG172",
        sqlstate: "42501",
        meaning: "The function or catalog view reaches data by name or out of band (query_to_xml, lo_get, pg_read_file, ts_stat, dblink, pg_stats, pg_stat_activity's other sessions' statement text…), so what it returns cannot be traced to the statement's columns; restricted roles are refused by design.",
        hint: "Query the tables themselves; tokengate then applies the role's policy to each column.",
    }
    AtRestUnsupported {
        id: "TG180",
        sqlstate: "0A000",
        meaning: "The statement touches a column stored as tokens (`at_rest: token`) in a form tokengate cannot transform: MERGE, a COPY FROM into such a table that is not its Query's only statement, a write through a view, PREPARE, EXPLAIN, or DDL naming such a table. It is refused so PostgreSQL never stores a plaintext value there.",
        hint: "Write the column with INSERT ... VALUES or UPDATE ... SET using literals or parameters, through tokengate; run DDL on that table directly against PostgreSQL.",
    }
    AtRestOmitted {
        id: "TG181",
        sqlstate: "0A000",
        meaning: "An INSERT leaves out a column stored as tokens, or gives it DEFAULT: a server-side default would be stored as plaintext.",
        hint: "List the column and give its value (or NULL) explicitly.",
    }
    AtRestValue {
        id: "TG182",
        sqlstate: "0A000",
        meaning: "The value written to a column stored as tokens is not a string literal, NULL or a bare parameter (an expression, a function, a number, INSERT ... SELECT, or an ON CONFLICT assignment that is not the same column's EXCLUDED value): tokengate cannot tokenize it before PostgreSQL computes it.",
        hint: "Compute the value in the application and send it as a quoted literal or a parameter.",
    }
    AtRestComputation {
        id: "TG183",
        sqlstate: "0A000",
        meaning: "A column stored as tokens is used in a range comparison, LIKE, ORDER BY, `<> ALL`, `= ANY (subquery)`, a join with a column of another label, a function, a cast or another expression. PostgreSQL would compute on the tokens, not the plaintext, and return a wrong answer.",
        hint: "Only equality (`col = 'value'`, `col = $1`, `col IN (...)`, `col = ANY($1)`, `IS NULL`, joins between columns of the same label), GROUP BY / DISTINCT / count(DISTINCT) of the column itself work on columns stored as tokens; sort or compute in the application.",
    }
    AtRestParameter {
        id: "TG184",
        sqlstate: "0A000",
        meaning: "A parameter bound to a column stored as tokens cannot be tokenized: it is declared with a non-text type, also used outside that column, or a value is not valid UTF-8 or does not fit the token format; or SQL `EXECUTE` runs a statement prepared through Parse whose parameters are tokenized at Bind (EXECUTE would send the values as written).",
        hint: "Bind such parameters as text (type unspecified or text/varchar) and use each one only for that column.",
    }
    AtRestNotReady {
        id: "TG185",
        sqlstate: "55000",
        meaning: "The statement touches a column stored as tokens whose recorded state (`tokengate.at_rest_columns`) is not `tokenized`: never migrated (it may hold plaintext), migrating, or rekeying; or the key file lacks the key version its tokens use, or the policy's label or token format differs from the one its tokens were made with. Refused for every role: tokengate never decrypts plaintext, and never shows a token to a clear role as plaintext. The message names the column, its state and the command to run.",
        hint: "Run the command the message names (`tokengate migrate` for a column never migrated or whose migration stopped, `tokengate rekey` for one being rekeyed), or give tokengate a key file that holds the column's key version.",
    }
    AtRestStateUnknown {
        id: "TG186",
        sqlstate: "55000",
        meaning: "tokengate could not read the state of the columns stored as tokens recently enough (the state table read failed, or the last good read is older than `at_rest_max_age`), so it cannot know which key version their tokens use. Statements touching such columns are refused until a read succeeds.",
        hint: "Check that the catalog role can connect and read tokengate.at_rest_columns (`tokengate migrate` grants SELECT to PUBLIC); the message names the last error.",
    }
    AtRestPlanChanged {
        id: "TG187",
        sqlstate: "55000",
        meaning: "A prepared statement touching a column stored as tokens was planned under a state of that column that has changed since (a migrate or rekey ran): its tokens or key version may no longer match the stored ones.",
        hint: "Prepare the statement again (close it, or reconnect: a driver's statement cache re-prepares on a new connection).",
    }
    TokengateSchema {
        id: "TG188",
        sqlstate: "42501",
        meaning: "The statement may write to the `tokengate` schema, which holds the state of the columns stored as tokens (their key versions). No role may change it through tokengate: a client could otherwise make tokengate decrypt with a wrong key version.",
        hint: "Only `tokengate migrate` and `tokengate rekey`, connecting directly to PostgreSQL, change the tokengate schema.",
    }
    InheritedLabels {
        id: "TG189",
        sqlstate: "42501",
        meaning: "The statement touches a column of a table in an inheritance or partition family (`INHERITS`, `PARTITION OF`) whose members label that column differently, or leave it unlabelled. Rows written through one member are read through another (a parent reads its partitions' rows), so the weaker label would apply to them: a partition left unlabelled would show its rows in clear, or store plaintext in a column stored as tokens.",
        hint: "Label the column the same way in every table of the family (the parent and each child or partition) in the policy's `columns:`.",
    }
}

impl Code {
    pub fn id(self) -> &'static str {
        self.info().id
    }

    pub fn sqlstate(self) -> &'static str {
        self.info().sqlstate
    }

    pub fn hint(self) -> &'static str {
        self.info().hint
    }

    /// Connection problems end the session; policy refusals (TG1xx) keep it usable.
    pub fn severity(self) -> Severity {
        if self.id().starts_with("TG1") {
            Severity::Error
        } else {
            Severity::Fatal
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

/// The rows of docs/errors.md's table for the codes whose severity is `severity`.
pub fn markdown_table(severity: Severity) -> String {
    let mut out = String::from(
        "| Code | SQLSTATE | Meaning | Hint (sent to the client) |\n|---|---|---|---|\n",
    );
    for code in Code::ALL.iter().filter(|c| c.severity() == severity) {
        let i = code.info();
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            i.id,
            i.sqlstate,
            i.meaning.replace('|', "\\|"),
            i.hint.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "docs/errors.md";

    /// docs/errors.md with its two tables replaced by the ones generated from [`Code`].
    fn regenerated(doc: &str) -> String {
        let mut out = String::new();
        let mut tables = [
            markdown_table(Severity::Fatal),
            markdown_table(Severity::Error),
        ]
        .into_iter();
        let mut lines = doc.lines().peekable();
        while let Some(line) = lines.next() {
            if line.starts_with("| Code |") {
                while lines.peek().is_some_and(|l| l.starts_with('|')) {
                    lines.next();
                }
                out.push_str(&tables.next().unwrap_or_default());
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    #[test]
    fn docs_errors_md_is_the_catalogue() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DOC);
        let doc = std::fs::read_to_string(&path).unwrap();
        let expected = regenerated(&doc);
        if doc != expected && std::env::var_os("TOKENGATE_BLESS_DOCS").is_some() {
            std::fs::write(&path, &expected).unwrap();
            return;
        }
        assert_eq!(
            doc, expected,
            "{DOC} differs from src/errors.rs; run TOKENGATE_BLESS_DOCS=1 cargo test --lib errors::"
        );
        assert_eq!(doc.matches("| Code |").count(), 2);
    }

    #[test]
    fn ids_are_unique_ordered_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        let mut last = "";
        for code in Code::ALL {
            let i = code.info();
            assert!(seen.insert(i.id), "duplicate id {}", i.id);
            assert!(i.id > last, "{} is out of order", i.id);
            last = i.id;
            assert!(
                i.id.len() == 5
                    && i.id.starts_with("TG")
                    && i.id[2..].bytes().all(|b| b.is_ascii_digit()),
                "{}",
                i.id
            );
            assert_eq!(i.sqlstate.len(), 5, "{}", i.id);
            assert!(!i.meaning.is_empty() && !i.hint.is_empty(), "{}", i.id);
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
