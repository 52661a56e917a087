//! Policy errors. A file with mistakes yields one [`PolicyError::Invalid`] carrying every
//! [`Diagnostic`], each printed as `file:line:column: message`.
use super::node::Pos;
use std::fmt;

/// One problem in the file: where it is, what is wrong and what is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// `None` only for problems the parser could not place.
    pub pos: Option<Pos>,
    pub message: String,
}

impl Diagnostic {
    pub fn at(pos: Pos, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            pos: Some(pos),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render(file, diagnostics))]
    Invalid {
        file: String,
        diagnostics: Vec<Diagnostic>,
    },
}

impl PolicyError {
    /// The diagnostics of an invalid file (empty for read errors).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            PolicyError::Invalid { diagnostics, .. } => diagnostics,
            PolicyError::Read { .. } => &[],
        }
    }
}

fn render(file: &str, diagnostics: &[Diagnostic]) -> String {
    let mut out = format!(
        "{file}: {} error{} in policy",
        diagnostics.len(),
        if diagnostics.len() == 1 { "" } else { "s" }
    );
    for d in diagnostics {
        out.push('\n');
        out.push_str(&DiagnosticLine { file, d }.to_string());
    }
    out
}

/// `file:line:column: message`.
pub struct DiagnosticLine<'a> {
    pub file: &'a str,
    pub d: &'a Diagnostic,
}

impl fmt::Display for DiagnosticLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.d.pos {
            Some(p) => write!(
                f,
                "{}:{}:{}: {}",
                self.file, p.line, p.column, self.d.message
            ),
            None => write!(f, "{}: {}", self.file, self.d.message),
        }
    }
}
