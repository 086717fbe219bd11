//! `net_fetch`: an HTTP GET of a URL chosen by an untrusted agent, held to a [`FetchPolicy`].
//!
//! Every hop (the first URL and each redirect target) goes through the same steps:
//! 1. [`check_url`] checks it lexically: scheme, host allowlist, port, and IP literals as
//!    addresses. The URL is parsed with `http::Uri`; user info, backslashes, whitespace and
//!    non-canonical numeric IPv4 forms (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`) are refused
//!    outright, because other parsers read them differently.
//! 2. The host is resolved here and every resolved address is classified ([`classify`]); one
//!    non-public address refuses the hop unless `allow_private` is set.
//! 3. ureq connects to exactly one of those checked addresses: its resolver is replaced by one that
//!    returns only that address, so the client never looks the name up a second time (a DNS
//!    rebinding answer between check and connect is never used).
//! 4. A redirect is not followed by ureq (`max_redirects(0)`); its `Location` is resolved here
//!    against the current URL and goes back to step 1.
//!
//! Why ureq with a pinned resolver rather than a hand-written HTTP/1.1 client: ureq 3's
//! `Resolver` is the only source of connect addresses for its TCP connector, so pinning it closes
//! the rebinding gap for http and https alike, while https keeps rustls' certificate check against
//! the URL's host name and http needs no second response parser. The connector chain is TCP then
//! rustls only, and the proxy is set to none: a proxy taken from `HTTP_PROXY` would make the
//! checked address meaningless.
//!
//! The body is read while it streams, at most `max_bytes + 1` bytes (the extra byte tells that it
//! was cut), then the connection is dropped; a `Content-Length` is never used to size anything.
//! One deadline (`total_timeout`) covers DNS, every connect, every redirect and the body: ureq's
//! global timeout is set to what is left of it on each hop, the body reader checks it between
//! reads, and the whole fetch also runs under a tokio timeout of the same length.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ureq::http::Uri;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{Connector, NextTimeout, RustlsConnector, TcpConnector};

use crate::common::{DriverError, Trial};

/// Schemes this driver can speak; `allow_schemes` can only narrow them.
const SUPPORTED_SCHEMES: [&str; 2] = ["http", "https"];

/// Statuses whose `Location` is followed.
const REDIRECT_STATUSES: [u16; 5] = [301, 302, 303, 307, 308];

/// Most resolved addresses kept for one host.
const MAX_ADDRESSES: usize = 16;

/// Bytes asked of the body reader per read.
const READ_CHUNK: usize = 16 * 1024;

/// Longest URL quoted back in an error message.
const SHOWN_URL_CHARS: usize = 200;

/// What a fetch may reach and how much it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPolicy {
    /// Hosts that may be fetched: exact names, IP literals (`127.0.0.1`, `::1` or `[::1]`), or
    /// `*.example.com` (subdomains of example.com, not example.com itself). Empty denies all.
    pub allow_hosts: Vec<String>,
    /// Schemes that may be fetched; only `http` and `https` are ever fetched.
    pub allow_schemes: Vec<String>,
    /// Ports that may be connected to; `None` allows any port.
    pub allow_ports: Option<Vec<u16>>,
    /// Whether non-public addresses (see [`AddressClass`]) may be connected to.
    pub allow_private: bool,
    /// Body bytes kept; the body is cut while it streams, whatever `Content-Length` says.
    pub max_bytes: usize,
    /// Longest wait for one TCP connect (and TLS handshake).
    pub connect_timeout: Duration,
    /// Longest time for the whole fetch: DNS, connects, redirects and the body.
    pub total_timeout: Duration,
    /// Redirects followed; each target is checked against the whole policy.
    pub max_redirects: usize,
}

impl Default for FetchPolicy {
    /// No hosts, http and https, any port, public addresses only, 256 KiB, 5 s connect,
    /// 20 s total, 5 redirects.
    fn default() -> Self {
        FetchPolicy {
            allow_hosts: Vec::new(),
            allow_schemes: vec!["http".to_string(), "https".to_string()],
            allow_ports: None,
            allow_private: false,
            max_bytes: 256 * 1024,
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(20),
            max_redirects: 5,
        }
    }
}

/// The answer to a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The URL of the final hop (after redirects).
    pub url: String,
    /// The final HTTP status; non-2xx statuses are answers, not errors.
    pub status: u16,
    /// The final `Content-Type` header, when present and text.
    pub content_type: Option<String>,
    /// The kept body bytes, decoded as UTF-8 with invalid sequences replaced.
    pub body: String,
    /// Whether the body went on past `max_bytes` and was cut.
    pub truncated: bool,
    /// Redirects followed before the final answer.
    pub redirects: usize,
    /// The address the final hop was connected to.
    pub address: SocketAddr,
}

/// A URL that passed [`check_url`]: what is requested and where it may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The parsed URL, handed as is to the HTTP client (request line, `Host`, TLS server name).
    pub uri: Uri,
    /// `http` or `https`.
    pub scheme: String,
    /// The host, lowercased, without a trailing dot and without IPv6 brackets.
    pub host: String,
    /// The explicit port, or the scheme's default port.
    pub port: u16,
    /// The address when the host is an IP literal (nothing is resolved for it).
    pub ip: Option<IpAddr>,
}

/// What kind of address an IP is, for the private-address check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// A public unicast address.
    Public,
    /// `0.0.0.0` or `::`.
    Unspecified,
    /// `0.0.0.0/8` other than `0.0.0.0` ("this network").
    ThisNetwork,
    /// `127.0.0.0/8` or `::1`.
    Loopback,
    /// RFC 1918 (`10/8`, `172.16/12`, `192.168/16`) or IPv6 unique local (`fc00::/7`).
    Private,
    /// Carrier-grade NAT shared space `100.64.0.0/10`.
    SharedCgnat,
    /// `169.254.0.0/16` (cloud metadata lives here) or `fe80::/10`.
    LinkLocal,
    /// `224.0.0.0/4` or `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// Other special-purpose ranges that are not public unicast: `192.0.0.0/24`, `198.18.0.0/15`,
    /// the documentation networks, `240.0.0.0/4`, IPv4-compatible `::/96`, `100::/64`,
    /// `2001::/32` (Teredo), `2001:db8::/32`, `fec0::/10`.
    Reserved,
}

impl AddressClass {
    /// Whether the class is [`AddressClass::Public`].
    pub fn is_public(self) -> bool {
        self == AddressClass::Public
    }

    /// The class in words, with an article, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            AddressClass::Public => "a public address",
            AddressClass::Unspecified => "the unspecified address",
            AddressClass::ThisNetwork => "a \"this network\" address (0.0.0.0/8)",
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private network address",
            AddressClass::SharedCgnat => "a carrier-grade NAT address (100.64.0.0/10)",
            AddressClass::LinkLocal => "a link-local address (where cloud metadata services live)",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Broadcast => "the broadcast address",
            AddressClass::Reserved => "a reserved special-purpose address",
        }
    }
}

