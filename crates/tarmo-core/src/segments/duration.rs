//! Durations in rules: `"90s"`, `"30m"`, `"48h"`, `"365d"`.

use std::fmt;

/// A positive span of time, kept in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(i64);

/// Longest span a rule may name: ten years (events are not kept longer).
const MAX_SECONDS: i64 = 10 * 366 * 86_400;

impl Span {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (num, unit) = s.split_at(s.len().saturating_sub(1));
        let mult = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => {
                return Err(format!(
                    "`{}` is not a duration: write a whole number and s, m, h or d (\"48h\", \"365d\")",
                    s.chars().take(20).collect::<String>()
                ));
            }
        };
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) || num.len() > 12 {
            return Err(format!(
                "`{}` is not a duration: write a whole number and s, m, h or d (\"48h\", \"365d\")",
                s.chars().take(20).collect::<String>()
            ));
        }
        let n: i64 = num.parse().map_err(|_| "duration too long".to_string())?;
        let secs = n.saturating_mul(mult);
        if secs == 0 {
            return Err("a duration must be longer than zero".into());
        }
        if secs > MAX_SECONDS {
            return Err("a duration may be at most ten years (3660d)".into());
        }
        Ok(Self(secs))
    }

    pub fn from_secs(secs: i64) -> Self {
        Self(secs.clamp(1, MAX_SECONDS))
    }

    pub fn secs(self) -> i64 {
        self.0
    }

    pub fn ms(self) -> i64 {
        self.0 * 1000
    }
}

impl fmt::Display for Span {
    /// The largest unit that divides it: `48h` stays `2d`, `90s` stays `90s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s % 86_400 == 0 {
            write!(f, "{}d", s / 86_400)
        } else if s % 3600 == 0 {
            write!(f, "{}h", s / 3600)
        } else if s % 60 == 0 {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_prints_back() {
        assert_eq!(Span::parse("90s").unwrap().secs(), 90);
        assert_eq!(Span::parse("30m").unwrap().secs(), 1800);
        assert_eq!(Span::parse("48h").unwrap().secs(), 172_800);
        assert_eq!(Span::parse("365d").unwrap().secs(), 365 * 86_400);
        assert_eq!(Span::parse("48h").unwrap().to_string(), "2d");
        assert_eq!(Span::parse("90s").unwrap().to_string(), "90s");
        for bad in [
            "",
            "d",
            "5",
            "5y",
            "-5d",
            "0d",
            "1.5h",
            "99999999999999d",
            "5 d",
        ] {
            assert!(Span::parse(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn display_parses_to_the_same(secs in 1i64..MAX_SECONDS) {
            let s = Span::from_secs(secs);
            proptest::prop_assert_eq!(Span::parse(&s.to_string()).unwrap(), s);
        }
    }
}
