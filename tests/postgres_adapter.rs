//! The PostgreSQL adapter against the real PostgreSQL 15 of `deploy/stack.sh`.
//!
//! Needs `CODEB_TEST_PG_URL` (the admin URL, without password) and `PG_ADMIN_PASSWORD`, which
//! `deploy/stack.sh env` prints once `deploy/stack.sh up` has started the server. A missing server
//! fails the run: it is never skipped.
//!
//! Every role and database here has a name unique to the run (`pgt-…`), and is dropped at the end,
//! also when an assertion fails (see [`Dropped`]). Tests run in parallel: they share the server, not
//! names.

mod common;

use std::time::{Duration, Instant};

use codeb::backend::postgres::{Error, PgAdmin};
use codeb::backend::{ErrorKind, Postgres};
use codeb::model::data::{pg_mark, DatabaseLimits, DatabaseWrite, ObservedDatabase, PgNames};
use codeb::model::vars::SecretText;
use codeb::model::EnvKey;
use tokio_postgres::{Client, NoTls};

/// The codeb instance id these tests mark roles with.
const OWNER_ID: &str = "pgtest";

fn url() -> String {
    common::env("CODEB_TEST_PG_URL")
}

fn admin_password() -> SecretText {
    SecretText(common::env("PG_ADMIN_PASSWORD"))
}

fn admin() -> PgAdmin {
    PgAdmin::new(&url(), &admin_password()).expect("CODEB_TEST_PG_URL is a valid admin URL")
}

fn secret(s: &str) -> SecretText {
    SecretText(s.to_string())
}

/// A project environment of its own, and the write that converges it.
fn env(prefix: &str) -> (EnvKey, DatabaseWrite) {
    let key = EnvKey::new(common::unique(prefix), "production");
    let write = DatabaseWrite {
        names: PgNames::of(&key),
        mark: pg_mark(OWNER_ID, &key),
        limits: DatabaseLimits {
            connections: 5,
            statement_timeout_ms: 1234,
            idle_in_transaction_ms: 5678,
        },
        login: 0,
    };
    (key, write)
}

/// Drops these environments' databases and roles, and these foreign objects, when the test ends
/// (also on a failed assertion), from a thread of its own (Drop cannot await).
struct Dropped {
    names: Vec<PgNames>,
    /// SQL run as the admin at the end (foreign objects the test made).
    sql: Vec<String>,
}

impl Drop for Dropped {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.names);
        let sql = std::mem::take(&mut self.sql);
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let a = admin();
                for n in &names {
                    if let Err(e) = a.drop_database(n).await {
                        eprintln!("cleanup: {e}");
                    }
                }
                if let Ok(c) = connect_admin("postgres").await {
                    for s in &sql {
                        let _ = c.batch_execute(s).await;
                    }
                }
            })
        });
        let _ = done.join();
    }
}

/// A client of the stack's server as `user`, on `database`.
async fn connect_as(
    user: &str,
    password: &str,
    database: &str,
) -> Result<Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url().parse().unwrap();
    config
        .user(user)
        .password(password)
        .dbname(database)
        .connect_timeout(Duration::from_secs(3));
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn connect_admin(database: &str) -> Result<Client, tokio_postgres::Error> {
    let config: tokio_postgres::Config = url().parse().unwrap();
    connect_as(config.get_user().unwrap(), &admin_password().0, database).await
}

async fn observe_one(a: &PgAdmin, names: &PgNames) -> ObservedDatabase {
    a.observe(std::slice::from_ref(names))
        .await
        .unwrap()
        .pop()
        .unwrap()
}

/// The catalog rows of a role and a database as text: everything that ensure or drop of another
/// name could change (attributes, comment, settings, memberships, owner, ACL).
async fn snapshot(role: &str, database: &str) -> (String, String) {
    let c = connect_admin("postgres").await.unwrap();
    let role_row = c
        .query_one(
            "SELECT coalesce((SELECT row_to_json(x)::text FROM (
                 SELECT r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb,
                        r.rolcanlogin, r.rolconnlimit, r.rolvaliduntil, r.rolpassword,
                        shobj_description(r.oid, 'pg_authid') AS comment,
                        (SELECT s.setconfig FROM pg_db_role_setting s WHERE s.setrole = r.oid) AS settings,
                        ARRAY(SELECT roleid::regrole::text FROM pg_auth_members WHERE member = r.oid) AS member_of
                 FROM pg_authid r WHERE r.rolname = $1) x), 'none')",
            &[&role],
        )
        .await
        .unwrap()
        .get::<_, String>(0);
    let db_row = c
        .query_one(
            "SELECT coalesce((SELECT row_to_json(x)::text FROM (
                 SELECT d.datname, pg_get_userbyid(d.datdba) AS owner, d.datacl::text AS acl,
                        d.datallowconn, d.datconnlimit,
                        shobj_description(d.oid, 'pg_database') AS comment
                 FROM pg_database d WHERE d.datname = $1) x), 'none')",
            &[&database],
        )
        .await
        .unwrap()
        .get::<_, String>(0);
    (role_row, db_row)
}