/// The class of `ip`. IPv4-mapped (`::ffff:a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4
/// (`2002::/16`) addresses take the class of the IPv4 address they carry.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if a == 0 {
        AddressClass::ThisNetwork
    } else if a == 127 {
        AddressClass::Loopback
    } else if a == 10 || (a == 172 && (16..=31).contains(&b)) || (a == 192 && b == 168) {
        AddressClass::Private
    } else if a == 100 && (64..=127).contains(&b) {
        AddressClass::SharedCgnat
    } else if a == 169 && b == 254 {
        AddressClass::LinkLocal
    } else if ip.is_broadcast() {
        AddressClass::Broadcast
    } else if (224..=239).contains(&a) {
        AddressClass::Multicast
    } else if a >= 240
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
        || (a == 192 && b == 0 && c == 2)
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
    {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let segments = ip.segments();
    let embedded_tail = Ipv4Addr::new(
        (segments[6] >> 8) as u8,
        segments[6] as u8,
        (segments[7] >> 8) as u8,
        segments[7] as u8,
    );
    if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if let Some(v4) = ip.to_ipv4_mapped() {
        // The kernel connects `::ffff:127.0.0.1` to the IPv4 loopback.
        classify_v4(v4)
    } else if segments[..6] == [0, 0, 0, 0, 0, 0] {
        // Deprecated IPv4-compatible form `::a.b.c.d`; nothing public lives there.
        AddressClass::Reserved
    } else if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64 translates to the embedded IPv4 address, which may be internal.
        classify_v4(embedded_tail)
    } else if segments[0] == 0x2002 {
        // 6to4 tunnels to the embedded IPv4 address.
        classify_v4(Ipv4Addr::new(
            (segments[1] >> 8) as u8,
            segments[1] as u8,
            (segments[2] >> 8) as u8,
            segments[2] as u8,
        ))
    } else if (segments[0] & 0xfe00) == 0xfc00 {
        AddressClass::Private
    } else if (segments[0] & 0xffc0) == 0xfe80 {
        AddressClass::LinkLocal
    } else if (segments[0] & 0xff00) == 0xff00 {
        AddressClass::Multicast
    } else if (segments[0] & 0xffc0) == 0xfec0
        || (segments[0] == 0x2001 && segments[1] == 0x0db8)
        || (segments[0] == 0x2001 && segments[1] == 0)
        || segments[..4] == [0x100, 0, 0, 0]
    {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

/// Checks `url` without touching the network: an http(s) scheme allowed by the policy, an
/// absolute URL without user info, a host on the allowlist, an allowed port, and (for an IP
/// literal) an address the policy allows. Nothing is resolved; [`fetch`] checks resolved
/// addresses too.
pub fn check_url(policy: &FetchPolicy, url: &str) -> Result<Target, DriverError> {
    let url = url.trim();
    if let Some(bad) = url.chars().find(|c| *c == '\\' || c.is_whitespace() || c.is_control()) {
        return Err(DriverError::Denied(format!(
            "`{}` contains {}, which URL parsers disagree on; write the URL without it",
            shown(url),
            describe_char(bad)
        )));
    }
    let Some(scheme) = lexical_scheme(url) else {
        return Err(DriverError::Denied(format!(
            "`{}` is not an absolute URL; write it as http://host/path or https://host/path",
            shown(url)
        )));
    };
    let scheme = scheme.to_ascii_lowercase();
    if !SUPPORTED_SCHEMES.contains(&scheme.as_str()) {
        return Err(DriverError::Denied(format!(
            "`{}`: the scheme `{scheme}` is not fetched; only http and https are",
            shown(url)
        )));
    }
    if !policy
        .allow_schemes
        .iter()
        .any(|allowed| allowed.trim().eq_ignore_ascii_case(&scheme))
    {
        return Err(DriverError::Denied(format!(
            "`{}`: the scheme `{scheme}` is not allowed (allowed: {})",
            shown(url),
            policy.allow_schemes.join(", ")
        )));
    }
    let uri: Uri = url
        .parse()
        .map_err(|e| DriverError::Denied(format!("`{}` is not a valid URL: {e}", shown(url))))?;
    let Some(authority) = uri.authority().filter(|_| uri.scheme_str() == Some(scheme.as_str())) else {
        return Err(DriverError::Denied(format!(
            "`{}` is not an absolute URL with a host; write it as {scheme}://host/path",
            shown(url)
        )));
    };
    let raw_host = authority.host();
    if authority.as_str().contains('@') {
        return Err(DriverError::Denied(format!(
            "`{}`: user info (`name@` before the host) is refused because it disguises the host, \
             which here is `{raw_host}`",
            shown(url)
        )));
    }
    let host = parse_host(raw_host).map_err(|why| DriverError::Denied(format!("host `{raw_host}`: {why}")))?;
    let port_text = authority
        .as_str()
        .strip_prefix(raw_host)
        .ok_or_else(|| DriverError::Denied(format!("`{}`: the authority does not start with its host", shown(url))))?;
    let port = parse_port(port_text, &scheme).map_err(|why| DriverError::Denied(format!("host `{host}`: {why}")))?;
    let host_text = host.to_string();
    if policy.allow_hosts.is_empty() {
        return Err(DriverError::Denied(format!(
            "fetching from `{host_text}` is not allowed: the policy allows no hosts"
        )));
    }
    if !policy.allow_hosts.iter().any(|entry| host_matches(entry, &host)) {
        return Err(DriverError::Denied(format!(
            "fetching from `{host_text}` is not allowed: it is not on the host allowlist"
        )));
    }
    if let Some(ports) = &policy.allow_ports
        && !ports.contains(&port)
    {
        return Err(DriverError::Denied(format!(
            "fetching from `{host_text}` on port {port} is not allowed (allowed ports: {ports:?})"
        )));
    }
    let ip = match host {
        Host::Address(ip) => {
            check_address(policy, &host_text, ip)?;
            Some(ip)
        }
        Host::Name(_) => None,
    };
    Ok(Target {
        uri,
        scheme,
        host: host_text,
        port,
        ip,
    })
}

/// Fetches `url` with a GET under `policy`: each hop checked by [`check_url`], its resolved
/// addresses checked, the connection pinned to a checked address, redirects followed here, the
/// body cut at `max_bytes`, everything within `total_timeout`.
pub async fn fetch(policy: &FetchPolicy, url: &str) -> Result<Fetched, DriverError> {
    let deadline = deadline_after(policy.total_timeout);
    match tokio::time::timeout(policy.total_timeout, follow(policy, url, deadline)).await {
        Ok(result) => result,
        Err(_) => Err(DriverError::Timeout(millis(policy.total_timeout))),
    }
}

/// The redirect loop of [`fetch`].
async fn follow(policy: &FetchPolicy, url: &str, deadline: Instant) -> Result<Fetched, DriverError> {
    let mut target = check_url(policy, url)?;
    let mut redirects = 0;
    loop {
        let addresses = resolve_checked(policy, &target).await?;
        match run_hop(policy, &target, addresses, deadline).await? {
            Hop::Answer(mut fetched) => {
                fetched.redirects = redirects;
                return Ok(fetched);
            }
            Hop::Redirect { status, location } => {
                if redirects >= policy.max_redirects {
                    return Err(DriverError::Denied(format!(
                        "too many redirects: `{}` answered {status} after {redirects} redirects \
                         (at most {} are followed)",
                        target.uri, policy.max_redirects
                    )));
                }
                let next = resolve_location(&target.uri, &location);
                target = check_url(policy, &next).map_err(|e| match e {
                    DriverError::Denied(why) => DriverError::Denied(format!(
                        "redirect from `{}` to `{}` refused: {why}",
                        target.uri,
                        shown(&next)
                    )),
                    other => other,
                })?;
                redirects += 1;
            }
        }
    }
}

/// What one request answered.
#[derive(Debug)]
enum Hop {
    /// A final answer (`redirects` is filled in by the caller).
    Answer(Fetched),
    /// A redirect to follow.
    Redirect { status: u16, location: String },
}

/// The addresses `target` resolves to, each allowed by the policy.
async fn resolve_checked(policy: &FetchPolicy, target: &Target) -> Result<Vec<SocketAddr>, DriverError> {
    if let Some(ip) = target.ip {
        check_address(policy, &target.host, ip)?;
        return Ok(vec![SocketAddr::new(ip, target.port)]);
    }
    let found = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| DriverError::Io(format!("resolving `{}`: {e}", target.host)))?;
    let mut addresses: Vec<SocketAddr> = Vec::new();
    for address in found {
        if !addresses.contains(&address) && addresses.len() < MAX_ADDRESSES {
            addresses.push(address);
        }
    }
    if addresses.is_empty() {
        return Err(DriverError::Io(format!("`{}` resolved to no address", target.host)));
    }
    // One bad address refuses the host: a name that answers with a mix is not trusted.
    for address in &addresses {
        check_address(policy, &target.host, address.ip())?;
    }
    Ok(addresses)
}

/// One request on the blocking pool, connected only to `addresses`.
async fn run_hop(
    policy: &FetchPolicy,
    target: &Target,
    addresses: Vec<SocketAddr>,
    deadline: Instant,
) -> Result<Hop, DriverError> {
    let policy = policy.clone();
    let target = target.clone();
    let url = target.uri.to_string();
    tokio::task::spawn_blocking(move || request_hop(&policy, &target, &addresses, deadline))
        .await
        .map_err(|e| DriverError::Failed(format!("the fetch of `{}` stopped: {e}", shown(&url))))?
}

/// Sends the GET for `target` to the first of `addresses` that accepts a connection.
fn request_hop(
    policy: &FetchPolicy,
    target: &Target,
    addresses: &[SocketAddr],
    deadline: Instant,
) -> Result<Hop, DriverError> {
    let mut refusals = Vec::new();
    for &address in addresses {
        let remaining = deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or(DriverError::Timeout(millis(policy.total_timeout)))?;
        let connect_budget = policy.connect_timeout.min(remaining);
        let agent = pinned_agent(address, remaining, connect_budget);
        match agent.get(target.uri.clone()).call() {
            Ok(response) => return read_response(policy, target, address, response, deadline),
            // Only a connect fails with these, so the next checked address may still answer.
            Err(ureq::Error::Io(e)) if refused_at_connect(&e) => refusals.push(format!("{address}: {e}")),
            Err(e) => return Err(map_ureq_error(policy, connect_budget, target, address, e)),
        }
    }
    Err(DriverError::Io(format!(
        "could not connect to `{}` port {}: {}",
        target.host,
        target.port,
        refusals.join("; ")
    )))
}

