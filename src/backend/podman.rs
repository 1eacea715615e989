//! Podman adapter: drives one host's Podman through its Docker-compatible API (bollard).
//!
//! Responsible for turning [`Runtime`] calls into single API requests and Podman's answers into
//! the plain types of [`super`], and for classifying every failure once, here, into [`Error`]
//! (which says whether a retry is worth it). It makes no decisions: it never touches a container
//! it was not asked to, never retries on its own, and lists only containers carrying
//! [`LABEL_PROJECT`].
//!
//! Podman 4.3 quirks this module absorbs (measured, see `/work/shared/ENVIRONMENT.md`):
//! - the container list reports state `stopped` while an exited container awaits cleanup or its
//!   restart; bollard's typed list rejects the whole answer (`unknown variant `stopped``), so the
//!   list is read with a lenient decoder of our own (see [`Podman::list_owned`]);
//! - conflicts answer 500, not 409 (`that name is already in use`, `network already exists`), and
//!   creating on a missing network answers 500 `network not found`;
//! - a pull that fails still answers 200; the error arrives inside the progress stream.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
    PortBinding, RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::{ClientVersion, Docker};
use futures_util::StreamExt;
use serde::Deserialize;
use tracing::{debug, warn};

use super::Runtime;
use crate::model::observed::{NetworkInfo, ObservedContainer, Owner};
use crate::model::ownership::{
    LABEL_ENVIRONMENT, LABEL_OWNER_ID, LABEL_OWNER_NAME, LABEL_PROJECT, OWNER_VOLUME,
};
use crate::model::writes::ContainerSpec;

/// The API version spoken to Podman. Podman 4.3 reports `ApiVersion 1.41`; pinning it means we
/// never call `negotiate_version` (0.34–0.65 s per call here) and never ask Podman for the
/// semantics of a newer Docker API than it implements.
const API_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// Upper bound for one request until its response headers arrive. Every call measured here
/// takes under 0.5 s (create 8–78 ms, start 120–280 ms, stop with an init process < 0.5 s);
/// 30 s only trips on a wedged service.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Upper bound for a whole image pull, including its progress stream (which [`REQUEST_TIMEOUT`]
/// does not cover: bollard times out only until the response headers).
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// Seconds Podman waits after the stop signal (SIGTERM unless the image's `STOPSIGNAL` says
/// otherwise) before SIGKILL, for a container that records no grace period of its own (created by
/// a codeb before graceful stops: Podman recorded 0, so its removal was an immediate SIGKILL).
/// Every other container carries its release's `stopTimeout` (`StopTimeout`, default 10 s, the
/// default of Docker and Podman) and gets it on every stop and removal, by codeb or by hand. With
/// `Init = true` a busybox app that does not trap SIGTERM stops in 0.33–0.47 s; an app that
/// ignores it costs the full period on each removal.
pub const STOP_TIMEOUT_SECS: u32 = 10;

/// Added to a stop's grace period to bound its request: Podman answers once the container is
/// down, which after SIGKILL takes well under a second here.
const STOP_MARGIN: Duration = Duration::from_secs(20);

/// Result of this adapter.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// At the trait's edge: the same text and causes, with [`Error::is_retryable`]'s answer.
impl From<Error> for super::Error {
    fn from(e: Error) -> Self {
        let kind = super::ErrorKind::from_retryable(e.is_retryable());
        super::Error::new(super::Backend::Podman, kind, e)
    }
}

/// Errors of the Podman adapter.
///
/// Worth a retry (see [`Error::is_retryable`]): [`Error::Unreachable`], [`Error::Timeout`],
/// [`Error::Pull`] (registries come and go), [`Error::Decode`] (the only cause seen is a transient
/// state word) and [`Error::Api`] with a 5xx status that is not a conflict. Not worth one:
/// [`Error::InvalidEndpoint`], [`Error::NotFound`], 4xx answers and conflicts (a name or network
/// already in use: something must change first).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint string is neither `unix:///absolute/path` nor `tcp://host:port`.
    #[error(
        "invalid Podman endpoint `{endpoint}`: {reason} \
         (expected `unix:///path/to/podman.sock` or `tcp://host:port`)"
    )]
    InvalidEndpoint { endpoint: String, reason: String },

    /// No connection could be made, or it broke before an answer.
    #[error(
        "Podman is unreachable at {endpoint} ({reason}): \
         is `podman system service --time=0 {endpoint}` running? (deploy/stack.sh up starts one)"
    )]
    Unreachable { endpoint: String, reason: String },

    /// Podman accepted the connection but did not answer in time.
    #[error("{op}: Podman at {endpoint} did not answer within {} s", after.as_secs())]
    Timeout {
        op: String,
        endpoint: String,
        after: Duration,
    },

    /// The object the operation needs does not exist (404, or Podman's 500 `network not found`).
    #[error("{op}: not found: {message}")]
    NotFound { op: String, message: String },

    /// Podman refused the operation. `status` is the HTTP status; `None` when the failure came
    /// without one (inside a 200 stream, or a request that could not be built).
    #[error("{op}: {message}{}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    Api {
        op: String,
        status: Option<u16>,
        message: String,
    },

    /// A pull failed; Podman reports that inside a 200 progress stream.
    #[error("pull image {image}: {message}")]
    Pull { image: String, message: String },

    /// Podman's answer could not be decoded.
    #[error("{op}: unexpected answer from Podman: {message}")]
    Decode { op: String, message: String },
}

impl Error {
    /// Whether repeating the same call later may succeed without anything else changing.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unreachable { .. }
            | Error::Timeout { .. }
            | Error::Pull { .. }
            | Error::Decode { .. } => true,
            Error::Api {
                status, message, ..
            } => status.is_some_and(|s| s >= 500) && !is_conflict(message),
            Error::InvalidEndpoint { .. } | Error::NotFound { .. } => false,
        }
    }
}

/// Podman 4.3 answers conflicts with 500; these causes stay until the caller changes something.
fn is_conflict(message: &str) -> bool {
    message.contains("already in use") || message.contains("already exists")
}

/// Where the service listens.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
}

fn parse_endpoint(endpoint: &str) -> Result<Target> {
    let invalid = |reason: &str| Error::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    if let Some(path) = endpoint.strip_prefix("unix://") {
        if !path.starts_with('/') || path.len() < 2 {
            return Err(invalid("a unix socket path must be absolute"));
        }
        Ok(Target::Unix(PathBuf::from(path)))
    } else if let Some(addr) = endpoint.strip_prefix("tcp://") {
        let addr = addr.trim_end_matches('/');
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Target::Tcp(addr.to_owned()))
            }
            _ => Err(invalid("a tcp endpoint needs a host and a port")),
        }
    } else {
        Err(invalid("unknown scheme"))
    }
}

