//! The firewall's own DNS client, which resolves the names of `dsthost=`
//! rules through the uplink's resolver.
//!
//! Each (name, record type) is queried when it first appears in the rules,
//! then again when the answer's TTL runs out: never more than one query per
//! TTL per name (qubes-mirage-firewall issue #158 burned 100% CPU by
//! re-resolving on every packet). TTLs are clamped to
//! [`MIN_TTL`]..[`MAX_TTL`]. A query without an answer is retried after
//! [`RETRY_FIRST`], doubling up to [`MAX_TTL`]. Addresses stay valid until a
//! new answer replaces them, so a slow resolver does not cut flows.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::net::IpAddr;

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{DnsPacket, DnsQuestion, DnsRecord, DnsRecordData};

/// The uplink port the resolver sends from (NAT never hands it out).
pub const RESOLVER_PORT: u16 = 53053;
/// Shortest TTL honoured.
pub const MIN_TTL: Duration = Duration::from_secs(5);
/// Longest TTL honoured.
pub const MAX_TTL: Duration = Duration::from_secs(86400);
/// First retry delay after an unanswered query.
pub const RETRY_FIRST: Duration = Duration::from_secs(2);

/// The record types asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecordType {
    /// IPv4 addresses.
    A,
    /// IPv6 addresses.
    Aaaa,
}

impl RecordType {
    fn code(self) -> u16 {
        match self {
            RecordType::A => 1,
            RecordType::Aaaa => 28,
        }
    }
}

#[derive(Debug, Clone)]
struct Lookup {
    addrs: Vec<IpAddr>,
    /// When to ask next; `None` means at the first chance.
    next_query: Option<Instant>,
    pending: Option<u16>,
    retry: Duration,
}

/// A query to send: the DNS message for `upstream:53` from
/// [`RESOLVER_PORT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The DNS message (UDP payload).
    pub message: Vec<u8>,
    /// Address family of the record type (the upstream is chosen by the caller).
    pub record_type: RecordType,
}

/// Counters of the resolver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResolverStats {
    /// Queries sent.
    pub queries: u64,
    /// Answers accepted.
    pub answers: u64,
    /// Messages ignored (unknown transaction, wrong question, malformed).
    pub ignored: u64,
}

/// Name → addresses, kept fresh.
#[derive(Debug, Clone)]
pub struct Resolver {
    lookups: BTreeMap<(String, RecordType), Lookup>,
    record_types: Vec<RecordType>,
    rng: u32,
    stats: ResolverStats,
}

/// The wire form of a DNS name (labels), or None if it cannot be one.
fn encode_name(name: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(name.len() + 2);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        let len = u8::try_from(label.len()).ok().filter(|l| *l <= 63)?;
        out.push(len);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    (out.len() <= 255).then_some(out)
}

