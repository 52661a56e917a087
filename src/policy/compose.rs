//! Composition: the rules that match a (login role, groups) pair folded into one
//! [`RoleView`], computed once per distinct set of matching rules and cached on the policy.
//!
//! The fold is fail-closed everywhere: the most hiding action wins, the smallest row limit
//! wins, a statement kind is allowed only if every rule allows it, filtering on a protected
//! label is allowed only if every rule allows it, and monitor-only mode needs every rule to
//! ask for it.
use super::formats::{MaskSpec, TokenFormat};
use super::model::{
    Action, Alerts, AuditLevel, Class, DerivedSet, DerivedUse, Policy, RoleRule, StatementKind,
    StatementSet, WILDCARD_ROLE, canonical_parts,
};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Above this many distinct rule combinations the cache stops growing; views are then
/// computed per call. Real deployments have a handful of combinations.
const VIEW_CACHE_LIMIT: usize = 4096;

/// Composed views keyed by the sorted indices of the rules that matched.
#[derive(Debug, Default)]
pub struct ViewCache {
    views: RwLock<HashMap<Vec<u32>, Arc<RoleView>>>,
}

/// What one role gets for one label, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnDecision {
    /// Canonical `schema.table.column` (empty in [`RoleView::label`] answers).
    pub column: Arc<str>,
    pub label: Arc<str>,
    pub class: Class,
    pub action: Action,
    pub token: Option<TokenFormat>,
    /// The column is stored as tokens (`at_rest: token`): `Clear` means "decrypt", `Token`
    /// means "the stored value as is", `Mask` means "decrypt, then mask".
    pub at_rest: bool,
    /// The mask to apply when `action` is `Mask` (the label's, or the default).
    pub mask: Option<MaskSpec>,
    /// The deciding rule, e.g. `roles.support.pii (policy.yaml:19)`.
    pub rule: Arc<str>,
    /// Whether the role may use the column in WHERE, JOIN, ORDER BY, GROUP BY, ...
    pub may_filter: bool,
    /// Why filtering is or isn't allowed.
    pub filter_rule: Arc<str>,
    /// The named derived uses (`count(col)`, `col IS NULL`...) every matched rule allows.
    pub derived: DerivedSet,
    /// The `allow:` rules behind `derived`, or why it is empty.
    pub derived_rule: Arc<str>,
}

impl ColumnDecision {
    /// Whether the role may receive this derived use of the column. Never for `deny`.
    pub fn allows(&self, d: DerivedUse) -> bool {
        self.action != Action::Deny && self.derived.contains(d)
    }
}

/// A limit and the rule that set it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowLimit {
    pub rows: u64,
    pub rule: String,
}

/// The composed policy for one (login role, groups) pair. Built once, shared by `Arc`;
/// every accessor is a field read or one hash lookup.
#[derive(Debug)]
pub struct RoleView {
    matched: Vec<String>,
    labels: Vec<ColumnDecision>,
    columns: HashMap<Arc<str>, ColumnDecision>,
    fully_clear: bool,
    row_limit: Option<RowLimit>,
    statements: StatementSet,
    statement_rules: [Option<Arc<str>>; 8],
    enforce: bool,
    enforce_rule: String,
    see_activity: bool,
    audit: Option<AuditLevel>,
    alerts: Option<Alerts>,
}

impl RoleView {
    /// The decision for a labelled column; `None` means unlabelled, i.e. clear.
    /// Accepts the canonical name (`public.customers.email`, the fast path) or any spelling
    /// the policy file accepts (`Public."customers".Email`).
    pub fn column(&self, qualified: &str) -> Option<&ColumnDecision> {
        if let Some(d) = self.columns.get(qualified) {
            return Some(d);
        }
        if qualified.contains('"') || qualified.chars().any(|c| c.is_uppercase()) {
            let name = super::model::ColumnName::parse(qualified).ok()?;
            return self.columns.get(name.canonical().as_str());
        }
        None
    }

    /// The decision for a column given as catalog names (exact, not case-folded), as the
    /// read path gets them from RowDescription plus the catalog.
    pub fn column_parts(&self, schema: &str, table: &str, column: &str) -> Option<&ColumnDecision> {
        self.columns
            .get(canonical_parts(schema, table, column).as_str())
    }