/// One Podman host.
///
/// Cheap to share (`&Podman` is `Send + Sync`); no lock is held across an `.await`.
pub struct Podman {
    endpoint: String,
    target: Target,
    /// bollard refuses to build a unix client while the socket file is missing, so the client is
    /// built on first use: codeb may start before the Podman service it drives.
    docker: Mutex<Option<Docker>>,
    /// Plain HTTP client for the container list only (see [`Podman::list_owned`] for why).
    http: reqwest::Client,
    /// `http://host:port` for tcp; any host for a unix socket (it is only sent as `Host:`).
    base_url: String,
}

impl std::fmt::Debug for Podman {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Podman")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Podman {
    /// A client for `unix:///path/to/podman.sock` or `tcp://host:port`.
    ///
    /// Makes no request: a service that is down shows up as [`Error::Unreachable`] on the first
    /// call (use [`Runtime::ping`] to check).
    ///
    /// # Errors
    /// [`Error::InvalidEndpoint`] for any other form.
    pub fn connect(endpoint: &str) -> Result<Podman> {
        let target = parse_endpoint(endpoint)?;
        // Proxies from the environment never see Podman's API (`http_client` sets no proxy).
        let builder = crate::backend::http_client().timeout(REQUEST_TIMEOUT);
        let (builder, base_url) = match &target {
            Target::Unix(path) => (
                builder.unix_socket(path.clone()),
                "http://podman".to_owned(),
            ),
            Target::Tcp(addr) => (builder, format!("http://{addr}")),
        };
        let http = builder.build().map_err(|e| Error::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            reason: format!("cannot build an HTTP client: {}", super::error_chain(&e)),
        })?;
        Ok(Podman {
            endpoint: endpoint.to_owned(),
            target,
            docker: Mutex::new(None),
            http,
            base_url,
        })
    }

    /// The endpoint this client was made for, as given.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn docker(&self) -> Result<Docker> {
        // Held only to clone an `Arc`-based handle, never across an `.await`.
        let mut slot = self.docker.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(docker) = slot.as_ref() {
            return Ok(docker.clone());
        }
        let secs = REQUEST_TIMEOUT.as_secs();
        let docker = match &self.target {
            Target::Unix(path) => {
                Docker::connect_with_unix(&path.to_string_lossy(), secs, &API_VERSION)
            }
            Target::Tcp(addr) => Docker::connect_with_http(addr, secs, &API_VERSION),
        }
        .map_err(|e| from_bollard(&self.endpoint, "connect", e))?;
        *slot = Some(docker.clone());
        Ok(docker)
    }

    fn err(&self, op: &str, err: BollardError) -> Error {
        from_bollard(&self.endpoint, op, err)
    }

    /// Podman answers both of these with 500: a name conflict (the caller removes the old
    /// container first) and a missing network (the caller runs `ensure_network` first).
    fn create_error(&self, op: &str, name: &str, err: BollardError) -> Error {
        match err {
            BollardError::DockerResponseServerError {
                status_code,
                message,
            } if message.contains("already in use") => Error::Api {
                op: op.to_owned(),
                status: Some(status_code),
                message: format!(
                    "a container named `{name}` already exists; remove it before creating it \
                     again ({message})"
                ),
            },
            BollardError::DockerResponseServerError { message, .. }
                if message.contains("network not found") =>
            {
                Error::NotFound {
                    op: op.to_owned(),
                    message,
                }
            }
            other => self.err(op, other),
        }
    }
}

/// A container event codeb reacts to (`die`, `remove` or `start`), as Podman reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub id: String,
    pub name: String,
    /// `die`, `remove` or `start`.
    pub action: String,
    /// The container's labels (Podman puts them among the event's attributes).
    pub labels: BTreeMap<String, String>,
    /// An event of a volume (the owner mark's), not of a container.
    pub volume: bool,
}

/// The filters of codeb's event stream, and the only ones a remote host's agent lets through
/// (src/agent): container events, and volume events (the owner mark is a volume: its `create`
/// and `remove`), of these kinds only.
pub const EVENT_FILTERS: &[(&str, &[&str])] = &[
    ("type", &["container", "volume"]),
    ("event", &["died", "remove", "start", "create"]),
];

impl Podman {
    /// Every `die`, `remove` and `start` event of a container, as it happens (Podman delivers
    /// them up to ~250 ms late). A restart by the restart policy is `die`, `restart`, `init`,
    /// `start`; `podman restart` is `restart`, `die`, `cleanup`, `init`, `start` (measured).
    ///
    /// The stream ends when the connection does (Podman restarted, or an event bollard cannot
    /// decode); the caller reconnects, and should re-observe, since events in between are lost.
    /// Filters: `type=container` always (a pod event ends bollard's stream), and `event=died`,
    /// which is how Podman 4.3 spells the filter for events that say `die`. A label filter with a
    /// key only matches nothing in Podman 4.3, so codeb's label is checked by the caller.
    pub fn container_events(
        &self,
    ) -> Result<impl futures_util::Stream<Item = Result<ContainerEvent>> + Send + 'static> {
        use bollard::query_parameters::EventsOptionsBuilder;
        let filters: HashMap<String, Vec<String>> = EVENT_FILTERS
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect();
        let options = EventsOptionsBuilder::default().filters(&filters).build();
        let endpoint = self.endpoint.clone();
        Ok(self.docker()?.events(Some(options)).map(move |item| {
            let message = item.map_err(|e| from_bollard(&endpoint, "events", e))?;
            let actor = message.actor.unwrap_or_default();
            let mut labels: BTreeMap<String, String> =
                actor.attributes.unwrap_or_default().into_iter().collect();
            let name = labels.remove("name").unwrap_or_default();
            let volume = matches!(
                message.typ,
                Some(bollard::models::EventMessageTypeEnum::VOLUME)
            );
            Ok(ContainerEvent {
                id: actor.id.unwrap_or_default(),
                name,
                action: message.action.unwrap_or_default(),
                labels,
                volume,
            })
        }))
    }
}

/// What Podman's own network inspect tells (`GET /libpod/networks/{name}/json`).
#[derive(Debug, Deserialize)]
struct LibpodNetwork {
    #[serde(default)]
    subnets: Vec<LibpodSubnet>,
    /// The bridge's interface name.
    #[serde(default)]
    network_interface: String,
}

