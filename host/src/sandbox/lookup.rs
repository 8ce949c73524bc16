//! `wasi:sockets/ip-name-lookup`, served by chassis instead of
//! wasmtime-wasi so that a guest can resolve only the names its policy
//! lists.
//!
//! A lookup is a side channel: asking any resolver for
//! `<secret-as-hex>.attacker.example` hands the secret to whoever serves
//! that zone, and `localhost` or `metadata.google.internal` map the
//! host's own network. wasmtime-wasi's implementation resolves any name
//! once lookups are enabled, so [`add_to_linker`] shadows the whole
//! interface (resource, method and function) with this one:
//!
//! - a name listed in the policy's `[network] allow` (compared in ASCII
//!   lower case, exactly) is resolved through the run's [`NameResolver`];
//! - an IP literal is answered with itself: no resolver is asked, nothing
//!   leaves the host, and the connect check still decides what it may reach;
//! - any other name is refused with `access-denied` and recorded as a
//!   `network` denial, without asking any resolver;
//! - at most [`MAX_LOOKUPS_IN_FLIGHT`] lookups per run are unfinished at
//!   once (more are refused with `temporary-resolver-failure`, and recorded),
//!   and each gives up after [`LOOKUP_TIMEOUT`], so a guest cannot tie up
//!   the host's resolver threads.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{Linker, Resource, ResourceType};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::p2::Network;
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddress};

use super::denial::{DenialKind, DenialLog};
use super::state::SandboxState;
use crate::policy::NetworkPolicy;

/// Most lookups one run may have unfinished at once.
pub const MAX_LOOKUPS_IN_FLIGHT: usize = 8;

/// How long one lookup may take before it fails as a temporary failure.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest name a lookup accepts (the DNS limit).
const MAX_NAME_LEN: usize = 253;

/// The interface this module serves (the version wasmtime-wasi 48 links;
/// guests importing an older 0.2 version are matched to it by semver).
const INTERFACE: &str = "wasi:sockets/ip-name-lookup@0.2.12";

/// What a resolver answers for one name.
pub type ResolveFuture = Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;

/// Resolves the host names a policy lists, on behalf of a guest. Only ever
/// called with a listed name. The default is [`SystemResolver`]; tests
/// install their own to see exactly which names reach a resolver.
pub trait NameResolver: Send + Sync + fmt::Debug {
    /// The addresses of `name`, a listed host name in lower case.
    fn resolve(&self, name: &str) -> ResolveFuture;
}

/// The host's own resolver (`getaddrinfo` through tokio).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl NameResolver for SystemResolver {
    fn resolve(&self, name: &str) -> ResolveFuture {
        let name = name.to_string();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .map(|a| a.ip().to_canonical())
                .collect())
        })
    }
}

/// One run's name-lookup gate.
#[derive(Debug)]
pub(crate) struct NameLookups {
    /// The policy's listed host names (not IP literals), lower case.
    listed: Vec<String>,
    /// Whether the policy grants any network at all.
    network: bool,
    resolver: Arc<dyn NameResolver>,
    in_flight: Arc<Semaphore>,
    denials: DenialLog,
}

impl NameLookups {
    pub(crate) fn new(
        network: &NetworkPolicy,
        resolver: Arc<dyn NameResolver>,
        denials: DenialLog,
    ) -> Self {
        let mut listed: Vec<String> = network
            .allow
            .iter()
            .filter(|e| e.literal_ip().is_none())
            .map(|e| e.host.clone())
            .collect();
        listed.dedup();
        Self {
            listed,
            network: !network.is_empty(),
            resolver,
            in_flight: Arc::new(Semaphore::new(MAX_LOOKUPS_IN_FLIGHT)),
            denials,
        }
    }

