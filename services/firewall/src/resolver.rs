//! The firewall's own DNS client, which resolves the names of `dsthost=`
//! rules through the uplink's resolver.
//!
//! Like the Linux agent, which calls `getaddrinfo` for each `dsthost=` while
//! it loads a client's rules (`resolve_dns` in `qubesagent/firewall.py`)
//! and never again until the next load, a name is looked up when rules
//! that name it are loaded ([`Resolver::request`]), for the record type of
//! the client's address family, and the rules then keep the addresses they
//! were loaded with. A lookup is one query, retried after [`RETRY_FIRST`]
//! and twice that, and failed after [`MAX_ATTEMPTS`] unanswered queries
//! (14 s, about glibc's 2 attempts of 5 s to each of two servers); an
//! answer without addresses (NXDOMAIN, no record of the type) is a failure
//! too. Answers are kept for their TTL (clamped to [`MIN_TTL`]..[`MAX_TTL`])
//! so that loading many clients naming the same host asks once
//! (qubes-mirage-firewall issue #158 burned 100% CPU by re-resolving on
//! every packet).

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
/// First retry delay after an unanswered query; each next one doubles.
pub const RETRY_FIRST: Duration = Duration::from_secs(2);
/// Queries sent for one lookup before it fails.
pub const MAX_ATTEMPTS: u32 = 3;
/// Most lookups kept (names times record types); more are refused.
pub const MAX_LOOKUPS: usize = 4096;

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

    /// The record type holding addresses of `addr`'s family.
    pub fn for_family_of(addr: &IpAddr) -> RecordType {
        match addr {
            IpAddr::V4(_) => RecordType::A,
            IpAddr::V6(_) => RecordType::Aaaa,
        }
    }
}

/// Where a lookup stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not answered yet.
    Pending,
    /// The name's addresses (never empty).
    Resolved(Vec<IpAddr>),
    /// No address: NXDOMAIN, no record of the type, no answer, no
    /// resolver, or the lookup was never requested.
    Failed,
}

#[derive(Debug, Clone)]
struct Lookup {
    /// The latest answer's addresses (empty for NXDOMAIN or no record)
    /// and when it expires.
    answer: Option<(Vec<IpAddr>, Instant)>,
    /// The transaction in flight, if any.
    pending: Option<u16>,
    /// Whether a query is wanted (requested and not yet answered).
    wanted: bool,
    /// When to send the next query; `None` means at the first chance.
    next_query: Option<Instant>,
    /// Queries sent for the current request.
    attempts: u32,
    /// The current request failed.
    failed: bool,
}

/// A query to send: the DNS message for `upstream:53` from
/// [`RESOLVER_PORT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The DNS message (UDP payload).
    pub message: Vec<u8>,
    /// Address family of the record type (the upstream is chosen by the caller).
    pub record_type: RecordType,
    /// Which query of its lookup this is (0 for the first): the caller
    /// asks the next upstream resolver on each retry.
    pub attempt: u32,
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
    /// Lookups that failed for want of an answer.
    pub timeouts: u64,
    /// Lookups refused because [`MAX_LOOKUPS`] were kept.
    pub refused: u64,
}

