//! Backup and restore throughput of a 100 MB database (issue 17's number), through codeb's own
//! code path: `backup::postgres::backup` (snapshot, row counts, `pg_dump -Fc`, SHA-256, manifest,
//! rename, verify) and `backup::postgres::restore` (verify, create, `pg_restore`, row counts).
//! MB/s is the database's size (`pg_database_size`) over the wall time.
//!
//! Run by `benches/backup.sh` against the PostgreSQL in `CODEB_TEST_PG_URL` (a superuser; the
//! password in `PG_ADMIN_PASSWORD`). Makes its own roles and databases (`codeb-bench-backup*`)
//! and drops them at the end. `MB` sets the size (default 100), `RUNS` the runs (default 3).

use std::str::FromStr;
use std::time::{Instant, SystemTime};

use codeb::backup::{postgres::PgAdmin, Dest};
use codeb::model::data::PgNames;
use codeb::model::vars::SecretText;
use codeb::model::EnvKey;

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

async fn client(db: &str) -> tokio_postgres::Client {
    let mut c = tokio_postgres::Config::from_str(&var("CODEB_TEST_PG_URL")).unwrap();
    c.password(var("PG_ADMIN_PASSWORD")).dbname(db);
    let (client, conn) = c.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

fn q(s: &str) -> String {
    format!("\"{s}\"")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list
    }
    let mb: u64 = std::env::var("MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let admin = PgAdmin {
        url: var("CODEB_TEST_PG_URL"),
        password: SecretText(var("PG_ADMIN_PASSWORD")),
    };
    let key = EnvKey::new("codeb-bench-backup", "production");
    let names = PgNames::of(&key);
    let (db, owner) = (q(&names.database), q(names.owner()));
    let root = client("postgres").await;
    root.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await
        .unwrap();
    root.batch_execute(&format!("DROP ROLE IF EXISTS {owner}"))
        .await
        .unwrap();
    root.batch_execute(&format!("CREATE ROLE {owner} NOLOGIN"))
        .await
        .unwrap();
    root.batch_execute(&format!("CREATE DATABASE {db} OWNER {owner}"))
        .await
        .unwrap();

    // Rows of ~300 bytes: an id, a timestamp, a number and 256 hex characters (8 MD5s), plus the
    // primary key's index (counted in the database's size, rebuilt by the restore, not dumped).
    let c = client(&names.database).await;
    let t0 = Instant::now();
    c.batch_execute(&format!(
        "SET ROLE {owner};
         CREATE TABLE events (id bigint PRIMARY KEY, at timestamptz, n int, body text);
         CREATE TABLE small (id int PRIMARY KEY, name text);
         INSERT INTO small SELECT g, 'name ' || g FROM generate_series(1, 1000) g;"
    ))
    .await
    .unwrap();
    let mut rows = 0u64;
    loop {
        let size: i64 = c
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await
            .unwrap()
            .get(0);
        if size as u64 >= mb << 20 {
            break;
        }
        c.batch_execute(&format!(
            "INSERT INTO events SELECT g, now() - g * interval '1 s', g % 1000,
               md5(g::text) || md5((g+1)::text) || md5((g+2)::text) || md5((g+3)::text) ||
               md5((g+4)::text) || md5((g+5)::text) || md5((g+6)::text) || md5((g+7)::text)
             FROM generate_series({}, {}) g",
            rows + 1,
            rows + 50_000
        ))
        .await
        .unwrap();
        rows += 50_000;
    }
    c.batch_execute("VACUUM ANALYZE").await.unwrap();
    let size: i64 = c
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .unwrap()
        .get(0);
    let size_mb = size as f64 / (1 << 20) as f64;
    println!(
        "database {}: {size_mb:.1} MiB, {} rows in events (made in {:.1} s)",
        names.database,
        rows,
        t0.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir().unwrap();
    let dest = Dest::new(dir.path());
    let (mut backups, mut restores) = (Vec::new(), Vec::new());
    let mut targets = Vec::new();
    for run in 0..runs {
        let t = Instant::now();
        let done = codeb::backup::postgres::backup(&admin, &dest, &key, 100, SystemTime::now())
            .await
            .unwrap();
        let b = t.elapsed().as_secs_f64();
        let target = format!("{}_bench_{run}", names.database);
        targets.push(target.clone());
        let t = Instant::now();
        let r =
            codeb::backup::postgres::restore(&admin, &dest, &key, &done.manifest.id, Some(&target))
                .await
                .unwrap();
        let rs = t.elapsed().as_secs_f64();
        assert!(r.tables.iter().all(|t| t.expected == t.actual));
        println!(
            "run {run}: backup {b:.2} s ({:.1} MB/s, dump {:.1} MiB), restore {rs:.2} s ({:.1} MB/s), {} tables verified",
            size_mb / b,
            done.manifest.size() as f64 / (1 << 20) as f64,
            size_mb / rs,
            r.tables.len()
        );
        backups.push(size_mb / b);
        restores.push(size_mb / rs);
        root.batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", q(&target)))
            .await
            .unwrap();
    }
    println!(
        "median of {runs}: backup {:.1} MB/s, restore {:.1} MB/s (database {size_mb:.1} MiB)",
        median(backups),
        median(restores)
    );
    drop(c);
    root.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
    root.batch_execute(&format!("DROP ROLE {owner}"))
        .await
        .unwrap();
}
