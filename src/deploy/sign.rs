//! Signed deployment records. Kafka tells a consumer nothing of who produced a record, so
//! without signatures anyone who can write the control topic can deploy. `vaxpulse models`
//! signs each record (Ed25519) with a private key from a file; replicas verify it against the
//! public keys pinned in their config (`deploy.trusted_keys`, several for rotation).
//!
//! Guarantee: once any key is trusted, a record is admitted only when it carries a valid
//! signature by one of them over [`signed_bytes`] — the group it is for and every field of the
//! record (epoch, champion, shadows with their weights hashes, actor, time, reason).

use std::path::Path;

use anyhow::Context;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Deployment, RecordError};
use crate::config::DeployConfig;

/// The signature carried by a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSignature {
    /// [`key_id`] of the signing key (which trusted key to verify with).
    pub key_id: String,
    /// The Ed25519 signature, hex.
    pub signature: String,
}

/// What is signed: a domain tag, the group, and the record without its signature.
pub fn signed_bytes(group: &str, d: &Deployment) -> Vec<u8> {
    let unsigned = Deployment {
        signature: None,
        ..d.clone()
    };
    let mut out = format!("vaxpulse-deployment-v1\n{group}\n").into_bytes();
    out.extend(serde_json::to_vec(&unsigned).expect("a deployment serialises; this is a bug"));
    out
}

/// A short, stable name of a public key: the first 16 hex digits of its sha256.
pub fn key_id(key: &VerifyingKey) -> String {
    hex(&Sha256::digest(key.as_bytes())[..8])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim();
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A public key as written in `deploy.trusted_keys` (64 hex digits).
pub fn parse_public_key(s: &str) -> Result<VerifyingKey, String> {
    unhex::<32>(s)
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
        .ok_or_else(|| {
            "a trusted key must be 64 hex digits, as `vaxpulse models keygen` prints it".into()
        })
}

/// The public half of `key` as `deploy.trusted_keys` takes it, with its [`key_id`].
pub fn public_key(key: &SigningKey) -> (String, String) {
    let v = key.verifying_key();
    (hex(v.as_bytes()), key_id(&v))
}

/// A new signing key (from the operating system's random source).
pub fn generate() -> SigningKey {
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
    SigningKey::from_bytes(&seed)
}

/// Writes `key` to a new file at `path`, readable by its owner only; never overwrites.
pub fn write_signing_key(path: &Path, key: &SigningKey) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create {} (it must not exist yet: a key is never overwritten)",
                path.display()
            )
        })?;
    writeln!(f, "{}", hex(&key.to_bytes()))?;
    Ok(())
}

