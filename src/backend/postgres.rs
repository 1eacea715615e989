//! The PostgreSQL adapter: project roles and databases on one shared server, driven as its admin
//! role over plain TCP (tokio-postgres, no TLS: the server is on loopback or the hosts' bridge).
//!
//! Responsible for the SQL of [`Postgres`]: reading the catalogs into [`ObservedDatabase`] and
//! converging one environment's owner role, login roles and database. It must not decide which
//! environments should have a database (the planner's business), must not retry, and must never
//! let a password reach a message, a log line, a `Debug` output or the server: passwords are sent
//! as SCRAM-SHA-256 verifiers computed here, so not even the server's log (which prints a failed
//! statement) can hold one in clear.
//!
//! # Server facts this relies on (PostgreSQL 15, measured on deploy/stack.sh's server)
//! - `CREATE DATABASE` cannot run inside a transaction block; role statements and `GRANT`/`REVOKE`
//!   can, so `ensure` is three steps: the roles (one transaction), the database, its privileges (one
//!   transaction). Each step is idempotent, so a step that failed is repaired by the next `ensure`.
//! - A role's comment (`COMMENT ON ROLE`) needs `CREATEROLE` to change: a project cannot forge or
//!   remove codeb's mark. A database's owner can rewrite its comment, so a database is codeb's
//!   when its owner role is (the mark lives on the roles only).
//! - Without `REVOKE CONNECT ON DATABASE postgres FROM PUBLIC`, every project's login reaches the
//!   `postgres` database, and `template1` likewise; with `CONNECT` and `TEMP` revoked from `PUBLIC` on a project database,
//!   another project's login is refused there ("permission denied for database").
//! - `ALTER ROLE login SET role = owner` makes every session of the login act as the owner, so
//!   the objects an app creates belong to the owner role, whichever login created them (a
//!   rotation changes the login, not the owner).
//! - A wrong password and an unknown role both answer SQLSTATE 28P01; an address without a
//!   `pg_hba.conf` entry answers 28000.

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use crate::backend::Postgres;
use crate::model::data::{
    parse_pg_mark, DatabaseWrite, ObservedDatabase, ObservedDb, ObservedRole, PgNames,
};
use crate::model::vars::SecretText;

/// The server is local (loopback or a bridge) and answers a connection in milliseconds
/// (measured: 3-10 ms including SCRAM); two seconds to connect is a dead or unreachable one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One call is a handful of catalog statements (an `ensure` took ~40 ms, `CREATE DATABASE` most
/// of it); 30 s bounds a server stuck on a lock without stalling a reconcile for long.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the PostgreSQL adapter. None of them holds a password.
///
/// Worth a retry: [`Error::Unreachable`], [`Error::Timeout`] and [`Error::Sql`] when the server
/// says so (serialization failures, a server shutting down, too many connections). Not worth one
/// until something changes: a bad URL, a refused admin login, a foreign object in the way
/// ([`Error::Conflict`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid PostgreSQL admin URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The URL carried a password: it is not repeated here.
    #[error(
        "the PostgreSQL admin URL must not contain a password: give it in the password variable"
    )]
    PasswordInUrl,
    #[error("cannot reach PostgreSQL at {endpoint} ({op})")]
    Unreachable {
        endpoint: String,
        op: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("PostgreSQL at {endpoint} did not answer {op} within {timeout:?}")]
    Timeout {
        endpoint: String,
        op: &'static str,
        timeout: Duration,
    },
    /// The admin login was refused: a wrong password, an unknown role, or no `pg_hba.conf` entry
    /// for this client's address.
    #[error(
        "PostgreSQL at {endpoint} refused the login of {user} ({code}): check the admin \
         password variable and the server's pg_hba.conf"
    )]
    Refused {
        endpoint: String,
        user: String,
        code: String,
    },
    /// A role or database of codeb's names exists without codeb's mark (or with another
    /// owner's, or another environment's).
    #[error(
        "PostgreSQL at {endpoint}: the {kind} {name:?} exists and is not codeb's ({found}); \
         codeb leaves it alone: rename or remove it, or change the project's name"
    )]
    Conflict {
        endpoint: String,
        kind: &'static str,
        name: String,
        found: String,
    },
    #[error("PostgreSQL at {endpoint} failed {op}")]
    Sql {
        endpoint: String,
        op: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("unexpected answer from PostgreSQL at {endpoint} to {op}: {detail}")]
    Malformed {
        endpoint: String,
        op: &'static str,
        detail: String,
    },
}

