//! The retry schedule and what each attempt's result leads to. Plain data and
//! functions: the caller supplies the jitter, so tests need no clock and no randomness.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::util::time::parse_http_date;

/// The contract's default: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (8 attempts in all).
pub const DEFAULT_SCHEDULE: &str = "5s,5m,30m,2h,5h,10h,10h";
/// Jitter applied to every delay: ±10%.
pub const JITTER_FRACTION: f64 = 0.1;
/// Most retry delays a schedule may have.
pub const SCHEDULE_STEPS_MAX: usize = 32;

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The receiver answered with this status (and `Retry-After`, if any).
    Status { code: u16, retry_after: Option<Duration> },
    /// No answer: refused connection, timeout, TLS or protocol error, forbidden address.
    Error(String),
}

/// What to record after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Delivered,
    Retry {
        delay: Duration,
        error: String,
    },
    /// The last attempt failed: the event becomes `failed` and stays in the inbox.
    Failed {
        error: String,
    },
    /// `410 Gone`: push is switched off for the organisation; the event stays pending.
    Gone,
}

/// Delays between attempts: attempt 1 is immediate, attempt n+1 follows attempt n's
/// failure after `delays[n-1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let millis = match unit {
        "ms" => number,
        "s" => number.checked_mul(1_000)?,
        "m" => number.checked_mul(60_000)?,
        "h" => number.checked_mul(3_600_000)?,
        "d" => number.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(millis))
}

