//! Backups and restores against a real PostgreSQL 15 and Redis 7, with the real `pg_dump` and
//! `pg_restore` (issue 17's proof): backup → drop a table → restore into a new database → the
//! row counts match the originals; a corrupted backup is refused; a cache round trip keeps TTLs
//! and touches no other prefix; retention keeps `keep`.
//!
//! Needs `CODEB_TEST_PG_URL` + `PG_ADMIN_PASSWORD` (a superuser) and `CODEB_TEST_REDIS_URL` +
//! `REDIS_ADMIN_PASSWORD`; a missing one fails the run. Every test makes its own project names
//! and drops what it created.

use std::str::FromStr;
use std::time::{Duration, SystemTime};

use codeb::backup::{self, cache::RedisAdmin, postgres::PgAdmin, Dest, Kind};
use codeb::model::data::{CacheNames, PgNames};
use codeb::model::vars::SecretText;
use codeb::model::EnvKey;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: PostgreSQL and Redis come with deploy/stack.sh (`eval \"$(deploy/stack.sh env)\"`)")
    })
}

fn pg() -> PgAdmin {
    PgAdmin {
        url: env("CODEB_TEST_PG_URL"),
        password: SecretText(env("PG_ADMIN_PASSWORD")),
    }
}

fn redis_admin() -> RedisAdmin {
    RedisAdmin {
        url: env("CODEB_TEST_REDIS_URL"),
        password: SecretText(env("REDIS_ADMIN_PASSWORD")),
    }
}

/// A project name of this test's own.
fn project(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("bk-{tag}-{}-{nanos:x}", std::process::id())
}

async fn client(db: &str) -> tokio_postgres::Client {
    client_as(&env("CODEB_TEST_PG_URL"), &env("PG_ADMIN_PASSWORD"), db).await
}

async fn client_as(url: &str, password: &str, db: &str) -> tokio_postgres::Client {
    let mut c = tokio_postgres::Config::from_str(url).unwrap();
    c.password(password).dbname(db);
    let (client, conn) = c.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Drops the databases and roles a test made, however it ends.
struct Cleanup {
    databases: Vec<String>,
    roles: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (dbs, roles) = (self.databases.clone(), self.roles.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let c = client("postgres").await;
                for db in dbs {
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", q(&db)))
                        .await;
                }
                for r in roles {
                    let _ = c
                        .batch_execute(&format!("DROP ROLE IF EXISTS {}", q(&r)))
                        .await;
                }
            })
        })
        .join()
        .unwrap();
    }
}

/// What provisioning makes for an environment (owner role, its database, one login acting as
/// it), and the app's tables with rows, created as the owner.
async fn provision(key: &EnvKey, cleanup: &mut Cleanup) -> PgNames {
    let names = PgNames::of(key);
    let owner = q(names.owner());
    let login = q(&names.logins[0]);
    cleanup.databases.push(names.database.clone());
    cleanup.roles.push(names.logins[0].clone());
    cleanup.roles.push(names.owner().to_string());
    let admin = client("postgres").await;
    for statement in [
        format!("CREATE ROLE {owner} NOLOGIN"),
        format!("CREATE ROLE {login} LOGIN PASSWORD 'app-pw' IN ROLE {owner}"),
        format!("ALTER ROLE {login} SET role = {owner}"),
        format!("CREATE DATABASE {owner} OWNER {owner}"),
        format!("REVOKE CONNECT, TEMP ON DATABASE {owner} FROM PUBLIC"),
    ] {
        admin.batch_execute(&statement).await.unwrap();
    }
    let db = client(&names.database).await;
    db.batch_execute(&format!(
        "SET ROLE {owner};
         CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL);
         INSERT INTO items (name) SELECT 'item ' || g FROM generate_series(1, 1000) g;
         CREATE TABLE orders (id int PRIMARY KEY, item int REFERENCES items(id));
         INSERT INTO orders SELECT g, g FROM generate_series(1, 10) g;
         CREATE TABLE empty (x int);
         CREATE SCHEMA app;
         CREATE TABLE app.events (at timestamptz DEFAULT now(), what text);
         INSERT INTO app.events (what) SELECT 'e' || g FROM generate_series(1, 37) g;"
    ))
    .await
    .unwrap();
    names
}

