//! The point-in-time recovery recipe of `docs/backups.md` ("Point-in-time recovery with WAL
//! archiving"), run for real on a throwaway PostgreSQL 15 cluster of this test's own (issue 17:
//! "a documented option with a tested recipe, not a claim").
//!
//! The steps are the doc's, with its paths replaced by the test's directory: `archive_mode` and
//! an `archive_command` into an archive directory, a `pg_basebackup -Ft -z -X none` (and the
//! retention rule's `pg_archivecleanup` with its `.backup` file), rows written after it (batch A), the time noted, more rows (batch B), the cluster lost, then the base backup
//! unpacked into an empty data directory with `restore_command`, `recovery_target_time` and
//! `recovery.signal`: recovery pauses at the target, holds the base rows and batch A and nothing
//! of batch B, and `pg_wal_replay_resume()` makes it a writable cluster on a new timeline that
//! archives on beside the old one's files.
//!
//! Needs root (the cluster runs as the `postgres` user, through `runuser`, as `deploy/stack.sh`
//! runs the stack's) and Debian's `postgresql-15`; a missing binary fails the run, never skips it.
//! It does not use the stack's PostgreSQL: its cluster listens on a free loopback port of its own
//! (no `host` line in its `pg_hba.conf`: only its Unix socket, in the test's directory, lets
//! anyone in) and is stopped and removed when the test ends, also when an assertion fails.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// A bound on every wait: a step that takes longer has failed (each takes well under a second here).
const WAIT: Duration = Duration::from_secs(30);

/// Rows 1..=100 are in the base backup, batch A (101..=150) is committed before the recovery
/// target, batch B (151..=200) after it.
const BASE_ROWS: i64 = 100;
const BATCH_A_LAST: i64 = 150;
const BATCH_B_LAST: i64 = 200;

fn runuser() -> &'static str {
    [
        "/usr/sbin/runuser",
        "/sbin/runuser",
        "/usr/bin/runuser",
        "/bin/runuser",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("runuser (util-linux) is missing: the cluster runs as the postgres user through it")
}

fn bin(name: &str) -> String {
    let path = format!("{PG_BIN}/{name}");
    assert!(
        Path::new(&path).is_file(),
        "{path} is missing: install Debian's postgresql-15 (deploy/stack.sh up does)"
    );
    path
}

