//! `wasi:sockets/tcp-create-socket`, counted per run.
//!
//! Every TCP socket a guest creates is a real file descriptor of the host
//! process, and wasmtime-wasi creates one on request for any guest whose
//! policy grants network. [`add_to_linker`] shadows `create-tcp-socket`
//! with a version that lets one run create at most [`MAX_SOCKETS_PER_RUN`]
//! sockets; past it the guest gets `new-socket-limit` and a `network`
//! denial is recorded. Sockets close when the run's store is dropped, so
//! the host's descriptors go back to their baseline after every run.

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::TcpSocket;
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddressFamily};
use wasmtime_wasi::p2::bindings::sockets::tcp_create_socket::Host as _;
use wasmtime_wasi::sockets::WasiSocketsView;

use super::denial::DenialKind;
use super::state::SandboxState;

/// Most TCP sockets one run may create (each is a host file descriptor).
/// With `sandbox_pool.max_size` runs at once, a host holds at most
/// `max_size` x this many guest sockets.
pub const MAX_SOCKETS_PER_RUN: u32 = 128;

/// The interface this module serves (the version wasmtime-wasi 48 links;
/// guests importing an older 0.2 version are matched to it by semver).
const INTERFACE: &str = "wasi:sockets/tcp-create-socket@0.2.12";

/// Replaces wasmtime-wasi's `create-tcp-socket` in `linker` (added before
/// this by `wasmtime_wasi::p2::add_to_linker_async`).
pub(crate) fn add_to_linker(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut interface = linker.instance(INTERFACE)?;
    interface.func_wrap(
        "create-tcp-socket",
        |mut store, (family,): (IpAddressFamily,)| {
            let state = store.data_mut();
            if state.sockets_created >= MAX_SOCKETS_PER_RUN {
                state.denials.record(
                    DenialKind::Network,
                    "tcp socket",
                    &format!("the run already created {MAX_SOCKETS_PER_RUN} sockets, its limit"),
                );
                let refused: Result<Resource<TcpSocket>, ErrorCode> =
                    Err(ErrorCode::NewSocketLimit);
                return Ok((refused,));
            }
            state.sockets_created += 1;
            let result = match state.sockets().create_tcp_socket(family) {
                Ok(socket) => Ok(socket),
                Err(e) => Err(e.downcast()?),
            };
            Ok((result,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