#[derive(Debug, Deserialize)]
struct LibpodSubnet {
    #[serde(default)]
    gateway: Option<String>,
}

impl Podman {
    /// A network, or `None` when it does not exist. Podman's own endpoint: the Docker-compatible
    /// inspect lists every container attached, inspecting each (27 ms with 35 containers here,
    /// against 0.7 ms), and every observation asks it.
    async fn network(&self, name: &str) -> Result<Option<LibpodNetwork>> {
        let op = format!("inspect network {name}");
        let url = format!(
            "{}/v4.0.0/libpod/networks/{}/json",
            self.base_url,
            percent_encode(name)
        );
        self.get_json(op, url).await
    }

    /// A volume's labels, or `None` when it does not exist.
    async fn volume_labels(&self, name: &str) -> Result<Option<BTreeMap<String, String>>> {
        #[derive(Deserialize)]
        struct Volume {
            #[serde(rename = "Labels", default)]
            labels: Option<BTreeMap<String, String>>,
        }
        let op = format!("inspect volume {name}");
        let url = format!(
            "{}/v4.0.0/libpod/volumes/{}/json",
            self.base_url,
            percent_encode(name)
        );
        let volume: Option<Volume> = self.get_json(op, url).await?;
        Ok(volume.map(|v| v.labels.unwrap_or_default()))
    }

    /// One GET decoded as `T`; `None` when Podman answers 404.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        op: String,
        url: String,
    ) -> Result<Option<T>> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| from_reqwest(&self.endpoint, &op, &e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| from_reqwest(&self.endpoint, &op, &e))?;
        if status.as_u16() == 404 {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(from_status(&op, status.as_u16(), server_message(&body)));
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| Error::Decode {
                op,
                message: e.to_string(),
            })
    }

    /// The grace period a container records (`Config.StopTimeout` of one `GET
    /// /containers/{id}/json`); `None` when it records 0 or is missing.
    async fn recorded_stop_timeout(&self, id: &str) -> Result<Option<u32>> {
        let op = format!("inspect container {id}");
        let url = format!(
            "{}/v{}.{}/containers/{}/json",
            self.base_url,
            API_VERSION.major_version,
            API_VERSION.minor_version,
            percent_encode(id)
        );
        let Some(inspected) = self.get_json::<InspectedContainer>(op, url).await? else {
            return Ok(None);
        };
        Ok(inspected
            .config
            .and_then(|c| c.stop_timeout)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|&t| t > 0))
    }

    /// One list call with these (JSON) filters, decoded leniently.
    async fn list(&self, filters: &str) -> Result<Vec<ObservedContainer>> {
        const OP: &str = "list containers";
        let url = format!(
            "{}/v{}.{}/containers/json?all=true&filters={}",
            self.base_url,
            API_VERSION.major_version,
            API_VERSION.minor_version,
            percent_encode(filters)
        );
        let started = Instant::now();
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| from_reqwest(&self.endpoint, OP, &e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| from_reqwest(&self.endpoint, OP, &e))?;
        if !status.is_success() {
            return Err(from_status(OP, status.as_u16(), server_message(&body)));
        }
        // Podman's share of an observation (the request until its whole answer): what a no-op
        // apply cannot avoid, read off this line by benches/noop-apply.sh.
        debug!(
            elapsed_us = started.elapsed().as_micros() as u64,
            bytes = body.len(),
            "podman listed containers"
        );
        let listed: Vec<ListedContainer> =
            serde_json::from_slice(&body).map_err(|e| Error::Decode {
                op: OP.to_owned(),
                message: e.to_string(),
            })?;
        Ok(listed
            .into_iter()
            .map(ListedContainer::into_observed)
            .collect())
    }
}

impl Podman {
    /// The Podman service's version (`GET /version`), for `get hosts`.
    pub async fn version(&self) -> super::Result<String> {
        let v = self
            .docker()?
            .version()
            .await
            .map_err(|e| self.err("version", e))?;
        Ok(v.version.unwrap_or_else(|| "?".into()))
    }
}

impl Runtime for Podman {
    async fn ping(&self) -> super::Result<()> {
        self.docker()?
            .ping()
            .await
            .map_err(|e| self.err("ping", e))?;
        Ok(())
    }

