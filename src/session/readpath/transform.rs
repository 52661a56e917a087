//! Transforms: the prepared per-column rewrites (shared across sessions), the result being
//! rewritten, and the DataRow / COPY line rewriters. Hot path: a row allocates nothing in the
//! common case.
use super::observe::{PendingAudit, SessionMetrics};
use crate::errors::Code;
use crate::observe::metrics::{LabelActionLabel, Metrics};
use crate::plan::{ProtectedColumn, Refusal, ResultPlan};
use crate::policy::{Action as PolicyAction, ColumnDecision};
use crate::protect::{Action, ColumnTransform, KeyRing, Output, TransformSpec};
use crate::sql::AnalysisCache;
use crate::wire::Reader;
use crate::wire::frame::{begin_message, end_message};
use dashmap::DashMap;
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bound on analysis caches kept per (database, search_path): a session cycling through
/// search paths cannot grow memory without bound.
const MAX_CACHES: usize = 256;

/// Shared across sessions: analyses per database and prepared column transforms.
#[derive(Default)]
pub struct ReadPathShared {
    analyses: DashMap<String, Arc<AnalysisCache>>,
    /// Prepared transforms with their `values_protected_total{label,action}` handle.
    transforms: DashMap<TransformKey, (Arc<ColumnTransform>, Counter)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TransformKey {
    label: Arc<str>,
    action: PolicyAction,
    /// The token format or mask as the policy spells it (parsed only on a cache miss).
    spec: String,
    type_oid: u32,
    format: i16,
    /// Stored tokens: the key version they use.
    key_version: Option<u32>,
}

impl ReadPathShared {
    /// The analysis cache for a database under one name-resolution state (the search path
    /// and temp schema are part of the key: the same text can name other relations).
    pub(super) fn cache(&self, database: &str, names_key: &str) -> Arc<AnalysisCache> {
        let key = format!("{database}\0{names_key}");
        if let Some(c) = self.analyses.get(&key) {
            return c.clone();
        }
        if self.analyses.len() >= MAX_CACHES
            && let Some(victim) = self.analyses.iter().next().map(|e| e.key().clone())
        {
            self.analyses.remove(&victim);
        }
        self.analyses
            .entry(key)
            .or_insert_with(|| Arc::new(AnalysisCache::new(4096)))
            .clone()
    }

