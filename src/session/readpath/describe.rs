//! Server truth against the analysis (TG110): every RowDescription a restricted role's
//! result comes with (a simple Query's, a Describe's reply, and the Describe tokengate sends
//! before an Execute the client did not describe) must attribute protected table columns
//! only to positions the plan protects with the same label, and have the plan's width.
use super::objects::Effect;
use super::transform::{ActiveResult, DescribedColumn, parse_row_description};
use super::{Pending, QueryReply, ReadPath, ServerVerdict};
use crate::errors::Code;
use crate::plan::{Refusal, ResultPlan};
use crate::policy::Action as PolicyAction;
use std::sync::Arc;

impl ReadPath {
    /// A Describe's RowDescription, checked against the statement's or portal's plan; a
    /// disagreement refuses every later Execute of it.
    pub(super) fn check_described(&mut self, statement: bool, name: &[u8], body: &[u8]) {
        let Some(columns) = parse_row_description(body) else {
            return;
        };
        if statement {
            let plan = match self.objects.statements.get(name) {
                Some(s) => match &s.planned {
                    Some(p) => p.result.clone(),
                    None => return,
                },
                None => return,
            };
            if let Some(r) = self.check_columns(&columns, plan.as_deref())
                && let Some(s) = self.objects.statements.get_mut(name)
            {
                s.failed = Some(r);
            }
        } else {
            let plan = match self.objects.portal(name).and_then(|p| p.plan.clone()) {
                Some(p) => p,
                None => return,
            };
            if let Some(r) = self.check_columns(&columns, plan.as_deref())
                && let Some(p) = self.objects.portals.get_mut(name)
            {
                p.failed = Some(r.clone());
                // The Execute that follows was resolved already if it is at the front.
                if let Some(Pending::Execute(x)) = self.protocol.front_mut()
                    && x.portal == name
                {
                    x.failed = Some(r);
                    x.active = None;
                }
            }
        }
    }

    /// Server truth: a column RowDescription attributes to a protected table column must be
    /// protected by the plan at that position, or the two sources disagree.
    fn check_columns(
        &self,
        columns: &[DescribedColumn],
        plan: Option<&ResultPlan>,
    ) -> Option<Refusal> {
        // Monitor-only roles (`enforce: false`) are never blocked.
        if self.view.fully_clear() || !self.view.enforce() {
            return None;
        }
        for (i, c) in columns.iter().enumerate() {
            if c.table_oid == 0 {
                continue;
            }
            let Some((name, _)) = self
                .snapshot
                .as_ref()
                .and_then(|s| s.column_by_oid(c.table_oid, c.attnum))
            else {
                continue;
            };
            let Some(d) = self.view.column(&name) else {
                continue;
            };
            if d.action == PolicyAction::Clear {
                continue;
            }
            let covered = plan
                .and_then(|p| p.protected_at(i))
                .is_some_and(|p| p.decision.label == d.label);
            if !covered {
                return Some(Refusal::new(
                    Code::LineageMismatch,
                    format!(
                        "the server reports result column {} as {name}, which the analysis did not see",
                        i + 1
                    ),
                ));
            }
        }
        if let Some(plan) = plan
            && plan.width != columns.len()
        {
            return Some(Refusal::new(
                Code::LineageMismatch,
                format!(
                    "the server returns {} columns where the analysis expected {}",
                    columns.len(),
                    plan.width
                ),
            ));
        }
        None
    }

    /// The plan a Query statement's rows come by: its own, or for FETCH and EXECUTE the one
    /// the server confirmed for that cursor or prepared statement.
    pub(super) fn statement_result(
        &self,
        q: &QueryReply,
    ) -> Result<Option<Arc<ResultPlan>>, Refusal> {
        let Some(s) = q.current() else {
            return Ok(None);
        };
        let unknown = |what: &str, name: &str| {
            Refusal::new(
                Code::Unproven,
                format!("{what} {name:?} is not known to tokengate in this session"),
            )
        };
        match &s.effect {
            Effect::Fetch(name) => match self.objects.portal(name.as_bytes()) {
                Some(p) if p.failed.is_none() => {
                    p.plan.clone().ok_or_else(|| unknown("cursor", name))
                }
                Some(p) => Err(p.failed.clone().unwrap_or_else(|| unknown("cursor", name))),
                None => Err(unknown("cursor", name)),
            },
            Effect::Execute(name) => match self.objects.statements.get(name.as_bytes()) {
                Some(st) => st
                    .planned
                    .as_ref()
                    .map(|p| p.result.clone())
                    .ok_or_else(|| unknown("prepared statement", name)),
                None => Err(unknown("prepared statement", name)),
            },
            _ => Ok(s.result.clone()),
        }
    }

    /// A RowDescription in a simple Query.
    pub(super) fn query_description(&mut self, body: &[u8]) -> ServerVerdict {
        let (internal, restricted) = match self.protocol.front_mut() {
            Some(Pending::Query(q)) => (q.internal, q.restricted),
            _ => return ServerVerdict::Forward,
        };
        if internal {
            return ServerVerdict::Drop;
        }
        if !restricted {
            return ServerVerdict::Forward;
        }
        let Some(columns) = parse_row_description(body) else {
            return ServerVerdict::Forward;
        };
        let outcome = match self.protocol.front() {
            Some((_, _, Pending::Query(q))) => self.statement_result(q).and_then(|plan| match self
                .check_columns(&columns, plan.as_deref())
            {
                Some(r) => Err(r),
                None => Ok((plan, q.audit.clone())),
            }),
            _ => return ServerVerdict::Forward,
        };
        let built = outcome.and_then(|(plan, audit)| match plan {
            None => Ok(None),
            Some(plan) => ActiveResult::build(
                plan,
                &|p| columns.get(p.index).map_or(0, |c| c.type_oid),
                &|i| columns.get(i).map_or(0, |c| c.format),
                &self.shared,
                &self.keys,
                &self.metrics,
                audit,
            )
            .map(Some),
        });
        let Some(Pending::Query(q)) = self.protocol.front_mut() else {
            return ServerVerdict::Forward;
        };
        match built {
            Ok(a) => {
                q.active = a;
                ServerVerdict::Forward
            }
            Err(r) => {
                q.failed = Some(r);
                ServerVerdict::Drop
            }
        }
    }
}
