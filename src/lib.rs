//! tokengate: a transparent PostgreSQL wire-protocol proxy that protects customer data.
//!
//! The tree mirrors the architecture (see README "Architecture"):
//! - [`wire`]: the PostgreSQL wire codec (framing and the few messages we inspect).
//! - [`session`]: the per-connection state machine (startup, auth relay, relay pumps, cancel).
//! - [`net`]: sockets and TLS for both legs (client termination, upstream sslmode).
//! - [`server`]: the listener, accept loop, readiness and graceful shutdown.
//! - [`admin`]: the HTTP admin endpoint (/metrics, /healthz, /readyz).
//! - [`observe`]: metrics and logging setup.
//! - [`protect`]: pure token (FF1) and mask transforms, and keys.
//! - [`policy`]: the YAML policy model, validation, composition and hot reload.
//! - [`catalog`]: the catalog cache (OIDs to column names, `*` expansion, views, roles).
//! - [`atrest`]: `tokengate migrate` and `rekey` for columns stored as tokens.
//! - [`config`]: the serve configuration (file, env, flags).
//! - [`errors`]: the catalogue of user-facing error codes (TG001...).
//! - [`demo`]: `tokengate demo`, a throwaway CRM behind tokengate.
//! - [`embedded_pg`]: a throwaway PostgreSQL for `tokengate demo` and the tests.
//! - [`cli`]: the command-line interface.
#![forbid(unsafe_code)]

pub mod admin;
pub mod alerts;
pub mod atrest;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod demo;
pub mod embedded_pg;
pub mod errors;
pub mod net;
pub mod observe;
pub mod plan;
pub mod policy;
pub mod protect;
pub mod server;
pub mod session;
pub mod sql;
pub mod wire;
