//! The agent's protocol against in-memory streams and a fake Podman on a Unix socket.

use std::io::{BufRead, BufReader, Cursor, Read, Write};
use std::os::unix::net::UnixListener;

use super::*;

fn endpoints(sock: PathBuf) -> Endpoints {
    Endpoints {
        podman_socket: sock,
        // A port nothing listens on: Caddy requests fail at connect, which is an error line.
        caddy_admin: "127.0.0.1:9".into(),
    }
}

fn hello_line(version: &str, protocol: u32) -> String {
    format!(r#"{{"hello":{{"protocol":{protocol},"version":"{version}"}}}}"#)
}

/// Runs a session over `input`; returns the agent's result and its output lines.
fn session(input: &str, endpoints: &Endpoints) -> (Result<(), Error>, Vec<serde_json::Value>) {
    let mut out = Vec::new();
    let result = serve(&mut Cursor::new(input.as_bytes()), &mut out, endpoints);
    let lines = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (result, lines)
}

#[test]
fn a_client_of_another_codeb_version_is_refused_naming_both_versions() {
    let ep = endpoints("/nonexistent".into());
    let input = format!("{}\n", hello_line("0.0.1-other", PROTOCOL));
    let (result, lines) = session(&input, &ep);
    assert!(matches!(result, Err(Error::VersionMismatch { .. })));
    assert_eq!(lines[0]["hello"]["version"], env!("CARGO_PKG_VERSION"));
    let error = lines[1]["error"].as_str().unwrap();
    assert!(error.contains("0.0.1-other"), "{error}");
    assert!(error.contains(env!("CARGO_PKG_VERSION")), "{error}");
    assert_eq!(lines.len(), 2, "nothing is served after a refused hello");
}

#[test]
fn a_request_before_the_hello_is_refused() {
    let ep = endpoints("/nonexistent".into());
    let input = r#"{"id":1,"target":"podman","method":"GET","path":"/_ping"}"#.to_string() + "\n";
    let (result, _) = session(&input, &ep);
    assert!(matches!(result, Err(Error::BadHello(_))), "{result:?}");
}

#[test]
fn a_line_longer_than_the_bound_ends_the_session_without_buffering_it() {
    let mut input = Cursor::new(vec![b'x'; MAX_LINE + 10]);
    assert!(matches!(read_line(&mut input), Err(Error::LineTooLong)));
    let mut exact = Cursor::new([vec![b'x'; MAX_LINE - 1], vec![b'\n']].concat());
    assert_eq!(read_line(&mut exact).unwrap().unwrap().len(), MAX_LINE - 1);
}

#[test]
fn only_the_podman_calls_codeb_makes_are_forwarded() {
    for (method, path) in [
        ("GET", "/v4.0.0/libpod/_ping"),
        ("GET", "/_ping"),
        ("GET", "/v1.41/containers/json?all=true&filters=%7B%7D"),
        ("POST", "/v4.0.0/libpod/containers/create"),
        ("POST", "/v1.41/containers/shop-blue/start"),
        ("DELETE", "/v1.41/containers/abc123?force=true"),
        ("GET", "/v1.41/images/localhost/codeb-test-app:v1/json"),
        ("GET", "/v1.41/containers/abc/logs?tail=50"),
    ] {
        assert_eq!(
            allowed(Target::Podman, method, path),
            Ok(()),
            "{method} {path}"
        );
    }
    for (method, path) in [
        ("POST", "/v1.41/containers/abc/exec"),
        ("POST", "/v4.0.0/libpod/exec/abc/start"),
        ("POST", "/v1.41/containers/abc/attach"),
        ("POST", "/v1.41/build"),
        ("GET", "/v1.41/containers/../../etc/passwd"),
        ("GET", "/v1.41/containers/%2e%2e/json"),
        ("GET", "/v1.41/images//json"),
        ("PUT", "/v1.41/containers/abc/archive?path=/"),
        ("GET", "_ping"),
        ("GET", "/_ping\r\nX-Injected: 1"),
    ] {
        assert!(
            allowed(Target::Podman, method, path).is_err(),
            "{method} {path} allowed"
        );
    }
}

#[test]
fn caddy_is_written_only_under_codebs_own_paths_and_read_anywhere_in_its_config() {
    assert_eq!(allowed(Target::Caddy, "GET", "/config/"), Ok(()));
    assert_eq!(
        allowed(Target::Caddy, "GET", "/config/apps/http/servers"),
        Ok(())
    );
    assert_eq!(
        allowed(
            Target::Caddy,
            "POST",
            "/config/apps/http/servers/codeb/routes"
        ),
        Ok(())
    );
    assert_eq!(
        allowed(Target::Caddy, "DELETE", "/id/codeb-shop-production"),
        Ok(())
    );
    for (method, path) in [
        ("POST", "/load"),
        ("POST", "/stop"),
        ("DELETE", "/config/"),
        ("POST", "/config/apps/http/servers/other/routes"),
        ("DELETE", "/id/foreign-route"),
        ("PATCH", "/config/admin"),
        ("GET", "/pki/ca/local"),
    ] {
        assert!(
            allowed(Target::Caddy, method, path).is_err(),
            "{method} {path} allowed"
        );
    }
}

/// A fake Podman: answers each connection once with `answer`, after reading its request, which
/// it sends back on the channel.
fn fake_podman(
    dir: &std::path::Path,
    answer: &'static str,
) -> (PathBuf, std::sync::mpsc::Receiver<String>) {
    let sock = dir.join("podman.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut request = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.strip_prefix("Content-Length: ") {
                    length = v.trim().parse().unwrap();
                }
                request.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            request.push_str(&String::from_utf8(body).unwrap());
            conn.write_all(answer.as_bytes()).unwrap();
            let _ = tx.send(request);
        }
    });
    (sock, rx)
}

