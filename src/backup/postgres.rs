//! The database backup (`pg_dump`, custom format) and its verified restore into a fresh database.
//!
//! # Consistency
//! The backup opens a `REPEATABLE READ READ ONLY` transaction in the environment's database as the
//! admin, exports its snapshot (`pg_export_snapshot()`), counts the rows of every user table in it
//! and runs `pg_dump --snapshot=…` while the transaction stays open: the dump and the counts are
//! of the same instant, so a restore can be checked table by table, exactly.
//!
//! # Credentials
//! The admin password reaches `pg_dump`/`pg_restore` in their own `PGPASSWORD` (never an argument,
//! a file or a log line; `--no-password` makes them fail rather than prompt).
//!
//! # Assumptions
//! The admin can read every table of a project database and act as its owner role (a superuser,
//! as the stack's `codeb_admin` is). `pg_dump`/`pg_restore` on `PATH` are at least the server's
//! version (Debian's `postgresql-client-15` for PostgreSQL 15).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::str::FromStr;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::dest::{self, Dest};
use super::manifest::{self, Kind, Manifest};
use super::{Done, Error, Result};
use crate::model::data::{url_host, PgNames, PG_NAME_MAX};
use crate::model::vars::SecretText;
use crate::model::EnvKey;

/// The admin connection a Host declares (`spec.postgres`), with the password read from its
/// variable.
#[derive(Clone)]
pub struct PgAdmin {
    /// Without a password: `postgres://codeb_admin@127.0.0.1:5432/postgres`.
    pub url: String,
    pub password: SecretText,
}

impl PgAdmin {
    /// `host:port`, for messages.
    pub fn endpoint(&self) -> String {
        url_host(&self.url).unwrap_or(&self.url).to_string()
    }

    fn config(&self) -> Result<tokio_postgres::Config> {
        let mut c = tokio_postgres::Config::from_str(&self.url).map_err(|e| Error::Postgres {
            endpoint: self.endpoint(),
            message: format!("the admin URL is not a PostgreSQL URL: {e}"),
        })?;
        c.password(self.password.0.as_bytes());
        c.application_name("codeb-backup");
        c.connect_timeout(std::time::Duration::from_secs(10));
        Ok(c)
    }

    /// A connection to `database` (the URL's own when `None`).
    async fn connect(&self, database: Option<&str>) -> Result<tokio_postgres::Client> {
        let mut c = self.config()?;
        if let Some(db) = database {
            c.dbname(db);
        }
        let (client, conn) = c
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| self.err(e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "backup: PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    fn err(&self, e: tokio_postgres::Error) -> Error {
        let message = match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => crate::backend::error_chain(&e),
        };
        Error::Postgres {
            endpoint: self.endpoint(),
            message,
        }
    }

    /// `pg_dump`/`pg_restore` with the connection's host, port and user, the password in their
    /// environment only.
    fn tool(&self, tool: &'static str, database: &str) -> Result<tokio::process::Command> {
        let c = self.config()?;
        let mut cmd = tokio::process::Command::new(tool);
        cmd.arg("--no-password");
        match c.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => {
                cmd.arg("--host").arg(h);
            }
            Some(tokio_postgres::config::Host::Unix(p)) => {
                cmd.arg("--host").arg(p);
            }
            None => {}
        }
        if let Some(port) = c.get_ports().first() {
            cmd.arg("--port").arg(port.to_string());
        }
        if let Some(user) = c.get_user() {
            cmd.arg("--username").arg(user);
        }
        cmd.arg("--dbname").arg(database);
        cmd.env("PGPASSWORD", &self.password.0)
            .env("PGAPPNAME", "codeb-backup")
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGPASSFILE")
            .env_remove("PGSERVICE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Ok(cmd)
    }
}

