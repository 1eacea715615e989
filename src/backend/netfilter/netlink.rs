//! The netlink socket to nf_tables: one dump or one transaction per call, answered in-process.
//!
//! Responsible for sending what [`super::wire`] encodes and collecting the kernel's answers: the
//! messages of a dump until its end, or one acknowledgement per op of a transaction (the kernel
//! commits a batch whole or not at all). Calls block for well under a millisecond; the adapter runs
//! them on a blocking thread. Every request has sequence numbers of its own, and answers to others
//! are skipped; the adapter closes a socket whose call failed.

use std::io::{self, Read};
use std::time::Duration;

use super::wire::{self, ChainDef, ListedRule, Op, Reply, Writer, NLMSG_DONE, NLMSG_ERROR};

/// `AF_NETLINK`, `NETLINK_NETFILTER`.
const AF_NETLINK: i32 = 16;
const NETLINK_NETFILTER: i32 = 12;
/// The kernel answers in microseconds; a receive that waits this long means it never will.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The kernel never puts more than 32 KiB in one dump datagram.
const BUFFER: usize = 64 * 1024;

/// A raw netlink socket of `protocol` (the kernel binds it on the first send).
fn raw(protocol: i32) -> io::Result<socket2::Socket> {
    socket2::Socket::new(
        socket2::Domain::from(AF_NETLINK),
        socket2::Type::RAW,
        Some(socket2::Protocol::from(protocol)),
    )
}

/// A netlink socket to nfnetlink.
#[derive(Debug)]
pub struct Socket {
    inner: socket2::Socket,
    seq: u32,
}

/// What the kernel refused, and at which op of a transaction.
#[derive(Debug)]
pub struct Refused {
    /// The index of the op the kernel refused, when it was one of a transaction's.
    pub op: Option<usize>,
    pub error: io::Error,
}

impl From<io::Error> for Refused {
    fn from(error: io::Error) -> Self {
        Refused { op: None, error }
    }
}

impl Socket {
    /// Opens a socket (the kernel binds it on the first send).
    pub fn open() -> io::Result<Socket> {
        let inner = raw(NETLINK_NETFILTER)?;
        inner.set_read_timeout(Some(RECEIVE_TIMEOUT))?;
        Ok(Socket { inner, seq: 1 })
    }

    fn next_seq(&mut self, n: u32) -> u32 {
        let s = self.seq;
        self.seq += n;
        s
    }

    fn send(&self, buf: &[u8]) -> io::Result<()> {
        let sent = self.inner.send(buf)?;
        if sent != buf.len() {
            return Err(io::Error::other(format!(
                "netlink took {sent} of {} bytes",
                buf.len()
            )));
        }
        Ok(())
    }