#[test]
fn an_allowed_request_is_forwarded_and_a_refused_one_never_reaches_podman() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, requests) = fake_podman(
        dir.path(),
        "HTTP/1.0 201 Created\r\nContent-Type: application/json\r\n\r\n{\"Id\":\"abc\"}",
    );
    let ep = endpoints(sock);
    let ours = Hello::ours();
    let input = [
        hello_line(&ours.version, ours.protocol),
        r#"{"id":7,"target":"podman","method":"POST","path":"/v4.0.0/libpod/containers/create","body":"{\"name\":\"x\"}"}"#.into(),
        r#"{"id":8,"target":"podman","method":"POST","path":"/v1.41/containers/x/exec","body":"{}"}"#.into(),
        r#"{"id":9,"target":"caddy","method":"GET","path":"/config/"}"#.into(),
        "not json".into(),
    ]
    .join("\n");
    let (result, mut lines) = session(&input, &ep);
    result.unwrap();
    assert_eq!(lines.len(), 5, "{lines:?}");
    // Requests are served at once: the answers come in any order, each with its id.
    lines[1..].sort_by_key(|l| l["id"].as_u64());
    let lines: Vec<_> = [&lines[..1], &lines[2..], &lines[1..2]].concat();
    assert_eq!(lines[1]["id"], 7);
    assert_eq!(lines[1]["status"], 201);
    assert_eq!(lines[1]["body"], "{\"Id\":\"abc\"}");
    let forwarded = requests.recv().unwrap();
    assert!(
        forwarded.starts_with("POST /v4.0.0/libpod/containers/create HTTP/1.0\r\n"),
        "{forwarded}"
    );
    assert!(
        forwarded.ends_with("\r\n\r\n{\"name\":\"x\"}"),
        "{forwarded}"
    );

    assert_eq!(lines[2]["id"], 8);
    assert!(lines[2]["error"].as_str().unwrap().contains("not allowed"));
    assert!(
        requests.try_recv().is_err(),
        "the refused request reached Podman"
    );
    assert_eq!(lines[3]["id"], 9);
    assert!(lines[3]["error"]
        .as_str()
        .unwrap()
        .contains("Caddy admin at 127.0.0.1:9"));
    assert!(lines[4]["error"]
        .as_str()
        .unwrap()
        .starts_with("malformed request"));
}

