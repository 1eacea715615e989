//! The switch-time poller of `benches/switch.sh`: GETs through Caddy on a fresh connection each,
//! one after another, until the hostname answers the wanted version.
//!
//! Usage: `switch_poller HTTP_ADDR HOSTNAME WANT TIMEOUT_US`
//!
//! Prints `SENT ANSWERED ERRORS`: when the first request that got `WANT` was sent and when its
//! answer came (µs of the realtime clock, as bash's `$EPOCHREALTIME`), and how many fresh
//! connections failed or got no version meanwhile; `timeout timeout ERRORS` when `WANT` did not
//! come within `TIMEOUT_US`. The poll before the first `WANT` still got the old slot, so the switch
//! happened between the two requests' dials: the sending time is within one poll (one round trip
//! through Caddy) of it. A compiled poller, not bash's `/dev/tcp`: bash reads a socket a byte a
//! syscall, and on two cores that work slowed the switch it timed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// The last line of one answer's body, or `None` on a connection error.
fn get(addr: &str, host: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = Vec::with_capacity(512);
    s.read_to_end(&mut answer).ok()?;
    let text = String::from_utf8_lossy(&answer);
    text.lines()
        .rev()
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, host, want, timeout_us] = args.as_slice() else {
        eprintln!("usage: switch_poller HTTP_ADDR HOSTNAME WANT TIMEOUT_US");
        std::process::exit(2);
    };
    let Ok(timeout_us) = timeout_us.parse::<u128>() else {
        eprintln!("switch_poller: TIMEOUT_US must be a number of microseconds");
        std::process::exit(2);
    };
    let deadline = now_us() + timeout_us;
    let mut errors = 0u64;
    while now_us() < deadline {
        let sent = now_us();
        match get(addr, host) {
            Some(body) if body == *want => {
                println!("{sent} {} {errors}", now_us());
                return;
            }
            Some(body) if body.starts_with('v') => {}
            _ => errors += 1,
        }
    }
    println!("timeout timeout {errors}");
}
