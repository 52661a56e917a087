//! Validation and composition tests on in-memory policies.
use super::*;
use crate::policy::model::StatementKind;

const SKETCH: &str = r#"version: 1
labels:
  email:  { class: pii,       token: email }
  phone:  { class: pii,       token: digits }
  card:   { class: financial, token: card, mask: last4 }
  ssn:    { class: pii,       token: digits, mask: "***-**-####" }
  diagnosis: { class: health }
columns:
  public.customers.email: email
  public.customers.phone: phone
  public.payments.card_number: card
  public.customers.ssn: ssn
  public.visits.notes: diagnosis
roles:
  app_admin:  { default: clear }
  support:    { pii: mask, financial: mask, health: deny }
  analyst:    { pii: token, financial: token, health: deny, filter_on: [pii] }
  "*":        { default: deny }
"#;

fn sketch() -> Policy {
    Policy::from_yaml(SKETCH, "policy.yaml").unwrap()
}

/// The (line, column, message) of every diagnostic.
fn errors(text: &str) -> Vec<(u32, u32, String)> {
    match Policy::from_yaml(text, "p.yaml") {
        Ok(_) => panic!("expected the policy to be rejected"),
        Err(e) => e
            .diagnostics()
            .iter()
            .map(|d| {
                let p = d.pos.unwrap_or_default();
                (p.line, p.column, d.message.clone())
            })
            .collect(),
    }
}

fn assert_one_error(text: &str, line: u32, column: u32, needle: &str) {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let (l, c, m) = &errs[0];
    assert_eq!((*l, *c), (line, column), "{m}");
    assert!(m.contains(needle), "{m:?} should contain {needle:?}");
}

