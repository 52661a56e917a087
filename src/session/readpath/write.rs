//! The write side of tokenization at rest (issue 14): the literals of a Query or Parse and
//! the parameters of a Bind that reach a column stored as tokens are replaced by their FF1
//! tokens before PostgreSQL sees them. What to replace comes from
//! [`crate::plan::write::plan_at_rest`]; anything it could not plan was refused there.
use super::objects::Planned;
use super::{Pending, ReadPath, cstr};
use crate::errors::Code;
use crate::plan::Refusal;
use crate::plan::write::{AtRest, AtRestPlan, Direction};
use crate::protect::{Action, ColumnTransform, Output, TransformSpec};
use crate::session::protocol::Found;
use crate::wire::frontend;
use std::collections::HashMap;
use std::sync::Arc;

/// Text-like type OIDs a parameter of an at-rest column may be declared as (0: unspecified).
const PARAM_TYPES: [u32; 4] = [0, 25, 1043, 1042];

/// Array types a `col = ANY($n)` parameter may be declared as: text[], varchar[], bpchar[].
const ARRAY_PARAM_TYPES: [u32; 4] = [0, 1009, 1015, 1014];

/// Element types of a binary array parameter: text, varchar, bpchar (UTF-8 bytes).
const ELEMENT_TYPES: [u32; 3] = [25, 1043, 1042];

/// FF1 tokenizers per label, format, key version and direction: for one message, one COPY,
/// or (Bind) the session. The key version is part of the key: after a rekey the session's
/// cached tokenizers of the old version are never used for the new one.
#[derive(Default)]
pub(super) struct Tokenizers(HashMap<(Arc<str>, Arc<str>, u32, Direction), ColumnTransform>);

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
    fn tokenize(
        &mut self,
        keys: &crate::protect::KeyRing,
        how: &AtRest,
        plain: &[u8],
    ) -> Result<Vec<u8>, Refusal> {
        let mut out = Vec::with_capacity(plain.len());
        self.tokenize_into(keys, how, plain, &mut out)?;
        Ok(out)
    }

    /// Appends the token of `plain` to `out`.
    fn tokenize_into(
        &mut self,
        keys: &crate::protect::KeyRing,
        how: &AtRest,
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Refusal> {
        let bad = |e: String| match how.direction {
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
        };
        let key = (
            how.label.clone(),
            how.format.clone(),
            how.key_version,
            how.direction,
        );
        let t = match self.0.entry(key) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let format = how
                    .format
                    .parse()
                    .map_err(|_| bad("the token format is not usable".into()))?;
                let mut spec = TransformSpec::new(Action::Token(format), how.label.to_string());
                // At rest: the column's recorded key version, never the key file's active
                // one (a plan without one has version 0, which no key file holds: refused).
                // Lookups by token: the active version, which the read path shows tokens
                // under (see `transform_spec` in transform.rs).
                if how.direction == Direction::Tokenize {
                    spec.key_version = Some(how.key_version);
                }
                let t = ColumnTransform::new(&spec, crate::protect::column::oid::TEXT, 0, keys)
                    .map_err(|e| bad(e.to_string()))?;
                v.insert(t)
            }
        };
        if how.direction == Direction::Reveal {
            return reveal_into(t, plain, out).map_err(bad);
        }
        match t.apply(plain, out) {
            Ok(Output::Value) => Ok(()),
            Ok(Output::Null) => Err(bad("it would become NULL".into())),
            Err(e) => Err(bad(e.to_string())),
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

    /// The COPY FROM STDIN of a Query whose rows must be tokenized: only as the Query's only
    /// statement.
    pub(super) fn copy_in_of(
        &self,
        statements: &[Planned],
    ) -> Result<Option<CopyInState>, Refusal> {
        let copies: Vec<_> = statements
            .iter()
            .filter_map(|s| s.at_rest.as_ref().and_then(|a| a.copy.clone()))
            .collect();
        match copies.as_slice() {
            [] => Ok(None),
            [one] if statements.len() == 1 => Ok(Some(CopyInState::new(one.clone()))),
            _ => Err(Refusal::new(
                Code::AtRestUnsupported,
                "a COPY FROM into columns stored as tokens must be the only statement of its query",
            )),
        }
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

    /// An Execute: the COPY FROM STDIN it starts, if its portal is one.
    pub(super) fn executed(&mut self, portal: &[u8]) {
        self.copy_in = self
            .copy_portals
            .get(portal)
            .map(|c| CopyInState::new(c.clone()));
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
        let mut params: Vec<Option<Vec<u8>>> =
            b.params.iter().map(|p| p.map(<[u8]>::to_vec)).collect();
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
                params[i] = Some(token);
            } else if let Some(Some(v)) = params.get(i) {
                if std::str::from_utf8(v).is_err() {
                    return Err(Refusal::new(
                        how.value_code(),
                        format!("${n} is not valid UTF-8 text"),
                    ));
                }
                let token = tokenizers.tokenize(&self.keys, how, v)?;
                params[i] = Some(token);
            }
        }
        let mut out = Vec::new();
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

/// Tokenized COPY rows are sent on once this many bytes are held (and at CopyDone).
const COPY_FLUSH: usize = 64 << 10;

/// Bound on the COPY portals a session has bound at once.
const MAX_COPY_PORTALS: usize = 64;

/// Bound on a COPY line tokengate holds while waiting for its end.
const MAX_COPY_LINE: usize = 16 << 20;

/// A COPY ... FROM STDIN whose rows are being tokenized.
pub(super) struct CopyInState {
    plan: crate::plan::write::CopyIn,
    /// The start of a line whose end has not arrived yet.
    partial: Vec<u8>,
    lines: u64,
    /// The first row that could not be tokenized: the rest is dropped and the COPY fails.
    failed: Option<Refusal>,
    tokenizers: Tokenizers,
    /// FORMAT binary: the PGCOPY stream's state.
    binary: Option<super::copy_binary::BinaryRows>,
    /// Text and CSV: tokenized rows not yet sent, as one CopyData frame being built (the
    /// server gets a few large messages instead of one per line; COPY FROM has no reply
    /// before CopyDone, so holding them back changes nothing the client sees).
    held: Vec<u8>,
}

impl std::fmt::Debug for CopyInState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyInState")
            .field("lines", &self.lines)
            .finish_non_exhaustive()
    }
}

