//! The write side of tokenization at rest (issue 14): the literals of a Query or Parse and
//! the parameters of a Bind that reach a column stored as tokens are replaced by their FF1
//! tokens before PostgreSQL sees them. What to replace comes from
//! [`crate::plan::write::plan_at_rest`]; anything it could not plan was refused there.
use super::objects::Planned;
use super::{Pending, ReadPath, cstr};
use crate::catalog::Snapshot;
use crate::errors::Code;
use crate::plan::Refusal;
use crate::plan::write::{AtRest, AtRestIndex, AtRestPlan, Direction};
use crate::policy::RoleView;
use crate::protect::keys::DEFAULT_KEY_NAME;
use crate::protect::{Action, ColumnTransform, Output, Tokenizer, TransformSpec};
use crate::session::protocol::Found;
use crate::wire::frontend;
use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

/// Text-like type OIDs a parameter of an at-rest column may be declared as (0: unspecified).
const PARAM_TYPES: [u32; 4] = [0, 25, 1043, 1042];

/// Array types a `col = ANY($n)` parameter may be declared as: text[], varchar[], bpchar[].
const ARRAY_PARAM_TYPES: [u32; 4] = [0, 1009, 1015, 1014];

/// Element types of a binary array parameter: text, varchar, bpchar (UTF-8 bytes).
const ELEMENT_TYPES: [u32; 3] = [25, 1043, 1042];

/// FF1 transforms for one message, one COPY, or (Bind) the session:
/// - at rest, tokenizers per label, format and key version (the key version is part of the
///   key: after a rekey the session's cached tokenizers of the old version are never used
///   for the new one);
/// - lookups by token, the read path's own transform per label and format (the key file's
///   active version, which the read path shows tokens under).
#[derive(Default)]
pub(super) struct Tokenizers {
    at_rest: HashMap<(Arc<str>, Arc<str>, u32), Tokenizer>,
    reveal: HashMap<(Arc<str>, Arc<str>), ColumnTransform>,
}

fn value_refusal(how: &AtRest, e: impl std::fmt::Display) -> Refusal {
    match how.direction {
        Direction::Tokenize => Refusal::new(
            Code::AtRestParameter,
            format!("a value for label {} cannot be tokenized: {e}", how.label),
        ),
        // The message never quotes the value (nor what it decrypts to).
        Direction::Reveal => Refusal::new(
            Code::NotAToken,
            format!(
                "a value compared with a column shown as tokens of label {} is not a token of its format ({e})",
                how.label
            ),
        ),
    }
}

impl AtRest {
    /// The code of a value that cannot be transformed: TG184 at rest, TG124 (not a token)
    /// for lookups by token.
    fn value_code(&self) -> Code {
        match self.direction {
            Direction::Tokenize => Code::AtRestParameter,
            Direction::Reveal => Code::NotAToken,
        }
    }

    /// The code of a parameter tokengate cannot transform (its type or format).
    pub(super) fn parameter_code(&self) -> Code {
        match self.direction {
            Direction::Tokenize => Code::AtRestParameter,
            Direction::Reveal => Code::TokenLookupUnsupported,
        }
    }
}

impl Tokenizers {
    /// The at-rest tokenizer of `how`'s label and format under its column's recorded key
    /// version, never the key file's active one (a plan without one has version 0, which no
    /// key file holds: refused).
    pub(super) fn get(
        &mut self,
        keys: &crate::protect::KeyRing,
        how: &AtRest,
    ) -> Result<&Tokenizer, Refusal> {
        let key = (how.label.clone(), how.format.clone(), how.key_version);
        match self.at_rest.entry(key) {
            Entry::Occupied(o) => Ok(o.into_mut()),
            Entry::Vacant(v) => {
                let format = how
                    .format
                    .parse()
                    .map_err(|_| value_refusal(how, "the token format is not usable"))?;
                let key = keys
                    .get(DEFAULT_KEY_NAME, Some(how.key_version))
                    .map_err(|e| value_refusal(how, e))?;
                let t =
                    Tokenizer::new(key, &how.label, format).map_err(|e| value_refusal(how, e))?;
                Ok(v.insert(t))
            }
        }
    }

