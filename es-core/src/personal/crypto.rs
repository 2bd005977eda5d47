//! The stored form of personal values, and sealing and opening them with a subject's key
//! (XChaCha20-Poly1305, an authenticated cipher from RustCrypto).
//!
//! A value moves through three forms, each told by a prefix no UTF-8 text starts with
//! (`0xF0 0x00`):
//! - *to seal*, `F0 00 'e' 's' '0'` + the plain value: what `#[derive(Event)]` encodes for a
//!   personal field, in memory only ([`validate_append`](crate::store::validate_append)
//!   refuses it, so plain personal data never reaches a store);
//! - *sealed*, `F0 00 'e' 's' '1'` + the key's generation (4 bytes, big-endian) + a random
//!   24-byte nonce + the ciphertext and its 16-byte tag: what is stored. The associated data
//!   binds it to its subject and field name, so it cannot be moved to another;
//! - *erased*, `F0 00 'e' 's' 'X'`: what a read yields once the subject's key is gone; the
//!   field decodes as its `Default` ([`Personal::Erased`](super::Personal) for a marker).

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::codec::Fields;

/// The prefix of a value to seal.
pub const TO_SEAL: &[u8] = b"\xF0\x00es0";
/// The prefix of a sealed value.
pub const SEALED: &[u8] = b"\xF0\x00es1";
/// An erased value.
pub const ERASED: &[u8] = b"\xF0\x00esX";

const GENERATION: usize = 4;
const NONCE: usize = 24;

/// A data subject's key: its generation (a subject erased and written again gets a new
/// one) and 256 key bits. Its `Debug` shows the generation only.
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectKey {
    /// Which key of the subject this is: 1, then one more after each erasure.
    pub generation: u32,
    /// The key.
    pub key: [u8; 32],
}

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubjectKey")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl SubjectKey {
    /// A new random key (from the operating system's generator) of `generation`.
    pub fn generate(generation: u32) -> Self {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        SubjectKey {
            generation,
            key: key.into(),
        }
    }
}

/// `plain` marked to be sealed.
pub(crate) fn to_seal(mut plain: Vec<u8>) -> Vec<u8> {
    plain.splice(0..0, TO_SEAL.iter().copied());
    plain
}

/// The associated data of a value: its subject and field name.
fn associated(subject: &str, field: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(subject.len() + field.len() + 1);
    aad.extend_from_slice(subject.as_bytes());
    aad.push(0);
    aad.extend_from_slice(field.as_bytes());
    aad
}

/// Seals the plain value `plain` of `field` of `subject` with `key`. Fails only for a value
/// too large for the cipher (256 GiB).
pub(crate) fn seal(
    key: &SubjectKey,
    subject: &str,
    field: &str,
    plain: &[u8],
) -> Result<Vec<u8>, SealError> {
    let cipher = XChaCha20Poly1305::new(&key.key.into());
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let aad = associated(subject, field);
    let sealed = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plain,
                aad: &aad,
            },
        )
        .map_err(|_| SealError {
            field: field.to_owned(),
        })?;
    let mut out = Vec::with_capacity(SEALED.len() + GENERATION + NONCE + sealed.len());
    out.extend_from_slice(SEALED);
    out.extend_from_slice(&key.generation.to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// A personal value the cipher could not seal (too large); nothing is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("personal field `{field}` could not be encrypted (too large for the cipher)")]
pub struct SealError {
    /// The field.
    pub field: String,
}

/// The generation of the key a sealed value needs (`None`: malformed).
pub(crate) fn generation_of(sealed: &[u8]) -> Option<u32> {
    let rest = sealed.strip_prefix(SEALED)?;
    let generation: [u8; GENERATION] = rest.get(..GENERATION)?.try_into().ok()?;
    Some(u32::from_be_bytes(generation))
}

/// Why a sealed value could not be opened with the key of its generation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Too short, or not a sealed value.
    #[error("a malformed sealed value")]
    Malformed,
    /// The key does not open it: another key, or the value was changed.
    #[error("the subject's key does not open it (another key, or the value was changed)")]
    Unauthentic,
}