    /// The decision for a label by name, whether or not a column uses it.
    pub fn label(&self, label: &str) -> Option<&ColumnDecision> {
        self.labels.iter().find(|d| &*d.label == label)
    }

    /// Some labelled column is stored as tokens (`at_rest: token`): every statement needs
    /// analysis, and monitor-only mode cannot skip tokenizing writes.
    pub fn has_at_rest(&self) -> bool {
        self.columns.values().any(|d| d.at_rest)
    }

    /// Some column the role is shown as tokens, not stored as tokens, may be filtered on: its
    /// equality lookups by a shown token are decrypted before PostgreSQL compares them
    /// ([`crate::plan::write::plan_lookups`]).
    pub fn has_token_lookups(&self) -> bool {
        self.columns
            .values()
            .any(|d| !d.at_rest && d.action == Action::Token && d.token.is_some() && d.may_filter)
    }

    /// Every labelled column's decision, in no particular order.
    pub fn columns(&self) -> impl Iterator<Item = &ColumnDecision> {
        self.columns.values()
    }

    /// True when nothing is restricted for this role: every label is clear, there is no
    /// row limit and every statement kind is allowed. The proxy may then skip SQL analysis.
    pub fn fully_clear(&self) -> bool {
        self.fully_clear
    }

    pub fn row_limit(&self) -> Option<u64> {
        self.row_limit.as_ref().map(|l| l.rows)
    }

    pub fn row_limit_rule(&self) -> Option<&RowLimit> {
        self.row_limit.as_ref()
    }

    /// Whether the role may use a label in predicates, joins, sorting and grouping.
    /// Labels the policy doesn't define are unprotected, so `true`.
    pub fn may_filter_on(&self, label: &str) -> bool {
        self.label(label).is_none_or(|d| d.may_filter)
    }

    pub fn statement_allowed(&self, kind: StatementKind) -> bool {
        self.statements.contains(kind)
    }

    /// The rule that denies a statement kind, or `None` when it is allowed.
    pub fn statement_rule(&self, kind: StatementKind) -> Option<&str> {
        self.statement_rules[kind as usize].as_deref()
    }

    pub fn allowed_statements(&self) -> StatementSet {
        self.statements
    }

    /// `false` = monitor-only: log and count what would have happened, let it through.
    pub fn enforce(&self) -> bool {
        self.enforce
    }

    /// Whether the role may read other sessions' activity (`pg_stat_activity`): when a rule
    /// that matches it says `see_activity: true` and none says `false` (the most hiding rule
    /// wins; a rule that says nothing does not object).
    pub fn see_activity(&self) -> bool {
        self.see_activity
    }

    /// Why `enforce()` is what it is.
    pub fn enforce_rule(&self) -> &str {
        &self.enforce_rule
    }

    pub fn audit(&self) -> Option<AuditLevel> {
        self.audit
    }

    pub fn alerts(&self) -> Option<Alerts> {
        self.alerts
    }

    /// Names of the rules that matched, in file order (`["*"]` for the fallback).
    pub fn matched_rules(&self) -> &[String] {
        &self.matched
    }
}

impl Policy {
    /// The composed view for a login role and the groups it belongs to (transitively;
    /// the caller resolves membership). Rules named after the login role or any group
    /// apply together; the `"*"` rule applies only when none of them does.
    pub fn for_role(&self, login: &str, groups: &[String]) -> Arc<RoleView> {
        let mut matched: Vec<u32> = Vec::with_capacity(1 + groups.len());
        let names = std::iter::once(login).chain(groups.iter().map(String::as_str));
        for name in names {
            if name == WILDCARD_ROLE {
                continue;
            }
            if let Some(&i) = self.role_index.get(name) {
                matched.push(i as u32);
            }
        }
        matched.sort_unstable();
        matched.dedup();
        if matched.is_empty()
            && let Some(w) = self.wildcard
        {
            matched.push(w as u32);
        }
        if let Ok(views) = self.views.views.read()
            && let Some(view) = views.get(&matched)
        {
            return Arc::clone(view);
        }
        let view = Arc::new(self.compose(&matched));
        if let Ok(mut views) = self.views.views.write()
            && views.len() < VIEW_CACHE_LIMIT
        {
            views.insert(matched, Arc::clone(&view));
        }
        view
    }

