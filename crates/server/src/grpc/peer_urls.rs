//! Peer URLs as etcd reads them (`types.NewURLs`, which calls Go's `net/url`): what the
//! Cluster service accepts in a MemberAdd (and, unlike etcd, in a MemberUpdate), and how
//! it stores them. Go's parser is lenient in ways clients rely on (no port check, an
//! empty port, a query) and strict in others (no path, not even "/"; few characters in
//! a host); the tests below are cases sent to a real etcd 3.4.23.

/// etcd's `types.NewURLs` for peer URLs: a non-empty list of URLs, each trimmed of white
/// space and parsed as Go's `net/url` parses it, with scheme http, https, unix or unixs,
/// an authority that `net.SplitHostPort` accepts and no path. Go does not check the port
/// (empty, `99999` and leading zeros pass), nor the inside of `[...]`. Returns the URLs
/// as Go prints them (scheme in lowercase, an empty `#` dropped, non-ASCII host bytes
/// percent-encoded; user info and fragment as given, where Go would re-escape a few
/// characters), sorted; `None` if any is refused.
pub fn parse_peer_urls(urls: &[String]) -> Option<Vec<String>> {
    if urls.is_empty() {
        return None;
    }
    let mut parsed = urls
        .iter()
        .map(|u| parse_peer_url(u))
        .collect::<Option<Vec<_>>>()?;
    parsed.sort();
    Some(parsed)
}

fn parse_peer_url(raw: &str) -> Option<String> {
    let u = raw.trim();
    if u.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return None;
    }
    let (u, fragment) = match u.split_once('#') {
        Some((u, f)) => (u, Some(f)),
        None => (u, None),
    };
    // Go's getScheme: a letter, then letters, digits, '+', '-' or '.', up to ':'.
    let (scheme, rest) = u.split_once(':')?;
    let mut chars = scheme.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https" | "unix" | "unixs") {
        return None;
    }
    // A trailing lone '?' is kept (Go's ForceQuery); the query is not checked.
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    // Without "//" there is no host; after the authority comes the path, which etcd
    // refuses, "/" included.
    let authority = rest.strip_prefix("//")?;
    if authority.contains('/') {
        return None;
    }
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, authority),
    };
    if let Some(user) = userinfo
        && !user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._:~!$&'()*+,;=%@".contains(c))
    {
        return None;
    }
    let host = go_host(host)?;
    split_host_port(&host)?;
    if let Some(f) = fragment {
        percent_decode(f)?;
    }
    let mut out = format!("{scheme}://");
    if let Some(user) = userinfo {
        out.push_str(user);
        out.push('@');
    }
    for &b in &host {
        if b >= 0x80 || b == b'%' {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(char::from(b));
        }
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    if let Some(f) = fragment.filter(|f| !f.is_empty()) {
        out.push('#');
        out.push_str(f);
    }
    Some(out)
}

/// Go's `parseHost` and its unescaping in host mode: the port after the last ':' (or
/// after "]") is digits or nothing; escapes are valid and encode non-ASCII bytes (or
/// '%'); other ASCII characters are the few a host may hold. Returns the host unescaped.
fn go_host(host: &str) -> Option<Vec<u8>> {
    let port = match host.strip_prefix('[') {
        Some(_) => &host[host.rfind(']')? + 1..],
        None => host.rfind(':').map_or("", |i| &host[i..]),
    };
    if !port.is_empty()
        && !port
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let mut raw = host.bytes();
    while let Some(b) = raw.next() {
        if b == b'%' {
            let escaped = [raw.next()?, raw.next()?];
            // Only non-ASCII bytes and '%' itself may be escaped in a host.
            if escaped[0] < b'8' && &escaped != b"25" {
                return None;
            }
        } else if b < 0x80 && !b.is_ascii_alphanumeric() && !b"-_.~!$&'()*+,;=:[]<>\"".contains(&b)
        {
            return None;
        }
    }
    percent_decode(host)
}