#[test]
fn a_slow_request_holds_back_no_other_and_every_answer_is_written_before_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("slow.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            let mut head = [0u8; 256];
            let _ = conn.read(&mut head);
            // Long past the fast request's answer (an error at connect, microseconds).
            std::thread::sleep(std::time::Duration::from_millis(500));
            let _ = conn.write_all(b"HTTP/1.0 200 OK\r\n\r\nOK");
        }
    });
    let ours = Hello::ours();
    let input = [
        hello_line(&ours.version, ours.protocol),
        r#"{"id":1,"target":"podman","method":"GET","path":"/_ping"}"#.into(),
        r#"{"id":2,"target":"caddy","method":"GET","path":"/config/"}"#.into(),
    ]
    .join("\n");
    let (result, lines) = session(&input, &endpoints(sock));
    result.unwrap();
    let ids: Vec<_> = lines[1..].iter().map(|l| l["id"].as_u64()).collect();
    assert_eq!(ids, [Some(2), Some(1)], "{lines:?}");
    assert_eq!(lines[2]["body"], "OK");
}

/// Kernel requests are one typed op each, checked before anything runs: an op out of bounds is
/// answered `refused` (nothing reaches the kernel, whatever the agent's privilege), raw text or
/// an unknown op does not read, and an op never rides on a Podman or Caddy request, nor a
/// method or path on a kernel one.
#[test]
fn kernel_requests_are_typed_ops_within_bounds_and_nothing_else() {
    let ep = endpoints("/nonexistent".into());
    let ours = Hello::ours();
    let service = |label: &str, port: u16| {
        format!(
            r#"{{"setService":{{"gateway":"10.89.0.1","port":{port},"target":{{"to":"10.89.0.5:8080","label":"{label}"}},"dispatch":1}}}}"#
        )
    };
    let input = [
        hello_line(&ours.version, ours.protocol),
        format!(
            r#"{{"id":1,"target":"kernel","kernel":{}}}"#,
            service("shop/production", 0)
        ),
        format!(
            r#"{{"id":2,"target":"kernel","kernel":{}}}"#,
            service("x\\\" ; flush ruleset", 4051)
        ),
        r#"{"id":3,"target":"kernel","kernel":{"nft":"flush ruleset"}}"#.into(),
        r#"{"id":4,"target":"kernel","kernel":{"loopbackOff":{"bridge":"../../etc"}}}"#.into(),
        r#"{"id":5,"target":"podman","method":"GET","path":"/_ping","kernel":"isolate"}"#.into(),
        r#"{"id":6,"target":"kernel","method":"GET","path":"/","kernel":"isolate"}"#.into(),
        r#"{"id":7,"target":"kernel"}"#.into(),
    ]
    .join("\n");
    let (result, mut lines) = session(&input, &ep);
    result.unwrap();
    lines.remove(0);
    lines.sort_by_key(|l| l["id"].as_u64());
    let by_id = |id: u64| {
        lines
            .iter()
            .find(|l| l["id"] == id)
            .unwrap_or_else(|| panic!("no answer {id}: {lines:?}"))
    };
    for (id, names) in [(1, "port 0"), (2, "labelled"), (4, "not an interface name")] {
        let body = by_id(id)["body"].as_str().unwrap_or_default();
        let answer: KernelAnswer = serde_json::from_str(body).unwrap();
        assert!(
            matches!(&answer, KernelAnswer::Refused(t) if t.starts_with("not allowed by the agent") && t.contains(names)),
            "{id}: {answer:?}"
        );
    }
    // Raw nft text is no op: the line does not read as a request at all.
    let unreadable = lines.iter().find(|l| l["id"] == 0).unwrap();
    assert!(unreadable["error"]
        .as_str()
        .unwrap()
        .starts_with("malformed request"));
    for id in [5, 6, 7] {
        let error = by_id(id)["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("not allowed by the agent"),
            "{id}: {error}"
        );
    }
}

