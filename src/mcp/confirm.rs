//! Plan ids: the second step of MCP's changing tools.
//!
//! A changing tool called without `plan_id` returns its plan and a plan id; called again with the
//! same arguments and that id, it carries the plan out. The id is
//! `{fingerprint}.{signature}`:
//!
//! - the fingerprint is the service's (`service::Request::Plan`): a hash of the plan as shown and
//!   of the records of the environments it concerns. The service carries the change out only if,
//!   under the claim of those environments, a fresh computation gives the same fingerprint
//!   (`service::Request::Guarded`), so a plan is never applied to a state that changed after it
//!   was shown ("plan again");
//! - the signature is an HMAC-SHA256 (128 bits) under a secret of the state directory
//!   (`Store::plan_secret`, made once, so ids outlive a daemon restart) over the tool, its
//!   change (the arguments, defaults filled in) and the caller. An id made for another tool,
//!   other arguments (another environment, another image) or another key does not verify, and
//!   an agent cannot make one up without having been shown the plan.
//!
//! No elicitation: over stateless HTTP the server cannot ask the person back, so the second call
//! is the confirmation, and without it nothing happens (the default is to refuse, not to allow).
//!
//! Must not: sign anything secret into an id (the fingerprint hashes no env value), or accept an
//! id it did not sign.

use crate::auth::Caller;
use crate::service::Change;
use crate::store::Store;

/// What a signature is over, besides its parts: a version, so that a later format cannot be
/// confused with this one.
const DOMAIN: &[u8] = b"codeb mcp plan id v1";

/// Signature bytes kept in an id (128 bits).
const SIGNATURE_BYTES: usize = 16;

/// Why a plan id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("plan_id is malformed (expected the id a call without plan_id returned)")]
    Malformed,
    #[error("plan_id was not made for {tool} with these arguments by this caller (another environment, image or key?)")]
    NotThisPlan { tool: &'static str },
    #[error("the plan secret cannot be read: {0}")]
    Store(String),
}

fn parts<'a>(tool: &'a str, change: &'a [u8], caller: &'a str, fp: &'a str) -> [&'a [u8]; 5] {
    [
        DOMAIN,
        tool.as_bytes(),
        change,
        caller.as_bytes(),
        fp.as_bytes(),
    ]
}

/// The caller as a signature binds it: a key by its id, a local user by uid.
fn who(caller: &Caller) -> String {
    match caller.key_id() {
        Some(id) => format!("key {id}"),
        None => caller.label(),
    }
}

/// The plan id for `change` through `tool` by `caller`, planned with `fingerprint`.
///
/// # Errors
/// `Store` when the secret cannot be read or made.
pub fn issue(
    store: &Store,
    tool: &'static str,
    change: &Change,
    caller: &Caller,
    fingerprint: &str,
) -> Result<String, Refused> {
    let secret = store
        .plan_secret()
        .map_err(|e| Refused::Store(crate::backend::error_chain(&e)))?;
    let change = serde_json::to_vec(change).expect("changes serialize");
    let caller = who(caller);
    let tag = secret.sign(&parts(tool, &change, &caller, fingerprint));
    Ok(format!("{fingerprint}.{}", hex(&tag[..SIGNATURE_BYTES])))
}

