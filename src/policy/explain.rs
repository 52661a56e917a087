//! The decision for one analysed statement, column by column and use by use, with the rule
//! behind each. Pure: the SQL analyser (a later issue) produces the [`OutputColumn`]s and
//! [`ColumnUse`]s; this module only applies the role's [`RoleView`] to them.
use super::compose::RoleView;
use super::model::Action;
use std::fmt;

/// Where a column is used other than in the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Clause {
    Where,
    Join,
    OrderBy,
    GroupBy,
    Having,
    Window,
}

impl fmt::Display for Clause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Clause::Where => "WHERE",
            Clause::Join => "JOIN",
            Clause::OrderBy => "ORDER BY",
            Clause::GroupBy => "GROUP BY",
            Clause::Having => "HAVING",
            Clause::Window => "WINDOW",
        })
    }
}

/// A source column that reaches an output column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceColumn {
    /// `schema.table.column`.
    pub column: String,
    /// `true` for a bare reference (through aliases, subqueries, CTEs, UNION); `false` when
    /// any function, operator, cast or aggregate touches it.
    pub passed_through: bool,
}

/// One column of the statement's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputColumn {
    pub name: String,
    pub sources: Vec<SourceColumn>,
}

/// A column used in a clause that can leak it by inference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnUse {
    pub column: String,
    pub clause: Clause,
}

/// The decision for one output column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputDecision {
    pub name: String,
    pub action: Action,
    /// The label of the deciding source column, if it is labelled.
    pub label: Option<String>,
    /// Why, naming the rule.
    pub reason: String,
}

/// The decision for one use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UseDecision {
    pub column: String,
    pub clause: Clause,
    pub allowed: bool,
    pub reason: String,
}

/// The per-statement verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub outputs: Vec<OutputDecision>,
    pub uses: Vec<UseDecision>,
    /// The first reason the statement is refused, if any (an output column decided `deny`
    /// or a use that is not allowed). With `enforce: false` it is logged, not refused.
    pub refusal: Option<String>,
}

/// Applies a role's view to an analysed statement.
///
/// - A passed-through labelled column gets the role's action for its label.
/// - A derived labelled column is clear only when the role sees the label in clear;
///   otherwise it is denied, because a function of a protected value can leak it
///   (`lower(email)`, `card || ''`).
/// - An output with several sources gets the most hiding of their actions.
/// - A use of a labelled column in a clause is allowed when the role may filter on it.
pub fn explain(view: &RoleView, outputs: &[OutputColumn], uses: &[ColumnUse]) -> Explanation {
    let mut out = Vec::with_capacity(outputs.len());
    for o in outputs {
        let mut decision = OutputDecision {
            name: o.name.clone(),
            action: Action::Clear,
            label: None,
            reason: "no labelled source column".to_string(),
        };
        for s in &o.sources {
            let Some(d) = view.column(&s.column) else {
                continue;
            };
            let (action, reason) = if s.passed_through || d.action == Action::Clear {
                (d.action, format!("{} is {}: {}", s.column, d.label, d.rule))
            } else {
                (
                    Action::Deny,
                    format!(
                        "{} ({}) is derived (a function, operator, cast or aggregate reads it) \
                         and the role sees it as {}: {}",
                        s.column, d.label, d.action, d.rule
                    ),
                )
            };
            if decision.label.is_none() || action > decision.action {
                decision.action = action;
                decision.label = Some(d.label.to_string());
                decision.reason = reason;
            }
        }
        out.push(decision);
    }
    let mut used = Vec::with_capacity(uses.len());
    for u in uses {
        let (allowed, reason) = match view.column(&u.column) {
            None => (true, "not labelled".to_string()),
            Some(d) if d.may_filter => (true, format!("{}: {}", d.label, d.filter_rule)),
            Some(d) => (
                false,
                format!(
                    "{} ({}) in {} is an inference channel: {}",
                    u.column, d.label, u.clause, d.filter_rule
                ),
            ),
        };
        used.push(UseDecision {
            column: u.column.clone(),
            clause: u.clause,
            allowed,
            reason,
        });
    }
    let refusal = out
        .iter()
        .find(|o| o.action == Action::Deny)
        .map(|o| format!("column {}: {}", o.name, o.reason))
        .or_else(|| used.iter().find(|u| !u.allowed).map(|u| u.reason.clone()));
    Explanation {
        outputs: out,
        uses: used,
        refusal,
    }
}