    /// One `GET /containers/json?all=true&filters={"label":["codeb.project"]}`.
    ///
    /// Read with reqwest and a lenient decoder instead of bollard's `list_containers`: bollard
    /// decodes `State` into a closed enum, and Podman 4.3 reports `stopped` (not in it) while an
    /// exited container awaits cleanup or its restart, which fails the whole list. Measured:
    /// bollard's list failed 163 times in 1504 calls while five containers exited, and a container
    /// cycling under its restart policy was `stopped` in 4–49 % of the lists taken meanwhile. Any
    /// state word is accepted here; only `running` counts as running.
    async fn list_owned(&self) -> super::Result<Vec<ObservedContainer>> {
        Ok(self
            .list(&format!(r#"{{"label":["{LABEL_PROJECT}"]}}"#))
            .await?)
    }

    /// Filtered by Podman: it reports (and pays for) the environment's containers only.
    async fn list_env(&self, key: &crate::model::EnvKey) -> super::Result<Vec<ObservedContainer>> {
        let labels = serde_json::json!({
            "label": [
                format!("{LABEL_PROJECT}={}", key.project),
                format!("{}={}", LABEL_ENVIRONMENT, key.env),
            ]
        });
        Ok(self.list(&labels.to_string()).await?)
    }
    /// One `GET /networks/{name}`: the gateway of its first IPv4 subnet, and its bridge.
    async fn network_gateway(&self, name: &str) -> super::Result<Option<NetworkInfo>> {
        Ok(self.network(name).await?.and_then(|n| {
            let gateway = n
                .subnets
                .iter()
                .find_map(|s| s.gateway.as_deref()?.parse().ok())?;
            Some(NetworkInfo {
                gateway,
                bridge: n.network_interface,
            })
        }))
    }

    async fn ensure_network(&self, name: &str) -> super::Result<bool> {
        let docker = self.docker()?;
        if self.network(name).await?.is_some() {
            return Ok(false);
        }
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            ..Default::default()
        };
        match docker.create_network(request).await {
            Ok(_) => Ok(true),
            // Another caller created it between our inspect and create (Podman answers 500 here).
            Err(BollardError::DockerResponseServerError { message, .. })
                if message.contains("already exists") =>
            {
                Ok(false)
            }
            Err(e) => Err(self.err(&format!("create network {name}"), e).into()),
        }
    }

    async fn owner(&self) -> super::Result<Option<Owner>> {
        Ok(self.volume_labels(OWNER_VOLUME).await?.map(|mut labels| {
            let id = labels.remove(LABEL_OWNER_ID).unwrap_or_default();
            let name = labels.remove(LABEL_OWNER_NAME).unwrap_or_default();
            Owner { id, name }
        }))
    }

    async fn mark_owner(&self, owner: &Owner) -> super::Result<()> {
        self.unmark_owner().await?;
        let request = VolumeCreateRequest {
            name: Some(OWNER_VOLUME.to_owned()),
            labels: Some(HashMap::from([
                (LABEL_OWNER_ID.to_owned(), owner.id.clone()),
                (LABEL_OWNER_NAME.to_owned(), owner.name.clone()),
            ])),
            ..Default::default()
        };
        self.docker()?
            .create_volume(request)
            .await
            .map(drop)
            .map_err(|e| self.err(&format!("create volume {OWNER_VOLUME}"), e).into())
    }

    async fn unmark_owner(&self) -> super::Result<()> {
        let options = RemoveVolumeOptionsBuilder::default().force(true).build();
        match self
            .docker()?
            .remove_volume(OWNER_VOLUME, Some(options))
            .await
        {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(self.err(&format!("remove volume {OWNER_VOLUME}"), e).into()),
        }
    }

    async fn ensure_image(&self, image: &str) -> super::Result<()> {
        let docker = self.docker()?;
        match docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(self.err(&format!("inspect image {image}"), e).into()),
        }
        debug!(image, "image missing, pulling");
        let options = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let pull = async {
            let mut progress = docker.create_image(Some(options), None, None);
            // The pull only happens while the stream is read; its failure is an item of it.
            while let Some(item) = progress.next().await {
                item.map_err(|e| match e {
                    BollardError::DockerStreamError { error } => Error::Pull {
                        image: image.to_owned(),
                        message: error,
                    },
                    other => self.err(&format!("pull image {image}"), other),
                })?;
            }
            Ok(())
        };
        tokio::time::timeout(PULL_TIMEOUT, pull)
            .await
            .map_err(|_| Error::Timeout {
                op: format!("pull image {image}"),
                endpoint: self.endpoint.clone(),
                after: PULL_TIMEOUT,
            })?
    }

    async fn create(&self, spec: &ContainerSpec) -> super::Result<String> {
        let op = format!("create container {}", spec.name);
        let started = Instant::now();
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let body = create_body(spec);
        let created = self
            .docker()?
            .create_container(Some(options), body)
            .await
            .map_err(|e| self.create_error(&op, &spec.name, e))?;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        debug!(name = %spec.name, id = %created.id, elapsed_ms, "created");
        Ok(created.id)
    }

    /// Starting a running container is not an error (Podman answers 304, which bollard accepts).
    async fn start(&self, id: &str) -> super::Result<()> {
        let started = Instant::now();
        self.docker()?
            .start_container(id, None)
            .await
            .map_err(|e| self.err(&format!("start container {id}"), e))?;
        debug!(
            id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "started"
        );
        Ok(())
    }

    /// Sends the stop signal and grants the container's own grace period (its `StopTimeout`, or
    /// [`STOP_TIMEOUT_SECS`] when it records none) before SIGKILL. Stopping a stopped (304) or
    /// missing (404) container is not an error.
    async fn stop(&self, id: &str) -> super::Result<()> {
        let started = Instant::now();
        let grace = self
            .recorded_stop_timeout(id)
            .await?
            .unwrap_or(STOP_TIMEOUT_SECS);
        let options = StopContainerOptionsBuilder::default()
            .t(i32::try_from(grace).unwrap_or(i32::MAX))
            .build();
        let docker = self.docker()?;
        let bound = Duration::from_secs(u64::from(grace)) + STOP_MARGIN;
        let docker = if bound > REQUEST_TIMEOUT {
            docker.with_timeout(bound)
        } else {
            docker
        };
        match docker.stop_container(id, Some(options)).await {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(self.err(&format!("stop container {id}"), e).into()),
        }
        debug!(
            id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "stopped"
        );
        Ok(())
    }

    /// Stops the container gracefully (as `stop`: the stop signal, then up to its grace period
    /// before SIGKILL), then removes it and its anonymous volumes (an
    /// image's `VOLUME`s would otherwise pile up, one set per release); a missing container is not
    /// an error.
    ///
    /// # Guarantees
    /// The app gets its stop signal and grace period before it goes: a forced removal (SIGKILL at
    /// once) happens only when the stop failed or the stopped container still refused removal,
    /// so that a broken stop cannot leave a retired slot behind for ever.
    async fn remove(&self, id: &str) -> super::Result<()> {
        let started = Instant::now();
        let stopped = self.stop(id).await;
        if let Err(e) = &stopped {
            warn!(id, error = %e, "graceful stop failed: removing by force");
        }
        let removal = |force| {
            RemoveContainerOptionsBuilder::default()
                .force(force)
                .v(true)
                .build()
        };
        let docker = self.docker()?;
        let mut result = docker
            .remove_container(id, Some(removal(stopped.is_err())))
            .await;
        if stopped.is_ok()
            && !matches!(
                result,
                Ok(())
                    | Err(BollardError::DockerResponseServerError {
                        status_code: 404,
                        ..
                    })
            )
        {
            // Stopped, yet not removable (e.g. restarted in between): the last resort.
            warn!(
                id,
                "removal of the stopped container failed: removing by force"
            );
            result = docker.remove_container(id, Some(removal(true))).await;
        }
        match result {
            Ok(())
            | Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(self.err(&format!("remove container {id}"), e).into()),
        }
        debug!(
            id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "removed"
        );
        Ok(())
    }

    /// One `POST /containers/{id}/rename` (2-5 ms here, against 250-400 ms to remove a running
    /// container).
    async fn rename(&self, id: &str, name: &str) -> super::Result<()> {
        let started = Instant::now();
        let options = bollard::query_parameters::RenameContainerOptionsBuilder::default()
            .name(name)
            .build();
        self.docker()?
            .rename_container(id, options)
            .await
            .map_err(|e| self.err(&format!("rename container {id} to {name}"), e))?;
        debug!(
            id,
            name,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "renamed"
        );
        Ok(())
    }