    /// Lookups by token: the transform the read path shows `how`'s label with.
    fn shown(
        &mut self,
        keys: &crate::protect::KeyRing,
        how: &AtRest,
    ) -> Result<&ColumnTransform, Refusal> {
        match self.reveal.entry((how.label.clone(), how.format.clone())) {
            Entry::Occupied(o) => Ok(o.into_mut()),
            Entry::Vacant(v) => {
                let format = how
                    .format
                    .parse()
                    .map_err(|_| value_refusal(how, "the token format is not usable"))?;
                // The active key version, as `transform_spec` in transform.rs uses.
                let spec = TransformSpec::new(Action::Token(format), how.label.to_string());
                let t = ColumnTransform::new(&spec, crate::protect::column::oid::TEXT, 0, keys)
                    .map_err(|e| value_refusal(how, e))?;
                Ok(v.insert(t))
            }
        }
    }

    /// The value to send for `plain`: its token at rest, the plaintext a shown token stands
    /// for in a lookup by token.
    fn tokenize(
        &mut self,
        keys: &crate::protect::KeyRing,
        how: &AtRest,
        plain: &[u8],
    ) -> Result<Vec<u8>, Refusal> {
        let mut out = Vec::with_capacity(plain.len());
        if how.direction == Direction::Reveal {
            let t = self.shown(keys, how)?;
            reveal_into(t, plain, &mut out).map_err(|e| value_refusal(how, e))?;
            return Ok(out);
        }
        match self.get(keys, how)?.tokenize(plain, &mut out) {
            Ok(Output::Value) => Ok(out),
            Ok(Output::Null) => Err(value_refusal(how, "it would become NULL")),
            Err(e) => Err(value_refusal(how, e)),
        }
    }
}

/// Appends the plaintext `token` stands for, when it is a token the read path could have
/// shown: its plaintext must tokenize back to exactly `token` (FF1 is a permutation, so
/// this only fails for values the format does not produce: a masked small value, a
/// non-canonical number or date). A value that is not one is refused, never passed on as
/// written (it would be compared with the plaintext) nor turned into NULL (`<>` and
/// `NOT IN` would answer wrongly).
fn reveal_into(t: &ColumnTransform, token: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let start = out.len();
    match t.reveal(token, out) {
        Ok(Output::Value) => {}
        Ok(Output::Null) => return Err("it is too short to be a token".into()),
        Err(e) => return Err(e.to_string()),
    }
    let mut again = Vec::with_capacity(token.len());
    match t.apply(&out[start..], &mut again) {
        Ok(Output::Value) if again == token => Ok(()),
        _ => {
            out.truncate(start);
            Err("it is not a token tokengate shows".into())
        }
    }
}

impl Tokenizers {
    /// A text-format array (`{a,"b c",NULL}`) with every element tokenized; NULLs stay.
    fn tokenize_text_array(
        &mut self,
        keys: &crate::protect::KeyRing,
        how: &AtRest,
        text: &[u8],
    ) -> Result<Vec<u8>, Refusal> {
        let elements = crate::wire::array::parse_text(text).map_err(|e| array_refusal(how, e))?;
        let elements = self.tokenize_elements(keys, how, elements)?;
        let mut out = Vec::with_capacity(text.len() + 8);
        crate::wire::array::write_text(&elements, &mut out);
        Ok(out)
    }

    /// A binary-format array of text, varchar or bpchar with every element tokenized.
    fn tokenize_binary_array(
        &mut self,
        keys: &crate::protect::KeyRing,
        how: &AtRest,
        bytes: &[u8],
    ) -> Result<Vec<u8>, Refusal> {
        let mut a = crate::wire::array::parse_binary(bytes).map_err(|e| array_refusal(how, e))?;
        if !ELEMENT_TYPES.contains(&a.element_type) {
            return Err(Refusal::new(
                how.parameter_code(),
                format!(
                    "an array compared with label {} has elements of type oid {}; they must be text",
                    how.label, a.element_type
                ),
            ));
        }
        a.elements = self.tokenize_elements(keys, how, std::mem::take(&mut a.elements))?;
        let mut out = Vec::with_capacity(bytes.len() + 8);
        crate::wire::array::write_binary(&a, &mut out);
        Ok(out)
    }

    fn tokenize_elements(
        &mut self,
        keys: &crate::protect::KeyRing,
        how: &AtRest,
        elements: Vec<crate::wire::array::Element>,
    ) -> Result<Vec<crate::wire::array::Element>, Refusal> {
        elements
            .into_iter()
            .map(|e| match e {
                None => Ok(None),
                Some(v) if std::str::from_utf8(&v).is_err() => Err(Refusal::new(
                    how.value_code(),
                    format!(
                        "an array element for label {} is not valid UTF-8",
                        how.label
                    ),
                )),
                Some(v) => self.tokenize(keys, how, &v).map(Some),
            })
            .collect()
    }
}

