//! The regular expressions of the JSON Schemas in `crds-schema/`: each is the schema's form of
//! a check in `validate` (or `resources`), so that an editor refuses what codeb refuses.
//!
//! They are ECMA-262 regular expressions (what JSON Schema and editors speak), anchored, without
//! flags; a few use a lookahead. `tests/spec_schema_agrees.rs` proves each against codeb on the
//! examples, the invalid manifests and a table of one-change mutations. Building them is pure:
//! no I/O, and nothing here decides what codeb accepts (`validate` does).

use super::resources::CAPABILITIES;

/// A DNS-1123 label that starts with a letter: `metadata.name` of a Host or a Project and
/// environment names (`validate::is_dns_label`).
pub const DNS_LABEL: &str = "^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$";
/// A label key of `metadata.labels` (and of a Project's `spec.hostSelector`), as Kubernetes
/// spells them: an optional DNS-subdomain prefix and `/`, then a name of at most 63 letters,
/// digits, `-`, `_` and `.`, starting and ending with a letter or digit (`role`,
/// `codeb.kr/zone`).
pub const LABEL_KEY: &str = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
/// A label value: empty, or at most 63 letters, digits, `-`, `_` and `.`, starting and ending
/// with a letter or digit.
pub const LABEL_VALUE: &str = "^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$";

/// One label of a lowercase DNS name (`validate::is_dns_name`): it may start with a digit.
const NAME_LABEL: &str = "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?";

/// The same, in any case (hosts in URLs are lowercased before they are checked).
const ANY_CASE_LABEL: &str = "[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?";

/// An environment variable's name: `env` keys, `passwordEnv`, `apiKeyEnv`.
pub const ENV_NAME: &str = "^[A-Za-z_][A-Za-z0-9_]*$";

/// A PowerDNS server id.
pub const SERVER_ID: &str = "^[A-Za-z0-9._-]{1,255}$";

/// An image reference: not empty, no whitespace.
pub const IMAGE: &str = "^\\S+$";

/// A health check path: starts with `/`, no whitespace.
pub const HEALTH_PATH: &str = "^/\\S*$";

/// `spec.ssh.target` of a Host: `[user@]host`, letters, digits, `.`, `-` and `_` (nothing a
/// shell or ssh could read as an option: it does not start with `-`).
pub const SSH_TARGET: &str =
    "^([A-Za-z0-9_][A-Za-z0-9._-]{0,31}@)?[A-Za-z0-9][A-Za-z0-9.-]{0,252}$";

/// `spec.ssh.identityFile` and `knownHosts`: an absolute path of letters, digits, `.`, `_`, `-`
/// and `/`.
pub const SSH_PATH: &str = "^/[A-Za-z0-9._/-]{0,4095}$";

/// `spec.ssh.agent`: `codeb` or an absolute path of letters, digits, `.`, `_`, `-` and `/` (it
/// becomes part of the command line sshd hands the remote shell).
pub const SSH_AGENT: &str = "^(codeb|/[A-Za-z0-9._/-]{0,4095})$";

/// A backup directory: absolute, without NUL or newline.
pub const BACKUP_DIR: &str = "^/[^\\u0000\\n]*$";

/// Characters a URL may not hold: whitespace and control characters.
const URL_CHAR: &str = "[^\\s\\u0000-\\u001f\\u007f-\\u009f]";

/// A lowercase DNS name (a Zone's name, an environment's `hostname`); the length is a
/// `maxLength` beside it.
pub fn dns_name() -> String {
    format!("^{NAME_LABEL}(\\.{NAME_LABEL})*$")
}

/// A hostname a Zone grants outside itself: a DNS name, or `*.` and one.
pub fn hostname_grant() -> String {
    format!("^(\\*\\.)?{NAME_LABEL}(\\.{NAME_LABEL})*$")
}

/// A project a Host admits: a project name ([`DNS_LABEL`]), or a prefix of one and `*`.
pub fn project_grant() -> String {
    "^([a-z]([-a-z0-9]{0,61}[a-z0-9])?|[a-z][-a-z0-9]{0,62}\\*)$".to_string()
}

/// A duration as humantime reads it (`1h`, `90s`, `1h 30m`, `1.5h`): numbers, each followed by
/// a unit. Its bounds are codeb's alone (see the field's description).
pub fn duration() -> String {
    let units = [
        "nanos", "nsec", "ns", "usec", "us", "µs", "millis", "msec", "ms", "seconds", "second",
        "secs", "sec", "s", "minutes", "minute", "mins", "min", "m", "hours", "hour", "hrs", "hr",
        "h", "days", "day", "d", "weeks", "week", "wks", "wk", "w", "months", "month", "M",
        "years", "year", "yrs", "yr", "y",
    ]
    .join("|");
    // Whitespace may stand anywhere between digits and before a unit (humantime skips it).
    format!("^\\s*([0-9][0-9\\s]*(\\.[0-9\\s]*[0-9][0-9\\s]*)?({units})\\s*)+$")
}

