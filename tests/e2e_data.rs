//! Databases and caches per project (issue #17) end to end: `codeb apply`, `diff`, `delete` and
//! `apply --prune` against the real PostgreSQL 15 and Redis 7 of `deploy/stack.sh`, with the data
//! test image (`localhost/codeb-test-data:v1`) proving through Caddy that the injected
//! `DATABASE_URL` and `REDIS_URL` work, and real clients (tokio-postgres, redis) checking, as the
//! admin, what codeb created and left alone, and, as a project's own credentials (read with `codeb
//! env export`), what a hostile tenant is refused.
//!
//! Needs the stack's environment (`eval "$(deploy/stack.sh env)"`): Podman, Caddy,
//! `CODEB_TEST_PG_URL`/`PG_ADMIN_PASSWORD`/`CODEB_TEST_PG_APP_HOST` and
//! `CODEB_TEST_REDIS_URL`/`REDIS_ADMIN_PASSWORD`/`CODEB_TEST_REDIS_APP_HOST`. A missing one fails
//! the run; nothing is skipped.
//!
//! Every project here is named `dt…` (unique per run), every object seeded by hand `dtf…`; each
//! test removes what it made whichever way it ends ([`Gone`]): its projects through codeb, then,
//! as the admin, whatever of their databases, roles, ACL users and keys is left, and its seeded
//! objects. Every codeb call's stdout and stderr is kept and, at the end of each test, searched for
//! the admin passwords and the generated app passwords ([`Dt::assert_no_secret_printed`]).

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use codeb::backend::postgres::PgAdmin;
use codeb::backend::redis::RedisAdmin;
use codeb::backend::{Cache, Postgres};
use codeb::model::data::{redis_password, CacheNames, PgNames};
use codeb::model::vars::SecretText;
use codeb::model::EnvKey;
use common::*;
use redis::aio::MultiplexedConnection;
use redis::{RedisResult, Value};
use tokio_postgres::{Client, NoTls};

const DATA: &str = "localhost/codeb-test-data:v1";
const PLAIN: &str = "localhost/codeb-test-app:v1";

// ----- the servers -------------------------------------------------------------------------------

/// One runtime for every client of the file: a tokio-postgres connection runs as a task on it,
/// so it must outlive the call that connected.
fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Runtime::new().unwrap())
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    rt().block_on(f)
}

fn pg_url() -> String {
    env("CODEB_TEST_PG_URL")
}

fn redis_url() -> String {
    env("CODEB_TEST_REDIS_URL")
}

fn pg_password() -> String {
    env("PG_ADMIN_PASSWORD")
}

fn redis_admin_password() -> String {
    env("REDIS_ADMIN_PASSWORD")
}

/// A client of the stack's PostgreSQL (at the admin URL's address) as `user`, on `database`.
fn pg_as(user: &str, password: &str, database: &str) -> Result<Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = pg_url().parse().unwrap();
    config
        .user(user)
        .password(password)
        .dbname(database)
        .connect_timeout(Duration::from_secs(3));
    block(async {
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    })
}

fn pg_admin(database: &str) -> Client {
    let config: tokio_postgres::Config = pg_url().parse().unwrap();
    pg_as(config.get_user().unwrap(), &pg_password(), database)
        .unwrap_or_else(|e| panic!("the admin connects to {database}: {e}"))
}

/// One text value of a query run as the admin on `postgres`.
fn pg_text(sql: &str, arg: &str) -> String {
    let c = pg_admin("postgres");
    block(c.query_one(sql, &[&arg]))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get::<_, String>(0)
}

fn role_exists(role: &str) -> bool {
    pg_text(
        "SELECT (count(*) > 0)::text FROM pg_roles WHERE rolname = $1",
        role,
    ) == "true"
}

fn database_exists(database: &str) -> bool {
    pg_text(
        "SELECT (count(*) > 0)::text FROM pg_database WHERE datname = $1",
        database,
    ) == "true"
}

/// A role's catalog row as text, its comment, settings and memberships included ("none": no
/// such role).
fn role_row(role: &str) -> String {
    pg_text(
        "SELECT coalesce((SELECT row_to_json(x)::text FROM (
             SELECT r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb,
                    r.rolcanlogin, r.rolconnlimit, r.rolvaliduntil, r.rolpassword,
                    shobj_description(r.oid, 'pg_authid') AS comment,
                    (SELECT s.setconfig FROM pg_db_role_setting s WHERE s.setrole = r.oid) AS settings,
                    ARRAY(SELECT roleid::regrole::text FROM pg_auth_members WHERE member = r.oid) AS member_of
             FROM pg_authid r WHERE r.rolname = $1) x), 'none')",
        role,
    )
}

