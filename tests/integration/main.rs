//! Integration tests: real PostgreSQL (started by the harness), real tokengate, real clients
//! (tokio-postgres, psql, and a raw protocol client for message-level checks). Each test
//! compares what arrives through tokengate with what arrives directly.
mod harness;

mod audit;
mod auth;
mod cancel;
mod catalog;
mod crm;
mod demo;
mod faults;
mod leaks;
mod messages;
mod policy;
mod psql;
mod queries;
mod scram;
mod stalls;
mod tls;
mod usability;
