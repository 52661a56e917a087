//! Turns the located YAML tree into a [`Policy`], collecting every semantic error instead of
//! stopping at the first. Each check that fails records a [`Diagnostic`] and validation
//! carries on with what it could read, so one mistake does not hide the next.
use super::error::{Diagnostic, PolicyError};
use super::formats::{mask_fits_token, parse_mask_spec, parse_token_format};
use super::hints;
use super::model::{
    Action, ActionEntry, AlertAction, Alerts, AllowEntry, AuditLevel, Class, ColumnEntry,
    ColumnName, DerivedSet, DerivedUse, Label, Policy, RoleRule, StatementKind, StatementSet,
    Target, WILDCARD_ROLE,
};
use super::node::{self, Key, Node, Pos, Value};
use std::collections::HashMap;
use std::str::FromStr;

/// The only format version this build reads.
pub const SUPPORTED_VERSION: i128 = 1;

/// Role-rule keys that are options rather than class or label names.
const RULE_OPTIONS: [&str; 8] = [
    "row_limit",
    "filter_on",
    "allow",
    "statements",
    "enforce",
    "see_activity",
    "audit",
    "alerts",
];

/// Parses and validates policy text. `source` names the file in messages.
pub fn build(text: &str, source: &str) -> Result<Policy, PolicyError> {
    let invalid = |diagnostics| PolicyError::Invalid {
        file: source.to_string(),
        diagnostics,
    };
    let root = match node::parse(text) {
        Ok(root) => root,
        Err(e) => {
            // Say what is wrong in plain words, where it is, when it is a known mistake.
            let diagnostic = match hints::explain_syntax_error(text, e.pos) {
                Some((pos, message)) => Diagnostic::at(pos, message),
                None => Diagnostic {
                    pos: e.pos,
                    message: format!("YAML syntax error: {}", e.message),
                },
            };
            return Err(invalid(vec![diagnostic]));
        }
    };
    let mut checker = Checker {
        text: text.to_string(),
        ..Checker::default()
    };
    let policy = checker.policy(&root, source);
    if checker.diags.is_empty() {
        Ok(policy)
    } else {
        let mut diags = checker.diags;
        diags.sort_by_key(|d| d.pos);
        Err(invalid(diags))
    }
}

#[derive(Default)]
struct Checker {
    diags: Vec<Diagnostic>,
    /// The file's text, for hints that look at how a value was written.
    text: String,
}

impl Checker {
    fn err(&mut self, pos: Pos, message: impl Into<String>) {
        self.diags.push(Diagnostic::at(pos, message));
    }