/// A database's catalog row as text, its owner, ACL and comment included ("none": no such
/// database).
fn db_row(database: &str) -> String {
    pg_text(
        "SELECT coalesce((SELECT row_to_json(x)::text FROM (
             SELECT d.datname, pg_get_userbyid(d.datdba) AS owner, d.datacl::text AS acl,
                    d.datallowconn, d.datconnlimit,
                    shobj_description(d.oid, 'pg_database') AS comment
             FROM pg_database d WHERE d.datname = $1) x), 'none')",
        database,
    )
}

/// A quoted PostgreSQL identifier.
fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A connection to the stack's Redis as `(user, password)`, or as the admin.
fn redis_as(user: Option<(&str, &str)>) -> RedisResult<MultiplexedConnection> {
    let host = redis_url().trim_start_matches("redis://").to_string();
    let target = match user {
        Some((u, p)) => format!("redis://{u}:{p}@{host}"),
        None => format!("redis://:{}@{host}", redis_admin_password()),
    };
    block(async {
        redis::Client::open(target)?
            .get_multiplexed_async_connection()
            .await
    })
}

fn redis_admin() -> MultiplexedConnection {
    redis_as(None).expect("the admin connects to Redis")
}

fn rcmd(con: &mut MultiplexedConnection, args: &[&str]) -> RedisResult<Value> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    block(cmd.query_async(con))
}

fn rget(con: &mut MultiplexedConnection, key: &str) -> Option<String> {
    let mut cmd = redis::cmd("GET");
    cmd.arg(key);
    block(cmd.query_async(con)).unwrap()
}

/// `ACL GETUSER user` as the admin, as text; `None` when there is no such user.
fn acl_user(user: &str) -> Option<String> {
    match rcmd(&mut redis_admin(), &["ACL", "GETUSER", user]).unwrap() {
        Value::Nil => None,
        v => Some(format!("{v:?}")),
    }
}

fn key(project: &str) -> EnvKey {
    EnvKey::new(project, "production")
}

// ----- manifests ---------------------------------------------------------------------------------

/// The Host (with the stack's PostgreSQL at `pg` and Redis at `redis`, admin URLs) and the Zone.
fn head(sb: &Sandbox, pg: &str, redis: &str) -> String {
    format!(
        "{}  postgres:\n    url: \"{pg}\"\n    passwordEnv: PG_ADMIN_PASSWORD\n    appHost: \"{}\"\n  redis:\n    url: \"{redis}\"\n    passwordEnv: REDIS_ADMIN_PASSWORD\n    appHost: \"{}\"\n---\napiVersion: codeb.kr/v1\nkind: Zone\nmetadata:\n  name: codeb.test\n",
        sb.stack.host_doc("127.0.0.1"),
        env("CODEB_TEST_PG_APP_HOST"),
        env("CODEB_TEST_REDIS_APP_HOST"),
    )
}

/// What one project's production environment asks for.
#[derive(Clone, Copy)]
struct Wants {
    database: bool,
    cache: bool,
    /// `onDelete: drop` (else the default, retain).
    drop: bool,
}

const BOTH_DROP: Wants = Wants {
    database: true,
    cache: true,
    drop: true,
};

/// A project of the data image (or, asking for nothing, of the plain test app).
fn project(name: &str, w: Wants) -> String {
    let image = if w.database || w.cache { DATA } else { PLAIN };
    let mut text = ProjectYaml::new(name, image).render();
    if w.database {
        text.push_str("      database: postgres\n");
    }
    if w.cache {
        text.push_str("      cache: redis\n");
    }
    if w.drop {
        text.push_str("      onDelete: drop\n");
    }
    text
}

fn hostname(project: &str) -> String {
    format!("{project}.codeb.test")
}

// ----- the sandbox -------------------------------------------------------------------------------

/// A sandbox that keeps every codeb call's output, and the app passwords it has read.
struct Dt {
    sb: Sandbox,
    outputs: RefCell<Vec<(String, Output)>>,
    secrets: RefCell<Vec<String>>,
}

impl Dt {
    fn new() -> Dt {
        Dt {
            sb: Sandbox::new(),
            outputs: RefCell::new(Vec::new()),
            secrets: RefCell::new(vec![pg_password(), redis_admin_password()]),
        }
    }

    fn codeb_env(&self, args: &[&str], vars: &[(&str, &str)]) -> Output {
        let out = self.sb.codeb_env(args, vars);
        self.outputs
            .borrow_mut()
            .push((args.join(" "), out.clone()));
        out
    }

    fn codeb(&self, args: &[&str]) -> Output {
        self.codeb_env(args, &[])
    }