/// A ureq agent that connects only to `address`, follows no redirect and uses no proxy.
fn pinned_agent(address: SocketAddr, remaining: Duration, connect_budget: Duration) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .proxy(None)
        .max_redirects(0)
        .http_status_as_error(false)
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .timeout_global(Some(remaining))
        .timeout_connect(Some(connect_budget))
        .build();
    let connector = ().chain(TcpConnector::default()).chain(RustlsConnector::default());
    ureq::Agent::with_parts(config, connector, PinnedResolver { address })
}

/// A resolver that answers every lookup with one address checked beforehand.
#[derive(Debug)]
struct PinnedResolver {
    address: SocketAddr,
}

impl Resolver for PinnedResolver {
    fn resolve(
        &self,
        _uri: &Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let mut addresses = self.empty();
        addresses.push(self.address);
        Ok(addresses)
    }
}

/// The redirect or the capped answer carried by `response`.
fn read_response(
    policy: &FetchPolicy,
    target: &Target,
    address: SocketAddr,
    response: ureq::http::Response<ureq::Body>,
    deadline: Instant,
) -> Result<Hop, DriverError> {
    let status = response.status().as_u16();
    if REDIRECT_STATUSES.contains(&status)
        && let Some(location) = response.headers().get("location")
    {
        let location = location.to_str().map_err(|_| {
            DriverError::Io(format!(
                "`{}` answered {status} with a Location that is not ASCII text",
                target.uri
            ))
        })?;
        // The response (and its connection) is dropped unread.
        return Ok(Hop::Redirect {
            status,
            location: location.to_string(),
        });
    }
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let mut reader = response.into_body().into_reader();
    let (kept, truncated) = read_capped(&mut reader, policy.max_bytes, deadline).map_err(|e| {
        if e.kind() == io::ErrorKind::TimedOut && !e.get_ref().is_some_and(|inner| inner.is::<ureq::Error>()) {
            DriverError::Timeout(millis(policy.total_timeout))
        } else {
            map_ureq_error(policy, policy.connect_timeout, target, address, ureq::Error::from(e))
        }
    })?;
    // Dropping the reader closes the connection with whatever the server still has to send.
    drop(reader);
    Ok(Hop::Answer(Fetched {
        url: target.uri.to_string(),
        status,
        content_type,
        body: String::from_utf8_lossy(&kept).into_owned(),
        truncated,
        redirects: 0,
        address,
    }))
}

/// Reads at most `cap + 1` bytes from `reader` (never holding more), stopping at `deadline`.
/// Returns at most `cap` bytes and whether there was more.
fn read_capped(reader: &mut impl Read, cap: usize, deadline: Instant) -> io::Result<(Vec<u8>, bool)> {
    let limit = cap.saturating_add(1);
    let mut kept: Vec<u8> = Vec::with_capacity(limit.min(READ_CHUNK));
    let mut chunk = vec![0u8; READ_CHUNK];
    while kept.len() < limit {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the total fetch time ran out while reading the body",
            ));
        }
        let wanted = (limit - kept.len()).min(READ_CHUNK);
        let read = match reader.read(&mut chunk[..wanted]) {
            Ok(0) => break,
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if kept.capacity() - kept.len() < read {
            // Grow by doubling but never past the limit, so the buffer stays within the cap.
            let grown = kept.capacity().saturating_mul(2).max(kept.len() + read).min(limit);
            kept.reserve_exact(grown - kept.len());
        }
        kept.extend_from_slice(&chunk[..read]);
    }
    let truncated = kept.len() > cap;
    kept.truncate(cap);
    Ok((kept, truncated))
}

/// Whether `error` is one that only a failed TCP connect to one address produces.
fn refused_at_connect(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::AddrNotAvailable
    )
}

fn map_ureq_error(
    policy: &FetchPolicy,
    connect_budget: Duration,
    target: &Target,
    address: SocketAddr,
    error: ureq::Error,
) -> DriverError {
    match error {
        ureq::Error::Timeout(ureq::Timeout::Connect) => DriverError::Timeout(millis(connect_budget)),
        ureq::Error::Timeout(_) => DriverError::Timeout(millis(policy.total_timeout)),
        ureq::Error::Io(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => {
            DriverError::Timeout(millis(policy.total_timeout))
        }
        other => DriverError::Io(format!("fetching `{}` from {address}: {other}", target.uri)),
    }
}

/// `location` (from a redirect) as an absolute URL, resolved against `base` (RFC 3986 5.2).
fn resolve_location(base: &Uri, location: &str) -> String {
    let location = location.trim();
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    if lexical_scheme(location).is_some() {
        return location.to_string();
    }
    if location.starts_with("//") {
        return format!("{scheme}:{location}");
    }
    if location.is_empty() || location.starts_with('#') {
        return base.to_string();
    }
    if location.starts_with('?') {
        return format!("{scheme}://{authority}{}{location}", base.path());
    }
    let split = location.find(['?', '#']).unwrap_or(location.len());
    let (path, rest) = location.split_at(split);
    let merged = if path.starts_with('/') {
        path.to_string()
    } else {
        let base_path = base.path();
        let directory = base_path.rfind('/').map(|end| &base_path[..=end]).unwrap_or("/");
        format!("{directory}{path}")
    };
    format!("{scheme}://{authority}{}{rest}", remove_dot_segments(&merged))
}

/// `path` (absolute) without `.` and `..` segments.
fn remove_dot_segments(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut kept: Vec<&str> = Vec::new();
    for (index, segment) in segments.iter().enumerate() {
        let last = index + 1 == segments.len();
        match *segment {
            "." => {}
            ".." => {
                kept.pop();
            }
            other => {
                kept.push(other);
                continue;
            }
        }
        // A trailing `.` or `..` names a directory.
        if last {
            kept.push("");
        }
    }
    format!("/{}", kept.join("/"))
}

/// A host as parsed by [`parse_host`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Name(String),
    Address(IpAddr),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Address(ip) => write!(f, "{ip}"),
        }
    }
}

/// `raw` (the host of a parsed URI) as a name or an address. Refuses anything but LDH names
/// (plus `_`), canonical dotted-decimal IPv4 and bracketed IPv6 without a zone.
fn parse_host(raw: &str) -> Result<Host, String> {
    if let Some(inner) = raw.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or("an IPv6 literal without its closing `]`")?;
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| Host::Address(IpAddr::V6(ip)))
            .map_err(|_| format!("`{inner}` is not an IPv6 address (zone ids are not accepted)"));
    }
    let lower = raw.to_ascii_lowercase();
    // One trailing dot marks a fully qualified name; it names the same host.
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.is_empty() || name.len() > 253 {
        return Err("a host name must have 1 to 253 characters".to_string());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return Err(format!("the character `{bad}` is not allowed in a host name"));
    }
    let labels: Vec<&str> = name.split('.').collect();
    if labels.iter().any(|label| label.is_empty() || label.len() > 63) {
        return Err("every label of a host name must have 1 to 63 characters".to_string());
    }
    // URL parsers (WHATWG) read a host whose last label is numeric as an IPv4 address, in
    // decimal, octal or hex, with 1 to 4 parts; only the canonical a.b.c.d form is accepted.
    let last = labels.last().copied().unwrap_or_default();
    let numeric_last = last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x");
    if numeric_last {
        return match name.parse::<Ipv4Addr>() {
            Ok(ip) if ip.to_string() == name => Ok(Host::Address(IpAddr::V4(ip))),
            _ => Err(format!(
                "`{name}` looks like an IPv4 address in a non-canonical form (decimal, octal, hex or short); \
                 write addresses as four decimal numbers, a.b.c.d"
            )),
        };
    }
    Ok(Host::Name(name.to_string()))
}

/// The port given after the host (`""`, `":"` or `":8080"`), or the scheme's default.
fn parse_port(text: &str, scheme: &str) -> Result<u16, String> {
    let default = if scheme == "https" { 443 } else { 80 };
    let digits = match text.strip_prefix(':') {
        None if text.is_empty() => return Ok(default),
        None => return Err(format!("unexpected `{text}` after the host")),
        Some("") => return Ok(default),
        Some(digits) => digits,
    };
    if digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{digits}` is not a port number (1 to 65535)"));
    }
    match digits.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{digits}` is not a port number (1 to 65535)")),
        Ok(port) => Ok(port),
    }
}

