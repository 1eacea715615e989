//! nf_tables' netlink messages: encoding the few codeb sends, decoding the few it reads back.
//!
//! Responsible for bytes only: message and attribute layout, the expressions codeb's rules are made
//! of, and parsing the kernel's answers into [`Reply`]s. It opens no socket and knows no chain names
//! (see `super::netlink` for the socket, `super` for what the rules mean). Numbers are the kernel's
//! (`linux/netfilter/nf_tables.h`, `linux/netlink.h`); every integer attribute of nf_tables is big
//! endian, netlink's own headers are in host order.

/// `NFNL_SUBSYS_NFTABLES`: the high byte of every nf_tables message type.
const SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
/// `NFPROTO_IPV4`: codeb's NAT and guard table is in the `ip` family.
pub const FAMILY_IPV4: u8 = 2;
/// `NFPROTO_BRIDGE`: codeb's tenant isolation sees frames between the ports of a bridge, which
/// never reach the `ip` family's hooks (unless `br_netfilter` is loaded, which codeb does not need).
pub const FAMILY_BRIDGE: u8 = 7;

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const MSG_NEWTABLE: u16 = 0;
const MSG_DELTABLE: u16 = 2;
const MSG_NEWCHAIN: u16 = 3;
const MSG_GETCHAIN: u16 = 4;
const MSG_DELCHAIN: u16 = 5;
const MSG_NEWRULE: u16 = 6;
const MSG_GETRULE: u16 = 7;
const MSG_DELRULE: u16 = 8;

// Attributes of tables (NFTA_TABLE_*), chains (NFTA_CHAIN_*), hooks and rules.
const TABLE_NAME: u16 = 1;
const CHAIN_TABLE: u16 = 1;
const CHAIN_NAME: u16 = 3;
const CHAIN_HOOK: u16 = 4;
const CHAIN_POLICY: u16 = 5;
const CHAIN_TYPE: u16 = 7;
const HOOK_HOOKNUM: u16 = 1;
const HOOK_PRIORITY: u16 = 2;
const RULE_TABLE: u16 = 1;
const RULE_CHAIN: u16 = 2;
const RULE_HANDLE: u16 = 3;
const RULE_EXPRESSIONS: u16 = 4;
const RULE_USERDATA: u16 = 7;
const LIST_ELEM: u16 = 1;
const EXPR_NAME: u16 = 1;
const EXPR_DATA: u16 = 2;
const DATA_VALUE: u16 = 1;
const DATA_VERDICT: u16 = 2;
const VERDICT_CODE: u16 = 1;
const VERDICT_CHAIN: u16 = 2;

/// `NF_INET_LOCAL_IN`, `NF_INET_LOCAL_OUT`, `NF_INET_POST_ROUTING`.
pub const HOOK_LOCAL_IN: u32 = 1;
pub const HOOK_LOCAL_OUT: u32 = 3;
pub const HOOK_POST_ROUTING: u32 = 4;
/// `NF_BR_FORWARD`: a frame the bridge forwards from one of its ports to another (once per
/// egress port of a flood).
pub const HOOK_BRIDGE_FORWARD: u32 = 2;
/// `NF_ACCEPT`, a base chain's policy; `NF_DROP`, a verdict.
const NF_ACCEPT: u32 = 1;
const NF_DROP: u32 = 0;
/// `NFT_JUMP`.
pub const VERDICT_JUMP: i32 = -3;
/// `NFT_PAYLOAD_LL_HEADER` (the Ethernet header), `NFT_PAYLOAD_NETWORK_HEADER`,
/// `NFT_PAYLOAD_TRANSPORT_HEADER`.
pub const BASE_LINK: u32 = 0;
pub const BASE_NETWORK: u32 = 1;
pub const BASE_TRANSPORT: u32 = 2;
/// `NFT_META_IIFNAME`, `NFT_META_OIFNAME`, `NFT_META_L4PROTO`.
pub const META_IIFNAME: u32 = 6;
pub const META_OIFNAME: u32 = 7;
pub const META_L4PROTO: u32 = 16;
/// `NFT_CT_STATUS`, and its `IPS_DST_NAT` bit (host byte order, as the kernel loads it).
pub const CT_STATUS: u32 = 2;
pub const IPS_DST_NAT: u32 = 1 << 5;
/// `NFT_CT_STATE`, and its `invalid` and `untracked` bits (`NF_CT_STATE_INVALID_BIT`,
/// `NF_CT_STATE_UNTRACKED_BIT`), which the kernel sets when a packet has no conntrack entry.
pub const CT_STATE: u32 = 0;
pub const CT_STATE_INVALID: u32 = 1;
pub const CT_STATE_UNTRACKED: u32 = 1 << 6;
/// `NFT_CMP_EQ`, `NFT_CMP_NEQ`.
pub const CMP_EQ: u32 = 0;
pub const CMP_NEQ: u32 = 1;
/// `NFT_NAT_DNAT`.
pub const NAT_DNAT: u32 = 1;
/// `NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED`: what the kernel sets for a DNAT to an
/// address and a port, written out so that a rule reads back exactly as it was sent.
pub const NAT_FLAGS: u32 = 0x1 | 0x2;
/// `NFT_REG_VERDICT`, `NFT_REG_1`, `NFT_REG_2`.
pub const REG_VERDICT: u32 = 0;
pub const REG_1: u32 = 1;
pub const REG_2: u32 = 2;
/// `NFTNL_UDATA_RULE_COMMENT`: the userdata TLV that `nft list` prints as `comment "..."`.
const UDATA_COMMENT: u8 = 0;

