//! Integration tests: real PostgreSQL (started by the harness), real tokengate, real clients
//! (tokio-postgres, psql, and a raw protocol client for message-level checks). Each test
//! compares what arrives through tokengate with what arrives directly.
mod harness;

mod apps;
mod at_rest;
mod at_rest_migrate;
mod attacks;
mod attacks_sql;
mod audit;
mod auth;
mod cancel;
mod catalog;
mod crm;
mod demo;
mod faults;
mod leaks;
mod lookups;
mod messages;
mod metrics;
mod policy;
mod psql;
mod queries;
mod robust;
mod scram;
mod serve;
mod stalls;
mod tls;
mod transactions;
mod usability;
