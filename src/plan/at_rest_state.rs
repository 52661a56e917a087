//! Whether a statement may touch its columns stored as tokens now, and under which key
//! version: from the columns' recorded states ([`crate::catalog::at_rest`]), never guessed.
//!
//! A column is usable only when its state is `tokenized`, made under the label and token
//! format the policy gives it, with a key version the key file holds. Otherwise the
//! statement is refused for every role (TG185): a column never migrated may hold plaintext
//! (decrypting it would show garbage as if it were a value), a migrating one holds both, a
//! rekeying one two key versions. Without a recent read of the states, TG186.
use super::Refusal;
use super::write::ColumnVersion;
use crate::catalog::at_rest::{AtRestStates, Phase};
use crate::errors::Code;
use crate::policy::RoleView;
use crate::protect::KeyRing;
use crate::sql::StatementAnalysis;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// The columns stored as tokens a statement reads, compares, writes or copies.
pub fn touched(
    a: &StatementAnalysis,
    view: &RoleView,
    plan: Option<&super::write::AtRestPlan>,
) -> BTreeSet<Arc<str>> {
    let mut out = BTreeSet::new();
    let names = a
        .outputs
        .iter()
        .flat_map(|o| o.sources.iter().map(|s| s.column.as_str()))
        .chain(a.uses.iter().map(|u| u.column.as_str()))
        .chain(a.writes.iter().map(|w| w.column.as_str()));
    for name in names {
        if let Some(d) = view.column(name)
            && d.at_rest
        {
            out.insert(d.column.clone());
        }
    }
    if let Some(p) = plan {
        out.extend(p.columns().cloned());
    }
    out
}

/// The key version and state generation of each touched column, or why the statement may
/// not run now.
pub fn resolve(
    columns: &BTreeSet<Arc<str>>,
    view: &RoleView,
    states: Option<&AtRestStates>,
    states_error: Option<&str>,
    keys: &KeyRing,
) -> Result<Vec<ColumnVersion>, Refusal> {
    if columns.is_empty() {
        return Ok(Vec::new());
    }
    let states = match states {
        Some(s) if s.fresh() => s,
        Some(s) => {
            return Err(Refusal::new(
                Code::AtRestStateUnknown,
                format!(
                    "the state of the columns stored as tokens was last read {} ms ago, longer than at_rest_max_age ({} ms){}",
                    s.read_at.elapsed().as_millis(),
                    s.max_age.as_millis(),
                    states_error.map(|e| format!("; {e}")).unwrap_or_default()
                ),
            ));
        }
        None => {
            return Err(Refusal::new(
                Code::AtRestStateUnknown,
                states_error
                    .unwrap_or("the state of the columns stored as tokens has not been read")
                    .to_string(),
            ));
        }
    };
    let mut out = Vec::with_capacity(columns.len());
    let mut by_label: HashMap<&str, (&str, u32)> = HashMap::new();
    for column in columns {
        let not_ready = |why: String| Refusal::new(Code::AtRestNotReady, why);
        let Some(d) = view.column(column) else {
            continue;
        };
        let Some(state) = states.get(column) else {
            return Err(not_ready(format!(
                "column {column} is stored as tokens but was never migrated, so it may hold plaintext: run `tokengate migrate --column {column}` (or, if it already holds tokens written by an earlier tokengate, `tokengate migrate --column {column} --already-tokenized <key version>`)"
            )));
        };
        match state.phase {
            Phase::Tokenized => {}
            Phase::Migrating => {
                return Err(not_ready(format!(
                    "column {column} is being migrated to tokens ({} rows done): wait for `tokengate migrate` to finish, or run `tokengate migrate --column {column}` to resume it",
                    state.rows_done
                )));
            }
            Phase::Rekeying => {
                return Err(not_ready(format!(
                    "column {column} is being rekeyed from key version {} to {} ({} rows done): wait for `tokengate rekey` to finish, or run `tokengate rekey --column {column}` to resume it",
                    state.key_version,
                    state.target_version.unwrap_or(0),
                    state.rows_done
                )));
            }
        }
        let format = d.token.as_ref().map_or("", |t| t.as_str());
        if state.label != *d.label || state.token_format != format {
            return Err(not_ready(format!(
                "column {column} holds tokens made under label {} (token format {}), but the policy says label {} (token format {format}): restore the policy's label, or decrypt the column and run `tokengate migrate` anew",
                state.label, state.token_format, d.label
            )));
        }
        // Labels tokenize with the key named `default` (there is no per-label key name): tokens
        // recorded under another key name would be decrypted with the wrong key.
        if state.key_name != crate::protect::keys::DEFAULT_KEY_NAME {
            return Err(not_ready(format!(
                "column {column} holds tokens of key {:?}, but labels use the key {:?}: decrypt the column with that key and run `tokengate migrate` anew",
                state.key_name,
                crate::protect::keys::DEFAULT_KEY_NAME
            )));
        }
        if keys.get(&state.key_name, Some(state.key_version)).is_err() {
            return Err(not_ready(format!(
                "column {column} holds tokens of key {:?} version {}, which tokengate's key file does not hold: give tokengate a key file with that version",
                state.key_name, state.key_version
            )));
        }
        if let Some((other, version)) = by_label.get(&*d.label)
            && *version != state.key_version
        {
            return Err(not_ready(format!(
                "columns {other} (key version {version}) and {column} (key version {}) share label {} but not a key version, so their tokens do not compare: run `tokengate rekey` on the older one",
                state.key_version, d.label
            )));
        }
        by_label.insert(&d.label, (column, state.key_version));
        out.push(ColumnVersion {
            column: column.clone(),
            key_version: state.key_version,
            generation: state.generation,
        });
    }
    Ok(out)
}