fn copy_refusal(why: impl Into<String>) -> Refusal {
    Refusal::new(
        Code::AtRestValue,
        format!("COPY row for a column stored as tokens: {}", why.into()),
    )
}

impl CopyInState {
    pub(super) fn new(plan: crate::plan::write::CopyIn) -> Self {
        let binary = (plan.format.kind == crate::sql::CopyKind::Binary)
            .then(|| super::copy_binary::BinaryRows::new(plan.width, MAX_COPY_LINE));
        CopyInState {
            binary,
            held: Vec::new(),
            plan,
            partial: Vec::new(),
            lines: 0,
            failed: None,
            tokenizers: Tokenizers::default(),
        }
    }

    /// Rewrites the complete tuples of a binary COPY chunk into `out`.
    fn binary(
        &mut self,
        keys: &crate::protect::KeyRing,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Refusal> {
        let Some(rows) = self.binary.as_mut() else {
            return Err(copy_refusal("not a binary COPY"));
        };
        let (fields, tokenizers) = (&self.plan.fields, &mut self.tokenizers);
        let result = rows.feed(data, out, |i, value| {
            let Some((_, how)) = fields.iter().find(|(p, _)| *p == i) else {
                return Ok(None);
            };
            // text, varchar and bpchar travel as their UTF-8 bytes in binary COPY too.
            if std::str::from_utf8(value).is_err() {
                return Err(copy_refusal("a value is not valid UTF-8 text"));
            }
            tokenizers.tokenize(keys, how, value).map(Some)
        });
        result.map_err(|e| match e {
            super::copy_binary::BinaryError::Malformed(why) => copy_refusal(why),
            super::copy_binary::BinaryError::Field(r) => r,
        })
    }

    /// Rewrites one line (without its `\n`) into `out`.
    fn line(
        &mut self,
        keys: &crate::protect::KeyRing,
        line: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Refusal> {
        self.lines += 1;
        let format = &self.plan.format;
        let (content, cr) = match line.strip_suffix(b"\r") {
            Some(c) => (c, true),
            None => (line, false),
        };
        let text = format.kind == crate::sql::CopyKind::Text;
        if (self.lines == 1 && format.header) || (text && content == b"\\.") {
            out.extend_from_slice(line);
            return Ok(());
        }
        let fields = format
            .split(content)
            .ok_or_else(|| copy_refusal("a CSV value spanning lines"))?;
        if fields.len() != self.plan.width {
            return Err(copy_refusal(format!(
                "line {} has {} fields where the COPY lists {}",
                self.lines,
                fields.len(),
                self.plan.width
            )));
        }
        let null = format.null.as_bytes();
        // Text format: a backslash anywhere but in the NULL marker is an escape PostgreSQL
        // reads (`\` + tab is a tab in the value, `\` + newline continues the row), so its
        // fields may not be the ones tokengate split: refused, whichever field holds it.
        if text
            && fields.iter().any(|f| {
                let raw = &content[f.range.clone()];
                raw.contains(&b'\\') && raw != null
            })
        {
            return Err(copy_refusal("a backslash escape in a row"));
        }
        let (sep, quote) = (format.delimiter, format.quote);
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                out.push(sep);
            }
            let raw = &content[field.range.clone()];
            let Some((_, how)) = self.plan.fields.iter().find(|(p, _)| *p == i) else {
                out.extend_from_slice(raw);
                continue;
            };
            if !field.quoted && raw == null {
                out.extend_from_slice(raw);
                continue;
            }
            let value = if field.quoted {
                let inner = raw.get(1..raw.len().saturating_sub(1)).unwrap_or(&[]);
                if inner.contains(&quote) || inner.contains(&format.escape) {
                    return Err(copy_refusal("an escaped quote in a value"));
                }
                inner
            } else {
                raw
            };
            if value.contains(&b'\\') && text {
                return Err(copy_refusal("a backslash escape in a value"));
            }
            if !text && value.contains(&quote) {
                return Err(copy_refusal("a quote inside an unquoted value"));
            }
            if field.quoted {
                out.push(quote);
            }
            let at = out.len();
            self.tokenizers.tokenize_into(keys, how, value, out)?;
            let token = &out[at..];
            if token
                .iter()
                .any(|&b| b == sep || b == b'\\' || b == b'\n' || b == b'\r' || b == quote)
                || token == null
            {
                return Err(copy_refusal("a token would need escaping"));
            }
            if field.quoted {
                out.push(quote);
            }
        }
        if cr {
            out.push(b'\r');
        }
        Ok(())
    }
}