    /// The entries of a mapping, first occurrence of each key only; every repeated key is
    /// reported (YAML forbids them, and a silently dropped role would be a hole).
    fn entries<'a>(&mut self, node: &'a Node, what: &str) -> Vec<&'a (Key, Node)> {
        let Value::Map(entries) = &node.value else {
            if node.value != Value::Null {
                self.err(
                    node.pos,
                    format!("{what} must be a mapping, found {}", node.value.kind()),
                );
            }
            return Vec::new();
        };
        let mut seen: HashMap<&str, Pos> = HashMap::new();
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let key = &entry.0;
            if let Some(first) = seen.get(key.name.as_str()) {
                self.err(
                    key.pos,
                    format!(
                        "duplicate key '{}' in {what} (first written at line {}); each key may \
                         appear only once",
                        key.name, first.line
                    ),
                );
            } else {
                seen.insert(&key.name, key.pos);
                out.push(entry);
            }
        }
        out
    }

    /// Why an entry under `labels:`/`roles:` is not a mapping, when indentation is the cause:
    /// its settings are not indented under it, or it is itself a setting (`class`,
    /// `filter_on`...) that belongs under the entry above.
    fn nesting_hint(&self, key: &Key, is_option: bool, entry: &str) -> String {
        if is_option {
            return format!(
                "; `{}` is a setting of a {entry}, not a {entry}: indent it under the {entry} \
                 above it",
                key.name
            );
        }
        hints::nothing_nested(&self.text, key.pos)
            .map(|h| format!("; {h}"))
            .unwrap_or_default()
    }

    fn string<'a>(&mut self, node: &'a Node, what: &str) -> Option<&'a str> {
        match &node.value {
            Value::Str(s) => Some(s),
            other => {
                let hint = match other {
                    Value::Null => hints::null_value_hint(&self.text, node.pos)
                        .map(|h| format!("; {h}"))
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                self.err(
                    node.pos,
                    format!("{what} must be a string, found {}{hint}", other.kind()),
                );
                None
            }
        }
    }

    fn positive_int(&mut self, node: &Node, what: &str) -> Option<u64> {
        match &node.value {
            Value::Int(n) if *n > 0 => u64::try_from(*n).ok(),
            other => {
                let found = match other {
                    Value::Int(n) => n.to_string(),
                    Value::Str(s) => format!("'{s}'"),
                    v => v.kind().to_string(),
                };
                self.err(
                    node.pos,
                    format!("{what} must be a whole number greater than 0, found {found}"),
                );
                None
            }
        }
    }

    fn list<'a>(&mut self, node: &'a Node, what: &str) -> Option<&'a [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            other => {
                self.err(
                    node.pos,
                    format!(
                        "{what} must be a list such as [a, b], found {}",
                        other.kind()
                    ),
                );
                None
            }
        }
    }

    fn policy(&mut self, root: &Node, source: &str) -> Policy {
        let mut version = None;
        let (mut labels_node, mut columns_node, mut roles_node) = (None, None, None);
        if !matches!(root.value, Value::Map(_)) {
            self.err(
                root.pos,
                "a policy file must be a mapping with version, labels, columns and roles",
            );
        }
        for (key, value) in self.entries(root, "the policy file") {
            match key.name.as_str() {
                "version" => version = Some(value),
                "labels" => labels_node = Some(value),
                "columns" => columns_node = Some(value),
                "roles" => roles_node = Some(value),
                other => self.err(
                    key.pos,
                    format!(
                        "unknown top-level key '{other}'; allowed: version, labels, columns, roles"
                    ),
                ),
            }
        }
        match version {
            None if matches!(root.value, Value::Map(_)) => self.err(
                root.pos,
                format!("missing 'version: {SUPPORTED_VERSION}' at the top of the file"),
            ),
            None => {}
            Some(v) if v.value == Value::Int(SUPPORTED_VERSION) => {}
            Some(v) => self.err(
                v.pos,
                format!(
                    "unsupported version {}; this tokengate reads version {SUPPORTED_VERSION}",
                    match &v.value {
                        Value::Int(n) => n.to_string(),
                        Value::Str(s) => format!("'{s}'"),
                        other => other.kind().to_string(),
                    }
                ),
            ),
        }

        let labels = labels_node.map(|n| self.labels(n)).unwrap_or_default();
        let label_index: HashMap<String, usize> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.name.clone(), i))
            .collect();
        let columns = columns_node
            .map(|n| self.columns(n, &label_index))
            .unwrap_or_default();
        let roles = roles_node
            .map(|n| self.roles(n, &labels, &label_index))
            .unwrap_or_default();
        let role_index: HashMap<String, usize> = roles
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.clone(), i))
            .collect();
        let wildcard = role_index.get(WILDCARD_ROLE).copied();
        let source_name = std::path::Path::new(source)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| source.to_string());
        Policy {
            source: source.to_string(),
            source_name,
            labels,
            label_index,
            columns,
            roles,
            role_index,
            wildcard,
            views: Default::default(),
        }
    }

    fn labels(&mut self, node: &Node) -> Vec<Label> {
        let mut labels = Vec::new();
        for (key, value) in self.entries(node, "labels") {
            let name = key.name.as_str();
            if !is_label_name(name) {
                self.err(
                    key.pos,
                    format!(
                        "label name '{name}' must start with a lower-case letter and use only \
                         a-z, 0-9 and _"
                    ),
                );
            } else if Class::from_str(name).is_ok()
                || name == "default"
                || RULE_OPTIONS.contains(&name)
            {
                self.err(
                    key.pos,
                    format!(
                        "label name '{name}' is reserved (a class name or a role-rule key); \
                         choose another name"
                    ),
                );
            }
            let what = format!("labels.{name}");
            let mut class = None;
            let (mut token, mut mask) = (None, None);
            let mut at_rest = None;
            let mut class_written = false;
            if !matches!(value.value, Value::Map(_)) {
                let option = matches!(name, "class" | "token" | "mask" | "description" | "at_rest");
                let hint = self.nesting_hint(key, option, "label");
                self.err(
                    value.pos,
                    format!(
                        "{what} must be a mapping like {{ class: pii, token: email }}, found {}{hint}",
                        value.value.kind()
                    ),
                );
                continue;
            }
            for (k, v) in self.entries(value, &what) {
                match k.name.as_str() {
                    "class" => {
                        class_written = true;
                        if let Some(s) = self.string(v, &format!("{what}.class")) {
                            match Class::from_str(s) {
                                Ok(c) => class = Some(c),
                                Err(()) => self.err(
                                    v.pos,
                                    format!(
                                        "unknown class '{s}' in {what}; allowed: {}",
                                        list_of(Class::ALL.iter().map(|c| c.as_str()))
                                    ),
                                ),
                            }
                        }
                    }
                    "token" => {
                        if let Some(s) = self.string(v, &format!("{what}.token")) {
                            match parse_token_format(s) {
                                Ok(t) => token = Some((t, v.pos)),
                                Err(e) => self.err(v.pos, format!("{what}.token: {e}")),
                            }
                        }
                    }
                    "mask" => {
                        if let Some(s) = self.string(v, &format!("{what}.mask")) {
                            match parse_mask_spec(s) {
                                Ok(m) => mask = Some((m, v.pos)),
                                Err(e) => self.err(v.pos, format!("{what}.mask: {e}")),
                            }
                        }
                    }
                    "description" => {
                        self.string(v, &format!("{what}.description"));
                    }
                    "at_rest" => {
                        if let Some(s) = self.string(v, &format!("{what}.at_rest")) {
                            match s {
                                "token" => at_rest = Some(v.pos),
                                "plaintext" => {}
                                other => self.err(
                                    v.pos,
                                    format!(
                                        "{what}.at_rest: unknown value '{other}'; allowed: token \
                                         (stored as FF1 tokens), plaintext (the default)"
                                    ),
                                ),
                            }
                        }
                    }
                    other => self.err(
                        k.pos,
                        format!(
                            "unknown key '{other}' in {what}; allowed: class, token, mask, \
                             at_rest, description"
                        ),
                    ),
                }
            }
            if !class_written {
                self.err(
                    value.pos,
                    format!(
                        "{what} has no class; add class: one of {}",
                        list_of(Class::ALL.iter().map(|c| c.as_str()))
                    ),
                );
            }
            if let (Some((t, _)), Some((m, mpos))) = (&token, &mask)
                && let Some(why) = mask_fits_token(m, t)
            {
                self.err(*mpos, format!("{what}: {why}"));
            }
            if let Some(pos) = at_rest
                && token.is_none()
            {
                self.err(
                    pos,
                    format!(
                        "{what}.at_rest: token needs a token format to store values as tokens; \
                         add token: <format> to {what}"
                    ),
                );
            }
            if let Some(class) = class {
                labels.push(Label {
                    name: name.to_string(),
                    class,
                    at_rest: at_rest.is_some(),
                    token: token.map(|(t, _)| t),
                    mask: mask.map(|(m, _)| m),
                    pos: key.pos,
                });
            }
        }
        labels
    }

    fn columns(&mut self, node: &Node, label_index: &HashMap<String, usize>) -> Vec<ColumnEntry> {
        let mut columns = Vec::new();
        // Two spellings can name the same column (`Public.T.C` and `public.t.c`): that is a
        // duplicate too, which YAML's own key check cannot see.
        let mut seen: HashMap<String, Pos> = HashMap::new();
        for (key, value) in self.entries(node, "columns") {
            let name = match ColumnName::parse(&key.name) {
                Ok(n) => Some(n),
                Err(e) => {
                    self.err(key.pos, format!("bad column name: {e}"));
                    None
                }
            };
            let label = self
                .string(value, &format!("columns.{}", key.name))
                .and_then(|s| match label_index.get(s) {
                    Some(&i) => Some(i),
                    None => {
                        self.err(
                            value.pos,
                            format!(
                                "unknown label '{s}' for column {}; labels defined: {}",
                                key.name,
                                known_labels(label_index)
                            ),
                        );
                        None
                    }
                });
            let Some(name) = name else { continue };
            let canonical = name.canonical();
            if let Some(first) = seen.get(&canonical) {
                self.err(
                    key.pos,
                    format!(
                        "column {canonical} is listed twice (first at line {}); unquoted names \
                         are folded to lower case",
                        first.line
                    ),
                );
                continue;
            }
            seen.insert(canonical, key.pos);
            if let Some(label) = label {
                columns.push(ColumnEntry {
                    name,
                    label,
                    pos: key.pos,
                });
            }
        }
        columns
    }

    fn roles(
        &mut self,
        node: &Node,
        labels: &[Label],
        label_index: &HashMap<String, usize>,
    ) -> Vec<RoleRule> {
        let mut roles = Vec::new();
        for (key, value) in self.entries(node, "roles") {
            if key.name.is_empty() {
                self.err(key.pos, "a role name cannot be empty");
                continue;
            }
            if !matches!(value.value, Value::Map(_)) {
                let hint =
                    self.nesting_hint(key, RULE_OPTIONS.contains(&key.name.as_str()), "role");
                self.err(
                    value.pos,
                    format!(
                        "roles.{} must be a mapping like {{ pii: mask, default: deny }}, found {}{hint}",
                        key.name,
                        value.value.kind()
                    ),
                );
                continue;
            }
            let rule = self.role_rule(key, value, labels, label_index);
            roles.push(rule);
        }
        roles
    }

    fn role_rule(
        &mut self,
        key: &Key,
        value: &Node,
        labels: &[Label],
        label_index: &HashMap<String, usize>,
    ) -> RoleRule {
        let mut rule = RoleRule {
            name: key.name.clone(),
            pos: key.pos,
            actions: Vec::new(),
            row_limit: None,
            filter_on: None,
            allow: Vec::new(),
            statements: StatementSet::DEFAULT,
            statements_pos: None,
            enforce: true,
            enforce_pos: None,
            see_activity: None,
            audit: None,
            alerts: None,
        };
        let what = format!("roles.{}", rule.path_name());
        for (k, v) in self.entries(value, &what) {
            let kname = k.name.as_str();
            let path = format!("{what}.{kname}");
            match kname {
                "row_limit" => {
                    rule.row_limit = self.positive_int(v, &path).map(|n| (n, k.pos));
                }
                "filter_on" => {
                    if let Some(items) = self.list(v, &path) {
                        let mut targets = Vec::new();
                        for item in items {
                            if let Some(s) = self.string(item, &path) {
                                match target_of(s, label_index) {
                                    Some(t @ (Target::Label(_) | Target::Class(_))) => {
                                        targets.push(t)
                                    }
                                    _ => self.err(
                                        item.pos,
                                        format!(
                                            "{path}: '{s}' is neither a label nor a class; \
                                             labels: {}; classes: {}",
                                            known_labels(label_index),
                                            list_of(Class::ALL.iter().map(|c| c.as_str()))
                                        ),
                                    ),
                                }
                            }
                        }
                        rule.filter_on = Some((targets, k.pos));
                    }
                }
                "allow" => rule.allow = self.allow(v, &path, label_index),
                "statements" => {
                    rule.statements = self.statements(v, &path);
                    rule.statements_pos = Some(k.pos);
                }
                "see_activity" => match v.value {
                    Value::Bool(b) => rule.see_activity = Some(b),
                    ref other => self.err(
                        v.pos,
                        format!("{path} must be true or false, found {}", other.kind()),
                    ),
                },
                "enforce" => match v.value {
                    Value::Bool(b) => {
                        rule.enforce = b;
                        rule.enforce_pos = Some(k.pos);
                    }
                    ref other => self.err(
                        v.pos,
                        format!(
                            "{path} must be true or false, found {}{}",
                            other.kind(),
                            match other {
                                Value::Str(s) =>
                                    format!(" '{s}' (only true and false are booleans)"),
                                _ => String::new(),
                            }
                        ),
                    ),
                },
                "audit" => {
                    if let Some(s) = self.string(v, &path) {
                        match s {
                            "protected" => rule.audit = Some(AuditLevel::Protected),
                            "all" => rule.audit = Some(AuditLevel::All),
                            _ => self.err(
                                v.pos,
                                format!(
                                    "{path}: unknown audit level '{s}'; allowed: protected, all"
                                ),
                            ),
                        }
                    }
                }
                "alerts" => rule.alerts = Some(self.alerts(v, &path)),
                _ => match target_of(kname, label_index) {
                    Some(target) => {
                        if let Some(action) = self.action(v, &path) {
                            rule.actions.push(ActionEntry {
                                target,
                                key: kname.to_string(),
                                action,
                                pos: k.pos,
                            });
                        }
                    }
                    None => self.err(
                        k.pos,
                        format!(
                            "unknown key '{kname}' in {what}; allowed: default, a class ({}), a \
                             label ({}), or {}",
                            list_of(Class::ALL.iter().map(|c| c.as_str())),
                            known_labels(label_index),
                            RULE_OPTIONS.join(", ")
                        ),
                    ),
                },
            }
        }
        // A `token` action needs a token format on every label it reaches.
        for (i, label) in labels.iter().enumerate() {
            if label.token.is_some() {
                continue;
            }
            if let Some(entry) = rule.entry_for(i, label.class)
                && entry.action == Action::Token
            {
                self.err(
                    entry.pos,
                    format!(
                        "{what}.{}: action 'token' reaches label '{}', which has no token \
                         format; add token: <format> to labels.{} (line {}) or choose mask, \
                         null or deny",
                        entry.key, label.name, label.name, label.pos.line
                    ),
                );
            }
        }
        rule
    }

    fn action(&mut self, node: &Node, path: &str) -> Option<Action> {
        let s = self.string(node, path)?;
        match Action::from_str(s) {
            Ok(a) => Some(a),
            Err(()) => {
                let meant = hints::action_synonym(s)
                    .map(|a| format!(" (did you mean '{a}'?)"))
                    .unwrap_or_default();
                self.err(
                    node.pos,
                    format!(
                        "{path}: unknown action '{s}'{meant}; allowed: {}",
                        list_of(Action::ALL.iter().map(|a| a.as_str()))
                    ),
                );
                None
            }
        }
    }

    fn statements(&mut self, node: &Node, path: &str) -> StatementSet {
        // `allow:` lists the only kinds allowed (and is the only way to allow `code`);
        // `deny:` removes kinds from that, or from the default set.
        let mut allowed: Option<u8> = None;
        let mut denied = 0u8;
        if !matches!(node.value, Value::Map(_)) {
            self.err(
                node.pos,
                format!(
                    "{path} must be a mapping like {{ deny: [copy, ddl] }}, found {}",
                    node.value.kind()
                ),
            );
            // Fail closed on a rule we could not read; the file is rejected anyway.
            return StatementSet(0);
        }
        for (k, v) in self.entries(node, path) {
            let inner = format!("{path}.{}", k.name);
            let is_allow = match k.name.as_str() {
                "allow" => true,
                "deny" => false,
                other => {
                    self.err(
                        k.pos,
                        format!("unknown key '{other}' in {path}; allowed: allow, deny"),
                    );
                    continue;
                }
            };
            let mut bits = 0u8;
            for item in self.list(v, &inner).unwrap_or_default() {
                if let Some(s) = self.string(item, &inner) {
                    match StatementKind::from_str(s) {
                        Ok(kind) => bits |= kind.bit(),
                        Err(()) => self.err(
                            item.pos,
                            format!(
                                "{inner}: unknown statement kind '{s}'; allowed: {}",
                                list_of(StatementKind::ALL.iter().map(|k| k.as_str()))
                            ),
                        ),
                    }
                }
            }
            if is_allow {
                allowed = Some(allowed.unwrap_or(StatementSet::ALL.0) & bits);
            } else {
                denied |= bits;
            }
        }
        StatementSet(allowed.unwrap_or(StatementSet::DEFAULT.0) & !denied & StatementSet::ALL.0)
    }

    fn alerts(&mut self, node: &Node, path: &str) -> Alerts {
        let mut alerts = Alerts::default();
        for (k, v) in self.entries(node, path) {
            let inner = format!("{path}.{}", k.name);
            match k.name.as_str() {
                "max_protected_values_per_minute" => {
                    alerts.max_protected_values_per_minute = self.positive_int(v, &inner)
                }
                "max_refusals_per_minute" => {
                    alerts.max_refusals_per_minute = self.positive_int(v, &inner)
                }
                "action" => {
                    if let Some(s) = self.string(v, &inner) {
                        match s {
                            "log" => alerts.action = Some(AlertAction::Log),
                            "terminate" => alerts.action = Some(AlertAction::Terminate),
                            _ => self.err(
                                v.pos,
                                format!(
                                    "{inner}: unknown alert action '{s}'; allowed: log, terminate"
                                ),
                            ),
                        }
                    }
                }
                other => self.err(
                    k.pos,
                    format!(
                        "unknown key '{other}' in {path}; allowed: \
                         max_protected_values_per_minute, max_refusals_per_minute, action"
                    ),
                ),
            }
        }
        alerts
    }
}