    /// Receives one datagram and hands its messages to `each` until it returns `false`.
    fn receive(&self, buf: &mut [u8], mut each: impl FnMut(&Reply) -> bool) -> io::Result<bool> {
        let n = loop {
            match (&self.inner).read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        for reply in wire::replies(&buf[..n]) {
            if !each(&reply) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Runs a dump and returns what `parse` keeps of its messages.
    fn dump<T>(
        &mut self,
        request: impl FnOnce(&mut Writer, u32),
        mut parse: impl FnMut(&Reply) -> Option<T>,
    ) -> io::Result<Vec<T>> {
        let seq = self.next_seq(1);
        let mut w = Writer::default();
        request(&mut w, seq);
        self.send(&w.buf)?;
        let mut buf = vec![0u8; BUFFER];
        let mut out = Vec::new();
        let mut result = Ok(());
        while self.receive(&mut buf, |r| {
            if r.seq != seq {
                return true;
            }
            match r.kind {
                NLMSG_DONE => false,
                NLMSG_ERROR => {
                    let code = wire::error_code(r.body);
                    if code != 0 {
                        result = Err(io::Error::from_raw_os_error(code));
                    }
                    false
                }
                _ => {
                    out.extend(parse(r));
                    true
                }
            }
        })? {}
        result.map(|()| out)
    }

    /// Every chain of `table` in the `ip` family.
    pub fn chains(&mut self, table: &str) -> io::Result<Vec<ChainDef>> {
        self.chains_in(wire::FAMILY_IPV4, table)
    }

    /// Every chain of `table` in `family`.
    pub fn chains_in(&mut self, family: u8, table: &str) -> io::Result<Vec<ChainDef>> {
        self.dump(
            |w, seq| w.dump_chains(seq, family),
            |r| {
                (wire::is_chain(r.kind) && wire::table_of(r.body).as_deref() == Some(table))
                    .then(|| wire::chain(r.body))
                    .flatten()
            },
        )
    }

    /// Every rule of `table` in the `ip` family, in each chain's order.
    pub fn rules(&mut self, table: &str) -> io::Result<Vec<ListedRule>> {
        self.rules_in(wire::FAMILY_IPV4, table)
    }

    /// Every rule of `table` in `family`, in each chain's order.
    pub fn rules_in(&mut self, family: u8, table: &str) -> io::Result<Vec<ListedRule>> {
        self.dump(
            |w, seq| w.dump_rules(seq, family, table),
            |r| wire::is_rule(r.kind).then(|| wire::rule(r.body)).flatten(),
        )
    }

    /// Commits `ops` on `table` as one transaction: all of them, or (on the first refusal) none.
    ///
    /// # Errors
    /// The op the kernel refused first, with its errno.
    pub fn transact(&mut self, family: u8, table: &str, ops: &[Op]) -> Result<(), Refused> {
        if ops.is_empty() {
            return Ok(());
        }
        let first = self.next_seq(ops.len() as u32 + 2);
        let mut w = Writer::default();
        let acked = w.batch(first, family, table, ops);
        self.send(&w.buf)?;
        let mut waiting = acked.len();
        let mut refused = None;
        let mut buf = vec![0u8; BUFFER];
        while waiting > 0 && refused.is_none() {
            self.receive(&mut buf, |r| {
                let Some(index) = acked.iter().position(|s| *s == r.seq) else {
                    return true;
                };
                if r.kind == NLMSG_ERROR {
                    let code = wire::error_code(r.body);
                    if code != 0 {
                        refused = Some(Refused {
                            op: Some(index),
                            error: io::Error::from_raw_os_error(code),
                        });
                        return false;
                    }
                    waiting -= 1;
                }
                true
            })?;
        }
        refused.map_or(Ok(()), Err)
    }
}

/// `NFNLGRP_NFTABLES`: the multicast group nf_tables announces every ruleset change in;
/// `SOL_NETLINK`, `NETLINK_ADD_MEMBERSHIP`.
const NFNLGRP_NFTABLES: u32 = 7;
const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
/// How long [`Monitor::wait`] blocks before it returns to let its caller check for shutdown.
const MONITOR_TICK: Duration = Duration::from_secs(1);

/// A socket subscribed to nf_tables' ruleset notifications (needs `CAP_NET_ADMIN`).
#[derive(Debug)]
pub struct Monitor {
    inner: socket2::Socket,
}

impl Monitor {
    /// Opens a socket and joins `NFNLGRP_NFTABLES`.
    ///
    /// # Errors
    /// `EPERM` without `CAP_NET_ADMIN`; whatever else the kernel refuses.
    pub fn open() -> io::Result<Monitor> {
        use std::os::fd::AsRawFd;
        let inner = raw(NETLINK_NETFILTER)?;
        let fd = inner.as_raw_fd();
        // SAFETY: a zeroed sockaddr_nl is a valid one (pid 0: the kernel picks; no groups), and
        // `fd` is the socket just opened, alive for both calls.
        let bound = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = AF_NETLINK as libc::sa_family_t;
            libc::bind(
                fd,
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if bound != 0 {
            return Err(io::Error::last_os_error());
        }
        let group = NFNLGRP_NFTABLES;
        // SAFETY: `group` is a u32 that outlives the call, its size given.
        let joined = unsafe {
            libc::setsockopt(
                fd,
                SOL_NETLINK,
                NETLINK_ADD_MEMBERSHIP,
                std::ptr::addr_of!(group).cast(),
                std::mem::size_of::<u32>() as libc::socklen_t,
            )
        };
        if joined != 0 {
            return Err(io::Error::last_os_error());
        }
        inner.set_read_timeout(Some(MONITOR_TICK))?;
        Ok(Monitor { inner })
    }

    /// Waits up to a second for notifications. `Some(true)` when one changed the base chains
    /// `chains` of `table` or deleted it (see [`wire::touches`]), or when notifications were lost
    /// (the socket overran: whatever happened is unknown); `Some(false)` for others; `None` when
    /// nothing came.
    ///
    /// # Errors
    /// The socket failed.
    pub fn wait(&self, buf: &mut [u8], table: &str, chains: &[&str]) -> io::Result<Option<bool>> {
        let n = match (&self.inner).read(buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                return Ok(None)
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(Some(true)),
            Err(e) => return Err(e),
        };
        Ok(Some(
            wire::replies(&buf[..n])
                .iter()
                .any(|r| wire::touches(r.kind, r.body, table, chains)),
        ))
    }
}

/// `NETLINK_ROUTE`, `RTM_SETLINK`, `IFLA_ADDRESS`, and the flags of one acknowledged request.
const NETLINK_ROUTE: i32 = 0;
const RTM_SETLINK: u16 = 19;
const IFLA_ADDRESS: u16 = 1;
const REQUEST_ACK: u16 = 0x1 | 0x4;

/// Sets the hardware address of the interface of index `index` (an `RTM_SETLINK` with
/// `IFLA_ADDRESS`). Setting a bridge's address to the one it has pins it: the kernel marks it set
/// by user space (`addr_assign_type` 3) and no longer takes the lowest address of its ports.
///
/// # Errors
/// The kernel's refusal (`EPERM` without `CAP_NET_ADMIN`, `ENODEV` for a gone interface).
pub fn set_link_address(index: i32, mac: [u8; 6]) -> io::Result<()> {
    let inner = raw(NETLINK_ROUTE)?;
    inner.set_read_timeout(Some(RECEIVE_TIMEOUT))?;
    let msg = set_link_address_message(1, index, mac);
    let sent = inner.send(&msg)?;
    if sent != msg.len() {
        return Err(io::Error::other("netlink took part of the request"));
    }
    let mut buf = vec![0u8; 4096];
    loop {
        let n = loop {
            match (&inner).read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        for reply in wire::replies(&buf[..n]) {
            if reply.seq == 1 && reply.kind == NLMSG_ERROR {
                return match wire::error_code(reply.body) {
                    0 => Ok(()),
                    code => Err(io::Error::from_raw_os_error(code)),
                };
            }
        }
    }
}

/// The request [`set_link_address`] sends: a netlink header, an `ifinfomsg` naming the interface
/// by index, and one `IFLA_ADDRESS` attribute (padded to 4 bytes).
fn set_link_address_message(seq: u32, index: i32, mac: [u8; 6]) -> Vec<u8> {
    let attr_len: u16 = 4 + 6;
    let len: u32 = 16 + 16 + 12;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&RTM_SETLINK.to_ne_bytes());
    m.extend_from_slice(&REQUEST_ACK.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // ifinfomsg: family AF_UNSPEC, pad, type, index, flags, change.
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(&index.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&attr_len.to_ne_bytes());
    m.extend_from_slice(&IFLA_ADDRESS.to_ne_bytes());
    m.extend_from_slice(&mac);
    m.extend_from_slice(&[0, 0]);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_link_address_request_is_laid_out_as_rtnetlink_reads_it() {
        let m = set_link_address_message(7, 42, [0x02, 0xab, 0xcd, 0xef, 0x01, 0x23]);
        assert_eq!(m.len(), 44);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 44);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 19);
        assert_eq!(u16::from_ne_bytes(m[6..8].try_into().unwrap()), 0x5);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(i32::from_ne_bytes(m[20..24].try_into().unwrap()), 42);
        assert_eq!(u16::from_ne_bytes(m[32..34].try_into().unwrap()), 10);
        assert_eq!(u16::from_ne_bytes(m[34..36].try_into().unwrap()), 1);
        assert_eq!(&m[36..42], &[0x02, 0xab, 0xcd, 0xef, 0x01, 0x23]);
    }
}
