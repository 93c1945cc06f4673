//! Key pairs: Ed25519 by default, P-256 for keys a TPM or HSM must hold.

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, SignatureAlgorithm};

/// The kind of key a certificate is issued for.
///
/// Ed25519 by default: a fresh mutual-TLS handshake per report is most of the ingest's CPU, and
/// with Ed25519 keys and certificate signatures both sides of it cost about a quarter less than
/// with ECDSA P-256 (docs/benchmarks.md). P-256 is for appliances whose key lives in a TPM or
/// HSM that only does NIST curves; the ingest accepts either, and any CA key type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    #[default]
    Ed25519,
    #[value(name = "p256")]
    P256,
}

impl KeyType {
    fn algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            Self::Ed25519 => &PKCS_ED25519,
            Self::P256 => &PKCS_ECDSA_P256_SHA256,
        }
    }

    /// The type of the private key in `pem`, if it is one of ours: a renewal keeps the kind of
    /// key the appliance chose.
    pub fn of_pem(pem: &str) -> Option<KeyType> {
        let key = KeyPair::from_pem(pem).ok()?;
        [Self::Ed25519, Self::P256]
            .into_iter()
            .find(|t| key.algorithm() == t.algorithm())
    }

    /// A new key pair of this type, from the operating system's random source.
    pub fn generate(self) -> Result<KeyPair, rcgen::Error> {
        let key = KeyPair::generate_for(self.algorithm())?;
        match self {
            Self::P256 => Ok(key),
            Self::Ed25519 => ed25519_pkcs8_v1(&key),
        }
    }
}

/// The DER of ring's Ed25519 keys up to the 32-byte seed: PKCS#8 v2 (RFC 5958), which carries the
/// public key after the seed.
const ED25519_PKCS8_V2_HEAD: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// The same up to the seed in PKCS#8 v1 (RFC 8410), which ends with it.
const ED25519_PKCS8_V1_HEAD: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// `key` as it will be written in PKCS#8 v1: OpenSSL 3.0, and so curl and `openssl pkey`, cannot
/// read the v2 form ring generates ("unsupported"); rustls and rcgen read both.
fn ed25519_pkcs8_v1(key: &KeyPair) -> Result<KeyPair, rcgen::Error> {
    let v2 = key.serialize_der();
    let seed = v2
        .strip_prefix(&ED25519_PKCS8_V2_HEAD)
        .and_then(|rest| rest.get(..32))
        .ok_or(rcgen::Error::CouldNotParseKeyPair)?;
    let mut v1 = ED25519_PKCS8_V1_HEAD.to_vec();
    v1.extend_from_slice(seed);
    KeyPair::from_pkcs8_der_and_sign_algo(
        &rustls_pki_types::PrivatePkcs8KeyDer::from(v1),
        &PKCS_ED25519,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_keys_are_written_as_pkcs8_v1_and_are_the_same_key() {
        let v2 = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let key = ed25519_pkcs8_v1(&v2).unwrap();
        let der = key.serialize_der();
        assert_eq!(der.len(), 48, "v1: the seed and nothing after it");
        assert!(der.starts_with(&ED25519_PKCS8_V1_HEAD));
        assert_eq!(
            key.public_key_raw(),
            v2.public_key_raw(),
            "the same key pair"
        );
        let again = KeyPair::from_pem(&key.serialize_pem()).unwrap();
        assert_eq!(again.public_key_raw(), v2.public_key_raw());
        assert_eq!(
            KeyType::Ed25519.generate().unwrap().serialize_der().len(),
            48
        );
        assert_eq!(
            KeyType::P256.generate().unwrap().algorithm(),
            &PKCS_ECDSA_P256_SHA256
        );
        for t in [KeyType::Ed25519, KeyType::P256] {
            let pem = t.generate().unwrap().serialize_pem();
            assert_eq!(KeyType::of_pem(&pem), Some(t));
        }
        assert_eq!(KeyType::of_pem("junk"), None);
    }
}