/// One expression of a rule, as far as codeb reads them. Equal expressions encode to equal bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Expr {
    /// Loads `len` bytes at `offset` of a header into a register.
    Payload {
        dreg: u32,
        base: u32,
        offset: u32,
        len: u32,
    },
    /// Loads packet metadata into a register.
    Meta { dreg: u32, key: u32 },
    /// Compares a register with bytes; a mismatch ends the rule.
    Cmp { sreg: u32, op: u32, data: Vec<u8> },
    /// Puts bytes in a register.
    Value { dreg: u32, data: Vec<u8> },
    /// Sets the verdict: a jump to a chain.
    Jump { chain: String },
    /// Sets the verdict: drop the packet.
    Drop,
    /// `dreg = (sreg & mask) ^ xor`.
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// Loads a conntrack field into a register.
    Ct { dreg: u32, key: u32 },
    /// Source NAT to the address of the interface the packet leaves through.
    Masquerade,
    /// Destination NAT to the IPv4 address in `addr` and the port in `proto` (registers).
    Dnat { addr: u32, proto: u32, flags: u32 },
    /// Any other expression, or one of the above with attributes codeb does not write: the name
    /// and a rendering of its attributes, enough to tell a person what is there.
    Other(String),
}

/// A rule of codeb's table as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListedRule {
    pub chain: String,
    pub handle: u64,
    pub exprs: Vec<Expr>,
    /// The comment (`nft`'s userdata TLV), when it has one.
    pub comment: Option<String>,
}

/// A chain's definition: a base chain has a hook.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainDef {
    pub name: String,
    pub hook: Option<Hook>,
}

/// Where a base chain is attached.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hook {
    /// `NF_INET_*`.
    pub num: u32,
    pub priority: i32,
    /// `nat` or `filter`.
    pub kind: String,
}

/// One change of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Creates the table when missing (an existing one is left as it is).
    AddTable,
    /// Creates the chain when missing; an existing one keeps its rules.
    AddChain(ChainDef),
    /// Deletes an empty chain that nothing jumps to (once the transaction's earlier ops ran).
    DelChain(String),
    /// Appends a rule (or inserts it first, with `first`).
    AddRule {
        chain: String,
        exprs: Vec<Expr>,
        comment: Option<String>,
        first: bool,
    },
    /// Deletes one rule.
    DelRule { chain: String, handle: u64 },
    /// Deletes every rule of a chain.
    Flush(String),
}

/// A message the kernel sent back, split at its header.
#[derive(Debug)]
pub struct Reply<'a> {
    pub kind: u16,
    pub seq: u32,
    /// What follows the netlink header.
    pub body: &'a [u8],
}

/// Splits a datagram into messages; a truncated one ends the list.
pub fn replies(mut buf: &[u8]) -> Vec<Reply<'_>> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap_or_default()) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        out.push(Reply {
            kind: u16::from_ne_bytes([buf[4], buf[5]]),
            seq: u32::from_ne_bytes(buf[8..12].try_into().unwrap_or_default()),
            body: &buf[16..len],
        });
        buf = &buf[align(len).min(buf.len())..];
    }
    out
}