    fn compose(&self, matched: &[u32]) -> RoleView {
        let rules: Vec<&RoleRule> = matched.iter().map(|&i| &self.roles[i as usize]).collect();
        let labels: Vec<ColumnDecision> = self
            .labels
            .iter()
            .enumerate()
            .map(|(i, _)| self.decide_label(i, &rules))
            .collect();
        let mut columns = HashMap::with_capacity(self.columns.len());
        for entry in &self.columns {
            let column: Arc<str> = Arc::from(entry.name.canonical());
            let mut d = labels[entry.label].clone();
            d.column = Arc::clone(&column);
            columns.insert(column, d);
        }

        let row_limit = rules
            .iter()
            .filter_map(|r| r.row_limit.map(|(n, pos)| (n, r, pos)))
            .min_by_key(|(n, _, _)| *n)
            .map(|(rows, r, pos)| RowLimit {
                rows,
                rule: self.rule_text(r, "row_limit", pos),
            });

        let mut statements = if rules.is_empty() {
            StatementSet::DEFAULT
        } else {
            StatementSet::ALL
        };
        let mut statement_rules: [Option<Arc<str>>; 8] = Default::default();
        for r in &rules {
            statements = StatementSet(statements.0 & r.statements.0);
            for kind in StatementKind::ALL {
                if !r.statements.contains(kind) && statement_rules[kind as usize].is_none() {
                    let text = match r.statements_pos {
                        None if kind == StatementKind::Code => format!(
                            "roles.{}: creating code is allowed only when statements.allow lists `code`",
                            r.path_name()
                        ),
                        pos => self.rule_text(r, "statements", pos.unwrap_or(r.pos)),
                    };
                    statement_rules[kind as usize] = Some(Arc::from(text));
                }
            }
        }
        if rules.is_empty() {
            statement_rules[StatementKind::Code as usize] = Some(Arc::from(
                "no rule matches this role: creating code is not allowed",
            ));
        }

        let (enforce, enforce_rule) = if rules.is_empty() {
            (true, "no rule matched: enforced".to_string())
        } else if let Some(r) = rules.iter().find(|r| r.enforce) {
            let why = match r.enforce_pos {
                Some(pos) => self.rule_text(r, "enforce", pos),
                None => format!("roles.{} enforces by default", r.path_name()),
            };
            (true, why)
        } else {
            let texts: Vec<String> = rules
                .iter()
                .map(|r| self.rule_text(r, "enforce", r.enforce_pos.unwrap_or(r.pos)))
                .collect();
            (false, format!("monitor-only: {}", texts.join(", ")))
        };

        let audit = rules.iter().filter_map(|r| r.audit).max();
        let alerts = rules.iter().filter_map(|r| r.alerts).reduce(|a, b| Alerts {
            max_protected_values_per_minute: min_some(
                a.max_protected_values_per_minute,
                b.max_protected_values_per_minute,
            ),
            max_refusals_per_minute: min_some(a.max_refusals_per_minute, b.max_refusals_per_minute),
            // `terminate` beats `log`, and either beats unset.
            action: a.action.max(b.action),
        });

        // At-rest labels need analysis for every role: clear roles get them decrypted.
        let fully_clear = labels
            .iter()
            .all(|d| d.action == Action::Clear && !d.at_rest)
            && row_limit.is_none()
            && statements.0 & StatementSet::DEFAULT.0 == StatementSet::DEFAULT.0;
        RoleView {
            matched: rules.iter().map(|r| r.name.clone()).collect(),
            labels,
            columns,
            fully_clear,
            row_limit,
            statements,
            statement_rules,
            enforce,
            enforce_rule,
            see_activity: rules.iter().any(|r| r.see_activity == Some(true))
                && !rules.iter().any(|r| r.see_activity == Some(false)),
            audit,
            alerts,
        }
    }