impl Checker {
    /// `allow: { pii: [count, is_null], ssn: [length] }`: named derived uses per label or
    /// class. Unknown labels, classes and use names are errors.
    fn allow(
        &mut self,
        node: &Node,
        path: &str,
        label_index: &HashMap<String, usize>,
    ) -> Vec<AllowEntry> {
        let mut out = Vec::new();
        for (k, v) in self.entries(node, path) {
            let entry_path = format!("{path}.{}", k.name);
            let target = match target_of(&k.name, label_index) {
                Some(t @ (Target::Label(_) | Target::Class(_))) => t,
                _ => {
                    self.err(
                        k.pos,
                        format!(
                            "{path}: '{}' is neither a label nor a class; labels: {}; classes: {}",
                            k.name,
                            known_labels(label_index),
                            list_of(Class::ALL.iter().map(|c| c.as_str()))
                        ),
                    );
                    continue;
                }
            };
            let mut uses = DerivedSet::NONE;
            if let Some(items) = self.list(v, &entry_path) {
                for item in items {
                    if let Some(name) = self.string(item, &entry_path) {
                        match DerivedUse::from_name(name) {
                            Some(d) => uses = uses.with(d),
                            None => self.err(
                                item.pos,
                                format!(
                                    "{entry_path}: '{name}' is not a derived use; known: {}",
                                    DerivedSet::ALL.names()
                                ),
                            ),
                        }
                    }
                }
            }
            out.push(AllowEntry {
                target,
                uses,
                pos: k.pos,
            });
        }
        out
    }
}

fn is_label_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// What a rule key or `filter_on` item names: `default`, a class, or a label.
fn target_of(name: &str, label_index: &HashMap<String, usize>) -> Option<Target> {
    if name == "default" {
        return Some(Target::Default);
    }
    if let Ok(class) = Class::from_str(name) {
        return Some(Target::Class(class));
    }
    label_index.get(name).map(|&i| Target::Label(i))
}

fn known_labels(label_index: &HashMap<String, usize>) -> String {
    let mut names: Vec<&str> = label_index.keys().map(String::as_str).collect();
    names.sort_unstable();
    if names.is_empty() {
        "(none)".to_string()
    } else {
        names.join(", ")
    }
}

fn list_of<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(", ")
}