async fn count(c: &tokio_postgres::Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

async fn database_exists(name: &str) -> bool {
    client("postgres")
        .await
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_drop_a_table_restore_into_a_new_database_and_the_rows_match() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::new(dir.path());
    let key = EnvKey::new(project("rt"), "production");
    let mut cleanup = Cleanup {
        databases: vec![],
        roles: vec![],
    };
    let names = provision(&key, &mut cleanup).await;

    let done = backup::postgres::backup(&pg(), &dest, &key, 7, SystemTime::now())
        .await
        .unwrap();
    let m = &done.manifest;
    assert_eq!(m.kind, Kind::Database);
    assert_eq!(m.source, names.database);
    let tables = m.tables.clone().unwrap();
    assert_eq!(tables["public.items"], 1000);
    assert_eq!(tables["public.orders"], 10);
    assert_eq!(tables["public.empty"], 0);
    assert_eq!(tables["app.events"], 37);
    assert!(m.server_version.as_deref().unwrap().starts_with("15"));
    let on_disk = dir.path().join(&key.project).join("production").join(&m.id);
    assert!(on_disk.join("manifest.json").is_file());
    assert!(on_disk.join("database.dump").is_file());

    // The live database moves on: a table dropped, rows added.
    let live = client(&names.database).await;
    live.batch_execute("DROP TABLE orders; INSERT INTO items (name) VALUES ('late')")
        .await
        .unwrap();

    let target = format!("{}_copy", names.database);
    cleanup.databases.push(target.clone());
    let restored = backup::postgres::restore(&pg(), &dest, &key, &m.id, Some(&target))
        .await
        .unwrap();
    assert_eq!(restored.database, target);
    assert_eq!(restored.tables.len(), 4);
    assert!(restored
        .tables
        .iter()
        .all(|t| t.expected == t.actual && t.expected.is_some()));
    let copy = client(&target).await;
    assert_eq!(count(&copy, "orders").await, 10);
    assert_eq!(count(&copy, "items").await, 1000);
    assert_eq!(count(&copy, "app.events").await, 37);
    let owner: String = copy
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'orders'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, names.owner(), "restored objects belong to the owner");
    let public_connect: bool = copy
        .query_one(
            "SELECT has_database_privilege('public', current_database(), 'CONNECT')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !public_connect,
        "PUBLIC may not connect to a restored database"
    );

    // The app's login can use the restored database.
    let login = client_as(
        &env("CODEB_TEST_PG_URL").replacen(
            &format!(
                "{}@",
                tokio_postgres::Config::from_str(&env("CODEB_TEST_PG_URL"))
                    .unwrap()
                    .get_user()
                    .unwrap()
            ),
            &format!("{}@", names.logins[0]),
            1,
        ),
        "app-pw",
        &target,
    )
    .await;
    login
        .batch_execute("INSERT INTO orders VALUES (11, 11)")
        .await
        .unwrap();
    assert_eq!(count(&login, "orders").await, 11);

    // The default name, and refusals: an existing database, the live one.
    let default = backup::postgres::restore(&pg(), &dest, &key, &m.id, None)
        .await
        .unwrap();
    cleanup.databases.push(default.database.clone());
    assert!(default
        .database
        .starts_with(&format!("{}_restore_", names.database)));
    let e = backup::postgres::restore(&pg(), &dest, &key, &m.id, Some(&target))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("exists"), "{e}");
    let e = backup::postgres::restore(&pg(), &dest, &key, &m.id, Some(&names.database))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("live database"), "{e}");
    assert_eq!(
        count(&live, "items").await,
        1001,
        "the live database is untouched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_dump_is_refused_naming_the_file_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::new(dir.path());
    let key = EnvKey::new(project("bad"), "production");
    let mut cleanup = Cleanup {
        databases: vec![],
        roles: vec![],
    };
    let names = provision(&key, &mut cleanup).await;
    let done = backup::postgres::backup(&pg(), &dest, &key, 7, SystemTime::now())
        .await
        .unwrap();
    let id = done.manifest.id.clone();
    let file = dir
        .path()
        .join(&key.project)
        .join("production")
        .join(&id)
        .join("database.dump");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();

    let target = format!("{}_bad", names.database);
    cleanup.databases.push(target.clone());
    let e = backup::postgres::restore(&pg(), &dest, &key, &id, Some(&target))
        .await
        .unwrap_err();
    assert!(matches!(e, backup::Error::Checksum { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(text.contains(&done.manifest.files[0].sha256), "{text}");
    assert!(text.contains("corrupted"), "{text}");
    assert!(!database_exists(&target).await, "nothing was created");

    let listed = dest.list(&key.project, None, true).unwrap();
    assert!(matches!(&listed[0].check, backup::dest::Check::Problem(p) if p.contains("corrupted")));
    let unknown = backup::postgres::restore(&pg(), &dest, &key, "20200101T000000Z-database", None)
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, backup::Error::NotFound { .. }),
        "{unknown}"
    );
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    use redis::IntoConnectionInfo;
    let info = env("CODEB_TEST_REDIS_URL").into_connection_info().unwrap();
    let settings = info
        .redis_settings()
        .clone()
        .set_password(env("REDIS_ADMIN_PASSWORD"));
    redis::Client::open(info.set_redis_settings(settings))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn get(c: &mut redis::aio::MultiplexedConnection, k: &str) -> Option<String> {
    redis::cmd("GET").arg(k).query_async(c).await.unwrap()
}

async fn pttl(c: &mut redis::aio::MultiplexedConnection, k: &str) -> i64 {
    redis::cmd("PTTL").arg(k).query_async(c).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_round_trip_keeps_ttls_and_leaves_other_prefixes_alone() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::new(dir.path());
    let p = project("cache");
    let key = EnvKey::new(&p, "production");
    let prefix = CacheNames::of(&key).prefix;
    let other_env = CacheNames::of(&EnvKey::new(&p, "staging")).prefix;
    let other_project = format!("x{p}:production:");
    let mut c = redis_conn().await;
    let k = |s: &str| format!("{prefix}{s}");
    redis::pipe()
        .cmd("SET")
        .arg(k("plain"))
        .arg("v1")
        .ignore()
        .cmd("SET")
        .arg(k("ttl"))
        .arg("v2")
        .arg("PX")
        .arg(600_000)
        .ignore()
        .cmd("HSET")
        .arg(k("hash"))
        .arg("f")
        .arg("g")
        .ignore()
        .cmd("RPUSH")
        .arg(k("list"))
        .arg("a")
        .arg("b")
        .ignore()
        .cmd("SET")
        .arg(k("bin\u{0}*?"))
        .arg(vec![0u8, 255, 1])
        .ignore()
        .cmd("SET")
        .arg(format!("{other_env}plain"))
        .arg("staging")
        .ignore()
        .cmd("SET")
        .arg(format!("{other_project}plain"))
        .arg("other")
        .ignore()
        .query_async::<()>(&mut c)
        .await
        .unwrap();
    for i in 0..1200 {
        redis::cmd("SET")
            .arg(k(&format!("many:{i}")))
            .arg(i)
            .query_async::<()>(&mut c)
            .await
            .unwrap();
    }

    let done = backup::cache::backup(&redis_admin(), &dest, &key, 24, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(done.manifest.keys, Some(1205));
    assert_eq!(done.manifest.source, prefix);

    // The live keys move on.
    redis::pipe()
        .cmd("DEL")
        .arg(k("plain"))
        .ignore()
        .cmd("SET")
        .arg(k("ttl"))
        .arg("changed")
        .ignore()
        .cmd("DEL")
        .arg(k("hash"))
        .ignore()
        .cmd("SET")
        .arg(k("new"))
        .arg("kept")
        .ignore()
        .cmd("SET")
        .arg(format!("{other_env}plain"))
        .arg("staging-2")
        .ignore()
        .query_async::<()>(&mut c)
        .await
        .unwrap();

    let id = done.manifest.id.clone();
    let e = backup::cache::restore(&redis_admin(), &dest, &key, &id, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("--replace-keys"), "{e}");
    assert_eq!(get(&mut c, &k("ttl")).await.as_deref(), Some("changed"));

    let r = backup::cache::restore(&redis_admin(), &dest, &key, &id, true)
        .await
        .unwrap();
    assert_eq!((r.expected, r.restored), (1205, 1205));
    assert_eq!(get(&mut c, &k("plain")).await.as_deref(), Some("v1"));
    assert_eq!(get(&mut c, &k("ttl")).await.as_deref(), Some("v2"));
    let ttl = pttl(&mut c, &k("ttl")).await;
    assert!(ttl > 500_000 && ttl <= 600_000, "the TTL is kept: {ttl}");
    assert_eq!(pttl(&mut c, &k("plain")).await, -1);
    let h: Option<String> = redis::cmd("HGET")
        .arg(k("hash"))
        .arg("f")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(h.as_deref(), Some("g"));
    let bin: Vec<u8> = redis::cmd("GET")
        .arg(k("bin\u{0}*?"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(bin, [0, 255, 1]);
    assert_eq!(get(&mut c, &k("many:1199")).await.as_deref(), Some("1199"));
    assert_eq!(
        get(&mut c, &k("new")).await.as_deref(),
        Some("kept"),
        "keys not in the backup stay"
    );
    assert_eq!(
        get(&mut c, &format!("{other_env}plain")).await.as_deref(),
        Some("staging-2"),
        "another environment's keys are untouched"
    );
    assert_eq!(
        get(&mut c, &format!("{other_project}plain"))
            .await
            .as_deref(),
        Some("other")
    );

    // A database restore of a cache backup is refused.
    let e = backup::postgres::restore(&pg(), &dest, &key, &id, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("is a cache backup"), "{e}");

    let mut del = redis::pipe();
    for pre in [&prefix, &other_env, &other_project] {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", backup::cache::glob_escape(pre)))
            .query_async(&mut c)
            .await
            .unwrap();
        for key in keys {
            del.cmd("DEL").arg(key).ignore();
        }
    }
    del.query_async::<()>(&mut c).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_the_newest_keep_backups() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::new(dir.path());
    let key = EnvKey::new(project("keep"), "production");
    let mut c = redis_conn().await;
    let k = format!("{}a", CacheNames::of(&key).prefix);
    let t0 = SystemTime::now();
    let mut ids = Vec::new();
    for hour in 0..5u64 {
        redis::cmd("SET")
            .arg(&k)
            .arg(hour)
            .query_async::<()>(&mut c)
            .await
            .unwrap();
        let at = t0 + Duration::from_secs(hour * 3600);
        let done = backup::cache::backup(&redis_admin(), &dest, &key, 3, at)
            .await
            .unwrap();
        ids.push(done.manifest.id);
        assert_eq!(
            dest.ids(&key.project, &key.env, Kind::Cache).unwrap().len(),
            (hour as usize + 1).min(3)
        );
    }
    assert_eq!(
        dest.ids(&key.project, &key.env, Kind::Cache).unwrap(),
        ids[2..]
    );
    redis::cmd("DEL")
        .arg(&k)
        .query_async::<()>(&mut c)
        .await
        .unwrap();
}

/// The front ends' path: `backup run`, `backup list` and `restore` as service requests, finding
/// the Host's `postgres`, `redis` and `backups` from the environment's recorded host; and the
/// schedule's `due`.
#[tokio::test(flavor = "multi_thread")]
async fn the_service_backs_up_lists_and_restores_through_the_recorded_host() {
    use codeb::service::{self, Request, Response};
    use std::sync::Arc;

    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = project("svc");
    let key = EnvKey::new(&p, "production");
    let yaml = format!(
        r#"apiVersion: codeb.kr/v1
kind: Host
metadata:
  name: local
spec:
  address: 127.0.0.1
  podman: unix:///run/codeb-stack/podman.sock
  caddy:
    admin: http://127.0.0.1:12019
  postgres: {{url: "{}", passwordEnv: PG_ADMIN_PASSWORD}}
  redis: {{url: "{}", passwordEnv: REDIS_ADMIN_PASSWORD}}
  backups:
    dir: {}
    database: {{every: 24h, keep: 2}}
---
apiVersion: codeb.kr/v1
kind: Zone
metadata:
  name: codeb.test
---
apiVersion: codeb.kr/v1
kind: Project
metadata:
  name: {p}
spec:
  host: local
  zone: codeb.test
  environments:
    production:
      image: localhost/codeb-test-app:v1
      port: 8080
      database: postgres
      cache: redis
"#,
        env("CODEB_TEST_PG_URL"),
        env("CODEB_TEST_REDIS_URL"),
        dir.path().display()
    );
    let manifests = codeb::spec::load_sources(&[codeb::spec::Source {
        name: "backup.yaml".into(),
        text: yaml,
    }])
    .unwrap_or_else(|e| panic!("{e}"));
    let desired = codeb::model::desired::desired(&manifests);
    let store = Arc::new(codeb::store::Store::open(state.path()).unwrap());
    store.put_hosts(desired.hosts.values()).unwrap();
    store.put_declared(desired.envs.values()).unwrap();
    for e in desired.envs.values() {
        let rec =
            codeb::model::EnvRecord::new(e.key.clone(), e.host.clone(), e.hostname.clone(), 21000);
        store.put_env(rec, None).unwrap();
    }
    let config_path = state.path().join("config.yaml");
    let config = codeb::config::Config::parse(
        &config_path,
        "keyVariables: [PG_ADMIN_PASSWORD, REDIS_ADMIN_PASSWORD]\n",
    )
    .unwrap();
    let ctx = service::Ctx::local(
        store.clone(),
        codeb::auth::Caller::internal(),
        Arc::new(config),
    );

    let mut cleanup = Cleanup {
        databases: vec![],
        roles: vec![],
    };
    let names = provision(&key, &mut cleanup).await;
    let mut c = redis_conn().await;
    let cache_key = format!("{}k", CacheNames::of(&key).prefix);
    redis::cmd("SET")
        .arg(&cache_key)
        .arg("v")
        .query_async::<()>(&mut c)
        .await
        .unwrap();

    assert_eq!(
        service::backup::due(&store, SystemTime::now())
            .unwrap()
            .len(),
        2,
        "nothing backed up yet: both kinds are due"
    );
    let run = service::call(
        &ctx,
        Request::BackupRun {
            project: p.clone(),
            environment: None,
            kind: None,
        },
    )
    .await
    .unwrap();
    let Response::BackupRun(made) = run else {
        panic!("{run:?}")
    };
    assert!(made.failed.is_empty(), "{:?}", made.failed);
    assert_eq!(made.made.len(), 2);
    assert!(service::backup::due(&store, SystemTime::now())
        .unwrap()
        .is_empty());
    let later = SystemTime::now() + Duration::from_secs(3601);
    let due: Vec<Kind> = service::backup::due(&store, later)
        .unwrap()
        .into_iter()
        .map(|(_, k)| k)
        .collect();
    assert_eq!(
        due,
        [Kind::Cache],
        "the cache is hourly, the database daily"
    );

    let list = service::call(
        &ctx,
        Request::BackupList {
            project: p.clone(),
            environment: None,
            verify: true,
        },
    )
    .await
    .unwrap();
    let Response::Backups(rows) = list else {
        panic!("{list:?}")
    };
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.check == "verified"), "{rows:?}");
    let db_id = rows
        .iter()
        .find(|r| r.kind == "database")
        .unwrap()
        .id
        .clone();
    let cache_id = rows.iter().find(|r| r.kind == "cache").unwrap().id.clone();
    assert_eq!(rows.iter().find(|r| r.kind == "cache").unwrap().items, 1);

    let target = format!("{}_svc", names.database);
    cleanup.databases.push(target.clone());
    let restored = service::call(
        &ctx,
        Request::Restore {
            project: p.clone(),
            environment: None,
            from: db_id.clone(),
            to_database: Some(target.clone()),
            replace_keys: false,
        },
    )
    .await
    .unwrap();
    let Response::Restored(r) = restored else {
        panic!("{restored:?}")
    };
    assert_eq!(r.database.as_deref(), Some(target.as_str()));
    assert_eq!(r.tables.len(), 4);
    assert!(r.tables.iter().all(|t| t.expected == t.actual));

    let refused = service::call(
        &ctx,
        Request::Restore {
            project: p.clone(),
            environment: None,
            from: cache_id.clone(),
            to_database: None,
            replace_keys: false,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code, service::Code::Invalid);
    assert!(
        refused.message.contains("--replace-keys"),
        "{}",
        refused.message
    );
    let unknown = service::call(
        &ctx,
        Request::Restore {
            project: p.clone(),
            environment: None,
            from: "20200101T000000Z-database".into(),
            to_database: None,
            replace_keys: false,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.code, service::Code::NotFound, "{}", unknown.message);
    redis::cmd("DEL")
        .arg(&cache_key)
        .query_async::<()>(&mut c)
        .await
        .unwrap();

    // The env store's sealed versions go to the same destination, on the database schedule.
    assert_eq!(
        service::backup::env_due(&store, SystemTime::now())
            .unwrap()
            .len(),
        1
    );
    let env_backup = codeb::backup::env_store(&store, &Dest::new(dir.path()), 7, SystemTime::now())
        .await
        .unwrap();
    assert_eq!(env_backup.manifest.kind, Kind::Env);
    let file = dir
        .path()
        .join("_codeb/env")
        .join(&env_backup.manifest.id)
        .join("codeb-env-backup.json");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("codeb-env-backup-v1"), "{text}");
    assert!(service::backup::env_due(&store, SystemTime::now())
        .unwrap()
        .is_empty());
    let e = service::call(
        &ctx,
        Request::Restore {
            project: p.clone(),
            environment: None,
            from: env_backup.manifest.id.clone(),
            to_database: None,
            replace_keys: false,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, service::Code::Invalid, "{}", e.message);
    assert!(
        e.message.contains("codeb env restore-backup"),
        "{}",
        e.message
    );
}