/// Go's `net.SplitHostPort`: `host:port` or `[host]:port`, one colon outside brackets,
/// no stray brackets.
fn split_host_port(hostport: &[u8]) -> Option<()> {
    let colon = hostport.iter().rposition(|&b| b == b':')?;
    let bracketed = hostport.first() == Some(&b'[');
    let after_host = if bracketed {
        let end = hostport.iter().position(|&b| b == b']')?;
        if end + 1 != colon {
            return None;
        }
        end + 1
    } else {
        if hostport[..colon].contains(&b':') {
            return None;
        }
        0
    };
    let stray_open = hostport[usize::from(bracketed)..].contains(&b'[');
    let stray_close = hostport[after_host..].contains(&b']');
    (!stray_open && !stray_close).then_some(())
}

/// Decodes `%XX` escapes; `None` for a malformed one.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: peer URLs are accepted, refused and printed as etcd 3.4.23 does (each case
    // below was sent to a real etcd as a learner MemberAdd).
    #[test]
    fn peer_urls_are_read_as_etcd_reads_them() {
        let accepted = [
            ("http://127.0.0.1:1?x=1", "http://127.0.0.1:1?x=1"),
            ("http://127.0.0.1:2#frag", "http://127.0.0.1:2#frag"),
            ("http://u@127.0.0.1:3", "http://u@127.0.0.1:3"),
            ("http://:4", "http://:4"),
            ("http://[::1]:5", "http://[::1]:5"),
            ("HTTP://127.0.0.1:7", "http://127.0.0.1:7"),
            ("http://\u{fc}:8", "http://%C3%BC:8"),
            ("http://127.0.0.1:9\n", "http://127.0.0.1:9"),
            ("\thttp://127.0.0.1:10", "http://127.0.0.1:10"),
            ("http://127.0.0.1:12?", "http://127.0.0.1:12?"),
            ("unix://h:13", "unix://h:13"),
            ("unixs://h:14", "unixs://h:14"),
            ("https://h:15", "https://h:15"),
            ("http://H:22", "http://H:22"),
            ("http://h:023", "http://h:023"),
            ("http://127.0.0.1:99999", "http://127.0.0.1:99999"),
            ("http://127.0.0.1:", "http://127.0.0.1:"),
            ("http://h:65536", "http://h:65536"),
            ("http://h_x:24", "http://h_x:24"),
            ("http://h.:25", "http://h.:25"),
            ("http://[h]:26", "http://[h]:26"),
            ("hTtP://h:28", "http://h:28"),
            ("http://h:31 ", "http://h:31"),
            ("http://h:34#", "http://h:34"),
            ("http://h:35?a#b", "http://h:35?a#b"),
        ];
        for (input, printed) in accepted {
            assert_eq!(
                parse_peer_urls(&[input.to_string()]),
                Some(vec![printed.to_string()]),
                "{input:?}"
            );
        }
        let refused = [
            "",
            "127.0.0.1:2380",
            "http://127.0.0.1",
            "http://",
            "ftp://127.0.0.1:2380",
            "http://127.0.0.1:2380/path",
            "http://127.0.0.1:11/",
            "not a url",
            "http://[::1]",
            "http://h:abc",
            "http://h:1:2",
            "http://h h:6",
            "http://h:-1",
            "http://h:+1",
            "http:127.0.0.1:16",
            "http:/127.0.0.1:17",
            "http:///h:18",
            "http://h%20x:19",
            "http://h%zz:20",
            "http://h:21\0",
            "http://h{:1",
            "http://h|:2",
            "http://h\\:3",
            "http://[::1]x:27",
            "h+t://h:29",
            "1http://h:30",
            "http://h:32/a b",
        ];
        for input in refused {
            assert_eq!(parse_peer_urls(&[input.to_string()]), None, "{input:?}");
        }
        assert_eq!(parse_peer_urls(&[]), None);
        // Sorted; duplicates kept; one bad URL refuses the list.
        let two = ["http://b:2".to_string(), "http://a:1".to_string()];
        assert_eq!(
            parse_peer_urls(&two),
            Some(vec!["http://a:1".to_string(), "http://b:2".to_string()])
        );
        let dup = ["http://a:1".to_string(), "http://a:1".to_string()];
        assert_eq!(parse_peer_urls(&dup).map(|v| v.len()), Some(2));
        let mixed = ["http://a:1".to_string(), "not a url".to_string()];
        assert_eq!(parse_peer_urls(&mixed), None);
    }
}
