//! `iscsi://[user[%password]@]host[:port]/target-iqn/lun` URLs, the form
//! libiscsi tools and `meshdrain export serve` print.

use std::fmt;

/// A parsed iSCSI URL.
#[derive(Clone, PartialEq, Eq)]
pub struct IscsiUrl {
    /// Host (IPv6 without brackets) and port joined as a socket address string.
    pub host: String,
    /// TCP port (3260 by default).
    pub port: u16,
    /// Target IQN.
    pub target: String,
    /// LUN number.
    pub lun: u16,
    /// CHAP user, if given.
    pub user: Option<String>,
    /// CHAP secret, if given.
    pub password: Option<String>,
}

impl fmt::Debug for IscsiUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for IscsiUrl {
    /// Prints the URL without the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        if let Some(u) = &self.user {
            write!(f, "iscsi://{u}@")?;
        } else {
            write!(f, "iscsi://")?;
        }
        write!(f, "{host}:{}/{}/{}", self.port, self.target, self.lun)
    }
}

/// Why a URL did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid iSCSI URL {url:?}: {why}; expected iscsi://host[:port]/<target-iqn>/<lun>")]
pub struct UrlError {
    url: String,
    why: &'static str,
}

impl IscsiUrl {
    /// Parses a URL.
    pub fn parse(url: &str) -> Result<IscsiUrl, UrlError> {
        let err = |why| UrlError { url: url.to_string(), why };
        let rest = url.strip_prefix("iscsi://").ok_or(err("missing iscsi:// scheme"))?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (user, password) = match auth {
            Some(a) => match a.split_once('%') {
                Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
                None => (Some(a.to_string()), None),
            },
            None => (None, None),
        };
        let (hostport, path) = rest.split_once('/').ok_or(err("missing /<target>/<lun>"))?;
        let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
            let (h, p) = h.split_once(']').ok_or(err("unclosed [ in IPv6 host"))?;
            (h.to_string(), p.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| err("port is not a number"))?,
            None => 3260,
        };
        let (target, lun) = path.rsplit_once('/').ok_or(err("missing /<lun>"))?;
        let lun = lun.parse().map_err(|_| err("LUN is not a number"))?;
        if host.is_empty() || target.is_empty() {
            return Err(err("empty host or target"));
        }
        Ok(IscsiUrl { host, port, target: target.to_string(), lun, user, password })
    }

    /// `host:port` suitable for `TcpStream::connect`.
    pub fn socket_addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        let u = IscsiUrl::parse("iscsi://127.0.0.1:3261/iqn.2026-11.dev.meshdrain:v/1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str(), u.lun),
            ("127.0.0.1", 3261, "iqn.2026-11.dev.meshdrain:v", 1)
        );
        let u = IscsiUrl::parse("iscsi://bob%secret@[fd00::1]/iqn.x/0").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.user.as_deref(), u.password.as_deref()),
            ("fd00::1", 3260, Some("bob"), Some("secret"))
        );
        assert_eq!(u.socket_addr(), "[fd00::1]:3260");
        assert!(IscsiUrl::parse("http://x/y/1").is_err());
        assert!(!format!("{u}").contains("secret"));
    }
}
