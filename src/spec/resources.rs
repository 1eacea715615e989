//! What a Host's `containers` and an environment's `resources` mean: quantities parsed, omitted
//! fields resolved to the Host's values or codeb's defaults, capability names normalized, and
//! image references matched against a Host's allow-list.
//!
//! Validation reports what does not parse (at its origin); the model builds each release's
//! confinement from the same functions, so both read a manifest alike. No I/O.

use super::types::{ContainerPolicy, ImagePolicy, Quantity, Resources, KEPT_CAPABILITIES};

/// codeb's default memory limit: 1 GiB. A busybox httpd uses about 1 MiB, a JVM or Node app a
/// few hundred; a leak stops here instead of taking Caddy, PowerDNS and codeb with it.
pub const DEFAULT_MEMORY_BYTES: u64 = 1 << 30;
/// codeb's default CPU limit, in thousandths of a CPU: one CPU. A spinning tenant leaves the
/// rest of the host (on a 2-core machine, one core) to the others and to the host's services.
pub const DEFAULT_MILLICPUS: u32 = 1000;
/// codeb's default limit of processes and threads: 512. A web app holds tens (a Go or JVM app
/// some tens of threads, a pre-forking server a few per worker); a fork bomb stops here.
pub const DEFAULT_PIDS: u32 = 512;
/// Podman refuses a memory limit under 6 MiB.
pub const MIN_MEMORY_BYTES: u64 = 6 << 20;
/// The kernel's `pid_max` limit on 64-bit machines.
pub const MAX_PIDS: u32 = 4_194_304;

/// Every Linux capability (as of 6.x), without `CAP_`.
pub const CAPABILITIES: [&str; 41] = [
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

/// Resolved resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    /// Thousandths of a CPU.
    pub millicpus: u32,
    pub pids: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            millicpus: DEFAULT_MILLICPUS,
            pids: DEFAULT_PIDS,
        }
    }
}

impl Limits {
    /// Each field `r` sets (and that parses), else this one's.
    fn overlaid(self, r: &Resources) -> Limits {
        Limits {
            memory_bytes: r
                .memory
                .as_ref()
                .and_then(|q| parse_memory(&q.0).ok())
                .unwrap_or(self.memory_bytes),
            millicpus: r
                .cpus
                .as_ref()
                .and_then(|q| parse_cpus(&q.0).ok())
                .unwrap_or(self.millicpus),
            pids: r.pids.unwrap_or(self.pids),
        }
    }
}

impl ContainerPolicy {
    /// What an environment gets for each field its `resources` leave out.
    pub fn default_limits(&self) -> Limits {
        Limits::default().overlaid(&self.resources)
    }

    /// The most an environment may ask for.
    pub fn max_limits(&self) -> Limits {
        self.default_limits().overlaid(&self.max_resources)
    }

    /// The limits of an environment asking for `resources` (validation checks them against
    /// [`max_limits`](Self::max_limits)).
    pub fn limits(&self, resources: &Resources) -> Limits {
        self.default_limits().overlaid(resources)
    }

    /// The capabilities kept, normalized (see [`capability`]) and sorted: the defaults plus
    /// `add`, minus `drop` (`ALL` drops every default).
    pub fn kept_capabilities(&self) -> Vec<String> {
        let drop: Vec<String> = self
            .capabilities
            .drop
            .iter()
            .filter_map(|c| capability(c))
            .collect();
        let drop_all = self
            .capabilities
            .drop
            .iter()
            .any(|c| c.eq_ignore_ascii_case("ALL"));
        let mut kept: Vec<String> = KEPT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !drop_all && !drop.contains(c))
            .chain(self.capabilities.add.iter().filter_map(|c| capability(c)))
            .collect();
        kept.sort();
        kept.dedup();
        kept
    }
}

/// A capability name as Podman takes it: upper case, without `CAP_`. `None` when it is none.
pub fn capability(name: &str) -> Option<String> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPABILITIES.contains(&bare).then(|| bare.to_string())
}

/// Bytes from `512Mi`, `1Gi`, `1048576`: an integer with an optional binary suffix (`Ki`, `Mi`,
/// `Gi`, `Ti`). Decimal suffixes are refused: `512M` means MiB to Podman and 10^6 bytes to
/// Kubernetes.
///
/// # Errors
/// What is expected, for the message.
pub fn parse_memory(text: &str) -> Result<u64, &'static str> {
    const EXPECTED: &str = "expected bytes or a whole number with a binary suffix, e.g. `512Mi`, \
                            `1Gi` (`Ki`, `Mi`, `Gi`, `Ti`)";
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let shift = match suffix {
        "" => 0,
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        "Ti" => 40,
        _ => return Err(EXPECTED),
    };
    let n: u64 = digits.parse().map_err(|_| EXPECTED)?;
    n.checked_mul(1 << shift)
        .filter(|b| *b <= i64::MAX as u64)
        .ok_or("expected at most `8388607Ti`")
}

/// Thousandths of a CPU from `0.5`, `1`, `2.25`: at most two decimals (Podman's granularity).
///
/// # Errors
/// What is expected, for the message.
pub fn parse_cpus(text: &str) -> Result<u32, &'static str> {
    const EXPECTED: &str = "expected a number of CPUs with at most two decimals, e.g. `0.5`, `1`";
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(frac) || frac.len() > 2 || whole.len() > 6 {
        return Err(EXPECTED);
    }
    let whole: u32 = whole.parse().map_err(|_| EXPECTED)?;
    let frac: u32 = format!("{frac:0<2}").parse().map_err(|_| EXPECTED)?;
    Ok(whole * 1000 + frac * 10)
}