/// `program args…` run as the postgres user, from the test's directory; panics unless it exits 0.
fn as_postgres(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = try_as_postgres(dir, program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn try_as_postgres(dir: &Path, program: &str, args: &[&str]) -> Output {
    Command::new(runuser())
        .args(["-u", "postgres", "--", program])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} through runuser: {e}"))
}

/// The throwaway cluster: a traversable temporary directory holding its data directory, WAL
/// archive, base backups, socket and log. Dropping it stops every server it started (immediate
/// shutdown, then SIGKILL) before the directory is removed.
struct Cluster {
    root: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn dir(&self) -> &Path {
        self.root.path()
    }
    fn data(&self) -> PathBuf {
        self.dir().join("data")
    }
    fn lost(&self) -> PathBuf {
        self.dir().join("data.lost")
    }
    fn archive(&self) -> PathBuf {
        self.dir().join("wal")
    }
    fn socket(&self) -> PathBuf {
        self.dir().join("run")
    }
    fn log(&self) -> PathBuf {
        self.dir().join("log/postgres.log")
    }

    fn new() -> Cluster {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "tests/wal_recipe.rs needs root: its cluster runs as the postgres user (deploy/test.sh runs as root)"
        );
        for name in [
            "initdb",
            "pg_ctl",
            "postgres",
            "pg_basebackup",
            "pg_archivecleanup",
            "psql",
        ] {
            bin(name);
        }
        let root = tempfile::Builder::new()
            .prefix("codeb-wal-recipe-")
            .tempdir()
            .unwrap();
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o711)).unwrap();
        let out = try_as_postgres(root.path(), "test", &["-x", root.path().to_str().unwrap()]);
        assert!(
            out.status.success(),
            "the postgres user cannot reach {}: every parent directory must be searchable (o+x)",
            root.path().display()
        );
        // A free loopback port: bound, read, released; the server binds it a moment later.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Cluster { root, port };
        for sub in ["wal", "base", "run", "log"] {
            cluster.postgres_dir(&cluster.dir().join(sub));
        }
        cluster
    }

    /// An empty directory of the postgres user's, 0700 (as `deploy/stack.sh` makes them).
    fn postgres_dir(&self, path: &Path) {
        let out = Command::new("install")
            .args(["-d", "-o", "postgres", "-g", "postgres", "-m", "700"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "install -d {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn psql(&self, sql: &str) -> String {
        let port = self.port.to_string();
        let socket = self.socket();
        let out = try_as_postgres(
            self.dir(),
            &bin("psql"),
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                socket.to_str().unwrap(),
                "-p",
                &port,
                "-d",
                "postgres",
                "-c",
                sql,
            ],
        );
        assert!(
            out.status.success(),
            "psql -c {sql:?} failed ({}): {}\n--- server log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.data();
        let log = self.log();
        let mut all = vec!["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = try_as_postgres(self.dir(), &bin("pg_ctl"), &all);
        assert!(
            out.status.success(),
            "pg_ctl {args:?} failed ({}): {}{}\n--- server log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
    }

    fn log_text(&self) -> String {
        fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Polls `probe` every 20 ms until it answers `Some`, for at most [`WAIT`].
    fn poll<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = probe() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not after {WAIT:?}\n--- server log ---\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Switches to a new WAL segment and waits until the archiver has copied the one just closed
    /// (`pg_stat_archiver` counts a file once `archive_command` exited 0 for it). Returns its name.
    fn switch_and_wait_archived(&self) -> String {
        let segment = self.psql("SELECT pg_walfile_name(pg_switch_wal())");
        assert_eq!(segment.len(), 24, "a WAL file name: {segment:?}");
        self.poll(&format!("{segment} archived"), || {
            let last = self.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
            // Names of one timeline sort by position.
            (last.len() == 24 && last >= segment && self.archive().join(&segment).is_file())
                .then_some(())
        });
        segment
    }

    fn count(&self, sql: &str) -> i64 {
        self.psql(sql)
            .parse()
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for data in [self.data(), self.lost()] {
            let pid_file = data.join("postmaster.pid");
            let Some(pid) = fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.lines().next()?.trim().parse::<i32>().ok())
            else {
                continue;
            };
            let _ = try_as_postgres(
                self.dir(),
                &format!("{PG_BIN}/pg_ctl"),
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "stop",
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "10",
                ],
            );
            // SAFETY: kill with signal 0 only checks the pid; SIGKILL if pg_ctl could not stop it.
            if pid > 0 && unsafe { libc::kill(pid, 0) } == 0 && pid_file.exists() {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // The TempDir field then removes the directory (root may remove the postgres user's files).
    }
}

#[test]
fn pitr_recipe_recovers_to_the_noted_time() {
    let started = Instant::now();
    let c = Cluster::new();
    let archive = c.archive();
    let archive = archive.to_str().unwrap();

    // The cluster: initdb, then its connection settings (a port and socket of its own, no TCP
    // logins) and the doc's step 1.
    c.postgres_dir(&c.data());
    as_postgres(
        c.dir(),
        &bin("initdb"),
        &[
            "-D",
            c.data().to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            // The throwaway cluster's files need not reach the disk (the recipe is what follows).
            "--no-sync",
        ],
    );
    fs::write(
        c.data().join("pg_hba.conf"),
        "# tests/wal_recipe.rs: the Unix socket (in a directory only postgres and root reach), no TCP login\n\
         local all all trust\n\
         local replication all trust\n",
    )
    .unwrap();
    let mut conf = fs::OpenOptions::new()
        .append(true)
        .open(c.data().join("postgresql.conf"))
        .unwrap();
    write!(
        conf,
        "\n# tests/wal_recipe.rs\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
         timezone = 'UTC'\nlog_timezone = 'UTC'\n\
         # docs/backups.md, step 1\n\
         wal_level = replica\narchive_mode = on\n\
         archive_command = 'test ! -f {archive}/%f && cp %p {archive}/%f'\n\
         archive_timeout = 60\n\
         # not the recipe: a throwaway cluster need not wait for the disk (5 s instead of 10 here)\n\
         fsync = off\n",
        c.port,
        c.socket().display(),
    )
    .unwrap();
    drop(conf);
    c.pg_ctl(&["-w", "-t", "30", "start"]);
    assert_eq!(c.psql("SHOW archive_mode"), "on");
    assert_eq!(c.psql("SHOW wal_level"), "replica");
    let t_cluster = started.elapsed();

    c.psql(&format!(
        "CREATE TABLE items (id bigint PRIMARY KEY, batch text NOT NULL); \
         INSERT INTO items SELECT i, 'base' FROM generate_series(1, {BASE_ROWS}) i"
    ));

    // Step 2: the base backup, as the doc writes it. `-X none`: its WAL comes from the archive
    // (pg_basebackup waits until the server has archived the segments the backup needs).
    let base = c.dir().join("base/2026-12-07");
    as_postgres(
        c.dir(),
        &bin("pg_basebackup"),
        &[
            "-h",
            c.socket().to_str().unwrap(),
            "-p",
            &c.port.to_string(),
            "-D",
            base.to_str().unwrap(),
            "-Ft",
            "-z",
            "-X",
            "none",
            "--checkpoint=fast",
        ],
    );
    assert!(base.join("base.tar.gz").is_file(), "base.tar.gz written");
    // It returned once its WAL was archived: the backup history file is there already.
    let backup_file = archived(&c)
        .into_iter()
        .find(|n| n.ends_with(".backup"))
        .unwrap_or_else(|| panic!("no .backup file archived: {:?}", archived(&c)));
    // The doc's retention rule: everything before the oldest kept base backup may go.
    let before = archived(&c).len();
    as_postgres(c.dir(), &bin("pg_archivecleanup"), &[archive, &backup_file]);
    let kept = &backup_file[..24];
    assert!(
        archived(&c).iter().all(|n| n.as_str() >= kept),
        "pg_archivecleanup kept only {kept} and later: {:?}",
        archived(&c)
    );
    let cleaned = before - archived(&c).len();
    let t_base = started.elapsed();

    // Batch A, then the time to recover to, then its WAL archived.
    c.psql(&format!(
        "INSERT INTO items SELECT i, 'A' FROM generate_series({}, {BATCH_A_LAST}) i",
        BASE_ROWS + 1
    ));
    let target = c.psql("SELECT clock_timestamp()");
    let segment_a = c.switch_and_wait_archived();

    // Batch B: committed after the target, archived too (a recovery that replayed everything
    // would see it).
    c.psql(&format!(
        "INSERT INTO items SELECT i, 'B' FROM generate_series({}, {BATCH_B_LAST}) i",
        BATCH_A_LAST + 1
    ));
    let segment_b = c.switch_and_wait_archived();
    assert!(segment_b > segment_a);
    assert_eq!(c.count("SELECT count(*) FROM items"), BATCH_B_LAST);
    let t_archived = started.elapsed();

    // The cluster is lost: stopped without a clean shutdown, its data directory moved aside.
    c.pg_ctl(&["-w", "-t", "30", "stop", "-m", "immediate"]);
    fs::rename(c.data(), c.lost()).unwrap();

    // Step 3: the base backup into an empty data directory, the recovery settings, the signal.
    c.postgres_dir(&c.data());
    as_postgres(
        c.dir(),
        "tar",
        &[
            "-xzf",
            base.join("base.tar.gz").to_str().unwrap(),
            "-C",
            c.data().to_str().unwrap(),
        ],
    );
    let mut conf = fs::OpenOptions::new()
        .append(true)
        .open(c.data().join("postgresql.conf"))
        .unwrap();
    write!(
        conf,
        "\n# docs/backups.md, step 3\nrestore_command = 'cp {archive}/%f %p'\nrecovery_target_time = '{target}'\n"
    )
    .unwrap();
    drop(conf);
    as_postgres(
        c.dir(),
        "touch",
        &[c.data().join("recovery.signal").to_str().unwrap()],
    );
    c.pg_ctl(&["-w", "-t", "30", "start"]);

    // Recovery replays the archive up to the target and pauses there (recovery_target_action's
    // default), read-only: the check the doc asks for before resuming.
    c.poll("recovery paused at the target", || {
        (c.psql("SELECT pg_get_wal_replay_pause_state()") == "paused").then_some(())
    });
    assert_eq!(c.psql("SELECT pg_is_in_recovery()"), "t");
    let check = |when: &str| {
        assert_eq!(
            c.psql("SELECT batch || ':' || count(*) || ':' || min(id) || '-' || max(id) FROM items GROUP BY batch ORDER BY min(id)"),
            format!("base:{BASE_ROWS}:1-{BASE_ROWS}\nA:{}:{}-{BATCH_A_LAST}", BATCH_A_LAST - BASE_ROWS, BASE_ROWS + 1),
            "{when}: the base rows and batch A, nothing of batch B"
        );
    };
    check("paused at the target");
    let log = c.log_text();
    assert!(
        log.contains("recovery stopping before commit of transaction"),
        "recovery stopped at batch B's commit, not at the end of the archive:\n{log}"
    );

    // Resume: recovery ends, the cluster is promoted onto timeline 2 and writable.
    c.psql("SELECT pg_wal_replay_resume()");
    c.poll("recovery ended", || {
        (c.psql("SELECT pg_is_in_recovery()") == "f").then_some(())
    });
    check("after pg_wal_replay_resume()");
    c.psql("INSERT INTO items VALUES (1000, 'after')");
    assert_eq!(c.count("SELECT count(*) FROM items"), BATCH_A_LAST + 1);
    // It archives on into the same directory: its new timeline's history file beside the old
    // timeline's segments, which `test ! -f` keeps from being overwritten.
    c.poll("00000002.history archived", || {
        archive_has(&c, "00000002.history").then_some(())
    });
    assert!(archive_has(&c, &segment_b));
    let t_total = started.elapsed();

    eprintln!(
        "wal_recipe: target {target}; {cleaned} files removed by pg_archivecleanup, archive now {:?}; \
         cluster up {t_cluster:.2?}, base backup {t_base:.2?}, batches archived {t_archived:.2?}, \
         recovered {t_total:.2?}",
        archived(&c)
    );
}

fn archive_has(c: &Cluster, name: &str) -> bool {
    c.archive().join(name).is_file()
}

/// The archive directory's file names, sorted.
fn archived(c: &Cluster) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(c.archive())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