    /// Saves the manifests: the Host with the stack's servers, and these projects.
    fn manifests(&self, projects: &[String]) -> PathBuf {
        self.manifests_at(&pg_url(), &redis_url(), projects)
    }

    fn manifests_at(&self, pg: &str, redis: &str, projects: &[String]) -> PathBuf {
        self.sb
            .save_text(&(head(&self.sb, pg, redis) + &projects.concat()))
    }

    fn apply(&self, dir: &std::path::Path) -> Output {
        self.codeb(&["apply", "-f", dir.to_str().unwrap()])
    }

    fn applied(&self, dir: &std::path::Path) {
        let out = self.apply(dir);
        assert_eq!(out.status.code(), Some(0), "apply: {}", text(&out));
    }

    /// The project's stored env, read as an admin (`env export`, whose output is the secret
    /// itself and is not kept); its passwords join the canaries.
    fn app_env(&self, project: &str) -> BTreeMap<String, String> {
        let out = self.sb.codeb(&["env", "export", project]);
        assert_eq!(out.status.code(), Some(0), "env export: {}", text(&out));
        let values =
            codeb::service::env::parse_dotenv("export", &String::from_utf8_lossy(&out.stdout))
                .expect("env export is dotenv text")
                .0;
        let mut secrets = self.secrets.borrow_mut();
        if let Some(p) = values.get("POSTGRES_PASSWORD") {
            secrets.push(p.clone());
        }
        if let Some(p) = values.get("REDIS_URL").and_then(|u| redis_password(u)) {
            secrets.push(p);
        }
        values
    }

    /// One GET through Caddy to the project's hostname: the status and the body (decoded when
    /// chunked, as Caddy sends a CGI's answer).
    fn get(&self, project: &str, path: &str) -> (u16, String) {
        get(&self.sb.stack.http, &hostname(project), path)
    }

    /// Waits until the project serves its `/health` through Caddy (a poll: `/cgi-bin/db` and
    /// `/cgi-bin/cache` count their calls, so they are asked once each, after this).
    fn serving(&self, project: &str) {
        let host = hostname(project);
        assert!(
            eventually(Duration::from_secs(15), || {
                http_get_within(
                    &self.sb.stack.http,
                    &host,
                    "/health",
                    Duration::from_secs(2),
                )
                .0 == 200
            }),
            "{project} serves /health through Caddy"
        );
    }

    /// The canary check: no codeb output of this test holds an admin password or an app
    /// password it generated.
    fn assert_no_secret_printed(&self) {
        let secrets = self.secrets.borrow();
        assert!(secrets.len() >= 2);
        for (args, out) in self.outputs.borrow().iter() {
            for s in secrets.iter() {
                for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
                    assert!(
                        !String::from_utf8_lossy(bytes).contains(s.as_str()),
                        "`codeb {args}` printed a password on its {stream}"
                    );
                }
            }
        }
    }
}

/// Removes, when dropped (a passed or a failed test alike), these projects through codeb, then as
/// the admin whatever of their databases, roles, ACL users and keys is left, then the objects the
/// test seeded (`sql` as the admin on `postgres`, Redis users and key patterns).
struct Gone<'a> {
    dt: &'a Dt,
    projects: Vec<String>,
    sql: Vec<String>,
    redis_users: Vec<String>,
    redis_keys: Vec<String>,
}

impl<'a> Gone<'a> {
    fn new(dt: &'a Dt, projects: &[&str]) -> Gone<'a> {
        Gone {
            dt,
            projects: projects.iter().map(|p| p.to_string()).collect(),
            sql: vec![],
            redis_users: vec![],
            redis_keys: vec![],
        }
    }
}

impl Drop for Gone<'_> {
    fn drop(&mut self) {
        for p in &self.projects {
            let _ = self.dt.sb.codeb(&["delete", "project", p]);
        }
        let projects = std::mem::take(&mut self.projects);
        let sql = std::mem::take(&mut self.sql);
        let users = std::mem::take(&mut self.redis_users);
        let keys = std::mem::take(&mut self.redis_keys);
        block(async {
            let pg = PgAdmin::new(&pg_url(), &SecretText(pg_password())).unwrap();
            let redis = RedisAdmin::new(&redis_url(), &SecretText(redis_admin_password())).unwrap();
            for p in &projects {
                if let Err(e) = pg.drop_database(&PgNames::of(&key(p))).await {
                    eprintln!("cleanup of {p}'s database: {e}");
                }
                if let Err(e) = redis.drop_cache(&CacheNames::of(&key(p))).await {
                    eprintln!("cleanup of {p}'s cache: {e}");
                }
            }
        });
        if !sql.is_empty() {
            let c = pg_admin("postgres");
            for s in &sql {
                if let Err(e) = block(c.batch_execute(s)) {
                    eprintln!("cleanup `{s}`: {e}");
                }
            }
        }
        if let Ok(mut r) = redis_as(None) {
            for u in &users {
                let _ = rcmd(&mut r, &["ACL", "DELUSER", u]);
            }
            for k in &keys {
                let _ = rcmd(&mut r, &["DEL", k]);
            }
            let _ = rcmd(&mut r, &["ACL", "SAVE"]);
        }
    }
}