/// The errno of an `NLMSG_ERROR` body: 0 is an acknowledgement.
pub fn error_code(body: &[u8]) -> i32 {
    body.get(0..4)
        .map(|b| i32::from_ne_bytes(b.try_into().unwrap_or_default()))
        .unwrap_or(-libc_eproto())
        .wrapping_neg()
}

/// `EPROTO`, for an error message too short to carry its code.
const fn libc_eproto() -> i32 {
    71
}

/// The type of an nf_tables message.
fn nft_type(msg: u16) -> u16 {
    (SUBSYS_NFTABLES << 8) | msg
}

/// True for a chain (`NEWCHAIN`) or rule (`NEWRULE`) message of a dump.
pub fn is_chain(kind: u16) -> bool {
    kind == nft_type(MSG_NEWCHAIN)
}
pub fn is_rule(kind: u16) -> bool {
    kind == nft_type(MSG_NEWRULE)
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds netlink messages into one buffer.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    /// Starts a message with its nf_tables header; returns where it starts, for [`Writer::end`].
    fn begin(&mut self, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `end`
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    fn end(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn attr(&mut self, kind: u16, data: &[u8]) {
        self.buf
            .extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        let n = align(self.buf.len()) - self.buf.len();
        self.buf.extend(std::iter::repeat_n(0, n));
    }

    fn str(&mut self, kind: u16, s: &str) {
        let mut data = Vec::with_capacity(s.len() + 1);
        data.extend_from_slice(s.as_bytes());
        data.push(0);
        self.attr(kind, &data);
    }

    fn u32(&mut self, kind: u16, v: u32) {
        self.attr(kind, &v.to_be_bytes());
    }

    fn nest(&mut self, kind: u16, body: impl FnOnce(&mut Self)) {
        let start = self.buf.len();
        self.attr(kind | NLA_F_NESTED, &[]);
        body(self);
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// A dump request of every chain of `family` (the kernel filters chains by family only).
    pub fn dump_chains(&mut self, seq: u32, family: u8) {
        let m = self.begin(
            nft_type(MSG_GETCHAIN),
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            family,
            0,
        );
        self.end(m);
    }

    /// A dump request of the rules of one table of `family`.
    pub fn dump_rules(&mut self, seq: u32, family: u8, table: &str) {
        let m = self.begin(
            nft_type(MSG_GETRULE),
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            family,
            0,
        );
        self.str(RULE_TABLE, table);
        self.end(m);
    }

    /// One transaction: the ops between a batch's begin and end, each acknowledged. Returns the
    /// sequence numbers that get an acknowledgement, in order.
    pub fn batch(&mut self, first_seq: u32, family: u8, table: &str, ops: &[Op]) -> Vec<u32> {
        let mut seq = first_seq;
        let b = self.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0, SUBSYS_NFTABLES);
        self.end(b);
        let mut acked = Vec::with_capacity(ops.len());
        for op in ops {
            seq += 1;
            acked.push(seq);
            self.op(seq, family, table, op);
        }
        seq += 1;
        let e = self.begin(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, 0, SUBSYS_NFTABLES);
        self.end(e);
        acked
    }

    fn op(&mut self, seq: u32, f: u8, table: &str, op: &Op) {
        let ack = NLM_F_REQUEST | NLM_F_ACK;
        match op {
            Op::AddTable => {
                let m = self.begin(nft_type(MSG_NEWTABLE), ack | NLM_F_CREATE, seq, f, 0);
                self.str(TABLE_NAME, table);
                self.end(m);
            }
            Op::AddChain(def) => {
                let m = self.begin(nft_type(MSG_NEWCHAIN), ack | NLM_F_CREATE, seq, f, 0);
                self.str(CHAIN_TABLE, table);
                self.str(CHAIN_NAME, &def.name);
                if let Some(hook) = &def.hook {
                    self.nest(CHAIN_HOOK, |w| {
                        w.u32(HOOK_HOOKNUM, hook.num);
                        w.u32(HOOK_PRIORITY, hook.priority as u32);
                    });
                    self.u32(CHAIN_POLICY, NF_ACCEPT);
                    self.str(CHAIN_TYPE, &hook.kind);
                }
                self.end(m);
            }
            Op::DelChain(name) => {
                let m = self.begin(nft_type(MSG_DELCHAIN), ack, seq, f, 0);
                self.str(CHAIN_TABLE, table);
                self.str(CHAIN_NAME, name);
                self.end(m);
            }
            Op::AddRule {
                chain,
                exprs,
                comment,
                first,
            } => {
                let flags = ack | NLM_F_CREATE | if *first { 0 } else { NLM_F_APPEND };
                let m = self.begin(nft_type(MSG_NEWRULE), flags, seq, f, 0);
                self.str(RULE_TABLE, table);
                self.str(RULE_CHAIN, chain);
                self.nest(RULE_EXPRESSIONS, |w| {
                    for e in exprs {
                        w.nest(LIST_ELEM, |w| w.expr(e));
                    }
                });
                if let Some(c) = comment {
                    self.attr(RULE_USERDATA, &comment_udata(c));
                }
                self.end(m);
            }
            Op::DelRule { chain, handle } => {
                let m = self.begin(nft_type(MSG_DELRULE), ack, seq, f, 0);
                self.str(RULE_TABLE, table);
                self.str(RULE_CHAIN, chain);
                self.attr(RULE_HANDLE, &handle.to_be_bytes());
                self.end(m);
            }
            Op::Flush(chain) => {
                let m = self.begin(nft_type(MSG_DELRULE), ack, seq, f, 0);
                self.str(RULE_TABLE, table);
                self.str(RULE_CHAIN, chain);
                self.end(m);
            }
        }
    }

    fn expr(&mut self, e: &Expr) {
        let data = |w: &mut Self, name: &str, body: &dyn Fn(&mut Self)| {
            w.str(EXPR_NAME, name);
            w.nest(EXPR_DATA, |w| body(w));
        };
        match e {
            Expr::Payload {
                dreg,
                base,
                offset,
                len,
            } => data(self, "payload", &|w| {
                w.u32(1, *dreg); // NFTA_PAYLOAD_DREG
                w.u32(2, *base); // NFTA_PAYLOAD_BASE
                w.u32(3, *offset); // NFTA_PAYLOAD_OFFSET
                w.u32(4, *len); // NFTA_PAYLOAD_LEN
            }),
            Expr::Meta { dreg, key } => data(self, "meta", &|w| {
                w.u32(1, *dreg); // NFTA_META_DREG
                w.u32(2, *key); // NFTA_META_KEY
            }),
            Expr::Cmp { sreg, op, data: d } => data(self, "cmp", &|w| {
                w.u32(1, *sreg); // NFTA_CMP_SREG
                w.u32(2, *op); // NFTA_CMP_OP
                w.nest(3, |w| w.attr(DATA_VALUE, d)); // NFTA_CMP_DATA
            }),
            Expr::Value { dreg, data: d } => data(self, "immediate", &|w| {
                w.u32(1, *dreg); // NFTA_IMMEDIATE_DREG
                w.nest(2, |w| w.attr(DATA_VALUE, d)); // NFTA_IMMEDIATE_DATA
            }),
            Expr::Jump { chain } => data(self, "immediate", &|w| {
                w.u32(1, REG_VERDICT);
                w.nest(2, |w| {
                    w.nest(DATA_VERDICT, |w| {
                        w.u32(VERDICT_CODE, VERDICT_JUMP as u32);
                        w.str(VERDICT_CHAIN, chain);
                    })
                });
            }),
            Expr::Drop => data(self, "immediate", &|w| {
                w.u32(1, REG_VERDICT);
                w.nest(2, |w| {
                    w.nest(DATA_VERDICT, |w| w.u32(VERDICT_CODE, NF_DROP))
                });
            }),
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => data(self, "bitwise", &|w| {
                w.u32(1, *sreg); // NFTA_BITWISE_SREG
                w.u32(2, *dreg); // NFTA_BITWISE_DREG
                w.u32(3, mask.len() as u32); // NFTA_BITWISE_LEN
                w.nest(4, |w| w.attr(DATA_VALUE, mask)); // NFTA_BITWISE_MASK
                w.nest(5, |w| w.attr(DATA_VALUE, xor)); // NFTA_BITWISE_XOR
            }),
            Expr::Ct { dreg, key } => data(self, "ct", &|w| {
                w.u32(1, *dreg); // NFTA_CT_DREG
                w.u32(2, *key); // NFTA_CT_KEY
            }),
            // No attributes: masquerade to the outgoing interface's address, any port.
            Expr::Masquerade => self.str(EXPR_NAME, "masq"),
            Expr::Dnat { addr, proto, flags } => data(self, "nat", &|w| {
                w.u32(1, NAT_DNAT); // NFTA_NAT_TYPE
                w.u32(2, u32::from(FAMILY_IPV4)); // NFTA_NAT_FAMILY
                w.u32(3, *addr); // NFTA_NAT_REG_ADDR_MIN
                w.u32(4, *addr); // NFTA_NAT_REG_ADDR_MAX
                w.u32(5, *proto); // NFTA_NAT_REG_PROTO_MIN
                w.u32(6, *proto); // NFTA_NAT_REG_PROTO_MAX
                w.u32(7, *flags); // NFTA_NAT_FLAGS
            }),
            // Never written: `Other` only describes what was read.
            Expr::Other(_) => {}
        }
    }
}

/// `nft`'s userdata for a rule comment: type, length, the string with its NUL.
fn comment_udata(comment: &str) -> Vec<u8> {
    let mut v = vec![UDATA_COMMENT, (comment.len() + 1) as u8];
    v.extend_from_slice(comment.as_bytes());
    v.push(0);
    v
}

fn comment_from_udata(mut udata: &[u8]) -> Option<String> {
    while udata.len() >= 2 {
        let (kind, len) = (udata[0], usize::from(udata[1]));
        let value = udata.get(2..2 + len)?;
        if kind == UDATA_COMMENT {
            let s = value.strip_suffix(&[0]).unwrap_or(value);
            return Some(String::from_utf8_lossy(s).into_owned());
        }
        udata = &udata[2 + len..];
    }
    None
}

/// The attributes of a message body or a nested attribute: `(type without flags, payload)`.
fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        if len < 4 || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        out.push((kind, &buf[4..len]));
        buf = &buf[align(len).min(buf.len())..];
    }
    out
}