    /// Decides a lookup of `name`; a refusal is recorded as a denial.
    fn start(&self, name: &str) -> Result<Lookup, ErrorCode> {
        if name.len() > MAX_NAME_LEN {
            let shown: String = name.chars().take(64).collect();
            self.deny(
                format!("{shown}..."),
                format!(
                    "a name of {} bytes is longer than any host name",
                    name.len()
                ),
            );
            return Err(ErrorCode::InvalidArgument);
        }
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Lookup::answered(Ok(vec![ip])));
        }
        let lower = name.to_ascii_lowercase();
        if !self.listed.contains(&lower) {
            let reason = if self.network {
                format!(
                    "`{name}` is not a host name on the policy's allowlist; only listed names are resolved"
                )
            } else {
                "the policy grants no network, so no name is resolved".to_string()
            };
            self.deny(name.to_string(), reason);
            return Err(ErrorCode::AccessDenied);
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            self.deny(
                name.to_string(),
                format!("{MAX_LOOKUPS_IN_FLIGHT} name lookups are already in flight in this run"),
            );
            return Err(ErrorCode::TemporaryResolverFailure);
        };
        let query = self.resolver.resolve(&lower);
        let future = Box::pin(async move {
            match tokio::time::timeout(LOOKUP_TIMEOUT, query).await {
                Ok(Ok(addrs)) if addrs.is_empty() => Err(ErrorCode::NameUnresolvable),
                Ok(Ok(addrs)) => Ok(addrs),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "a listed name did not resolve");
                    Err(ErrorCode::NameUnresolvable)
                }
                Err(_) => Err(ErrorCode::TemporaryResolverFailure),
            }
        });
        Ok(Lookup {
            pending: Some((future, permit)),
            answer: Err(ErrorCode::WouldBlock),
        })
    }

    fn deny(&self, target: String, reason: String) {
        self.denials.record(DenialKind::Network, &target, &reason);
    }
}

type Answer = Result<std::vec::IntoIter<IpAddr>, ErrorCode>;
type Pending = (
    Pin<Box<dyn Future<Output = Result<Vec<IpAddr>, ErrorCode>> + Send>>,
    OwnedSemaphorePermit,
);

/// A `resolve-address-stream`: one lookup, pending or answered. Its slot
/// among the run's in-flight lookups is freed as soon as it is answered.
pub(crate) struct Lookup {
    pending: Option<Pending>,
    answer: Answer,
}

