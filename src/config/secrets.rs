//! Secrets in configuration errors: which keys hold one, their values in the tree and the URL,
//! and a message with every one of them blanked out.

use serde_norway::Value;

use super::postgres::percent_decode;
use super::raw::show;

/// Whether the dotted key holds a secret, whose value no message may repeat:
/// `postgres.password` and every Kafka property that names a password, a secret, a private key
/// or a token.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "key.pem", "sslkey", "token", "oauthbearer.config", "jaas"]
        .iter()
        .any(|word| key.contains(word))
}

/// The values of every secret in the tree: the secret keys' values (each element of a list,
/// the text of a number), and the password of `postgres.jdbc_url`, as written and decoded.
pub(super) fn collect_secrets(root: &Value, out: &mut Vec<String>) {
    fn scalars(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Sequence(items) => items.iter().for_each(|i| scalars(i, out)),
            Value::Mapping(m) => m.values().for_each(|i| scalars(i, out)),
            Value::Tagged(t) => scalars(&t.value, out),
            Value::Null => {}
            Value::String(s) => out.push(s.clone()),
            other => out.push(show(other)),
        }
    }
    fn walk(v: &Value, path: &str, out: &mut Vec<String>) {
        let Value::Mapping(m) = v else { return };
        for (k, v) in m {
            let Some(k) = k.as_str() else { continue };
            let path = if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
            if is_secret(&path) {
                scalars(v, out);
            } else if path == "postgres.jdbc_url"
                && let Some(url) = v.as_str()
            {
                out.extend(url_secrets(url));
            } else {
                walk(v, &path, out);
            }
        }
    }
    walk(root, "", out);
}

/// The password of a `[jdbc:]postgres[ql]://user:password@host/db?password=…` URL, as written
/// and %-decoded.
fn url_secrets(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if let Some((userinfo, _)) = authority.rsplit_once('@')
        && let Some((_, password)) = userinfo.split_once(':')
    {
        out.push(password.to_string());
    }
    if let Some((_, query)) = rest.split_once('?') {
        for pair in query.split('&') {
            if let Some((k, v)) = pair.split_once('=')
                && is_secret(k)
            {
                out.push(v.to_string());
            }
        }
    }
    let decoded: Vec<String> = out.iter().filter_map(|p| percent_decode(p).ok()).collect();
    out.extend(decoded);
    out
}

/// `message` with every secret of three or more characters replaced by `***` (a shorter one
/// would blank out ordinary words).
pub(super) fn scrub(mut message: String, secrets: &[String]) -> String {
    let mut secrets: Vec<&String> = secrets.iter().filter(|s| s.chars().count() >= 3).collect();
    // The longest first, so a secret that contains another is blanked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for secret in secrets {
        if message.contains(secret.as_str()) {
            message = message.replace(secret.as_str(), "***");
        }
    }
    message
}