/// Opens the sealed value `sealed` of `field` of `subject` with `key` (of its generation).
pub(crate) fn open(
    key: &SubjectKey,
    subject: &str,
    field: &str,
    sealed: &[u8],
) -> Result<Vec<u8>, OpenError> {
    let rest = sealed.strip_prefix(SEALED).ok_or(OpenError::Malformed)?;
    if rest.len() < GENERATION + NONCE + 16 {
        return Err(OpenError::Malformed);
    }
    let (nonce, ciphertext) = rest[GENERATION..].split_at(NONCE);
    let cipher = XChaCha20Poly1305::new(&key.key.into());
    let aad = associated(subject, field);
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .map_err(|_| OpenError::Unauthentic)
}

/// Seals every value of `fields` marked to be sealed (what `#[derive(Event)]` encodes for a
/// personal field) with `key`, for `subject`: what [`Shredded`](super::Shredded) stores.
pub fn seal_fields(key: &SubjectKey, subject: &str, fields: Fields) -> Result<Fields, SealError> {
    let mut sealed = Fields::with_capacity(fields.len());
    for (name, value) in fields.into_pairs() {
        match value.strip_prefix(TO_SEAL) {
            Some(plain) => {
                let value = seal(key, subject, &name, plain)?;
                sealed.push(name, value);
            }
            None => sealed.push(name, value),
        }
    }
    Ok(sealed)
}

/// Opens every sealed value of `fields` with `key`, the subject's current key (`None`: it
/// has none): a value of another generation, or with no key, is erased. The error names
/// the field its key does not open.
pub fn open_fields(
    key: Option<&SubjectKey>,
    subject: &str,
    fields: Fields,
) -> Result<Fields, (String, OpenError)> {
    let mut opened = Fields::with_capacity(fields.len());
    for (name, value) in fields.into_pairs() {
        if !value.starts_with(SEALED) {
            opened.push(name, value);
            continue;
        }
        let value = match key {
            Some(key) if generation_of(&value) == Some(key.generation) => {
                match open(key, subject, &name, &value) {
                    Ok(plain) => plain,
                    Err(error) => return Err((name.to_string(), error)),
                }
            }
            // No key of its generation: erased (a later generation means erased, then
            // written again).
            _ => ERASED.to_vec(),
        };
        opened.push(name, value);
    }
    Ok(opened)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_with_its_key_subject_and_field_only() {
        let key = SubjectKey::generate(3);
        let sealed = seal(&key, "duffy", "name", b"Duffy").expect("seals");
        assert!(!sealed.windows(5).any(|w| w == b"Duffy"), "no plain text");
        assert_eq!(generation_of(&sealed), Some(3));
        assert_eq!(
            open(&key, "duffy", "name", &sealed).as_deref(),
            Ok(&b"Duffy"[..])
        );
        let other = SubjectKey::generate(3);
        assert_eq!(
            open(&other, "duffy", "name", &sealed),
            Err(OpenError::Unauthentic)
        );
        assert_eq!(
            open(&key, "bugs", "name", &sealed),
            Err(OpenError::Unauthentic)
        );
        assert_eq!(
            open(&key, "duffy", "surname", &sealed),
            Err(OpenError::Unauthentic)
        );
        let mut changed = sealed.clone();
        *changed.last_mut().expect("bytes") ^= 1;
        assert_eq!(
            open(&key, "duffy", "name", &changed),
            Err(OpenError::Unauthentic)
        );
        assert_eq!(
            open(&key, "duffy", "name", &sealed[..20]),
            Err(OpenError::Malformed)
        );
        assert_eq!(to_seal(b"x".to_vec()), b"\xF0\x00es0x");
        assert!(format!("{key:?}").contains("generation: 3"));
    }
}