    /// One label under the matched rules: each rule's own choice (label key, else class
    /// key, else `default`); the most hiding choice wins; no choice at all is `deny`.
    fn decide_label(&self, index: usize, rules: &[&RoleRule]) -> ColumnDecision {
        let label = &self.labels[index];
        let mut best: Option<(Action, String)> = None;
        for r in rules {
            if let Some(entry) = r.entry_for(index, label.class)
                && best.as_ref().is_none_or(|(a, _)| entry.action > *a)
            {
                best = Some((entry.action, self.rule_text(r, &entry.key, entry.pos)));
            }
        }
        let (action, rule) = best.unwrap_or_else(|| {
            let why = if rules.is_empty() {
                "no rule matches this role and there is no \"*\" rule (implicit deny)".to_string()
            } else {
                let names: Vec<String> = rules.iter().map(|r| r.path_name()).collect();
                format!(
                    "no entry for label '{}', class '{}' or default in roles.{} (implicit deny)",
                    label.name,
                    label.class,
                    names.join(", roles.")
                )
            };
            (Action::Deny, why)
        });

        let (may_filter, filter_rule) = self.decide_filter(index, action, rules);
        let (derived, derived_rule) = self.decide_derived(index, action, rules);
        ColumnDecision {
            column: Arc::from(""),
            label: Arc::from(label.name.as_str()),
            class: label.class,
            action,
            token: label.token.clone(),
            at_rest: label.at_rest,
            mask: (action == Action::Mask).then(|| {
                label
                    .mask
                    .clone()
                    .unwrap_or_else(|| MaskSpec::default_for(label.token.as_ref()))
            }),
            rule: Arc::from(rule),
            may_filter,
            filter_rule: Arc::from(filter_rule),
            derived,
            derived_rule: Arc::from(derived_rule),
        }
    }

    /// Named derived uses of a label: every matched rule must allow each one, as for
    /// `filter_on`; a rule allows what its `allow:` entry for the label (else its class)
    /// lists, everything when it shows the label in clear or says nothing about it, and
    /// nothing otherwise. `deny` allows nothing.
    fn decide_derived(
        &self,
        index: usize,
        action: Action,
        rules: &[&RoleRule],
    ) -> (DerivedSet, String) {
        let label = &self.labels[index];
        if action == Action::Clear {
            return (DerivedSet::ALL, "shown in clear".to_string());
        }
        if action == Action::Deny {
            return (DerivedSet::NONE, "denied outright".to_string());
        }
        let mut set = DerivedSet::ALL;
        let mut why = Vec::new();
        for r in rules {
            let entry = r.entry_for(index, label.class);
            if let Some(a) = r.allow_for(index, label.class) {
                set = set.intersect(a.uses);
                why.push(self.rule_text(r, "allow", a.pos));
            } else if entry.is_some_and(|e| e.action != Action::Clear) {
                return (
                    DerivedSet::NONE,
                    format!(
                        "roles.{} does not list '{}' or '{}' in allow ({}:{})",
                        r.path_name(),
                        label.name,
                        label.class,
                        self.source_name,
                        r.pos.line
                    ),
                );
            }
        }
        (set, why.join(", "))
    }

    /// Filtering on a label is fine when the role sees it in clear. Otherwise every matched
    /// rule must allow it: a rule allows it when it lists the label or its class in
    /// `filter_on`, shows it in clear itself, or says nothing about it.
    fn decide_filter(&self, index: usize, action: Action, rules: &[&RoleRule]) -> (bool, String) {
        let label = &self.labels[index];
        if action == Action::Clear {
            return (true, "shown in clear".to_string());
        }
        if action == Action::Deny {
            return (false, "denied outright".to_string());
        }
        let mut allowed_by = Vec::new();
        for r in rules {
            let entry = r.entry_for(index, label.class);
            if r.filter_on_lists(index, label.class) {
                if let Some((_, pos)) = &r.filter_on {
                    allowed_by.push(self.rule_text(r, "filter_on", *pos));
                }
            } else if entry.is_some_and(|e| e.action != Action::Clear) {
                let pos = r.filter_on.as_ref().map_or(r.pos, |(_, p)| *p);
                return (
                    false,
                    format!(
                        "roles.{} does not list '{}' or '{}' in filter_on ({}:{})",
                        r.path_name(),
                        label.name,
                        label.class,
                        self.source_name,
                        pos.line
                    ),
                );
            }
        }
        (true, allowed_by.join(", "))
    }
}

fn min_some(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}
