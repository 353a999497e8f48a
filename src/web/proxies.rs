//! The client behind a reverse proxy: behind an ingress controller every
//! request comes from the controller's address, so throttling failed logins
//! per peer would let anyone lock everyone out. For a trusted proxy's
//! requests the client is the rightmost X-Forwarded-For address that is not
//! itself a trusted proxy (the leftmost entries are the client's to forge).

use std::net::IpAddr;

use ipnet::IpNet;

/// An address (a /32 or /128) or a CIDR range.
pub fn parse(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The client of a request from `peer` with these X-Forwarded-For headers.
pub fn client<'a>(peer: IpAddr, forwarded: impl Iterator<Item = &'a str>, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded.flat_map(|h| h.split(',')).collect();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => continue,
            Ok(ip) => return ip,
            // Garbage where an address should be: stop at the last proxy.
            Err(_) => break,
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_trusted_proxy_names_the_client_and_others_do_not() {
        let trusted = [parse("10.0.0.0/8").unwrap(), parse("192.0.2.7").unwrap()];
        // Not from a proxy: the header is the client's to forge and ignored.
        assert_eq!(
            client(ip("203.0.113.5"), ["1.2.3.4"].into_iter(), &trusted),
            ip("203.0.113.5")
        );
        // From the ingress: the rightmost untrusted hop.
        assert_eq!(
            client(ip("10.1.2.3"), ["6.6.6.6, 198.51.100.9"].into_iter(), &trusted),
            ip("198.51.100.9")
        );
        // Two proxies in a row, split over two headers.
        assert_eq!(
            client(
                ip("10.1.2.3"),
                ["198.51.100.9", "192.0.2.7"].into_iter(),
                &trusted
            ),
            ip("198.51.100.9")
        );
        // No header, or garbage: the proxy itself.
        assert_eq!(
            client(ip("10.1.2.3"), std::iter::empty(), &trusted),
            ip("10.1.2.3")
        );
        assert_eq!(
            client(ip("10.1.2.3"), ["nonsense"].into_iter(), &trusted),
            ip("10.1.2.3")
        );
        // Nothing trusted: always the peer.
        assert_eq!(
            client(ip("10.1.2.3"), ["198.51.100.9"].into_iter(), &[]),
            ip("10.1.2.3")
        );
        assert!(parse("not-an-address").is_none());
        assert_eq!(parse("2001:db8::/32").unwrap().prefix_len(), 32);
    }
}