/// Reads a signing key written by [`write_signing_key`]. Errors never show the file's content.
pub fn read_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the signing key {}", path.display()))?;
    let seed = unhex::<32>(&text).with_context(|| {
        format!(
            "{} is not a signing key (64 hex digits, as `vaxpulse models keygen` writes it)",
            path.display()
        )
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Signs `d` for `group`.
pub fn sign(key: &SigningKey, group: &str, d: &Deployment) -> RecordSignature {
    RecordSignature {
        key_id: key_id(&key.verifying_key()),
        signature: hex(&key.sign(&signed_bytes(group, d)).to_bytes()),
    }
}

/// The keys a replica trusts (`deploy.trusted_keys`).
#[derive(Clone, Default)]
pub struct Trust {
    keys: Vec<(String, VerifyingKey)>,
}

impl Trust {
    pub fn from_config(cfg: &DeployConfig) -> Result<Self, String> {
        let keys = cfg
            .trusted_keys
            .iter()
            .map(|k| parse_public_key(k).map(|v| (key_id(&v), v)))
            .collect::<Result<_, _>>()?;
        Ok(Trust { keys })
    }

    /// No key trusted: records are admitted unsigned (a local demo; said at start-up).
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `d`'s signature for `group`; the id of the key that signed it (`None` while no
    /// key is trusted).
    pub fn verify(&self, group: &str, d: &Deployment) -> Result<Option<String>, RecordError> {
        if self.is_open() {
            return Ok(None);
        }
        let Some(sig) = &d.signature else {
            return Err(RecordError::Unsigned);
        };
        let Some((id, key)) = self.keys.iter().find(|(id, _)| *id == sig.key_id) else {
            return Err(RecordError::UnknownKey(short(&sig.key_id)));
        };
        let bytes = unhex::<64>(&sig.signature).ok_or(RecordError::BadSignature(id.clone()))?;
        key.verify(&signed_bytes(group, d), &Signature::from_bytes(&bytes))
            .map_err(|_| RecordError::BadSignature(id.clone()))?;
        Ok(Some(id.clone()))
    }
}

/// A key id from a record, cut for messages and rows (a hostile record may put anything there).
pub fn short(s: &str) -> String {
    s.chars().take(16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelId;

    fn record() -> Deployment {
        let mut d = Deployment::bootstrap(ModelId::parse("demo@1#aaaaaaaaaaaa").unwrap());
        d.epoch = 3;
        d
    }

    fn trusting(keys: &[&SigningKey]) -> Trust {
        Trust::from_config(&DeployConfig {
            trusted_keys: keys.iter().map(|k| public_key(k).0).collect(),
            ..DeployConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn a_record_signed_by_a_trusted_key_is_admitted_and_names_the_key() {
        let (old, new) = (generate(), generate());
        let trust = trusting(&[&old, &new]);
        let mut d = record();
        d.signature = Some(sign(&new, "g", &d));
        assert_eq!(
            trust.verify("g", &d),
            Ok(Some(key_id(&new.verifying_key())))
        );
        let back: Deployment = serde_json::from_slice(&serde_json::to_vec(&d).unwrap()).unwrap();
        assert!(trust.verify("g", &back).is_ok(), "survives the wire");
    }

    #[test]
    fn unsigned_tampered_foreign_and_other_group_records_are_refused() {
        let (key, stranger) = (generate(), generate());
        let trust = trusting(&[&key]);
        let d = record();
        assert_eq!(trust.verify("g", &d), Err(RecordError::Unsigned));
        let mut signed = d.clone();
        signed.signature = Some(sign(&key, "g", &signed));
        let mut tampered = signed.clone();
        tampered
            .shadows
            .push(ModelId::parse("evil@1#bbbbbbbbbbbb").unwrap());
        assert!(matches!(
            trust.verify("g", &tampered),
            Err(RecordError::BadSignature(_))
        ));
        assert!(matches!(
            trust.verify("other-group", &signed),
            Err(RecordError::BadSignature(_))
        ));
        let mut foreign = d.clone();
        foreign.signature = Some(sign(&stranger, "g", &foreign));
        assert!(matches!(
            trust.verify("g", &foreign),
            Err(RecordError::UnknownKey(_))
        ));
        let mut garbage = signed;
        garbage.signature.as_mut().unwrap().signature = "zz".repeat(64);
        assert!(matches!(
            trust.verify("g", &garbage),
            Err(RecordError::BadSignature(_))
        ));
        assert_eq!(Trust::default().verify("g", &d), Ok(None), "no key trusted");
    }

    #[test]
    fn keys_round_trip_through_their_files_and_bad_ones_say_what_is_expected() {
        let dir = std::env::temp_dir().join(format!("vaxpulse-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("deploy.key");
        let _ = std::fs::remove_file(&path);
        let key = generate();
        write_signing_key(&path, &key).unwrap();
        assert!(write_signing_key(&path, &key).is_err(), "never overwritten");
        assert_eq!(read_signing_key(&path).unwrap().to_bytes(), key.to_bytes());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "owner only");
        std::fs::write(&path, "not a key, and a secret").unwrap();
        let e = format!("{:#}", read_signing_key(&path).unwrap_err());
        assert!(e.contains("64 hex digits") && !e.contains("secret"), "{e}");
        assert!(parse_public_key("abc").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