    /// The prepared transform for a protected column in a given type and wire format.
    pub(super) fn transform(
        &self,
        p: &ProtectedColumn,
        type_oid: u32,
        format: i16,
        keys: &KeyRing,
        metrics: &Metrics,
    ) -> Result<(Arc<ColumnTransform>, Counter), Refusal> {
        let d = &p.decision;
        let spec_text = match d.action {
            PolicyAction::Token => d.token.as_ref().map(|t| t.as_str().to_string()),
            PolicyAction::Mask if d.at_rest => Some(format!(
                "reveal {} {}",
                d.token.as_ref().map_or("", |t| t.as_str()),
                d.mask.as_ref().map_or("", |m| m.as_str())
            )),
            PolicyAction::Clear if d.at_rest => {
                d.token.as_ref().map(|t| format!("reveal {}", t.as_str()))
            }
            PolicyAction::Mask => d.mask.as_ref().map(|m| m.as_str().to_string()),
            _ => None,
        };
        let key = TransformKey {
            label: d.label.clone(),
            action: d.action,
            spec: spec_text.unwrap_or_default().to_string(),
            type_oid,
            format,
            key_version: p.key_version,
        };
        if let Some(t) = self.transforms.get(&key) {
            return Ok(t.clone());
        }
        let counter = metrics
            .values_protected_total
            .get_or_create(&LabelActionLabel {
                label: d.label.to_string(),
                action: format!("{:?}", d.action).to_lowercase(),
            })
            .clone();
        let spec = transform_spec(d, p.key_version)?;
        let t = Arc::new(
            ColumnTransform::new(&spec, type_oid, format, keys).map_err(|e| {
                Refusal::new(
                    Code::UnsupportedValue,
                    format!("column {} cannot be protected: {e} ({})", d.column, d.rule),
                )
            })?,
        );
        self.transforms.insert(key, (t.clone(), counter.clone()));
        Ok((t, counter))
    }
}

fn transform_spec(d: &ColumnDecision, key_version: Option<u32>) -> Result<TransformSpec, Refusal> {
    let bad = |what: &str| {
        Refusal::new(
            Code::UnsupportedValue,
            format!("column {} has no usable {what} ({})", d.column, d.rule),
        )
    };
    let token = || -> Result<crate::protect::TokenFormat, Refusal> {
        d.token
            .as_ref()
            .ok_or_else(|| bad("token format"))?
            .as_str()
            .parse()
            .map_err(|_| bad("token format"))
    };
    let mask = || -> Result<crate::protect::MaskSpec, Refusal> {
        d.mask
            .as_ref()
            .ok_or_else(|| bad("mask"))?
            .as_str()
            .parse()
            .map_err(|_| bad("mask"))
    };
    let action = match d.action {
        // Stored as tokens: clear roles get the plaintext, mask roles its mask.
        PolicyAction::Clear if d.at_rest => Action::Reveal(token()?, None),
        PolicyAction::Mask if d.at_rest => Action::Reveal(token()?, Some(mask()?)),
        PolicyAction::Token => Action::Token(token()?),
        PolicyAction::Mask => Action::Mask(mask()?),
        PolicyAction::Null => Action::Null,
        PolicyAction::Clear | PolicyAction::Deny => return Err(bad("action")),
    };
    let mut spec = TransformSpec::new(action, d.label.to_string());
    if d.at_rest && matches!(spec.action, Action::Reveal(..)) {
        // Stored tokens are decrypted with the key version their column's state records,
        // never the key file's active one.
        let Some(version) = key_version else {
            return Err(Refusal::new(
                Code::AtRestNotReady,
                format!(
                    "column {} is stored as tokens, and the key version of its tokens is not known for this result",
                    d.column
                ),
            ));
        };
        spec.key_version = Some(version);
    }
    Ok(spec)
}

/// A result being rewritten: the transforms per column and the rows seen so far.
#[derive(Debug)]
pub struct ActiveResult {
    pub(super) plan: Arc<ResultPlan>,
    /// (column index, transform, `tokengate_values_protected_total{label,action}` handle).
    pub(super) transforms: Vec<(usize, Arc<ColumnTransform>, Counter)>,
    /// The audit record this result's rows count toward.
    pub(super) audit: Option<Arc<PendingAudit>>,
    pub(super) rows: AtomicU64,
}

impl ActiveResult {
    pub(super) fn build(
        plan: Arc<ResultPlan>,
        types: &dyn Fn(&ProtectedColumn) -> u32,
        formats: &dyn Fn(usize) -> i16,
        shared: &ReadPathShared,
        keys: &KeyRing,
        metrics: &SessionMetrics,
        audit: Option<Arc<PendingAudit>>,
    ) -> Result<Arc<ActiveResult>, Refusal> {
        let mut transforms = Vec::with_capacity(plan.protected.len());
        for p in &plan.protected {
            let (t, counter) =
                shared.transform(p, types(p), formats(p.index), keys, &metrics.metrics)?;
            transforms.push((p.index, t, counter));
        }
        Ok(Arc::new(ActiveResult {
            audit,
            plan,
            transforms,
            rows: Default::default(),
        }))
    }

    /// Counts a row; true when it is over the limit (and must not reach the client).
    pub(super) fn count_row(&self) -> bool {
        if let Some(a) = &self.audit {
            a.rows.fetch_add(1, Ordering::Relaxed);
        }
        let n = self.rows.fetch_add(1, Ordering::Relaxed) + 1;
        self.plan
            .row_limit
            .as_ref()
            .is_some_and(|(limit, _)| n > *limit)
    }

