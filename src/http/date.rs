//! Calendar arithmetic for the two timestamp formats on the wire: the HTTP `Date`
//! header (IMF-fixdate) and RFC 3339 UTC with a `Z`. Both take the time as an
//! argument; the per-core `Date` cache is in `response.rs`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, the unit timestamps travel in internally
/// (PostgreSQL `timestamptz` has the same resolution).
pub fn unix_micros(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// (year, month 1..=12, day 1..=31) for days since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a (year, month 1..=12, day 1..=31): the inverse of
/// `civil_from_days` (Howard Hinnant's `days_from_civil`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(month) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn push_2(out: &mut Vec<u8>, n: u32) {
    out.push(b'0' + (n / 10 % 10) as u8);
    out.push(b'0' + (n % 10) as u8);
}

/// Appends `2026-11-26T21:00:00.123456Z`.
pub fn write_rfc3339_micros(out: &mut Vec<u8>, micros: i64) {
    let secs = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000) as u32;
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let second_of_day = secs.rem_euclid(86_400) as u32;
    let year = year.clamp(0, 9999) as u32;
    push_2(out, year / 100);
    push_2(out, year % 100);
    out.push(b'-');
    push_2(out, month);
    out.push(b'-');
    push_2(out, day);
    out.push(b'T');
    push_2(out, second_of_day / 3600);
    out.push(b':');
    push_2(out, second_of_day / 60 % 60);
    out.push(b':');
    push_2(out, second_of_day % 60);
    out.push(b'.');
    push_2(out, fraction / 10_000);
    push_2(out, fraction / 100 % 100);
    push_2(out, fraction % 100);
    out.push(b'Z');
}

pub fn rfc3339_micros(micros: i64) -> String {
    let mut out = Vec::with_capacity(27);
    write_rfc3339_micros(&mut out, micros);
    String::from_utf8(out).unwrap_or_default()
}

/// Renders `Thu, 26 Nov 2026 21:00:00 GMT` (always 29 bytes).
pub fn http_date(unix_secs: i64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] =
        [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];
    let days = unix_secs.div_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let second_of_day = unix_secs.rem_euclid(86_400) as u32;
    let mut out = Vec::with_capacity(29);
    out.extend_from_slice(DAYS[days.rem_euclid(7) as usize]);
    out.extend_from_slice(b", ");
    push_2(&mut out, day);
    out.push(b' ');
    out.extend_from_slice(MONTHS[(month - 1) as usize]);
    out.push(b' ');
    let year = year.clamp(0, 9999) as u32;
    push_2(&mut out, year / 100);
    push_2(&mut out, year % 100);
    out.push(b' ');
    push_2(&mut out, second_of_day / 3600);
    out.push(b':');
    push_2(&mut out, second_of_day / 60 % 60);
    out.push(b':');
    push_2(&mut out, second_of_day % 60);
    out.extend_from_slice(b" GMT");
    let mut fixed = [0u8; 29];
    fixed.copy_from_slice(&out);
    fixed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(&http_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(&http_date(1_795_734_000), b"Thu, 26 Nov 2026 23:00:00 GMT");
        assert_eq!(&http_date(951_782_400), b"Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_micros(1_795_734_000_123_456), "2026-11-26T23:00:00.123456Z");
        assert_eq!(rfc3339_micros(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-719_468, -1, 0, 59, 11_016, 20_783, 2_932_896] {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days, "{year}-{month}-{day}");
        }
        assert_eq!(civil_from_days(20_783), (2026, 11, 26));
    }

    #[test]
    fn micros_roundtrip_through_system_time() {
        let at = UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_000_001);
        assert_eq!(unix_micros(at), 1_700_000_000_000_001);
    }
}