impl Error {
    /// True when the same call may succeed later without any change to codeb's inputs.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::Timeout { .. } => true,
            Error::Sql { source, .. } => source.is_closed() || source.code().is_some_and(transient),
            _ => false,
        }
    }
}

/// SQLSTATEs a retry may cure: connection exceptions (08), insufficient resources (53),
/// operator intervention (57: a shutdown, a terminated backend), serialization failures and
/// deadlocks (40), `tuple concurrently updated` (XX000 is too broad to include).
fn transient(code: &SqlState) -> bool {
    let c = code.code();
    c.starts_with("08") || c.starts_with("53") || c.starts_with("57") || c.starts_with("40")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// At the trait's edge: the same text and causes, with [`Error::is_retryable`]'s answer; a
/// conflict keeps the name of the object in the way.
impl From<Error> for super::Error {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::Conflict { name, .. } => super::ErrorKind::Conflict { name: name.clone() },
            _ => super::ErrorKind::from_retryable(e.is_retryable()),
        };
        super::Error::new(super::Backend::Postgres, kind, e)
    }
}

/// One PostgreSQL server, as its admin role. Connects anew for every call (calls are rare: a
/// reconcile's observation and the changes it plans), so nothing is held between them.
pub struct PgAdmin {
    /// `host:port`, for messages.
    endpoint: String,
    /// The admin role's name.
    user: String,
    /// Holds the password; never printed (see the `Debug` impl).
    config: tokio_postgres::Config,
}