/// A plain HTTP/1.1 GET with `Connection: close`: (status, body), the body de-chunked when the
/// answer says `Transfer-Encoding: chunked`; (0, error) when the connection fails.
fn get(addr: &str, host: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let attempt = || -> std::io::Result<(u16, String)> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        let buf = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_string()
        };
        Ok((status, body))
    };
    attempt().unwrap_or_else(|e| (0, e.to_string()))
}

/// The data of a chunked body (`SIZE\r\nDATA\r\n` … `0\r\n\r\n`).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The text of a plan or an outcome: stdout and stderr.
fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ----- the tests ---------------------------------------------------------------------------------

#[test]
fn a_project_gets_its_database_and_cache_injected_and_a_second_apply_plans_nothing() {
    let _l = lock();
    let dt = Dt::new();
    let name = unique("dtinj");
    let _gone = Gone::new(&dt, &[&name]);
    let dir = dt.manifests(&[project(&name, BOTH_DROP)]);
    let started = Instant::now();
    dt.applied(&dir);
    eprintln!("provisioned and deployed in {:?}", started.elapsed());
    dt.serving(&name);

    // The app's own client, with what codeb injected, through Caddy.
    assert_eq!(dt.get(&name, "/cgi-bin/db"), (200, "1".into()));
    assert_eq!(dt.get(&name, "/cgi-bin/db"), (200, "2".into()));
    assert_eq!(dt.get(&name, "/cgi-bin/cache"), (200, "1".into()));
    assert_eq!(dt.get(&name, "/cgi-bin/cache"), (200, "2".into()));

    // Converged: diff plans no step (data or container) and has no note.
    let diff = dt.codeb(&["diff", "-f", dir.to_str().unwrap(), "-o", "json"]);
    assert_eq!(diff.status.code(), Some(0), "diff: {}", text(&diff));
    let plan: serde_json::Value = serde_json::from_slice(&diff.stdout).unwrap();
    assert_eq!(plan["steps"], serde_json::json!([]), "{plan}");
    assert_eq!(plan["notes"], serde_json::json!([]), "{plan}");

    // The credentials are protected keys of the env, written by codeb.
    let list = dt.codeb(&["env", "list", &name, "-o", "json"]);
    assert_eq!(list.status.code(), Some(0), "env list: {}", text(&list));
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let protected: BTreeMap<String, bool> = list["vars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["protected"].as_bool().unwrap(),
            )
        })
        .collect();
    for k in [
        "DATABASE_URL",
        "POSTGRES_USER",
        "POSTGRES_PASSWORD",
        "REDIS_URL",
    ] {
        assert_eq!(protected.get(k), Some(&true), "{k} protected: {list}");
    }
    assert!(protected.contains_key("REDIS_PREFIX"), "{list}");
    let history = dt.codeb(&["env", "history", &name]);
    assert!(
        said(&history).contains("codeb (database and cache credentials)"),
        "{}",
        text(&history)
    );
    let values = dt.app_env(&name);
    let names = PgNames::of(&key(&name));
    assert_eq!(values["POSTGRES_USER"], names.logins[0]);
    assert_eq!(
        values["REDIS_PREFIX"],
        format!("{name}:production:"),
        "the key prefix"
    );

    // The owner role and the logins carry codeb's mark; the database is closed to PUBLIC.
    let mark = format!("managed by codeb {}: {name}/production", owner_id(&dt));
    for role in [names.owner(), &names.logins[0], &names.logins[1]] {
        let comment = pg_text(
            "SELECT coalesce(shobj_description(oid, 'pg_authid'), '') FROM pg_roles WHERE rolname = $1",
            role,
        );
        assert_eq!(comment, mark, "the comment on role {role}");
    }
    assert_eq!(
        pg_text(
            "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
            &names.database
        ),
        names.owner()
    );
    assert_eq!(
        pg_text(
            "SELECT has_database_privilege('public', $1, 'CONNECT')::text",
            &names.database
        ),
        "false",
        "PUBLIC's CONNECT on {} is revoked",
        names.database
    );
    dt.assert_no_secret_printed();
}

