//! Health probes: one HTTP GET, straight to the slot's published port, that passes on 2xx or 3xx.
//!
//! The answer must come from the container itself: the client ignores proxy variables
//! (`HTTP_PROXY`, `http_proxy`, `ALL_PROXY`: see [`crate::backend::http_client`]) and follows no
//! redirect. A 3xx still passes, because it is the app's own answer on a direct connection (an app
//! that sends `/health` to `/health/` or a login page is up, as the manifest reference promises);
//! following it could lead off the container, to whatever the `Location` names. Before proxies
//! were ignored, a proxy answering 302 to everything made an app answering 404 pass.

use std::future::Future;
use std::time::Duration;

/// The agent session of a remote host, where its probes are made.
pub type Agent = std::sync::Arc<crate::backend::remote::Session>;

/// Probes a slot's health URL once.
pub trait Prober: Send + Sync {
    /// `Ok` on a 2xx/3xx answer; `Err` says what came back instead (never a body).
    fn probe(&self, url: &str) -> impl Future<Output = Result<(), String>> + Send;

    /// As [`Prober::probe`], from the host the slot runs on: a remote host's slot (a container
    /// address, a port published on the host's loopback) is reached by its agent there, with the
    /// same rules (`agent::probe`); a local host's (`agent` `None`) from here.
    fn probe_on(
        &self,
        agent: Option<&Agent>,
        url: &str,
    ) -> impl Future<Output = Result<(), String>> + Send {
        async move {
            match agent {
                Some(agent) => agent.probe(url).await,
                None => self.probe(url).await,
            }
        }
    }
}

/// The real prober: no proxy, no redirect followed (a 3xx passes as it is).
#[derive(Clone)]
pub struct HttpProber {
    client: reqwest::Client,
}

impl HttpProber {
    /// The process's prober: one client, built once (a daemon answering a promote then builds
    /// none); it pools no connection, so sharing it shares nothing between probes.
    pub fn new() -> Self {
        static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
        let client = CLIENT.get_or_init(Self::client).clone();
        Self { client }
    }

    fn client() -> reqwest::Client {
        crate::backend::http_client()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            // A fresh connection per probe: a pooled one could reach a container that is gone.
            .pool_max_idle_per_host(0)
            .build()
            .expect("the HTTP client builds")
    }
}

impl Default for HttpProber {
    fn default() -> Self {
        Self::new()
    }
}

impl Prober for HttpProber {
    async fn probe(&self, url: &str) -> Result<(), String> {
        // Every probe codeb plans dials an address (a container's, or a published port): one
        // HTTP/1.1 exchange on one fresh connection, through hyper alone. reqwest's client adds
        // its connector and pool around the same exchange (0.7-2.3 ms a probe on this machine
        // against 0.25 ms for the exchange itself), which a switch waits for.
        match direct(url) {
            Some((addr, path)) => exchange(addr, path).await,
            None => self.via_reqwest(url).await,
        }
    }
}

/// The address and path of an `http://IP:PORT/path` URL (no user info): what a probe dials.
fn direct(url: &str) -> Option<(std::net::SocketAddr, String)> {
    let parsed = reqwest::Url::parse(url).ok()?;
    if parsed.scheme() != "http" || !parsed.username().is_empty() || parsed.password().is_some() {
        return None;
    }
    let ip: std::net::IpAddr = parsed
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    let port = parsed.port_or_known_default()?;
    let path = match parsed.query() {
        Some(q) => format!("{}?{q}", parsed.path()),
        None => parsed.path().to_string(),
    };
    Some((std::net::SocketAddr::new(ip, port), path))
}

/// One GET of `path` on a fresh connection to `addr`: connected within 1 s, answered within 2 s
/// in all (as the reqwest client's timeouts), no redirect followed, the body never read.
async fn exchange(addr: std::net::SocketAddr, path: String) -> Result<(), String> {
    let started = tokio::time::Instant::now();
    let stream =
        match tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => return Err("connection refused".into()),
            Err(_) => return Err("timed out".into()),
        };
    let _ = stream.set_nodelay(true);
    let rest = Duration::from_secs(2).saturating_sub(started.elapsed());
    let answer = tokio::time::timeout(rest, async move {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        // The connection runs on its own task: it ends once the answer is in and the sender
        // dropped, or with the connection (then the request fails with its error).
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::USER_AGENT, "codeb-probe")
            .body(String::new())
            .map_err(|e| e.to_string())?;
        sender
            .send_request(request)
            .await
            .map(|r| r.status())
            .map_err(|e| e.to_string())
    })
    .await;
    match answer {
        Ok(Ok(status)) if status.is_success() || status.is_redirection() => Ok(()),
        Ok(Ok(status)) => Err(format!("HTTP {}", status.as_u16())),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("timed out".into()),
    }
}

impl HttpProber {
    async fn via_reqwest(&self, url: &str) -> Result<(), String> {
        match self.client.get(url).send().await {
            Ok(r) if r.status().is_success() || r.status().is_redirection() => Ok(()),
            Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
            Err(e) if e.is_connect() => Err("connection refused".into()),
            Err(e) if e.is_timeout() => Err("timed out".into()),
            Err(e) => Err(e.without_url().to_string()),
        }
    }
}

