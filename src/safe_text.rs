//! Text that came from a host, made safe to print: what a host says (file contents in
//! diffs, service messages, agent errors) may hold terminal control sequences, so every
//! line the printer writes goes through [`escape_controls`] (SECURITY.md, finding 7).

use std::borrow::Cow;

/// Whether a character must not reach a terminal as it is: C0 controls other than
/// newline and tab (ESC, carriage return, backspace, BEL...), DEL, C1 controls (U+0080 to
/// U+009F; U+009B is a one-character CSI to some terminals) and the Unicode controls that
/// reorder or hide text (bidi embeddings, overrides and isolates, the marks, and the line
/// and paragraph separators).
fn is_unsafe(c: char) -> bool {
    match c {
        '\n' | '\t' => false,
        '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}' => true,
        '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' => true,
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => true,
        _ => false,
    }
}

/// `text` with every unsafe character written out as an escape: `\x1b` for a C0 control
/// or DEL, `\u{202e}` for the others. Newlines and tabs stay; text without anything to
/// escape is returned as it is.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !is_unsafe(c) {
            out.push(c);
        } else if (c as u32) < 0x80 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

/// A JSON text (as serde_json writes it) with the characters it leaves raw but a terminal
/// may act on (DEL, C1 controls, bidi controls) written as `\uXXXX` escapes: the same
/// JSON value, safe to print. serde_json already escapes C0 controls.
pub fn escape_json_text(json: &str) -> Cow<'_, str> {
    if !json.chars().any(is_unsafe) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if is_unsafe(c) {
            // Outside strings JSON has only ASCII punctuation, digits, letters and
            // whitespace: an unsafe character is always inside a string here.
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding_7_control_characters_from_hosts_are_escaped_for_the_terminal() {
        // Kept: printable text, newlines and tabs, non-Latin letters.
        let plain = "server { listen 80; }\n\tgrüße, данные, 数据 \\x1b as text";
        assert!(matches!(escape_controls(plain), Cow::Borrowed(_)));
        // Escaped: ESC (a colour, a title change, a cursor move), CR, BEL, backspace,
        // DEL, C1 (U+009B is CSI), bidi overrides and isolates, the marks.
        let cases = [
            ("\x1b[2J\x1b]0;owned\x07", "\\x1b[2J\\x1b]0;owned\\x07"),
            ("ok\rFAILED", "ok\\x0dFAILED"),
            ("a\x08b\x7fc\0", "a\\x08b\\x7fc\\x00"),
            ("\u{9b}31m", "\\u{9b}31m"),
            ("user\u{202e}gnp.exe", "user\\u{202e}gnp.exe"),
            (
                "\u{2066}x\u{2069}\u{200f}\u{061c}",
                "\\u{2066}x\\u{2069}\\u{200f}\\u{61c}",
            ),
        ];
        for (raw, shown) in cases {
            let got = escape_controls(raw);
            assert_eq!(got, shown, "{raw:?}");
            assert!(!got.chars().any(is_unsafe), "{got:?}");
        }
        // Escaping is idempotent: escaped text has nothing left to escape.
        let once = escape_controls("\x1b[31m\u{202e}").into_owned();
        assert_eq!(escape_controls(&once), once);
    }

    #[test]
    fn finding_7_json_keeps_its_value_and_loses_raw_controls() {
        let value = serde_json::json!({"output": "a\u{202e}b\u{9b}c\x7f\x1b[0m"});
        let text = value.to_string();
        let safe = escape_json_text(&text);
        assert!(!safe.chars().any(is_unsafe), "{safe}");
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, value);
    }
}
