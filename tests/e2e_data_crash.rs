//! Databases and caches through crashes and under the daemon, against the real PostgreSQL and
//! Redis: provisioning and a credential rotation killed with SIGKILL after each of their writes
//! (the credentials' env version, each record of intent and of applied credentials) are converged
//! by the next apply, with no orphan role, the app working before and after each recovery; under
//! load, rotations fail no request; `codeb watch` provisions a watched project's data before its
//! release.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// One project with a database and a cache, dropped with it.
pub fn project(name: &str) -> String {
    format!(
        "---\napiVersion: codeb.kr/v1\nkind: Project\nmetadata:\n  name: {name}\nspec:\n  host: local\n  zone: codeb.test\n  environments:\n    production:\n      image: localhost/codeb-test-data:v1\n      port: 8080\n      healthCheck: {{path: /health, timeout: 20s}}\n      promotion: auto\n      gracePeriod: 1h\n      database: postgres\n      cache: redis\n      onDelete: drop\n"
    )
}

fn write(sb: &Sandbox, name: &str) -> std::path::PathBuf {
    let dir = sb.dir.path().join("manifests");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("all.yaml"),
        format!("{}{}", sb.stack.data_host_yaml(), project(name)),
    )
    .unwrap();
    dir
}

/// The roles whose names start with `base`, as the admin sees them: `(name, can login)`.
fn roles(base: &str) -> Vec<(String, bool)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut config: tokio_postgres::Config = env("CODEB_TEST_PG_URL").parse().unwrap();
        config.password(env("PG_ADMIN_PASSWORD"));
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        let rows = client
            .query(
                "SELECT rolname::text, rolcanlogin FROM pg_roles WHERE starts_with(rolname, $1) ORDER BY 1",
                &[&base],
            )
            .await
            .unwrap();
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    })
}

/// One GET through codeb's Caddy with this Host header, by a real HTTP client: `Ok` with the body
/// when it is a number (the app reached its database or cache with its injected credentials),
/// else `Err` with what it answered.
fn number(http: &str, host: &str, path: &str) -> Result<String, String> {
    // Generous: a slow answer on a loaded machine is not a failed one (a CGI starts psql).
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .no_proxy()
        .build()
        .unwrap();
    let answer = client
        .get(format!("http://{http}{path}"))
        .header("Host", host)
        .send()
        .and_then(|r| Ok((r.status().as_u16(), r.text()?)));
    match answer {
        Ok((200, body)) if !body.is_empty() && body.bytes().all(|b| b.is_ascii_digit()) => Ok(body),
        Ok((status, body)) => Err(format!("{path}: {status} {body}")),
        Err(e) => {
            let mut text = format!("{path}: {e}");
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            Err(text)
        }
    }
}

/// The app answers `/cgi-bin/db` and `/cgi-bin/cache` with numbers.
fn app_works(sb: &Sandbox, name: &str) -> Result<(), String> {
    let host = format!("{name}.codeb.test");
    number(&sb.stack.http, &host, "/cgi-bin/db")?;
    number(&sb.stack.http, &host, "/cgi-bin/cache")?;
    Ok(())
}

/// Runs `args` with a SIGKILL after data write `n`; true when it was killed.
fn killed_after(sb: &Sandbox, args: &[&str], n: u64) -> bool {
    let out = sb.codeb_env(args, &[("CODEB_FAULT_KILL_AFTER_DATA", &n.to_string())]);
    out.status.code().is_none()
}

fn converge(sb: &Sandbox, dir: &std::path::Path, context: &str) {
    let out = sb.apply(dir);
    assert_eq!(out.status.code(), Some(0), "{context}: {}", text(&out));
    let diff = sb.codeb(&["diff", "-f", dir.to_str().unwrap()]);
    assert!(
        !text(&diff).contains("ensure"),
        "{context}: converged, yet diff plans: {}",
        text(&diff)
    );
}