fn array_refusal(how: &AtRest, e: crate::wire::array::ArrayError) -> Refusal {
    Refusal::new(
        how.value_code(),
        format!(
            "the array compared with label {} (= ANY) cannot be read: {e}",
            how.label
        ),
    )
}

/// The at-rest planning index with the role view and catalog snapshot it was built from.
pub(super) type CachedIndex = Option<(Arc<RoleView>, Arc<Snapshot>, Arc<AtRestIndex>)>;

impl ReadPath {
    /// The at-rest planning index for the session's current role view and `snapshot`: built
    /// when either changed (a policy reload, a catalog refresh), else the one kept.
    pub(super) fn at_rest_index(&mut self, snapshot: &Arc<Snapshot>) -> Arc<AtRestIndex> {
        if let Some((view, snap, index)) = &self.at_rest_index
            && Arc::ptr_eq(view, &self.view)
            && Arc::ptr_eq(snap, snapshot)
        {
            return index.clone();
        }
        let index = Arc::new(AtRestIndex::new(&self.view, snapshot));
        self.at_rest_index = Some((self.view.clone(), snapshot.clone(), index.clone()));
        index
    }
}

/// Replaces each planned literal of `sql` by the quoted token of its value.
fn rewrite_sql(
    keys: &crate::protect::KeyRing,
    sql: &[u8],
    plans: &[&AtRestPlan],
) -> Result<Option<Vec<u8>>, Refusal> {
    let mut literals: Vec<_> = plans
        .iter()
        .flat_map(|p| {
            let scalars = p.literals.iter().map(|(r, h)| (r, h, false));
            scalars.chain(p.array_literals.iter().map(|(r, h)| (r, h, true)))
        })
        .collect();
    if literals.is_empty() {
        return Ok(None);
    }
    literals.sort_by_key(|(r, _, _)| r.start);
    let mut tokenizers = Tokenizers::default();
    let mut out = Vec::with_capacity(sql.len() + 16);
    let mut at = 0;
    for (range, how, array) in literals {
        let literal = sql
            .get(range.clone())
            .filter(|l| range.start >= at && l.len() >= 2)
            .ok_or_else(|| Refusal::new(Code::AtRestValue, "a literal could not be located"))?;
        // A plain '...' literal without backslashes: '' is a quote, nothing else is special.
        let inner = &literal[1..literal.len() - 1];
        let mut plain = Vec::with_capacity(inner.len());
        let mut i = 0;
        while i < inner.len() {
            plain.push(inner[i]);
            i += if inner[i] == b'\'' { 2 } else { 1 };
        }
        let token = if array {
            let token = tokenizers.tokenize_text_array(keys, how, &plain)?;
            // Inside the SQL literal a backslash could mean something else under
            // standard_conforming_strings = off: only arrays that need none are rewritten.
            if token.contains(&b'\\') {
                return Err(Refusal::new(
                    Code::AtRestValue,
                    "a token in an array literal would need a backslash escape; bind the array as a parameter",
                ));
            }
            token
        } else {
            let value = tokenizers.tokenize(keys, how, &plain)?;
            // Formats keep every character they do not encrypt in place, and literals with a
            // backslash are not planned; checked anyway, as a backslash could be an escape.
            if value.contains(&b'\\') {
                return Err(Refusal::new(
                    how.value_code(),
                    "a transformed literal would need a backslash; bind it as a parameter",
                ));
            }
            value
        };
        out.extend_from_slice(&sql[at..range.start]);
        out.push(b'\'');
        for &b in &token {
            if b == b'\'' {
                out.push(b'\'');
            }
            out.push(b);
        }
        out.push(b'\'');
        at = range.end;
    }
    out.extend_from_slice(&sql[at..]);
    Ok(Some(out))
}

impl ReadPath {
    /// The Query text with its at-rest literals tokenized (`None`: unchanged).
    pub(super) fn tokenize_query(
        &self,
        sql: &[u8],
        statements: &[Planned],
    ) -> Result<Option<Vec<u8>>, Refusal> {
        let plans: Vec<&AtRestPlan> = statements
            .iter()
            .filter_map(|s| s.at_rest.as_deref())
            .collect();
        rewrite_sql(&self.keys, sql, &plans)
    }