/// Memory as a person writes it: `1Gi`, `512Mi`, or bytes.
pub fn show_memory(bytes: u64) -> String {
    for (shift, suffix) in [(40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// CPUs as a person writes them: `1`, `0.5`.
pub fn show_cpus(millicpus: u32) -> String {
    let text = format!("{}.{:03}", millicpus / 1000, millicpus % 1000);
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

impl ImagePolicy {
    /// Whether the Host runs `image`: any image when the list is empty; else a reference with
    /// its registry (see [`has_registry`]) starting with an allowed prefix.
    pub fn allows(&self, image: &str) -> bool {
        self.allow.is_empty()
            || (has_registry(image) && self.allow.iter().any(|p| image.starts_with(p.as_str())))
    }
}

/// Whether a reference names its registry: its first component has a `.` or `:`, or is
/// `localhost` (Docker's rule). `nginx` or `acme/app` are short names that Podman resolves
/// through its search registries, or to a local image of any name, so no prefix can vouch
/// for them.
pub fn has_registry(image: &str) -> bool {
    image.split_once('/').is_some_and(|(first, _)| {
        first == "localhost" || first.contains('.') || first.contains(':')
    })
}

impl Quantity {
    pub fn new(text: impl Into<String>) -> Self {
        Quantity(text.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::types::Capabilities;

    #[test]
    fn memory_takes_bytes_or_binary_suffixes_only() {
        assert_eq!(parse_memory("512Mi"), Ok(512 << 20));
        assert_eq!(parse_memory("1Gi"), Ok(1 << 30));
        assert_eq!(parse_memory("4096"), Ok(4096));
        assert!(
            parse_memory("512M").is_err(),
            "MiB to Podman, 10^6 to Kubernetes"
        );
        assert!(parse_memory("1.5Gi").is_err());
        assert!(parse_memory("-1").is_err());
        assert!(parse_memory("Gi").is_err());
        assert!(parse_memory("99999999999Ti").is_err());
        assert_eq!(show_memory(512 << 20), "512Mi");
        assert_eq!(show_memory(1 << 30), "1Gi");
        assert_eq!(show_memory(1000), "1000");
    }

    #[test]
    fn cpus_have_at_most_two_decimals() {
        assert_eq!(parse_cpus("1"), Ok(1000));
        assert_eq!(parse_cpus("0.5"), Ok(500));
        assert_eq!(parse_cpus("2.25"), Ok(2250));
        assert_eq!(parse_cpus("1.0"), Ok(1000));
        assert!(parse_cpus("0.125").is_err());
        assert!(parse_cpus(".5").is_err());
        assert!(parse_cpus("1e3").is_err());
        assert!(parse_cpus("-1").is_err());
        assert_eq!(show_cpus(500), "0.5");
        assert_eq!(show_cpus(1000), "1");
        assert_eq!(show_cpus(2250), "2.25");
    }

    #[test]
    fn omitted_limits_fall_back_to_the_host_then_to_codebs_defaults() {
        let mut policy = ContainerPolicy::default();
        assert_eq!(policy.default_limits(), Limits::default());
        assert_eq!(policy.max_limits(), Limits::default());
        policy.resources.memory = Some(Quantity::new("512Mi"));
        policy.max_resources.pids = Some(1024);
        let asked = Resources {
            cpus: Some(Quantity::new("0.5")),
            ..Resources::default()
        };
        assert_eq!(
            policy.limits(&asked),
            Limits {
                memory_bytes: 512 << 20,
                millicpus: 500,
                pids: DEFAULT_PIDS
            }
        );
        assert_eq!(policy.max_limits().memory_bytes, 512 << 20);
        assert_eq!(policy.max_limits().pids, 1024);
    }

    #[test]
    fn the_kept_capabilities_are_the_defaults_plus_add_minus_drop_and_never_net_raw_by_default() {
        let mut policy = ContainerPolicy::default();
        let kept = policy.kept_capabilities();
        assert!(!kept.contains(&"NET_RAW".to_string()));
        assert_eq!(kept.len(), KEPT_CAPABILITIES.len());
        policy.capabilities = Capabilities {
            add: vec!["cap_net_raw".into()],
            drop: vec!["CHOWN".into()],
        };
        let kept = policy.kept_capabilities();
        assert!(kept.contains(&"NET_RAW".to_string()));
        assert!(!kept.contains(&"CHOWN".to_string()));
        policy.capabilities.drop = vec!["ALL".into()];
        assert_eq!(policy.kept_capabilities(), vec!["NET_RAW".to_string()]);
    }

    #[test]
    fn an_allow_list_needs_the_registry_written_and_a_matching_prefix() {
        let policy = ImagePolicy {
            allow: vec!["ghcr.io/acme/".into(), "localhost/codeb-test-".into()],
        };
        assert!(policy.allows("ghcr.io/acme/app:1"));
        assert!(policy.allows("localhost/codeb-test-app:v1"));
        assert!(!policy.allows("ghcr.io/acme-evil/app:1"));
        assert!(!policy.allows("localhost/other-tenant:v1"));
        assert!(
            !policy.allows("codeb-test-app:v1"),
            "a short name may resolve anywhere"
        );
        assert!(ImagePolicy::default().allows("nginx"));
        assert!(has_registry("registry:5000/app"));
        assert!(!has_registry("acme/app"));
    }
}