#[test]
fn provisioning_killed_after_each_write_converges_without_an_orphan_role() {
    let _l = lock();
    let mut kills = 0;
    for n in 1..=8 {
        let sb = Sandbox::new();
        let name = unique(&format!("dcr{n}"));
        let _cleanup = Cleanup(&sb, vec![name.clone()]);
        let dir = write(&sb, &name);
        let killed = killed_after(&sb, &["apply", "-f", dir.to_str().unwrap()], n);
        let context = format!("provisioning killed after data write {n}");
        converge(&sb, &dir, &context);
        if let Err(e) = app_works(&sb, &name) {
            panic!("{context}: {e}");
        }
        let base = format!("{name}_production");
        let found = roles(&base);
        let names: Vec<&str> = found.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(
            names,
            [base.clone(), format!("{base}_1"), format!("{base}_2")],
            "{context}: the owner and the two logins, nothing else"
        );
        assert_eq!(
            found.iter().map(|(_, l)| *l).collect::<Vec<_>>(),
            [false, true, false],
            "{context}: only the login in use may log in"
        );
        let out = sb.codeb(&["delete", "project", &name]);
        assert_eq!(out.status.code(), Some(0), "{context}: {}", text(&out));
        assert!(
            roles(&base).is_empty(),
            "{context}: onDelete: drop leaves no role"
        );
        if !killed {
            break;
        }
        kills += 1;
    }
    // Credentials, database intent and applied, cache intent and applied.
    assert!(kills >= 5, "only {kills} kill points were reached");
}

#[test]
fn a_rotation_killed_after_each_write_converges_and_the_app_keeps_working() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("drot");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let dir = write(&sb, &name);
    converge(&sb, &dir, "first apply");
    app_works(&sb, &name).unwrap();
    let mut kills = 0;
    for n in 1..=8 {
        let killed = killed_after(&sb, &["db", "rotate", &name], n);
        let context = format!("rotation killed after data write {n}");
        // The app keeps working between the kill and the recovery: the killed rotation changed
        // no credential a serving slot uses.
        if let Err(e) = app_works(&sb, &name) {
            panic!("{context}, before the recovery: {e}");
        }
        converge(&sb, &dir, &context);
        if let Err(e) = app_works(&sb, &name) {
            panic!("{context}: {e}");
        }
        if !killed {
            break;
        }
        kills += 1;
    }
    assert!(kills >= 3, "only {kills} kill points were reached");
    // At most the login in use and the grace slot's may log in.
    let base = format!("{name}_production");
    let logins = roles(&base).into_iter().filter(|(_, l)| *l).count();
    assert!((1..=2).contains(&logins), "{:?}", roles(&base));
}

#[test]
fn under_load_a_rotation_fails_no_request() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("dload");
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let dir = write(&sb, &name);
    converge(&sb, &dir, "first apply");
    app_works(&sb, &name).unwrap();
    // Load through Caddy for the whole test: every answer must be a number from the database (each
    // request opens a new connection to it, from the container to the bridge's gateway).
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let (http, host) = (sb.stack.http.clone(), format!("{name}.codeb.test"));
        std::thread::spawn(move || {
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match number(&http, &host, "/cgi-bin/db") {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        bad.push(e);
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            bad
        })
    };
    assert!(eventually(Duration::from_secs(10), || ok
        .load(Ordering::Relaxed)
        > 10));
    // Two rotations, each rolled out blue/green: the second reuses the first login.
    for round in 1..=2 {
        let out = sb.codeb(&["db", "rotate", &name]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "rotation {round}: {}",
            text(&out)
        );
        let seen = ok.load(Ordering::Relaxed);
        let served = eventually(Duration::from_secs(30), || {
            ok.load(Ordering::Relaxed) > seen + 5
        });
        if !served {
            stop.store(true, Ordering::Relaxed);
            panic!("rotation {round}: the app does not answer again");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let bad = load.join().unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests (of {}): {bad:?}",
        ok.load(Ordering::Relaxed)
    );
}

#[test]
fn watch_provisions_a_watched_projects_database_and_cache_before_its_release() {
    let _l = lock();
    let sb = Sandbox::new();
    let name = unique("dwatch");
    // Declared first: dropped after the daemon, so the delete runs once it is gone.
    let _cleanup = Cleanup(&sb, vec![name.clone()]);
    let dir = write(&sb, &name);
    let w = sb.watch(&dir, &[]);
    assert!(
        eventually(Duration::from_secs(60), || app_works(&sb, &name).is_ok()),
        "{:?}\n{}",
        app_works(&sb, &name),
        w.log()
    );
    let base = format!("{name}_production");
    let found: Vec<String> = roles(&base).into_iter().map(|(r, _)| r).collect();
    assert_eq!(
        found,
        [base.clone(), format!("{base}_1"), format!("{base}_2")]
    );
    assert!(w.log().contains("ensure database"), "{}", w.log());
}
