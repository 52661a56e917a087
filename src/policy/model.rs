//! The validated policy: labels, columns and role rules, each remembering where in the
//! file it was written so decisions can name the rule that made them.
use super::formats::{MaskSpec, TokenFormat};
use super::node::Pos;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// `FromStr` and `Display` for the keyword enums, through their `ALL` and `as_str`.
macro_rules! keyword_impls {
    ($t:ty) => {
        impl FromStr for $t {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                <$t>::ALL.into_iter().find(|v| v.as_str() == s).ok_or(())
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// What kind of data a label is. A fixed set, so a typo (`pi`) is an error instead of a
/// new class that no role mentions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    Pii,
    Financial,
    Health,
    Credentials,
}

impl Class {
    pub const ALL: [Class; 4] = [
        Class::Pii,
        Class::Financial,
        Class::Health,
        Class::Credentials,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Pii => "pii",
            Class::Financial => "financial",
            Class::Health => "health",
            Class::Credentials => "credentials",
        }
    }
}

keyword_impls!(Class);

/// What a role gets for a column, ordered from least to most hiding so that composition
/// is `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Clear,
    Token,
    Mask,
    Null,
    Deny,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::Clear,
        Action::Token,
        Action::Mask,
        Action::Null,
        Action::Deny,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Clear => "clear",
            Action::Token => "token",
            Action::Mask => "mask",
            Action::Null => "null",
            Action::Deny => "deny",
        }
    }
}

keyword_impls!(Action);

/// The statement kinds a role rule can allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StatementKind {
    /// SELECT, VALUES, TABLE and WITH ... SELECT (SELECT ... INTO creates a table: ddl).
    Select,
    Insert,
    /// UPDATE and MERGE.
    Update,
    Delete,
    /// COPY in either direction.
    Copy,
    /// CREATE, ALTER, DROP, TRUNCATE, GRANT, REVOKE, COMMENT, SELECT INTO.
    Ddl,
    /// Everything else: transaction control, SET/SHOW/RESET, LISTEN/NOTIFY, PREPARE,
    /// EXECUTE, DEALLOCATE, DISCARD, VACUUM, ANALYZE, EXPLAIN, CALL, DO.
    Utility,
    /// Creating or changing code the analyser never sees: functions, procedures, operators,
    /// types, domains, casts, aggregates, triggers, rules, views, policies, schemas,
    /// non-constant defaults and checks. Not in the default set: only a rule's
    /// `statements: { allow: [...] }` that lists `code` allows it.
    Code,
}

impl StatementKind {
    pub const ALL: [StatementKind; 8] = [
        StatementKind::Select,
        StatementKind::Insert,
        StatementKind::Update,
        StatementKind::Delete,
        StatementKind::Copy,
        StatementKind::Ddl,
        StatementKind::Utility,
        StatementKind::Code,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            StatementKind::Select => "select",
            StatementKind::Insert => "insert",
            StatementKind::Update => "update",
            StatementKind::Delete => "delete",
            StatementKind::Copy => "copy",
            StatementKind::Ddl => "ddl",
            StatementKind::Utility => "utility",
            StatementKind::Code => "code",
        }
    }
    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

keyword_impls!(StatementKind);

/// A set of statement kinds as a bit set: composition is a bitwise AND.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StatementSet(pub(crate) u8);

impl StatementSet {
    pub const ALL: StatementSet = StatementSet(0xff);
    /// What a rule allows when it says nothing (or only `deny:`): every kind but `code`.
    pub const DEFAULT: StatementSet = StatementSet(0x7f);
    pub fn contains(self, kind: StatementKind) -> bool {
        self.0 & kind.bit() != 0
    }
    pub fn kinds(self) -> impl Iterator<Item = StatementKind> {
        StatementKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }
}

/// `audit:` (parsed and validated now; used by a later issue).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AuditLevel {
    Protected,
    All,
}

