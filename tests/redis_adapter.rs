//! The Redis adapter against the real Redis 7 of `deploy/stack.sh`, and the confinement its ACL
//! rules ([`CacheWrite::rules`]) give a project, proven with a real client logged in as the project.
//!
//! Needs `CODEB_TEST_REDIS_URL` (the admin URL, without password) and `REDIS_ADMIN_PASSWORD`, which
//! `deploy/stack.sh env` prints once `deploy/stack.sh up` has started the server. A missing server
//! fails the run: it is never skipped.
//!
//! Every user and key here has a name unique to the run (`rdt-…`) and is removed at the end, also
//! when an assertion fails (see [`Removed`]).

mod common;

use std::time::{Duration, Instant};

use codeb::backend::redis::RedisAdmin;
use codeb::backend::Cache;
use codeb::model::data::{CacheNames, CacheWrite};
use codeb::model::vars::SecretText;
use codeb::model::EnvKey;
use redis::aio::MultiplexedConnection;
use redis::{RedisResult, Value};

fn url() -> String {
    common::env("CODEB_TEST_REDIS_URL")
}

fn admin_password() -> String {
    common::env("REDIS_ADMIN_PASSWORD")
}

fn admin() -> RedisAdmin {
    RedisAdmin::new(&url(), &SecretText(admin_password())).expect("a valid admin URL")
}

fn secret(s: &str) -> SecretText {
    SecretText(s.to_string())
}

fn names(prefix: &str) -> CacheNames {
    CacheNames::of(&EnvKey::new(common::unique(prefix), "production"))
}

/// A connection as `user` (the admin: `None`).
async fn connect(user: Option<(&str, &str)>) -> RedisResult<MultiplexedConnection> {
    let host = url().trim_start_matches("redis://").to_string();
    let target = match user {
        Some((u, p)) => format!("redis://{u}:{p}@{host}"),
        None => format!("redis://:{}@{host}", admin_password()),
    };
    redis::Client::open(target)?
        .get_multiplexed_async_connection()
        .await
}

async fn run(con: &mut MultiplexedConnection, args: &[&str]) -> RedisResult<Value> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(con).await
}

/// Removes these users, and the keys under these patterns, when the test ends.
struct Removed {
    users: Vec<String>,
    patterns: Vec<String>,
}

impl Drop for Removed {
    fn drop(&mut self) {
        let users = std::mem::take(&mut self.users);
        let patterns = std::mem::take(&mut self.patterns);
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let Ok(mut c) = connect(None).await else {
                    return;
                };
                for u in &users {
                    let _ = run(&mut c, &["ACL", "DELUSER", u]).await;
                }
                for p in &patterns {
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(p)
                        .query_async(&mut c)
                        .await
                        .unwrap_or_default();
                    for k in keys {
                        let _ = run(&mut c, &["DEL", &k]).await;
                    }
                }
                let _ = run(&mut c, &["ACL", "SAVE"]).await;
            })
        });
        let _ = done.join();
    }
}