#[tokio::test]
async fn ensure_creates_marked_roles_and_a_closed_database_that_rotation_disable_and_drop_manage() {
    let a = admin();
    let (key, mut write) = env("pgt");
    let names = write.names.clone();
    let _cleanup = Dropped {
        names: vec![names.clone()],
        sql: vec![],
    };
    let owner = names.owner().to_string();
    let (p1, p2) = (
        format!("p1-{}'\\\"x", key.project),
        format!("p2-{}", key.project),
    );

    a.ensure(&write, &secret(&p1)).await.unwrap();
    let seen = observe_one(&a, &names).await;
    let o = seen.owner.as_ref().expect("the owner role");
    assert_eq!(o.comment.as_deref(), Some(write.mark.as_str()));
    assert!(!o.can_login);
    let l0 = seen.logins[0].as_ref().expect("login 1");
    assert!(l0.can_login);
    assert_eq!(l0.comment.as_deref(), Some(write.mark.as_str()));
    assert_eq!(l0.connection_limit, 5);
    assert_eq!(l0.member_of, vec![owner.clone()]);
    for s in [
        format!("role={owner}"),
        "statement_timeout=1234ms".to_string(),
        "idle_in_transaction_session_timeout=5678ms".to_string(),
    ] {
        assert!(l0.settings.contains(&s), "{s} in {:?}", l0.settings);
    }
    let l1 = seen.logins[1]
        .as_ref()
        .expect("login 2 exists, unable to log in");
    assert!(!l1.can_login);
    assert_eq!(l1.comment.as_deref(), Some(write.mark.as_str()));
    assert_eq!(l1.member_of, vec![owner.clone()]);
    let db = seen.database.as_ref().expect("the database");
    assert_eq!(db.owner, owner);
    assert!(!db.public_connect);

    // Again: the same state, no error.
    a.ensure(&write, &secret(&p1)).await.unwrap();
    assert_eq!(observe_one(&a, &names).await, seen);

    // The app's session acts as the owner, with the limits.
    let app = connect_as(&names.logins[0], &p1, &names.database)
        .await
        .unwrap();
    let row = app
        .query_one(
            "SELECT current_user::text, current_setting('statement_timeout'), \
             current_setting('idle_in_transaction_session_timeout')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), owner);
    assert_eq!(row.get::<_, String>(1), "1234ms");
    assert_eq!(row.get::<_, String>(2), "5678ms");
    app.batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let table_owner: String = app
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 't'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        table_owner, owner,
        "objects an app creates belong to the owner role"
    );

    // A rotation: the second login gets a password; the first keeps working.
    write.login = 1;
    a.ensure(&write, &secret(&p2)).await.unwrap();
    let app2 = connect_as(&names.logins[1], &p2, &names.database)
        .await
        .unwrap();
    let n: i64 = app2
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the second login sees the first one's table");
    connect_as(&names.logins[0], &p1, &names.database)
        .await
        .unwrap();

    // The first login disabled: it cannot log in, the second still can.
    a.disable_login(&names.logins[0]).await.unwrap();
    let refused = connect_as(&names.logins[0], &p1, &names.database).await;
    assert!(refused.is_err(), "a disabled login must not connect");
    connect_as(&names.logins[1], &p2, &names.database)
        .await
        .unwrap();
    let seen = observe_one(&a, &names).await;
    assert!(!seen.logins[0].as_ref().unwrap().can_login);
    assert!(seen.logins[1].as_ref().unwrap().can_login);
    a.disable_login("pgt-no-such-role").await.unwrap();

    // Drop: everything goes, with the open sessions.
    drop((app, app2));
    let open = connect_as(&names.logins[1], &p2, &names.database)
        .await
        .unwrap();
    a.drop_database(&names).await.unwrap();
    assert_eq!(observe_one(&a, &names).await, ObservedDatabase::default());
    assert!(
        open.simple_query("SELECT 1").await.is_err(),
        "the session was ended"
    );
    assert!(connect_as(&names.logins[1], &p2, &names.database)
        .await
        .is_err());
    a.drop_database(&names).await.unwrap();
}