impl std::fmt::Debug for PgAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgAdmin")
            .field("endpoint", &self.endpoint)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl PgAdmin {
    /// The admin of the server at `url` (`postgres://codeb_admin@127.0.0.1:5432/postgres`: one
    /// TCP host, a user, a database to connect to), logging in with `password`. Makes no
    /// connection.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] for anything but such a URL; [`Error::PasswordInUrl`] when it holds
    /// a password (the password comes from its variable only).
    pub fn new(url: &str, password: &SecretText) -> Result<PgAdmin> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid(
                "expected postgres://USER@HOST:PORT/DATABASE, such as \
                 postgres://codeb_admin@127.0.0.1:5432/postgres",
            ));
        }
        // Checked on the text before parsing: the parser's error would quote the URL.
        let authority = url.split_once("://").map_or("", |(_, rest)| rest);
        let userinfo = authority
            .split(['/', '?'])
            .next()
            .and_then(|a| a.rsplit_once('@'))
            .map(|(u, _)| u);
        if userinfo.is_some_and(|u| u.contains(':')) {
            return Err(Error::PasswordInUrl);
        }
        let mut config =
            tokio_postgres::Config::from_str(url).map_err(|e| invalid(&e.to_string()))?;
        let user = config
            .get_user()
            .ok_or_else(|| invalid("the URL names no user"))?
            .to_string();
        let host = match config.get_hosts() {
            [tokio_postgres::config::Host::Tcp(host)] => host.clone(),
            _ => return Err(invalid("expected exactly one TCP host")),
        };
        let port = match config.get_ports() {
            [] => 5432,
            [port] => *port,
            _ => return Err(invalid("expected at most one port")),
        };
        if config.get_dbname().is_none() {
            config.dbname("postgres");
        }
        config
            .password(password.0.as_bytes())
            .connect_timeout(CONNECT_TIMEOUT)
            .application_name("codeb");
        let endpoint = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(PgAdmin {
            endpoint,
            user,
            config,
        })
    }

    /// One admin connection; its driver task ends when the client is dropped.
    async fn connect(&self, op: &'static str) -> Result<Client> {
        let connecting = tokio::time::timeout(CONNECT_TIMEOUT, self.config.connect(NoTls));
        let (client, connection) = match connecting.await {
            Err(_) => {
                return Err(Error::Timeout {
                    endpoint: self.endpoint.clone(),
                    op,
                    timeout: CONNECT_TIMEOUT,
                })
            }
            Ok(Err(e)) => return Err(self.connect_error(op, e)),
            Ok(Ok(pair)) => pair,
        };
        tokio::spawn(async move {
            // Its error (the server went away) reaches the client's next call too.
            let _ = connection.await;
        });
        Ok(client)
    }

    fn connect_error(&self, op: &'static str, e: tokio_postgres::Error) -> Error {
        match e.code() {
            Some(code)
                if *code == SqlState::INVALID_PASSWORD
                    || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
            {
                Error::Refused {
                    endpoint: self.endpoint.clone(),
                    user: self.user.clone(),
                    code: code.code().to_string(),
                }
            }
            Some(_) => self.sql(op)(e),
            None => Error::Unreachable {
                endpoint: self.endpoint.clone(),
                op,
                source: e,
            },
        }
    }

    /// Maps a statement's error, naming the step.
    fn sql(&self, op: &'static str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
        move |source| Error::Sql {
            endpoint: self.endpoint.clone(),
            op,
            source,
        }
    }

    /// Runs `call` within [`CALL_TIMEOUT`].
    async fn bounded<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout {
                    endpoint: self.endpoint.clone(),
                    op,
                    timeout: CALL_TIMEOUT,
                })
            })
    }

    /// The roles of these names, by name, and the databases, by name.
    async fn read(
        &self,
        client: &Client,
        roles: &[&str],
        databases: &[&str],
    ) -> Result<(
        std::collections::HashMap<String, ObservedRole>,
        std::collections::HashMap<String, ObservedDb>,
    )> {
        let op = "reading the catalogs";
        let rows = client
            .query(ROLES_QUERY, &[&roles])
            .await
            .map_err(self.sql(op))?;
        let mut found = std::collections::HashMap::new();
        for row in rows {
            let role = ObservedRole {
                comment: row.try_get(1).map_err(self.sql(op))?,
                can_login: row.try_get(2).map_err(self.sql(op))?,
                connection_limit: row.try_get(3).map_err(self.sql(op))?,
                settings: row.try_get(4).map_err(self.sql(op))?,
                member_of: row.try_get(5).map_err(self.sql(op))?,
            };
            found.insert(row.try_get::<_, String>(0).map_err(self.sql(op))?, role);
        }
        let rows = client
            .query(DATABASES_QUERY, &[&databases])
            .await
            .map_err(self.sql(op))?;
        let mut dbs = std::collections::HashMap::new();
        for row in rows {
            let db = ObservedDb {
                owner: row.try_get(1).map_err(self.sql(op))?,
                public_connect: row.try_get(2).map_err(self.sql(op))?,
            };
            dbs.insert(row.try_get::<_, String>(0).map_err(self.sql(op))?, db);
        }
        Ok((found, dbs))
    }

    async fn do_observe(&self, names: &[PgNames]) -> Result<Vec<ObservedDatabase>> {
        let client = self.connect("observe").await?;
        let roles: Vec<&str> = names
            .iter()
            .flat_map(|n| [n.owner(), &n.logins[0], &n.logins[1]])
            .collect();
        let databases: Vec<&str> = names.iter().map(|n| n.database.as_str()).collect();
        let (mut found, mut dbs) = self.read(&client, &roles, &databases).await?;
        Ok(names
            .iter()
            .map(|n| ObservedDatabase {
                // An owner role's name is also its database's: take the role first.
                owner: found.get(n.owner()).cloned(),
                logins: [found.remove(&n.logins[0]), found.remove(&n.logins[1])],
                database: dbs.remove(&n.database),
            })
            .collect())
    }

    async fn do_ensure(&self, write: &DatabaseWrite, password: &SecretText) -> Result<()> {
        let names = &write.names;
        if write.login >= names.logins.len() {
            return Err(Error::Malformed {
                endpoint: self.endpoint.clone(),
                op: "ensure",
                detail: format!("login index {} (0 or 1 expected)", write.login),
            });
        }
        if password.0.is_empty() || password.0.contains('\0') {
            return Err(Error::Malformed {
                endpoint: self.endpoint.clone(),
                op: "ensure",
                detail: "an empty password, or one with a NUL byte".to_string(),
            });
        }
        let mut client = self.connect("ensure").await?;

        // Foreign objects first: nothing is written when one is in the way.
        let owner = names.owner();
        let roles = [owner, names.logins[0].as_str(), names.logins[1].as_str()];
        let (found, dbs) = self
            .read(&client, &roles, &[names.database.as_str()])
            .await?;
        let ours = parse_pg_mark(&write.mark);
        for name in roles {
            if let Some(role) = found.get(name) {
                let theirs = role.comment.as_deref().and_then(parse_pg_mark);
                if ours.is_none() || theirs != ours {
                    return Err(Error::Conflict {
                        endpoint: self.endpoint.clone(),
                        kind: "role",
                        name: name.to_string(),
                        found: match &role.comment {
                            None => "no comment".to_string(),
                            Some(c) if theirs.is_some() => format!("marked {c:?}"),
                            Some(_) => "a comment that is not codeb's mark".to_string(),
                        },
                    });
                }
            }
        }
        if let Some(db) = dbs.get(&names.database) {
            if db.owner != owner {
                return Err(Error::Conflict {
                    endpoint: self.endpoint.clone(),
                    kind: "database",
                    name: names.database.clone(),
                    found: format!("owned by {:?}", db.owner),
                });
            }
        }
        let superuser: bool = client
            .query_one(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(self.sql("reading the admin role"))?
            .try_get(0)
            .map_err(self.sql("reading the admin role"))?;

        // 1. The roles, in one transaction.
        let mark = literal(&write.mark);
        let limits = &write.limits;
        let mut sql = String::new();
        let attrs = "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS";
        let o = ident(owner);
        if found.contains_key(owner) {
            sql += &format!("ALTER ROLE {o} NOLOGIN {attrs} CONNECTION LIMIT -1;\n");
        } else {
            sql += &format!("CREATE ROLE {o} NOLOGIN {attrs};\n");
        }
        sql += &format!("COMMENT ON ROLE {o} IS {mark};\n");
        for (i, name) in names.logins.iter().enumerate() {
            let l = ident(name);
            let n = limits.connections;
            if !found.contains_key(name.as_str()) {
                // The other login is made unable to log in until a rotation sets its password.
                sql += &format!("CREATE ROLE {l} NOLOGIN {attrs} IN ROLE {o};\n");
            } else {
                sql += &format!("GRANT {o} TO {l};\n");
            }
            sql += &format!("ALTER ROLE {l} INHERIT {attrs} CONNECTION LIMIT {n};\n");
            if i == write.login {
                let verifier = postgres_protocol::password::scram_sha_256(password.0.as_bytes());
                sql += &format!("ALTER ROLE {l} LOGIN PASSWORD {};\n", literal(&verifier));
            }
            sql += &format!("ALTER ROLE {l} SET role = {o};\n");
            sql += &format!(
                "ALTER ROLE {l} SET statement_timeout = {};\n",
                literal(&format!("{}ms", limits.statement_timeout_ms))
            );
            sql += &format!(
                "ALTER ROLE {l} SET idle_in_transaction_session_timeout = {};\n",
                literal(&format!("{}ms", limits.idle_in_transaction_ms))
            );
            sql += &format!("COMMENT ON ROLE {l} IS {mark};\n");
        }
        let tx = client
            .transaction()
            .await
            .map_err(self.sql("creating the roles"))?;
        tx.batch_execute(&sql)
            .await
            .map_err(self.sql("creating the roles"))?;
        tx.commit().await.map_err(self.sql("creating the roles"))?;

        // 2. The database: `CREATE DATABASE` cannot run in a transaction.
        let d = ident(&names.database);
        if !dbs.contains_key(&names.database) {
            let create = format!("CREATE DATABASE {d} OWNER {o}");
            if let Err(e) = client.batch_execute(&create).await {
                // A concurrent ensure created it meanwhile: the next step checks its owner.
                if e.code() != Some(&SqlState::DUPLICATE_DATABASE) {
                    return Err(self.sql("creating the database")(e));
                }
            }
        }

        // 3. Its privileges, and the shared databases closed to projects, in one transaction:
        // `template1` accepts every role as `postgres` does (measured: a project's login connected).
        let mut sql = format!(
            "REVOKE CONNECT, TEMP ON DATABASE {d} FROM PUBLIC;\n\
             GRANT CONNECT, TEMP ON DATABASE {d} TO {o};\n"
        );
        for shared in ["postgres", "template1"] {
            if !superuser {
                sql += &format!("GRANT CONNECT, TEMP ON DATABASE {shared} TO CURRENT_USER;\n");
            }
            sql += &format!("REVOKE CONNECT, TEMP ON DATABASE {shared} FROM PUBLIC;\n");
        }
        let tx = client
            .transaction()
            .await
            .map_err(self.sql("setting the database's privileges"))?;
        // The owner is checked again under the transaction: a database created by someone else
        // between the read and `CREATE DATABASE` is refused, not adopted.
        let owner_now: Option<String> = tx
            .query_opt(
                "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
                &[&names.database],
            )
            .await
            .map_err(self.sql("setting the database's privileges"))?
            .map(|row| row.try_get(0))
            .transpose()
            .map_err(self.sql("setting the database's privileges"))?;
        if owner_now.as_deref() != Some(owner) {
            return Err(Error::Conflict {
                endpoint: self.endpoint.clone(),
                kind: "database",
                name: names.database.clone(),
                found: format!("owned by {owner_now:?}"),
            });
        }
        tx.batch_execute(&sql)
            .await
            .map_err(self.sql("setting the database's privileges"))?;
        tx.commit()
            .await
            .map_err(self.sql("setting the database's privileges"))?;
        Ok(())
    }

    async fn do_disable_login(&self, role: &str) -> Result<()> {
        let client = self.connect("disable_login").await?;
        let op = "disabling a login";
        let exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
            .await
            .map_err(self.sql(op))?
            .is_some();
        if exists {
            let sql = format!("ALTER ROLE {} NOLOGIN PASSWORD NULL", ident(role));
            client.batch_execute(&sql).await.map_err(self.sql(op))?;
        }
        Ok(())
    }

    async fn do_drop(&self, names: &PgNames) -> Result<()> {
        let client = self.connect("drop_database").await?;
        let owner = names.owner();
        let roles = [owner, names.logins[0].as_str(), names.logins[1].as_str()];
        let (found, dbs) = self
            .read(&client, &roles, &[names.database.as_str()])
            .await?;
        // The caller decided that these are codeb's; still, an unmarked role or a database owned
        // by another role is never dropped.
        for name in roles {
            if let Some(role) = found.get(name) {
                if role.comment.as_deref().and_then(parse_pg_mark).is_none() {
                    return Err(Error::Conflict {
                        endpoint: self.endpoint.clone(),
                        kind: "role",
                        name: name.to_string(),
                        found: "no codeb mark".to_string(),
                    });
                }
            }
        }
        if let Some(db) = dbs.get(&names.database) {
            if db.owner != owner {
                return Err(Error::Conflict {
                    endpoint: self.endpoint.clone(),
                    kind: "database",
                    name: names.database.clone(),
                    found: format!("owned by {:?}", db.owner),
                });
            }
            let op = "dropping the database";
            // No new sessions, then the open ones ended, then the drop (FORCE ends any session
            // that slipped in between).
            let d = ident(&names.database);
            client
                .batch_execute(&format!("ALTER DATABASE {d} ALLOW_CONNECTIONS false"))
                .await
                .map_err(self.sql(op))?;
            client
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&names.database],
                )
                .await
                .map_err(self.sql(op))?;
            client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {d} WITH (FORCE)"))
                .await
                .map_err(self.sql(op))?;
        }
        let present: Vec<String> = roles
            .iter()
            .filter(|r| found.contains_key(**r))
            .map(|r| ident(r))
            .collect();
        if !present.is_empty() {
            let sql = format!("DROP ROLE IF EXISTS {}", present.join(", "));
            client
                .batch_execute(&sql)
                .await
                .map_err(self.sql("dropping the roles"))?;
        }
        Ok(())
    }
}