/// A port, as Rust's `u16` parse reads it, from 1 to 65535 (unanchored).
pub const PORT: &str =
    "\\+?0*([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])";

/// An IPv4 address as Rust reads it (no leading zeros).
const IPV4: &str =
    "((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";

/// An IPv6 address as Rust reads it: eight groups, or fewer around one `::`, the last two
/// possibly an IPv4 address.
fn ipv6() -> String {
    let h = "[0-9A-Fa-f]{1,4}";
    let mut forms = vec![format!("({h}:){{7}}{h}"), format!("({h}:){{6}}{IPV4}")];
    // `::` stands for at least one group: `left` groups before it, at most 7 - left after.
    for left in 0..=7usize {
        let before = match left {
            0 => "::".to_string(),
            n => format!("({h}:){{{}}}{h}::", n - 1),
        };
        let after = match 7 - left {
            0 => String::new(),
            n => format!("({h}(:{h}){{0,{}}})?", n - 1),
        };
        forms.push(format!("{before}{after}"));
        if left <= 5 {
            forms.push(format!("{before}({h}:){{0,{}}}{IPV4}", 5 - left));
        }
    }
    format!("({})", forms.join("|"))
}

/// An IPv4 or IPv6 address (`address`, `publishAddress`).
pub fn ip_address() -> String {
    format!("^({IPV4}|{})$", ipv6())
}

/// A host: an IP address (IPv6 possibly in brackets) or a DNS name in any case.
fn host() -> String {
    let v6 = ipv6();
    format!("({IPV4}|{v6}|\\[{v6}\\]|{ANY_CASE_LABEL}(\\.{ANY_CASE_LABEL})*)")
}

/// `host:port` (`appHost`).
pub fn host_port() -> String {
    format!("^{}:{PORT}$", host())
}

/// `host:port` or `:port` (Caddy's `listen`).
pub fn listen_address() -> String {
    format!("^({})?:{PORT}$", host())
}

/// `unix:///absolute/path` or `tcp://host:port` (`podman`).
pub fn podman_endpoint() -> String {
    format!("^(unix:///\\S+|tcp://{}:{PORT})$", host())
}

/// An `http://` URL with a host (`caddy.admin`); `base` allows no path but `/` (PowerDNS `api`).
pub fn http_url(base: bool) -> String {
    let path = if base { "/?" } else { "(/\\S*)?" };
    format!("^http://{}(:{PORT})?{path}$", host())
}

/// The admin URL of a data server: `scheme://[user@]host:port[/...]`, no password, no spaces.
pub fn data_url(scheme: &str) -> String {
    format!(
        "^{scheme}://([^:/?\\s\\u0000-\\u001f\\u007f-\\u009f]+@)?{}:{PORT}([/?]{URL_CHAR}*)?$",
        host()
    )
}

/// An allowed image prefix: a registry (`localhost`, or a first component with `.` or `:`), a
/// `/`, no whitespace or control character.
pub fn image_prefix() -> String {
    format!("^(localhost|[^/\\s\\u0000-\\u001f\\u007f-\\u009f]*[.:][^/\\s\\u0000-\\u001f\\u007f-\\u009f]*)/{URL_CHAR}*$")
}

/// `uid`, `uid:gid` or a user name (and group).
pub fn user() -> String {
    let part = "([0-9]{1,32}|[a-z_][-a-z0-9_]{0,31})";
    format!("^{part}(:{part})?$")
}

/// A Linux capability in any case, `CAP_` optional; with `all`, `ALL` too (for `drop`).
pub fn capability(all: bool) -> String {
    let any_case = |name: &str| -> String {
        name.chars()
            .map(|c| match c {
                'A'..='Z' => format!("[{c}{}]", c.to_ascii_lowercase()),
                c => c.to_string(),
            })
            .collect()
    };
    let names: Vec<String> = CAPABILITIES.iter().map(|c| any_case(c)).collect();
    let listed = format!("({})?({})", any_case("CAP_"), names.join("|"));
    match all {
        true => format!("^({listed}|{})$", any_case("ALL")),
        false => format!("^{listed}$"),
    }
}

/// Memory as written as a string: bytes or a whole number with a binary suffix, at least
/// `6Mi` (6291456 bytes).
pub fn memory() -> String {
    let bytes = "([1-9][0-9]{7,}|[7-9][0-9]{6}|6[3-9][0-9]{5}|62[3-9][0-9]{4}|629[2-9][0-9]{3}|\
                 6291[5-9][0-9]{2}|62914[5-9][0-9]|629145[6-9])";
    let kib = "([1-9][0-9]{4,}|[7-9][0-9]{3}|6[2-9][0-9]{2}|61[5-9][0-9]|614[4-9])Ki";
    let mib = "([1-9][0-9]+|[6-9])Mi";
    let big = "[1-9][0-9]*(Gi|Ti)";
    format!("^0*({bytes}|{kib}|{mib}|{big})$")
}

/// CPUs as written as a string: at most six digits, at most two decimals, more than zero.
pub const CPUS: &str = "^(?!0*\\.?0*$)[0-9]{1,6}(\\.[0-9]{0,2})?$";