/// A probe is one GET by IP to an address on the host, with codeb's prober's rules: a 3xx is the
/// slot's answer and is never followed; a name, another scheme, a method, a body or an address
/// beyond the host is refused before any connection.
#[test]
fn a_probe_is_one_get_to_an_address_on_the_host_and_follows_no_redirect() {
    use std::net::TcpListener;
    let elsewhere = TcpListener::bind("127.0.0.1:0").unwrap();
    let followed = elsewhere.local_addr().unwrap();
    elsewhere.set_nonblocking(true).unwrap();
    let slot = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = slot.local_addr().unwrap();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for mut s in slot.incoming().flatten() {
            let mut buf = [0u8; 2048];
            let n = s.read(&mut buf).unwrap_or(0);
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = write!(
                s,
                "HTTP/1.1 302 Found\r\nLocation: http://{followed}/\r\nContent-Length: 0\r\n\r\n"
            );
        }
    });
    assert_eq!(probe(&format!("http://{addr}/health?x=1")), Ok(302));
    let head = heads.lock().unwrap()[0].clone();
    assert!(head.starts_with("GET /health?x=1 HTTP/1.1\r\n"), "{head}");
    assert!(elsewhere.accept().is_err(), "the redirect was followed");
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert_eq!(
        probe(&format!("http://{closed}/")),
        Err("connection refused".into())
    );
    for (url, names) in [
        ("http://localhost:80/", "IPv4:PORT"),
        ("http://user@127.0.0.1:80/", "IPv4:PORT"),
        ("https://127.0.0.1:443/", "http://"),
        ("http://127.0.0.1:80/a b", "printable"),
        // TEST-NET-3 (RFC 5737): on no host's loopback, address or bridge.
        ("http://203.0.113.9:80/", "not on this host"),
    ] {
        let refused = probe(url).unwrap_err();
        assert!(
            refused.starts_with("not allowed by the agent") && refused.contains(names),
            "{url}: {refused}"
        );
    }
    // Through a session: a probe is a GET without a body.
    let ours = Hello::ours();
    let input = [
        hello_line(&ours.version, ours.protocol),
        format!(r#"{{"id":1,"target":"probe","method":"GET","path":"http://{addr}/"}}"#),
        format!(r#"{{"id":2,"target":"probe","method":"POST","path":"http://{addr}/"}}"#),
    ]
    .join("\n");
    let (result, mut lines) = session(&input, &endpoints("/nonexistent".into()));
    result.unwrap();
    lines.remove(0);
    lines.sort_by_key(|l| l["id"].as_u64());
    assert_eq!(lines[0]["status"], 302, "{lines:?}");
    assert!(lines[1]["error"]
        .as_str()
        .unwrap()
        .starts_with("not allowed by the agent"));
    assert_eq!(heads.lock().unwrap().len(), 2, "the POST was not sent");
}

#[test]
fn the_agent_answers_its_own_ping_and_version_and_nothing_else_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let input = format!(
        "{}\n{}\n{}\n",
        hello_line(env!("CARGO_PKG_VERSION"), PROTOCOL),
        r#"{"id":1,"target":"agent","method":"GET","path":"/ping"}"#,
        r#"{"id":2,"target":"agent","method":"GET","path":"/exec"}"#,
    );
    let (result, lines) = session(&input, &endpoints(dir.path().join("none.sock")));
    result.unwrap();
    let by_id = |id: u64| lines.iter().find(|l| l["id"] == id).unwrap().clone();
    assert_eq!(by_id(1)["status"], 200);
    assert_eq!(by_id(1)["body"], "pong");
    assert!(by_id(2)["error"]
        .as_str()
        .unwrap()
        .contains("not allowed by the agent"));
    assert_eq!(allowed(Target::Agent, "GET", "/caddy-version"), Ok(()));
    assert!(allowed(Target::Agent, "POST", "/ping").is_err());
}

/// `filters=` codeb's event filters, URL-encoded as bollard sends them.
fn events_path(filters: &str) -> String {
    let encoded: String = filters
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    format!("/v1.41/events?filters={encoded}")
}

const OUR_FILTERS: &str =
    r#"{"type":["container","volume"],"event":["died","remove","start","create"]}"#;