fn get<'a>(attrs: &[(u16, &'a [u8])], kind: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
}

fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

fn string(v: &[u8]) -> String {
    let v = v.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(v).into_owned()
}

/// Whether a notification of nf_tables' multicast group changes the base chains `chains` of
/// `table` (a rule added to or deleted from one, the chain deleted) or deletes the table: what a
/// `nft flush ruleset`, or someone editing codeb's guard, sends.
pub fn touches(kind: u16, body: &[u8], table: &str, chains: &[&str]) -> bool {
    let Some(a) = body.get(4..).map(attrs) else {
        return false;
    };
    // The table is attribute 1 of tables, chains and rules alike.
    if get(&a, TABLE_NAME).map(string).as_deref() != Some(table) {
        return false;
    }
    let named = |attr: u16| {
        get(&a, attr)
            .map(string)
            .is_some_and(|c| chains.contains(&c.as_str()))
    };
    if kind == nft_type(MSG_DELTABLE) {
        true
    } else if kind == nft_type(MSG_DELCHAIN) {
        named(CHAIN_NAME)
    } else if kind == nft_type(MSG_DELRULE) || kind == nft_type(MSG_NEWRULE) {
        named(RULE_CHAIN)
    } else {
        false
    }
}

/// The table of a `NEWCHAIN` or `NEWRULE` message (the same attribute number in both), skipping
/// the 4-byte nf_tables header.
pub fn table_of(body: &[u8]) -> Option<String> {
    get(&attrs(body.get(4..)?), CHAIN_TABLE).map(string)
}

