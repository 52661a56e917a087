//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, on both sides of tokengate:
//!
//! - [`ServerExchange`]: tokengate verifies the client against the role's stored secret
//!   (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`), optionally with
//!   `tls-server-end-point` channel binding to tokengate's own certificate. A valid proof
//!   yields the ClientKey: `ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage)`, checked
//!   by `H(ClientKey) == StoredKey`.
//! - [`ClientExchange`]: tokengate logs in upstream as the same role with that ClientKey. The
//!   server's salt and iteration count must be the secret's (same `pg_authid` row), so the
//!   upstream proof is `ClientKey XOR HMAC(StoredKey, AuthMessage')`, and the server's final
//!   signature is checked with the ServerKey, which authenticates the upstream to tokengate.
//!
//! The password itself is never known to tokengate. Every key is zeroized when dropped.
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The only channel binding type PostgreSQL implements.
const TLS_SERVER_END_POINT: &str = "tls-server-end-point";
/// Nonce bytes before base64 (PostgreSQL uses 18).
const NONCE_BYTES: usize = 18;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// PostgreSQL's own wording for the `y` flag when the server offers channel binding.
    #[error("SCRAM channel binding negotiation error")]
    Downgrade,
    #[error("SCRAM channel binding check failed")]
    BindingMismatch,
    #[error("the client selected {0}, which tokengate did not offer")]
    Mechanism(String),
    #[error("the client's SCRAM proof is wrong")]
    WrongProof,
    #[error("the upstream's SCRAM parameters differ from the looked-up secret")]
    SecretMismatch,
    #[error("the upstream's SCRAM server signature is wrong")]
    ServerSignature,
}

/// A role's stored SCRAM secret, as in `pg_authid.rolpassword`.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct ScramSecret {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramSecret([redacted])")
    }
}