#[test]
fn the_event_stream_is_reachable_with_codebs_own_filters_only() {
    let ours = events_path(OUR_FILTERS);
    assert_eq!(allowed(Target::Podman, "GET", &ours), Ok(()));
    // The lists in another order, as a HashMap serializes them.
    let reordered = events_path(
        r#"{"event":["start","create","died","remove"],"type":["volume","container"]}"#,
    );
    assert_eq!(allowed(Target::Podman, "GET", &reordered), Ok(()));
    assert_eq!(
        allowed(
            Target::Podman,
            "GET",
            &reordered.replace("/v1.41/", "/v4.0.0/libpod/")
        ),
        Ok(())
    );
    for path in [
        "/v1.41/events".to_string(),
        format!("{ours}&since=0"),
        format!("{ours}&until=1"),
        events_path(
            r#"{"type":["container","volume","image"],"event":["died","remove","start","create"]}"#,
        ),
        events_path(r#"{"type":["container"],"event":["died","remove","start","create"]}"#),
        events_path(
            r#"{"type":["container","volume"],"event":["died","remove","start","create","exec"]}"#,
        ),
        events_path(
            r#"{"type":["container","volume"],"event":["died","remove","start","create"],"label":["x"]}"#,
        ),
        ours.replace("filters=%7B", "filters=%ZZ"),
        ours.replace("/events", "/events/"),
    ] {
        assert!(allowed(Target::Podman, "GET", &path).is_err(), "{path}");
    }
    assert!(allowed(Target::Podman, "POST", &ours).is_err());
    // A stream's end is the agent's own `DELETE /streams/ID`, and nothing like it.
    assert_eq!(allowed(Target::Agent, "DELETE", "/streams/12"), Ok(()));
    for path in [
        "/streams/",
        "/streams/x",
        "/streams/1/2",
        "/streams/1?x=1",
        "/ping",
    ] {
        assert!(allowed(Target::Agent, "DELETE", path).is_err(), "{path}");
    }
    assert!(allowed(Target::Agent, "GET", "/streams/12").is_err());
}

/// A fake Podman events endpoint: answers each connection with `head`, then each of `lines`,
/// then holds the connection open until the client closes it (`hold`) or closes it at once.
fn fake_events(
    dir: &std::path::Path,
    head: &'static str,
    lines: Vec<String>,
    hold: bool,
) -> (PathBuf, std::sync::mpsc::Receiver<String>) {
    let sock = dir.join("events.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            let lines = lines.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut request = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    request.push_str(&line);
                }
                let _ = tx.send(request);
                conn.write_all(head.as_bytes()).unwrap();
                for l in &lines {
                    if conn.write_all(l.as_bytes()).is_err() {
                        return;
                    }
                }
                if hold {
                    // Until the agent closes its side.
                    let _ = reader.read_to_end(&mut Vec::new());
                }
            });
        }
    });
    (sock, rx)
}

/// A session kept open: the client's side to write requests to, its answers as they come, and the
/// agent's result when the client closes.
struct Live {
    to_agent: std::os::unix::net::UnixStream,
    answers: std::sync::mpsc::Receiver<serde_json::Value>,
    agent: std::thread::JoinHandle<Result<(), Error>>,
}

impl Live {
    fn start(endpoints: Endpoints) -> Live {
        let (to_agent, agent_in) = std::os::unix::net::UnixStream::pair().unwrap();
        let (agent_out, from_agent) = std::os::unix::net::UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || {
            let mut output = agent_out;
            serve(&mut BufReader::new(agent_in), &mut output, &endpoints)
        });
        let (tx, answers) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(from_agent).lines() {
                let Ok(line) = line else { return };
                if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                    return;
                }
            }
        });
        let mut live = Live {
            to_agent,
            answers,
            agent,
        };
        let ours = Hello::ours();
        live.send(&hello_line(&ours.version, ours.protocol));
        assert!(live.next()["hello"].is_object());
        live
    }

    fn send(&mut self, line: &str) {
        self.to_agent
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    fn next(&self) -> serde_json::Value {
        self.answers
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("an answer within 10 s")
    }

    fn stream_request(&mut self, id: u64) {
        let path = events_path(OUR_FILTERS);
        self.send(&format!(
            r#"{{"id":{id},"target":"podman","method":"GET","path":"{path}"}}"#
        ));
    }

    /// Closes the client's side; the agent's result (it must end: no stream outlives it).
    fn close(self) -> Result<(), Error> {
        self.to_agent.shutdown(std::net::Shutdown::Write).unwrap();
        self.agent.join().unwrap()
    }
}

const EVENTS_HEAD: &str = "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n";

