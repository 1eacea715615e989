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

/// Probes a slot's health URL once.
pub trait Prober: Send + Sync {
    /// `Ok` on a 2xx/3xx answer; `Err` says what came back instead (never a body).
    fn probe(&self, url: &str) -> impl Future<Output = Result<(), String>> + Send;
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
    /// Starts probing `url` now, when there is one.
    pub fn new(inner: P, url: Option<String>) -> Self {
        let started = url.map(|url| {
            let prober = inner.clone();
            let probed = url.clone();
            let task = tokio::spawn(async move { prober.probe(&probed).await });
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
        match self.take(url) {
            Some(task) => task
                .await
                .unwrap_or_else(|e| Err(format!("the probe did not finish: {e}"))),
            None => self.inner.probe(url).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

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
        let prober = Ahead::new(HttpProber::new(), Some(url.clone()));
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
        let prober = Ahead::new(HttpProber::new(), Some(url.clone()));
        assert_eq!(prober.probe(&url).await, Err("HTTP 404".into()));
    }
}