#[tokio::test]
async fn a_tenant_reaches_only_its_own_database_and_cannot_touch_another_tenants_or_codebs_marks() {
    let a = admin();
    let (_, wa) = env("pgta");
    let (_, wb) = env("pgtb");
    let _cleanup = Dropped {
        names: vec![wa.names.clone(), wb.names.clone()],
        sql: vec![],
    };
    let (pa, pb) = ("tenant-a-pw", "tenant-b-pw");
    a.ensure(&wa, &secret(pa)).await.unwrap();
    a.ensure(&wb, &secret(pb)).await.unwrap();
    let la = &wa.names.logins[0];

    // B's database and `postgres` refuse A's login.
    for database in [wb.names.database.as_str(), "postgres", "template1"] {
        let e = connect_as(la, pa, database)
            .await
            .err()
            .unwrap_or_else(|| panic!("A connected to {database}"));
        let code = e.code().map(|c| c.code().to_string());
        assert_eq!(code.as_deref(), Some("42501"), "{database}: {e}");
    }
    // B can use its own: B's public schema is reachable only by B.
    let b = connect_as(&wb.names.logins[0], pb, &wb.names.database)
        .await
        .unwrap();
    b.batch_execute("CREATE TABLE b_secret (x int)")
        .await
        .unwrap();

    let app = connect_as(la, pa, &wa.names.database).await.unwrap();
    app.batch_execute("CREATE TABLE mine (x int)")
        .await
        .unwrap();
    let owner: String = app
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'mine'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, wa.names.owner());
    let denied = [
        format!("SET ROLE \"{}\"", wb.names.owner()),
        format!("COMMENT ON ROLE \"{}\" IS 'forged'", wa.names.owner()),
        format!("COMMENT ON ROLE \"{}\" IS 'forged'", wb.names.owner()),
        format!("ALTER ROLE \"{}\" CONNECTION LIMIT 100", wa.names.logins[1]),
        format!("ALTER ROLE \"{}\" PASSWORD 'x'", wb.names.logins[0]),
        format!("GRANT \"{}\" TO \"{}\"", wb.names.owner(), la),
        format!("DROP DATABASE \"{}\"", wb.names.database),
        format!(
            "ALTER DATABASE \"{}\" OWNER TO \"{}\"",
            wa.names.database, la
        ),
        "CREATE ROLE pgt_evil".to_string(),
        "CREATE DATABASE pgt_evil".to_string(),
    ];
    for sql in &denied {
        assert!(app.batch_execute(sql).await.is_err(), "A could run: {sql}");
    }
    // The marks are as codeb wrote them.
    let seen = a
        .observe(&[wa.names.clone(), wb.names.clone()])
        .await
        .unwrap();
    assert_eq!(
        seen[0].owner.as_ref().unwrap().comment.as_deref(),
        Some(wa.mark.as_str())
    );
    assert_eq!(
        seen[1].owner.as_ref().unwrap().comment.as_deref(),
        Some(wb.mark.as_str())
    );
    assert_eq!(seen[1].database.as_ref().unwrap().owner, wb.names.owner());
}

