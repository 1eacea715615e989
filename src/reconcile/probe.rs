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
pub struct HttpProber {
    client: reqwest::Client,
}

impl HttpProber {
    pub fn new() -> Self {
        let client = crate::backend::http_client()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            // A fresh connection per probe: a pooled one could reach a container that is gone.
            .pool_max_idle_per_host(0)
            .build()
            .expect("the HTTP client builds");
        Self { client }
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
