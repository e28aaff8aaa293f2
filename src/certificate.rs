//! When a certificate the tool deploys expires: the `notAfter` of the first certificate
//! of a PEM, read with a minimal DER walk (Certificate → TBSCertificate → Validity), so
//! that `apply` warns before it deploys a certificate about to expire, on any machine
//! (no openssl needed on the controller).

use base64::Engine as _;

/// Days under which a deployed certificate is worth a warning at apply time (`status`
/// reports under 7 days as a problem and under 30 as a warning: the same thresholds).
pub const WARN_DAYS: f64 = 30.0;

/// The Unix time the first certificate of `pem` expires; None when there is none or it
/// does not parse.
pub fn not_after(pem: &str) -> Option<i64> {
    let der = first_certificate(pem)?;
    let (cert, _) = element(&der, 0x30)?;
    let (tbs, _) = element(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = skip(rest)?; // [0] version
    }
    rest = skip(rest)?; // serialNumber
    rest = skip(rest)?; // signature
    rest = skip(rest)?; // issuer
    let (validity, _) = element(rest, 0x30)?;
    let not_before_end = skip(validity)?;
    time(not_before_end)
}

/// Days from `now` (Unix seconds) to the expiry of the certificate in `pem`, when it
/// expires within [`WARN_DAYS`].
pub fn expires_soon(pem: &str, now: i64) -> Option<f64> {
    let days = (not_after(pem)? - now) as f64 / 86_400.0;
    (days < WARN_DAYS).then_some(days)
}

/// Warns (a line, and a `warning` event with --json) about each certificate this run
/// deploys that expires within [`WARN_DAYS`]: an expired one never gets this far (the
/// validation refuses it), one that expires in days would page someone next week.
pub fn warn_deploying(changes: &crate::diff::Changes, p: &crate::output::Printer) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for hc in &changes.hosts {
        for f in &hc.files {
            let Some(days) = f.new_content.as_deref().and_then(|c| expires_soon(c, now)) else {
                continue;
            };
            let message = format!(
                "{}: the certificate in {} expires in {days:.1} days: renew it before it does",
                hc.host, f.path
            );
            p.warn(&message);
            p.event(
                serde_json::json!({"event": "warning", "host": hc.host, "path": f.path,
                "days_left": (days * 10.0).round() / 10.0, "message": message}),
            );
        }
    }
}

fn first_certificate(pem: &str) -> Option<Vec<u8>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.find(BEGIN)? + BEGIN.len();
    let end = start + pem[start..].find(END)?;
    let body: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// The contents of the DER element at the start of `data` with tag `tag`, and what
/// follows it.
fn element(data: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *data.first()? != tag {
        return None;
    }
    let (len, header) = match *data.get(1)? {
        n if n < 0x80 => (n as usize, 2),
        n @ 0x81..=0x84 => {
            let k = (n & 0x7f) as usize;
            let bytes = data.get(2..2 + k)?;
            (
                bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize),
                2 + k,
            )
        }
        _ => return None,
    };
    let end = header.checked_add(len)?;
    Some((data.get(header..end)?, data.get(end..)?))
}

/// What follows the DER element at the start of `data`, whatever its tag.
fn skip(data: &[u8]) -> Option<&[u8]> {
    element(data, *data.first()?).map(|(_, rest)| rest)
}

/// A UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ) in Unix seconds.
fn time(data: &[u8]) -> Option<i64> {
    let (text, year_digits) = match data.first()? {
        0x17 => (element(data, 0x17)?.0, 2),
        0x18 => (element(data, 0x18)?.0, 4),
        _ => return None,
    };
    let text = std::str::from_utf8(text).ok()?;
    let digits = text.strip_suffix('Z')?;
    if digits.len() != year_digits + 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |from: usize, len: usize| digits[from..from + len].parse::<i64>().ok();
    let mut year = num(0, year_digits)?;
    if year_digits == 2 {
        year += if year >= 50 { 1900 } else { 2000 };
    }
    let at = year_digits;
    let (month, day) = (num(at, 2)?, num(at + 2, 2)?);
    let (h, m, s) = (num(at + 4, 2)?, num(at + 6, 2)?, num(at + 8, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example certificate (examples/large/tls): the walk's notAfter is the one
    /// `openssl x509 -enddate` prints.
    #[test]
    fn the_expiry_of_a_real_certificate_matches_openssl() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let pem =
            std::fs::read_to_string(root.join("examples/large/tls/www.foobar.com.pem")).unwrap();
        let t = not_after(&pem).expect("parses");
        let Ok(out) = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-enddate"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(pem.as_bytes())?;
                c.wait_with_output()
            })
        else {
            eprintln!("openssl not installed: only the date arithmetic is checked");
            return;
        };
        let said = String::from_utf8_lossy(&out.stdout);
        // notAfter=Mar  8 12:00:00 2029 GMT
        let words: Vec<&str> = said
            .trim()
            .trim_start_matches("notAfter=")
            .split_whitespace()
            .collect();
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let month = months.iter().position(|m| *m == words[0]).unwrap() as i64 + 1;
        let clock: Vec<i64> = words[2].split(':').map(|x| x.parse().unwrap()).collect();
        let want = days_from_civil(words[3].parse().unwrap(), month, words[1].parse().unwrap())
            * 86_400
            + clock[0] * 3600
            + clock[1] * 60
            + clock[2];
        assert_eq!(t, want, "openssl says {said}");
    }

    #[test]
    fn dates_convert_both_ways() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(time(b"\x17\x0d491231235959Z"), Some(2_524_607_999));
        assert_eq!(time(b"\x17\x0d500101000000Z"), Some(-631_152_000));
        assert_eq!(time(b"\x18\x0f20500101000000Z"), Some(2_524_608_000));
        assert_eq!(time(b"\x17\x0d491331235959Z"), None, "month 13");
        assert_eq!(not_after("no certificate"), None);
        assert_eq!(
            not_after("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"),
            None
        );
    }
}
