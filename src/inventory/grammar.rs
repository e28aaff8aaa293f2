//! Grammars of the inventory's free-text fields that reach configs or commands, and the
//! refusal of secret placeholder text in any value: a value is data, never syntax of
//! the file it lands in (HAProxy, nginx, SQL, shell) and never a secret's placeholder.

use super::source_map::SourceMap;

/// A URL path that HAProxy's `http-check send ... uri` and nginx's `location =` take as
/// one plain word: `/`, then letters, digits, `/`, `-`, `_`, `.` and `~` (no `%`, `#`,
/// `$`, `;`, braces, quotes, spaces or control characters), at most 255, no `..`.
pub fn is_url_path(s: &str) -> bool {
    s.starts_with('/')
        && s.len() <= 255
        && !s.contains("..")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_.~".contains(c))
}

/// A login name as ssh and sudo take it: letters, digits, `_`, `.` and `-`, not
/// starting with `-` or `.`, at most 32.
pub fn is_login_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && !s.starts_with(['-', '.'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// A message per key or value that holds `{{secret:` (src/secrets.rs): placeholders are
/// put by the templates only; one arriving through a value would have the secret
/// resolved into a file the template never meant to hold it (e.g. haproxy.cfg, 0644).
pub fn secret_placeholders(file: &str, map: &SourceMap) -> Vec<String> {
    map.placeholder_text
        .iter()
        .map(|(path, pos)| {
            format!(
                "{file}:{}:{}: {path}: secret placeholder text (`{{{{secret:`) is not \
                 allowed in the inventory: the templates place secrets; name them under \
                 `secrets:`",
                pos.line, pos.col
            )
        })
        .collect()
}

pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_domain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').count() >= 2 && s.split('.').all(is_name)
}

pub fn is_duration(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && ["ms", "s", "m", "h", "d", ""].contains(&unit)
}

pub fn is_size(s: &str) -> bool {
    let digits = s.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
    !digits.is_empty() && digits.len() + 1 >= s.len() && digits.chars().all(|c| c.is_ascii_digit())
}

pub fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A path on a host that the templates put into configs: absolute, plain characters.
pub fn is_remote_path(s: &str) -> bool {
    s.starts_with('/')
        && !s.contains("..")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_-.".contains(c))
}

/// A database or user name that can go into SQL and configs unquoted.
pub fn is_sql_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_paths_and_login_names() {
        for ok in ["/health", "/", "/a/b-c_d.e~f/"] {
            assert!(is_url_path(ok), "{ok}");
        }
        for bad in [
            "health",
            "/health#x",
            "/a b",
            "/h}",
            "/%41",
            "/$x",
            "/a;b",
            "/../etc",
            "/a\u{1b}",
            "/\u{202e}",
        ] {
            assert!(!is_url_path(bad), "{bad:?}");
        }
        assert!(is_login_name("deploy") && is_login_name("ci.bot-2"));
        for bad in ["", "-oProxyCommand", ".x", "a b", "a\nb", "x%h", "é"] {
            assert!(!is_login_name(bad), "{bad:?}");
        }
    }
}