/// Whether allowlist `entry` admits `host`: IP entries match the same address, names match
/// exactly, `*.domain` matches strict subdomains of `domain`.
fn host_matches(entry: &str, host: &Host) -> bool {
    let entry = entry.trim().to_ascii_lowercase();
    match host {
        Host::Address(ip) => {
            let bare = entry.trim_start_matches('[').trim_end_matches(']');
            bare.parse::<IpAddr>().is_ok_and(|allowed| allowed == *ip)
        }
        Host::Name(name) => match entry.strip_prefix("*.") {
            Some(domain) => {
                let domain = domain.strip_suffix('.').unwrap_or(domain);
                !domain.is_empty()
                    && name
                        .strip_suffix(domain)
                        .is_some_and(|prefix| prefix.len() > 1 && prefix.ends_with('.'))
            }
            None => entry.strip_suffix('.').unwrap_or(&entry) == name,
        },
    }
}

/// Refuses `ip` (an address of `host`) when it is not public and the policy allows only public.
fn check_address(policy: &FetchPolicy, host: &str, ip: IpAddr) -> Result<(), DriverError> {
    let class = classify(ip);
    if class.is_public() || policy.allow_private {
        return Ok(());
    }
    Err(DriverError::Denied(format!(
        "fetching from `{host}` is not allowed: its address {ip} is {} and the policy allows only public addresses",
        class.describe()
    )))
}

/// The scheme before the first `:` when it has scheme syntax (RFC 3986: ALPHA *( ALPHA / DIGIT /
/// "+" / "-" / "." )).
fn lexical_scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    let valid = first.is_ascii_alphabetic() && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme)
}

fn describe_char(c: char) -> String {
    match c {
        '\\' => "a backslash".to_string(),
        ' ' => "a space".to_string(),
        other => format!("the character {:?}", other),
    }
}