#[tokio::test]
async fn foreign_roles_and_databases_are_never_touched_and_a_foreign_name_is_a_conflict() {
    let a = admin();
    let n = common::unique("pgtf").replace('-', "_");
    let (foreign_role, foreign_db) = (format!("{n}_hand"), format!("{n}_handdb"));
    // An environment whose owner name a foreign role holds, one whose database name a foreign
    // database holds (its owner role missing), and one marked by another codeb.
    let (_, w_role) = env("pgtr");
    let (_, w_db) = env("pgtd");
    let (k_other, mut w_other) = env("pgto");
    let mut cleanup = Dropped {
        names: vec![],
        sql: vec![
            format!("DROP DATABASE IF EXISTS \"{foreign_db}\""),
            format!("DROP DATABASE IF EXISTS \"{}\"", w_db.names.database),
            format!("DROP ROLE IF EXISTS \"{foreign_role}\""),
            format!("DROP ROLE IF EXISTS \"{}\"", w_role.names.owner()),
            format!("DROP ROLE IF EXISTS \"{}\"", w_other.names.owner()),
        ],
    };
    let c = connect_admin("postgres").await.unwrap();
    c.batch_execute(&format!(
        "CREATE ROLE \"{foreign_role}\" LOGIN PASSWORD 'hand' CONNECTION LIMIT 3;
         COMMENT ON ROLE \"{foreign_role}\" IS 'made by hand';
         ALTER ROLE \"{foreign_role}\" SET statement_timeout = '7s';
         CREATE ROLE \"{owner_r}\" NOLOGIN;
         COMMENT ON ROLE \"{owner_r}\" IS 'made by hand too';
         CREATE ROLE \"{owner_o}\" NOLOGIN;
         COMMENT ON ROLE \"{owner_o}\" IS '{other_mark}';",
        owner_r = w_role.names.owner(),
        owner_o = w_other.names.owner(),
        other_mark = pg_mark("another-codeb", &k_other),
    ))
    .await
    .unwrap();
    c.batch_execute(&format!(
        "CREATE DATABASE \"{foreign_db}\" OWNER \"{foreign_role}\""
    ))
    .await
    .unwrap();
    c.batch_execute(&format!(
        "REVOKE TEMP ON DATABASE \"{foreign_db}\" FROM PUBLIC;
         COMMENT ON DATABASE \"{foreign_db}\" IS 'a foreign db';"
    ))
    .await
    .unwrap();
    c.batch_execute(&format!(
        "CREATE DATABASE \"{}\" OWNER \"{foreign_role}\"",
        w_db.names.database
    ))
    .await
    .unwrap();
    let before = snapshot(&foreign_role, &foreign_db).await;
    let before_r = snapshot(w_role.names.owner(), &w_role.names.database).await;
    let before_d = snapshot(w_db.names.owner(), &w_db.names.database).await;
    let before_o = snapshot(w_other.names.owner(), &w_other.names.database).await;

    // codeb's own environment converged and dropped around them.
    let (_, w) = env("pgtc");
    cleanup.names.push(w.names.clone());
    a.ensure(&w, &secret("pw")).await.unwrap();
    a.drop_database(&w.names).await.unwrap();

    // Each foreign holder of a name: a conflict naming it, and nothing changed.
    for (write, name, kind) in [
        (&w_role, w_role.names.owner(), "role"),
        (&w_db, w_db.names.database.as_str(), "database"),
        (&w_other, w_other.names.owner(), "role"),
    ] {
        let e = a.ensure(write, &secret("pw")).await.unwrap_err();
        assert_eq!(
            e.kind(),
            &ErrorKind::Conflict {
                name: name.to_string()
            },
            "{e}"
        );
        let text = e.to_string();
        assert!(text.contains(name) && text.contains(kind), "{text}");
        let inner = e.downcast_ref::<Error>().unwrap();
        assert!(matches!(inner, Error::Conflict { .. }), "{inner:?}");
    }
    w_other.login = 1;
    assert!(a.ensure(&w_other, &secret("pw")).await.is_err());
    // Nor are they dropped.
    assert!(a.drop_database(&w_role.names).await.is_err());
    assert!(a.drop_database(&w_db.names).await.is_err());
    for (names, _) in [(&w_role.names, ()), (&w_db.names, ())] {
        let seen = observe_one(&a, names).await;
        assert!(
            seen.logins.iter().all(Option::is_none),
            "no login created: {seen:?}"
        );
    }

    assert_eq!(snapshot(&foreign_role, &foreign_db).await, before);
    assert_eq!(
        snapshot(w_role.names.owner(), &w_role.names.database).await,
        before_r
    );
    assert_eq!(
        snapshot(w_db.names.owner(), &w_db.names.database).await,
        before_d
    );
    assert_eq!(
        snapshot(w_other.names.owner(), &w_other.names.database).await,
        before_o
    );
    assert!(before.0.contains("made by hand") && before.1.contains("a foreign db"));
}

#[tokio::test]
async fn an_unreachable_server_or_a_wrong_admin_password_fails_fast_naming_the_endpoint_and_changes_nothing(
) {
    let (_, write) = env("pgtx");
    let _cleanup = Dropped {
        names: vec![write.names.clone()],
        sql: vec![],
    };
    // Nothing listens: refused at once.
    let closed = PgAdmin::new("postgres://codeb_admin@127.0.0.1:1/postgres", &secret("x")).unwrap();
    let t = Instant::now();
    let e = closed
        .observe(std::slice::from_ref(&write.names))
        .await
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
    assert!(e.retryable(), "{e}");

    // Something accepts and never answers: the connect timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mute = PgAdmin::new(
        &format!("postgres://codeb_admin@127.0.0.1:{port}/postgres"),
        &secret("x"),
    )
    .unwrap();
    let t = Instant::now();
    let e = mute.ensure(&write, &secret("pw")).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(e.retryable());
    drop(silent);

    // A wrong admin password: refused, said so, not retryable, and nothing created.
    let wrong = PgAdmin::new(&url(), &secret("not-the-password")).unwrap();
    let e = wrong.ensure(&write, &secret("pw")).await.unwrap_err();
    let text = codeb::backend::error_chain(&e);
    assert!(text.contains("refused the login"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");
    assert!(!e.retryable());
    assert_eq!(
        observe_one(&admin(), &write.names).await,
        ObservedDatabase::default()
    );
    assert!(!format!("{wrong:?}").contains("not-the-password"));
}