/// Name → addresses, looked up on request.
#[derive(Debug, Clone)]
pub struct Resolver {
    lookups: BTreeMap<(String, RecordType), Lookup>,
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
    /// A resolver with nothing to look up; `seed` varies the transaction
    /// identifiers.
    pub fn new(seed: u32) -> Resolver {
        Resolver {
            lookups: BTreeMap::new(),
            rng: seed | 1,
            stats: ResolverStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> ResolverStats {
        self.stats
    }

    /// Look `name` (lowercase) up for `record_type`, unless an answer is
    /// still fresh at `now` or a lookup is already under way.
    pub fn request(&mut self, name: &str, record_type: RecordType, now: Instant) {
        let key = (String::from(name), record_type);
        if !self.lookups.contains_key(&key) && self.lookups.len() >= MAX_LOOKUPS {
            self.stats.refused += 1;
            return;
        }
        let lookup = self.lookups.entry(key).or_insert(Lookup {
            answer: None,
            pending: None,
            wanted: false,
            next_query: None,
            attempts: 0,
            failed: false,
        });
        let fresh = lookup
            .answer
            .as_ref()
            .is_some_and(|(_, expires)| *expires > now);
        if fresh || lookup.wanted {
            return;
        }
        lookup.wanted = true;
        lookup.failed = false;
        lookup.attempts = 0;
        lookup.next_query = None;
    }

    /// Where the lookup of `name` for `record_type` stands at `now`.
    pub fn outcome(&self, name: &str, record_type: RecordType, now: Instant) -> Outcome {
        let Some(lookup) = self.lookups.get(&(String::from(name), record_type)) else {
            return Outcome::Failed;
        };
        if lookup.failed {
            return Outcome::Failed;
        }
        match &lookup.answer {
            // The latest answer, unless a new request waits for a newer one.
            Some((addrs, expires)) if *expires > now || !lookup.wanted => {
                if addrs.is_empty() {
                    Outcome::Failed
                } else {
                    Outcome::Resolved(addrs.clone())
                }
            }
            _ if lookup.wanted => Outcome::Pending,
            _ => Outcome::Failed,
        }
    }

    /// Fail every lookup under way (there is no resolver to ask).
    pub fn fail_pending(&mut self) {
        for lookup in self.lookups.values_mut() {
            if lookup.wanted {
                lookup.wanted = false;
                lookup.pending = None;
                lookup.failed = true;
            }
        }
    }

    /// Forget every lookup whose name `keep` refuses.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.lookups.retain(|(name, _), _| keep(name));
    }

    /// Set the addresses of `name` directly (for platforms with another
    /// source of names); they hold for [`MAX_TTL`].
    pub fn set_addresses(&mut self, name: &str, addrs: Vec<IpAddr>, now: Instant) {
        let name = name.to_ascii_lowercase();
        for record_type in [RecordType::A, RecordType::Aaaa] {
            let wanted: Vec<IpAddr> = addrs
                .iter()
                .copied()
                .filter(|a| RecordType::for_family_of(a) == record_type)
                .collect();
            self.lookups.insert(
                (name.clone(), record_type),
                Lookup {
                    answer: Some((wanted, now + MAX_TTL)),
                    pending: None,
                    wanted: false,
                    next_query: None,
                    attempts: 0,
                    failed: false,
                },
            );
        }
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

    /// The queries due at `now`; lookups whose last query went unanswered
    /// fail here.
    pub fn due_queries(&mut self, now: Instant) -> Vec<Query> {
        let due: Vec<(String, RecordType)> = self
            .lookups
            .iter()
            .filter(|(_, l)| l.wanted && l.next_query.is_none_or(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        let mut queries = Vec::new();
        for key in due {
            let id = self.next_id();
            let Some(lookup) = self.lookups.get_mut(&key) else {
                continue;
            };
            let name = encode_name(&key.0);
            if lookup.attempts >= MAX_ATTEMPTS || name.is_none() {
                lookup.wanted = false;
                lookup.pending = None;
                lookup.failed = true;
                self.stats.timeouts += 1;
                continue;
            }
            let Some(name) = name else {
                continue;
            };
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
            lookup.pending = Some(id);
            lookup.next_query = Some(now + RETRY_FIRST * (1 << lookup.attempts));
            let attempt = lookup.attempts;
            lookup.attempts += 1;
            self.stats.queries += 1;
            queries.push(Query {
                message,
                record_type: key.1,
                attempt,
            });
        }
        queries
    }

    /// Accept an answer (UDP payload from the upstream resolver). Returns
    /// the name it answered.
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
        lookup.answer = Some((addrs, now + ttl));
        lookup.pending = None;
        lookup.wanted = false;
        lookup.failed = false;
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

    fn nxdomain(query: &[u8]) -> Vec<u8> {
        let mut out = query.to_vec();
        out[2] = 0x81;
        out[3] = 0x83;
        out
    }

    #[test]
    fn a_request_is_answered_once_and_cached_for_its_ttl() {
        let mut resolver = Resolver::new(42);
        let addr = Ipv4Addr::new(93, 184, 216, 34);
        resolver.request("example.com", RecordType::A, Instant::from_secs(0));
        assert_eq!(
            resolver.outcome("example.com", RecordType::A, Instant::from_secs(0)),
            Outcome::Pending
        );
        let query = resolver.due_queries(Instant::from_secs(0)).remove(0);
        assert!(resolver.due_queries(Instant::from_secs(1)).is_empty());
        let reply = answer(&query.message, 60, &[addr]);
        assert_eq!(
            resolver.on_response(Instant::from_secs(1), &reply),
            Some("example.com".into())
        );
        let resolved = Outcome::Resolved(vec![IpAddr::V4(addr)]);
        assert_eq!(
            resolver.outcome("example.com", RecordType::A, Instant::from_secs(1)),
            resolved
        );
        // A second load within the TTL asks nothing.
        resolver.request("example.com", RecordType::A, Instant::from_secs(30));
        assert!(resolver.due_queries(Instant::from_secs(30)).is_empty());
        // Nothing is asked again without a request: no refresh.
        assert!(resolver.due_queries(Instant::from_secs(1000)).is_empty());
        // After the TTL a request asks again.
        resolver.request("example.com", RecordType::A, Instant::from_secs(1000));
        assert_eq!(resolver.due_queries(Instant::from_secs(1000)).len(), 1);
        assert_eq!(resolver.stats().queries, 2);
    }

    #[test]
    fn unanswered_lookups_retry_then_fail() {
        let mut resolver = Resolver::new(7);
        resolver.request("slow.example", RecordType::A, Instant::from_secs(0));
        let mut times = Vec::new();
        for second in 0..40 {
            let now = Instant::from_secs(second);
            if !resolver.due_queries(now).is_empty() {
                times.push(second);
            }
            if resolver.outcome("slow.example", RecordType::A, now) == Outcome::Failed {
                assert_eq!(second, 14);
                break;
            }
        }
        assert_eq!(times, vec![0, 2, 6]);
        assert_eq!(resolver.stats().timeouts, 1);
    }

    #[test]
    fn nxdomain_fails_and_no_resolver_fails() {
        let mut resolver = Resolver::new(3);
        resolver.request("nowhere.example", RecordType::A, Instant::from_secs(0));
        let query = resolver.due_queries(Instant::from_secs(0)).remove(0);
        assert!(resolver
            .on_response(Instant::from_secs(0), &nxdomain(&query.message))
            .is_some());
        assert_eq!(
            resolver.outcome("nowhere.example", RecordType::A, Instant::from_secs(0)),
            Outcome::Failed
        );
        resolver.request("other.example", RecordType::Aaaa, Instant::from_secs(0));
        resolver.fail_pending();
        assert_eq!(
            resolver.outcome("other.example", RecordType::Aaaa, Instant::from_secs(0)),
            Outcome::Failed
        );
        assert_eq!(
            resolver.outcome("never.example", RecordType::A, Instant::from_secs(0)),
            Outcome::Failed
        );
    }

    #[test]
    fn answers_must_match_a_pending_question() {
        let mut resolver = Resolver::new(9);
        resolver.request("a.example", RecordType::A, Instant::from_secs(0));
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
        assert_eq!(
            resolver.outcome("a.example", RecordType::A, Instant::from_secs(0)),
            Outcome::Pending
        );
        assert_eq!(resolver.stats().ignored, 3);
        let good = answer(&query.message, 1, &[addr]);
        assert!(resolver.on_response(Instant::from_secs(0), &good).is_some());
        // A replayed answer no longer matches.
        assert_eq!(resolver.on_response(Instant::from_secs(0), &good), None);
        // TTL 1 is clamped to 5 s.
        resolver.request("a.example", RecordType::A, Instant::from_secs(4));
        assert!(resolver.due_queries(Instant::from_secs(4)).is_empty());
        resolver.request("a.example", RecordType::A, Instant::from_secs(5));
        assert_eq!(resolver.due_queries(Instant::from_secs(5)).len(), 1);
    }

    #[test]
    fn lookups_are_bounded_and_forgotten() {
        let mut resolver = Resolver::new(1);
        for i in 0..MAX_LOOKUPS + 10 {
            resolver.request(
                &alloc::format!("n{i}"),
                RecordType::A,
                Instant::from_secs(0),
            );
        }
        assert_eq!(resolver.stats().refused, 10);
        resolver.retain(|name| name == "n1");
        assert_eq!(resolver.due_queries(Instant::from_secs(0)).len(), 1);
    }
}
