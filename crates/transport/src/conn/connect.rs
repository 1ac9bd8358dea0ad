//! The connecting side: [`connect_blocking`] (and its async form [`connect`]) reaches a
//! [`Listener`](crate::Listener) and runs the connector's half of its handshake, the local one
//! (`local.rs`) or the TCP challenge (`secret.rs`), all within one deadline.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;

use super::address::{Address, Options};
use super::connection::Connection;
use super::local;
use crate::TransportError;
use crate::device::Device;
use crate::secret::authenticate_client;
use crate::socket::Deadline;

/// Connects to a listening peer, blocking for at most [`Options::handshake_timeout`].
///
/// # Errors
/// Nobody listens there; the peer is another user ([`TransportError::Authentication`]) or lacks
/// the secret; it did not answer in time ([`TransportError::Timeout`]); or setup failed.
pub fn connect_blocking(
    address: &Address,
    device: Arc<dyn Device>,
    options: &Options,
) -> Result<Connection, TransportError> {
    options.check()?;
    let deadline = Deadline::after(options.handshake_timeout);
    match address {
        Address::Local(name) => local::connect(name, &device, options, &deadline),
        Address::Tcp(addr) => {
            let secret = options.secret.as_ref().ok_or_else(|| {
                TransportError::Authentication("connecting over TCP needs the cluster's secret".into())
            })?;
            let target = addr
                .to_socket_addrs()
                .map_err(TransportError::io("resolve"))?
                .next()
                .ok_or_else(|| TransportError::InvalidArgument(format!("`{addr}` resolves to no address")))?;
            let mut stream = TcpStream::connect_timeout(&target, deadline.remaining()?)
                .map_err(|e| deadline.explain(TransportError::io("connect")(e)))?;
            deadline.arm(&stream)?;
            authenticate_client(&mut stream, secret).map_err(|e| deadline.explain(e))?;
            Connection::tcp(stream, &device, options.stall_timeout)
        }
    }
}

/// Connects to a listening peer.
///
/// # Errors
/// As [`connect_blocking`].
pub async fn connect(
    address: Address,
    device: Arc<dyn Device>,
    options: Options,
) -> Result<Connection, TransportError> {
    tokio::task::spawn_blocking(move || connect_blocking(&address, device, &options))
        .await
        .map_err(|e| TransportError::Internal(format!("the connect task failed: {e}")))?
}