    pub(super) fn over_limit(&self) -> Option<Refusal> {
        let (limit, rule) = self.plan.row_limit.as_ref()?;
        (self.rows.load(Ordering::Relaxed) > *limit).then(|| {
            Refusal::new(
                Code::RowLimit,
                format!("the result exceeded the row limit of {limit} ({rule})"),
            )
        })
    }
}

pub(super) struct DescribedColumn {
    pub table_oid: u32,
    pub attnum: i16,
    pub type_oid: u32,
    pub format: i16,
}

pub(super) fn parse_row_description(body: &[u8]) -> Option<Vec<DescribedColumn>> {
    let mut r = Reader::new(body, "RowDescription");
    let n = r.count16().ok()?;
    let mut cols = Vec::with_capacity(n);
    for _ in 0..n {
        r.cstr().ok()?;
        let table_oid = r.u32().ok()?;
        let attnum = r.i16().ok()?;
        let type_oid = r.u32().ok()?;
        r.i16().ok()?;
        r.i32().ok()?;
        let format = r.i16().ok()?;
        cols.push(DescribedColumn {
            table_oid,
            attnum,
            type_oid,
            format,
        });
    }
    Some(cols)
}

/// Rewrites a DataRow body into `out` (a whole frame).
pub(super) fn rewrite_data_row(
    body: &[u8],
    active: &ActiveResult,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<(), Refusal> {
    let malformed = || Refusal::new(Code::LineageMismatch, "malformed DataRow from the server");
    let mut r = Reader::new(body, "DataRow");
    let n = r.count16().map_err(|_| malformed())?;
    if n != active.plan.width {
        return Err(Refusal::new(
            Code::LineageMismatch,
            format!(
                "the server returns {n} columns where the analysis expected {}",
                active.plan.width
            ),
        ));
    }
    out.clear();
    let start = begin_message(out, crate::wire::backend::DATA_ROW);
    out.extend_from_slice(&(n as i16).to_be_bytes());
    for i in 0..n {
        let value = r.value().map_err(|_| malformed())?;
        let transform = active.transforms.iter().find(|(idx, _, _)| *idx == i);
        match (value, transform) {
            (None, _) => out.extend_from_slice(&(-1i32).to_be_bytes()),
            (Some(v), None) => {
                out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                out.extend_from_slice(v);
            }
            (Some(v), Some((_, t, counter))) => {
                counter.inc();
                scratch.clear();
                match t.apply(v, scratch) {
                    Ok(Output::Value) => {
                        out.extend_from_slice(&(scratch.len() as i32).to_be_bytes());
                        out.extend_from_slice(scratch);
                    }
                    Ok(Output::Null) => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Err(e) => {
                        return Err(Refusal::new(
                            Code::UnsupportedValue,
                            format!(
                                "a value of result column {} cannot be protected: {e}",
                                i + 1
                            ),
                        ));
                    }
                }
            }
        }
    }
    end_message(out, start);
    Ok(())
}

/// Rewrites one COPY text-format line (tab-separated, `\N` = NULL, backslash escapes). Fields
/// with escapes are refused rather than guessed at.
pub(super) fn rewrite_copy_line(line: &[u8], active: &ActiveResult) -> Result<Vec<u8>, Refusal> {
    let unsupported = |why: &str| Refusal::new(Code::UnsupportedValue, format!("COPY row: {why}"));
    let (content, newline) = match line.strip_suffix(b"\n") {
        Some(c) => (c, true),
        None => (line, false),
    };
    let Some(format) = active.plan.copy_format.as_ref() else {
        return Err(unsupported("the COPY format is unknown"));
    };
    let sep = format.delimiter;
    let Some(fields) = format.split(content) else {
        return Err(unsupported("binary rows, or a CSV value spanning lines"));
    };
    if fields.len() != active.plan.width {
        return Err(unsupported("the column count does not match the statement"));
    }
    let null = format.null.as_bytes();
    let mut out = Vec::with_capacity(line.len() + 16);
    let mut scratch = Vec::new();
    for (i, field) in fields.iter().enumerate() {
        let f = &content[field.range.clone()];
        if i > 0 {
            out.push(sep);
        }
        let transform = active.transforms.iter().find(|(idx, _, _)| *idx == i);
        match transform {
            None => out.extend_from_slice(f),
            Some(_) if !field.quoted && f == null => {
                // A custom NULL marker is also how a value equal to it is written.
                if !format.null_is_unambiguous() {
                    return Err(unsupported("a protected value equals the NULL marker"));
                }
                out.extend_from_slice(f)
            }
            Some((_, t, counter)) => {
                counter.inc();
                if field.quoted || f.contains(&b'\\') || f.contains(&format.quote) {
                    return Err(unsupported("escaped or quoted values in protected columns"));
                }
                scratch.clear();
                match t.apply(f, &mut scratch) {
                    Ok(Output::Value) => {
                        if scratch.iter().any(|&b| {
                            b == sep || b == b'\\' || b == b'\n' || b == b'\r' || b == format.quote
                        }) || (scratch.as_slice() == null)
                        {
                            return Err(unsupported("a protected value would need escaping"));
                        }
                        out.extend_from_slice(&scratch);
                    }
                    Ok(Output::Null) => out.extend_from_slice(null),
                    Err(e) => return Err(unsupported(&e.to_string())),
                }
            }
        }
    }
    if newline {
        out.push(b'\n');
    }
    Ok(out)
}