    /// The Parse body with its at-rest literals tokenized (`None`: unchanged). Parameters
    /// of at-rest columns must be declared as text (or left unspecified).
    pub(super) fn tokenize_parse(
        &self,
        p: &frontend::Parse<'_>,
        planned: &Planned,
    ) -> Result<Option<Vec<u8>>, Refusal> {
        let Some(plan) = planned.at_rest.as_deref() else {
            return Ok(None);
        };
        for (n, how) in &plan.params {
            let declared = p.param_types.get(n - 1).copied().unwrap_or(0);
            if !PARAM_TYPES.contains(&declared) {
                return Err(Refusal::new(
                    how.parameter_code(),
                    format!(
                        "${n} is declared with type oid {declared}; a parameter for a column stored as tokens must be text"
                    ),
                ));
            }
        }
        for (n, how) in &plan.array_params {
            let declared = p.param_types.get(n - 1).copied().unwrap_or(0);
            if !ARRAY_PARAM_TYPES.contains(&declared) {
                return Err(Refusal::new(
                    how.parameter_code(),
                    format!(
                        "${n} is declared with type oid {declared}; an array compared with a column stored as tokens must be text[], varchar[] or char[]"
                    ),
                ));
            }
        }
        let Some(sql) = rewrite_sql(&self.keys, p.sql, &[plan])? else {
            return Ok(None);
        };
        let mut b = Vec::with_capacity(sql.len() + 16);
        cstr(&mut b, p.statement);
        cstr(&mut b, &sql);
        b.extend_from_slice(&(p.param_types.len() as i16).to_be_bytes());
        for t in &p.param_types {
            b.extend_from_slice(&t.to_be_bytes());
        }
        Ok(Some(b))
    }

    /// Values of statements are rewritten before PostgreSQL sees them: written to or compared
    /// with columns stored as tokens, or tokens compared with columns shown as tokens
    /// (lookups by token; not for monitor-only roles, whose results are not rewritten).
    pub(super) fn rewrites_values(&self) -> bool {
        self.view.has_at_rest() || (self.view.enforce() && self.view.has_token_lookups())
    }

    /// SQL `EXECUTE name(...)` of a prepared statement whose parameters tokengate transforms
    /// at Bind: the values in the EXECUTE would reach PostgreSQL as written. Refused.
    pub(super) fn executes_planned_values(
        &self,
        a: &crate::sql::StatementAnalysis,
    ) -> Result<(), Refusal> {
        if a.kind != crate::sql::StatementKind::Execute || !self.rewrites_values() {
            return Ok(());
        }
        let Some(name) = a.name.as_deref() else {
            return Ok(());
        };
        let Some(plan) = self.statement_at_rest(name.as_bytes())? else {
            return Ok(());
        };
        let mut params = plan.params.iter().chain(&plan.array_params);
        match params.next() {
            None => Ok(()),
            Some((n, how)) => Err(Refusal::new(
                how.parameter_code(),
                format!(
                    "EXECUTE {name}: its parameter ${n} is transformed by tokengate at Bind, which EXECUTE does not send; bind it through the extended protocol"
                ),
            )),
        }
    }

    /// The at-rest plan of the statement a Bind names, as it will be when the messages
    /// already sent are confirmed. `Err` when it cannot be known.
    fn statement_at_rest(&self, name: &[u8]) -> Result<Option<Arc<AtRestPlan>>, Refusal> {
        let pending = self.protocol.find_recent(super::client::SCAN_LIMIT, |p| match p {
            Pending::Parse { name: n, planned } if n == name => {
                Some(planned.as_ref().and_then(|p| p.at_rest.clone()))
            }
            Pending::Query(q) => q
                .statements
                .iter()
                .any(|s| matches!(&s.effect, super::objects::Effect::Prepare { name: n, .. } if n.as_bytes() == name))
                .then_some(None),
            _ => None,
        });
        match pending {
            Found::Yes(plan) => Ok(plan),
            Found::No => Ok(self
                .objects
                .statements
                .get(name)
                .and_then(|s| s.planned.as_ref())
                .and_then(|p| p.at_rest.clone())),
            Found::Unsure => Err(Refusal::new(
                Code::AtRestParameter,
                "too many messages in flight to know which parameters are stored as tokens",
            )),
        }
    }

    /// A Bind the server will run: a portal of a COPY FROM STDIN into at-rest columns is
    /// remembered, so that its Execute tokenizes the CopyData that follows.
    pub(super) fn bound(&mut self, b: &frontend::Bind<'_>) -> Result<(), Refusal> {
        if !self.view.has_at_rest() {
            return Ok(());
        }
        let copy = self
            .statement_at_rest(b.statement)?
            .and_then(|p| p.copy.clone());
        match copy {
            Some(c) => {
                if self.copy_portals.len() >= MAX_COPY_PORTALS
                    && !self.copy_portals.contains_key(b.portal)
                {
                    return Err(Refusal::new(
                        Code::AtRestUnsupported,
                        "too many open portals of COPY FROM into columns stored as tokens",
                    ));
                }
                self.copy_portals.insert(b.portal.to_vec(), c);
            }
            None => {
                self.copy_portals.remove(b.portal);
            }
        }
        Ok(())
    }