impl ScramSecret {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`; `None` for anything
    /// else (an MD5 hash, a plaintext password, garbage).
    pub fn parse(text: &str) -> Option<ScramSecret> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations: u32 = iterations.parse().ok().filter(|i| *i > 0)?;
        let salt = B64.decode(salt).ok().filter(|s| !s.is_empty())?;
        let stored = Zeroizing::new(B64.decode(stored).ok()?);
        let server = Zeroizing::new(B64.decode(server).ok()?);
        Some(ScramSecret {
            iterations,
            salt,
            stored_key: stored.as_slice().try_into().ok()?,
            server_key: server.as_slice().try_into().ok()?,
        })
    }

    /// The secret PostgreSQL stores for `password` (tests; PostgreSQL applies SASLprep first).
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramSecret {
        let salted = salted_password(password.as_bytes(), salt, iterations);
        let client_key = Zeroizing::new(hmac(&salted[..], b"Client Key"));
        ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(&client_key[..]).into(),
            server_key: hmac(&salted[..], b"Server Key"),
        }
    }

    /// A secret for a role the lookup does not know, like PostgreSQL's mock authentication:
    /// the salt is derived from `nonce` and the role name (stable, so repeated attempts look
    /// alike), and the keys are random, so no proof verifies. The exchange then fails only at
    /// the end, with the same error as a wrong password: unknown roles cannot be told apart.
    pub fn mock(nonce: &[u8; 32], user: &str) -> ScramSecret {
        let mut salt = hmac(nonce, user.as_bytes()).to_vec();
        salt.truncate(16);
        let mut keys = [0u8; 64];
        rand::rng().fill(&mut keys[..]);
        let mut secret = ScramSecret {
            iterations: 4096,
            salt,
            stored_key: [0; 32],
            server_key: [0; 32],
        };
        secret.stored_key.copy_from_slice(&keys[..32]);
        secret.server_key.copy_from_slice(&keys[32..]);
        keys.zeroize();
        secret
    }

    fn server_signature(&self, auth_message: &[u8]) -> [u8; 32] {
        hmac(&self.server_key, auth_message)
    }
}

/// A ClientKey recovered from a verified proof.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct ClientKey([u8; 32]);

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; the error case cannot happen.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one output block (Hi() of RFC 5802); used only for test secrets.
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Zeroizing<[u8; 32]> {
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &block);
    let mut out = Zeroizing::new(u);
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, b) in out.iter_mut().zip(u) {
            *o ^= b;
        }
    }
    u.zeroize();
    out
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for i in 0..32 {
        out[i] = a[i] ^ b[i];
    }
    out
}

fn nonce() -> String {
    let mut raw = [0u8; NONCE_BYTES];
    rand::rng().fill(&mut raw[..]);
    B64.encode(raw)
}

/// Splits `k=value` attributes.
fn attr(part: &str, key: char) -> Result<&str, ScramError> {
    let mut chars = part.chars();
    if chars.next() == Some(key) && chars.next() == Some('=') {
        Ok(&part[2..])
    } else {
        Err(ScramError::Malformed("unexpected attribute"))
    }
}

fn printable_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// How the client's gs2 header answered channel binding.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Gs2 {
    /// `n`: no channel binding.
    None,
    /// `y`: the client could bind but thinks the server cannot.
    ClientOnly,
    /// `p=tls-server-end-point`.
    ServerEndPoint,
}

/// tokengate as the SCRAM server, facing the client.
pub struct ServerExchange {
    gs2_header: String,
    binding: Gs2,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ServerExchange {
    /// The AuthenticationSASL mechanism list: `-PLUS` first when tokengate can bind to its own
    /// certificate on this (TLS) connection, as PostgreSQL orders them.
    pub fn mechanisms(plus: bool) -> Vec<&'static str> {
        if plus {
            vec![SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
        } else {
            vec![SCRAM_SHA_256]
        }
    }

    /// Reads the SASLInitialResponse (`mechanism`, `data`) and builds the server-first-message.
    /// `plus_offered` says whether SCRAM-SHA-256-PLUS was in the list.
    pub fn start(
        mechanism: &str,
        data: &[u8],
        plus_offered: bool,
        secret: &ScramSecret,
    ) -> Result<ServerExchange, ScramError> {
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS if plus_offered => true,
            other => return Err(ScramError::Mechanism(other.to_string())),
        };
        let text = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut parts = text.splitn(3, ',');
        let (Some(flag), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(ScramError::Malformed("gs2 header"));
        };
        let binding = match flag {
            "n" => Gs2::None,
            "y" => Gs2::ClientOnly,
            f => match f.strip_prefix("p=") {
                Some(TLS_SERVER_END_POINT) => Gs2::ServerEndPoint,
                Some(_) => return Err(ScramError::Malformed("unsupported channel binding type")),
                None => return Err(ScramError::Malformed("gs2 channel binding flag")),
            },
        };
        // PostgreSQL's rules: `p` only with -PLUS and -PLUS only with `p`; `y` is a downgrade
        // when the server offers binding.
        match (&binding, plus) {
            (Gs2::ServerEndPoint, true) | (Gs2::None, false) => {}
            (Gs2::ClientOnly, false) if !plus_offered => {}
            (Gs2::ClientOnly, false) => return Err(ScramError::Downgrade),
            _ => {
                return Err(ScramError::Malformed(
                    "channel binding flag and mechanism differ",
                ));
            }
        }
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "authorization identities are not supported",
            ));
        }
        let mut fields = bare.split(',');
        let (Some(user), Some(client_nonce)) = (fields.next(), fields.next()) else {
            return Err(ScramError::Malformed("client-first-message"));
        };
        attr(user, 'n')?; // PostgreSQL takes the user from the StartupMessage.
        let client_nonce = attr(client_nonce, 'r')?;
        if !printable_nonce(client_nonce) || fields.next().is_some() {
            return Err(ScramError::Malformed("client nonce or extensions"));
        }
        let nonce = format!("{client_nonce}{}", self::nonce());
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&secret.salt),
            secret.iterations
        );
        Ok(ServerExchange {
            gs2_header: format!("{flag},{authzid},"),
            binding,
            client_first_bare: bare.to_string(),
            server_first,
            nonce,
        })
    }

    pub fn server_first(&self) -> &[u8] {
        self.server_first.as_bytes()
    }

    /// Verifies the client-final-message. `cert_hash` is tokengate's certificate hash
    /// (tls-server-end-point) on this connection. Returns the server-final-message and the
    /// recovered ClientKey.
    pub fn finish(
        self,
        data: &[u8],
        cert_hash: Option<&[u8]>,
        secret: &ScramSecret,
    ) -> Result<(Vec<u8>, ClientKey), ScramError> {
        let text = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("client-final-message without proof"))?;
        let mut fields = without_proof.split(',');
        let (Some(cbind), Some(nonce)) = (fields.next(), fields.next()) else {
            return Err(ScramError::Malformed("client-final-message"));
        };
        let mut expected_cbind = self.gs2_header.as_bytes().to_vec();
        if self.binding == Gs2::ServerEndPoint {
            expected_cbind.extend_from_slice(cert_hash.ok_or(ScramError::BindingMismatch)?);
        }
        let cbind = B64
            .decode(attr(cbind, 'c')?)
            .map_err(|_| ScramError::Malformed("channel binding data"))?;
        if cbind != expected_cbind {
            return Err(ScramError::BindingMismatch);
        }
        if attr(nonce, 'r')? != self.nonce {
            return Err(ScramError::Malformed("nonce mismatch"));
        }
        let proof = Zeroizing::new(
            B64.decode(proof)
                .map_err(|_| ScramError::Malformed("proof encoding"))?,
        );
        let proof: &[u8; 32] = proof
            .as_slice()
            .try_into()
            .map_err(|_| ScramError::Malformed("proof length"))?;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let mut signature = hmac(&secret.stored_key, auth_message.as_bytes());
        let client_key = ClientKey(xor(proof, &signature));
        signature.zeroize();
        let stored: [u8; 32] = Sha256::digest(client_key.0).into();
        if !bool::from(stored.ct_eq(&secret.stored_key)) {
            return Err(ScramError::WrongProof);
        }
        let server_final = format!(
            "v={}",
            B64.encode(secret.server_signature(auth_message.as_bytes()))
        );
        Ok((server_final.into_bytes(), client_key))
    }
}

/// tokengate as the SCRAM client, facing the upstream, proving the role with its ClientKey.
pub struct ClientExchange {
    gs2_header: String,
    cert_hash: Option<Vec<u8>>,
    client_first_bare: String,
    nonce: String,
    expected_server_signature: Option<[u8; 32]>,
}

impl ClientExchange {
    /// Picks the mechanism: -PLUS bound to the upstream's certificate when the server offers it
    /// and the leg is TLS with a hashable certificate; otherwise plain SCRAM-SHA-256 with `n`
    /// (never `y`, which PostgreSQL would take for a downgrade on a TLS connection).
    pub fn new(offered: &[String], upstream_cert_hash: Option<Vec<u8>>) -> Option<ClientExchange> {
        let plus = upstream_cert_hash.is_some() && offered.iter().any(|m| m == SCRAM_SHA_256_PLUS);
        if !plus && !offered.iter().any(|m| m == SCRAM_SHA_256) {
            return None;
        }
        let nonce = nonce();
        Some(ClientExchange {
            gs2_header: if plus {
                format!("p={TLS_SERVER_END_POINT},,")
            } else {
                "n,,".to_string()
            },
            cert_hash: if plus { upstream_cert_hash } else { None },
            client_first_bare: format!("n=,r={nonce}"),
            nonce,
            expected_server_signature: None,
        })
    }

    pub fn mechanism(&self) -> &'static str {
        if self.cert_hash.is_some() {
            SCRAM_SHA_256_PLUS
        } else {
            SCRAM_SHA_256
        }
    }

    pub fn client_first(&self) -> Vec<u8> {
        format!("{}{}", self.gs2_header, self.client_first_bare).into_bytes()
    }

    /// Answers the server-first-message with the proof made from `client_key`.
    pub fn client_final(
        &mut self,
        server_first: &[u8],
        secret: &ScramSecret,
        client_key: &ClientKey,
    ) -> Result<Vec<u8>, ScramError> {
        let text =
            std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut fields = text.split(',');
        let (Some(nonce), Some(salt), Some(iterations)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(ScramError::Malformed("server-first-message"));
        };
        let nonce = attr(nonce, 'r')?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Malformed("server nonce"));
        }
        let salt = B64
            .decode(attr(salt, 's')?)
            .map_err(|_| ScramError::Malformed("salt"))?;
        let iterations: u32 = attr(iterations, 'i')?
            .parse()
            .map_err(|_| ScramError::Malformed("iteration count"))?;
        if salt != secret.salt || iterations != secret.iterations {
            return Err(ScramError::SecretMismatch);
        }
        let mut cbind = self.gs2_header.as_bytes().to_vec();
        if let Some(hash) = &self.cert_hash {
            cbind.extend_from_slice(hash);
        }
        let without_proof = format!("c={},r={nonce}", B64.encode(cbind));
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let mut signature = hmac(&secret.stored_key, auth_message.as_bytes());
        let mut proof = xor(&client_key.0, &signature);
        signature.zeroize();
        self.expected_server_signature = Some(secret.server_signature(auth_message.as_bytes()));
        let message = format!("{without_proof},p={}", B64.encode(proof));
        proof.zeroize();
        Ok(message.into_bytes())
    }

    /// Checks the server-final-message: only the holder of the ServerKey can produce it.
    pub fn verify_server_final(&self, data: &[u8]) -> Result<(), ScramError> {
        let text = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let first = text.split(',').next().unwrap_or_default();
        let v = B64
            .decode(attr(first, 'v').map_err(|_| ScramError::ServerSignature)?)
            .map_err(|_| ScramError::Malformed("server signature encoding"))?;
        match &self.expected_server_signature {
            Some(expected) if bool::from(v.ct_eq(expected)) => Ok(()),
            _ => Err(ScramError::ServerSignature),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client with the password, as RFC 5802 computes it, to drive the server side.
    fn client_proof(password: &str, secret: &ScramSecret, auth_message: &str) -> [u8; 32] {
        let salted = salted_password(password.as_bytes(), &secret.salt, secret.iterations);
        let client_key = hmac(&salted[..], b"Client Key");
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        xor(&client_key, &hmac(&stored, auth_message.as_bytes()))
    }

    fn login(
        password: &str,
        gs2: &str,
        mechanism: &str,
        hash: Option<&[u8]>,
    ) -> Result<ClientKey, ScramError> {
        let secret = ScramSecret::from_password("pw", b"0123456789abcdef", 4096);
        let bare = "n=,r=clientnonce";
        let ex = ServerExchange::start(
            mechanism,
            format!("{gs2}{bare}").as_bytes(),
            hash.is_some(),
            &secret,
        )?;
        let server_first = String::from_utf8(ex.server_first().to_vec()).unwrap();
        let nonce = server_first.split(',').next().unwrap();
        let mut cbind = gs2.as_bytes().to_vec();
        if gs2.starts_with('p') {
            cbind.extend_from_slice(hash.unwrap());
        }
        let without = format!("c={},{nonce}", B64.encode(&cbind));
        let am = format!("{bare},{server_first},{without}");
        let proof = client_proof(password, &secret, &am);
        let (server_final, key) = ex.finish(
            format!("{without},p={}", B64.encode(proof)).as_bytes(),
            hash,
            &secret,
        )?;
        let expected = secret.server_signature(am.as_bytes());
        assert_eq!(
            String::from_utf8(server_final).unwrap(),
            format!("v={}", B64.encode(expected))
        );
        Ok(key)
    }

    #[test]
    fn parses_postgres_secrets_only() {
        // The shape PostgreSQL stores (keys made up).
        let s = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$\
                 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:\
                 AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
        let secret = ScramSecret::parse(s).unwrap();
        assert_eq!(secret.iterations, 4096);
        assert_eq!(secret.server_key, [1u8; 32]);
        assert!(ScramSecret::parse("md5d41d8cd98f00b204e9800998ecf8427e").is_none());
        assert!(ScramSecret::parse("SCRAM-SHA-256$0:c2FsdA==$AA==:AA==").is_none());
        assert!(format!("{secret:?}").contains("redacted"));
    }

    #[test]
    fn the_right_password_yields_the_client_key() {
        assert!(login("pw", "n,,", SCRAM_SHA_256, None).is_ok());
        assert!(login("pw", "y,,", SCRAM_SHA_256, None).is_ok());
        let hash = [7u8; 32];
        assert!(
            login(
                "pw",
                "p=tls-server-end-point,,",
                SCRAM_SHA_256_PLUS,
                Some(&hash)
            )
            .is_ok()
        );
    }

    #[test]
    fn wrong_password_and_binding_tricks_fail() {
        assert_eq!(
            login("nope", "n,,", SCRAM_SHA_256, None).err(),
            Some(ScramError::WrongProof)
        );
        let hash = [7u8; 32];
        // `y` while -PLUS is on offer is a downgrade.
        assert_eq!(
            login("pw", "y,,", SCRAM_SHA_256, Some(&hash)).err(),
            Some(ScramError::Downgrade)
        );
        // -PLUS without `p`, `p` without -PLUS, -PLUS when not offered.
        assert!(login("pw", "n,,", SCRAM_SHA_256_PLUS, Some(&hash)).is_err());
        assert!(login("pw", "p=tls-server-end-point,,", SCRAM_SHA_256, Some(&hash)).is_err());
        assert!(login("pw", "p=tls-server-end-point,,", SCRAM_SHA_256_PLUS, None).is_err());
        assert!(login("pw", "n,a=admin,", SCRAM_SHA_256, None).is_err());
    }

    #[test]
    fn upstream_proof_from_the_recovered_client_key() {
        let secret = ScramSecret::from_password("pw", b"0123456789abcdef", 4096);
        let key = login("pw", "n,,", SCRAM_SHA_256, None).unwrap();
        let mut client =
            ClientExchange::new(&[SCRAM_SHA_256_PLUS.into(), SCRAM_SHA_256.into()], None).unwrap();
        assert_eq!(client.mechanism(), SCRAM_SHA_256);
        let first = String::from_utf8(client.client_first()).unwrap();
        let bare = first.strip_prefix("n,,").unwrap();
        // Play the server with the same secret.
        let ex = ServerExchange::start(SCRAM_SHA_256, first.as_bytes(), false, &secret).unwrap();
        assert!(bare.starts_with("n=,r="));
        let fin = client
            .client_final(ex.server_first(), &secret, &key)
            .unwrap();
        let (server_final, _) = ex.finish(&fin, None, &secret).unwrap();
        assert!(client.verify_server_final(&server_final).is_ok());
        assert_eq!(
            client.verify_server_final(b"v=AAAA"),
            Err(ScramError::ServerSignature)
        );
        // A different salt upstream means a different secret: refuse.
        let other = ScramSecret::from_password("pw", b"another salt....", 4096);
        let ex = ServerExchange::start(SCRAM_SHA_256, first.as_bytes(), false, &other).unwrap();
        assert_eq!(
            client.client_final(ex.server_first(), &secret, &key).err(),
            Some(ScramError::SecretMismatch)
        );
    }
}