impl RetrySchedule {
    /// Parses `5s,5m,30m,2h`: integers with a unit (`ms`, `s`, `m`, `h`, `d`).
    pub fn parse(text: &str) -> Result<RetrySchedule, String> {
        let delays = text
            .split(',')
            .map(|step| {
                parse_duration(step)
                    .ok_or_else(|| format!("{step:?} is not a duration like 500ms, 5s, 5m, 2h"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if delays.is_empty() || delays.len() > SCHEDULE_STEPS_MAX {
            return Err(format!("a retry schedule has 1 to {SCHEDULE_STEPS_MAX} steps"));
        }
        Ok(RetrySchedule { delays })
    }

    /// Attempts in all before an event is `failed`.
    pub fn attempts_max(&self) -> u32 {
        self.delays.len() as u32 + 1
    }

    /// The longest step: the cap for a receiver's `Retry-After`.
    pub fn delay_max(&self) -> Duration {
        self.delays.iter().copied().max().unwrap_or_default()
    }

    /// Decides after attempt number `attempts_before + 1`. `jitter` is uniform in
    /// [-1, 1] and scales the delay by ±`JITTER_FRACTION`.
    ///
    /// The delay is the schedule's step, jittered. On 429 and 503 (only) a receiver's
    /// `Retry-After`, capped at the longest step, replaces the step and is a floor: the
    /// delay is `max(asked × (1 + JITTER_FRACTION × jitter), asked)`, so jitter only ever
    /// adds to what the receiver asked (up to +10%) and never makes an attempt earlier.
    pub fn decide(&self, attempts_before: u32, result: &AttemptResult, jitter: f64) -> Decision {
        let (error, retry_after) = match result {
            AttemptResult::Status { code: 200..=299, .. } => return Decision::Delivered,
            AttemptResult::Status { code: 410, .. } => return Decision::Gone,
            AttemptResult::Status { code, retry_after } => {
                let honoured = if matches!(code, 429 | 503) { *retry_after } else { None };
                (format!("HTTP {code}"), honoured)
            }
            AttemptResult::Error(error) => (error.clone(), None),
        };
        let Some(&step) = self.delays.get(attempts_before as usize) else {
            return Decision::Failed { error };
        };
        let asked = retry_after.map(|after| after.min(self.delay_max()));
        let factor = 1.0 + JITTER_FRACTION * jitter.clamp(-1.0, 1.0);
        let delay = asked.unwrap_or(step).mul_f64(factor).max(asked.unwrap_or_default());
        Decision::Retry { delay, error }
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        RetrySchedule::parse(DEFAULT_SCHEDULE)
            .unwrap_or(RetrySchedule { delays: vec![Duration::from_secs(5)] })
    }
}

/// A receiver's `Retry-After` (RFC 9110 §10.2.3) as a delay from `now`, the time the
/// answer arrived: delay-seconds (`120`; more digits than a u64 holds saturate, and
/// `decide` caps the delay anyway), or an HTTP-date, which is that far from `now` (a
/// date already past: zero). `None` when it is neither; the schedule's step applies.
pub fn parse_retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let value = value.trim_ascii();
    if !value.is_empty() && value.iter().all(u8::is_ascii_digit) {
        let seconds = value
            .iter()
            .try_fold(0u64, |n, &digit| n.checked_mul(10)?.checked_add(u64::from(digit - b'0')))
            .unwrap_or(u64::MAX);
        return Some(Duration::from_secs(seconds));
    }
    let at_unix_secs = parse_http_date(value, now)?;
    let Ok(at_unix_secs) = u64::try_from(at_unix_secs) else { return Some(Duration::ZERO) };
    Some((UNIX_EPOCH + Duration::from_secs(at_unix_secs)).duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> AttemptResult {
        AttemptResult::Status { code, retry_after: None }
    }

    #[test]
    fn parses_the_contract_default() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.attempts_max(), 8);
        assert_eq!(schedule.delay_max(), Duration::from_secs(36_000));
        assert_eq!(RetrySchedule::parse("1s,2s,4s,8s").unwrap().attempts_max(), 5);
        assert_eq!(RetrySchedule::parse("250ms").unwrap().delays, vec![Duration::from_millis(250)]);
        for bad in ["", "5", "5x", "s", "-1s", "1s,,2s"] {
            assert!(RetrySchedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gaps_grow_along_the_schedule_then_fail() {
        let schedule = RetrySchedule::parse("1s,2s,4s,8s").unwrap();
        let delays: Vec<Duration> = (0..4)
            .map(|n| match schedule.decide(n, &status(500), 0.0) {
                Decision::Retry { delay, error } => {
                    assert_eq!(error, "HTTP 500");
                    delay
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(delays, [1, 2, 4, 8].map(Duration::from_secs));
        assert_eq!(schedule.decide(4, &status(500), 0.0), Decision::Failed { error: "HTTP 500".into() });
    }

    #[test]
    fn success_gone_and_errors() {
        let schedule = RetrySchedule::parse("1s").unwrap();
        assert_eq!(schedule.decide(0, &status(204), 0.0), Decision::Delivered);
        assert_eq!(schedule.decide(0, &status(410), 0.0), Decision::Gone);
        assert!(
            matches!(schedule.decide(0, &status(301), 0.0), Decision::Retry { .. }),
            "redirects are failures"
        );
        let timeout = AttemptResult::Error("timed out".into());
        assert_eq!(schedule.decide(1, &timeout, 0.0), Decision::Failed { error: "timed out".into() });
    }

    #[test]
    fn retry_after_is_honoured_on_429_and_503_only_and_capped() {
        let schedule = RetrySchedule::parse("1s,1m").unwrap();
        let asked = |code, secs| AttemptResult::Status { code, retry_after: Some(Duration::from_secs(secs)) };
        let delay = |result: AttemptResult| match schedule.decide(0, &result, 0.0) {
            Decision::Retry { delay, .. } => delay,
            other => panic!("{other:?}"),
        };
        assert_eq!(delay(asked(429, 7)), Duration::from_secs(7));
        assert_eq!(delay(asked(503, 7)), Duration::from_secs(7));
        assert_eq!(delay(asked(500, 7)), Duration::from_secs(1));
        assert_eq!(delay(asked(429, 86_400)), Duration::from_secs(60), "capped at the longest step");
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let schedule = RetrySchedule::parse("10s").unwrap();
        for (jitter, expected) in [(-1.0, 9_000), (1.0, 11_000), (5.0, 11_000), (0.5, 10_500)] {
            match schedule.decide(0, &status(502), jitter) {
                Decision::Retry { delay, .. } => assert_eq!(delay.as_millis(), expected),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn retry_after_is_a_floor_that_jitter_never_undercuts() {
        let schedule = RetrySchedule::parse("1s,1m").unwrap();
        for code in [429, 503] {
            for asked_ms in [0, 1, 999, 2_870, 3_000, 7_000, 59_999, 60_000, 61_000, 86_400_000] {
                let result =
                    AttemptResult::Status { code, retry_after: Some(Duration::from_millis(asked_ms)) };
                let floor = Duration::from_millis(asked_ms.min(60_000));
                for step in 0..=2_000 {
                    let jitter = f64::from(step) / 1_000.0 - 1.0;
                    let Decision::Retry { delay, .. } = schedule.decide(0, &result, jitter) else {
                        panic!("{code} retries")
                    };
                    assert!(delay >= floor, "{code}, asked {asked_ms} ms, jitter {jitter}: {delay:?}");
                    assert!(
                        delay <= floor.mul_f64(1.0 + JITTER_FRACTION),
                        "{asked_ms} ms, {jitter}: {delay:?}"
                    );
                }
            }
        }
        let asked_3s = AttemptResult::Status { code: 503, retry_after: Some(Duration::from_secs(3)) };
        assert_eq!(
            schedule.decide(0, &asked_3s, -1.0),
            Decision::Retry { delay: Duration::from_secs(3), error: "HTTP 503".into() },
            "not 2.7 s"
        );
        assert_eq!(
            schedule.decide(0, &asked_3s, 1.0),
            Decision::Retry { delay: Duration::from_millis(3_300), error: "HTTP 503".into() }
        );
    }

    #[test]
    fn retry_after_on_other_statuses_leaves_the_jittered_step() {
        let schedule = RetrySchedule::parse("10s").unwrap();
        let result = AttemptResult::Status { code: 500, retry_after: Some(Duration::from_secs(30)) };
        assert_eq!(
            schedule.decide(0, &result, -1.0),
            Decision::Retry { delay: Duration::from_secs(9), error: "HTTP 500".into() }
        );
    }

    /// Virtual time: 2015-10-21T07:28:00.250Z.
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_445_412_480_250)
    }

    #[test]
    fn retry_after_seconds() {
        assert_eq!(parse_retry_after(b" 12 ", now()), Some(Duration::from_secs(12)));
        assert_eq!(parse_retry_after(b"0", now()), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(b"99999999999999999999999", now()),
            Some(Duration::from_secs(u64::MAX)),
            "saturates; decide caps it"
        );
        for bad in ["", " ", "-5", "+5", "1.5", "5s", "12 13", "soon"] {
            assert_eq!(parse_retry_after(bad.as_bytes(), now()), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_dates_count_from_now() {
        let future = b"Wed, 21 Oct 2015 07:28:03 GMT";
        assert_eq!(parse_retry_after(future, now()), Some(Duration::from_millis(2_750)));
        assert_eq!(
            parse_retry_after(b"Wednesday, 21-Oct-15 07:29:00 GMT", now()),
            Some(Duration::from_millis(59_750))
        );
        assert_eq!(
            parse_retry_after(b"Wed Oct 21 08:28:00 2015", now()),
            Some(Duration::from_millis(3_599_750))
        );
        let later = now() + Duration::from_secs(2);
        assert_eq!(
            parse_retry_after(future, later),
            Some(Duration::from_millis(750)),
            "the clock is an argument"
        );
        for past in [
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Thu, 01 Jan 1970 00:00:00 GMT",
            "Fri, 31 Dec 1965 23:59:59 GMT",
        ] {
            assert_eq!(parse_retry_after(past.as_bytes(), now()), Some(Duration::ZERO), "{past}");
        }
        for malformed in [
            "Wed, 21 Oct 2015 07:28:03",
            "Wed, 21 Oct 2015 07:28:03 PST",
            "Wed, 32 Oct 2015 07:28:03 GMT",
            "2015-10-21T07:28:03Z",
            "Wed, 21 Oct 2015 07:28:03 GMT, 5",
        ] {
            assert_eq!(parse_retry_after(malformed.as_bytes(), now()), None, "{malformed}");
        }
    }

    #[test]
    fn a_retry_after_date_is_a_floor_too() {
        let asked = parse_retry_after(b"Wed, 21 Oct 2015 07:28:03 GMT", now());
        let result = AttemptResult::Status { code: 429, retry_after: asked };
        let schedule = RetrySchedule::parse("1s,1m").unwrap();
        for step in 0..=20 {
            let jitter = f64::from(step) / 10.0 - 1.0;
            let Decision::Retry { delay, .. } = schedule.decide(0, &result, jitter) else {
                panic!("retries")
            };
            assert!(delay >= Duration::from_millis(2_750), "{jitter}: {delay:?}");
        }
        let capped = RetrySchedule::parse("1s,2s").unwrap();
        assert_eq!(
            capped.decide(0, &result, -1.0),
            Decision::Retry { delay: Duration::from_secs(2), error: "HTTP 429".into() },
            "capped at the longest step"
        );
    }
}