/// A chain of a `NEWCHAIN` dump message.
pub fn chain(body: &[u8]) -> Option<ChainDef> {
    let a = attrs(body.get(4..)?);
    let hook = get(&a, CHAIN_HOOK).and_then(|h| {
        let h = attrs(h);
        Some(Hook {
            num: be32(get(&h, HOOK_HOOKNUM)?)?,
            priority: be32(get(&h, HOOK_PRIORITY)?)? as i32,
            kind: string(get(&a, CHAIN_TYPE)?),
        })
    });
    Some(ChainDef {
        name: string(get(&a, CHAIN_NAME)?),
        hook,
    })
}

/// A rule of a `NEWRULE` dump message.
pub fn rule(body: &[u8]) -> Option<ListedRule> {
    let a = attrs(body.get(4..)?);
    let handle = u64::from_be_bytes(get(&a, RULE_HANDLE)?.get(..8)?.try_into().ok()?);
    let exprs = get(&a, RULE_EXPRESSIONS)
        .map(|list| {
            attrs(list)
                .into_iter()
                .filter(|(k, _)| *k == LIST_ELEM)
                .map(|(_, e)| expr(e))
                .collect()
        })
        .unwrap_or_default();
    Some(ListedRule {
        chain: string(get(&a, RULE_CHAIN)?),
        handle,
        exprs,
        comment: get(&a, RULE_USERDATA).and_then(comment_from_udata),
    })
}

