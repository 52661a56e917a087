//! `tls-server-end-point` channel binding data (RFC 5929): the hash of the server's
//! certificate, with the certificate's own signature hash, except that MD5 and SHA-1 become
//! SHA-256. Like PostgreSQL (OpenSSL's `X509_get_signature_nid`), a certificate whose
//! signature names no single hash (RSASSA-PSS, Ed25519) gives no binding data, so -PLUS is
//! then not offered.
use sha2::{Digest, Sha256, Sha384, Sha512};

/// The binding data for a DER certificate, or `None` when its algorithm has no defined hash.
pub fn server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    Some(match signature_hash(cert_der)? {
        Hash::Sha256 => Sha256::digest(cert_der).to_vec(),
        Hash::Sha384 => Sha384::digest(cert_der).to_vec(),
        Hash::Sha512 => Sha512::digest(cert_der).to_vec(),
    })
}

enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// Reads `Certificate.signatureAlgorithm.algorithm` (the OID after `tbsCertificate`).
fn signature_hash(der: &[u8]) -> Option<Hash> {
    let (tag, cert, _) = tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (_tbs_tag, _tbs, rest) = tlv(cert)?;
    let (alg_tag, alg, _) = tlv(rest)?;
    if alg_tag != 0x30 {
        return None;
    }
    let (oid_tag, oid, _) = tlv(alg)?;
    if oid_tag != 0x06 {
        return None;
    }
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01]; // 1.2.840.113549.1.1
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04]; // 1.2.840.10045.4
    const DSA: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03]; // 2.16.840.1.101.3.4.3
    let hash = if let Some(n) = oid.strip_prefix(RSA) {
        match n {
            [0x04] | [0x05] | [0x0b] | [0x0e] => Hash::Sha256, // md5, sha1 -> sha256; sha256; sha224
            [0x0c] => Hash::Sha384,
            [0x0d] => Hash::Sha512,
            _ => return None, // RSASSA-PSS (10) and unknown
        }
    } else if let Some(n) = oid.strip_prefix(ECDSA) {
        match n {
            [0x01] | [0x03, 0x01] | [0x03, 0x02] => Hash::Sha256, // sha1, sha224, sha256
            [0x03, 0x03] => Hash::Sha384,
            [0x03, 0x04] => Hash::Sha512,
            _ => return None,
        }
    } else if let Some([0x01] | [0x02]) = oid.strip_prefix(DSA) {
        Hash::Sha256 // dsa-with-sha224, dsa-with-sha256
    } else {
        return None;
    };
    Some(hash)
}

/// One DER element: (tag, contents, rest). Definite lengths only, as DER requires.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_sha256_certificates_hash_with_sha256() {
        let key = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256 with SHA-256
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der();
        assert_eq!(server_end_point(der).unwrap(), Sha256::digest(der).to_vec());
    }

    #[test]
    fn ed25519_and_garbage_give_nothing() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(server_end_point(cert.der()).is_none());
        assert!(server_end_point(b"\x30\x82\xff").is_none());
        assert!(server_end_point(b"").is_none());
    }
}
