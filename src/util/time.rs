//! Calendar arithmetic for the two timestamp formats on the wire: the HTTP `Date`
//! header (IMF-fixdate) and RFC 3339 UTC with a `Z`, and reading an HTTP-date back
//! (a webhook receiver's `Retry-After`). All take the time as an argument; the
//! per-core `Date` cache is in `response.rs`.

use std::time::{SystemTime, UNIX_EPOCH};

/// The wall clock, read here and nowhere else. Everything that depends on the time
/// takes it as an argument (`now_micros` and friends are called at the edges: request
/// handlers, the storage thread's loops), so the logic below is tested with any time.
pub fn now() -> SystemTime {
    SystemTime::now()
}

/// The wall clock in microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    unix_micros(now())
}

/// The wall clock in milliseconds since the Unix epoch (rate windows, throttles).
pub fn now_ms() -> u64 {
    now_micros().max(0) as u64 / 1000
}

/// The wall clock in whole seconds since the Unix epoch (`Date`, webhook timestamps).
pub fn now_secs() -> i64 {
    now_micros().div_euclid(1_000_000)
}

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

/// Parses an RFC 3339 date-time (`2026-12-02T14:00:00Z`, `…T14:00:00.5+01:00`; `t`/`z`
/// and a space for `T` accepted) to µs since the epoch. Digits beyond microseconds
/// are cut. `None` for anything else, including impossible dates and offsets.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let digits = b.get(range)?;
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let separators_ok = b.get(4) == Some(&b'-')
        && b.get(7) == Some(&b'-')
        && matches!(b.get(10), Some(b'T' | b't' | b' '))
        && b.get(13) == Some(&b':')
        && b.get(16) == Some(&b':');
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => return None,
    };
    if !separators_ok || day == 0 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut at = 19;
    let mut micros = 0i64;
    if b.get(at) == Some(&b'.') {
        let digits = b[at + 1..].iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        for (i, digit) in b[at + 1..at + 1 + digits].iter().take(6).enumerate() {
            micros += i64::from(digit - b'0') * 10i64.pow(5 - i as u32);
        }
        at += 1 + digits;
    }
    let offset_secs = match b.get(at..)? {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), ..] if b.len() == at + 6 && b[at + 3] == b':' => {
            let (hours, minutes) = (number(at + 1..at + 3)?, number(at + 4..at + 6)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = i64::from(hours * 3600 + minutes * 60);
            if *sign == b'+' {
                offset
            } else {
                -offset
            }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    // A leap second (:60) counts as the next second's start.
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    Some(secs * 1_000_000 + micros)
}

/// Month names of HTTP-dates, January first.
const MONTHS: [&[u8; 3]; 12] =
    [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];

/// Renders `Thu, 26 Nov 2026 21:00:00 GMT` (always 29 bytes).
pub fn http_date(unix_secs: i64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
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

/// Seconds since the Unix epoch of an HTTP-date (RFC 9110 §5.6.7): the IMF-fixdate
/// `Sun, 06 Nov 1994 08:49:37 GMT` that senders must use, and the two obsolete forms
/// recipients must still read, RFC 850 `Sunday, 06-Nov-94 08:49:37 GMT` and asctime
/// `Sun Nov  6 08:49:37 1994`. `None` for anything else, an impossible date
/// (`31 Feb`) included. Names match case-insensitively and runs of spaces count as one;
/// the weekday must be a weekday name but is not checked against the date (the date
/// wins). `now` only places RFC 850's two-digit year: RFC 9110 reads a year that would
/// be more than 50 years in the future as the latest past year with those digits.
pub fn parse_http_date(text: &[u8], now: SystemTime) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?;
    let mut fields = text.split_ascii_whitespace();
    let weekday = fields.next()?;
    let (year, month, day, time) = match weekday.strip_suffix(',') {
        // IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
        Some(short) if short.len() == 3 => {
            if !is_weekday(short, false) {
                return None;
            }
            let (day, month, year, time) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
            fields.next().filter(|zone| zone.eq_ignore_ascii_case("GMT"))?;
            (year_of(year, 4)?, month_of(month)?, day_of(day)?, time)
        }
        // RFC 850: `Sunday, 06-Nov-94 08:49:37 GMT`.
        Some(long) => {
            if !is_weekday(long, true) {
                return None;
            }
            let (date, time) = (fields.next()?, fields.next()?);
            fields.next().filter(|zone| zone.eq_ignore_ascii_case("GMT"))?;
            let mut date = date.split('-');
            let (day, month, year) = (date.next()?, date.next()?, date.next()?);
            if date.next().is_some() {
                return None;
            }
            (year_near(year_of(year, 2)?, now), month_of(month)?, day_of(day)?, time)
        }
        // asctime: `Sun Nov  6 08:49:37 1994`.
        None => {
            if !is_weekday(weekday, false) {
                return None;
            }
            let (month, day, time, year) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
            (year_of(year, 4)?, month_of(month)?, day_of(day)?, time)
        }
    };
    if fields.next().is_some() {
        return None;
    }
    let days = days_from_civil(year, month, day);
    // An impossible day (30 Feb) would silently become a day of the next month.
    if civil_from_days(days) != (year, month, day) {
        return None;
    }
    Some(days * 86_400 + i64::from(second_of_day(time.as_bytes())?))
}

/// Whether `name` is a weekday's full name (`full`) or its three-letter abbreviation.
fn is_weekday(name: &str, full: bool) -> bool {
    const WEEKDAYS: [&str; 7] =
        ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    WEEKDAYS.iter().any(|day| if full { day } else { &day[..3] }.eq_ignore_ascii_case(name))
}

/// The value of exactly `count` ASCII digits (`count` ≤ 4, so it fits).
fn digits(text: &str, count: usize) -> Option<u32> {
    if text.len() != count || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0, |n, b| n * 10 + u32::from(b - b'0')))
}