impl ReadPath {
    /// A COPY FROM STDIN into at-rest columns is in progress: the relay hands its CopyData
    /// and CopyDone bodies here.
    pub fn rewrites_copy_in(&self) -> bool {
        self.copy_in.is_some()
    }

    /// Rewrites the complete lines of one CopyData message (a partial last line waits for
    /// the next). After a row that cannot be tokenized, the rest is dropped.
    pub(super) fn client_copy_data(&mut self, body: &[u8]) -> super::ClientVerdict {
        use super::ClientVerdict;
        let keys = self.keys.clone();
        let Some(state) = self.copy_in.as_mut() else {
            return ClientVerdict::Forward;
        };
        if state.failed.is_some() {
            return ClientVerdict::Replace(Vec::new());
        }
        if state.binary.is_some() {
            let mut out = Vec::with_capacity(body.len() + 64);
            if let Err(r) = state.binary(&keys, body, &mut out) {
                state.failed = Some(r);
                return ClientVerdict::Replace(Vec::new());
            }
            if out.is_empty() {
                return ClientVerdict::Replace(Vec::new());
            }
            return ClientVerdict::Replace(super::frame(frontend::COPY_DATA, &out));
        }
        // Without a pending partial line, the message is read where it is.
        let joined;
        let buffered: &[u8] = if state.partial.is_empty() {
            body
        } else {
            let mut p = std::mem::take(&mut state.partial);
            p.extend_from_slice(body);
            joined = p;
            &joined
        };
        let mut out = std::mem::take(&mut state.held);
        if out.is_empty() {
            out.reserve(COPY_FLUSH + COPY_FLUSH / 4);
            crate::wire::frame::begin_message(&mut out, frontend::COPY_DATA);
        }
        let mut start = 0;
        while let Some(n) = buffered[start..].iter().position(|&b| b == b'\n') {
            if let Err(r) = state.line(&keys, &buffered[start..start + n], &mut out) {
                state.failed = Some(r);
                return ClientVerdict::Replace(Vec::new());
            }
            out.push(b'\n');
            start += n + 1;
        }
        if buffered.len() - start > MAX_COPY_LINE {
            state.failed = Some(copy_refusal("a line is longer than 16 MiB"));
            return ClientVerdict::Replace(Vec::new());
        }
        state.partial = buffered[start..].to_vec();
        if out.len() < COPY_FLUSH {
            state.held = out;
            return ClientVerdict::Replace(Vec::new());
        }
        crate::wire::frame::end_message(&mut out, 0);
        ClientVerdict::Replace(out)
    }

