//! API keys: their text, their record, and the keyed hash that is all the store keeps of them.
//!
//! A key reads `codeb_{role}_{id}{secret}`: `id` is 12 random lowercase hex digits (48 bits),
//! `secret` 32 more (128 bits). The id is no secret: it names the key in `key list`, the audit
//! log and `key revoke`, and it is the store's key, so a presented key is found with one lookup
//! instead of hashing it against every stored key. The role segment is for people reading the
//! key; the authority is the stored record's role.
//!
//! The store keeps HMAC-SHA256 of the whole key under a secret of the state directory's (32
//! random bytes, created with the first key, never shown), not the key: a copy of the database
//! alone lets no one forge or recover a key. A plain SHA-256 would do for 176 random bits; the
//! HMAC costs the same (about a microsecond) and also protects weaker keys should the format
//! ever change. Tags are compared in constant time (`hmac`'s `verify_slice`).
//!
//! No store access here; generating a key draws random bytes, nothing else does I/O.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::roles::Role;

/// Every key begins with this.
pub const KEY_PREFIX: &str = "codeb_";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 16;
const ID_LEN: usize = ID_BYTES * 2;
const TOKEN_LEN: usize = (ID_BYTES + SECRET_BYTES) * 2;
/// The longest well-formed key; anything longer is refused before it is looked at further.
const MAX_KEY_LEN: usize = KEY_PREFIX.len() + Role::Developer.as_str().len() + 1 + TOKEN_LEN;

/// What the store keeps of a key, and what `key list` shows: never the key or its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    pub id: String,
    pub name: Option<String>,
    pub role: Role,
    /// The projects the key is limited to; `None`: every project.
    pub projects: Option<BTreeSet<String>>,
    pub created_ms: u64,
    /// Recorded at most once a minute (see `Store::touch_key`).
    pub last_used_ms: Option<u64>,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
}

impl KeyRecord {
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| now_ms >= e)
    }
}

/// What `key create` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub role: Role,
    pub name: Option<String>,
    /// `None`: every project. Not allowed for an admin key (an admin manages keys, so a limit
    /// would not hold).
    pub projects: Option<BTreeSet<String>>,
    pub expires_in: Option<Duration>,
}

/// A key as created: the only time its text exists. Its `Debug` shows the id only, so that a
/// stray `{:?}` cannot log it.
pub struct IssuedKey {
    key: String,
}

impl IssuedKey {
    /// A fresh key for `role`.
    pub(crate) fn generate(role: Role) -> Result<IssuedKey, getrandom::Error> {
        let mut bytes = [0u8; ID_BYTES + SECRET_BYTES];
        getrandom::fill(&mut bytes)?;
        Ok(IssuedKey {
            key: format!("{KEY_PREFIX}{role}_{}", hex(&bytes)),
        })
    }

    /// The key's text, to print once.
    pub fn expose(&self) -> &str {
        &self.key
    }

    pub fn id(&self) -> &str {
        let token = &self.key[self.key.len() - TOKEN_LEN..];
        &token[..ID_LEN]
    }
}

impl fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedKey")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

/// A presented key, split into its parts (borrowed from the presented text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    /// The role the key's text claims (for people only).
    pub role: Role,
    pub id: &'a str,
    pub secret: &'a str,
}

/// Splits a presented key.
///
/// # Errors
/// [`Rejection::Malformed`] for anything but `codeb_{role}_` and 44 lowercase hex digits; a
/// long string is refused by its length before anything else.
pub fn parse_key(presented: &str) -> Result<ParsedKey<'_>, Rejection> {
    if presented.len() > MAX_KEY_LEN {
        return Err(Rejection::Malformed);
    }
    let rest = presented
        .strip_prefix(KEY_PREFIX)
        .ok_or(Rejection::Malformed)?;
    let (role, token) = rest.split_once('_').ok_or(Rejection::Malformed)?;
    let role: Role = role.parse().map_err(|_| Rejection::Malformed)?;
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if token.len() != TOKEN_LEN || !token.bytes().all(lower_hex) {
        return Err(Rejection::Malformed);
    }
    let (id, secret) = token.split_at(ID_LEN);
    Ok(ParsedKey { role, id, secret })
}

/// Why a presented key was not accepted. Every variant is one answer to the caller (401, no
/// hint which); the variant is for the audit log and the daemon's own log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the key is malformed")]
    Malformed,
    #[error("no key {id}")]
    Unknown { id: String },
    #[error("key {id}: the secret does not match")]
    WrongSecret { id: String },
    #[error("key {id} expired")]
    Expired { id: String },
    #[error("key {id} was revoked")]
    Revoked { id: String },
}

impl Rejection {
    /// The id the presented key named, when it was well formed.
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Rejection::Malformed => None,
            Rejection::Unknown { id }
            | Rejection::WrongSecret { id }
            | Rejection::Expired { id }
            | Rejection::Revoked { id } => Some(id),
        }
    }
}

/// The state directory's HMAC key. Serialized (as hex) only into the store; `Debug` hides it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct HmacSecret(#[serde(with = "hex32")] [u8; 32]);