/// A quoted identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The user tables of the connected database (plain tables and partitions; not the catalogs',
/// not an extension's) and their rows, as `schema.table`.
async fn count_rows(admin: &PgAdmin, c: &tokio_postgres::Client) -> Result<BTreeMap<String, u64>> {
    let rows = c
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r'
                AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
                AND NOT EXISTS (SELECT 1 FROM pg_depend d
                                 WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                   AND d.deptype = 'e')
              ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| admin.err(e))?;
    let mut out = BTreeMap::new();
    for r in rows {
        let (schema, table): (String, String) = (r.get(0), r.get(1));
        let q = format!("SELECT count(*) FROM {}.{}", ident(&schema), ident(&table));
        let n: i64 = c.query_one(&q, &[]).await.map_err(|e| admin.err(e))?.get(0);
        out.insert(format!("{schema}.{table}"), n as u64);
    }
    Ok(out)
}

/// Runs a tool to its end: its stderr's last 2,000 bytes in the error when it fails.
async fn run(tool: &'static str, mut cmd: tokio::process::Command) -> Result<()> {
    let out = match cmd.output().await {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::ToolMissing { tool })
        }
        Err(e) => return Err(Error::io(tool)(e)),
    };
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut from = stderr.len().saturating_sub(2000);
    while !stderr.is_char_boundary(from) {
        from += 1;
    }
    let tail = stderr[from..].trim().to_string();
    Err(Error::Tool {
        tool,
        status: out.status.to_string(),
        stderr: tail,
    })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Refused(format!("a backup task failed: {e}")))?
}

/// Backs up one environment's database into `dest`, verifies it in place, then deletes that
/// environment's database backups beyond `keep`.
///
/// # Errors
/// [`Error::Postgres`] (unreachable, wrong password, no such database), [`Error::ToolMissing`],
/// [`Error::Tool`] (`pg_dump` failed: its stderr), [`Error::Io`]. Nothing is left in `dest` on
/// failure.
pub async fn backup(
    admin: &PgAdmin,
    dest: &Dest,
    key: &EnvKey,
    keep: u32,
    now: SystemTime,
) -> Result<Done> {
    let start = Instant::now();
    let names = PgNames::of(key);
    let staging = dest.stage(&key.project, &key.env, Kind::Database, now)?;
    let c = admin.connect(Some(&names.database)).await?;
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| admin.err(e))?;
    let row = c
        .query_one(
            "SELECT pg_export_snapshot(), current_setting('server_version')",
            &[],
        )
        .await
        .map_err(|e| admin.err(e))?;
    let (snapshot, version): (String, String) = (row.get(0), row.get(1));
    let tables = count_rows(admin, &c).await?;
    let file = Kind::Database.file();
    let mut cmd = admin.tool("pg_dump", &names.database)?;
    cmd.arg("--format=custom")
        .arg(format!("--snapshot={snapshot}"))
        .arg("--file")
        .arg(staging.file(file));
    run("pg_dump", cmd).await?;
    c.batch_execute("COMMIT").await.map_err(|e| admin.err(e))?;
    drop(c);

    let m = Manifest {
        format: manifest::FORMAT,
        id: staging.id.clone(),
        kind: Kind::Database,
        project: key.project.clone(),
        env: key.env.clone(),
        source: names.database.clone(),
        created: manifest::rfc3339(now),
        codeb_version: env!("CARGO_PKG_VERSION").to_string(),
        server_version: Some(version),
        files: Vec::new(),
        tables: Some(tables),
        keys: None,
    };
    finish(dest, key, staging, m, &[file], keep, start).await
}

/// Hashes the staged files, writes the manifest, renames the backup into place, verifies it and
/// applies retention.
pub(super) async fn finish(
    dest: &Dest,
    key: &EnvKey,
    staging: dest::Staging,
    mut m: Manifest,
    files: &[&'static str],
    keep: u32,
    start: Instant,
) -> Result<Done> {
    let (dest, key, files) = (dest.clone(), key.clone(), files.to_vec());
    blocking(move || {
        m.files = staging.entries(&files)?;
        staging.finish(&m)?;
        let deleted = dest.prune(&key.project, &key.env, m.kind, keep)?;
        Ok(Done {
            manifest: m,
            elapsed_ms: start.elapsed().as_millis() as u64,
            deleted,
        })
    })
    .await
}

/// One table's rows in the backup and in the restored database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCount {
    /// `schema.table`.
    pub table: String,
    /// `None`: not in the backup.
    pub expected: Option<u64>,
    /// `None`: not in the restored database.
    pub actual: Option<u64>,
}