fn groups(g: &[&str]) -> Vec<String> {
    g.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_sketch_parses() {
    let p = sketch();
    assert_eq!(p.labels().len(), 5);
    assert_eq!(p.columns().len(), 5);
    assert_eq!(p.roles().len(), 4);
    assert_eq!(
        p.label("card").unwrap().mask.as_ref().unwrap().as_str(),
        "last4"
    );
}

#[test]
fn support_gets_masks_and_names_the_rule_with_its_line() {
    let view = sketch().for_role("support", &[]);
    let email = view.column("public.customers.email").unwrap();
    assert_eq!(email.action, Action::Mask);
    assert_eq!(&*email.rule, "roles.support.pii (policy.yaml:16)");
    // No mask written for email: the default hides everything.
    assert_eq!(email.mask.as_ref().unwrap().as_str(), "fixed:****");
    let ssn = view.column("public.customers.ssn").unwrap();
    assert_eq!(ssn.mask.as_ref().unwrap().as_str(), "***-**-####");
    let notes = view.column("public.visits.notes").unwrap();
    assert_eq!(notes.action, Action::Deny);
    assert_eq!(&*notes.rule, "roles.support.health (policy.yaml:16)");
    assert!(view.column("public.customers.city").is_none());
    assert!(!view.fully_clear());
}

#[test]
fn column_lookup_accepts_other_spellings() {
    let view = sketch().for_role("support", &[]);
    assert_eq!(
        view.column("Public.Customers.EMAIL").unwrap().action,
        Action::Mask
    );
    assert_eq!(
        view.column(r#""public"."customers"."email""#)
            .unwrap()
            .action,
        Action::Mask
    );
    assert_eq!(
        view.column_parts("public", "customers", "email")
            .unwrap()
            .action,
        Action::Mask
    );
    // Catalog names are exact: a quoted mixed-case table is a different table.
    assert!(view.column_parts("public", "Customers", "email").is_none());
}

#[test]
fn admin_is_fully_clear_and_unknown_roles_fall_back_to_star() {
    let p = sketch();
    let admin = p.for_role("app_admin", &[]);
    assert!(admin.fully_clear());
    assert!(admin.column("public.customers.ssn").unwrap().action == Action::Clear);
    let stranger = p.for_role("mallory", &groups(&["nobody"]));
    assert_eq!(stranger.matched_rules(), ["*"]);
    let d = stranger.column("public.customers.email").unwrap();
    assert_eq!(d.action, Action::Deny);
    assert_eq!(&*d.rule, "roles.\"*\".default (policy.yaml:18)");
}

#[test]
fn star_does_not_compose_with_a_matched_rule() {
    let p = sketch();
    // support matched, so "*" (deny everything) does not apply.
    let v = p.for_role("alice", &groups(&["support"]));
    assert_eq!(v.matched_rules(), ["support"]);
    assert_eq!(
        v.column("public.customers.phone").unwrap().action,
        Action::Mask
    );
}

#[test]
fn no_rule_and_no_star_denies_every_label() {
    let text = SKETCH
        .replace(
            "  \"*\":        { default: deny }  # anyone not listed\n",
            "",
        )
        .replace("  \"*\":        { default: deny }\n", "");
    let p = Policy::from_yaml(&text, "policy.yaml").unwrap();
    let v = p.for_role("mallory", &[]);
    assert!(v.matched_rules().is_empty());
    let d = v.column("public.customers.email").unwrap();
    assert_eq!(d.action, Action::Deny);
    assert!(d.rule.contains("implicit deny"), "{}", d.rule);
    assert!(v.enforce());
}

#[test]
fn group_rules_apply_to_members() {
    let p = sketch();
    let v = p.for_role("bob", &groups(&["analyst"]));
    let phone = v.column("public.customers.phone").unwrap();
    assert_eq!(phone.action, Action::Token);
    assert_eq!(phone.token.as_ref().unwrap().as_str(), "digits");
    assert!(v.may_filter_on("email"));
    assert!(!v.may_filter_on("card"));
    assert!(!v.may_filter_on("diagnosis"));
    // Unknown labels are unprotected.
    assert!(v.may_filter_on("no_such_label"));
}

#[test]
fn most_hiding_action_wins_across_login_and_group_rules() {
    let p = sketch();
    // analyst tokenizes pii, support masks it: mask is more hiding.
    let v = p.for_role("carol", &groups(&["analyst", "support"]));
    let email = v.column("public.customers.email").unwrap();
    assert_eq!(email.action, Action::Mask);
    assert_eq!(&*email.rule, "roles.support.pii (policy.yaml:16)");
    // admin (clear) + support (mask): mask.
    let v = p.for_role("app_admin", &groups(&["support"]));
    assert_eq!(
        v.column("public.payments.card_number").unwrap().action,
        Action::Mask
    );
    assert!(!v.fully_clear());
    // filter_on: analyst allows pii, support lists nothing and masks pii: denied.
    let v = p.for_role("carol", &groups(&["analyst", "support"]));
    assert!(!v.may_filter_on("email"));
    assert!(
        v.column("public.customers.email")
            .unwrap()
            .filter_rule
            .contains("roles.support")
    );
}

#[test]
fn label_key_beats_class_key_beats_default() {
    let text = r#"version: 1
labels:
  email: { class: pii, token: email }
  phone: { class: pii, token: digits }
  card: { class: financial, token: card }
columns:
  s.t.email: email
  s.t.phone: phone
  s.t.card: card
roles:
  r: { default: clear, pii: token, email: mask }
"#;
    let p = Policy::from_yaml(text, "x.yaml").unwrap();
    let v = p.for_role("r", &[]);
    assert_eq!(v.column("s.t.email").unwrap().action, Action::Mask);
    assert_eq!(v.column("s.t.phone").unwrap().action, Action::Token);
    assert_eq!(v.column("s.t.card").unwrap().action, Action::Clear);
    assert_eq!(
        &*v.column("s.t.card").unwrap().rule,
        "roles.r.default (x.yaml:11)"
    );
}

const COMPOSE: &str = r#"version: 1
labels:
  email: { class: pii, token: email }
  card: { class: financial, token: card }
columns:
  s.t.email: email
  s.t.card: card
roles:
  alice: { pii: clear, row_limit: 500, statements: { deny: [copy] }, enforce: false }
  analysts: { default: token, row_limit: 100, statements: { deny: [ddl] }, enforce: false, filter_on: [email], audit: protected }
  auditors: { default: token, row_limit: 1000, statements: { allow: [select, utility] }, audit: all,
              alerts: { max_refusals_per_minute: 10, action: log } }
  paranoid: { default: null, alerts: { max_refusals_per_minute: 3, action: terminate } }
"#;

#[test]
fn composition_takes_the_fail_closed_side_of_every_setting() {
    let p = Policy::from_yaml(COMPOSE, "c.yaml").unwrap();
    let v = p.for_role("alice", &groups(&["analysts"]));
    assert_eq!(v.column("s.t.email").unwrap().action, Action::Token);
    // alice says nothing about financial, analysts tokenizes it.
    assert_eq!(v.column("s.t.card").unwrap().action, Action::Token);
    assert_eq!(v.row_limit(), Some(100));
    assert_eq!(
        v.row_limit_rule().unwrap().rule,
        "roles.analysts.row_limit (c.yaml:10)"
    );
    assert!(!v.statement_allowed(StatementKind::Copy));
    assert!(!v.statement_allowed(StatementKind::Ddl));
    assert!(v.statement_allowed(StatementKind::Select));
    assert_eq!(
        v.statement_rule(StatementKind::Copy),
        Some("roles.alice.statements (c.yaml:9)")
    );
    // Both rules say enforce: false, so monitor-only.
    assert!(!v.enforce());
    // filter_on: analysts lists email; alice shows pii in clear: allowed.
    assert!(v.may_filter_on("email"));
    assert!(!v.may_filter_on("card"));
    assert_eq!(v.audit(), Some(AuditLevel::Protected));

    let v = p.for_role("alice", &groups(&["analysts", "auditors"]));
    assert!(
        v.enforce(),
        "auditors does not opt out, so enforcement stays on"
    );
    assert_eq!(v.row_limit(), Some(100));
    assert!(!v.statement_allowed(StatementKind::Insert));
    assert!(v.statement_allowed(StatementKind::Utility));
    assert_eq!(v.audit(), Some(AuditLevel::All));
    // auditors has no filter_on and tokenizes email.
    assert!(!v.may_filter_on("email"));

    let v = p.for_role("x", &groups(&["auditors", "paranoid"]));
    assert_eq!(v.column("s.t.email").unwrap().action, Action::Null);
    let alerts = v.alerts().unwrap();
    assert_eq!(alerts.max_refusals_per_minute, Some(3));
    assert_eq!(
        alerts.action,
        Some(crate::policy::model::AlertAction::Terminate)
    );
}

#[test]
fn views_are_cached_per_rule_set() {
    let p = sketch();
    let a = p.for_role("support", &[]);
    let b = p.for_role("someone", &groups(&["support", "unrelated"]));
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    let c = p.for_role("analyst", &[]);
    assert!(!std::sync::Arc::ptr_eq(&a, &c));
}

// ---- validation errors, each with its line and column ----

const HEAD: &str = "version: 1\nlabels:\n  email: { class: pii, token: email }\n";

#[test]
fn bad_version() {
    assert_one_error("version: 2\n", 1, 10, "unsupported version 2");
    assert_one_error("labels: {}\n", 1, 1, "missing 'version: 1'");
}

#[test]
fn unknown_top_level_key() {
    assert_one_error(
        "version: 1\nrole:\n  a: {}\n",
        2,
        1,
        "unknown top-level key 'role'",
    );
}

#[test]
fn unknown_class() {
    assert_one_error(
        "version: 1\nlabels:\n  email: { class: pi }\n",
        3,
        19,
        "unknown class 'pi' in labels.email; allowed: pii, financial, health, credentials",
    );
}

#[test]
fn label_without_class() {
    assert_one_error(
        "version: 1\nlabels:\n  email: { token: email }\n",
        3,
        10,
        "has no class",
    );
}

#[test]
fn unknown_label_key() {
    assert_one_error(
        "version: 1\nlabels:\n  email: { class: pii, tokn: email }\n",
        3,
        24,
        "unknown key 'tokn' in labels.email; allowed: class, token, mask",
    );
}

#[test]
fn unknown_token_format_and_mask() {
    let errs = errors("version: 1\nlabels:\n  x: { class: pii, token: emial, mask: \"###\" }\n");
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!((errs[0].0, errs[0].1), (3, 27));
    assert!(
        errs[0].2.contains("invalid token format 'emial'"),
        "{errs:#?}"
    );
    assert_eq!((errs[1].0, errs[1].1), (3, 40));
    assert!(errs[1].2.contains("hide nothing"));
}

#[test]
fn mask_that_does_not_fit_the_token_format() {
    assert_one_error(
        "version: 1\nlabels:\n  n: { class: pii, token: integer, mask: last4 }\n",
        3,
        42,
        "mask 'last4' does not fit token format 'integer'",
    );
}

#[test]
fn reserved_label_name() {
    assert_one_error(
        "version: 1\nlabels:\n  pii: { class: pii }\n",
        3,
        3,
        "reserved",
    );
}

#[test]
fn unknown_label_for_a_column() {
    let text = format!("{HEAD}columns:\n  public.customers.email: emial\n");
    assert_one_error(
        &text,
        5,
        27,
        "unknown label 'emial' for column public.customers.email; labels defined: email",
    );
}

#[test]
fn bad_column_name() {
    let text = format!("{HEAD}columns:\n  customers.email: email\n");
    assert_one_error(&text, 5, 3, "2 part(s); write schema.table.column");
}

#[test]
fn same_column_in_two_spellings() {
    let text = format!(
        "{HEAD}columns:\n  public.customers.email: email\n  Public.Customers.Email: email\n"
    );
    assert_one_error(&text, 6, 3, "listed twice (first at line 5)");
}

#[test]
fn duplicate_role_is_an_error_not_a_silent_override() {
    let text = format!(
        "{HEAD}roles:\n  support: {{ pii: mask }}\n  analyst: {{ pii: token }}\n  support: {{ pii: clear }}\n"
    );
    assert_one_error(
        &text,
        7,
        3,
        "duplicate key 'support' in roles (first written at line 5)",
    );
}

#[test]
fn duplicate_key_inside_a_rule() {
    let text = format!("{HEAD}roles:\n  support: {{ pii: mask, pii: clear }}\n");
    assert_one_error(&text, 5, 25, "duplicate key 'pii' in roles.support");
}

#[test]
fn unknown_action() {
    let text = format!("{HEAD}roles:\n  support: {{ pii: hide }}\n");
    assert_one_error(
        &text,
        5,
        19,
        "unknown action 'hide' (did you mean 'deny'?); allowed: clear, token, mask, null, deny",
    );
}

#[test]
fn unknown_rule_key_lists_what_is_allowed() {
    let text = format!("{HEAD}roles:\n  support: {{ emial: mask }}\n");
    assert_one_error(
        &text,
        5,
        14,
        "unknown key 'emial' in roles.support; allowed: default, a class (pii, financial, health, credentials), a label (email), or row_limit",
    );
}

#[test]
fn token_action_needs_a_token_format() {
    let text = "version: 1\nlabels:\n  diagnosis: { class: health }\nroles:\n  analyst: { health: token }\n";
    assert_one_error(
        text,
        5,
        14,
        "action 'token' reaches label 'diagnosis', which has no token format",
    );
}

#[test]
fn strict_booleans_reject_yes() {
    let text = format!("{HEAD}roles:\n  support: {{ pii: mask, enforce: yes }}\n");
    assert_one_error(&text, 5, 34, "must be true or false, found a string 'yes'");
}

#[test]
fn row_limit_filter_on_statements_audit_alerts_are_checked() {
    let text = format!(
        "{HEAD}roles:\n  r:\n    row_limit: 0\n    filter_on: [emial]\n    statements: {{ deny: [copy, drop] }}\n    audit: some\n    alerts: {{ action: page, max_refusals: 3 }}\n"
    );
    let errs = errors(&text);
    let got: Vec<(u32, u32)> = errs.iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(
        got,
        vec![(6, 16), (7, 17), (8, 32), (9, 12), (10, 23), (10, 29)],
        "{errs:#?}"
    );
    assert!(errs[0].2.contains("greater than 0, found 0"));
    assert!(errs[1].2.contains("'emial' is neither a label nor a class"));
    assert!(errs[2].2.contains(
        "unknown statement kind 'drop'; allowed: select, insert, update, delete, copy, ddl, utility"
    ));
    assert!(errs[3].2.contains("unknown audit level 'some'"));
    assert!(errs[4].2.contains("unknown alert action 'page'"));
    assert!(errs[5].2.contains("unknown key 'max_refusals'"));
}

#[test]
fn every_error_is_reported_at_once_in_file_order() {
    let text = r#"version: 1
labels:
  email: { class: pii, token: emial }
  note: { class: medical }
columns:
  public.customers.email: email
  public.customers.mail: emial
roles:
  support: { pii: hide, enforce: no }
  support: { pii: mask }
  analyst: { note: tokenize }
"#;
    let errs = errors(text);
    let lines: Vec<u32> = errs.iter().map(|e| e.0).collect();
    assert_eq!(lines, vec![3, 4, 7, 9, 9, 10, 11], "{errs:#?}");
    let rendered = Policy::from_yaml(text, "p.yaml").unwrap_err().to_string();
    assert!(
        rendered.starts_with("p.yaml: 7 errors in policy\np.yaml:3:31: labels.email.token"),
        "{rendered}"
    );
}

#[test]
fn syntax_errors_stop_parsing_with_a_position() {
    let errs = errors("version: 1\nroles:\n  a: { pii: mask\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].0 >= 3, "{errs:?}");
    assert!(errs[0].2.starts_with("YAML syntax error"));
}

#[test]
fn indentation_mistakes_get_plain_hints() {
    // Settings not indented under their label.
    let errs = errors("version: 1\nlabels:\n  email:\n  class: pii\n");
    assert!(
        errs[0].2.contains("nothing is indented under `email:`"),
        "{errs:?}"
    );
    assert!(
        errs[1].2.contains("`class` is a setting of a label"),
        "{errs:?}"
    );
    // A role option written at the level of the roles.
    let errs = errors(
        "version: 1\nlabels:\n  email: { class: pii }\nroles:\n  support:\n    pii: mask\n  filter_on: [email]\n",
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].0, 7);
    assert!(
        errs[0].2.contains("indent it under the role above"),
        "{errs:?}"
    );
    // Syntax errors in plain words, at the line that is off.
    assert_one_error(
        "version: 1\nroles:\n  support:\n    pii: mask\n   financial: mask\n",
        5,
        4,
        "lines up with no key above it",
    );
    assert_one_error(
        "version: 1\nlabels:\n  ssn: { class: pii, mask: ***-**-#### }\n",
        3,
        28,
        "write \"***-**-####\"",
    );
    let errs = errors("version: 1\nlabels:\n  ssn:\n    class: pii\n    mask: ###-##-####\n");
    assert!(errs[0].2.contains("start of a comment"), "{errs:?}");
}

#[test]
fn at_rest_needs_a_token_format_and_a_known_value() {
    let ok = "version: 1\nlabels:\n  ssn: { class: pii, token: digits, at_rest: token }\n";
    let p = Policy::from_yaml(ok, "p.yaml").unwrap();
    assert!(p.label("ssn").unwrap().at_rest);
    let plain = "version: 1\nlabels:\n  ssn: { class: pii, token: digits, at_rest: plaintext }\n";
    assert!(
        !Policy::from_yaml(plain, "p.yaml")
            .unwrap()
            .label("ssn")
            .unwrap()
            .at_rest
    );
    let e = Policy::from_yaml(
        "version: 1\nlabels:\n  ssn: { class: pii, at_rest: token }\n",
        "p.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("p.yaml:3") && e.contains("needs a token format"),
        "{e}"
    );
    let e = Policy::from_yaml(
        "version: 1\nlabels:\n  ssn: { class: pii, token: digits, at_rest: yes }\n",
        "p.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("at_rest"), "{e}");
}

#[test]
fn allow_names_are_checked_with_their_line() {
    let text = format!(
        "{HEAD}roles:\n  r:\n    pii: mask\n    allow: {{ pii: [count, sum], emial: [count], email: count }}\n"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(errs.iter().all(|e| e.0 == 7), "{errs:#?}");
    assert!(
        errs[0]
            .2
            .contains("'sum' is not a derived use; known: count, count_distinct, is_null, length"),
        "{errs:#?}"
    );
    assert!(errs[1].2.contains("'emial' is neither a label nor a class"));
    assert!(errs[2].2.contains("must be a list"));
}

#[test]
fn allow_composes_by_intersection() {
    use super::DerivedUse as D;
    let text = format!(
        "{HEAD}columns:\n  public.t.e: email\nroles:\n  a: {{ pii: mask, allow: {{ pii: [count, is_null] }} }}\n  \
         b: {{ pii: token, allow: {{ email: [count, length] }} }}\n  c: {{ default: clear }}\n  \
         d: {{ pii: mask }}\n  \"*\": {{ default: deny }}\n"
    );
    let p = Policy::from_yaml(&text, "p.yaml").unwrap();
    let e = |login: &str, g: &[&str]| {
        p.for_role(login, &groups(g))
            .label("email")
            .unwrap()
            .clone()
    };
    let a = e("a", &[]);
    assert!(a.allows(D::Count) && a.allows(D::IsNull) && !a.allows(D::Length));
    assert!(a.derived_rule.contains("roles.a.allow (p.yaml:"));
    // Both rules apply: only what both allow.
    let ab = e("a", &["b"]);
    assert!(ab.allows(D::Count) && !ab.allows(D::IsNull) && !ab.allows(D::Length));
    // A clear rule says nothing against it; a rule that masks without allow: allows nothing.
    assert!(e("a", &["c"]).allows(D::IsNull));
    let ad = e("a", &["d"]);
    assert!(!ad.allows(D::Count), "{:?}", ad.derived_rule);
    // The "*" rule denies: deny allows nothing.
    assert!(!e("nobody", &[]).allows(D::Count));
}
