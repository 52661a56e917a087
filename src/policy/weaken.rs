//! What a new policy would protect less than the one in force, and whether a policy file is
//! whole.
//!
//! A file written in place can be read half-way: `version: 1` alone, or a cut before
//! `roles:`, is valid YAML in which the missing columns are simply unlabelled, i.e. clear.
//! [`require_sections`] rejects files without their sections and catch-all rule, and
//! [`weakenings`] lists every way a reload would hide less, so the file watcher can refuse to
//! apply it on its own (see [`super::store`]).
use super::compose::RoleView;
use super::error::{Diagnostic, PolicyError};
use super::model::{Action, Policy, WILDCARD_ROLE};
use std::collections::BTreeSet;

/// The top-level sections every policy file must have (they may be empty: `columns: {}`).
const SECTIONS: [&str; 3] = ["labels", "columns", "roles"];

/// Rejects a policy that lacks a section or the `"*"` rule: such a file is far more often
/// cut short than meant.
pub fn require_sections(policy: &Policy, text: &str) -> Result<(), PolicyError> {
    let mut diagnostics = Vec::new();
    let present = top_level_keys(text);
    for section in SECTIONS {
        if !present.contains(section) {
            diagnostics.push(Diagnostic {
                pos: None,
                message: format!(
                    "missing '{section}:' section; a policy needs labels:, columns: and roles: (write `{section}: {{}}` for an empty one). A file cut short by an in-place write looks like this"
                ),
            });
        }
    }
    if present.contains("roles") && !policy.roles().iter().any(|r| r.name == WILDCARD_ROLE) {
        diagnostics.push(Diagnostic {
            pos: None,
            message: "roles: has no \"*\" rule; a policy needs a catch-all for roles no other rule names, e.g. '\"*\": { default: deny }'".into(),
        });
    }
    if diagnostics.is_empty() {
        Ok(())
    } else {
        Err(PolicyError::Invalid {
            file: policy.source().to_string(),
            diagnostics,
        })
    }
}

/// Keys of the top-level mapping: lines that start in column 1 with `key:`.
fn top_level_keys(text: &str) -> BTreeSet<&str> {
    text.lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()))
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim()))
        .collect()
}

/// Every way `new` protects less than `old`, one line each (empty: not weaker).
///
/// Rules compose by taking the most hiding action of every rule that matches a login or
/// its groups, so it suffices to compare rule by rule:
/// - each rule of `new` (and the `"*"` rule) against what the same name got under `old`:
///   a column's action less hiding, filtering newly allowed, or enforcement turned off;
/// - each rule only `old` has: its removal weakens any group composition it took part in,
///   unless it showed everything in clear, and a login named after it now falls to `"*"`.
///
/// A column that loses its label becomes clear for everyone: it shows up as such. A masked
/// column whose mask changes counts as weaker too (a mask is not ordered by how much it shows).
pub fn weakenings(old: &Policy, new: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    let columns: BTreeSet<String> = old
        .columns()
        .iter()
        .chain(new.columns())
        .map(|c| c.name.canonical())
        .collect();
    // Storage is per column, whoever reads: a column no longer stored as tokens would get
    // plaintext writes, and clear roles would read its stored tokens as values.
    let (old_any, new_any) = (
        old.for_role(WILDCARD_ROLE, &[]),
        new.for_role(WILDCARD_ROLE, &[]),
    );
    for column in &columns {
        let was = old_any.column(column).is_some_and(|d| d.at_rest);
        let is = new_any.column(column).is_some_and(|d| d.at_rest);
        if was && !is {
            out.push(format!(
                "columns.{column}: no longer stored as tokens (at_rest): writes through tokengate would store the plaintext"
            ));
        }
    }
    let mut names: BTreeSet<&str> = new.roles().iter().map(|r| r.name.as_str()).collect();
    names.insert(WILDCARD_ROLE);
    for name in &names {
        let shown = if *name == WILDCARD_ROLE {
            "\"*\"".to_string()
        } else {
            (*name).to_string()
        };
        compare(
            &shown,
            &old.for_role(name, &[]),
            &new.for_role(name, &[]),
            &columns,
            &mut out,
        );
    }
    for rule in old.roles() {
        if rule.name == WILDCARD_ROLE || names.contains(rule.name.as_str()) {
            continue;
        }
        let view = old.for_role(&rule.name, &[]);
        if !view.fully_clear() {
            out.push(format!(
                "roles.{}: rule removed; logins and groups it restricted see more",
                rule.path_name()
            ));
        }
        compare(
            &rule.path_name(),
            &view,
            &new.for_role(&rule.name, &[]),
            &columns,
            &mut out,
        );
    }
    out
}

