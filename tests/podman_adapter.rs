//! The Podman adapter against a real Podman service.
//!
//! Needs `CODEB_TEST_PODMAN` (the service's socket URL, e.g. `unix:///…/podman.sock`) and the test
//! image `localhost/codeb-test-app:v1` (busybox httpd serving `v1` on 8080). `deploy/stack.sh up`
//! starts the service, `deploy/stack.sh images` builds the image, `deploy/stack.sh env` prints the
//! variable. A missing service fails the run: it is never skipped.
//!
//! Everything created here has a name unique to the run and is removed at the end, also when an
//! assertion fails (see [`Cleanup`]).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use codeb::backend::podman::{Error, Podman};
use codeb::backend::Runtime;
use codeb::model::observed::ObservedContainer;
use codeb::model::ownership::{LABEL_ENVIRONMENT, LABEL_PROJECT, LABEL_RELEASE, LABEL_SLOT};
use codeb::model::writes::ContainerSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const IMAGE: &str = "localhost/codeb-test-app:v1";
const NETWORK: &str = "codeb-main";
/// How long the app may take to answer after start (measured: 145–416 ms from create).
const READY_WITHIN: Duration = Duration::from_secs(15);

fn endpoint() -> String {
    match std::env::var("CODEB_TEST_PODMAN") {
        Ok(endpoint) if !endpoint.is_empty() => endpoint,
        _ => panic!(
            "CODEB_TEST_PODMAN is not set: these tests need a running Podman service. \
             Run `eval \"$(deploy/stack.sh env)\"` after `deploy/stack.sh up`"
        ),
    }
}

/// A name no other run uses.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos:08x}", std::process::id())
}

/// A host port that was free a moment ago. Fresh per run: re-using a port seconds after its
/// previous container went away is what showed stale-conntrack 502s here.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Removes the named containers through the podman CLI (as a remote client of the same service)
/// when dropped, so a failed assertion leaves nothing behind.
struct Cleanup {
    endpoint: String,
    names: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = podman_cli(
                &self.endpoint,
                &["rm", "--force", "--ignore", "--time", "0", name],
            );
        }
    }
}