/// `alerts: { action: ... }` (parsed and validated now; used by a later issue).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AlertAction {
    Log,
    Terminate,
}

/// `alerts:` thresholds (parsed and validated now; used by a later issue).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Alerts {
    pub max_protected_values_per_minute: Option<u64>,
    pub max_refusals_per_minute: Option<u64>,
    pub action: Option<AlertAction>,
}

/// A label: what the data is and how it tokenizes or masks.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    pub name: String,
    pub class: Class,
    pub token: Option<TokenFormat>,
    /// `at_rest: token`: PostgreSQL stores FF1 tokens, never the plaintext (issue 14).
    pub at_rest: bool,
    /// `None` means "no `mask:` written"; [`MaskSpec::default_for`] applies.
    pub mask: Option<MaskSpec>,
    pub pos: Pos,
}

/// A column name as PostgreSQL stores it: three parts, unquoted parts folded to lower case.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ColumnName {
    pub schema: String,
    pub table: String,
    pub column: String,
}

impl ColumnName {
    /// Parses `schema.table.column` with PostgreSQL's identifier rules: an unquoted part
    /// is folded to lower case, a double-quoted part is kept as written (`""` is a quote).
    pub fn parse(text: &str) -> Result<ColumnName, String> {
        let mut parts = Vec::with_capacity(3);
        let mut chars = text.chars().peekable();
        loop {
            let mut part = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            part.push('"');
                        }
                        Some('"') => break,
                        Some(c) => part.push(c),
                        None => return Err(format!("unterminated quoted name in '{text}'")),
                    }
                }
                if part.is_empty() {
                    return Err(format!("empty quoted name in '{text}'"));
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == '.' {
                        break;
                    }
                    if !(c.is_alphanumeric() || c == '_' || c == '$') {
                        return Err(format!(
                            "'{text}': character '{c}' needs the name part to be double-quoted"
                        ));
                    }
                    part.extend(c.to_lowercase());
                    chars.next();
                }
                if part.is_empty() {
                    return Err(format!("'{text}' has an empty name part"));
                }
                if part.starts_with(|c: char| c.is_ascii_digit() || c == '$') {
                    return Err(format!(
                        "'{text}': an unquoted name cannot start with '{}'",
                        part.chars().next().unwrap_or('?')
                    ));
                }
            }
            parts.push(part);
            match chars.next() {
                None => break,
                Some('.') => continue,
                Some(c) => return Err(format!("'{text}': unexpected '{c}' after a quoted name")),
            }
        }
        match <[String; 3]>::try_from(parts) {
            Ok([schema, table, column]) => Ok(ColumnName {
                schema,
                table,
                column,
            }),
            Err(parts) => Err(format!(
                "'{text}' has {} part(s); write schema.table.column",
                parts.len()
            )),
        }
    }

    /// The canonical spelling used as the lookup key and in messages: each part quoted only
    /// when PostgreSQL would need it.
    pub fn canonical(&self) -> String {
        canonical_parts(&self.schema, &self.table, &self.column)
    }
}

/// `schema.table.column` with each part quoted only when needed. Keywords are not quoted:
/// both sides of a lookup use this function, so it only has to be unambiguous.
pub fn canonical_parts(schema: &str, table: &str, column: &str) -> String {
    let mut out = String::with_capacity(schema.len() + table.len() + column.len() + 2);
    for (i, part) in [schema, table, column].into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_ident(&mut out, part);
    }
    out
}

fn push_ident(out: &mut String, part: &str) {
    let plain = part
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && part
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        out.push_str(part);
    } else {
        out.push('"');
        out.push_str(&part.replace('"', "\"\""));
        out.push('"');
    }
}

impl fmt::Display for ColumnName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

/// One `columns:` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnEntry {
    pub name: ColumnName,
    /// Index into [`Policy::labels`].
    pub label: usize,
    pub pos: Pos,
}

/// What a rule key talks about, most specific last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Default,
    Class(Class),
    /// Index into [`Policy::labels`].
    Label(usize),
}