/// The stack's ACL file, which `ACL SAVE` rewrites.
fn acl_file() -> String {
    let path = format!("{}/redis/data/users.acl", common::env("CODEB_STACK_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test]
async fn ensure_sets_the_user_whole_and_persists_it_and_drop_removes_it_with_its_keys_only() {
    let a = admin();
    let n = names("rdt");
    let neighbour = format!("{}x:kept", n.prefix.trim_end_matches(':'));
    let _cleanup = Removed {
        users: vec![n.user.clone()],
        patterns: vec![format!("{}*", n.prefix), neighbour.clone()],
    };
    let write = CacheWrite { names: n.clone() };

    a.ensure(&write, &[secret("one")]).await.unwrap();
    let seen = a
        .observe(&[n.user.clone(), "rdt-no-such-user".into()])
        .await
        .unwrap();
    let user = seen[0].as_ref().expect("the user");
    assert!(user.enabled);
    assert_eq!(user.passwords, 1);
    assert_eq!(user.keys, vec![format!("~{}*", n.prefix)]);
    assert_eq!(user.channels, vec![format!("&{}*", n.prefix)]);
    assert!(
        user.commands.starts_with("+@all -@dangerous"),
        "{}",
        user.commands
    );
    assert_eq!(seen[1], None);
    assert!(
        acl_file().contains(&format!("user {} on", n.user)),
        "ACL SAVE persisted it"
    );

    // A rotation: two passwords, both work; again, the same state.
    a.ensure(&write, &[secret("one"), secret("two")])
        .await
        .unwrap();
    a.ensure(&write, &[secret("one"), secret("two")])
        .await
        .unwrap();
    let twice = a.observe(std::slice::from_ref(&n.user)).await.unwrap();
    assert_eq!(twice[0].as_ref().unwrap().passwords, 2);
    for p in ["one", "two"] {
        let mut c = connect(Some((&n.user, p))).await.unwrap();
        run(&mut c, &["SET", &format!("{}k-{p}", n.prefix), "v"])
            .await
            .unwrap();
    }
    a.ensure(&write, &[secret("two")]).await.unwrap();
    assert!(
        connect(Some((&n.user, "one"))).await.is_err(),
        "the old password is gone"
    );

    // Drop: the user and its keys, not a neighbour's key that shares the start of its prefix.
    let mut adm = connect(None).await.unwrap();
    run(&mut adm, &["SET", &neighbour, "v"]).await.unwrap();
    for i in 0..2500 {
        run(&mut adm, &["SET", &format!("{}bulk:{i}", n.prefix), "v"])
            .await
            .unwrap();
    }
    let mut open = connect(Some((&n.user, "two"))).await.unwrap();
    a.drop_cache(&n).await.unwrap();
    assert_eq!(
        a.observe(std::slice::from_ref(&n.user)).await.unwrap(),
        vec![None]
    );
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", n.prefix))
        .query_async(&mut adm)
        .await
        .unwrap();
    assert!(left.is_empty(), "{} keys left", left.len());
    let kept: Option<String> = redis::cmd("GET")
        .arg(&neighbour)
        .query_async(&mut adm)
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some("v"));
    assert!(
        run(&mut open, &["GET", &format!("{}k-two", n.prefix)])
            .await
            .is_err(),
        "its connection was closed"
    );
    assert!(connect(Some((&n.user, "two"))).await.is_err());
    assert!(!acl_file().contains(&n.user));
    a.drop_cache(&n).await.unwrap();
}

#[tokio::test]
async fn a_tenant_is_confined_to_its_prefix_and_denied_every_command_that_sees_or_changes_others() {
    let a = admin();
    let (na, nb) = (names("rdta"), names("rdtb"));
    let _cleanup = Removed {
        users: vec![na.user.clone(), nb.user.clone()],
        patterns: vec![format!("{}*", na.prefix), format!("{}*", nb.prefix)],
    };
    a.ensure(&CacheWrite { names: na.clone() }, &[secret("pa")])
        .await
        .unwrap();
    a.ensure(&CacheWrite { names: nb.clone() }, &[secret("pb")])
        .await
        .unwrap();
    let mut b = connect(Some((&nb.user, "pb"))).await.unwrap();
    let b_key = format!("{}secret", nb.prefix);
    run(&mut b, &["SET", &b_key, "b-value"]).await.unwrap();
    let mut c = connect(Some((&na.user, "pa"))).await.unwrap();

    // Its own keys and channels work.
    let mine = format!("{}hits", na.prefix);
    run(&mut c, &["SET", &mine, "1"]).await.unwrap();
    assert_eq!(run(&mut c, &["INCR", &mine]).await.unwrap(), Value::Int(2));
    let got: String = redis::cmd("GET")
        .arg(&mine)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(got, "2");
    run(&mut c, &["PUBLISH", &format!("{}events", na.prefix), "hi"])
        .await
        .unwrap();
    run(
        &mut c,
        &["EVAL", "return redis.call('GET', KEYS[1])", "1", &mine],
    )
    .await
    .unwrap();

    let get_b = format!("return redis.call('GET', '{b_key}')");
    let b_channel = format!("{}events", nb.prefix);
    let denied: Vec<Vec<&str>> = vec![
        vec!["SCAN", "0"],
        vec!["KEYS", "*"],
        vec!["RANDOMKEY"],
        vec!["FLUSHALL"],
        vec!["FLUSHDB"],
        vec!["DBSIZE"],
        vec!["FUNCTION", "FLUSH"],
        vec!["FUNCTION", "LIST"],
        vec!["FUNCTION", "DELETE", "x"],
        vec!["SCRIPT", "FLUSH"],
        vec!["SELECT", "1"],
        vec!["SWAPDB", "0", "1"],
        vec!["PUBSUB", "CHANNELS"],
        vec!["PUBSUB", "NUMSUB"],
        vec!["GET", &b_key],
        vec!["SET", &b_key, "overwritten"],
        vec!["DEL", &b_key],
        vec!["RENAME", &mine, &b_key],
        vec!["COPY", &mine, &b_key],
        vec!["EVAL", "return redis.call('GET', KEYS[1])", "1", &b_key],
        vec!["EVAL", &get_b, "0"],
        vec!["EVAL", "return redis.call('FLUSHALL')", "0"],
        vec!["PUBLISH", &b_channel, "hi"],
        vec!["CONFIG", "GET", "*"],
        vec!["INFO"],
        vec!["CLIENT", "LIST"],
        vec!["ACL", "LIST"],
        vec!["ACL", "SETUSER", &na.user, "~*"],
        vec!["SORT", &mine, "BY", "nosort", "GET", &b_key],
        vec!["MOVE", &mine, "1"],
        vec!["SHUTDOWN"],
    ];
    for args in &denied {
        let answer = run(&mut c, args).await;
        let e = answer
            .err()
            .unwrap_or_else(|| panic!("A could run {args:?}"));
        let text = e.to_string();
        assert!(
            e.code() == Some("NOPERM")
                || text.contains("can't access")
                || text.contains("can't run"),
            "{args:?}: {text}"
        );
    }
    // B's key is as B left it.
    let kept: String = redis::cmd("GET")
        .arg(&b_key)
        .query_async(&mut b)
        .await
        .unwrap();
    assert_eq!(kept, "b-value");
}

#[tokio::test]
async fn foreign_users_are_never_touched() {
    let a = admin();
    let foreign = common::unique("rdt-hand");
    let n = names("rdtc");
    let _cleanup = Removed {
        users: vec![foreign.clone(), n.user.clone()],
        patterns: vec![format!("{}*", n.prefix)],
    };
    let mut adm = connect(None).await.unwrap();
    run(
        &mut adm,
        &[
            "ACL", "SETUSER", &foreign, "on", ">hand", "~hand:*", "&hand:*", "+get", "+set",
        ],
    )
    .await
    .unwrap();
    let getuser = |c: &mut MultiplexedConnection| {
        let mut c = c.clone();
        let foreign = foreign.clone();
        async move {
            format!(
                "{:?}",
                run(&mut c, &["ACL", "GETUSER", &foreign]).await.unwrap()
            )
        }
    };
    let before = getuser(&mut adm).await;

    a.ensure(&CacheWrite { names: n.clone() }, &[secret("pw")])
        .await
        .unwrap();
    a.drop_cache(&n).await.unwrap();

    assert_eq!(getuser(&mut adm).await, before);
    assert!(before.contains("hand:*"), "{before}");
}

#[tokio::test]
async fn an_unreachable_server_or_a_wrong_admin_password_fails_fast_naming_the_endpoint_and_changes_nothing(
) {
    let n = names("rdtx");
    let _cleanup = Removed {
        users: vec![n.user.clone()],
        patterns: vec![],
    };
    let write = CacheWrite { names: n.clone() };
    let closed = RedisAdmin::new("redis://127.0.0.1:1", &secret("x")).unwrap();
    let t = Instant::now();
    let e = closed.ensure(&write, &[secret("pw")]).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
    assert!(e.retryable());

    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mute = RedisAdmin::new(&format!("redis://127.0.0.1:{port}"), &secret("x")).unwrap();
    let t = Instant::now();
    let e = mute
        .observe(std::slice::from_ref(&n.user))
        .await
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    drop(silent);

    let wrong = RedisAdmin::new(&url(), &secret("not-the-password")).unwrap();
    let e = wrong.ensure(&write, &[secret("pw")]).await.unwrap_err();
    let text = codeb::backend::error_chain(&e);
    assert!(text.contains("refused the login"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");
    assert!(!e.retryable());
    assert!(!format!("{wrong:?}").contains("not-the-password"));
    assert_eq!(
        admin()
            .observe(std::slice::from_ref(&n.user))
            .await
            .unwrap(),
        vec![None]
    );
}