/// A prober with one probe started ahead, before the plan that asks for it was made: a switch on a
/// warm observation knows its target's address from the kept containers, so its health probe
/// (~1-2.5 ms through Caddy-free HTTP to busybox here) runs while the kernel's table is read and the
/// plan is made, instead of after. The executor still decides nothing: it probes what the plan
/// says, and gets the answer of the probe started ahead only when the plan names that same URL
/// (once); any other URL is probed afresh. Dropping the prober aborts a probe nobody asked for.
pub struct Ahead<P> {
    inner: P,
    started: std::sync::Mutex<Option<(String, Probing)>>,
}

/// A probe running on its own task.
type Probing = tokio::task::JoinHandle<Result<(), String>>;

impl<P: Prober + Clone + 'static> Ahead<P> {
    /// Starts probing `url` now, when there is one: from the host's agent when it has one (a
    /// remote host), as the executor will ask for it ([`Prober::probe_on`]).
    pub fn new(inner: P, url: Option<String>, agent: Option<Agent>) -> Self {
        let started = url.map(|url| {
            let prober = inner.clone();
            let probed = url.clone();
            let task = tokio::spawn(async move { prober.probe_on(agent.as_ref(), &probed).await });
            (url, task)
        });
        Self {
            inner,
            started: std::sync::Mutex::new(started),
        }
    }
}

impl<P> Ahead<P> {
    fn take(&self, url: &str) -> Option<Probing> {
        let mut started = self
            .started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*started {
            Some((ahead, _)) if ahead == url => started.take().map(|(_, task)| task),
            _ => None,
        }
    }
}

impl<P> Drop for Ahead<P> {
    fn drop(&mut self) {
        let started = self
            .started
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, task)) = started.take() {
            task.abort();
        }
    }
}

impl<P: Prober> Prober for Ahead<P> {
    async fn probe(&self, url: &str) -> Result<(), String> {
        self.probe_on(None, url).await
    }

    async fn probe_on(&self, agent: Option<&Agent>, url: &str) -> Result<(), String> {
        match self.take(url) {
            Some(task) => task
                .await
                .unwrap_or_else(|e| Err(format!("the probe did not finish: {e}"))),
            None => self.inner.probe_on(agent, url).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// A server on 127.0.0.1 answering `answer` to every request; counts its connections.
    fn server(answer: String) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer.as_bytes());
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn a_redirect_passes_as_the_slot_s_own_answer_and_is_never_followed() {
        let (elsewhere, followed) =
            server("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into());
        let (slot, _) = server(format!(
            "HTTP/1.1 302 Found\r\nLocation: http://{elsewhere}/\r\nContent-Length: 0\r\n\r\n"
        ));
        let prober = HttpProber::new();
        assert_eq!(prober.probe(&format!("http://{slot}/health")).await, Ok(()));
        assert_eq!(followed.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_404_fails() {
        let (slot, _) = server("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into());
        let answer = HttpProber::new()
            .probe(&format!("http://{slot}/health"))
            .await;
        assert_eq!(answer, Err("HTTP 404".into()));
    }

    #[tokio::test]
    async fn a_probe_started_ahead_answers_its_own_url_once_and_no_other() {
        let (ok, seen) = server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".into());
        let (bad, _) = server("HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n".into());
        let url = format!("http://{ok}/health");
        let prober = Ahead::new(HttpProber::new(), Some(url.clone()), None);
        // Another URL is probed afresh, not answered by the probe started ahead.
        assert_eq!(
            prober.probe(&format!("http://{bad}/health")).await,
            Err("HTTP 503".into())
        );
        assert_eq!(prober.probe(&url).await, Ok(()));
        assert_eq!(
            seen.load(Ordering::SeqCst),
            1,
            "answered by the probe ahead"
        );
        // Used once: the next probe of the same URL is a new one.
        assert_eq!(prober.probe(&url).await, Ok(()));
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_probe_started_ahead_keeps_its_failure() {
        let (bad, _) = server("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into());
        let url = format!("http://{bad}/health");
        let prober = Ahead::new(HttpProber::new(), Some(url.clone()), None);
        assert_eq!(prober.probe(&url).await, Err("HTTP 404".into()));
    }

    #[tokio::test]
    async fn a_refused_connection_and_a_silent_server_say_so() {
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let prober = HttpProber::new();
        assert_eq!(
            prober.probe(&format!("http://{addr}/health")).await,
            Err("connection refused".into())
        );
        // Accepts, never answers: the 2 s bound.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        assert_eq!(
            prober.probe(&format!("http://{addr}/health")).await,
            Err("timed out".into())
        );
        drop(silent);
    }

    #[tokio::test]
    async fn a_probe_by_address_sends_one_get_of_its_path_and_query_and_a_name_goes_through_reqwest(
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let heads = seen.clone();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).unwrap_or(0);
                heads
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).to_string());
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
            }
        });
        let prober = HttpProber::new();
        assert_eq!(
            prober.probe(&format!("http://{addr}/health?x=1")).await,
            Ok(())
        );
        let head = seen.lock().unwrap()[0].clone();
        assert!(head.starts_with("GET /health?x=1 HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("host: {addr}\r\n")),
            "{head}"
        );
        // Not an address: the reqwest client (same rules), here resolving localhost.
        let port = addr.port();
        assert_eq!(direct(&format!("http://localhost:{port}/h")), None);
        assert_eq!(
            prober.probe(&format!("http://localhost:{port}/h")).await,
            Ok(())
        );
        assert_eq!(seen.lock().unwrap().len(), 2);
    }
}
