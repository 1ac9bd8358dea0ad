//! Connections between two worker processes: addresses, listening, connecting, and the async
//! send and receive that every path shares.
//!
//! A local address (`local:NAME`) is a Unix socket in the abstract namespace: it leaves no file
//! behind, and both ends check with `SO_PEERCRED` that the other runs as the same user. It
//! carries only the setup (the shared segment's descriptor, the CUDA IPC probe) and then watches
//! the peer's liveness; data moves through the shared ring. A TCP address (`tcp:HOST:PORT`)
//! carries everything, after authentication with the cluster's secret.
//!
//! Names of local listeners are not guessable ([`Listener::bind_local`]: a prefix and 128 random
//! bits), so nobody can take a worker's name before it binds it; connecting to a name that
//! another user holds fails at once (its `SO_PEERCRED` is wrong), and to one that nobody answers
//! within [`Options::handshake_timeout`].
//!
//! A [`Listener`] never lets one peer hold up another: its gate (`gate.rs`) accepts and
//! authenticates every connection concurrently, without a thread per connection, and a bounded
//! set of threads finishes the setup of those that pass; [`Listener::accept_blocking`] returns
//! only connections that are fully set up. Connections that fail are dropped and counted
//! ([`Listener::refused`]); they are never an error of `accept`.
//!
//! One concern per module, each importing only those listed before it:
//! - `address`: where a worker listens ([`Address`]) and how a connection is set up ([`Options`]);
//! - `connection`: a connection once set up ([`Connection`]): send, receive, abort;
//! - `local`: the local handshake, both sides: the peer's user, the hello, the ring's geometry
//!   and the shared segment's descriptor, the CUDA IPC probe;
//! - `listener`: binding and accepting ([`Listener`]);
//! - `connect`: the connecting side ([`connect_blocking`], [`connect`]).

mod address;
mod connect;
mod connection;
mod listener;
mod local;

pub use address::{Address, Options};
pub use connect::{connect, connect_blocking};
pub use connection::Connection;
pub use listener::Listener;