fn day_of(text: &str) -> Option<u32> {
    digits(text, 2).or_else(|| digits(text, 1)).filter(|day| (1..=31).contains(day))
}

fn month_of(name: &str) -> Option<u32> {
    MONTHS.iter().position(|month| month.eq_ignore_ascii_case(name.as_bytes())).map(|i| i as u32 + 1)
}

fn year_of(text: &str, count: usize) -> Option<i64> {
    digits(text, count).map(i64::from)
}

/// A two-digit year placed within 50 years of `now`'s year (RFC 9110 §5.6.7).
fn year_near(two_digits: i64, now: SystemTime) -> i64 {
    let now_year = civil_from_days(unix_micros(now).div_euclid(86_400_000_000)).0;
    let year = now_year - now_year.rem_euclid(100) + two_digits;
    if year > now_year + 50 {
        year - 100
    } else if year <= now_year - 50 {
        year + 100
    } else {
        year
    }
}

/// `08:49:37` as seconds since midnight (second 60 is a leap second).
fn second_of_day(text: &[u8]) -> Option<u32> {
    let [h1, h2, b':', m1, m2, b':', s1, s2] = *text else { return None };
    let pair = |a: u8, b: u8| {
        (a.is_ascii_digit() && b.is_ascii_digit()).then(|| u32::from(a - b'0') * 10 + u32::from(b - b'0'))
    };
    let (hour, minute, second) = (pair(h1, h2)?, pair(m1, m2)?, pair(s1, s2)?);
    (hour < 24 && minute < 60 && second <= 60).then_some(hour * 3_600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_parses_what_it_writes_and_offsets() {
        for micros in [0, 1_764_684_000_123_456, 951_782_400_000_000] {
            assert_eq!(parse_rfc3339(&rfc3339_micros(micros)), Some(micros));
        }
        let utc = parse_rfc3339("2026-12-02T14:00:00Z").unwrap();
        assert_eq!(parse_rfc3339("2026-12-02T15:30:00+01:30"), Some(utc));
        assert_eq!(parse_rfc3339("2026-12-02t13:00:00-01:00"), Some(utc));
        assert_eq!(parse_rfc3339("2026-12-02 14:00:00.5z"), Some(utc + 500_000));
        assert_eq!(parse_rfc3339("2026-12-02T14:00:00.1234567Z"), Some(utc + 123_456), "beyond µs cut");
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z").map(|m| m % 86_400_000_000), Some(0));
        for bad in [
            "",
            "2026-12-02",
            "2026-12-02T14:00:00",
            "2026-13-02T14:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-12-02T24:00:00Z",
            "2026-12-02T14:00:00.Z",
            "2026-12-02T14:00:00+1:00",
            "2026-12-02T14:00:00+01:00x",
            "2026-12-02T14:00:00ZZ",
            "２026-12-02T14:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

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

    /// 1994-11-06T08:49:37Z, RFC 9110's example instant.
    const EXAMPLE_SECS: i64 = 784_111_777;

    fn at(unix_secs: u64) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_secs(unix_secs)
    }

    #[test]
    fn reads_the_three_http_date_forms() {
        let now = at(1_795_734_000); // 2026
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "  sun, 06 nov 1994 08:49:37 gmt ",
        ] {
            assert_eq!(parse_http_date(text.as_bytes(), now), Some(EXAMPLE_SECS), "{text}");
        }
        assert_eq!(parse_http_date(b"Thu, 01 Jan 1970 00:00:00 GMT", now), Some(0));
        assert_eq!(parse_http_date(b"Sat, 31 Dec 1960 23:59:60 GMT", now), Some(-283_996_800));
    }

    #[test]
    fn reads_back_every_date_it_writes() {
        let now = at(0);
        // From 1900-01-01 to the last day of year 9999, in steps of about 89 days.
        let mut unix_secs = -2_208_988_800;
        while unix_secs < 253_402_300_800 {
            let written = http_date(unix_secs);
            assert_eq!(
                parse_http_date(&written, now),
                Some(unix_secs),
                "{}",
                String::from_utf8_lossy(&written)
            );
            unix_secs += 7_654_321;
        }
    }

    #[test]
    fn refuses_what_is_not_an_http_date() {
        let now = at(1_795_734_000);
        for text in [
            "",
            "120",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994 08:49:37 GMT extra",
            "Sun, 06 Nov 94 08:49:37 GMT",
            "Sun, 6 Nov 1994 8:49:37 GMT",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 29 Feb 2100 08:49:37 GMT",
            "Sun, 00 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:60:00 GMT",
            "Sun, 06 Nov 1994 08:49:61 GMT",
            "Sun, 06 Xyz 1994 08:49:37 GMT",
            "Funday, 06-Nov-94 08:49:37 GMT",
            "Sun, 06-Nov-94 08:49:37 GMT",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "Sunday, 06-Nov-94-1 08:49:37 GMT",
            "Sun Nov  6 08:49:37 94",
            "Sun Nov  6 08:49:37 1994 GMT",
            "2026-11-26T21:00:00Z",
        ] {
            assert_eq!(parse_http_date(text.as_bytes(), now), None, "{text}");
        }
        assert_eq!(parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT\xff", now), None);
    }

    #[test]
    fn two_digit_years_land_within_fifty_years_of_now() {
        let year = |text: &str, now_unix_secs| {
            let secs = parse_http_date(text.as_bytes(), at(now_unix_secs)).unwrap();
            civil_from_days(secs.div_euclid(86_400)).0
        };
        let in_2026 = 1_795_734_000;
        assert_eq!(year("Sunday, 06-Nov-94 08:49:37 GMT", in_2026), 1994);
        assert_eq!(year("Friday, 06-Nov-26 08:49:37 GMT", in_2026), 2026);
        assert_eq!(year("Friday, 06-Nov-76 08:49:37 GMT", in_2026), 2076);
        assert_eq!(year("Sunday, 06-Nov-77 08:49:37 GMT", in_2026), 1977);
        assert_eq!(year("Sunday, 06-Nov-94 08:49:37 GMT", 0), 1994, "from 1970");
    }
}
