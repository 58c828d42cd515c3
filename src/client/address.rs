//! Agent addresses as `volumectl --address` accepts them.

use std::fmt;
use std::path::PathBuf;

/// Agent endpoint as seen from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `unix:///path`: a unix socket the agent serves directly (tests, demos).
    Unix(PathBuf),
    /// `vsock://CID:PORT`: an AF_VSOCK socket in the guest with context id `cid`.
    Vsock { cid: u32, port: u32 },
    /// `hvsock:///path/to/vmm.sock:PORT`: hybrid vsock, the unix socket of a
    /// VMM that forwards to guest vsock `port` after a `CONNECT` handshake.
    HybridVsock { uds_path: PathBuf, port: u32 },
}

/// Reason an address string was rejected, without the address itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressSyntaxError(pub &'static str);

impl Address {
    /// Parses `unix:///PATH`, `vsock://CID:PORT` or `hvsock:///PATH:PORT`.
    pub fn parse(text: &str) -> Result<Address, AddressSyntaxError> {
        if let Some(path) = text.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(AddressSyntaxError("expected unix:///ABSOLUTE/PATH"));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = text.strip_prefix("vsock://") {
            let (cid, port) = rest.split_once(':').ok_or(AddressSyntaxError(
                "expected vsock://CID:PORT, e.g. vsock://3:1024",
            ))?;
            let cid = cid
                .parse()
                .map_err(|_| AddressSyntaxError("CID must be an unsigned 32-bit number"))?;
            return Ok(Address::Vsock {
                cid,
                port: parse_port(port)?,
            });
        }
        if let Some(rest) = text.strip_prefix("hvsock://") {
            // The port follows the last colon, so the path itself may contain colons.
            let (path, port) = rest.rsplit_once(':').ok_or(AddressSyntaxError(
                "expected hvsock:///PATH/TO/VMM.SOCK:PORT, e.g. hvsock:///run/vm/vsock.sock:1024",
            ))?;
            if !path.starts_with('/') {
                return Err(AddressSyntaxError(
                    "the hybrid vsock socket path must be absolute",
                ));
            }
            return Ok(Address::HybridVsock {
                uds_path: PathBuf::from(path),
                port: parse_port(port)?,
            });
        }
        Err(AddressSyntaxError(
            "expected unix:///PATH, vsock://CID:PORT or hvsock:///PATH:PORT",
        ))
    }
}

fn parse_port(text: &str) -> Result<u32, AddressSyntaxError> {
    text.parse()
        .map_err(|_| AddressSyntaxError("port must be an unsigned 32-bit number"))
}

impl fmt::Display for Address {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(formatter, "unix://{}", path.display()),
            Address::Vsock { cid, port } => write!(formatter, "vsock://{cid}:{port}"),
            Address::HybridVsock { uds_path, port } => {
                write!(formatter, "hvsock://{}:{port}", uds_path.display())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme() {
        assert_eq!(
            Address::parse("unix:///run/volume-agent.sock"),
            Ok(Address::Unix(PathBuf::from("/run/volume-agent.sock")))
        );
        assert_eq!(
            Address::parse("vsock://3:1024"),
            Ok(Address::Vsock { cid: 3, port: 1024 })
        );
        assert_eq!(
            Address::parse("hvsock:///run/vm/vhost.sock:1024"),
            Ok(Address::HybridVsock {
                uds_path: PathBuf::from("/run/vm/vhost.sock"),
                port: 1024
            })
        );
    }

    #[test]
    fn hybrid_vsock_port_is_after_last_colon() {
        assert_eq!(
            Address::parse("hvsock:///tmp/a:b/vm.sock:5"),
            Ok(Address::HybridVsock {
                uds_path: PathBuf::from("/tmp/a:b/vm.sock"),
                port: 5
            })
        );
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "unix:///a/b.sock",
            "vsock://2:1024",
            "hvsock:///x/y.sock:10",
        ] {
            assert_eq!(Address::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn rejects_malformed_addresses() {
        for text in [
            "",
            "/run/agent.sock",
            "tcp://127.0.0.1:80",
            "unix://relative.sock",
            "vsock://3",
            "vsock://-1:1024",
            "vsock://3:port",
            "vsock://3:99999999999",
            "hvsock:///run/vm.sock",
            "hvsock://run/vm.sock:1024",
            "hvsock:///run/vm.sock:",
        ] {
            assert!(Address::parse(text).is_err(), "{text:?} was accepted");
        }
    }
}