    /// From a list filtered by name (a regular expression to Podman, anchored here) or id: the
    /// list's entries parse whatever the state, where bollard's inspect fails on Podman's
    /// transient `stopped`.
    async fn address(&self, id: &str) -> super::Result<Option<std::net::Ipv4Addr>> {
        let filters = if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            serde_json::json!({ "id": [id] })
        } else {
            serde_json::json!({ "name": [format!("^{id}$")] })
        };
        let listed = self.list(&filters.to_string()).await?;
        Ok(listed
            .into_iter()
            .find(|c| c.name == id || c.id == id)
            .and_then(|c| c.ip))
    }

    async fn logs_tail(&self, id: &str, lines: usize) -> super::Result<Vec<String>> {
        // Nothing to ask for (Podman would answer an empty body to `tail=0`).
        if lines == 0 {
            return Ok(Vec::new());
        }
        let op = format!("logs of container {id}");
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let docker = self.docker()?;
        let read = async {
            let mut frames = docker.logs(id, Some(options));
            let mut assembler = LineAssembler::default();
            while let Some(frame) = frames.next().await {
                assembler.push(frame.map_err(|e| self.err(&op, e))?);
            }
            Ok::<_, Error>(assembler.finish())
        };
        // bollard's timeout ends at the response headers; the body of a non-follow log is short.
        let mut all: Vec<String> =
            tokio::time::timeout(REQUEST_TIMEOUT, read)
                .await
                .map_err(|_| Error::Timeout {
                    op: op.clone(),
                    endpoint: self.endpoint.clone(),
                    after: REQUEST_TIMEOUT,
                })??;
        let excess = all.len().saturating_sub(lines);
        all.drain(..excess);
        Ok(all)
    }

    fn logs_follow(
        &self,
        id: &str,
        lines: usize,
    ) -> futures_util::stream::BoxStream<'static, super::Result<String>> {
        use std::collections::VecDeque;
        let op = format!("following the log of container {id}");
        let docker = match self.docker() {
            Ok(d) => d,
            Err(e) => return futures_util::stream::iter([Err(e.into())]).boxed(),
        };
        // Podman 4.3 sends a followed log's response headers only with its first line, and
        // bollard's timeout runs until the headers: a quiet container would time out.
        let docker = docker.with_timeout(FOLLOW_TIMEOUT);
        let options = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let frames = docker.logs(id, Some(options)).boxed();
        let endpoint = self.endpoint.clone();
        // (frames, assembler, lines ready, the log ended)
        let state = (frames, LineAssembler::default(), VecDeque::new(), false);
        futures_util::stream::unfold(state, move |(mut frames, mut asm, mut ready, mut ended)| {
            let (op, endpoint) = (op.clone(), endpoint.clone());
            async move {
                loop {
                    if let Some(line) = ready.pop_front() {
                        return Some((Ok(line), (frames, asm, ready, ended)));
                    }
                    if ended {
                        return None;
                    }
                    match frames.next().await {
                        Some(Ok(frame)) => {
                            asm.push(frame);
                            ready.extend(asm.lines.drain(..));
                        }
                        Some(Err(e)) => {
                            let e = from_bollard(&endpoint, &op, e);
                            return Some((Err(e.into()), (frames, asm, ready, true)));
                        }
                        None => {
                            ended = true;
                            ready.extend(std::mem::take(&mut asm).finish());
                        }
                    }
                }
            }
        })
        .boxed()
    }
}

/// How long a followed log may wait for its first line (see [`Podman::logs_follow`]): a day; a
/// follow ends when its reader goes away, not on a clock.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The create request for `spec`.
///
/// Restart policy `unless-stopped`: an app that exits for any reason, even with status 0, is down
/// and should come back, while a container codeb stopped on purpose (the retired slot) must stay
/// stopped. `on-failure` would leave a cleanly exited app down until the next reconcile. Podman
/// honours restart policies without systemd, but nothing restarts containers after a reboot: codeb
/// converges on start-up for that.
///
/// The confinement is written in full (`CapDrop: [ALL]` and the kept list, limits, and
/// `no-new-privileges`): nothing is left to Podman's defaults, which keep `NET_RAW` in 4.3 and
/// set no limit.
fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let c = &spec.confinement;
    let port = format!("{}/tcp", spec.container_port);
    let binding = PortBinding {
        host_ip: Some(spec.host_ip.clone()),
        host_port: Some(spec.host_port.to_string()),
    };
    let port_bindings = spec
        .publish
        .then(|| HashMap::from([(port.clone(), Some(vec![binding]))]));
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.command.clone(),
        env: Some(spec.env.0.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(
            spec.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        exposed_ports: Some(vec![port.clone()]),
        user: c.user.clone(),
        // Recorded on the container: every stop and removal (by codeb or by hand) grants it.
        stop_timeout: Some(i64::from(spec.stop_timeout_secs)),
        host_config: Some(HostConfig {
            port_bindings,
            memory: Some(saturating_i64(c.memory_bytes)),
            // Swap is not added to the limit: a leak stops at `memory`, not at twice it.
            memory_swap: Some(saturating_i64(c.memory_bytes)),
            nano_cpus: Some(i64::from(c.millicpus) * 1_000_000),
            pids_limit: Some(i64::from(c.pids)),
            // Every capability but the kept ones: an explicit list instead of Podman's defaults,
            // which change between versions (4.3 keeps NET_RAW).
            cap_drop: Some(vec!["ALL".to_string()]),
            cap_add: Some(c.capabilities.clone()),
            security_opt: c
                .no_new_privileges
                .then(|| vec!["no-new-privileges".to_string()]),
            readonly_rootfs: Some(c.read_only_root_fs),
            // An init as PID 1 forwards SIGTERM: busybox as PID 1 ignores it and every stop
            // took the full timeout (5.6 s); with an init 0.33–0.47 s.
            init: Some(true),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            network_mode: Some(spec.network.clone()),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                spec.network.clone(),
                // Podman 4.3 takes the endpoint's MAC (the top-level `MacAddress` was ignored:
                // measured) and keeps it across `podman restart`.
                EndpointSettings {
                    mac_address: spec.mac.clone(),
                    ..Default::default()
                },
            )])),
        }),
        ..Default::default()
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// What codeb reads of `GET /containers/{id}/json`.
#[derive(Debug, Deserialize)]
struct InspectedContainer {
    #[serde(rename = "Config", default)]
    config: Option<InspectedConfig>,
}

#[derive(Debug, Deserialize)]
struct InspectedConfig {
    #[serde(rename = "StopTimeout", default)]
    stop_timeout: Option<i64>,
}