/// The fingerprint a plan id was issued with, if this id was issued for `change` through `tool`
/// to `caller`.
///
/// # Errors
/// `Malformed`, `NotThisPlan`; `Store`.
pub fn verify(
    store: &Store,
    tool: &'static str,
    change: &Change,
    caller: &Caller,
    plan_id: &str,
) -> Result<String, Refused> {
    let (fingerprint, signature) = plan_id.split_once('.').ok_or(Refused::Malformed)?;
    let well_formed = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !well_formed(fingerprint, 32) || !well_formed(signature, 2 * SIGNATURE_BYTES) {
        return Err(Refused::Malformed);
    }
    let tag = unhex(signature).ok_or(Refused::Malformed)?;
    let secret = store
        .plan_secret()
        .map_err(|e| Refused::Store(crate::backend::error_chain(&e)))?;
    let change = serde_json::to_vec(change).expect("changes serialize");
    let caller = who(caller);
    if secret.verify_signed(&parts(tool, &change, &caller, fingerprint), &tag) {
        Ok(fingerprint.to_string())
    } else {
        Err(Refused::NotThisPlan { tool })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Role, Who};

    fn key(id: &str) -> Caller {
        Caller {
            who: Who::Key {
                id: id.into(),
                name: Some("agent".into()),
            },
            role: Role::Developer,
            projects: None,
            source: Some("127.0.0.1:5000".into()),
        }
    }

    fn deploy(env: &str, image: &str) -> Change {
        Change::Deploy {
            project: "shop".into(),
            environment: env.into(),
            image: image.into(),
        }
    }

    const FP: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn an_id_verifies_for_its_tool_change_and_caller_only_and_gives_back_its_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let me = key("aaaaaaaaaaaa");
        let change = deploy("production", "app:v2");
        let id = issue(&store, "deploy", &change, &me, FP).unwrap();
        assert!(id.starts_with(&format!("{FP}.")), "{id}");
        assert_eq!(
            verify(&store, "deploy", &change, &me, &id).unwrap(),
            FP,
            "its own"
        );
        let not = |tool, change: &Change, caller: &Caller| {
            verify(&store, tool, change, caller, &id).unwrap_err()
        };
        assert!(matches!(
            not("deploy", &deploy("staging", "app:v2"), &me),
            Refused::NotThisPlan { .. }
        ));
        assert!(matches!(
            not("deploy", &deploy("production", "app:v3"), &me),
            Refused::NotThisPlan { .. }
        ));
        assert!(matches!(
            not("deploy", &change, &key("bbbbbbbbbbbb")),
            Refused::NotThisPlan { .. }
        ));
        assert!(matches!(
            not("promote", &change, &me),
            Refused::NotThisPlan { .. }
        ));
        // Another fingerprint under the same signature: a state it was not issued for.
        let forged = format!("{}{}", "f".repeat(32), &id[32..]);
        assert!(matches!(
            verify(&store, "deploy", &change, &me, &forged),
            Err(Refused::NotThisPlan { .. })
        ));
        // The secret is the state directory's: the id survives reopening the store.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(verify(&store, "deploy", &change, &me, &id).unwrap(), FP);
    }

    #[test]
    fn a_rollback_id_is_bound_to_its_release_number_and_a_plain_rollback_to_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let me = key("aaaaaaaaaaaa");
        let to = |n: Option<u64>| Change::Rollback {
            project: "app".into(),
            environment: "production".into(),
            to: n,
        };
        let id = issue(&store, "rollback", &to(Some(1)), &me, FP).unwrap();
        assert_eq!(
            verify(&store, "rollback", &to(Some(1)), &me, &id).unwrap(),
            FP
        );
        for other in [to(Some(2)), to(None)] {
            assert!(matches!(
                verify(&store, "rollback", &other, &me, &id),
                Err(Refused::NotThisPlan { .. })
            ));
        }
        // A plain rollback's change serializes as before `to` existed: ids issued then still hold.
        assert!(!serde_json::to_string(&to(None)).unwrap().contains("\"to\""));
    }

    #[test]
    fn malformed_ids_are_refused_before_any_signature_is_computed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let me = key("aaaaaaaaaaaa");
        let change = deploy("production", "app:v2");
        for bad in [
            "",
            "x",
            FP,
            &format!("{FP}."),
            &format!("{FP}.zz"),
            &format!("{FP}.{}", "Z".repeat(32)),
            &format!("{}.{}", "a".repeat(31), "b".repeat(32)),
        ] {
            assert_eq!(
                verify(&store, "deploy", &change, &me, bad),
                Err(Refused::Malformed),
                "{bad:?}"
            );
        }
    }
}
