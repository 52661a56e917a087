//! Every example policy in policies/ validates and decides what its comments promise.
use std::path::Path;
use tokengate::policy::{Action, Policy, StatementKind};

fn load(name: &str) -> Policy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("policies")
        .join(name);
    match Policy::load(&path) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn action(p: &Policy, role: &str, groups: &[&str], column: &str) -> Action {
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    p.for_role(role, &groups)
        .column(column)
        .unwrap_or_else(|| panic!("{column} is not labelled"))
        .action
}

#[test]
fn demo_policy() {
    let p = load("demo.yaml");
    assert_eq!(p.columns().len(), 8);
    // app_admin sees everything in clear, but ssn and card numbers are stored as tokens, so
    // its statements are analysed (to decrypt those two) rather than relayed untouched.
    let admin = p.for_role("app_admin", &[]);
    assert!(!admin.fully_clear());
    let at_rest: Vec<&str> = admin
        .columns()
        .filter(|d| d.at_rest)
        .map(|d| &*d.column)
        .collect();
    assert_eq!(
        at_rest.len(),
        2,
        "ssn and card_number are stored as tokens: {at_rest:?}"
    );
    assert!(
        at_rest.contains(&"public.customers.ssn")
            && at_rest.contains(&"public.payments.card_number")
    );
    assert_eq!(
        action(&p, "app_admin", &[], "public.customers.ssn"),
        Action::Clear
    );
    assert_eq!(
        action(&p, "support", &[], "public.customers.ssn"),
        Action::Mask
    );
    assert_eq!(
        action(&p, "support", &[], "public.visits.notes"),
        Action::Deny
    );
    assert_eq!(
        action(&p, "analyst", &[], "public.payments.card_number"),
        Action::Token
    );
    let analyst = p.for_role("analyst", &[]);
    assert!(analyst.may_filter_on("email"));
    assert!(!analyst.may_filter_on("ssn"));
    let auditor = p.for_role("auditor", &[]);
    assert_eq!(auditor.row_limit(), Some(1000));
    assert!(!auditor.statement_allowed(StatementKind::Copy));
    assert!(auditor.statement_allowed(StatementKind::Select));
    assert_eq!(
        action(&p, "auditor", &[], "public.customers.email"),
        Action::Token
    );
    assert_eq!(
        action(&p, "mallory", &[], "public.customers.email"),
        Action::Deny
    );
    let birth = p.for_role("support", &[]);
    let birth = birth.column("public.customers.birth_date").unwrap();
    assert_eq!(birth.mask.as_ref().unwrap().as_str(), "null");
}

#[test]
fn pci_policy() {
    let p = load("pci.yaml");
    assert_eq!(
        action(&p, "payment_service", &[], "billing.cards.pan"),
        Action::Clear
    );
    assert_eq!(
        action(&p, "payment_service", &[], "billing.cards.cvv"),
        Action::Deny
    );
    assert_eq!(
        action(&p, "ann", &["fraud_analysts"], "billing.transactions.pan"),
        Action::Token
    );
    // Both groups: mask beats token, and the stricter statement rules apply.
    let both = p.for_role("ann", &["fraud_analysts".into(), "customer_support".into()]);
    assert_eq!(
        both.column("billing.cards.pan").unwrap().action,
        Action::Mask
    );
    assert!(!both.statement_allowed(StatementKind::Update));
    assert_eq!(both.row_limit(), Some(10000));
}

#[test]
fn hipaa_policy() {
    let p = load("hipaa.yaml");
    assert_eq!(
        action(&p, "dr_who", &["clinicians"], "clinic.encounters.notes"),
        Action::Clear
    );
    assert_eq!(
        action(&p, "bill", &["billing"], "clinic.encounters.icd10"),
        Action::Mask
    );
    assert_eq!(
        action(&p, "bill", &["billing"], "clinic.encounters.notes"),
        Action::Deny
    );
    assert_eq!(
        action(&p, "r", &["research"], "clinic.encounters.icd10"),
        Action::Token
    );
    assert!(!p.for_role("bi", &["bi_pilot".into()]).enforce());
    // A pilot who is also in research is enforced: monitor-only needs every rule to say so.
    assert!(
        p.for_role("bi", &["bi_pilot".into(), "research".into()])
            .enforce()
    );
}

#[test]
fn gdpr_policy() {
    let p = load("gdpr.yaml");
    assert_eq!(
        action(&p, "a", &["analytics"], "app.users.email"),
        Action::Token
    );
    assert_eq!(
        action(&p, "a", &["analytics"], "app.payouts.iban"),
        Action::Deny
    );
    assert!(
        p.for_role("a", &["analytics".into()])
            .may_filter_on("postcode")
    );
    assert_eq!(
        action(&p, "m", &["marketing"], "app.users.email"),
        Action::Mask
    );
    assert_eq!(
        action(&p, "m", &["marketing"], "app.users.postcode"),
        Action::Deny
    );
    assert!(p.for_role("dpo", &[]).fully_clear());
}

/// `policy explain` with a statement but no database cannot decide it: it says so and exits 2
/// (0 means allowed, 1 refused), so a CI job never mistakes "not checked" for "allowed".
#[test]
fn explain_without_upstream_does_not_pass_a_statement() {
    let policy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/demo.yaml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(["policy", "explain", "--policy"])
        .arg(&policy)
        .args(["--role", "support", "SELECT lower(email) FROM customers"])
        .env_remove("TOKENGATE_UPSTREAM")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("needs --upstream"), "{stdout}");
}