/// Decodes one expression; anything that is not exactly one of codeb's shapes is `Other`.
fn expr(e: &[u8]) -> Expr {
    let a = attrs(e);
    let name = get(&a, EXPR_NAME).map(string).unwrap_or_default();
    let d = get(&a, EXPR_DATA).map(attrs).unwrap_or_default();
    let other = || Expr::Other(describe(&name, &d));
    let u = |k| get(&d, k).and_then(be32);
    // The kernel lists attributes in its own order (meta's key before its register).
    let mut keys: Vec<u16> = d.iter().map(|(k, _)| *k).collect();
    keys.sort_unstable();
    let parsed = match name.as_str() {
        "payload" if keys == [1, 2, 3, 4] => Some(Expr::Payload {
            dreg: u(1).unwrap_or_default(),
            base: u(2).unwrap_or_default(),
            offset: u(3).unwrap_or_default(),
            len: u(4).unwrap_or_default(),
        }),
        "meta" if keys == [1, 2] => Some(Expr::Meta {
            dreg: u(1).unwrap_or_default(),
            key: u(2).unwrap_or_default(),
        }),
        "cmp" if keys == [1, 2, 3] => value(get(&d, 3)).map(|data| Expr::Cmp {
            sreg: u(1).unwrap_or_default(),
            op: u(2).unwrap_or_default(),
            data,
        }),
        "immediate" if keys == [1, 2] => {
            let data = attrs(get(&d, 2).unwrap_or_default());
            match (u(1), data.as_slice()) {
                (Some(dreg), [(DATA_VALUE, v)]) if dreg != REG_VERDICT => Some(Expr::Value {
                    dreg,
                    data: v.to_vec(),
                }),
                (Some(REG_VERDICT), [(DATA_VERDICT, v)]) => {
                    let v = attrs(v);
                    match (get(&v, VERDICT_CODE).and_then(be32), get(&v, VERDICT_CHAIN)) {
                        (Some(code), Some(chain))
                            if code as i32 == VERDICT_JUMP && v.len() == 2 =>
                        {
                            Some(Expr::Jump {
                                chain: string(chain),
                            })
                        }
                        (Some(NF_DROP), None) if v.len() == 1 => Some(Expr::Drop),
                        _ => None,
                    }
                }
                _ => None,
            }
        }
        // Kernels since 5.x also list the operation (6), which is 0 (`NFT_BITWISE_BOOL`) here.
        "bitwise" if keys == [1, 2, 3, 4, 5] || (keys == [1, 2, 3, 4, 5, 6] && u(6) == Some(0)) => {
            match (value(get(&d, 4)), value(get(&d, 5))) {
                (Some(mask), Some(xor)) if u(3) == Some(mask.len() as u32) => Some(Expr::Bitwise {
                    sreg: u(1).unwrap_or_default(),
                    dreg: u(2).unwrap_or_default(),
                    mask,
                    xor,
                }),
                _ => None,
            }
        }
        "ct" if keys == [1, 2] => Some(Expr::Ct {
            dreg: u(1).unwrap_or_default(),
            key: u(2).unwrap_or_default(),
        }),
        "masq" if keys.is_empty() => Some(Expr::Masquerade),
        "nat" if keys == [1, 2, 3, 4, 5, 6, 7] => {
            let same = u(3) == u(4) && u(5) == u(6);
            (same && u(1) == Some(NAT_DNAT) && u(2) == Some(u32::from(FAMILY_IPV4))).then(|| {
                Expr::Dnat {
                    addr: u(3).unwrap_or_default(),
                    proto: u(5).unwrap_or_default(),
                    flags: u(7).unwrap_or_default(),
                }
            })
        }
        _ => None,
    };
    parsed.unwrap_or_else(other)
}