/// At Bind: the versions a prepared statement was planned under are still the columns'
/// current state (TG187 when a migrate or rekey changed it since; TG185/TG186 as at
/// planning when the column is not usable now).
pub fn still_current(
    planned: &[ColumnVersion],
    view: &RoleView,
    states: Option<&AtRestStates>,
    states_error: Option<&str>,
    keys: &KeyRing,
) -> Result<(), Refusal> {
    if planned.is_empty() {
        return Ok(());
    }
    let columns: BTreeSet<Arc<str>> = planned.iter().map(|v| v.column.clone()).collect();
    let now = resolve(&columns, view, states, states_error, keys)?;
    for v in planned {
        if !now.contains(v) {
            return Err(Refusal::new(
                Code::AtRestPlanChanged,
                format!(
                    "the statement was prepared when column {} used key version {}; its state has changed since (tokengate migrate or rekey): prepare it again",
                    v.column, v.key_version
                ),
            ));
        }
    }
    Ok(())
}

/// FETCH or MOVE on a cursor whose rows were read under `declared` (its DECLARE's versions):
/// refused (TG144) when a column's state changed since, e.g. a `WITH HOLD` cursor kept across
/// a migrate or rekey (TG185/TG186 as for any statement when the column is not usable now).
pub fn cursor_current(
    cursor: &str,
    declared: &[ColumnVersion],
    view: &RoleView,
    states: Option<&AtRestStates>,
    states_error: Option<&str>,
    keys: &KeyRing,
) -> Result<(), Refusal> {
    still_current(declared, view, states, states_error, keys).map_err(|r| {
        if r.code != Code::AtRestPlanChanged {
            return r;
        }
        let changed = declared
            .iter()
            .map(|v| format!("{} (key version {})", v.column, v.key_version))
            .collect::<Vec<_>>()
            .join(", ");
        Refusal::new(
            Code::AtRestCursorChanged,
            format!(
                "cursor {cursor:?} was declared when {changed} had another state: a migrate or rekey ran since, and its rows were read under the old state"
            ),
        )
    })
}

/// `SET [LOCAL | SESSION] TRANSACTION SNAPSHOT '...'` (also inside `ALTER ... SET`): the
/// statement would import a snapshot some other session exported, maybe before a migrate or
/// rekey (TG143, every role, while columns are stored as tokens). Read from the lexer's
/// tokens (comments between the words do not hide it); any `TRANSACTION SNAPSHOT` counts.
pub fn imports_snapshot(text: &str, lex: crate::sql::LexSettings) -> Result<(), Refusal> {
    use crate::sql::lexer::{self, Kind};
    let tokens = lexer::tokenize(text, lex);
    let word =
        |t: &lexer::Token, w: &str| t.kind == Kind::Word && t.text(text).eq_ignore_ascii_case(w);
    if tokens
        .windows(2)
        .any(|p| word(&p[0], "transaction") && word(&p[1], "snapshot"))
    {
        return Err(Refusal::new(
            Code::AtRestSnapshotImport,
            "SET TRANSACTION SNAPSHOT imports a snapshot another session exported, which may predate a migrate or rekey of a column stored as tokens",
        ));
    }
    Ok(())
}