/// Every role of these names: its comment (codeb's mark), login, limit, settings (for all
/// databases) and memberships.
const ROLES_QUERY: &str = "\
SELECT r.rolname::text, shobj_description(r.oid, 'pg_authid'), r.rolcanlogin, r.rolconnlimit,
       COALESCE((SELECT s.setconfig FROM pg_db_role_setting s
                 WHERE s.setrole = r.oid AND s.setdatabase = 0), '{}'::text[]),
       ARRAY(SELECT g.rolname::text FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
             WHERE m.member = r.oid ORDER BY 1)
FROM pg_roles r WHERE r.rolname = ANY($1)";

/// Every database of these names: its owner, and whether `PUBLIC` may connect.
const DATABASES_QUERY: &str = "\
SELECT d.datname::text, pg_get_userbyid(d.datdba)::text,
       has_database_privilege('public', d.oid, 'CONNECT')
FROM pg_database d WHERE d.datname = ANY($1)";

/// A quoted identifier: `"a-b_c"`, any `"` doubled.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal that means the same whatever `standard_conforming_strings` says: an escape
/// string (`E'…'`) with `\` and `'` doubled.
fn literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

impl Postgres for PgAdmin {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn observe(&self, names: &[PgNames]) -> super::Result<Vec<ObservedDatabase>> {
        Ok(self.bounded("observe", self.do_observe(names)).await?)
    }