/// One entry of `GET /containers/json`, with every field optional and `State` any string.
#[derive(Debug, Deserialize)]
struct ListedContainer {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Names", default)]
    names: Option<Vec<String>>,
    #[serde(rename = "Image", default)]
    image: Option<String>,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "State", default)]
    state: Option<String>,
    #[serde(rename = "Ports", default)]
    ports: Option<Vec<ListedPort>>,
    #[serde(rename = "NetworkSettings", default)]
    network_settings: Option<ListedNetworkSettings>,
}

/// `NetworkSettings.Networks` of a list entry: the container's address on each network.
#[derive(Debug, Deserialize)]
struct ListedNetworkSettings {
    #[serde(rename = "Networks", default)]
    networks: Option<BTreeMap<String, ListedEndpoint>>,
}

#[derive(Debug, Deserialize)]
struct ListedEndpoint {
    #[serde(rename = "IPAddress", default)]
    ip_address: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ListedPort {
    #[serde(rename = "PrivatePort")]
    private_port: u16,
    #[serde(rename = "PublicPort", default)]
    public_port: Option<u16>,
    #[serde(rename = "Type", default)]
    protocol: Option<String>,
}

impl ListedContainer {
    fn into_observed(self) -> ObservedContainer {
        let state = self.state.unwrap_or_default();
        ObservedContainer {
            name: self
                .names
                .and_then(|names| names.into_iter().next())
                .map(|name| name.trim_start_matches('/').to_owned())
                .unwrap_or_default(),
            image: self.image.unwrap_or_default(),
            labels: self.labels.unwrap_or_default(),
            running: is_running(&state),
            host_port: published_port(self.ports.as_deref().unwrap_or_default()),
            ip: self.network_settings.and_then(first_ip),
            state,
            id: self.id,
        }
    }
}

/// The IPv4 address on the first network (by name) that gives one: codeb's containers join
/// exactly one network, and a stopped container reports an empty address.
fn first_ip(settings: ListedNetworkSettings) -> Option<std::net::Ipv4Addr> {
    settings
        .networks?
        .into_values()
        .find_map(|e| e.ip_address?.parse().ok())
}

/// Only Podman's `running` is running; `created`, `configured`, `stopped`, `stopping`, `exited`,
/// `paused`, `unknown` and words we have never seen are not.
fn is_running(state: &str) -> bool {
    state == "running"
}

/// The host port of the container's published TCP port. codeb publishes exactly one port per
/// container; should there be more, the lowest container port wins so the answer is stable.
fn published_port(ports: &[ListedPort]) -> Option<u16> {
    ports
        .iter()
        .filter(|p| {
            p.protocol
                .as_deref()
                .is_none_or(|t| t.is_empty() || t == "tcp")
        })
        .filter_map(|p| {
            p.public_port
                .filter(|&port| port != 0)
                .map(|public| (p.private_port, public))
        })
        .min()
        .map(|(_, public)| public)
}

/// Joins log frames into lines, per stream, so that a line Podman sends in pieces (its log driver
/// splits long lines into partial entries) is one line, and stdout and stderr never mix in a line.
#[derive(Default)]
struct LineAssembler {
    lines: Vec<String>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl LineAssembler {
    fn push(&mut self, frame: bollard::container::LogOutput) {
        use bollard::container::LogOutput;
        let (pending, bytes) = match frame {
            LogOutput::StdErr { message } => (&mut self.stderr, message),
            LogOutput::StdOut { message }
            | LogOutput::Console { message }
            | LogOutput::StdIn { message } => (&mut self.stdout, message),
        };
        pending.extend_from_slice(&bytes);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            self.lines.push(line_text(&line[..end]));
        }
    }

    fn finish(mut self) -> Vec<String> {
        for rest in [
            std::mem::take(&mut self.stdout),
            std::mem::take(&mut self.stderr),
        ] {
            if !rest.is_empty() {
                self.lines.push(line_text(&rest));
            }
        }
        self.lines
    }
}

fn line_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes.strip_suffix(b"\r").unwrap_or(bytes)).into_owned()
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for the `filters` query value).
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Podman's error body is `{"cause": …, "message": …, "response": status}`; else the text.
fn server_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Body {
        message: String,
    }
    serde_json::from_slice::<Body>(body)
        .map(|b| b.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_owned())
}

/// An HTTP error status from Podman.
fn from_status(op: &str, status: u16, message: String) -> Error {
    if status == 404 {
        Error::NotFound {
            op: op.to_owned(),
            message,
        }
    } else {
        Error::Api {
            op: op.to_owned(),
            status: Some(status),
            message,
        }
    }
}

/// Classifies a bollard error. Transport failures (missing socket, refused or broken connection)
/// become [`Error::Unreachable`], whatever layer of hyper reported them.
fn from_bollard(endpoint: &str, op: &str, err: BollardError) -> Error {
    let unreachable = |reason: String| Error::Unreachable {
        endpoint: endpoint.to_owned(),
        reason,
    };
    match err {
        // bollard checks that the socket file exists before it builds a unix client.
        BollardError::SocketNotFoundError(_) => unreachable(SOCKET_MISSING.to_owned()),
        BollardError::HyperLegacyError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::IOError { .. } => unreachable(transport_reason(&err)),
        BollardError::RequestTimeoutError => Error::Timeout {
            op: op.to_owned(),
            endpoint: endpoint.to_owned(),
            after: REQUEST_TIMEOUT,
        },
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => from_status(op, status_code, message),
        BollardError::JsonDataError { message, .. } => Error::Decode {
            op: op.to_owned(),
            message,
        },
        BollardError::JsonSerdeError { err } => Error::Decode {
            op: op.to_owned(),
            message: err.to_string(),
        },
        BollardError::DockerStreamError { error } => Error::Api {
            op: op.to_owned(),
            status: None,
            message: error,
        },
        other => Error::Api {
            op: op.to_owned(),
            status: None,
            message: super::error_chain(&other),
        },
    }
}

/// Classifies a reqwest error (the list call).
fn from_reqwest(endpoint: &str, op: &str, err: &reqwest::Error) -> Error {
    if err.is_timeout() {
        Error::Timeout {
            op: op.to_owned(),
            endpoint: endpoint.to_owned(),
            after: REQUEST_TIMEOUT,
        }
    } else if err.is_decode() {
        Error::Decode {
            op: op.to_owned(),
            message: super::error_chain(err),
        }
    } else {
        // Connect failures, and connections reset before the whole answer arrived.
        Error::Unreachable {
            endpoint: endpoint.to_owned(),
            reason: transport_reason(err),
        }
    }
}

const SOCKET_MISSING: &str = "the socket does not exist";