/// What a verified restore did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    pub id: String,
    /// The database restored into.
    pub database: String,
    pub tables: Vec<TableCount>,
    /// The dump's size.
    pub bytes: u64,
    pub elapsed_ms: u64,
}

/// The database a restore creates unless told another: `{database}_restore_{time}`
/// (`shop_production_restore_20261207t121500z`), lower case so that it needs no quotes in psql.
pub fn default_target(names: &PgNames, id: &str) -> Option<String> {
    let (time, _) = manifest::parse_id(id)?;
    let seq = id
        .rsplit_once('-')
        .filter(|(_, n)| n.parse::<u32>().is_ok());
    let name = match seq {
        Some((_, n)) => format!("{}_restore_{}_{n}", names.database, time.to_lowercase()),
        None => format!("{}_restore_{}", names.database, time.to_lowercase()),
    };
    (name.len() <= PG_NAME_MAX).then_some(name)
}

/// Restores backup `id` of `key`'s database into a new database `to` (or [`default_target`]),
/// owned by the environment's owner role, then counts every table's rows and compares them with
/// the backup's.
///
/// # Guarantees
/// - Every file's size and SHA-256 is checked first: a mismatch is [`Error::Checksum`]/[`Error::Size`]
///   and nothing is created.
/// - Never the live database, `postgres` or a template, never a database that exists.
/// - The new database has `CONNECT` and `TEMP` revoked from `PUBLIC`; its objects belong to the
///   owner role (`pg_restore --no-owner --role=OWNER`), so the environment's logins can use it.
/// - `pg_restore` runs in one transaction and stops at the first error; the database it was
///   restoring into is then dropped again.
///
/// # Errors
/// Those above, [`Error::Refused`] for a target that may not be used, [`Error::Mismatch`] when
/// the counts differ (the database is kept), and the backup's.
pub async fn restore(
    admin: &PgAdmin,
    dest: &Dest,
    key: &EnvKey,
    id: &str,
    to: Option<&str>,
) -> Result<Restored> {
    let start = Instant::now();
    let names = PgNames::of(key);
    let (dir, m) = dest.open(&key.project, &key.env, id)?;
    if m.kind != Kind::Database {
        return Err(Error::Refused(format!(
            "backup {id} is a {} backup: restore it as one",
            m.kind
        )));
    }
    let checked = (dir.clone(), m.clone());
    blocking(move || dest::verify(&checked.0, &checked.1)).await?;
    let target = match to {
        Some(t) => t.to_string(),
        None => default_target(&names, id).ok_or_else(|| {
            Error::Refused(format!(
                "the default target database name for {id} is over {PG_NAME_MAX} bytes: name one"
            ))
        })?,
    };
    check_target(&names, &target)?;

    let c = admin.connect(None).await?;
    let owner = names.owner();
    let role = c
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&owner])
        .await
        .map_err(|e| admin.err(e))?;
    if role.is_none() {
        return Err(Error::Refused(format!(
            "the owner role {owner} of {key} does not exist on {}: apply the environment (with its database) first",
            admin.endpoint()
        )));
    }
    let exists = c
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&target])
        .await
        .map_err(|e| admin.err(e))?;
    if exists.is_some() {
        return Err(Error::Refused(format!(
            "database {target} exists on {}: restore into a new one (--to-database NAME)",
            admin.endpoint()
        )));
    }
    // Two statements: CREATE DATABASE cannot run in the implicit transaction of a batch.
    c.batch_execute(&format!(
        "CREATE DATABASE {} OWNER {}",
        ident(&target),
        ident(owner)
    ))
    .await
    .map_err(|e| admin.err(e))?;
    c.batch_execute(&format!(
        "REVOKE CONNECT, TEMP ON DATABASE {} FROM PUBLIC",
        ident(&target)
    ))
    .await
    .map_err(|e| admin.err(e))?;

    let mut cmd = admin.tool("pg_restore", &target)?;
    cmd.arg("--no-owner")
        .arg(format!("--role={owner}"))
        .arg("--exit-on-error")
        .arg("--single-transaction")
        .arg(dir.join(Kind::Database.file()));
    if let Err(e) = run("pg_restore", cmd).await {
        let dropped = c
            .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", ident(&target)))
            .await;
        let note = match dropped {
            Ok(()) => format!("database {target} was dropped again"),
            Err(d) => format!("database {target} is left: {}", admin.err(d)),
        };
        return Err(match e {
            Error::Tool {
                tool,
                status,
                stderr,
            } => Error::Tool {
                tool,
                status,
                stderr: format!("{stderr} ({note})"),
            },
            other => other,
        });
    }
    drop(c);

    let restored = admin.connect(Some(&target)).await?;
    let actual = count_rows(admin, &restored).await?;
    let expected = m.tables.clone().unwrap_or_default();
    let tables = compare(&expected, &actual);
    let differ: Vec<String> = tables
        .iter()
        .filter(|t| t.expected != t.actual)
        .map(|t| {
            let show = |n: Option<u64>| n.map_or("none".to_string(), |n| n.to_string());
            format!(
                "{} expected {} rows, has {}",
                t.table,
                show(t.expected),
                show(t.actual)
            )
        })
        .collect();
    if !differ.is_empty() {
        return Err(Error::Mismatch {
            id: id.to_string(),
            database: target,
            differ: differ.join("; "),
        });
    }
    Ok(Restored {
        id: id.to_string(),
        database: target,
        tables,
        bytes: m.size(),
        elapsed_ms: start.elapsed().as_millis() as u64,
    })
}