    /// CopyDone: the last line without a newline is flushed; a failed COPY becomes a
    /// CopyFail, so PostgreSQL stores none of it.
    pub(super) fn client_copy_done(&mut self, frame_bytes: &[u8]) -> super::ClientVerdict {
        use super::ClientVerdict;
        let keys = self.keys.clone();
        let Some(mut state) = self.copy_in.take() else {
            return ClientVerdict::Forward;
        };
        let mut out = std::mem::take(&mut state.held);
        if out.is_empty() {
            crate::wire::frame::begin_message(&mut out, frontend::COPY_DATA);
        }
        if state.failed.is_none()
            && let Some(Err(why)) = state.binary.as_ref().map(|b| b.finish())
        {
            state.failed = Some(copy_refusal(why));
        }
        if state.failed.is_none() && !state.partial.is_empty() {
            let last = std::mem::take(&mut state.partial);
            if let Err(r) = state.line(&keys, &last, &mut out) {
                state.failed = Some(r);
            }
        }
        if let Some(r) = state.failed {
            self.refused(&r, None);
            // The server's error to this CopyFail (part of the COPY's Query reply) is replaced
            // by the refusal.
            match self.protocol.front_mut() {
                Some(Pending::Query(q)) => q.refusal = Some(r.clone()),
                // A COPY run through Bind/Execute (tokio-postgres' copy_in): the same.
                Some(Pending::Execute(x)) => x.failed = Some(r.clone()),
                _ => {}
            }
            self.protocol.sent(
                crate::session::protocol::Request::CopyFail,
                Pending::Refused(r.clone()),
            );
            let mut body = Vec::new();
            cstr(&mut body, r.code.error(&r.message).message.as_bytes());
            return ClientVerdict::Replace(super::frame(frontend::COPY_FAIL, &body));
        }
        self.protocol.sent(
            crate::session::protocol::Request::CopyDone,
            Pending::CopyEnd,
        );
        // The held rows and the last line without a newline, then the CopyDone.
        if out.len() <= 5 {
            return ClientVerdict::Forward;
        }
        crate::wire::frame::end_message(&mut out, 0);
        out.extend_from_slice(frame_bytes);
        ClientVerdict::Replace(out)
    }
}