impl Lookup {
    fn answered(result: Result<Vec<IpAddr>, ErrorCode>) -> Self {
        Self {
            pending: None,
            answer: result.map(Vec::into_iter),
        }
    }

    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<&mut Answer> {
        if let Some((future, _permit)) = &mut self.pending {
            let Poll::Ready(result) = future.as_mut().poll(cx) else {
                return Poll::Pending;
            };
            self.answer = result.map(Vec::into_iter);
            self.pending = None;
        }
        Poll::Ready(&mut self.answer)
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for Lookup {
    async fn ready(&mut self) {
        std::future::poll_fn(|cx| self.poll_answer(cx).map(|_| ())).await
    }
}

/// Replaces wasmtime-wasi's `wasi:sockets/ip-name-lookup` in `linker`
/// (added before this by `wasmtime_wasi::p2::add_to_linker_async`).
pub(crate) fn add_to_linker(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut interface = linker.instance(INTERFACE)?;
    interface.resource(
        "resolve-address-stream",
        ResourceType::host::<Lookup>(),
        |mut store, rep| {
            store
                .data_mut()
                .ctx()
                .table
                .delete(Resource::<Lookup>::new_own(rep))?;
            Ok(())
        },
    )?;
    interface.func_wrap(
        "resolve-addresses",
        |mut store, (network, name): (Resource<Network>, String)| {
            let state = store.data_mut();
            // The network resource is the capability to look up at all.
            state.ctx().table.get(&network)?;
            let result = match state.lookups.start(&name) {
                Ok(lookup) => Ok(state.ctx().table.push(lookup)?),
                Err(code) => Err(code),
            };
            Ok((result,))
        },
    )?;
    interface.func_wrap(
        "[method]resolve-address-stream.resolve-next-address",
        |mut store, (this,): (Resource<Lookup>,)| {
            let lookup = store.data_mut().ctx().table.get_mut(&this)?;
            let next = match lookup.poll_answer(&mut Context::from_waker(Waker::noop())) {
                Poll::Pending => Err(ErrorCode::WouldBlock),
                Poll::Ready(Ok(addrs)) => Ok(addrs.next().map(IpAddress::from)),
                Poll::Ready(Err(code)) => Err(*code),
            };
            Ok((next,))
        },
    )?;
    interface.func_wrap(
        "[method]resolve-address-stream.subscribe",
        |mut store, (this,): (Resource<Lookup>,)| {
            let pollable = wasmtime_wasi::p2::subscribe(store.data_mut().ctx().table, this)?;
            Ok((pollable,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::policy::Endpoint;

    /// Answers `listed.test` with 192.0.2.7 and records every name asked.
    #[derive(Debug, Default)]
    struct Recording(Mutex<Vec<String>>);

    impl NameResolver for Recording {
        fn resolve(&self, name: &str) -> ResolveFuture {
            self.0.lock().unwrap().push(name.to_string());
            Box::pin(async { Ok(vec!["192.0.2.7".parse().unwrap()]) })
        }
    }

    fn gate(allow: &[&str], resolver: Arc<Recording>) -> (NameLookups, DenialLog) {
        let network = NetworkPolicy {
            allow: allow.iter().map(|a| Endpoint::parse(a).unwrap()).collect(),
        };
        let denials = DenialLog::new(Arc::default(), Arc::default());
        (
            NameLookups::new(&network, resolver, denials.clone()),
            denials,
        )
    }

    fn answer(lookup: &mut Lookup) -> Result<Vec<IpAddr>, ErrorCode> {
        match lookup.poll_answer(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(addrs)) => Ok(addrs.collect()),
            Poll::Ready(Err(code)) => Err(*code),
            Poll::Pending => panic!("the test resolver answers at once"),
        }
    }

    #[tokio::test]
    async fn only_listed_names_reach_the_resolver() {
        let resolver = Arc::new(Recording::default());
        let (gate, denials) = gate(&["Listed.test:443", "10.0.0.9:80"], resolver.clone());
        let mut ok = gate.start("LISTED.test").unwrap();
        assert_eq!(
            answer(&mut ok).unwrap(),
            ["192.0.2.7".parse::<IpAddr>().unwrap()]
        );
        let mut literal = gate.start("::1").unwrap();
        assert_eq!(
            answer(&mut literal).unwrap(),
            ["::1".parse::<IpAddr>().unwrap()]
        );
        for name in [
            "localhost",
            "listed.test.",
            "x.listed.test",
            "10.0.0.9.nip.io",
        ] {
            assert!(
                matches!(gate.start(name), Err(ErrorCode::AccessDenied)),
                "{name}"
            );
        }
        assert!(matches!(
            gate.start(&"a".repeat(4 << 20)),
            Err(ErrorCode::InvalidArgument)
        ));
        assert_eq!(*resolver.0.lock().unwrap(), ["listed.test"]);
        let (kept, _) = denials.take();
        assert_eq!(kept.len(), 5);
        assert!(kept.iter().all(|d| d.kind == DenialKind::Network));
        assert!(kept[4].target.len() < 100, "a huge name is not kept whole");
    }

    #[tokio::test]
    async fn lookups_in_flight_are_capped_and_a_finished_one_frees_its_slot() {
        let resolver = Arc::new(Recording::default());
        let (gate, denials) = gate(&["listed.test:443"], resolver);
        let mut held: Vec<Lookup> = (0..MAX_LOOKUPS_IN_FLIGHT)
            .map(|_| gate.start("listed.test").unwrap())
            .collect();
        assert!(matches!(
            gate.start("listed.test"),
            Err(ErrorCode::TemporaryResolverFailure)
        ));
        assert!(denials.take().0[0].reason.contains("in flight"));
        answer(&mut held[0]).unwrap();
        gate.start("listed.test")
            .expect("the answered lookup freed its slot");
    }
}