fn compare(
    name: &str,
    old: &RoleView,
    new: &RoleView,
    columns: &BTreeSet<String>,
    out: &mut Vec<String>,
) {
    if !old.see_activity() && new.see_activity() {
        out.push(format!(
            "roles.{name}: may now read other sessions' activity (see_activity)"
        ));
    }
    if old.enforce() && !new.enforce() {
        out.push(format!(
            "roles.{name}: enforcement turned off (monitor-only)"
        ));
    }
    for column in columns {
        let before = old.column(column);
        let after = new.column(column);
        let action = |d: Option<&super::ColumnDecision>| d.map_or(Action::Clear, |d| d.action);
        let (a, b) = (action(before), action(after));
        let mask = |d: Option<&super::ColumnDecision>| d.and_then(|d| d.mask.clone());
        if a == Action::Mask && b == Action::Mask && mask(before) != mask(after) {
            // A different mask may show more (`last4` -> `first:20`): treated as weaker.
            out.push(format!("roles.{name}: {column}: mask changed"));
        } else if b < a {
            let why = if after.is_none() {
                " (no longer labelled)"
            } else {
                ""
            };
            out.push(format!("roles.{name}: {column}: {a} -> {b}{why}"));
        } else if a != Action::Clear
            && b != Action::Clear
            && !before.is_some_and(|d| d.may_filter)
            && after.is_some_and(|d| d.may_filter)
        {
            out.push(format!("roles.{name}: {column}: filtering newly allowed"));
        }
        if a != Action::Clear && b != Action::Clear && b != Action::Deny {
            let had = before.map_or(super::DerivedSet::NONE, |d| d.derived);
            let has = after.map_or(super::DerivedSet::NONE, |d| d.derived);
            let new_uses = super::DerivedSet(has.0 & !had.0);
            if new_uses != super::DerivedSet::NONE {
                out.push(format!(
                    "roles.{name}: {column}: derived uses newly allowed ({})",
                    new_uses.names()
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "version: 1
labels:
  ssn: { class: pii, token: digits }
  email: { class: pii, token: email }
columns:
  public.customers.ssn: ssn
  public.customers.email: email
roles:
  admin: { default: clear }
  support: { pii: mask }
  \"*\": { default: deny }
";

    fn policy(text: &str) -> Policy {
        Policy::from_yaml(text, "p.yaml").unwrap()
    }

    #[test]
    fn stronger_or_equal_is_not_weaker() {
        let old = policy(BASE);
        assert!(weakenings(&old, &old).is_empty());
        let stronger = BASE.replace("support: { pii: mask }", "support: { pii: null }");
        assert!(weakenings(&old, &policy(&stronger)).is_empty());
        // Removing a clear rule: its logins fall to "*" (deny).
        let fewer = BASE.replace("  admin: { default: clear }\n", "");
        assert!(weakenings(&old, &policy(&fewer)).is_empty());
    }

    #[test]
    fn dropping_at_rest_is_a_weakening_and_adding_it_is_not() {
        let at_rest = BASE.replace(
            "ssn: { class: pii, token: digits }",
            "ssn: { class: pii, token: digits, at_rest: token }",
        );
        assert_ne!(at_rest, BASE);
        let (plain, stored) = (policy(BASE), policy(&at_rest));
        let dropped = weakenings(&stored, &plain);
        assert!(
            dropped
                .iter()
                .any(|w| w.contains("public.customers.ssn: no longer stored as tokens")),
            "{dropped:?}"
        );
        assert!(weakenings(&plain, &stored).is_empty());
    }

    #[test]
    fn every_kind_of_weakening_is_named() {
        let old = policy(BASE);
        let cases = [
            (
                BASE.replace("support: { pii: mask }", "support: { pii: token }"),
                "mask -> token",
            ),
            (
                BASE.replace("  public.customers.ssn: ssn\n", ""),
                "no longer labelled",
            ),
            (
                BASE.replace("  support: { pii: mask }\n", "")
                    .replace("default: deny", "default: mask, pii: clear"),
                "rule removed",
            ),
            (
                BASE.replace("\"*\": { default: deny }", "\"*\": { default: clear }"),
                "\"*\"",
            ),
            (
                BASE.replace("  \"*\":", "  newrole: { default: clear }\n  \"*\":"),
                "roles.newrole",
            ),
            (
                BASE.replace(
                    "support: { pii: mask }",
                    "support: { pii: mask, enforce: false }",
                ),
                "monitor-only",
            ),
            (
                BASE.replace(
                    "support: { pii: mask }",
                    "support: { pii: mask, filter_on: [pii] }",
                ),
                "filtering",
            ),
            (
                BASE.replace(
                    "support: { pii: mask }",
                    "support: { pii: mask, allow: { ssn: [count] } }",
                ),
                "ssn: derived uses newly allowed (count)",
            ),
            (
                BASE.replace(
                    "support: { pii: mask }",
                    "support: { pii: mask, see_activity: true }",
                ),
                "other sessions' activity",
            ),
        ];
        for (text, expect) in cases {
            let w = weakenings(&old, &policy(&text));
            assert!(w.iter().any(|l| l.contains(expect)), "{expect}: {w:?}");
        }
    }

    #[test]
    fn cut_files_lack_sections() {
        let cut_points = ["version: 1\n", "labels:", "columns:", "roles:", "  support"];
        for cut in cut_points {
            let end = BASE.find(cut).unwrap() + cut.len();
            let text = &BASE[..end];
            if let Ok(p) = Policy::from_yaml(text, "p.yaml") {
                assert!(require_sections(&p, text).is_err(), "{text:?}");
            }
        }
        assert!(require_sections(&policy(BASE), BASE).is_ok());
    }
}