impl Resolver {
    /// A resolver asking for `record_types` of every name; `seed` varies
    /// the transaction identifiers.
    pub fn new(record_types: Vec<RecordType>, seed: u32) -> Resolver {
        Resolver {
            lookups: BTreeMap::new(),
            record_types,
            rng: seed | 1,
            stats: ResolverStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> ResolverStats {
        self.stats
    }

    /// Track exactly `names` (lowercase): new ones are due at once,
    /// dropped ones are forgotten.
    pub fn set_names(&mut self, names: &[String]) {
        self.lookups
            .retain(|(name, _), _| names.iter().any(|n| n == name));
        for name in names {
            for record_type in &self.record_types {
                self.lookups
                    .entry((name.clone(), *record_type))
                    .or_insert(Lookup {
                        addrs: Vec::new(),
                        next_query: None,
                        pending: None,
                        retry: RETRY_FIRST,
                    });
            }
        }
    }

    /// Set the addresses of `name` directly (for platforms with another
    /// source of names); they hold for [`MAX_TTL`].
    pub fn set_addresses(&mut self, name: &str, addrs: Vec<IpAddr>, now: Instant) {
        let name = name.to_ascii_lowercase();
        for record_type in self.record_types.clone() {
            let wanted: Vec<IpAddr> = addrs
                .iter()
                .copied()
                .filter(|a| a.is_ipv6() == (record_type == RecordType::Aaaa))
                .collect();
            self.lookups.insert(
                (name.clone(), record_type),
                Lookup {
                    addrs: wanted,
                    next_query: Some(now + MAX_TTL),
                    pending: None,
                    retry: RETRY_FIRST,
                },
            );
        }
    }

    /// Whether `name` currently resolves to `ip`.
    pub fn resolves_to(&self, name: &str, ip: &IpAddr) -> bool {
        let record_type = if ip.is_ipv6() {
            RecordType::Aaaa
        } else {
            RecordType::A
        };
        self.lookups
            .get(&(String::from(name), record_type))
            .is_some_and(|l| l.addrs.contains(ip))
    }

    fn next_id(&mut self) -> u16 {
        // xorshift32: transaction ids need to vary, not to be secret, since
        // answers are also matched on the question and the upstream address.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng = x;
        (x >> 8) as u16
    }

    /// The queries due at `now`. Each is marked pending and will not be
    /// sent again before its retry delay.
    pub fn due_queries(&mut self, now: Instant) -> Vec<Query> {
        let due: Vec<(String, RecordType)> = self
            .lookups
            .iter()
            .filter(|(_, l)| l.next_query.is_none_or(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        let mut queries = Vec::new();
        for key in due {
            let Some(name) = encode_name(&key.0) else {
                continue;
            };
            let id = self.next_id();
            let mut message = alloc::vec![0u8; 12 + name.len() + 4];
            {
                let mut packet = DnsPacket::new_unchecked(&mut message[..]);
                packet.set_transaction_id(id);
                packet.set_flags(smoltcp::wire::DnsFlags::RECURSION_DESIRED);
                packet.set_question_count(1);
            }
            let question = DnsQuestion {
                name: &name,
                type_: key.1.code().into(),
            };
            if let Some(rest) = message.get_mut(12..) {
                question.emit(rest);
            }
            if let Some(lookup) = self.lookups.get_mut(&key) {
                lookup.pending = Some(id);
                lookup.next_query = Some(now + lookup.retry);
                lookup.retry = (lookup.retry * 2).min(MAX_TTL);
            }
            self.stats.queries += 1;
            queries.push(Query {
                message,
                record_type: key.1,
            });
        }
        queries
    }

    /// Accept an answer (UDP payload from the upstream resolver). Returns
    /// the name it updated.
    pub fn on_response(&mut self, now: Instant, message: &[u8]) -> Option<String> {
        let result = self.parse_response(now, message);
        if result.is_none() {
            self.stats.ignored += 1;
        }
        result
    }

    fn parse_response(&mut self, now: Instant, message: &[u8]) -> Option<String> {
        let packet = DnsPacket::new_checked(message).ok()?;
        if packet.question_count() != 1
            || u8::from(packet.rcode()) != 0 && u8::from(packet.rcode()) != 3
        {
            return None;
        }
        let id = packet.transaction_id();
        let (mut rest, question) = DnsQuestion::parse(packet.payload()).ok()?;
        let key = self
            .lookups
            .iter()
            .find(|(key, lookup)| {
                lookup.pending == Some(id)
                    && u16::from(question.type_) == key.1.code()
                    && encode_name(&key.0).as_deref() == Some(question.name)
            })
            .map(|(key, _)| key.clone())?;
        let mut addrs = Vec::new();
        let mut ttl: Option<u32> = None;
        for _ in 0..packet.answer_record_count() {
            let (next, record) = DnsRecord::parse(rest).ok()?;
            rest = next;
            let addr = match (record.data, key.1) {
                (DnsRecordData::A(a), RecordType::A) => IpAddr::V4(a),
                (DnsRecordData::Aaaa(a), RecordType::Aaaa) => IpAddr::V6(a),
                _ => continue,
            };
            ttl = Some(ttl.map_or(record.ttl, |t| t.min(record.ttl)));
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        // NXDOMAIN or no address: remember "nothing" for a minute.
        let ttl = Duration::from_secs(u64::from(ttl.unwrap_or(60)))
            .max(MIN_TTL)
            .min(MAX_TTL);
        let lookup = self.lookups.get_mut(&key)?;
        lookup.addrs = addrs;
        lookup.pending = None;
        lookup.next_query = Some(now + ttl);
        lookup.retry = RETRY_FIRST;
        self.stats.answers += 1;
        Some(key.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use core::net::Ipv4Addr;

    fn answer(query: &[u8], ttl: u32, addrs: &[Ipv4Addr]) -> Vec<u8> {
        let mut out = query.to_vec();
        out[2] = 0x81;
        out[3] = 0x80;
        out[6..8].copy_from_slice(&(addrs.len() as u16).to_be_bytes());
        for addr in addrs {
            out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&[0, 4]);
            out.extend_from_slice(&addr.octets());
        }
        out
    }

    #[test]
    fn one_query_per_ttl() {
        let mut resolver = Resolver::new(vec![RecordType::A], 42);
        let name = String::from("example.com");
        resolver.set_names(core::slice::from_ref(&name));
        let addr = Ipv4Addr::new(93, 184, 216, 34);
        let mut sent = 0;
        // Ten minutes of polling every 100 ms with a 60 s TTL.
        for tenth in 0..6000 {
            let now = Instant::from_millis(tenth * 100);
            for query in resolver.due_queries(now) {
                sent += 1;
                let reply = answer(&query.message, 60, &[addr]);
                assert_eq!(resolver.on_response(now, &reply), Some(name.clone()));
            }
            assert!(resolver.resolves_to("example.com", &IpAddr::V4(addr)));
        }
        assert_eq!(sent, 10);
        assert_eq!(resolver.stats().answers, 10);
    }

    #[test]
    fn unanswered_queries_back_off() {
        let mut resolver = Resolver::new(vec![RecordType::A, RecordType::Aaaa], 7);
        resolver.set_names(&[String::from("slow.example")]);
        let mut times = Vec::new();
        for second in 0..40 {
            for query in resolver.due_queries(Instant::from_secs(second)) {
                if query.record_type == RecordType::A {
                    times.push(second);
                }
            }
        }
        assert_eq!(times, vec![0, 2, 6, 14, 30]);
    }

    #[test]
    fn answers_must_match_a_pending_question() {
        let mut resolver = Resolver::new(vec![RecordType::A], 9);
        resolver.set_names(&[String::from("a.example")]);
        let query = resolver.due_queries(Instant::from_secs(0)).remove(0);
        let addr = Ipv4Addr::new(192, 0, 2, 1);
        let mut wrong_id = answer(&query.message, 60, &[addr]);
        wrong_id[0] ^= 0xff;
        assert_eq!(resolver.on_response(Instant::from_secs(0), &wrong_id), None);
        assert_eq!(
            resolver.on_response(Instant::from_secs(0), &[1, 2, 3]),
            None
        );
        assert_eq!(
            resolver.on_response(Instant::from_secs(0), &query.message[..15]),
            None
        );
        assert!(!resolver.resolves_to("a.example", &IpAddr::V4(addr)));
        assert_eq!(resolver.stats().ignored, 3);
        let good = answer(&query.message, 1, &[addr]);
        assert!(resolver.on_response(Instant::from_secs(0), &good).is_some());
        assert!(resolver.resolves_to("a.example", &IpAddr::V4(addr)));
        // A replayed answer no longer matches.
        assert_eq!(resolver.on_response(Instant::from_secs(0), &good), None);
        // TTL 1 is clamped to 5 s.
        assert!(resolver.due_queries(Instant::from_secs(4)).is_empty());
        assert_eq!(resolver.due_queries(Instant::from_secs(5)).len(), 1);
    }

    #[test]
    fn names_leaving_the_rules_are_forgotten() {
        let mut resolver = Resolver::new(vec![RecordType::A], 1);
        resolver.set_names(&[String::from("a"), String::from("b")]);
        assert_eq!(resolver.due_queries(Instant::from_secs(0)).len(), 2);
        resolver.set_names(&[String::from("b")]);
        assert_eq!(resolver.due_queries(Instant::from_secs(100)).len(), 1);
    }
}
