//! `codeb mcp`: MCP over stdio for an agent on a machine that has the CLI. It talks to the daemon
//! and never to a backend:
//!
//! - locally, through the daemon's MCP socket (`codeb-mcp.sock` in the state directory, mode
//!   0600 beside `codeb.sock`): bytes are copied both ways, and the daemon serves MCP on the
//!   connection (newline-delimited JSON-RPC, rmcp's stdio framing) as the socket's user, an admin
//!   as on `codeb.sock` (the file mode is the gate);
//! - with `--server URL`, to `codeb serve`'s `/mcp`, the key from `CODEB_API_KEY`: each message
//!   read from stdin is POSTed (stateless streamable HTTP) and each answer written to stdout.
//!   A refusal of the HTTP layer (401, 403, 413, 429) becomes a JSON-RPC error for the request.
//!
//! Must not: connect to Podman, Caddy or PowerDNS, read the store, or print a key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::ServiceExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Server;
use crate::api::{HealthSource, BODY_LIMIT};
use crate::auth::Caller;
use crate::service::Ctx;

/// The daemon's MCP socket in the state directory.
pub const SOCKET: &str = "codeb-mcp.sock";

/// Requests `codeb mcp --server` has in flight at once: an agent's parallel calls go on while a
/// deploy waits on its health check, and a runaway agent stays within the server's rate.
const IN_FLIGHT: usize = 8;

/// Errors of `codeb mcp`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no codeb serve or codeb watch answers on {path}: start one (codeb mcp talks to the daemon, never to the hosts), or use --server URL with CODEB_API_KEY")]
    NoDaemon {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the daemon on {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading standard input or writing standard output")]
    Stdio(#[source] std::io::Error),
    #[error("cannot make an HTTP client")]
    Client(#[source] reqwest::Error),
}

/// Binds the daemon's MCP socket in `state_dir`, mode 0600, replacing a stale one (the caller
/// holds the store's lock, as for `codeb.sock`).
pub fn bind(state_dir: &Path) -> std::io::Result<UnixListener> {
    crate::daemon::socket::bind_private(&state_dir.join(SOCKET))
}

/// Serves MCP on each connection until `shutdown`, as the connection's user.
pub async fn serve(
    listener: UnixListener,
    ctx: Ctx,
    health: HealthSource,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "cannot accept an MCP connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // The socket is 0600: the peer is the daemon's user, named by uid in the audit.
        let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
        let server = Server::new(ctx.clone(), Some(Caller::cli(uid)), Some(health.clone()));
        let stop = shutdown.child_token();
        tokio::spawn(async move {
            let (read, write) = stream.into_split();
            let transport =
                AsyncRwTransport::new_server(read, write).with_max_line_length(BODY_LIMIT);
            match server.serve_with_ct(transport, stop).await {
                Ok(running) => {
                    let _ = running.waiting().await;
                }
                Err(e) => debug!(error = %e, uid, "MCP connection ended before it initialized"),
            }
        });
    }
}

/// `codeb mcp`: copies stdin to the daemon's MCP socket and its answers to stdout, until the
/// agent closes stdin and the daemon has answered.
///
/// # Errors
/// `NoDaemon` when nothing listens; `Io` when the exchange broke.
pub async fn stdio_to_socket(state_dir: &Path) -> Result<(), Error> {
    let path = state_dir.join(SOCKET);
    let stream = UnixStream::connect(&path)
        .await
        .map_err(|source| Error::NoDaemon {
            path: path.clone(),
            source,
        })?;
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let (mut read, mut write) = stream.into_split();
    let up = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let copied = tokio::io::copy(&mut stdin, &mut write).await;
        // The agent is done: the daemon sees the end, answers what is in flight, and closes.
        let _ = write.shutdown().await;
        copied
    });
    let mut stdout = tokio::io::stdout();
    tokio::io::copy(&mut read, &mut stdout).await.map_err(io)?;
    stdout.flush().await.map_err(Error::Stdio)?;
    up.abort();
    Ok(())
}