#[test]
fn podmans_events_stream_as_lines_with_the_requests_id_until_podman_ends_them() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<String> = (0..3)
        .map(|i| format!("{{\"Type\":\"container\",\"Action\":\"start\",\"n\":{i}}}\n"))
        .collect();
    let (sock, requests) = fake_events(dir.path(), EVENTS_HEAD, events, false);
    let mut live = Live::start(endpoints(sock));
    live.stream_request(5);
    let head = live.next();
    assert_eq!(
        (head["id"].as_u64(), head["status"].as_u64()),
        (Some(5), Some(200))
    );
    assert_eq!(head["more"], true);
    for i in 0..3 {
        let line = live.next();
        assert_eq!(line["id"], 5);
        assert_eq!(line["more"], true);
        let event: serde_json::Value =
            serde_json::from_str(line["body"].as_str().unwrap()).unwrap();
        assert_eq!(event["n"], i);
    }
    let end = live.next();
    assert_eq!(end["id"], 5);
    assert_eq!(end["status"], 200);
    assert!(end.get("more").is_none(), "{end}");
    // Forwarded as asked (checked), with nothing added.
    let forwarded = requests.recv().unwrap();
    assert!(
        forwarded.starts_with(&format!("GET {} HTTP/1.0\r\n", events_path(OUR_FILTERS))),
        "{forwarded}"
    );
    live.close().unwrap();
}

#[test]
fn an_event_line_over_the_bound_ends_its_stream_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let long = format!("{}\n", "x".repeat(MAX_EVENT_LINE + 10));
    let (sock, _) = fake_events(dir.path(), EVENTS_HEAD, vec![long], true);
    let mut live = Live::start(endpoints(sock));
    live.stream_request(1);
    assert_eq!(live.next()["more"], true);
    let end = live.next();
    assert!(
        end["error"].as_str().unwrap().contains("event line over"),
        "{end}"
    );
    live.close().unwrap();
}

#[test]
fn a_refused_stream_is_one_answer_and_never_reaches_podman() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, requests) = fake_events(dir.path(), EVENTS_HEAD, vec![], true);
    let mut live = Live::start(endpoints(sock));
    live.send(r#"{"id":3,"target":"podman","method":"GET","path":"/v1.41/events?since=0"}"#);
    let answer = live.next();
    assert_eq!(answer["id"], 3);
    assert!(
        answer["error"].as_str().unwrap().contains("not allowed"),
        "{answer}"
    );
    assert!(answer.get("more").is_none());
    live.close().unwrap();
    assert!(
        requests.try_recv().is_err(),
        "the refused stream reached Podman"
    );
}

#[test]
fn streams_are_bounded_end_when_cancelled_and_never_outlive_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let (sock, _) = fake_events(dir.path(), EVENTS_HEAD, vec![], true);
    let mut live = Live::start(endpoints(sock));
    for id in 1..=MAX_STREAMS as u64 {
        live.stream_request(id);
        assert_eq!(live.next()["more"], true);
    }
    live.stream_request(99);
    let refused = live.next();
    assert_eq!(refused["id"], 99);
    assert!(
        refused["error"].as_str().unwrap().contains("at most"),
        "{refused}"
    );
    // Requests are still served beside the open streams.
    live.send(r#"{"id":50,"target":"agent","method":"GET","path":"/ping"}"#);
    assert_eq!(live.next()["body"], "pong");
    // The client ends stream 1: its end line, and the cancel's answer, in either order.
    live.send(r#"{"id":51,"target":"agent","method":"DELETE","path":"/streams/1"}"#);
    let mut two = [live.next(), live.next()];
    two.sort_by_key(|l| l["id"].as_u64());
    assert_eq!(
        (two[0]["id"].as_u64(), two[0]["status"].as_u64()),
        (Some(1), Some(200))
    );
    assert!(two[0].get("more").is_none());
    assert_eq!(
        (two[1]["id"].as_u64(), two[1]["status"].as_u64()),
        (Some(51), Some(200))
    );
    // Its place is free again.
    live.stream_request(7);
    assert_eq!(live.next()["more"], true);
    // The client goes away with streams 2 and 7 open: the agent ends them and returns.
    live.close().unwrap();
}