/// HMAC-SHA256 of a key under the [`HmacSecret`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct KeyTag(#[serde(with = "hex32")] [u8; 32]);

impl HmacSecret {
    pub(crate) fn generate() -> Result<HmacSecret, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(HmacSecret(bytes))
    }

    fn mac(&self, key: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(key.as_bytes());
        mac
    }

    pub(crate) fn tag(&self, key: &str) -> KeyTag {
        KeyTag(self.mac(key).finalize().into_bytes().into())
    }

    /// HMAC-SHA256 of `parts`, each length-prefixed (so that no two lists of parts sign alike).
    pub(crate) fn sign(&self, parts: &[&[u8]]) -> [u8; 32] {
        self.mac_parts(parts).finalize().into_bytes().into()
    }

    /// Whether `tag` starts `parts`' HMAC (at least 16 bytes), compared in constant time.
    pub(crate) fn verify_signed(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        tag.len() >= 16 && self.mac_parts(parts).verify_truncated_left(tag).is_ok()
    }

    fn mac_parts(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// Whether `key` hashes to `tag`, compared in constant time.
    pub(crate) fn verify(&self, key: &str, tag: &KeyTag) -> bool {
        self.mac(key).verify_slice(&tag.0).is_ok()
    }
}

impl fmt::Debug for HmacSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HmacSecret(..)")
    }
}

/// Lower-case hex of `bytes` (keys, tags, and the store's sealed values and ids).
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// 32 bytes as 64 hex digits, in the store's JSON.
mod hex32 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = <&str>::deserialize(d)?;
        let digit = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
        let mut out = [0u8; 32];
        if s.len() != 64 {
            return Err(D::Error::invalid_length(s.len(), &"64 hex digits"));
        }
        for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks(2)) {
            *o = match (digit(pair[0]), digit(pair[1])) {
                (Some(hi), Some(lo)) => hi << 4 | lo,
                _ => return Err(D::Error::custom("not a hex digit")),
            };
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_parses_back_to_its_role_and_id() {
        for role in Role::ALL {
            let key = IssuedKey::generate(role).unwrap();
            let parsed = parse_key(key.expose()).unwrap();
            assert_eq!(parsed.role, role);
            assert_eq!(parsed.id, key.id());
            assert_eq!(parsed.id.len(), 12);
            assert_eq!(parsed.secret.len() * 4, 128, "128 secret bits");
            assert!(key.expose().len() <= MAX_KEY_LEN);
        }
    }

    #[test]
    fn malformed_keys_are_refused_without_a_lookup() {
        let good = IssuedKey::generate(Role::Viewer).unwrap();
        let token = &good.expose()["codeb_viewer_".len()..];
        let huge = "codeb_admin_".to_string() + &"a".repeat(1 << 20);
        let cases = [
            String::new(),
            format!("codex_viewer_{token}"),
            format!("codeb_root_{token}"),
            format!("codeb_viewer_{}", &token[1..]),
            format!("codeb_viewer_{token}0"),
            format!("codeb_viewer_{}", token.to_uppercase()),
            format!("codeb_viewer_{}é", &token[2..]),
            format!("codeb_viewer{token}"),
            huge,
        ];
        for case in &cases {
            assert_eq!(parse_key(case), Err(Rejection::Malformed), "{case:.40}");
        }
    }

    #[test]
    fn an_issued_key_never_shows_in_debug_output() {
        let key = IssuedKey::generate(Role::Admin).unwrap();
        let debug = format!("{key:?}");
        assert!(debug.contains(key.id()));
        assert!(
            !debug.contains(parse_key(key.expose()).unwrap().secret),
            "{debug}"
        );
    }

    #[test]
    fn tags_match_only_the_same_key_under_the_same_secret() {
        let secret = HmacSecret::generate().unwrap();
        let key = IssuedKey::generate(Role::Developer).unwrap();
        let tag = secret.tag(key.expose());
        assert!(secret.verify(key.expose(), &tag));
        let other = IssuedKey::generate(Role::Developer).unwrap();
        assert!(!secret.verify(other.expose(), &tag));
        assert!(!HmacSecret::generate().unwrap().verify(key.expose(), &tag));
        // The role segment is part of what is hashed: relabelling a key breaks it.
        let relabelled = key.expose().replace("developer", "admin");
        assert!(!secret.verify(&relabelled, &tag));
    }

    #[test]
    fn tags_round_trip_through_json_and_refuse_bad_hex() {
        let tag = HmacSecret::generate().unwrap().tag("codeb_viewer_x");
        let json = serde_json::to_string(&tag).unwrap();
        assert_eq!(json.len(), 66);
        assert_eq!(serde_json::from_str::<KeyTag>(&json).unwrap(), tag);
        assert!(serde_json::from_str::<KeyTag>("\"abc\"").is_err());
        assert!(serde_json::from_str::<KeyTag>(&format!("\"{}\"", "zz".repeat(32))).is_err());
    }
}
