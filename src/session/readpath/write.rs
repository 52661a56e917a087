//! The write side of tokenization at rest (issue 14): the literals of a Query or Parse and
//! the parameters of a Bind that reach a column stored as tokens are replaced by their FF1
//! tokens before PostgreSQL sees them. What to replace comes from
//! [`crate::plan::write::plan_at_rest`]; anything it could not plan was refused there.
use super::objects::Planned;
use super::{Pending, ReadPath, cstr};
use crate::errors::Code;
use crate::plan::Refusal;
use crate::plan::write::{AtRest, AtRestPlan};
use crate::protect::{Action, ColumnTransform, Output, TransformSpec};
use crate::session::protocol::Found;
use crate::wire::frontend;
use std::collections::HashMap;
use std::sync::Arc;

/// Text-like type OIDs a parameter of an at-rest column may be declared as (0: unspecified).
const PARAM_TYPES: [u32; 4] = [0, 25, 1043, 1042];

/// FF1 tokenizers per label, for one message.
#[derive(Default)]
struct Tokenizers(HashMap<Arc<str>, ColumnTransform>);

impl Tokenizers {
    fn tokenize(
        &mut self,
        keys: &crate::protect::KeyRing,
        how: &AtRest,
        plain: &[u8],
    ) -> Result<Vec<u8>, Refusal> {
        let bad = |e: String| {
            Refusal::new(
                Code::AtRestParameter,
                format!("a value for label {} cannot be tokenized: {e}", how.label),
            )
        };
        if !self.0.contains_key(&how.label) {
            let format = how
                .format
                .parse()
                .map_err(|_| bad("the token format is not usable".into()))?;
            let spec = TransformSpec::new(Action::Token(format), how.label.to_string());
            let t = ColumnTransform::new(&spec, crate::protect::column::oid::TEXT, 0, keys)
                .map_err(|e| bad(e.to_string()))?;
            self.0.insert(how.label.clone(), t);
        }
        let t = self
            .0
            .get(&how.label)
            .ok_or_else(|| bad("no tokenizer".into()))?;
        let mut out = Vec::with_capacity(plain.len());
        match t.apply(plain, &mut out) {
            Ok(Output::Value) => Ok(out),
            Ok(Output::Null) => Err(bad("it would become NULL".into())),
            Err(e) => Err(bad(e.to_string())),
        }
    }
}

/// Replaces each planned literal of `sql` by the quoted token of its value.
fn rewrite_sql(
    keys: &crate::protect::KeyRing,
    sql: &[u8],
    plans: &[&AtRestPlan],
) -> Result<Option<Vec<u8>>, Refusal> {
    let mut literals: Vec<_> = plans.iter().flat_map(|p| p.literals.iter()).collect();
    if literals.is_empty() {
        return Ok(None);
    }
    literals.sort_by_key(|(r, _)| r.start);
    let mut tokenizers = Tokenizers::default();
    let mut out = Vec::with_capacity(sql.len() + 16);
    let mut at = 0;
    for (range, how) in literals {
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
        let token = tokenizers.tokenize(keys, how, &plain)?;
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
        for (n, _) in &plan.params {
            let declared = p.param_types.get(n - 1).copied().unwrap_or(0);
            if !PARAM_TYPES.contains(&declared) {
                return Err(Refusal::new(
                    Code::AtRestParameter,
                    format!(
                        "${n} is declared with type oid {declared}; a parameter for a column stored as tokens must be text"
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

    /// The Bind body with its at-rest parameters tokenized (`None`: unchanged). Text and
    /// binary formats carry the same UTF-8 bytes for the text types at-rest columns have.
    pub(super) fn tokenize_bind(&self, b: &frontend::Bind<'_>) -> Result<Option<Vec<u8>>, Refusal> {
        if !self.view.has_at_rest() {
            return Ok(None);
        }
        let Some(plan) = self.statement_at_rest(b.statement)? else {
            return Ok(None);
        };
        if plan.params.is_empty() {
            return Ok(None);
        }
        let mut tokenizers = Tokenizers::default();
        let mut params: Vec<Option<Vec<u8>>> =
            b.params.iter().map(|p| p.map(<[u8]>::to_vec)).collect();
        for (n, how) in &plan.params {
            let i = n - 1;
            let format = match b.param_formats.as_slice() {
                [] => 0,
                [one] => *one,
                many => many.get(i).copied().unwrap_or(-1),
            };
            if format != 0 && format != 1 {
                return Err(Refusal::new(
                    Code::AtRestParameter,
                    format!("${n} has an unknown format code {format}"),
                ));
            }
            if let Some(Some(v)) = params.get(i) {
                if std::str::from_utf8(v).is_err() {
                    return Err(Refusal::new(
                        Code::AtRestParameter,
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