/// Why a connection failed, in a few words: the innermost cause. The outer layers of bollard's and
/// reqwest's errors only repeat the URL (already in the message) and "client error (Connect)".
fn transport_reason(err: &(dyn std::error::Error + 'static)) -> String {
    let mut root = err;
    while let Some(next) = root.source() {
        root = next;
    }
    match root
        .downcast_ref::<std::io::Error>()
        .map(std::io::Error::kind)
    {
        Some(std::io::ErrorKind::NotFound) => SOCKET_MISSING.to_owned(),
        Some(std::io::ErrorKind::ConnectionRefused) => "connection refused".to_owned(),
        _ => root.to_string(),
    }
}

/// `outer: inner: innermost`, skipping a layer that only repeats the one below it.
#[cfg(test)]
mod tests {
    use super::*;

    fn listed(json: &str) -> Vec<ObservedContainer> {
        serde_json::from_str::<Vec<ListedContainer>>(json)
            .unwrap()
            .into_iter()
            .map(ListedContainer::into_observed)
            .collect()
    }

    fn port(private: u16, public: Option<u16>, protocol: &str) -> ListedPort {
        ListedPort {
            private_port: private,
            public_port: public,
            protocol: Some(protocol.to_owned()),
        }
    }

    #[test]
    fn only_the_running_state_counts_as_running() {
        assert!(is_running("running"));
        for state in [
            "created",
            "configured",
            "stopped",
            "stopping",
            "exited",
            "paused",
            "unknown",
            "",
            "Running",
        ] {
            assert!(!is_running(state), "{state}");
        }
    }

    #[test]
    fn a_list_with_a_state_bollard_cannot_parse_is_read_as_not_running() {
        let observed = listed(
            r#"[{"Id":"abc","Names":["/web-prod-blue"],"Image":"localhost/app:v1",
                 "Labels":{"codeb.project":"web"},"State":"stopped","Status":"Exited",
                 "Ports":[{"IP":"127.0.0.1","PrivatePort":8080,"PublicPort":18080,"Type":"tcp"}]},
                {"Id":"def","Names":["/web-prod-green"],"Image":"localhost/app:v2",
                 "Labels":{"codeb.project":"web"},"State":"running","Ports":[]}]"#,
        );
        assert_eq!(observed[0].name, "web-prod-blue");
        assert_eq!(observed[0].state, "stopped");
        assert!(!observed[0].running);
        assert_eq!(observed[0].host_port, Some(18080));
        assert_eq!(
            observed[0].labels.get("codeb.project").map(String::as_str),
            Some("web")
        );
        assert!(observed[1].running);
        assert_eq!(observed[1].host_port, None);
    }

    #[test]
    fn the_address_on_the_network_comes_from_the_list_and_an_empty_one_is_none() {
        let observed = listed(
            r#"[{"Id":"a","State":"running","NetworkSettings":{"Networks":{"codeb-main":
                  {"Gateway":"10.89.144.1","IPAddress":"10.89.144.3","IPPrefixLen":24}}}},
                {"Id":"b","State":"exited","NetworkSettings":{"Networks":{"codeb-main":
                  {"IPAddress":""}}}},
                {"Id":"c","State":"running","NetworkSettings":null}]"#,
        );
        assert_eq!(
            observed[0].ip,
            Some(std::net::Ipv4Addr::new(10, 89, 144, 3))
        );
        assert_eq!(observed[1].ip, None);
        assert_eq!(observed[2].ip, None);
    }

    #[test]
    fn null_fields_in_the_list_are_read_as_empty() {
        let observed =
            listed(r#"[{"Id":"abc","Names":null,"Labels":null,"Ports":null,"State":null}]"#);
        assert_eq!(observed[0].name, "");
        assert!(observed[0].labels.is_empty());
        assert_eq!(observed[0].host_port, None);
        assert!(!observed[0].running);
    }

    #[test]
    fn the_published_port_is_the_tcp_host_port() {
        assert_eq!(
            published_port(&[port(8080, Some(18080), "tcp")]),
            Some(18080)
        );
        assert_eq!(
            published_port(&[port(53, Some(1053), "udp"), port(8080, Some(18080), "tcp")]),
            Some(18080)
        );
        assert_eq!(published_port(&[port(8080, None, "tcp")]), None);
        assert_eq!(published_port(&[port(8080, Some(0), "tcp")]), None);
        assert_eq!(published_port(&[]), None);
    }

    #[test]
    fn with_several_published_ports_the_lowest_container_port_wins() {
        let ports = [
            port(9090, Some(19090), "tcp"),
            port(8080, Some(18080), "tcp"),
        ];
        assert_eq!(published_port(&ports), Some(18080));
    }

    #[test]
    fn endpoints_are_unix_sockets_or_tcp_addresses() {
        assert_eq!(
            parse_endpoint("unix:///run/podman.sock").unwrap(),
            Target::Unix("/run/podman.sock".into())
        );
        assert_eq!(
            parse_endpoint("tcp://127.0.0.1:8888").unwrap(),
            Target::Tcp("127.0.0.1:8888".into())
        );
        for bad in [
            "/run/podman.sock",
            "unix://relative.sock",
            "unix://",
            "tcp://host",
            "tcp://:80",
            "http://h:1",
            "",
        ] {
            let err = parse_endpoint(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidEndpoint { .. }), "{bad}: {err}");
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn a_missing_socket_is_unreachable_and_says_how_to_start_the_service() {
        let err = from_bollard(
            "unix:///nope.sock",
            "ping",
            BollardError::SocketNotFoundError("/nope.sock".into()),
        );
        assert!(matches!(err, Error::Unreachable { .. }));
        assert!(err.is_retryable());
        let text = err.to_string();
        assert!(text.contains("unix:///nope.sock"), "{text}");
        assert!(
            text.contains("podman system service --time=0 unix:///nope.sock"),
            "{text}"
        );
        assert!(text.contains("deploy/stack.sh up"), "{text}");
    }

    #[test]
    fn a_refused_connection_is_unreachable() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let err = from_bollard(
            "tcp://127.0.0.1:1",
            "ping",
            BollardError::IOError { err: io },
        );
        assert!(matches!(err, Error::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains("(connection refused)"), "{err}");
        assert!(err.is_retryable());
    }

    #[test]
    fn a_timeout_is_retryable() {
        let err = from_bollard(
            "unix:///p.sock",
            "start container x",
            BollardError::RequestTimeoutError,
        );
        assert!(matches!(err, Error::Timeout { .. }));
        assert!(err.is_retryable());
        assert!(err.to_string().contains("30 s"), "{err}");
    }

    #[test]
    fn not_found_and_client_errors_are_not_retryable() {
        let server = |status_code: u16, message: &str| BollardError::DockerResponseServerError {
            status_code,
            message: message.to_owned(),
        };
        let err = from_bollard("e", "start container x", server(404, "no such container"));
        assert!(matches!(err, Error::NotFound { .. }));
        assert!(!err.is_retryable());
        assert!(
            !from_bollard("e", "create container x", server(400, "bad parameter")).is_retryable()
        );
    }

    #[test]
    fn podman_conflicts_answered_with_500_are_not_retryable_but_other_500s_are() {
        let server = |message: &str| BollardError::DockerResponseServerError {
            status_code: 500,
            message: message.to_owned(),
        };
        let in_use = from_bollard(
            "e",
            "create container x",
            server("the container name \"x\" is already in use by 12ab"),
        );
        assert!(!in_use.is_retryable());
        let exists = from_bollard(
            "e",
            "create network n",
            server("network name n already used: network already exists"),
        );
        assert!(!exists.is_retryable());
        let runtime = from_bollard(
            "e",
            "start container x",
            server("OCI runtime error: runc: container_linux.go"),
        );
        assert!(runtime.is_retryable());
    }

    #[test]
    fn a_pull_failure_and_an_undecodable_answer_are_retryable() {
        assert!(Error::Pull {
            image: "i".into(),
            message: "registry down".into()
        }
        .is_retryable());
        let decode = from_bollard(
            "e",
            "inspect container x",
            BollardError::JsonDataError {
                message: "unknown variant `stopped`".into(),
                column: 3,
            },
        );
        assert!(matches!(decode, Error::Decode { .. }));
        assert!(decode.is_retryable());
    }

    #[test]
    fn podman_error_bodies_yield_their_message() {
        let body = concat!(
            r#"{"cause":"no such container","#,
            r#""message":"no container with name or ID \"x\" found: no such container","#,
            r#""response":404}"#
        )
        .as_bytes();
        assert_eq!(
            server_message(body),
            r#"no container with name or ID "x" found: no such container"#
        );
        assert_eq!(server_message(b"plain text\n"), "plain text");
        assert!(matches!(
            from_status("list containers", 404, String::new()),
            Error::NotFound { .. }
        ));
        assert!(matches!(
            from_status("list containers", 500, String::new()),
            Error::Api {
                status: Some(500),
                ..
            }
        ));
    }

    #[test]
    fn log_frames_become_lines_per_stream() {
        use bollard::container::LogOutput;
        let out = |s: &str| LogOutput::StdOut {
            message: s.as_bytes().to_vec().into(),
        };
        let err = |s: &str| LogOutput::StdErr {
            message: s.as_bytes().to_vec().into(),
        };
        let mut assembler = LineAssembler::default();
        assembler.push(out("one\n"));
        assembler.push(out("two part"));
        assembler.push(err("warning\r\n"));
        assembler.push(out("s\nthree\n"));
        assembler.push(err("no newline at end"));
        assert_eq!(
            assembler.finish(),
            vec!["one", "warning", "two parts", "three", "no newline at end"]
        );
    }

    #[test]
    fn the_label_filter_is_percent_encoded() {
        assert_eq!(
            percent_encode(r#"{"label":["codeb.project"]}"#),
            "%7B%22label%22%3A%5B%22codeb.project%22%5D%7D"
        );
    }

    #[test]
    fn the_create_body_publishes_the_port_with_an_init_a_restart_policy_and_the_confinement() {
        let spec = ContainerSpec {
            name: "web-prod-blue".into(),
            image: "localhost/app:v1".into(),
            command: None,
            env: crate::model::vars::EnvValues(BTreeMap::from([("A".into(), "1".into())])),
            env_source: Default::default(),
            labels: BTreeMap::from([(LABEL_PROJECT.into(), "web".into())]),
            container_port: 8080,
            host_ip: "127.0.0.1".into(),
            host_port: 18080,
            publish: true,
            network: "codeb-main".into(),
            mac: Some("0a:cb:01:02:03:04".into()),
            confinement: Default::default(),
            stop_timeout_secs: 10,
        };
        let unpublished = ContainerSpec {
            publish: false,
            ..spec.clone()
        };
        let body = serde_json::to_value(create_body(&unpublished)).unwrap();
        assert!(body["HostConfig"].get("PortBindings").is_none(), "{body}");
        let body = serde_json::to_value(create_body(&spec)).unwrap();
        assert_eq!(body["ExposedPorts"], serde_json::json!({"8080/tcp": {}}));
        assert_eq!(body["Env"], serde_json::json!(["A=1"]));
        assert_eq!(
            body["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostPort"],
            "18080"
        );
        assert_eq!(
            body["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostIp"],
            "127.0.0.1"
        );
        assert_eq!(body["HostConfig"]["Init"], true);
        assert_eq!(body["StopTimeout"], 10, "SIGTERM, then 10 s before SIGKILL");
        assert_eq!(
            body["HostConfig"]["RestartPolicy"]["Name"],
            "unless-stopped"
        );
        assert_eq!(body["HostConfig"]["NetworkMode"], "codeb-main");
        assert_eq!(body["HostConfig"]["Memory"], 1_i64 << 30);
        assert_eq!(body["HostConfig"]["MemorySwap"], 1_i64 << 30);
        assert_eq!(body["HostConfig"]["NanoCpus"], 1_000_000_000_i64);
        assert_eq!(body["HostConfig"]["PidsLimit"], 512);
        assert_eq!(body["HostConfig"]["CapDrop"], serde_json::json!(["ALL"]));
        let kept = body["HostConfig"]["CapAdd"].as_array().unwrap();
        assert!(kept.contains(&"NET_BIND_SERVICE".into()), "{kept:?}");
        assert!(!kept.contains(&"NET_RAW".into()), "{kept:?}");
        assert_eq!(
            body["HostConfig"]["SecurityOpt"],
            serde_json::json!(["no-new-privileges"])
        );
        assert_eq!(body["HostConfig"]["ReadonlyRootfs"], false);
        assert!(body.get("User").is_none(), "the image's user by default");
        assert_eq!(
            body["NetworkingConfig"]["EndpointsConfig"]["codeb-main"]["MacAddress"],
            "0a:cb:01:02:03:04"
        );
        assert!(
            body.get("Cmd").is_none(),
            "the image's CMD is kept when no command is given"
        );
    }
}