/// Whether a statement may change the `tokengate` schema (the recorded key versions), for
/// any role (TG188). Defense in depth (the schema's privileges are the first guard: only
/// its owner writes it): a statement naming the schema or its table anywhere (an identifier
/// or a string such as a `search_path` value) is refused unless it is a plain read, and so
/// is any statement whose analysed write targets lie in it.
pub fn writes_tokengate_schema(
    a: &StatementAnalysis,
    text: &str,
    lex: crate::sql::LexSettings,
) -> Result<(), Refusal> {
    use crate::catalog::at_rest::SCHEMA;
    use crate::sql::lexer::{self, Kind};
    let refuse = || {
        Refusal::new(
            Code::TokengateSchema,
            "the statement may change the tokengate schema, which records the key versions of the columns stored as tokens",
        )
    };
    let prefix = format!("{SCHEMA}.");
    if a.write_targets
        .iter()
        .any(|t| t.starts_with(&prefix) || t == SCHEMA)
    {
        return Err(refuse());
    }
    let read_only = a.kind == crate::sql::StatementKind::Select && a.write_targets.is_empty();
    if read_only {
        return Ok(());
    }
    // Settings and role or database defaults (`SET search_path = tokengate`) name it in a
    // string; data statements only as an identifier.
    let utility = !matches!(
        a.kind,
        crate::sql::StatementKind::Select
            | crate::sql::StatementKind::Insert
            | crate::sql::StatementKind::Update
            | crate::sql::StatementKind::Delete
    );
    let named = lexer::tokenize(text, lex).iter().any(|t| {
        let raw = t.text(text);
        match t.kind {
            Kind::Word => {
                let w = raw.to_lowercase();
                w == SCHEMA || w == "at_rest_columns"
            }
            Kind::QuotedIdent => {
                let w = raw.trim_matches('"');
                w == SCHEMA || w == "at_rest_columns"
            }
            Kind::String => utility && raw.to_lowercase().contains(SCHEMA),
            _ => false,
        }
    });
    if named { Err(refuse()) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::at_rest::ColumnState;
    use crate::protect::keys::{DEFAULT_KEY_NAME, Key};
    use std::time::{Duration, Instant};

    const POLICY: &str = "version: 1
labels:
  ssn: { class: pii, token: digits, at_rest: token }
columns:
  public.a.ssn: ssn
  public.b.ssn: ssn
roles:
  admin: { default: clear }
";

    fn state(phase: Phase, version: u32, generation: i64) -> ColumnState {
        ColumnState {
            label: "ssn".into(),
            token_format: "digits".into(),
            key_name: DEFAULT_KEY_NAME.into(),
            key_version: version,
            phase,
            target_version: (phase == Phase::Rekeying).then_some(version + 1),
            rows_done: 7,
            generation,
        }
    }

    fn states(rows: &[(&str, ColumnState)]) -> AtRestStates {
        AtRestStates {
            columns: rows
                .iter()
                .map(|(c, s)| (c.to_string(), s.clone()))
                .collect(),
            read_at: Instant::now(),
            max_age: Duration::from_secs(60),
        }
    }

    fn columns(names: &[&str]) -> BTreeSet<Arc<str>> {
        names.iter().map(|n| Arc::from(*n)).collect()
    }

    #[test]
    fn only_tokenized_columns_with_a_known_version_resolve() {
        let policy = crate::policy::Policy::from_yaml(POLICY, "p.yaml").unwrap();
        let view = policy.for_role("admin", &[]);
        let mut keys = KeyRing::default();
        keys.insert(DEFAULT_KEY_NAME, 1, Key::from_bytes([1; 32]));
        keys.insert(DEFAULT_KEY_NAME, 2, Key::from_bytes([2; 32]));
        let a = columns(&["public.a.ssn"]);
        let code = |r: Result<Vec<ColumnVersion>, Refusal>| r.unwrap_err().code;
        // The recorded version is used, not the active one (2).
        let s = states(&[("public.a.ssn", state(Phase::Tokenized, 1, 4))]);
        let v = resolve(&a, &view, Some(&s), None, &keys).unwrap();
        assert_eq!((v[0].key_version, v[0].generation), (1, 4));
        // Never migrated, migrating, rekeying: refused.
        let none = states(&[]);
        assert_eq!(
            code(resolve(&a, &view, Some(&none), None, &keys)),
            Code::AtRestNotReady
        );
        for phase in [Phase::Migrating, Phase::Rekeying] {
            let s = states(&[("public.a.ssn", state(phase, 1, 4))]);
            assert_eq!(
                code(resolve(&a, &view, Some(&s), None, &keys)),
                Code::AtRestNotReady
            );
        }
        // A version the key file lacks, or another label: refused.
        let s = states(&[("public.a.ssn", state(Phase::Tokenized, 3, 4))]);
        assert_eq!(
            code(resolve(&a, &view, Some(&s), None, &keys)),
            Code::AtRestNotReady
        );
        let mut other = state(Phase::Tokenized, 1, 4);
        other.label = "card".into();
        let s = states(&[("public.a.ssn", other)]);
        assert_eq!(
            code(resolve(&a, &view, Some(&s), None, &keys)),
            Code::AtRestNotReady
        );
        // Tokens recorded under a key name other than the one labels use: refused, even
        // when the key file holds that name and version.
        keys.insert("other", 1, Key::from_bytes([3; 32]));
        let mut named = state(Phase::Tokenized, 1, 4);
        named.key_name = "other".into();
        let s = states(&[("public.a.ssn", named)]);
        assert_eq!(
            code(resolve(&a, &view, Some(&s), None, &keys)),
            Code::AtRestNotReady
        );
        // Two columns of one label under different versions do not compare.
        let ab = columns(&["public.a.ssn", "public.b.ssn"]);
        let s = states(&[
            ("public.a.ssn", state(Phase::Tokenized, 1, 4)),
            ("public.b.ssn", state(Phase::Tokenized, 2, 9)),
        ]);
        assert_eq!(
            code(resolve(&ab, &view, Some(&s), None, &keys)),
            Code::AtRestNotReady
        );
        // No recent read: TG186.
        let mut stale = states(&[("public.a.ssn", state(Phase::Tokenized, 1, 4))]);
        stale.max_age = Duration::ZERO;
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(
            code(resolve(&a, &view, Some(&stale), None, &keys)),
            Code::AtRestStateUnknown
        );
        assert_eq!(
            code(resolve(&a, &view, None, Some("down"), &keys)),
            Code::AtRestStateUnknown
        );
        // A statement prepared under generation 4 is refused at Bind once it is 5.
        let planned = resolve(&a, &view, Some(&s), None, &keys).unwrap();
        let later = states(&[("public.a.ssn", state(Phase::Tokenized, 2, 5))]);
        assert!(still_current(&planned, &view, Some(&s), None, &keys).is_ok());
        assert_eq!(
            still_current(&planned, &view, Some(&later), None, &keys)
                .unwrap_err()
                .code,
            Code::AtRestPlanChanged
        );
        // A cursor declared under generation 4 is refused at FETCH once it is 5.
        assert!(cursor_current("c", &planned, &view, Some(&s), None, &keys).is_ok());
        assert_eq!(
            cursor_current("c", &planned, &view, Some(&later), None, &keys)
                .unwrap_err()
                .code,
            Code::AtRestCursorChanged
        );
    }

    #[test]
    fn importing_a_snapshot_is_recognised_in_every_form() {
        let lex = crate::sql::LexSettings {
            standard_conforming_strings: true,
        };
        for sql in [
            "SET TRANSACTION SNAPSHOT '00000003-0000001B-1'",
            "set local transaction snapshot '1'",
            "SET SESSION TRANSACTION\n/* c */ SNAPSHOT '1'",
            "SET -- c\n TRANSACTION --x\n SNAPSHOT '1'",
            "ALTER ROLE r SET TRANSACTION SNAPSHOT '1'",
        ] {
            assert_eq!(
                imports_snapshot(sql, lex).unwrap_err().code,
                Code::AtRestSnapshotImport,
                "{sql}"
            );
        }
        for sql in [
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "SELECT pg_export_snapshot()",
            "SELECT 'transaction snapshot'",
            "SELECT \"transaction\" snapshot FROM t",
        ] {
            assert!(imports_snapshot(sql, lex).is_ok(), "{sql}");
        }
    }
}
