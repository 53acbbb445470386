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
//!
//! Each query leaves from a random source port (in [`QUERY_PORTS`], one
//! no flow of the firewall's NAT uses towards that resolver) with a random
//! transaction id, both from the platform's [`RandomSource`]; an answer is
//! accepted only from the resolver asked, from port 53, to that port, with
//! that id, for that name and record type. Anything else is ignored and
//! counted ([`ResolverStats::ignored`]). Without random bytes no query is
//! sent ([`ResolverStats::no_randomness`]) and the lookup fails.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;
use core::net::IpAddr;
use core::ops::RangeInclusive;

use crate::random::RandomSource;

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{DnsPacket, DnsQuestion, DnsRecord, DnsRecordData};

/// The uplink ports queries are sent from, one chosen at random per
/// query (NAT never hands out a port a pending query uses towards the
/// same resolver, and a query never takes one a flow to it uses).
pub const QUERY_PORTS: RangeInclusive<u16> = 1024..=65535;
/// The DNS port, which answers come from.
pub const DNS_PORT: u16 = 53;
/// Random ports tried per query before it is skipped as if sent.
pub const PORT_TRIES: usize = 8;
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
    pending: Option<Pending>,
    /// Whether a query is wanted (requested and not yet answered).
    wanted: bool,
    /// When to send the next query; `None` means at the first chance.
    next_query: Option<Instant>,
    /// Queries sent for the current request.
    attempts: u32,
    /// The current request failed.
    failed: bool,
}

/// A query in flight: what its answer must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    /// The transaction id.
    id: u16,
    /// The resolver asked.
    upstream: IpAddr,
    /// Our source port.
    port: u16,
}

/// A query to send: the DNS message from our `src_port` to
/// `upstream`:[`DNS_PORT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// The DNS message (UDP payload).
    pub message: Vec<u8>,
    /// Address family of the record type.
    pub record_type: RecordType,
    /// Which query of its lookup this is (0 for the first): each retry
    /// asks the next upstream resolver.
    pub attempt: u32,
    /// The resolver to ask.
    pub upstream: IpAddr,
    /// The source port (random, see [`QUERY_PORTS`]).
    pub src_port: u16,
}

/// Counters of the resolver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResolverStats {
    /// Queries sent.
    pub queries: u64,
    /// Answers accepted.
    pub answers: u64,
    /// Messages ignored: from another address or port than the query
    /// went to, to another port than it came from, with another
    /// transaction id, name or record type, or malformed.
    pub ignored: u64,
    /// Queries not sent for want of random bytes (the lookup goes on as
    /// if the query went unanswered, and fails).
    pub no_randomness: u64,
    /// Lookups that failed for want of an answer.
    pub timeouts: u64,
    /// Lookups refused because [`MAX_LOOKUPS`] were kept.
    pub refused: u64,
}

/// Name → addresses, looked up on request.
pub struct Resolver {
    lookups: BTreeMap<(String, RecordType), Lookup>,
    /// (upstream, our port) of every query in flight: the `pending` of
    /// the lookups, indexed, since NAT asks for each new flow.
    awaiting: BTreeSet<(IpAddr, u16)>,
    random: Box<dyn RandomSource>,
    stats: ResolverStats,
}

impl core::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Resolver")
            .field("lookups", &self.lookups)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Forget `lookup`'s query in flight, and its entry in `awaiting`.