fn podman_cli(endpoint: &str, args: &[&str]) -> std::process::Output {
    let output = Command::new("podman")
        .arg("--url")
        .arg(endpoint)
        .args(args)
        .output()
        .expect("the podman CLI is installed");
    assert!(
        output.status.success(),
        "podman {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// One `GET /` over plain TCP; the body when the answer is a 200.
async fn http_get(port: u16) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: codeb-test\r\n\r\n")
        .await
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    // busybox httpd answers `HTTP/1.1 200 OK` even to HTTP/1.0.
    (head.split(' ').nth(1) == Some("200")).then(|| body.to_owned())
}

/// Polls `GET /` until it answers `want`, for at most [`READY_WITHIN`].
async fn wait_for_body(port: u16, want: &str) -> Duration {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if http_get(port).await.is_some_and(|body| body.trim() == want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < READY_WITHIN,
            "127.0.0.1:{port} did not answer `{want}` within {READY_WITHIN:?}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

fn find<'a>(listed: &'a [ObservedContainer], name: &str) -> Option<&'a ObservedContainer> {
    listed.iter().find(|c| c.name == name)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::test]
async fn a_container_lives_through_create_start_list_stop_and_remove() {
    let endpoint = endpoint();
    let podman = Podman::connect(&endpoint).unwrap();
    podman.ping().await.unwrap_or_else(|e| panic!("{e}"));

    let name = unique("codeb-test-app");
    let foreign = unique("codeb-test-foreign");
    let _cleanup = Cleanup {
        endpoint: endpoint.clone(),
        names: vec![name.clone(), foreign.clone()],
    };

    podman.ensure_network(NETWORK).await.unwrap();
    assert!(
        !podman.ensure_network(NETWORK).await.unwrap(),
        "an existing network is not created again"
    );
    podman
        .ensure_image(IMAGE)
        .await
        .unwrap_or_else(|e| panic!("{e}: build the test image with `deploy/stack.sh images`"));

    let port = free_port();
    let labels = BTreeMap::from([
        (LABEL_PROJECT.to_owned(), name.clone()),
        (LABEL_ENVIRONMENT.to_owned(), "test".to_owned()),
        (LABEL_SLOT.to_owned(), "blue".to_owned()),
        (LABEL_RELEASE.to_owned(), "r1".to_owned()),
    ]);
    let spec = ContainerSpec {
        name: name.clone(),
        image: IMAGE.to_owned(),
        // Prints an environment variable (proves env and command), then serves with request
        // logging on stderr (proves logs read both streams).
        command: Some(
            [
                "/bin/busybox",
                "sh",
                "-c",
                "echo \"greeting=$GREETING\"; exec /bin/busybox httpd -f -v -p 8080 -h /www",
            ]
            .map(String::from)
            .to_vec(),
        ),
        env: codeb::model::vars::EnvValues(BTreeMap::from([(
            "GREETING".to_owned(),
            "hello".to_owned(),
        )])),
        env_source: Default::default(),
        labels: labels.clone(),
        container_port: 8080,
        host_ip: "127.0.0.1".to_owned(),
        host_port: port,
        publish: true,
        network: NETWORK.to_owned(),
        mac: Some(codeb::model::ownership::tenant_mac(&name, "r1")),
        confinement: Default::default(),
        stop_timeout_secs: 10,
    };

    let t = Instant::now();
    let id = podman.create(&spec).await.unwrap();
    let create = t.elapsed();
    let t = Instant::now();
    podman.start(&id).await.unwrap();
    let start = t.elapsed();
    let first_answer = wait_for_body(port, "v1").await;
    podman
        .start(&id)
        .await
        .expect("starting a running container is not an error");

    let t = Instant::now();
    let listed = podman.list_owned().await.unwrap();
    let list = t.elapsed();
    let observed = find(&listed, &name).expect("the new container is listed");
    assert_eq!(observed.id, id);
    assert!(observed.running, "{observed:?}");
    // The MAC codeb set at create is the container's on its network.
    let mac = std::process::Command::new("podman")
        .args([
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.MacAddress}}{{end}}",
            &name,
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&mac.stdout).trim(),
        codeb::model::ownership::tenant_mac(&name, "r1")
    );
    // Listing one environment reports its container alone, as the full list does.
    let env = podman
        .list_env(&codeb::model::EnvKey::new(name.clone(), "test"))
        .await
        .unwrap();
    assert_eq!(env, vec![observed.clone()]);
    let other = podman
        .list_env(&codeb::model::EnvKey::new(name.clone(), "staging"))
        .await
        .unwrap();
    assert!(other.is_empty(), "{other:?}");
    // The network's gateway is an address of its subnet.
    let gw = podman.network_gateway(NETWORK).await.unwrap();
    assert!(gw.is_some(), "{NETWORK} has a gateway");
    assert_eq!(
        podman.network_gateway("codeb-no-such-net").await.unwrap(),
        None
    );
    assert_eq!(observed.state, "running");
    assert_eq!(observed.host_port, Some(port));
    assert_eq!(observed.image, IMAGE);
    for (key, value) in &labels {
        assert_eq!(observed.labels.get(key), Some(value), "label {key}");
    }
    assert!(listed.iter().all(|c| c.labels.contains_key(LABEL_PROJECT)));

    let again = podman
        .create(&spec)
        .await
        .expect_err("a second container with the same name");
    assert!(
        matches!(again.downcast_ref(), Some(Error::Api { .. })),
        "{again}"
    );
    assert!(again.to_string().contains("already exists"), "{again}");
    assert!(!again.retryable());

    podman_cli(&endpoint, &["create", "--name", &foreign, IMAGE]);
    let listed = podman.list_owned().await.unwrap();
    assert!(
        find(&listed, &foreign).is_none(),
        "a container without codeb labels is never listed"
    );
    assert!(find(&listed, &name).is_some());

    let logs = podman.logs_tail(&id, 50).await.unwrap();
    assert!(logs.contains(&"greeting=hello".to_owned()), "{logs:?}");
    assert!(
        logs.len() >= 2,
        "stdout and the request log on stderr: {logs:?}"
    );
    assert!(logs.iter().all(|line| !line.ends_with('\n')));
    assert_eq!(podman.logs_tail(&id, 1).await.unwrap().len(), 1);

    let t = Instant::now();
    podman.stop(&id).await.unwrap();
    let stop = t.elapsed();
    podman
        .stop(&id)
        .await
        .expect("stopping a stopped container is not an error");
    let listed = podman.list_owned().await.unwrap();
    let observed = find(&listed, &name).expect("a stopped container is still listed");
    assert!(!observed.running, "{observed:?}");

    let t = Instant::now();
    podman.remove(&id).await.unwrap();
    let remove = t.elapsed();
    podman
        .remove(&id)
        .await
        .expect("removing a missing container is not an error");
    podman
        .stop(&id)
        .await
        .expect("stopping a missing container is not an error");
    assert!(find(&podman.list_owned().await.unwrap(), &name).is_none());

    eprintln!(
        "timings: create {}, start {}, start → first `v1` {}, list {}, stop {}, remove {}",
        ms(create),
        ms(start),
        ms(first_answer),
        ms(list),
        ms(stop),
        ms(remove)
    );
}