    async fn ensure(&self, write: &DatabaseWrite, password: &SecretText) -> super::Result<()> {
        Ok(self
            .bounded("ensure", self.do_ensure(write, password))
            .await?)
    }

    async fn disable_login(&self, role: &str) -> super::Result<()> {
        Ok(self
            .bounded("disable_login", self.do_disable_login(role))
            .await?)
    }

    async fn drop_database(&self, names: &PgNames) -> super::Result<()> {
        Ok(self.bounded("drop_database", self.do_drop(names)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted_whatever_they_hold() {
        assert_eq!(ident("a-b_c"), "\"a-b_c\"");
        assert_eq!(ident("x\"; DROP ROLE y; --"), "\"x\"\"; DROP ROLE y; --\"");
        assert_eq!(literal("it's"), "E'it''s'");
        assert_eq!(literal("a\\'b"), "E'a\\\\''b'");
    }

    #[test]
    fn a_url_with_a_password_is_refused_without_repeating_it() {
        let pw = SecretText("x".into());
        let e = PgAdmin::new("postgres://admin:hunter2@127.0.0.1:5432/postgres", &pw).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = PgAdmin::new("http://127.0.0.1:5432", &pw).unwrap_err();
        assert!(matches!(e, Error::InvalidUrl { .. }), "{e}");
        let ok = PgAdmin::new("postgres://codeb_admin@127.0.0.1:15432/postgres", &pw).unwrap();
        assert_eq!(ok.endpoint, "127.0.0.1:15432");
        let shown = format!("{ok:?}");
        assert!(
            shown.contains("127.0.0.1:15432") && !shown.contains("\"x\""),
            "{shown}"
        );
    }
}