/// `url` cut to a length fit for an error message.
fn shown(url: &str) -> String {
    match url.char_indices().nth(SHOWN_URL_CHARS) {
        Some((end, _)) => format!("{}...", &url[..end]),
        None => url.to_string(),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Now plus `duration`, or a year from now when that overflows.
fn deadline_after(duration: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(duration)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

// ---------------------------------------------------------------------------------------------
// Self-test: attacks against local servers.

/// Bytes a size bomb offers.
const BOMB_BYTES: u64 = 50 * 1024 * 1024;

/// How long a self-test server keeps a dripping connection open at most.
const DRIP_LIMIT: Duration = Duration::from_secs(30);

/// Extra time, beyond the total timeout, within which a slow server must have been cut off.
const DEADLINE_SLACK: Duration = Duration::from_secs(2);

/// Runs each attack against servers on 127.0.0.1 (or, for the lexical ones, against the checks
/// with a live server behind the forbidden address) and reports whether the driver held.
pub async fn containment_trials() -> Vec<Trial> {
    let mut trials = vec![
        size_bomb_trial("size_bomb_without_length", BombFraming::CloseDelimited).await,
        size_bomb_trial("size_bomb_chunked", BombFraming::Chunked).await,
        size_bomb_trial(
            "size_bomb_huge_content_length",
            BombFraming::Length(1_000_000_000_000_000),
        )
        .await,
        lying_length_trial().await,
        header_bomb_trial().await,
        slow_drip_trial("slow_drip_body", DripPart::Body).await,
        slow_drip_trial("slow_drip_headers", DripPart::Headers).await,
        redirect_loop_trial().await,
    ];
    let denied_redirects = [
        ("redirect_to_denied_host", "http://evil.example/", "evil.example"),
        (
            "redirect_to_metadata_address",
            "http://169.254.169.254/latest/meta-data/",
            "169.254.169.254",
        ),
        ("redirect_to_file_scheme", "file:///etc/passwd", "file"),
        ("redirect_to_gopher_scheme", "gopher://127.0.0.1:70/_INFO", "gopher"),
    ];
    for (name, location, named) in denied_redirects {
        trials.push(denied_redirect_trial(name, location, named).await);
    }
    let lexical = [
        ("decimal_ipv4_form", "http://2130706433:{port}/", "example.com"),
        ("hex_ipv4_form", "http://0x7f.1:{port}/", "example.com"),
        (
            "hex_single_number_ipv4_form",
            "http://0x7f000001:{port}/",
            "example.com",
        ),
        ("octal_ipv4_form", "http://0177.0.0.1:{port}/", "example.com"),
        ("short_ipv4_form", "http://127.1:{port}/", "example.com"),
        ("userinfo_trick", "http://example.com@127.0.0.1:{port}/", "example.com"),
        (
            "backslash_trick",
            "http://127.0.0.1:{port}\\@example.com/",
            "example.com",
        ),
        ("ipv6_loopback_literal", "http://[::1]:{port}/", "::1"),
        (
            "ipv4_mapped_loopback_literal",
            "http://[::ffff:127.0.0.1]:{port}/",
            "::ffff:127.0.0.1",
        ),
        (
            "localhost_resolves_to_loopback",
            "http://localhost:{port}/",
            "localhost",
        ),
    ];
    for (name, url, allowed_host) in lexical {
        trials.push(forbidden_address_trial(name, url, allowed_host).await);
    }
    trials.push(pinned_address_trial().await);
    trials
}

/// The policy of the self-test: the local servers' 127.0.0.1, small limits.
fn trial_policy() -> FetchPolicy {
    FetchPolicy {
        allow_hosts: vec!["127.0.0.1".to_string()],
        allow_private: true,
        max_bytes: 64 * 1024,
        connect_timeout: Duration::from_secs(1),
        total_timeout: Duration::from_secs(2),
        max_redirects: 5,
        ..FetchPolicy::default()
    }
}

fn setup_failed(name: &str, error: io::Error) -> Trial {
    Trial {
        name: name.to_string(),
        contained: false,
        detail: format!("the trial could not run: starting a local server failed: {error}"),
    }
}

fn outcome(result: &Result<Fetched, DriverError>) -> String {
    match result {
        Ok(fetched) => format!(
            "fetched status {} with {} body bytes (truncated: {}) from {}",
            fetched.status,
            fetched.body.len(),
            fetched.truncated,
            fetched.address
        ),
        Err(error) => format!("error: {error}"),
    }
}

/// How a size bomb frames its endless body.
#[derive(Debug, Clone, Copy)]
enum BombFraming {
    CloseDelimited,
    Chunked,
    Length(u64),
}

async fn size_bomb_trial(name: &str, framing: BombFraming) -> Trial {
    let server = match LocalServer::start(move |_, connection| send_bomb(connection, framing)) {
        Ok(server) => server,
        Err(e) => return setup_failed(name, e),
    };
    let policy = trial_policy();
    let result = fetch(&policy, &server.url("/bomb")).await;
    let server_done = server.wait_finished(1, Duration::from_secs(10)).await;
    let sent = server.bytes_sent();
    let held = matches!(&result, Ok(f) if f.truncated && f.body.len() == policy.max_bytes);
    Trial {
        name: name.to_string(),
        contained: held && server_done && sent < BOMB_BYTES,
        detail: format!(
            "{}; cap {} bytes; the server wrote {sent} of {BOMB_BYTES} bytes before the connection {}",
            outcome(&result),
            policy.max_bytes,
            if server_done {
                "was dropped"
            } else {
                "was still open 10 s later"
            }
        ),
    }
}

async fn lying_length_trial() -> Trial {
    let name = "size_bomb_lying_small_content_length";
    let server = match LocalServer::start(|_, connection| send_bomb(connection, BombFraming::Length(16))) {
        Ok(server) => server,
        Err(e) => return setup_failed(name, e),
    };
    let result = fetch(&trial_policy(), &server.url("/bomb")).await;
    let server_done = server.wait_finished(1, Duration::from_secs(10)).await;
    let sent = server.bytes_sent();
    Trial {
        name: name.to_string(),
        contained: matches!(&result, Ok(f) if f.body.len() == 16 && !f.truncated) && server_done && sent < BOMB_BYTES,
        detail: format!(
            "Content-Length: 16 followed by {BOMB_BYTES} bytes: {}; the server wrote {sent} bytes",
            outcome(&result)
        ),
    }
}

async fn header_bomb_trial() -> Trial {
    let name = "header_bomb";
    let server = match LocalServer::start(|_, connection| {
        connection.send(b"HTTP/1.1 200 OK\r\n")?;
        let line = format!("X-Filler: {}\r\n", "a".repeat(1000));
        while connection.bytes_sent() < BOMB_BYTES && !connection.stopped() {
            connection.send(line.as_bytes())?;
        }
        Ok(())
    }) {
        Ok(server) => server,
        Err(e) => return setup_failed(name, e),
    };
    let result = fetch(&trial_policy(), &server.url("/")).await;
    let server_done = server.wait_finished(1, Duration::from_secs(10)).await;
    let sent = server.bytes_sent();
    Trial {
        name: name.to_string(),
        contained: matches!(result, Err(DriverError::Io(_))) && server_done && sent < BOMB_BYTES,
        detail: format!(
            "endless response headers: {}; the server wrote {sent} bytes",
            outcome(&result)
        ),
    }
}

/// Which part of the response a slow server drips.
#[derive(Debug, Clone, Copy)]
enum DripPart {
    Headers,
    Body,
}

async fn slow_drip_trial(name: &str, part: DripPart) -> Trial {
    let server = match LocalServer::start(move |_, connection| {
        let start = Instant::now();
        match part {
            DripPart::Body => connection.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")?,
            DripPart::Headers => connection.send(b"HTTP/1.1 200 OK\r\nX-Slow: ")?,
        }
        while start.elapsed() < DRIP_LIMIT && !connection.stopped() {
            connection.send(b"a")?;
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }) {
        Ok(server) => server,
        Err(e) => return setup_failed(name, e),
    };
    let policy = trial_policy();
    let started = Instant::now();
    let result = fetch(&policy, &server.url("/drip")).await;
    let took = started.elapsed();
    let bound = policy.total_timeout + DEADLINE_SLACK;
    Trial {
        name: name.to_string(),
        contained: matches!(result, Err(DriverError::Timeout(_))) && took <= bound,
        detail: format!(
            "one byte per 200 ms: {} after {} ms (total timeout {} ms, bound {} ms)",
            outcome(&result),
            took.as_millis(),
            policy.total_timeout.as_millis(),
            bound.as_millis()
        ),
    }
}

async fn redirect_loop_trial() -> Trial {
    let name = "redirect_loop";
    let server = match LocalServer::start(|path, connection| {
        let next = if path == "/a" { "/b" } else { "/a" };
        connection.send(redirect_response(next).as_bytes())
    }) {
        Ok(server) => server,
        Err(e) => return setup_failed(name, e),
    };
    let policy = trial_policy();
    let result = fetch(&policy, &server.url("/a")).await;
    let requests = server.requests().len();
    let stopped = matches!(&result, Err(DriverError::Denied(m)) if m.contains("too many redirects"));
    Trial {
        name: name.to_string(),
        contained: stopped && requests == policy.max_redirects + 1,
        detail: format!(
            "/a -> /b -> /a ...: {} after {requests} requests (limit {} redirects)",
            outcome(&result),
            policy.max_redirects
        ),
    }
}

async fn denied_redirect_trial(name: &str, location: &'static str, named: &str) -> Trial {
    let server = match LocalServer::start(move |_, connection| connection.send(redirect_response(location).as_bytes()))
    {
        Ok(server) => server,
        Err(e) => return setup_failed(name, e),
    };
    let result = fetch(&trial_policy(), &server.url("/start")).await;
    let requests = server.requests().len();
    Trial {
        name: name.to_string(),
        contained: matches!(&result, Err(DriverError::Denied(m)) if m.contains(named)) && requests == 1,
        detail: format!(
            "redirect to `{location}`: {} ({requests} request made)",
            outcome(&result)
        ),
    }
}

/// An attack whose URL points at a live server on 127.0.0.1 in a disguise; the policy allows
/// only `allowed_host` and public addresses. Contained when refused before any request arrived.
async fn forbidden_address_trial(name: &str, url_pattern: &str, allowed_host: &str) -> Trial {
    let server =
        match LocalServer::start(|_, connection| connection.send(ok_response("text/plain", "reached").as_bytes())) {
            Ok(server) => server,
            Err(e) => return setup_failed(name, e),
        };
    let url = url_pattern.replace("{port}", &server.address.port().to_string());
    let policy = FetchPolicy {
        allow_hosts: vec![allowed_host.to_string()],
        allow_private: false,
        ..trial_policy()
    };
    let result = fetch(&policy, &url).await;
    let requests = server.requests().len();
    Trial {
        name: name.to_string(),
        contained: matches!(result, Err(DriverError::Denied(_))) && requests == 0,
        detail: format!(
            "`{url}` with only `{allowed_host}` and public addresses allowed: {} \
             ({requests} requests reached the server)",
            outcome(&result)
        ),
    }
}

/// DNS rebinding: the host name is never resolved by the HTTP client. The name `rebinding.invalid`
/// cannot resolve anywhere, so the request can only arrive if the client used the checked
/// address it was given.
async fn pinned_address_trial() -> Trial {
    let name = "dns_rebinding_pinned_address";
    let server =
        match LocalServer::start(|_, connection| connection.send(ok_response("text/plain", "pinned").as_bytes())) {
            Ok(server) => server,
            Err(e) => return setup_failed(name, e),
        };
    let policy = FetchPolicy {
        allow_hosts: vec!["rebinding.invalid".to_string()],
        ..trial_policy()
    };
    let url = format!("http://rebinding.invalid:{}/", server.address.port());
    let result = match check_url(&policy, &url) {
        Ok(target) => {
            let deadline = deadline_after(policy.total_timeout);
            run_hop(&policy, &target, vec![server.address], deadline)
                .await
                .map(|hop| match hop {
                    Hop::Answer(fetched) => Ok(fetched),
                    Hop::Redirect { location, .. } => {
                        Err(DriverError::Failed(format!("unexpected redirect to {location}")))
                    }
                })
        }
        Err(e) => Err(e),
    };
    let result = result.and_then(|inner| inner);
    let host_sent = server
        .requests()
        .iter()
        .any(|head| head.to_ascii_lowercase().contains("\r\nhost: rebinding.invalid"));
    Trial {
        name: name.to_string(),
        contained: matches!(&result, Ok(f) if f.address == server.address && f.body == "pinned") && host_sent,
        detail: format!(
            "`{url}` pinned to {}: {}; Host header kept: {host_sent}",
            server.address,
            outcome(&result)
        ),
    }
}

fn redirect_response(location: &str) -> String {
    format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
}

fn ok_response(content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn send_bomb(connection: &mut Connection, framing: BombFraming) -> io::Result<()> {
    let head = match framing {
        BombFraming::CloseDelimited => "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_string(),
        BombFraming::Chunked => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_string(),
        BombFraming::Length(length) => format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n"),
    };
    connection.send(head.as_bytes())?;
    let block = vec![b'A'; 64 * 1024];
    while connection.bytes_sent() < BOMB_BYTES && !connection.stopped() {
        match framing {
            BombFraming::Chunked => {
                connection.send(format!("{:x}\r\n", block.len()).as_bytes())?;
                connection.send(&block)?;
                connection.send(b"\r\n")?;
            }
            BombFraming::CloseDelimited | BombFraming::Length(_) => connection.send(&block)?,
        }
    }
    Ok(())
}

/// How a self-test server answers one request: the request path and the connection.
type Respond = dyn Fn(&str, &mut Connection) -> io::Result<()> + Send + Sync;

/// What a self-test server saw.
#[derive(Default)]
struct ServerLog {
    /// Request heads, as received.
    requests: Mutex<Vec<String>>,
    /// Bytes written to all connections.
    bytes_sent: AtomicU64,
    /// Connections whose handler has returned.
    finished: AtomicUsize,
}

/// One accepted connection of a self-test server.
struct Connection {
    stream: TcpStream,
    stop: Arc<AtomicBool>,
    log: Arc<ServerLog>,
}

impl Connection {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.log.bytes_sent.fetch_add(bytes.len() as u64, Ordering::SeqCst);
        Ok(())
    }

    fn bytes_sent(&self) -> u64 {
        self.log.bytes_sent.load(Ordering::SeqCst)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// A throwaway HTTP/1.1 server on 127.0.0.1 (a thread per connection); it stops accepting and
/// tells its handlers to stop when dropped.
struct LocalServer {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    log: Arc<ServerLog>,
    acceptor: Option<JoinHandle<()>>,
}

impl LocalServer {
    fn start(respond: impl Fn(&str, &mut Connection) -> io::Result<()> + Send + Sync + 'static) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let address = listener.local_addr()?;
        // Non-blocking accept so the loop can notice `stop`.
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(ServerLog::default());
        let respond: Arc<Respond> = Arc::new(respond);
        let acceptor = {
            let (stop, log) = (stop.clone(), log.clone());
            std::thread::spawn(move || accept_loop(listener, respond, stop, log))
        };
        Ok(LocalServer {
            address,
            stop,
            log,
            acceptor: Some(acceptor),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn requests(&self) -> Vec<String> {
        self.log
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn bytes_sent(&self) -> u64 {
        self.log.bytes_sent.load(Ordering::SeqCst)
    }

    /// Waits (up to `within`) until `count` connection handlers have returned.
    async fn wait_finished(&self, count: usize, within: Duration) -> bool {
        let start = Instant::now();
        while self.log.finished.load(Ordering::SeqCst) < count {
            if start.elapsed() > within {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            // The accept loop polls `stop` every few milliseconds; a panic in it is not ours to raise.
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, respond: Arc<Respond>, stop: Arc<AtomicBool>, log: Arc<ServerLog>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (respond, stop, log) = (respond.clone(), stop.clone(), log.clone());
                std::thread::spawn(move || serve_connection(stream, respond, stop, log));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve_connection(stream: TcpStream, respond: Arc<Respond>, stop: Arc<AtomicBool>, log: Arc<ServerLog>) {
    let mut connection = Connection {
        stream,
        stop,
        log: log.clone(),
    };
    // Errors end the connection: the client hung up, which is what most trials provoke.
    let _ = serve_request(&mut connection, &*respond);
    let _ = connection.stream.shutdown(std::net::Shutdown::Both);
    log.finished.fetch_add(1, Ordering::SeqCst);
}

fn serve_request(connection: &mut Connection, respond: &Respond) -> io::Result<()> {
    connection.stream.set_nonblocking(false)?;
    // Bounded waits, so a client that stops reading cannot hold the thread forever.
    connection.stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    connection.stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || connection.stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "no complete request head"));
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    connection
        .log
        .requests
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(head);
    respond(&path, connection)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_for(hosts: &[&str]) -> FetchPolicy {
        FetchPolicy {
            allow_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..FetchPolicy::default()
        }
    }

    fn denied_message(result: Result<Target, DriverError>) -> String {
        match result {
            Err(DriverError::Denied(message)) => message,
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[test]
    fn default_policy_matches_the_documented_values() {
        let policy = FetchPolicy::default();
        assert!(policy.allow_hosts.is_empty());
        assert_eq!(policy.allow_schemes, vec!["http", "https"]);
        assert_eq!(policy.allow_ports, None);
        assert!(!policy.allow_private);
        assert_eq!(policy.max_bytes, 256 * 1024);
        assert_eq!(policy.connect_timeout, Duration::from_secs(5));
        assert_eq!(policy.total_timeout, Duration::from_secs(20));
        assert_eq!(policy.max_redirects, 5);
    }

    #[test]
    fn check_url_accepts_allowed_urls() {
        let policy = policy_for(&["example.com", "*.docs.rs", "93.184.216.34", "[2606:4700::1]"]);
        let cases: [(&str, &str, u16, &str); 9] = [
            ("http://example.com/", "example.com", 80, "http"),
            ("https://example.com/a?b=c", "example.com", 443, "https"),
            ("HTTPS://EXAMPLE.COM./x", "example.com", 443, "https"),
            ("http://example.com:8080/", "example.com", 8080, "http"),
            ("http://example.com:/x", "example.com", 80, "http"),
            ("https://serde.docs.rs/", "serde.docs.rs", 443, "https"),
            ("https://a.b.docs.rs/", "a.b.docs.rs", 443, "https"),
            ("http://93.184.216.34/", "93.184.216.34", 80, "http"),
            ("http://[2606:4700::1]:81/", "2606:4700::1", 81, "http"),
        ];
        for (url, host, port, scheme) in cases {
            let target = check_url(&policy, url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(
                (target.host.as_str(), target.port, target.scheme.as_str()),
                (host, port, scheme),
                "{url}"
            );
            assert_eq!(target.ip.is_some(), host.parse::<IpAddr>().is_ok(), "{url}");
        }
    }

    #[test]
    fn a_fragment_never_moves_the_host() {
        let policy = policy_for(&["allowed.example"]);
        assert_eq!(
            check_url(&policy, "http://allowed.example#@evil.example/")
                .unwrap()
                .host,
            "allowed.example"
        );
        let message = denied_message(check_url(&policy, "http://evil.example#@allowed.example/"));
        assert!(message.contains("evil.example"), "{message}");
        let message = denied_message(check_url(&policy, "http://evil.example?@allowed.example/"));
        assert!(message.contains("evil.example"), "{message}");
    }

    #[test]
    fn check_url_denies_hosts_off_the_allowlist() {
        let policy = policy_for(&["example.com", "*.docs.rs"]);
        for (url, host) in [
            ("http://evil.example/", "evil.example"),
            ("http://docs.rs/", "docs.rs"),
            ("http://evildocs.rs/", "evildocs.rs"),
            ("http://example.com.evil.net/", "example.com.evil.net"),
            ("http://wwwexample.com/", "wwwexample.com"),
            ("http://sub.example.com/", "sub.example.com"),
        ] {
            let message = denied_message(check_url(&policy, url));
            assert!(
                message.contains(host) && message.contains("allowlist"),
                "{url}: {message}"
            );
        }
        let message = denied_message(check_url(&FetchPolicy::default(), "http://example.com/"));
        assert!(message.contains("allows no hosts"), "{message}");
    }

    #[test]
    fn check_url_denies_schemes_and_non_urls() {
        let policy = policy_for(&["example.com"]);
        for url in [
            "file:///etc/passwd",
            "gopher://example.com/_x",
            "ftp://example.com/",
            "javascript:alert(1)",
            "data:text/plain,hi",
        ] {
            let message = denied_message(check_url(&policy, url));
            assert!(message.contains("scheme"), "{url}: {message}");
        }
        for url in [
            "example.com/x",
            "//example.com/x",
            "/etc/passwd",
            "",
            "http:example.com",
            "http:/x",
        ] {
            denied_message(check_url(&policy, url));
        }
        let https_only = FetchPolicy {
            allow_schemes: vec!["https".into()],
            ..policy.clone()
        };
        let message = denied_message(check_url(&https_only, "http://example.com/"));
        assert!(message.contains("`http` is not allowed"), "{message}");
        assert!(check_url(&https_only, "https://example.com/").is_ok());
        let with_ftp = FetchPolicy {
            allow_schemes: vec!["ftp".into()],
            ..policy
        };
        assert!(denied_message(check_url(&with_ftp, "ftp://example.com/")).contains("only http and https"));
    }

    #[test]
    fn check_url_denies_disguised_hosts() {
        let policy = policy_for(&["example.com", "127.0.0.1"]);
        for (url, why) in [
            ("http://example.com@127.0.0.2/", "user info"),
            ("http://user:pass@example.com/", "user info"),
            ("http://example.com\\@evil.example/", "backslash"),
            ("http://evil.example\\.example.com/", "backslash"),
            ("http://example.com /", "space"),
            ("http://exa%6dple.com/", "not a valid URL"),
            ("http://exämple.com/", "not a valid URL"),
            ("http://2130706433/", "non-canonical"),
            ("http://0x7f.1/", "non-canonical"),
            ("http://0x7f000001/", "non-canonical"),
            ("http://0177.0.0.1/", "non-canonical"),
            ("http://127.1/", "non-canonical"),
            ("http://127.0.0.01/", "non-canonical"),
            ("http://127.0.0.1.5/", "non-canonical"),
            ("http://foo.123/", "non-canonical"),
            ("http://[fe80::1%25eth0]/", "not an IPv6 address"),
            ("http://exa_mple..com/", "label"),
        ] {
            let message = denied_message(check_url(&policy, url));
            assert!(message.contains(why), "{url}: {message}");
        }
    }

    #[test]
    fn check_url_checks_ports() {
        let policy = FetchPolicy {
            allow_ports: Some(vec![443, 8443]),
            ..policy_for(&["example.com"])
        };
        assert_eq!(check_url(&policy, "https://example.com/").unwrap().port, 443);
        assert_eq!(check_url(&policy, "http://example.com:8443/").unwrap().port, 8443);
        let message = denied_message(check_url(&policy, "http://example.com/"));
        assert!(
            message.contains("port 80") && message.contains("example.com"),
            "{message}"
        );
        let any_port = policy_for(&["example.com"]);
        for url in [
            "http://example.com:0/",
            "http://example.com:65536/",
            "http://example.com:99999/",
            "http://example.com:+80/",
        ] {
            let message = denied_message(check_url(&any_port, url));
            assert!(message.contains("port number"), "{url}: {message}");
        }
        assert_eq!(check_url(&any_port, "http://example.com:65535/").unwrap().port, 65535);
    }

    #[test]
    fn check_url_checks_ip_literals_as_addresses() {
        let hosts = [
            "127.0.0.1",
            "::1",
            "[::ffff:127.0.0.1]",
            "169.254.169.254",
            "10.1.2.3",
            "fd00::1",
            "0.0.0.0",
        ];
        let strict = policy_for(&hosts);
        for (url, class) in [
            ("http://127.0.0.1:8080/", "loopback"),
            ("http://[::1]/", "loopback"),
            ("http://[::ffff:127.0.0.1]/", "loopback"),
            ("http://169.254.169.254/latest/meta-data/", "link-local"),
            ("http://10.1.2.3/", "private"),
            ("http://[fd00::1]/", "private"),
            ("http://0.0.0.0/", "unspecified"),
        ] {
            let message = denied_message(check_url(&strict, url));
            assert!(
                message.contains(class) && message.contains("public"),
                "{url}: {message}"
            );
        }
        let lax = FetchPolicy {
            allow_private: true,
            ..strict
        };
        assert_eq!(
            check_url(&lax, "http://127.0.0.1:8080/").unwrap().ip,
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        assert_eq!(
            check_url(&lax, "http://[::1]/").unwrap().ip,
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        // An address must be listed as itself, not under another spelling.
        denied_message(check_url(&lax, "http://[::ffff:10.1.2.3]/"));
    }

    #[test]
    fn classify_ipv4() {
        let cases: [(&str, AddressClass); 22] = [
            ("0.0.0.0", AddressClass::Unspecified),
            ("0.1.2.3", AddressClass::ThisNetwork),
            ("127.0.0.1", AddressClass::Loopback),
            ("127.255.0.9", AddressClass::Loopback),
            ("10.0.0.1", AddressClass::Private),
            ("172.16.0.1", AddressClass::Private),
            ("172.31.255.255", AddressClass::Private),
            ("192.168.1.1", AddressClass::Private),
            ("100.64.0.1", AddressClass::SharedCgnat),
            ("100.127.255.255", AddressClass::SharedCgnat),
            ("169.254.169.254", AddressClass::LinkLocal),
            ("224.0.0.1", AddressClass::Multicast),
            ("239.255.255.250", AddressClass::Multicast),
            ("255.255.255.255", AddressClass::Broadcast),
            ("240.0.0.1", AddressClass::Reserved),
            ("192.0.0.8", AddressClass::Reserved),
            ("198.18.0.1", AddressClass::Reserved),
            ("203.0.113.7", AddressClass::Reserved),
            ("172.32.0.1", AddressClass::Public),
            ("100.128.0.1", AddressClass::Public),
            ("8.8.8.8", AddressClass::Public),
            ("93.184.216.34", AddressClass::Public),
        ];
        for (ip, class) in cases {
            assert_eq!(classify(ip.parse().unwrap()), class, "{ip}");
        }
    }

    #[test]
    fn classify_ipv6_and_embedded_ipv4() {
        let cases: [(&str, AddressClass); 18] = [
            ("::", AddressClass::Unspecified),
            ("::1", AddressClass::Loopback),
            ("::ffff:127.0.0.1", AddressClass::Loopback),
            ("::ffff:10.0.0.1", AddressClass::Private),
            ("::ffff:169.254.169.254", AddressClass::LinkLocal),
            ("::ffff:0.0.0.0", AddressClass::Unspecified),
            ("::ffff:8.8.8.8", AddressClass::Public),
            ("::127.0.0.1", AddressClass::Reserved),
            ("64:ff9b::a9fe:a9fe", AddressClass::LinkLocal),
            ("64:ff9b::808:808", AddressClass::Public),
            ("2002:7f00:1::", AddressClass::Loopback),
            ("fc00::1", AddressClass::Private),
            ("fd12:3456::1", AddressClass::Private),
            ("fe80::1", AddressClass::LinkLocal),
            ("ff02::1", AddressClass::Multicast),
            ("2001:db8::1", AddressClass::Reserved),
            ("2001::1", AddressClass::Reserved),
            ("2606:4700:4700::1111", AddressClass::Public),
        ];
        for (ip, class) in cases {
            assert_eq!(classify(ip.parse().unwrap()), class, "{ip}");
        }
    }

    #[test]
    fn locations_resolve_against_the_current_url() {
        let base: Uri = "http://h.example:8080/dir/page?q=1".parse().unwrap();
        for (location, expected) in [
            ("https://other.example/x", "https://other.example/x"),
            ("//other.example/y", "http://other.example/y"),
            ("/root", "http://h.example:8080/root"),
            ("next", "http://h.example:8080/dir/next"),
            ("../up?z=2", "http://h.example:8080/up?z=2"),
            ("./a/./b/../c", "http://h.example:8080/dir/a/c"),
            ("../../../../x", "http://h.example:8080/x"),
            ("sub/..", "http://h.example:8080/dir/"),
            ("?other", "http://h.example:8080/dir/page?other"),
            ("", "http://h.example:8080/dir/page?q=1"),
        ] {
            assert_eq!(resolve_location(&base, location), expected, "{location}");
        }
    }

    #[test]
    fn read_capped_keeps_at_most_the_cap() {
        let far = deadline_after(Duration::from_secs(60));
        let (kept, truncated) = read_capped(&mut io::repeat(b'x').take(10_000_000), 1000, far).unwrap();
        assert_eq!((kept.len(), truncated), (1000, true));
        assert!(kept.capacity() <= 1001, "buffer grew to {}", kept.capacity());
        let (kept, truncated) = read_capped(&mut &b"exactly"[..], 7, far).unwrap();
        assert_eq!((kept, truncated), (b"exactly".to_vec(), false));
        let (kept, truncated) = read_capped(&mut &b"x"[..], 0, far).unwrap();
        assert_eq!((kept.len(), truncated), (0, true));
        let past = Instant::now();
        let error = read_capped(&mut io::repeat(b'x'), 10, past).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn the_pinned_agent_uses_no_proxy_and_follows_no_redirect() {
        let agent = pinned_agent(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 1)),
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        assert!(agent.config().proxy().is_none());
        assert_eq!(agent.config().max_redirects(), 0);
        assert!(!agent.config().http_status_as_error());
    }

    fn local_policy() -> FetchPolicy {
        FetchPolicy {
            allow_hosts: vec!["127.0.0.1".into()],
            allow_private: true,
            ..trial_policy()
        }
    }

    #[tokio::test]
    async fn a_plain_fetch_returns_status_type_and_body() {
        let server =
            LocalServer::start(|_, c| c.send(ok_response("text/html; charset=utf-8", "<p>hi</p>").as_bytes())).unwrap();
        let fetched = fetch(&local_policy(), &server.url("/page")).await.unwrap();
        assert_eq!(fetched.status, 200);
        assert_eq!(fetched.content_type.as_deref(), Some("text/html; charset=utf-8"));
        assert_eq!(fetched.body, "<p>hi</p>");
        assert!(!fetched.truncated);
        assert_eq!(fetched.redirects, 0);
        assert_eq!(fetched.address, server.address);
        assert_eq!(fetched.url, server.url("/page"));
        let head = server.requests().remove(0);
        assert!(head.starts_with("GET /page HTTP/1.1\r\n"), "{head}");
    }

    #[tokio::test]
    async fn an_error_status_is_an_answer() {
        let server = LocalServer::start(|_, c| {
            c.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope")
        })
        .unwrap();
        let fetched = fetch(&local_policy(), &server.url("/missing")).await.unwrap();
        assert_eq!(
            (fetched.status, fetched.body.as_str(), fetched.content_type),
            (404, "nope", None)
        );
        // A redirect status without a Location has nowhere to go: it is the answer.
        let server = LocalServer::start(|_, c| {
            c.send(b"HTTP/1.1 302 Found\r\nContent-Length: 5\r\nConnection: close\r\n\r\nstuck")
        })
        .unwrap();
        let fetched = fetch(&local_policy(), &server.url("/")).await.unwrap();
        assert_eq!(
            (fetched.status, fetched.body.as_str(), fetched.redirects),
            (302, "stuck", 0)
        );
    }

    #[tokio::test]
    async fn relative_redirects_are_followed() {
        let server = LocalServer::start(|path, c| match path {
            "/dir/start" => c.send(redirect_response("next?x=1").as_bytes()),
            "/dir/next?x=1" => c.send(redirect_response("../final").as_bytes()),
            "/final" => c.send(ok_response("text/plain", "arrived").as_bytes()),
            _ => c.send(b"HTTP/1.1 500 Unexpected\r\nContent-Length: 0\r\n\r\n"),
        })
        .unwrap();
        let fetched = fetch(&local_policy(), &server.url("/dir/start")).await.unwrap();
        assert_eq!(
            (fetched.status, fetched.body.as_str(), fetched.redirects),
            (200, "arrived", 2)
        );
        assert_eq!(fetched.url, server.url("/final"));
        assert_eq!(server.requests().len(), 3);
    }

    #[tokio::test]
    async fn a_size_bomb_is_cut_at_the_cap() {
        for framing in [
            BombFraming::CloseDelimited,
            BombFraming::Chunked,
            BombFraming::Length(1 << 40),
        ] {
            let server = LocalServer::start(move |_, c| send_bomb(c, framing)).unwrap();
            let policy = FetchPolicy {
                max_bytes: 100_000,
                ..local_policy()
            };
            let fetched = fetch(&policy, &server.url("/")).await.unwrap();
            assert!(fetched.truncated, "{framing:?}");
            assert_eq!(fetched.body.len(), 100_000, "{framing:?}");
            assert!(
                fetched.body.bytes().all(|b| b == b'A'),
                "{framing:?}: chunk framing leaked into the body"
            );
            assert!(
                server.wait_finished(1, Duration::from_secs(10)).await,
                "{framing:?}: connection left open"
            );
            assert!(server.bytes_sent() < BOMB_BYTES, "{framing:?}: the whole bomb was read");
        }
    }

    #[tokio::test]
    async fn a_lying_small_content_length_keeps_only_that_length() {
        let server = LocalServer::start(|_, c| send_bomb(c, BombFraming::Length(16))).unwrap();
        let fetched = fetch(&local_policy(), &server.url("/")).await.unwrap();
        assert_eq!((fetched.body.as_str(), fetched.truncated), ("AAAAAAAAAAAAAAAA", false));
    }

    #[tokio::test]
    async fn endless_headers_are_refused() {
        let trial = header_bomb_trial().await;
        assert!(trial.contained, "{}", trial.detail);
    }

    #[tokio::test]
    async fn a_slow_drip_ends_in_a_timeout() {
        let server = LocalServer::start(|_, c| {
            c.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")?;
            while !c.stopped() {
                c.send(b"a")?;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(())
        })
        .unwrap();
        let policy = FetchPolicy {
            total_timeout: Duration::from_millis(1500),
            ..local_policy()
        };
        let started = Instant::now();
        let result = fetch(&policy, &server.url("/")).await;
        assert_eq!(result, Err(DriverError::Timeout(1500)));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn the_total_timeout_covers_a_chain_of_slow_redirects() {
        let server = LocalServer::start(|path, c| {
            std::thread::sleep(Duration::from_millis(600));
            let next = format!("{path}x");
            c.send(redirect_response(&next).as_bytes())
        })
        .unwrap();
        let policy = FetchPolicy {
            total_timeout: Duration::from_millis(1500),
            max_redirects: 20,
            ..local_policy()
        };
        assert_eq!(fetch(&policy, &server.url("/")).await, Err(DriverError::Timeout(1500)));
        assert!(server.requests().len() < 20);
    }

    #[tokio::test]
    async fn a_redirect_loop_stops_at_the_limit() {
        let server =
            LocalServer::start(|path, c| c.send(redirect_response(if path == "/a" { "/b" } else { "/a" }).as_bytes()))
                .unwrap();
        let policy = FetchPolicy {
            max_redirects: 3,
            ..local_policy()
        };
        let error = fetch(&policy, &server.url("/a")).await.unwrap_err();
        assert!(
            matches!(&error, DriverError::Denied(m) if m.contains("too many redirects")),
            "{error}"
        );
        assert_eq!(server.requests().len(), 4);
        let no_redirects = FetchPolicy {
            max_redirects: 0,
            ..local_policy()
        };
        let error = fetch(&no_redirects, &server.url("/a")).await.unwrap_err();
        assert!(
            matches!(&error, DriverError::Denied(m) if m.contains("too many redirects")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn redirects_to_denied_targets_are_refused() {
        for (location, named) in [
            ("http://evil.example/", "evil.example"),
            ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
            ("file:///etc/passwd", "scheme `file`"),
            ("gopher://127.0.0.1:70/_x", "scheme `gopher`"),
            ("http://127.0.0.1:1@evil.example/", "user info"),
            ("http://0x7f.1/", "non-canonical"),
        ] {
            let server = LocalServer::start(move |_, c| c.send(redirect_response(location).as_bytes())).unwrap();
            let error = fetch(&local_policy(), &server.url("/start")).await.unwrap_err();
            assert!(
                matches!(&error, DriverError::Denied(m) if m.contains(named) && m.contains("redirect from")),
                "{location}: {error}"
            );
        }
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_denied_after_resolution() {
        let server = LocalServer::start(|_, c| c.send(ok_response("text/plain", "reached").as_bytes())).unwrap();
        let policy = FetchPolicy {
            allow_hosts: vec!["localhost".into()],
            ..trial_policy()
        };
        let allowed_lexically = check_url(
            &FetchPolicy {
                allow_private: false,
                ..policy.clone()
            },
            "http://localhost/",
        );
        assert!(
            allowed_lexically.is_ok(),
            "a name passes the lexical check: {allowed_lexically:?}"
        );
        let strict = FetchPolicy {
            allow_private: false,
            ..policy.clone()
        };
        let url = format!("http://localhost:{}/", server.address.port());
        let error = fetch(&strict, &url).await.unwrap_err();
        assert!(
            matches!(&error, DriverError::Denied(m) if m.contains("localhost") && m.contains("loopback")),
            "{error}"
        );
        assert!(server.requests().is_empty());
        // With private addresses allowed the same name reaches the server (localhost may also
        // resolve to ::1, where nothing listens; the driver then moves to the next address).
        let fetched = fetch(&policy, &url).await.unwrap();
        assert_eq!((fetched.body.as_str(), fetched.address), ("reached", server.address));
    }

    #[tokio::test]
    async fn the_client_connects_only_to_the_pinned_address() {
        let trial = pinned_address_trial().await;
        assert!(trial.contained, "{}", trial.detail);
    }

    #[tokio::test]
    async fn https_to_a_plain_server_fails_instead_of_falling_back() {
        // A plain HTTP server that answers as soon as it accepts, before any request arrives.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let _ = stream.write_all(ok_response("text/plain", "plaintext").as_bytes());
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        let error = fetch(&local_policy(), &format!("https://{address}/"))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, DriverError::Io(m) if !m.contains("plaintext")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_io_error() {
        let port = {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            listener.local_addr().unwrap().port()
        };
        let error = fetch(&local_policy(), &format!("http://127.0.0.1:{port}/"))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, DriverError::Io(m) if m.contains("127.0.0.1")),
            "{error}"
        );
    }

    /// A connect that never completes: a listener whose accept queue is full drops new SYNs
    /// (Linux), so the client waits until its connect timeout.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_hanging_connect_ends_at_the_connect_timeout() {
        use std::os::fd::AsRawFd;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let address = listener.local_addr().unwrap();
        // SAFETY: `listen` on a socket this test owns only changes its backlog; the fd stays valid
        // for the call because `listener` lives until the end of the test.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let mut fillers = Vec::new();
        let mut queue_full = false;
        for _ in 0..16 {
            match TcpStream::connect_timeout(&address, Duration::from_millis(300)) {
                Ok(stream) => fillers.push(stream),
                Err(_) => {
                    queue_full = true;
                    break;
                }
            }
        }
        assert!(
            queue_full,
            "the accept queue never filled; the kernel answers SYNs differently"
        );
        let policy = FetchPolicy {
            connect_timeout: Duration::from_millis(500),
            ..local_policy()
        };
        let result = fetch(&policy, &format!("http://{address}/")).await;
        assert_eq!(result, Err(DriverError::Timeout(500)));
    }

    #[tokio::test]
    async fn the_containment_trials_all_hold() {
        let trials = containment_trials().await;
        for trial in &trials {
            println!("{} contained={} {}", trial.name, trial.contained, trial.detail);
        }
        assert!(trials.len() >= 10, "only {} trials", trials.len());
        let mut names: Vec<&str> = trials.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), trials.len(), "trial names repeat");
        let escaped: Vec<String> = trials
            .iter()
            .filter(|t| !t.contained)
            .map(|t| format!("{}: {}", t.name, t.detail))
            .collect();
        assert!(escaped.is_empty(), "not contained:\n{}", escaped.join("\n"));
    }
}