/// The bytes of an `NFTA_DATA_VALUE` inside a data attribute.
fn value(data: Option<&[u8]>) -> Option<Vec<u8>> {
    match attrs(data?).as_slice() {
        [(DATA_VALUE, v)] => Some(v.to_vec()),
        _ => None,
    }
}

/// `name(1=00000001 2=...)`: an expression codeb does not write, for a person to read.
fn describe(name: &str, data: &[(u16, &[u8])]) -> String {
    let fields: Vec<String> = data
        .iter()
        .map(|(k, v)| {
            let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
            format!("{k}={hex}")
        })
        .collect();
    format!("{name}({})", fields.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body of the single message in `w`, as the kernel would send it back (header skipped).
    fn body(w: &Writer) -> &[u8] {
        &w.buf[16..]
    }

    /// What the daemon's ruleset monitor reacts to: a change of codeb's guard or masquerade chain
    /// (a rule deleted or added, the chain deleted) or its table deleted; not a switch's rules.
    #[test]
    fn a_change_of_the_guard_chains_is_told_from_a_switch_and_from_other_tables() {
        let decide = |table: &str, ops: &[Op]| -> Vec<bool> {
            let mut w = Writer::default();
            w.batch(1, FAMILY_IPV4, table, ops);
            replies(&w.buf)
                .iter()
                .map(|r| touches(r.kind, r.body, "codeb", &["input", "postrouting"]))
                .collect()
        };
        let del = |chain: &str| Op::DelRule {
            chain: chain.into(),
            handle: 7,
        };
        // Batch begin and end frame the ops.
        assert_eq!(
            decide("codeb", &[del("input"), del("CODEB-7f000001-4051")]),
            [false, true, false, false]
        );
        assert_eq!(
            decide("codeb", &[Op::DelChain("postrouting".into())]),
            [false, true, false]
        );
        assert_eq!(
            decide("codeb", &[Op::DelChain("CODEB-7f000001".into())]),
            [false, false, false]
        );
        assert_eq!(decide("other", &[del("input")]), [false, false, false]);
        // A table deletion, as the kernel announces it: table name only.
        let mut msg = Vec::new();
        let mut body = vec![2u8, 0, 0, 0];
        body.extend_from_slice(&10u16.to_ne_bytes());
        body.extend_from_slice(&1u16.to_ne_bytes());
        body.extend_from_slice(b"codeb\0\0\0");
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&nft_type(MSG_DELTABLE).to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&body);
        let r = &replies(&msg)[0];
        assert!(touches(r.kind, r.body, "codeb", &["input"]));
        assert!(!touches(r.kind, r.body, "other", &["input"]));
    }

    #[test]
    fn a_rule_reads_back_as_it_was_written() {
        let exprs = vec![
            Expr::Payload {
                dreg: REG_1,
                base: BASE_NETWORK,
                offset: 16,
                len: 4,
            },
            Expr::Cmp {
                sreg: REG_1,
                op: CMP_EQ,
                data: vec![10, 89, 144, 1],
            },
            Expr::Meta {
                dreg: REG_1,
                key: META_L4PROTO,
            },
            Expr::Value {
                dreg: REG_2,
                data: vec![0x1f, 0x90],
            },
            Expr::Dnat {
                addr: REG_1,
                proto: REG_2,
                flags: NAT_FLAGS,
            },
            Expr::Jump {
                chain: "g-0a599001".into(),
            },
            Expr::Bitwise {
                sreg: REG_1,
                dreg: REG_1,
                mask: vec![255, 0, 0, 0],
                xor: vec![0; 4],
            },
            Expr::Ct {
                dreg: REG_1,
                key: CT_STATUS,
            },
            Expr::Masquerade,
            Expr::Drop,
        ];
        let mut w = Writer::default();
        w.op(
            7,
            FAMILY_IPV4,
            "codeb",
            &Op::AddRule {
                chain: "output".into(),
                exprs: exprs.clone(),
                comment: Some("codeb shop/production".into()),
                first: true,
            },
        );
        // A listed rule also has its handle.
        w.attr(RULE_HANDLE, &42u64.to_be_bytes());
        let len = w.buf.len() as u32;
        w.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        let parsed = rule(body(&w)).expect("a rule");
        assert_eq!(
            parsed,
            ListedRule {
                chain: "output".into(),
                handle: 42,
                exprs,
                comment: Some("codeb shop/production".into()),
            }
        );
        assert_eq!(table_of(body(&w)).as_deref(), Some("codeb"));
        let r = replies(&w.buf);
        assert_eq!((r.len(), r[0].seq, is_rule(r[0].kind)), (1, 7, true));
    }

    #[test]
    fn a_base_chain_reads_back_with_its_hook_and_priority() {
        let mut w = Writer::default();
        let def = ChainDef {
            name: "output".into(),
            hook: Some(Hook {
                num: HOOK_LOCAL_OUT,
                priority: -101,
                kind: "nat".into(),
            }),
        };
        w.op(1, FAMILY_IPV4, "codeb", &Op::AddChain(def.clone()));
        assert_eq!(chain(body(&w)), Some(def));
    }

    #[test]
    fn an_expression_with_an_attribute_codeb_does_not_write_is_other() {
        let mut w = Writer::default();
        w.str(EXPR_NAME, "payload");
        w.nest(EXPR_DATA, |w| {
            for k in 1..=5 {
                w.u32(k, 1);
            }
        });
        assert!(matches!(expr(&w.buf), Expr::Other(s) if s.starts_with("payload(1=00000001")));
    }

    #[test]
    fn a_batch_acknowledges_every_op_between_begin_and_end() {
        let mut w = Writer::default();
        let acked = w.batch(
            100,
            FAMILY_IPV4,
            "codeb",
            &[
                Op::AddTable,
                Op::Flush("s".into()),
                Op::DelChain("s".into()),
            ],
        );
        assert_eq!(acked, vec![101, 102, 103]);
        let kinds: Vec<u16> = replies(&w.buf).iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            vec![
                NFNL_MSG_BATCH_BEGIN,
                nft_type(MSG_NEWTABLE),
                nft_type(MSG_DELRULE),
                nft_type(MSG_DELCHAIN),
                NFNL_MSG_BATCH_END
            ]
        );
    }

    #[test]
    fn an_error_message_carries_its_errno_and_zero_is_an_ack() {
        assert_eq!(error_code(&(-2i32).to_ne_bytes()), 2);
        assert_eq!(error_code(&0i32.to_ne_bytes()), 0);
        assert_eq!(error_code(&[]), 71);
    }

    mod hostile {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            /// The kernel's replies are read by codeb as root: whatever bytes arrive (a bug, a
            /// future kernel, a hostile netlink peer), decoding never panics and never reads past
            /// the buffer, and every message it yields lies inside the datagram.
            #[test]
            fn random_bytes_never_panic_the_reply_parser(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
                let replies = replies(&bytes);
                for r in &replies {
                    prop_assert!(r.body.len() <= bytes.len());
                    let _ = error_code(r.body);
                    let _ = table_of(r.body);
                    let _ = chain(r.body);
                    let _ = rule(r.body);
                    let _ = touches(r.kind, r.body, "codeb", &["input"]);
                }
                let _ = chain(&bytes);
                let _ = rule(&bytes);
                let _ = table_of(&bytes);
            }

            /// A well-formed header around random attributes: the attribute walk and the
            /// expression decoder meet arbitrary lengths and kinds without panicking.
            #[test]
            fn random_attributes_in_a_valid_message_never_panic(
                kind in any::<u16>(),
                attrs in proptest::collection::vec(any::<u8>(), 0..1024),
            ) {
                let len = 16 + 4 + attrs.len();
                let mut msg = Vec::with_capacity(len);
                msg.extend_from_slice(&(len as u32).to_ne_bytes());
                msg.extend_from_slice(&kind.to_ne_bytes());
                msg.extend_from_slice(&[0; 10]);
                msg.extend_from_slice(&[2, 0, 0, 0]);
                msg.extend_from_slice(&attrs);
                for r in replies(&msg) {
                    let _ = chain(r.body);
                    let _ = rule(r.body);
                    let _ = touches(r.kind, r.body, "codeb", &["input", "postrouting"]);
                }
            }
        }
    }
}