/// A target a restore may create: a valid name, not the live database, not `postgres` or a
/// template.
fn check_target(names: &PgNames, target: &str) -> Result<()> {
    if target.is_empty() || target.len() > PG_NAME_MAX || target.contains('\0') {
        return Err(Error::Refused(format!(
            "{target:?} is not a database name (1 to {PG_NAME_MAX} bytes)"
        )));
    }
    if target == names.database {
        return Err(Error::Refused(format!(
            "{target} is the environment's live database: restore into a new one and move the app to it (see docs/backups.md)"
        )));
    }
    if matches!(target, "postgres" | "template0" | "template1") {
        return Err(Error::Refused(format!(
            "{target} is PostgreSQL's own database"
        )));
    }
    Ok(())
}

/// Every table of either side, expected against actual.
pub fn compare(
    expected: &BTreeMap<String, u64>,
    actual: &BTreeMap<String, u64>,
) -> Vec<TableCount> {
    let mut names: Vec<&String> = expected.keys().chain(actual.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|t| TableCount {
            table: t.clone(),
            expected: expected.get(t).copied(),
            actual: actual.get(t).copied(),
        })
        .collect()
}

/// Whether `pg_dump` and `pg_restore` can be run (for a clear error before a schedule starts).
pub fn tools_present() -> Result<()> {
    for tool in ["pg_dump", "pg_restore"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(tool).is_file()));
        if !found {
            return Err(Error::ToolMissing { tool });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_target_is_lower_case_and_never_the_live_database() {
        let names = PgNames::of(&EnvKey::new("shop", "production"));
        assert_eq!(
            default_target(&names, "20261207T121500Z-database").as_deref(),
            Some("shop_production_restore_20261207t121500z")
        );
        assert_eq!(
            default_target(&names, "20261207T121500Z-database-2").as_deref(),
            Some("shop_production_restore_20261207t121500z_2")
        );
        assert!(check_target(&names, "shop_production").is_err());
        assert!(check_target(&names, "postgres").is_err());
        assert!(check_target(&names, &"x".repeat(64)).is_err());
        assert!(check_target(&names, "copy").is_ok());
        let long = PgNames::of(&EnvKey::new("p".repeat(40), "e".repeat(20)));
        assert_eq!(default_target(&long, "20261207T121500Z-database"), None);
    }

    #[test]
    fn a_comparison_names_tables_missing_on_either_side() {
        let e = BTreeMap::from([("public.a".to_string(), 3), ("public.b".to_string(), 1)]);
        let a = BTreeMap::from([("public.a".to_string(), 3), ("public.c".to_string(), 0)]);
        let c = compare(&e, &a);
        assert_eq!(c.len(), 3);
        assert_eq!(c[1].table, "public.b");
        assert_eq!((c[1].expected, c[1].actual), (Some(1), None));
        assert_eq!((c[2].expected, c[2].actual), (None, Some(0)));
    }
}