    /// The Bind body with its at-rest parameters tokenized (`None`: unchanged). Text and
    /// binary formats carry the same UTF-8 bytes for the text types at-rest columns have.
    /// The tokenizers (FF1 key schedules) are kept for the session.
    pub(super) fn tokenize_bind(
        &mut self,
        b: &frontend::Bind<'_>,
    ) -> Result<Option<Vec<u8>>, Refusal> {
        let mut tokenizers = std::mem::take(&mut self.bind_tokenizers);
        let result = self.tokenize_bind_with(b, &mut tokenizers);
        self.bind_tokenizers = tokenizers;
        result
    }

    fn tokenize_bind_with(
        &self,
        b: &frontend::Bind<'_>,
        tokenizers: &mut Tokenizers,
    ) -> Result<Option<Vec<u8>>, Refusal> {
        if !self.rewrites_values() {
            return Ok(None);
        }
        let Some(plan) = self.statement_at_rest(b.statement)? else {
            if !self.view.has_at_rest() {
                // Lookups by token only: a statement SQL PREPARE made holds no lookup (PREPARE
                // of one is refused, TG125), so it runs as written.
                return Ok(None);
            }
            return Err(Refusal::new(
                Code::AtRestParameter,
                format!(
                    "prepared statement {:?} was not planned for columns stored as tokens (prepared before the policy stored them, or by SQL PREPARE); prepare it again",
                    String::from_utf8_lossy(b.statement)
                ),
            ));
        };
        crate::plan::at_rest_state::still_current(
            &plan.versions,
            &self.view,
            self.at_rest_states.as_deref(),
            self.at_rest_error.as_deref(),
            &self.keys,
        )?;
        self.transaction_states.check(&plan.versions)?;
        if plan.params.is_empty() && plan.array_params.is_empty() {
            return Ok(None);
        }
        // Parameters not stored as tokens are written back from the message as they are.
        let mut params: Vec<Option<Cow<[u8]>>> =
            b.params.iter().map(|p| p.map(Cow::Borrowed)).collect();
        let arrays = plan.array_params.iter().map(|(n, h)| (n, h, true));
        for (n, how, array) in plan.params.iter().map(|(n, h)| (n, h, false)).chain(arrays) {
            let i = n - 1;
            let format = match b.param_formats.as_slice() {
                [] => 0,
                [one] => *one,
                many => many.get(i).copied().unwrap_or(-1),
            };
            if format != 0 && format != 1 {
                return Err(Refusal::new(
                    how.parameter_code(),
                    format!("${n} has an unknown format code {format}"),
                ));
            }
            if let Some(Some(v)) = params.get(i)
                && array
            {
                let token = if format == 0 {
                    tokenizers.tokenize_text_array(&self.keys, how, v)?
                } else {
                    tokenizers.tokenize_binary_array(&self.keys, how, v)?
                };
                params[i] = Some(Cow::Owned(token));
            } else if let Some(Some(v)) = params.get(i) {
                if std::str::from_utf8(v).is_err() {
                    return Err(Refusal::new(
                        how.value_code(),
                        format!("${n} is not valid UTF-8 text"),
                    ));
                }
                let token = tokenizers.tokenize(&self.keys, how, v)?;
                params[i] = Some(Cow::Owned(token));
            }
        }
        let size: usize = params.iter().flatten().map(|p| p.len() + 4).sum();
        let mut out = Vec::with_capacity(b.portal.len() + b.statement.len() + size + 64);
        cstr(&mut out, b.portal);
        cstr(&mut out, b.statement);
        out.extend_from_slice(&(b.param_formats.len() as i16).to_be_bytes());
        for f in &b.param_formats {
            out.extend_from_slice(&f.to_be_bytes());
        }
        out.extend_from_slice(&(params.len() as i16).to_be_bytes());
        for p in &params {
            match p {
                Some(v) => {
                    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    out.extend_from_slice(v);
                }
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        out.extend_from_slice(&(b.result_formats.len() as i16).to_be_bytes());
        for f in &b.result_formats {
            out.extend_from_slice(&f.to_be_bytes());
        }
        Ok(Some(out))
    }
}

/// Bound on the COPY portals a session has bound at once.
const MAX_COPY_PORTALS: usize = 64;