/// A named derived use a rule may allow on a label (`allow: { pii: [count, is_null] }`):
/// the only functions of a protected value that reach the role, each applied to the column
/// itself (see the read path's planning).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DerivedUse {
    /// `count(col)`, `count(t.*)`.
    Count,
    /// `count(DISTINCT col)`.
    CountDistinct,
    /// `col IS NULL`, `col IS NOT NULL`.
    IsNull,
    /// `length(col)`, `char_length(col)`, `character_length(col)`, `octet_length(col)`.
    Length,
}

impl DerivedUse {
    pub const ALL: [DerivedUse; 4] = [
        DerivedUse::Count,
        DerivedUse::CountDistinct,
        DerivedUse::IsNull,
        DerivedUse::Length,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DerivedUse::Count => "count",
            DerivedUse::CountDistinct => "count_distinct",
            DerivedUse::IsNull => "is_null",
            DerivedUse::Length => "length",
        }
    }

    pub fn from_name(name: &str) -> Option<DerivedUse> {
        DerivedUse::ALL.into_iter().find(|d| d.as_str() == name)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of [`DerivedUse`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DerivedSet(pub u8);

impl DerivedSet {
    pub const NONE: DerivedSet = DerivedSet(0);
    pub const ALL: DerivedSet = DerivedSet(0b1111);

    pub fn with(self, d: DerivedUse) -> DerivedSet {
        DerivedSet(self.0 | d.bit())
    }

    pub fn contains(self, d: DerivedUse) -> bool {
        self.0 & d.bit() != 0
    }

    pub fn intersect(self, other: DerivedSet) -> DerivedSet {
        DerivedSet(self.0 & other.0)
    }

    /// The names in the set, e.g. `count, is_null`.
    pub fn names(self) -> String {
        let names: Vec<&str> = DerivedUse::ALL
            .into_iter()
            .filter(|d| self.contains(*d))
            .map(DerivedUse::as_str)
            .collect();
        names.join(", ")
    }
}

/// One `allow:` entry of a role rule, e.g. `pii: [count]` on line 21.
#[derive(Clone, Debug, PartialEq)]
pub struct AllowEntry {
    pub target: Target,
    pub uses: DerivedSet,
    pub pos: Pos,
}

/// One action entry in a role rule, e.g. `pii: mask` on line 19.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionEntry {
    pub target: Target,
    pub key: String,
    pub action: Action,
    pub pos: Pos,
}

/// One entry under `roles:`.
#[derive(Clone, Debug, PartialEq)]
pub struct RoleRule {
    pub name: String,
    pub pos: Pos,
    pub actions: Vec<ActionEntry>,
    pub row_limit: Option<(u64, Pos)>,
    /// `None` when the rule has no `filter_on:` (it then lets filter only on what it shows
    /// in clear).
    pub filter_on: Option<(Vec<Target>, Pos)>,
    /// `allow:` entries: named derived uses per label or class.
    pub allow: Vec<AllowEntry>,
    pub statements: StatementSet,
    pub statements_pos: Option<Pos>,
    pub enforce: bool,
    pub enforce_pos: Option<Pos>,
    /// `see_activity:`: whether the role may read other sessions' activity
    /// (`pg_stat_activity`); `None` when the rule does not say.
    pub see_activity: Option<bool>,
    pub audit: Option<AuditLevel>,
    pub alerts: Option<Alerts>,
}

impl RoleRule {
    /// The entry this rule uses for a label: label key beats class key beats `default`.
    /// `None`: the rule says nothing about the label.
    pub fn entry_for(&self, label: usize, class: Class) -> Option<&ActionEntry> {
        let mut best: Option<&ActionEntry> = None;
        for entry in &self.actions {
            let rank = match entry.target {
                Target::Label(l) if l == label => 3,
                Target::Class(c) if c == class => 2,
                Target::Default => 1,
                _ => continue,
            };
            let best_rank = match best.map(|b| b.target) {
                Some(Target::Label(_)) => 3,
                Some(Target::Class(_)) => 2,
                Some(Target::Default) => 1,
                None => 0,
            };
            if rank > best_rank {
                best = Some(entry);
            }
        }
        best
    }

    /// Whether `filter_on` names the label or its class.
    pub fn filter_on_lists(&self, label: usize, class: Class) -> bool {
        self.filter_on.as_ref().is_some_and(|(targets, _)| {
            targets.iter().any(|t| match t {
                Target::Label(l) => *l == label,
                Target::Class(c) => *c == class,
                Target::Default => false,
            })
        })
    }

    /// The `allow:` entry for a label: the label's own beats its class's.
    pub fn allow_for(&self, label: usize, class: Class) -> Option<&AllowEntry> {
        self.allow
            .iter()
            .find(|a| a.target == Target::Label(label))
            .or_else(|| self.allow.iter().find(|a| a.target == Target::Class(class)))
    }

    /// The rule's name as written in `roles.<name>` paths.
    pub fn path_name(&self) -> String {
        if self.name.chars().all(|c| c.is_alphanumeric() || c == '_') {
            self.name.clone()
        } else {
            format!("\"{}\"", self.name.replace('"', "\\\""))
        }
    }
}

/// The name `"*"` that covers roles no other rule matches.
pub const WILDCARD_ROLE: &str = "*";

/// A parsed, validated policy file. Immutable; reload builds a new one.
#[derive(Debug)]
pub struct Policy {
    pub(crate) source: String,
    pub(crate) source_name: String,
    pub(crate) labels: Vec<Label>,
    pub(crate) label_index: HashMap<String, usize>,
    pub(crate) columns: Vec<ColumnEntry>,
    pub(crate) roles: Vec<RoleRule>,
    pub(crate) role_index: HashMap<String, usize>,
    pub(crate) wildcard: Option<usize>,
    pub(crate) views: super::compose::ViewCache,
}

impl Policy {
    /// The path the policy was read from (or the name given to [`Policy::from_yaml`]).
    pub fn source(&self) -> &str {
        &self.source
    }
    pub fn labels(&self) -> &[Label] {
        &self.labels
    }
    pub fn label(&self, name: &str) -> Option<&Label> {
        self.label_index.get(name).map(|&i| &self.labels[i])
    }
    pub fn columns(&self) -> &[ColumnEntry] {
        &self.columns
    }
    pub fn roles(&self) -> &[RoleRule] {
        &self.roles
    }
    /// `roles.<name>.<key> (file:line)`: how decisions name their rule.
    pub(crate) fn rule_text(&self, rule: &RoleRule, key: &str, pos: Pos) -> String {
        format!(
            "roles.{}.{} ({}:{})",
            rule.path_name(),
            key,
            self.source_name,
            pos.line
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_names_fold_unquoted_parts_and_keep_quoted_ones() {
        let c = ColumnName::parse("Public.Customers.Email").unwrap();
        assert_eq!(
            (c.schema.as_str(), c.table.as_str(), c.column.as_str()),
            ("public", "customers", "email")
        );
        let q = ColumnName::parse(r#"public."Order Items"."a""b""#).unwrap();
        assert_eq!(q.table, "Order Items");
        assert_eq!(q.column, "a\"b");
        assert_eq!(q.canonical(), r#"public."Order Items"."a""b""#);
        assert_eq!(c.canonical(), "public.customers.email");
    }

    #[test]
    fn bad_column_names_are_rejected_with_a_reason() {
        for (bad, why) in [
            ("customers.email", "2 part"),
            ("a.b.c.d", "4 part"),
            ("public..email", "empty"),
            ("public.cust omers.email", "double-quoted"),
            ("public.\"open.email", "unterminated"),
            ("public.1t.email", "cannot start"),
        ] {
            let err = ColumnName::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