/// The codeb instance id marks carry: `CODEB_INSTANCE` (the stack exports it), else the store's.
fn owner_id(dt: &Dt) -> String {
    match std::env::var("CODEB_INSTANCE") {
        Ok(v) if !v.is_empty() => v,
        _ => {
            let out = dt.sb.codeb(&["get", "hosts", "-o", "json"]);
            let hosts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            hosts[0]["owner"].as_str().unwrap_or_default().to_string()
        }
    }
}

#[test]
fn a_tenant_with_its_own_credentials_reaches_nothing_of_another_project() {
    let _l = lock();
    let dt = Dt::new();
    let (a, b) = (unique("dtha"), unique("dthb"));
    let _gone = Gone::new(&dt, &[&a, &b]);
    let dir = dt.manifests(&[project(&a, BOTH_DROP), project(&b, BOTH_DROP)]);
    dt.applied(&dir);
    dt.serving(&b);
    // B's app writes a row and its hits key.
    assert_eq!(dt.get(&b, "/cgi-bin/db"), (200, "1".into()));
    assert_eq!(dt.get(&b, "/cgi-bin/cache"), (200, "1".into()));
    let b_key = format!("{b}:production:hits");

    let env_a = dt.app_env(&a);
    dt.app_env(&b);
    let (user, password) = (&env_a["POSTGRES_USER"], &env_a["POSTGRES_PASSWORD"]);
    let (names_a, names_b) = (PgNames::of(&key(&a)), PgNames::of(&key(&b)));

    // PostgreSQL: A's own database works, as its owner.
    let own = pg_as(user, password, &names_a.database).expect("A connects to its own database");
    block(own.batch_execute("CREATE TABLE mine (x int); INSERT INTO mine VALUES (1)"))
        .expect("A creates in its own public");
    // Not B's database, not `postgres`.
    for db in [names_b.database.as_str(), "postgres"] {
        let e = pg_as(user, password, db)
            .err()
            .unwrap_or_else(|| panic!("A connected to {db}"));
        let code = e.code().map(|c| c.code().to_string());
        assert_eq!(
            code.as_deref(),
            Some("42501"),
            "A is refused CONNECT on {db}: {e}"
        );
    }
    // No database but its own lets A create in public (B's, as every other, refuses it first
    // at CONNECT; one that PUBLIC may enter, such as template1, refuses the CREATE).
    let databases: Vec<String> = block(
        pg_admin("postgres").query("SELECT datname FROM pg_database WHERE datallowconn", &[]),
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect();
    assert!(databases.contains(&names_b.database));
    for db in databases.iter().filter(|d| **d != names_a.database) {
        let Ok(c) = pg_as(user, password, db) else {
            continue;
        };
        let e = block(c.batch_execute("CREATE TABLE public.dt_intruder (x int)"))
            .err()
            .unwrap_or_else(|| panic!("A created a table in {db}'s public"));
        assert_eq!(
            e.code().map(|c| c.code()),
            Some("42501"),
            "A may not create in {db}'s public: {e}"
        );
    }
    // B's row is as B left it.
    let count: i64 = block(pg_admin(&names_b.database).query_one("SELECT count(*) FROM hits", &[]))
        .unwrap()
        .get(0);
    assert_eq!(count, 1);

    // Redis, as A's ACL user from A's REDIS_URL.
    let cache_a = CacheNames::of(&key(&a));
    let redis_pw = redis_password(&env_a["REDIS_URL"]).expect("a password in REDIS_URL");
    let mut con = redis_as(Some((&cache_a.user, &redis_pw))).expect("A logs in to Redis");
    let refused: &[&[&str]] = &[
        &["SCAN", "0"],
        &["KEYS", "*"],
        &["FLUSHALL"],
        &["FLUSHDB"],
        &["DBSIZE"],
        &["FUNCTION", "FLUSH"],
        &["SCRIPT", "FLUSH"],
        &["SELECT", "1"],
        &["GET", &b_key],
        &["SET", &b_key, "999"],
    ];
    for args in refused {
        let e = rcmd(&mut con, args)
            .err()
            .unwrap_or_else(|| panic!("A ran {args:?}"));
        assert_eq!(e.code(), Some("NOPERM"), "{args:?}: {e}");
    }
    // A's own keys work; B's key is as B's app left it.
    let own_key = format!("{}hits", cache_a.prefix);
    assert_eq!(
        rcmd(&mut con, &["INCR", &own_key]).unwrap(),
        Value::Int(1),
        "A's own key"
    );
    assert_eq!(rget(&mut redis_admin(), &b_key).as_deref(), Some("1"));
    assert_eq!(dt.get(&b, "/cgi-bin/cache"), (200, "2".into()));
    dt.assert_no_secret_printed();
}

/// Foreign objects a test seeds: a role and a database (owned by it, its ACL made by hand), a role
/// named like one of codeb's but not one it makes, a Redis user, and keys next to a project's
/// prefix.
struct Foreign {
    role: String,
    near_role: String,
    database: String,
    user: String,
    keys: Vec<String>,
}

impl Foreign {
    fn seed(gone: &mut Gone, near: &str) -> Foreign {
        let n = unique("dtf").replace('-', "_");
        let f = Foreign {
            role: n.clone(),
            near_role: format!("{near}_production_3"),
            database: format!("{n}_db"),
            user: format!("{}.user", n.replace('_', ".")),
            keys: vec![
                format!("{n}:a"),
                format!("{near}:production"),
                format!("{near}:productionx:k"),
                format!("{near}x:production:k"),
            ],
        };
        gone.sql.extend([
            format!("DROP DATABASE IF EXISTS {}", ident(&f.database)),
            format!("DROP ROLE IF EXISTS {}", ident(&f.role)),
            format!("DROP ROLE IF EXISTS {}", ident(&f.near_role)),
        ]);
        gone.redis_users.push(f.user.clone());
        gone.redis_keys.extend(f.keys.iter().cloned());
        let c = pg_admin("postgres");
        for sql in [
            format!(
                "CREATE ROLE {} LOGIN PASSWORD 'dtf-pw' CONNECTION LIMIT 3",
                ident(&f.role)
            ),
            format!("COMMENT ON ROLE {} IS 'made by hand'", ident(&f.role)),
            format!("CREATE ROLE {} NOLOGIN", ident(&f.near_role)),
            format!(
                "COMMENT ON ROLE {} IS 'managed by codeb elsewhere: not/this'",
                ident(&f.near_role)
            ),
            format!(
                "CREATE DATABASE {} OWNER {}",
                ident(&f.database),
                ident(&f.role)
            ),
            format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", ident(&f.database)),
            format!(
                "GRANT CONNECT ON DATABASE {} TO {}",
                ident(&f.database),
                ident(&f.near_role)
            ),
            format!("COMMENT ON DATABASE {} IS 'hand-made'", ident(&f.database)),
        ] {
            block(c.batch_execute(&sql)).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        let mut r = redis_admin();
        let prefix = format!("~{n}:*");
        rcmd(
            &mut r,
            &["ACL", "SETUSER", &f.user, "on", ">dtf-pw", &prefix, "+get"],
        )
        .unwrap();
        for (i, k) in f.keys.iter().enumerate() {
            rcmd(&mut r, &["SET", k, &format!("value-{i}")]).unwrap();
        }
        f
    }

    /// Everything about them as text.
    fn snapshot(&self) -> Vec<String> {
        let mut r = redis_admin();
        let mut out = vec![
            role_row(&self.role),
            role_row(&self.near_role),
            db_row(&self.database),
            format!("{:?}", acl_user(&self.user)),
        ];
        out.extend(
            self.keys
                .iter()
                .map(|k| format!("{k}={:?}", rget(&mut r, k))),
        );
        out
    }
}

#[test]
fn foreign_roles_databases_users_and_keys_stay_the_same_through_apply_delete_and_prune() {
    let _l = lock();
    let dt = Dt::new();
    let (p, q) = (unique("dtfp"), unique("dtfq"));
    let mut gone = Gone::new(&dt, &[&p, &q]);
    let foreign = Foreign::seed(&mut gone, &p);
    let before = foreign.snapshot();
    assert!(acl_user(&foreign.user).is_some());
    assert!(before.iter().all(|s| !s.contains("none")), "{before:?}");

    let both = dt.manifests(&[project(&p, BOTH_DROP), project(&q, BOTH_DROP)]);
    dt.applied(&both);
    dt.serving(&p);
    assert_eq!(dt.get(&p, "/cgi-bin/cache"), (200, "1".into()));
    assert_eq!(foreign.snapshot(), before, "after apply");
    dt.applied(&both);
    assert_eq!(foreign.snapshot(), before, "after a second apply");

    let del = dt.codeb(&["delete", "project", &p]);
    assert_eq!(del.status.code(), Some(0), "delete: {}", text(&del));
    let (np, nq) = (PgNames::of(&key(&p)), PgNames::of(&key(&q)));
    assert!(!database_exists(&np.database), "{p}'s database dropped");
    assert_eq!(acl_user(&CacheNames::of(&key(&p)).user), None);
    assert_eq!(foreign.snapshot(), before, "after delete (onDelete: drop)");

    // The prune removes q; a project of the plain app keeps the manifests from being empty.
    let stand_in = unique("dtfr");
    gone.projects.push(stand_in.clone());
    let none = dt.manifests(&[project(
        &stand_in,
        Wants {
            database: false,
            cache: false,
            drop: false,
        },
    )]);
    let prune = dt.codeb(&[
        "apply",
        "--prune",
        "--prune-project",
        &q,
        "-f",
        none.to_str().unwrap(),
    ]);
    assert_eq!(prune.status.code(), Some(0), "prune: {}", text(&prune));
    assert!(!database_exists(&nq.database), "{q}'s database dropped");
    assert!(!role_exists(&nq.logins[0]));
    assert_eq!(foreign.snapshot(), before, "after apply --prune");
    dt.assert_no_secret_printed();
}

#[test]
fn a_name_held_by_a_foreign_database_or_redis_user_is_a_conflict_and_others_still_converge() {
    let _l = lock();
    let dt = Dt::new();
    let (p, s, r) = (unique("dtcp"), unique("dtcs"), unique("dtcr"));
    let mut gone = Gone::new(&dt, &[&p, &s, &r]);
    let names = PgNames::of(&key(&p));
    let holder = format!("{}_holder", unique("dtf").replace('-', "_"));
    let user = CacheNames::of(&key(&s)).user;
    gone.sql.extend([
        format!("DROP DATABASE IF EXISTS {}", ident(&names.database)),
        format!("DROP ROLE IF EXISTS {}", ident(&holder)),
    ]);
    gone.redis_users.push(user.clone());
    let c = pg_admin("postgres");
    for sql in [
        format!("CREATE ROLE {} NOLOGIN", ident(&holder)),
        format!(
            "CREATE DATABASE {} OWNER {}",
            ident(&names.database),
            ident(&holder)
        ),
    ] {
        block(c.batch_execute(&sql)).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    rcmd(
        &mut redis_admin(),
        &[
            "ACL",
            "SETUSER",
            &user,
            "on",
            ">dtf-pw",
            "~elsewhere:*",
            "+get",
        ],
    )
    .unwrap();
    let before = (db_row(&names.database), acl_user(&user));

    let dir = dt.manifests(&[
        project(&p, BOTH_DROP),
        project(
            &s,
            Wants {
                database: false,
                cache: true,
                drop: true,
            },
        ),
        project(&r, BOTH_DROP),
    ]);
    let out = dt.apply(&dir);
    assert_eq!(out.status.code(), Some(1), "not converged: {}", text(&out));
    let said = said(&out);
    assert!(
        said.contains(&format!(
            "PostgreSQL database \"{}\" exists, owned by \"{holder}\", not codeb's",
            names.database
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "Redis user {user} exists and codeb has no record of creating it"
        )),
        "{said}"
    );
    assert_eq!((db_row(&names.database), acl_user(&user)), before);
    // Nothing of p's or s's was made, and their releases wait.
    assert!(!role_exists(names.owner()) && !role_exists(&names.logins[0]));
    assert!(!database_exists(&PgNames::of(&key(&s)).database));
    for waiting in [&p, &s] {
        assert!(
            sb_slots(&dt, waiting).is_empty(),
            "{waiting}'s release waits"
        );
    }
    // r, in the same apply, converged and serves with its data.
    dt.serving(&r);
    assert_eq!(dt.get(&r, "/cgi-bin/db"), (200, "1".into()));
    assert_eq!(dt.get(&r, "/cgi-bin/cache"), (200, "1".into()));
    dt.app_env(&r);
    dt.assert_no_secret_printed();
}

/// The slots `get slots` lists for a project.
fn sb_slots(dt: &Dt, project: &str) -> Vec<serde_json::Value> {
    dt.sb
        .slots()
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["project"] == project)
        .cloned()
        .collect()
}

#[test]
fn a_deleted_project_keeps_its_data_by_default_finds_it_again_and_drop_removes_it() {
    let _l = lock();
    let dt = Dt::new();
    let t = unique("dtret");
    let _gone = Gone::new(&dt, &[&t]);
    let (names, cache) = (PgNames::of(&key(&t)), CacheNames::of(&key(&t)));
    let hits = format!("{}hits", cache.prefix);
    let retain = Wants {
        database: true,
        cache: true,
        drop: false,
    };
    let dir = dt.manifests(&[project(&t, retain)]);
    dt.applied(&dir);
    dt.serving(&t);
    assert_eq!(dt.get(&t, "/cgi-bin/db"), (200, "1".into()));
    assert_eq!(dt.get(&t, "/cgi-bin/cache"), (200, "1".into()));
    dt.app_env(&t);

    let del = dt.codeb(&["delete", "project", &t]);
    assert_eq!(del.status.code(), Some(0), "delete: {}", text(&del));
    assert!(
        said(&del).contains("retained (onDelete: retain)"),
        "{}",
        text(&del)
    );
    assert!(sb_slots(&dt, &t).is_empty(), "the project is gone");
    for role in [names.owner(), &names.logins[0], &names.logins[1]] {
        assert!(role_exists(role), "role {role} retained");
    }
    let count: i64 = block(pg_admin(&names.database).query_one("SELECT count(*) FROM hits", &[]))
        .expect("the database and its table retained")
        .get(0);
    assert_eq!(count, 1);
    assert!(acl_user(&cache.user).is_some(), "the ACL user retained");
    assert_eq!(rget(&mut redis_admin(), &hits).as_deref(), Some("1"));

    // Re-created, it finds its data again.
    dt.applied(&dir);
    dt.serving(&t);
    dt.app_env(&t);
    assert_eq!(dt.get(&t, "/cgi-bin/db"), (200, "2".into()));
    assert_eq!(dt.get(&t, "/cgi-bin/cache"), (200, "2".into()));

    // With onDelete: drop, a delete removes all of it.
    let dir = dt.manifests(&[project(&t, BOTH_DROP)]);
    dt.applied(&dir);
    let del = dt.codeb(&["delete", "project", &t]);
    assert_eq!(del.status.code(), Some(0), "delete: {}", text(&del));
    assert!(said(&del).contains("destructive"), "{}", text(&del));
    assert!(!database_exists(&names.database));
    for role in [names.owner(), &names.logins[0], &names.logins[1]] {
        assert!(!role_exists(role), "role {role} dropped");
    }
    assert_eq!(acl_user(&cache.user), None);
    assert_eq!(rget(&mut redis_admin(), &hits), None);
    dt.assert_no_secret_printed();
}

#[test]
fn an_unreachable_server_or_a_wrong_admin_password_is_a_clear_error_and_prints_no_secret() {
    let _l = lock();
    let dt = Dt::new();
    let (u, v, w) = (unique("dtbu"), unique("dtbv"), unique("dtbw"));
    let _gone = Gone::new(&dt, &[&u, &v, &w]);

    // PostgreSQL where nothing listens: an error naming the endpoint, within seconds; a project
    // without a database in the same apply converges.
    let dead = "postgres://codeb_admin@127.0.0.1:1/postgres";
    let dir = dt.manifests_at(
        dead,
        &redis_url(),
        &[
            project(
                &u,
                Wants {
                    database: true,
                    cache: false,
                    drop: true,
                },
            ),
            project(
                &v,
                Wants {
                    database: false,
                    cache: false,
                    drop: false,
                },
            ),
        ],
    );
    let started = Instant::now();
    let out = dt.apply(&dir);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(said(&out).contains("127.0.0.1:1"), "{}", text(&out));
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(sb_slots(&dt, &u).is_empty(), "{u}'s release waits");
    assert!(
        eventually(Duration::from_secs(10), || serves(
            &dt.sb,
            &hostname(&v),
            "v1"
        )),
        "{v} serves"
    );

    // Wrong admin passwords: a clear refusal, nothing created.
    let dir = dt.manifests(&[project(&w, BOTH_DROP)]);
    let (wrong_pg, wrong_redis) = ("dt-wrong-pg-password-1", "dt-wrong-redis-password-1");
    dt.secrets
        .borrow_mut()
        .extend([wrong_pg.to_string(), wrong_redis.to_string()]);
    let out = dt.codeb_env(
        &["apply", "-f", dir.to_str().unwrap()],
        &[
            ("PG_ADMIN_PASSWORD", wrong_pg),
            ("REDIS_ADMIN_PASSWORD", wrong_redis),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = said(&out);
    for server in [
        format!("PostgreSQL at {} refused the login", url_host(&pg_url())),
        format!("Redis at {} refused the login", url_host(&redis_url())),
    ] {
        assert!(said.contains(&server), "{server}: {said}");
    }
    let names = PgNames::of(&key(&w));
    assert!(!role_exists(names.owner()) && !role_exists(&names.logins[0]));
    assert!(!database_exists(&names.database));
    assert_eq!(acl_user(&CacheNames::of(&key(&w)).user), None);
    assert!(sb_slots(&dt, &w).is_empty(), "{w}'s release waits");
    // The same apply with the right passwords converges.
    dt.applied(&dir);
    dt.app_env(&w);
    dt.assert_no_secret_printed();
}

fn url_host(url: &str) -> String {
    codeb::model::data::url_host(url).unwrap().to_string()
}