fn clear_pending(awaiting: &mut BTreeSet<(IpAddr, u16)>, lookup: &mut Lookup) {
    if let Some(p) = lookup.pending.take() {
        awaiting.remove(&(p.upstream, p.port));
    }
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
    /// A resolver with nothing to look up, taking its source ports and
    /// transaction ids from `random`.
    pub fn new(random: Box<dyn RandomSource>) -> Resolver {
        Resolver {
            lookups: BTreeMap::new(),
            awaiting: BTreeSet::new(),
            random,
            stats: ResolverStats::default(),
        }
    }

    /// Whether a query in flight went to `upstream` from `port` (so a
    /// datagram from `upstream` to `port` is the resolver's, and NAT must
    /// not give `port` to a flow towards `upstream`:53).
    pub fn expects(&self, upstream: IpAddr, port: u16) -> bool {
        self.awaiting.contains(&(upstream, port))
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
                clear_pending(&mut self.awaiting, lookup);
                lookup.failed = true;
            }
        }
    }

    /// Forget every lookup whose name `keep` refuses.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let awaiting = &mut self.awaiting;
        self.lookups.retain(|(name, _), lookup| {
            let kept = keep(name);
            if !kept {
                clear_pending(awaiting, lookup);
            }
            kept
        });
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
            let old = self.lookups.insert(
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
            if let Some(mut old) = old {
                clear_pending(&mut self.awaiting, &mut old);
            }
        }
    }

    /// A random transaction id and a source port towards `upstream` that
    /// `port_free` accepts and no query in flight uses; `None` (counted)
    /// without random bytes or a free port.
    fn transaction(
        &mut self,
        upstream: IpAddr,
        port_free: &mut dyn FnMut(IpAddr, u16) -> bool,
    ) -> Option<(u16, u16)> {
        let span = u32::from(QUERY_PORTS.end() - QUERY_PORTS.start()) + 1;
        for _ in 0..PORT_TRIES {
            let mut bytes = [0u8; 6];
            if self.random.fill(&mut bytes).is_err() {
                self.stats.no_randomness += 1;
                return None;
            }
            let id = u16::from_le_bytes([bytes[0], bytes[1]]);
            let r = u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
            // Below 2^32 / span of bias: negligible for 64512 ports.
            let port = QUERY_PORTS.start() + (r % span) as u16;
            if port_free(upstream, port) && !self.expects(upstream, port) {
                return Some((id, port));
            }
        }
        None
    }

    /// The queries due at `now`, each to the next of `upstreams` (none:
    /// the attempt passes unsent) from a random port `port_free` accepts
    /// (the caller's NAT has no flow from it to that resolver's port 53);
    /// lookups whose last query went unanswered fail here.
    pub fn due_queries(
        &mut self,
        now: Instant,
        upstreams: &[IpAddr],
        mut port_free: impl FnMut(IpAddr, u16) -> bool,
    ) -> Vec<Query> {
        let due: Vec<(String, RecordType)> = self
            .lookups
            .iter()
            .filter(|(_, l)| l.wanted && l.next_query.is_none_or(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        let mut queries = Vec::new();
        for key in due {
            let Some(lookup) = self.lookups.get_mut(&key) else {
                continue;
            };
            let attempt = lookup.attempts;
            let name = encode_name(&key.0);
            if attempt >= MAX_ATTEMPTS || name.is_none() {
                lookup.wanted = false;
                clear_pending(&mut self.awaiting, lookup);
                lookup.failed = true;
                self.stats.timeouts += 1;
                continue;
            }
            let Some(name) = name else {
                continue;
            };
            clear_pending(&mut self.awaiting, lookup);
            lookup.next_query = Some(now + RETRY_FIRST * (1 << attempt));
            lookup.attempts += 1;
            let Some(upstream) = upstreams
                .get(attempt as usize % upstreams.len().max(1))
                .copied()
            else {
                continue;
            };
            let Some((id, src_port)) = self.transaction(upstream, &mut port_free) else {
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
            if let Some(lookup) = self.lookups.get_mut(&key) {
                lookup.pending = Some(Pending {
                    id,
                    upstream,
                    port: src_port,
                });
                self.awaiting.insert((upstream, src_port));
            }
            self.stats.queries += 1;
            queries.push(Query {
                message,
                record_type: key.1,
                attempt,
                upstream,
                src_port,
            });
        }
        queries
    }

    /// Accept an answer: the UDP payload `message` that came from
    /// `src`:`src_port` to our `dst_port`. Returns the name it answered;
    /// `None` (counted in [`ResolverStats::ignored`]) unless it matches a
    /// query in flight in every respect.
    pub fn on_response(
        &mut self,
        now: Instant,
        src: IpAddr,
        src_port: u16,
        dst_port: u16,
        message: &[u8],
    ) -> Option<String> {
        let result = if src_port == DNS_PORT {
            self.parse_response(now, src, dst_port, message)
        } else {
            None
        };
        if result.is_none() {
            self.stats.ignored += 1;
        }
        result
    }

    fn parse_response(
        &mut self,
        now: Instant,
        src: IpAddr,
        dst_port: u16,
        message: &[u8],
    ) -> Option<String> {
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
                lookup.pending
                    == Some(Pending {
                        id,
                        upstream: src,
                        port: dst_port,
                    })
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
        clear_pending(&mut self.awaiting, lookup);
        lookup.wanted = false;
        lookup.failed = false;
        self.stats.answers += 1;
        Some(key.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::{NoRandomness, Unavailable};
    use alloc::vec;
    use core::net::Ipv4Addr;

    /// A deterministic source for tests (xorshift64).
    struct TestRandom(u64);

    impl RandomSource for TestRandom {
        fn fill(&mut self, buf: &mut [u8]) -> Result<(), NoRandomness> {
            for b in buf {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                *b = (self.0 >> 24) as u8;
            }
            Ok(())
        }
    }

    const UPSTREAM: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53));
    const OTHER_UPSTREAM: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 54));

    fn resolver(seed: u64) -> Resolver {
        Resolver::new(Box::new(TestRandom(seed | 1)))
    }

    /// The queries due at `now` to [`UPSTREAM`], any port free.
    fn due(resolver: &mut Resolver, now: Instant) -> Vec<Query> {
        resolver.due_queries(now, &[UPSTREAM], |_, _| true)
    }

    /// `message` as the upstream's answer to `query`.
    fn respond(
        resolver: &mut Resolver,
        now: Instant,
        query: &Query,
        message: &[u8],
    ) -> Option<String> {
        resolver.on_response(now, query.upstream, DNS_PORT, query.src_port, message)
    }

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
        let mut resolver = resolver(42);
        let addr = Ipv4Addr::new(93, 184, 216, 34);
        resolver.request("example.com", RecordType::A, Instant::from_secs(0));
        assert_eq!(
            resolver.outcome("example.com", RecordType::A, Instant::from_secs(0)),
            Outcome::Pending
        );
        let query = due(&mut resolver, Instant::from_secs(0)).remove(0);
        assert!(due(&mut resolver, Instant::from_secs(1)).is_empty());
        let reply = answer(&query.message, 60, &[addr]);
        assert_eq!(
            respond(&mut resolver, Instant::from_secs(1), &query, &reply),
            Some("example.com".into())
        );
        let resolved = Outcome::Resolved(vec![IpAddr::V4(addr)]);
        assert_eq!(
            resolver.outcome("example.com", RecordType::A, Instant::from_secs(1)),
            resolved
        );
        // A second load within the TTL asks nothing.
        resolver.request("example.com", RecordType::A, Instant::from_secs(30));
        assert!(due(&mut resolver, Instant::from_secs(30)).is_empty());
        // Nothing is asked again without a request: no refresh.
        assert!(due(&mut resolver, Instant::from_secs(1000)).is_empty());
        // After the TTL a request asks again.
        resolver.request("example.com", RecordType::A, Instant::from_secs(1000));
        assert_eq!(due(&mut resolver, Instant::from_secs(1000)).len(), 1);
        assert_eq!(resolver.stats().queries, 2);
    }

    #[test]
    fn unanswered_lookups_retry_then_fail() {
        let mut resolver = resolver(7);
        resolver.request("slow.example", RecordType::A, Instant::from_secs(0));
        let mut times = Vec::new();
        for second in 0..40 {
            let now = Instant::from_secs(second);
            if !due(&mut resolver, now).is_empty() {
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
        let mut resolver = resolver(3);
        resolver.request("nowhere.example", RecordType::A, Instant::from_secs(0));
        let query = due(&mut resolver, Instant::from_secs(0)).remove(0);
        assert!(resolver
            .on_response(
                Instant::from_secs(0),
                UPSTREAM,
                DNS_PORT,
                query.src_port,
                &nxdomain(&query.message)
            )
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
        let mut resolver = resolver(9);
        resolver.request("a.example", RecordType::A, Instant::from_secs(0));
        let query = due(&mut resolver, Instant::from_secs(0)).remove(0);
        let addr = Ipv4Addr::new(192, 0, 2, 1);
        let mut wrong_id = answer(&query.message, 60, &[addr]);
        wrong_id[0] ^= 0xff;
        assert_eq!(
            respond(&mut resolver, Instant::from_secs(0), &query, &wrong_id),
            None
        );
        assert_eq!(
            respond(&mut resolver, Instant::from_secs(0), &query, &[1, 2, 3]),
            None
        );
        assert_eq!(
            respond(
                &mut resolver,
                Instant::from_secs(0),
                &query,
                &query.message[..15]
            ),
            None
        );
        assert_eq!(
            resolver.outcome("a.example", RecordType::A, Instant::from_secs(0)),
            Outcome::Pending
        );
        assert_eq!(resolver.stats().ignored, 3);
        let good = answer(&query.message, 1, &[addr]);
        assert!(respond(&mut resolver, Instant::from_secs(0), &query, &good).is_some());
        // A replayed answer no longer matches.
        assert_eq!(
            respond(&mut resolver, Instant::from_secs(0), &query, &good),
            None
        );
        // TTL 1 is clamped to 5 s.
        resolver.request("a.example", RecordType::A, Instant::from_secs(4));
        assert!(due(&mut resolver, Instant::from_secs(4)).is_empty());
        resolver.request("a.example", RecordType::A, Instant::from_secs(5));
        assert_eq!(due(&mut resolver, Instant::from_secs(5)).len(), 1);
    }

    #[test]
    fn lookups_are_bounded_and_forgotten() {
        let mut resolver = resolver(1);
        for i in 0..MAX_LOOKUPS + 10 {
            resolver.request(
                &alloc::format!("n{i}"),
                RecordType::A,
                Instant::from_secs(0),
            );
        }
        assert_eq!(resolver.stats().refused, 10);
        resolver.retain(|name| name == "n1");
        assert_eq!(due(&mut resolver, Instant::from_secs(0)).len(), 1);
    }

    /// An AAAA question for the name of `query` with `query`'s id.
    fn as_aaaa(query: &[u8]) -> Vec<u8> {
        let mut out = query.to_vec();
        let n = out.len();
        out[n - 3] = 28;
        out
    }

    #[test]
    fn only_the_exact_answer_is_accepted_every_mismatch_is_counted() {
        let mut resolver = resolver(11);
        let now = Instant::from_secs(0);
        resolver.request("a.example", RecordType::A, now);
        resolver.request("b.example", RecordType::A, now);
        let queries = due(&mut resolver, now);
        assert_eq!(queries.len(), 2);
        let query = queries
            .iter()
            .find(|q| q.message.windows(10).any(|w| w == b"\x01a\x07example"))
            .unwrap()
            .clone();
        let other = queries.iter().find(|q| **q != query).unwrap().clone();
        let addr = Ipv4Addr::new(192, 0, 2, 1);
        let good = answer(&query.message, 60, &[addr]);
        let (src, port) = (query.upstream, query.src_port);
        let mut ignored = 0;
        let mut refused = |resolver: &mut Resolver, what: &str, r: Option<String>| {
            ignored += 1;
            assert_eq!(r, None, "{what} accepted");
            assert_eq!(resolver.stats().ignored, ignored, "{what} not counted");
            assert_eq!(
                resolver.outcome("a.example", RecordType::A, now),
                Outcome::Pending,
                "{what} changed the lookup"
            );
        };
        // Another resolver's address.
        let r = resolver.on_response(now, OTHER_UPSTREAM, DNS_PORT, port, &good);
        refused(&mut resolver, "another source address", r);
        // Not from port 53.
        let r = resolver.on_response(now, src, 5353, port, &good);
        refused(&mut resolver, "another source port", r);
        // To another of our ports (the other query's).
        let r = resolver.on_response(now, src, DNS_PORT, other.src_port, &good);
        refused(&mut resolver, "another destination port", r);
        // Another transaction id.
        let mut wrong_id = good.clone();
        wrong_id[0] ^= 0x5a;
        let r = resolver.on_response(now, src, DNS_PORT, port, &wrong_id);
        refused(&mut resolver, "another transaction id", r);
        // Another name: b.example's question with a.example's id and port.
        let mut wrong_name = answer(&other.message, 60, &[addr]);
        wrong_name[..2].copy_from_slice(&good[..2]);
        let r = resolver.on_response(now, src, DNS_PORT, port, &wrong_name);
        refused(&mut resolver, "another name", r);
        // Another record type.
        let wrong_type = as_aaaa(&good[..query.message.len()]);
        let r = resolver.on_response(now, src, DNS_PORT, port, &wrong_type);
        refused(&mut resolver, "another record type", r);
        // The exact answer.
        assert_eq!(
            resolver.on_response(now, src, DNS_PORT, port, &good),
            Some("a.example".into())
        );
        assert_eq!(
            resolver.outcome("a.example", RecordType::A, now),
            Outcome::Resolved(vec![IpAddr::V4(addr)])
        );
        assert_eq!(resolver.stats().answers, 1);
    }

    #[test]
    fn ports_and_ids_are_random_and_avoid_busy_ports() {
        let mut resolver = resolver(5);
        let now = Instant::from_secs(0);
        for i in 0..64 {
            resolver.request(&alloc::format!("n{i}.example"), RecordType::A, now);
        }
        // Even ports are taken by flows.
        let free = |_: IpAddr, port: u16| port % 2 == 1;
        let queries = resolver.due_queries(now, &[UPSTREAM], free);
        assert_eq!(queries.len(), 64);
        let mut ports: Vec<u16> = queries.iter().map(|q| q.src_port).collect();
        let mut ids: Vec<u16> = queries
            .iter()
            .map(|q| u16::from_be_bytes([q.message[0], q.message[1]]))
            .collect();
        assert!(ports.iter().all(|p| p % 2 == 1 && QUERY_PORTS.contains(p)));
        ports.sort();
        ports.dedup();
        ids.sort();
        ids.dedup();
        assert!(ports.len() > 60, "ports repeat: {ports:?}");
        assert!(ids.len() > 60, "ids repeat: {ids:?}");
        for q in &queries {
            assert!(resolver.expects(UPSTREAM, q.src_port));
            assert!(!resolver.expects(OTHER_UPSTREAM, q.src_port));
        }
        // Retries go to the next upstream, from a new port.
        let mut resolver2 = self::resolver(6);
        resolver2.request("x.example", RecordType::A, now);
        let upstreams = [UPSTREAM, OTHER_UPSTREAM];
        let first = resolver2
            .due_queries(now, &upstreams, |_, _| true)
            .remove(0);
        let retry = resolver2
            .due_queries(Instant::from_secs(2), &upstreams, |_, _| true)
            .remove(0);
        assert_eq!((first.upstream, retry.upstream), (UPSTREAM, OTHER_UPSTREAM));
        assert!(
            !resolver2.expects(UPSTREAM, first.src_port),
            "old query forgotten"
        );
        assert!(resolver2.expects(OTHER_UPSTREAM, retry.src_port));
        // Every port taken: no query, the lookup fails in time.
        let mut resolver3 = self::resolver(7);
        resolver3.request("y.example", RecordType::A, now);
        assert!(resolver3
            .due_queries(now, &[UPSTREAM], |_, _| false)
            .is_empty());
        assert_eq!(resolver3.stats().queries, 0);
    }

    #[test]
    fn without_random_bytes_nothing_is_sent_and_the_lookup_fails() {
        let mut resolver = Resolver::new(Box::new(Unavailable));
        resolver.request("z.example", RecordType::A, Instant::from_secs(0));
        for second in 0..20 {
            let now = Instant::from_secs(second);
            assert!(resolver
                .due_queries(now, &[UPSTREAM], |_, _| true)
                .is_empty());
        }
        assert_eq!(resolver.stats().queries, 0);
        assert_eq!(resolver.stats().no_randomness, MAX_ATTEMPTS as u64);
        assert_eq!(
            resolver.outcome("z.example", RecordType::A, Instant::from_secs(20)),
            Outcome::Failed
        );
    }

    #[test]
    fn ports_in_flight_are_forgotten_with_their_query() {
        let now = Instant::from_secs(0);
        let mut resolver = resolver(21);
        for name in ["a.example", "b.example", "c.example", "d.example"] {
            resolver.request(name, RecordType::A, now);
        }
        let queries = due(&mut resolver, now);
        assert_eq!(queries.len(), 4);
        assert!(queries
            .iter()
            .all(|q| resolver.expects(UPSTREAM, q.src_port)));
        let by_name = |n: &[u8]| {
            queries
                .iter()
                .find(|q| q.message.windows(n.len()).any(|w| w == n))
                .unwrap()
                .clone()
        };
        // Answered.
        let a = by_name(b"\x01a\x07example");
        let reply = answer(&a.message, 60, &[Ipv4Addr::new(192, 0, 2, 1)]);
        assert!(respond(&mut resolver, now, &a, &reply).is_some());
        assert!(!resolver.expects(UPSTREAM, a.src_port));
        // Forgotten with its name.
        let b = by_name(b"\x01b\x07example");
        resolver.retain(|name| name != "b.example");
        assert!(!resolver.expects(UPSTREAM, b.src_port));
        // Replaced by addresses from elsewhere.
        let c = by_name(b"\x01c\x07example");
        resolver.set_addresses("c.example", vec![], now);
        assert!(!resolver.expects(UPSTREAM, c.src_port));
        // Failed for want of a resolver.
        let d = by_name(b"\x01d\x07example");
        assert!(resolver.expects(UPSTREAM, d.src_port));
        resolver.fail_pending();
        assert!(!resolver.expects(UPSTREAM, d.src_port));
    }
}