/// `codeb mcp --server URL`: each JSON-RPC message from stdin is POSTed to `url` (its `/mcp`)
/// with `key`, and each answer written to stdout as one line.
///
/// # Errors
/// `Stdio`; `Client`.
pub async fn stdio_to_http(url: &str, key: &str) -> Result<(), Error> {
    let url = endpoint(url);
    let client = reqwest::Client::builder().build().map_err(Error::Client)?;
    let (tx, mut rx) = mpsc::channel::<Value>(64);
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(msg) = rx.recv().await {
            let mut line = serde_json::to_vec(&msg).expect("values serialize");
            line.push(b'\n');
            stdout.write_all(&line).await?;
            stdout.flush().await?;
        }
        Ok::<(), std::io::Error>(())
    });
    let version = Arc::new(Mutex::new(None::<String>));
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let key: Arc<str> = Arc::from(key);
    let url: Arc<str> = Arc::from(url.as_str());
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let mut line = Vec::new();
        // One message per line; the server refuses one over 4 MiB, so read a little more only.
        let n = (&mut stdin)
            .take(BODY_LIMIT as u64 + 2)
            .read_until(b'\n', &mut line)
            .await
            .map_err(Error::Stdio)?;
        if n == 0 {
            break;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let (client, tx, version, key, url) = (
            client.clone(),
            tx.clone(),
            version.clone(),
            key.clone(),
            url.clone(),
        );
        tasks.spawn(async move {
            for answer in post(&client, &url, &key, &version, line).await {
                let _ = tx.send(answer).await;
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    drop(tx);
    writer
        .await
        .expect("the writer does not panic")
        .map_err(Error::Stdio)
}

/// `URL`'s `/mcp`: `https://api.example` and `https://api.example/mcp` name the same.
fn endpoint(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.ends_with("/mcp") {
        url.to_string()
    } else {
        format!("{url}/mcp")
    }
}

/// POSTs one message and returns the messages answered (none for a notification).
async fn post(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    version: &Mutex<Option<String>>,
    body: Vec<u8>,
) -> Vec<Value> {
    let message: Option<Value> = serde_json::from_slice(&body).ok();
    let id = message.as_ref().and_then(|m| m.get("id")).cloned();
    let fail = |text: String| match &id {
        // A notification gets no answer, even an error.
        None => vec![],
        Some(id) => vec![json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {"code": -32000, "message": text},
        })],
    };
    let mut req = client
        .post(url)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("X-API-Key", key)
        .body(body);
    if let Some(v) = version.lock().await.clone() {
        req = req.header("MCP-Protocol-Version", v);
    }
    let res = match req.send().await {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot reach codeb serve at {url}: {e}")),
    };
    let status = res.status();
    let event_stream = res
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let text = match res.text().await {
        Ok(t) => t,
        Err(e) => return fail(format!("codeb serve's answer broke off: {e}")),
    };
    let answers: Vec<Value> = if event_stream {
        events(&text)
    } else if text.trim().is_empty() {
        vec![]
    } else {
        match serde_json::from_str::<Value>(&text) {
            Ok(v) if v.get("jsonrpc").is_some() => vec![v],
            Ok(v) => {
                // The API's own refusal: {"error": {"code", "message"}}.
                let message = v["error"]["message"].as_str().unwrap_or("").to_string();
                return fail(format!("codeb serve answered {status}: {message}"));
            }
            Err(_) => return fail(format!("codeb serve answered {status}: {}", text.trim())),
        }
    };
    for a in &answers {
        if let Some(v) = a["result"]["protocolVersion"].as_str() {
            *version.lock().await = Some(v.to_string());
        }
    }
    answers
}

/// The JSON messages of a server-sent event stream's `data:` lines.
fn events(text: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut data = String::new();
    for line in text.lines().chain(std::iter::once("")) {
        if let Some(d) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(d.trim_start());
        } else if line.is_empty() && !data.is_empty() {
            if let Ok(v) = serde_json::from_str(&data) {
                out.push(v);
            }
            data.clear();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_url_names_its_mcp_endpoint_with_or_without_the_path() {
        assert_eq!(endpoint("https://api.example"), "https://api.example/mcp");
        assert_eq!(endpoint("https://api.example/"), "https://api.example/mcp");
        assert_eq!(
            endpoint("http://127.0.0.1:9100/mcp"),
            "http://127.0.0.1:9100/mcp"
        );
    }

    #[test]
    fn event_stream_data_lines_are_read_as_messages() {
        let text = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1}\n\n: ping\n\ndata: {\"jsonrpc\":\"2.0\",\ndata: \"id\":2}\n";
        let got = events(text);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[1]["id"], 2);
    }
}
