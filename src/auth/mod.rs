//! Authentication that tokengate terminates itself. By default authentication passes
//! through: the upstream challenges the client and tokengate relays the messages. With an
//! `auth_query`, tokengate completes SCRAM-SHA-256 with the client (offering
//! SCRAM-SHA-256-PLUS bound to its own certificate on TLS connections) and then logs in
//! upstream as the same role with the ClientKey recovered from the client's proof
//! ([`scram`]). The role's stored secret is read per login by [`lookup::AuthLookup`].
pub mod binding;
pub mod lookup;
pub mod messages;
pub mod scram;