#[tokio::test]
async fn creating_on_a_missing_network_is_not_found() {
    let endpoint = endpoint();
    let podman = Podman::connect(&endpoint).unwrap();
    let name = unique("codeb-test-nonet");
    let _cleanup = Cleanup {
        endpoint: endpoint.clone(),
        names: vec![name.clone()],
    };
    let spec = ContainerSpec {
        name: name.clone(),
        image: IMAGE.to_owned(),
        command: None,
        env: Default::default(),
        env_source: Default::default(),
        labels: BTreeMap::from([(LABEL_PROJECT.to_owned(), name.clone())]),
        container_port: 8080,
        host_ip: "127.0.0.1".to_owned(),
        host_port: free_port(),
        publish: true,
        network: unique("codeb-test-missing-net"),
        mac: None,
        confinement: Default::default(),
        stop_timeout_secs: 10,
    };
    let err = podman.create(&spec).await.expect_err("no such network");
    assert!(
        matches!(err.downcast_ref(), Some(Error::NotFound { .. })),
        "{err}"
    );
    assert!(!err.retryable());
}

#[tokio::test]
async fn a_missing_image_that_cannot_be_pulled_is_a_pull_error() {
    let podman = Podman::connect(&endpoint()).unwrap();
    // Port 1 on loopback: the pull fails at once with connection refused (no registry here).
    let err = podman
        .ensure_image("127.0.0.1:1/codeb-test-missing:v0")
        .await
        .expect_err("no registry");
    assert!(
        matches!(err.downcast_ref(), Some(Error::Pull { .. })),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("127.0.0.1:1/codeb-test-missing:v0"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_reported_with_its_path() {
    // Neither of these needs the Podman service.
    let podman = Podman::connect("unix:///nonexistent.sock").unwrap();
    for err in [
        podman.ping().await.unwrap_err(),
        podman.list_owned().await.unwrap_err(),
    ] {
        eprintln!("{err}");
        assert!(
            matches!(err.downcast_ref(), Some(Error::Unreachable { .. })),
            "{err}"
        );
        assert!(err.retryable());
        let text = err.to_string();
        assert!(text.contains("/nonexistent.sock"), "{text}");
        assert!(text.contains("podman system service"), "{text}");
    }

    // A socket file that nobody listens on (a service that died) is unreachable too.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let podman = Podman::connect(&format!("unix://{}", path.display())).unwrap();
    for err in [
        podman.ping().await.unwrap_err(),
        podman.list_owned().await.unwrap_err(),
    ] {
        eprintln!("{err}");
        assert!(
            matches!(err.downcast_ref(), Some(Error::Unreachable { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("dead.sock"), "{err}");
    }

    let err = Podman::connect("http://127.0.0.1:1").unwrap_err();
    assert!(matches!(err, Error::InvalidEndpoint { .. }), "{err}");
}

/// Podman reports state `stopped` while an exited container awaits cleanup or its restart;
/// bollard's typed list fails on it (`unknown variant `stopped``: 163 of 1504 lists in a probe).
/// `list_owned` must read every state and call only `running` running. The app here exits every
/// 0.2 s and its restart policy brings it back, so the list crosses those transitions.
#[tokio::test]
async fn listing_never_fails_while_a_container_exits_and_restarts() {
    let endpoint = endpoint();
    let podman = Podman::connect(&endpoint).unwrap();
    let name = unique("codeb-test-exit");
    let _cleanup = Cleanup {
        endpoint: endpoint.clone(),
        names: vec![name.clone()],
    };
    podman.ensure_network(NETWORK).await.unwrap();
    let spec = ContainerSpec {
        name: name.clone(),
        image: IMAGE.to_owned(),
        command: Some(["/bin/busybox", "sleep", "0.2"].map(String::from).to_vec()),
        env: Default::default(),
        env_source: Default::default(),
        labels: BTreeMap::from([(LABEL_PROJECT.to_owned(), name.clone())]),
        container_port: 8080,
        host_ip: "127.0.0.1".to_owned(),
        host_port: free_port(),
        publish: true,
        network: NETWORK.to_owned(),
        mac: None,
        confinement: Default::default(),
        stop_timeout_secs: 10,
    };
    let id = podman.create(&spec).await.unwrap();
    podman.start(&id).await.unwrap();

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut restarted = false;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let listed = podman
            .list_owned()
            .await
            .expect("listing succeeds whatever the states");
        let observed = find(&listed, &name).expect("listed");
        assert_eq!(
            observed.running,
            observed.state == "running",
            "{observed:?}"
        );
        restarted |= observed.running && seen.keys().any(|state| state != "running");
        *seen.entry(observed.state.clone()).or_default() += 1;
        if restarted && seen.contains_key("stopped") {
            break;
        }
    }
    eprintln!("states seen while the app exits and restarts: {seen:?}");
    assert!(
        restarted,
        "restart policy unless-stopped restarts an exited app: {seen:?}"
    );
    podman.remove(&id).await.unwrap();
}

/// The `died` exit codes of the container named `name` since `since` (Unix seconds).
fn died_exit_codes(endpoint: &str, name: &str, since: u64) -> Vec<String> {
    let until = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let out = podman_cli(
        endpoint,
        &[
            "events",
            "--since",
            &since.to_string(),
            "--until",
            &until.to_string(),
            "--filter",
            &format!("container={name}"),
            "--filter",
            "event=died",
            "--format",
            "{{.ContainerExitCode}}",
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// A container created by a codeb before graceful stops records `StopTimeout` 0, which Podman
/// takes as "SIGKILL at once"; removing it must still grant SIGTERM and 10 s.
#[tokio::test]
async fn removing_a_container_that_records_no_grace_period_still_sends_sigterm_and_waits() {
    let endpoint = endpoint();
    let podman = Podman::connect(&endpoint).unwrap();
    let name = unique("codeb-test-term");
    let _cleanup = Cleanup {
        endpoint: endpoint.clone(),
        names: vec![name.clone()],
    };
    podman.ensure_network(NETWORK).await.unwrap();
    let spec = ContainerSpec {
        name: name.clone(),
        image: IMAGE.to_owned(),
        command: Some(
            [
                "/bin/sh",
                "-c",
                "trap 'echo got-TERM; sleep 2; exit 0' TERM; echo ready; sleep 600 & wait",
            ]
            .map(String::from)
            .to_vec(),
        ),
        env: Default::default(),
        env_source: Default::default(),
        labels: BTreeMap::new(),
        container_port: 8080,
        host_ip: "127.0.0.1".to_owned(),
        host_port: free_port(),
        publish: false,
        network: NETWORK.to_owned(),
        mac: None,
        confinement: Default::default(),
        stop_timeout_secs: 0,
    };
    let id = podman.create(&spec).await.unwrap();
    podman.start(&id).await.unwrap();
    let started = Instant::now();
    // The trap is set once `ready` is printed.
    while !podman
        .logs_tail(&id, 10)
        .await
        .unwrap()
        .iter()
        .any(|l| l.contains("ready"))
    {
        assert!(started.elapsed() < READY_WITHIN, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 1;
    let t = Instant::now();
    podman.remove(&id).await.unwrap();
    let took = t.elapsed();
    assert!(
        (Duration::from_millis(1500)..Duration::from_secs(9)).contains(&took),
        "the removal waited for the trap's 2 s, not for SIGKILL: {took:?}"
    );
    // Podman writes its events up to ~250 ms late (more on a fresh stack's first events): poll.
    let mut codes = Vec::new();
    let polled = Instant::now();
    while codes.is_empty() && polled.elapsed() < Duration::from_secs(10) {
        codes = died_exit_codes(&endpoint, &name, since);
        if codes.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(
        codes,
        vec!["0".to_string()],
        "the app ran its SIGTERM trap and exited on its own"
    );
    let exists = Command::new("podman")
        .args(["--url", &endpoint, "container", "exists", &name])
        .status()
        .unwrap();
    assert_eq!(exists.code(), Some(1), "removed");
}
