//! Exact decimals: parsing from JSON number text and exact arithmetic.
//!
//! Money and quantities are [`rust_decimal::Decimal`] values built from the digits of the JSON
//! number text; nothing on this path touches `f64`. The written scale is kept when it can be
//! (`9.00` stays `9.00`, so `9.00 x 6 = 54.00`). Arithmetic is checked: a result that would need
//! rounding to fit the 96-bit mantissa is an error, never a silently rounded number.

use rust_decimal::Decimal;

/// Why a JSON number could not become the expected value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    /// An identifier written with a fraction or an exponent.
    #[error("expected an integer (no fraction or exponent), found {0}")]
    NotAnInteger(String),
    /// Beyond what the target type holds.
    #[error("{0}")]
    OutOfRange(String),
    /// Not a JSON number at all.
    #[error("not a JSON number: {0}")]
    Syntax(String),
    /// More significant fractional digits than allowed.
    #[error("{digits} significant fractional digits; at most {max} allowed")]
    TooPrecise {
        /// Significant fractional digits found.
        digits: u64,
        /// The configured limit.
        max: u32,
    },
}

/// Decomposition of a JSON number: `value = sign * significand * 10^exp10`, where the
/// significand has no leading or trailing zeros (empty for zero).
pub(crate) struct NumberParts<'a> {
    pub negative: bool,
    /// Significant digits (ASCII), possibly split across the decimal point.
    pub int_digits: &'a [u8],
    pub frac_digits: &'a [u8],
    /// Leading zeros to skip in int+frac, and trailing zeros to drop at the end.
    pub lead: usize,
    pub trail: usize,
    /// Written exponent (clamped to +-10^15).
    pub exp: i64,
}

const EXP_CLAMP: i64 = 1_000_000_000_000_000;

impl<'a> NumberParts<'a> {
    /// Splits number text that already matches the JSON number grammar.
    pub(crate) fn split(text: &'a str) -> NumberParts<'a> {
        let b = text.as_bytes();
        let (negative, rest) = match b.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, b),
        };
        let mut dot = None;
        let mut e_at = rest.len();
        for (i, &c) in rest.iter().enumerate() {
            match c {
                b'.' => dot = Some(i),
                b'e' | b'E' => {
                    e_at = i;
                    break;
                }
                _ => {}
            }
        }
        let int_digits = rest.get(..dot.unwrap_or(e_at)).unwrap_or(&[]);
        let frac_digits = dot.and_then(|d| rest.get(d + 1..e_at)).unwrap_or(&[]);
        let mut exp: i64 = 0;
        let mut exp_neg = false;
        for &c in rest.get(e_at + 1..).unwrap_or(&[]) {
            match c {
                b'-' => exp_neg = true,
                b'+' => {}
                d => exp = (exp * 10 + i64::from(d.wrapping_sub(b'0'))).min(EXP_CLAMP),
            }
        }
        if exp_neg {
            exp = -exp;
        }
        let zeros = |s: &mut dyn Iterator<Item = &u8>| s.take_while(|&&c| c == b'0').count();
        let int_lead = zeros(&mut int_digits.iter());
        let lead = if int_lead == int_digits.len() {
            int_lead + zeros(&mut frac_digits.iter())
        } else {
            int_lead
        };
        let total = int_digits.len() + frac_digits.len();
        let trail = if lead == total {
            0
        } else {
            let frac_trail = zeros(&mut frac_digits.iter().rev());
            if frac_trail == frac_digits.len() {
                frac_trail + zeros(&mut int_digits.iter().rev())
            } else {
                frac_trail
            }
        };
        NumberParts {
            negative,
            int_digits,
            frac_digits,
            lead,
            trail,
            exp,
        }
    }

    /// True when the number is zero.
    pub(crate) fn is_zero(&self) -> bool {
        self.lead == self.int_digits.len() + self.frac_digits.len()
    }

    /// Significant digits, in order.
    pub(crate) fn significand(&self) -> impl Iterator<Item = u8> + '_ {
        let total = self.int_digits.len() + self.frac_digits.len();
        self.int_digits
            .iter()
            .chain(self.frac_digits.iter())
            .copied()
            .take(total - self.trail)
            .skip(self.lead)
    }

    /// Power of ten applied to the significand.
    pub(crate) fn exp10(&self) -> i64 {
        self.exp + self.trail as i64 - self.frac_digits.len() as i64
    }
}

/// Parses the exact text of a JSON number into a decimal.
///
/// `max_fraction_digits` bounds the *significant* fractional digits (`9.000000` has none). The
/// written scale is kept when it fits (`28` at most); exponents are applied exactly.
pub fn parse_decimal(text: &str, max_fraction_digits: u32) -> Result<Decimal, NumberError> {
    if !is_json_number(text.as_bytes()) {
        return Err(NumberError::Syntax(clip(text)));
    }
    decimal_from_json_number(text, max_fraction_digits)
}

/// [`parse_decimal`] for text already known to match the JSON number grammar.
pub(crate) fn decimal_from_json_number(
    text: &str,
    max_fraction_digits: u32,
) -> Result<Decimal, NumberError> {
    let b = text.as_bytes();
    let (negative, digits) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, b),
    };
    // Fast path: no exponent and at most 19 *digits* (20 bytes if one is the point), so the
    // digits fit a u64: 10^19 - 1 < 2^64 = 18446744073709551616. Twenty digits may not fit, so
    // the count is of digits, not bytes (a sign or a point must not make room for one more).
    let at_most_19_digits = digits.len() <= 19 || (digits.len() == 20 && digits.contains(&b'.'));
    if at_most_19_digits && !digits.iter().any(|&c| c == b'e' || c == b'E') {
        let (mut m, mut scale, mut trailing, mut in_fraction) = (0u64, 0u32, 0u32, false);
        for &c in digits {
            if c == b'.' {
                in_fraction = true;
                continue;
            }
            m = m * 10 + u64::from(c.wrapping_sub(b'0'));
            if in_fraction {
                scale += 1;
                trailing = if c == b'0' { trailing + 1 } else { 0 };
            }
        }
        if m == 0 {
            return Ok(Decimal::new(0, scale));
        }
        let significant = scale - trailing;
        if significant > max_fraction_digits {
            return Err(NumberError::TooPrecise {
                digits: u64::from(significant),
                max: max_fraction_digits,
            });
        }
        let m = i128::from(m);
        if let Ok(d) = Decimal::try_from_i128_with_scale(if negative { -m } else { m }, scale) {
            return Ok(d);
        }
    }
    let parts = NumberParts::split(text);
    let written_scale = (parts.frac_digits.len() as i64 - parts.exp).clamp(0, 28) as u32;
    if parts.is_zero() {
        return Ok(Decimal::new(0, written_scale));
    }
    let e10 = parts.exp10();
    let significant_fraction = (-e10).max(0) as u64;
    if significant_fraction > u64::from(max_fraction_digits) {
        return Err(NumberError::TooPrecise {
            digits: significant_fraction,
            max: max_fraction_digits,
        });
    }
    let mut sig: u128 = 0;
    for d in parts.significand() {
        sig = sig
            .checked_mul(10)
            .and_then(|s| s.checked_add(u128::from(d - b'0')))
            .filter(|&s| s < 1u128 << 96)
            .ok_or_else(|| out_of_range_decimal(text))?;
    }
    let lowest = (-e10).max(0) as u32;
    let mut scale = written_scale.max(lowest);
    loop {
        let shift = i64::from(scale) + e10;
        let m = u32::try_from(shift)
            .ok()
            .and_then(|s| 10u128.checked_pow(s))
            .and_then(|p| sig.checked_mul(p))
            .and_then(|m| i128::try_from(m).ok());
        if let Some(m) = m {
            let m = if parts.negative { -m } else { m };
            if let Ok(d) = Decimal::try_from_i128_with_scale(m, scale) {
                return Ok(d);
            }
        }
        if scale == lowest {
            return Err(out_of_range_decimal(text));
        }
        scale -= 1;
    }
}

fn out_of_range_decimal(text: &str) -> NumberError {
    NumberError::OutOfRange(format!(
        "{} does not fit an exact 96-bit decimal (|x| < 7.9e28)",
        clip(text)
    ))
}

/// Shortens long number text for messages.
pub(crate) fn clip(text: &str) -> String {
    if text.len() <= 40 {
        text.to_owned()
    } else {
        let head: String = text.chars().take(37).collect();
        format!("{head}...")
    }
}

/// Parses an identifier: a JSON integer in `0..=i64::MAX` (the BigQuery `INT64` range).
pub fn parse_id(text: &str) -> Result<i64, NumberError> {
    if !is_json_number(text.as_bytes()) {
        return Err(NumberError::Syntax(clip(text)));
    }
    if text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
        return Err(NumberError::NotAnInteger(clip(text)));
    }
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let mut v: i64 = 0;
    for b in digits.bytes() {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(b.wrapping_sub(b'0'))))
            .ok_or_else(|| {
                NumberError::OutOfRange(format!(
                    "{} is above the INT64 maximum {}",
                    clip(text),
                    i64::MAX
                ))
            })?;
    }
    if negative && v != 0 {
        return Err(NumberError::OutOfRange(format!(
            "{} is negative; identifiers are >= 0",
            clip(text)
        )));
    }
    Ok(v)
}

/// True when `b` matches the JSON number grammar `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
pub(crate) fn is_json_number(b: &[u8]) -> bool {
    fn digits(b: &[u8], mut i: usize) -> usize {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    }
    let mut i = usize::from(b.first() == Some(&b'-'));
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(b, i),
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        let j = digits(b, i + 1);
        if j == i + 1 {
            return false;
        }
        i = j;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let j = digits(b, i);
        if j == i {
            return false;
        }
        i = j;
    }
    i == b.len()
}

/// Fits an exact mantissa/scale into a decimal, dropping only trailing zeros: the result has the
/// largest scale `<= min(scale, 28)` at which the value is a whole mantissa below 2^96.
fn fit(mut m: i128, mut scale: u32) -> Option<Decimal> {
    loop {
        if scale <= 28 {
            if let Ok(d) = Decimal::try_from_i128_with_scale(m, scale) {
                return Some(d);
            }
        }
        if scale > 0 && m % 10 == 0 {
            m /= 10;
            scale -= 1;
        } else {
            return None;
        }
    }
}

/// A magnitude below 2^192 as three 64-bit limbs, least significant first.
type Wide = [u64; 3];

/// `a * b` for magnitudes below 2^96 (decimal mantissas), so the product is below 2^192.
fn mul_wide(a: u128, b: u128) -> Wide {
    let (a1, a0) = (a >> 64, a & u128::from(u64::MAX));
    let (b1, b0) = (b >> 64, b & u128::from(u64::MAX));
    // a1, b1 < 2^32: none of these partial products or sums overflows a u128.
    let low = a0 * b0;
    let middle = a1 * b0 + a0 * b1 + (low >> 64);
    let high = a1 * b1 + (middle >> 64);
    [low as u64, middle as u64, high as u64]
}

/// Divides in place by 10 and returns the remainder.
fn div10_wide(w: &mut Wide) -> u64 {
    let mut rem = 0u128;
    for limb in w.iter_mut().rev() {
        let cur = (rem << 64) | u128::from(*limb);
        *limb = (cur / 10) as u64;
        rem = cur % 10;
    }
    rem as u64
}

/// [`fit`] for a magnitude that may exceed an `i128`: trailing zeros are dropped until it fits
/// one, then `fit` goes on.
fn fit_wide(mut w: Wide, mut scale: u32, negative: bool) -> Option<Decimal> {
    while w[2] != 0 || w[1] >> 63 != 0 {
        if scale == 0 || div10_wide(&mut w) != 0 {
            return None;
        }
        scale -= 1;
    }
    let m = i128::try_from((u128::from(w[1]) << 64) | u128::from(w[0])).ok()?;
    fit(if negative { -m } else { m }, scale)
}

/// `d` at the largest scale `<= preferred` (and `<= 28`) whose mantissa stays below 2^96, never
/// below its own scale: undoes the trailing zeros that an intermediate step had to drop.
fn raise_scale(d: Decimal, preferred: u32) -> Decimal {
    let (mut m, mut scale) = (d.mantissa(), d.scale());
    while scale < preferred.min(28) {
        match m.checked_mul(10).filter(|x| x.unsigned_abs() < 1 << 96) {
            Some(x) => {
                m = x;
                scale += 1;
            }
            None => break,
        }
    }
    // `m` < 2^96 at a scale <= 28 always converts; `d` itself is the fallback.
    Decimal::try_from_i128_with_scale(m, scale).unwrap_or(d)
}

/// `m` and `scale` with trailing zeros of the fraction removed (`1.500` becomes `1.5`).
fn strip(mut m: i128, mut scale: u32) -> (i128, u32) {
    while scale > 0 && m % 10 == 0 {
        m /= 10;
        scale -= 1;
    }
    (m, scale)
}

/// `a * b` exactly, or `None` if the exact result does not fit.
///
/// The result keeps the scale `a.scale() + b.scale()` when it fits (`9.00 x 6 = 54.00`);
/// otherwise it has the largest scale at which the exact product fits (only trailing zeros are
/// dropped, never a significant digit).
pub fn exact_mul(a: Decimal, b: Decimal) -> Option<Decimal> {
    let scale = a.scale() + b.scale();
    match a.mantissa().checked_mul(b.mantissa()) {
        Some(m) => fit(m, scale),
        // Beyond an i128 (both mantissas are below 2^96, the product below 2^192): the exact
        // product may still fit once its trailing zeros are dropped, e.g. `1.0` x `1.0` both
        // written with 28 decimals (10^56 at scale 56 is 1 at scale 28).
        None => fit_wide(
            mul_wide(a.mantissa().unsigned_abs(), b.mantissa().unsigned_abs()),
            scale,
            (a.mantissa() < 0) != (b.mantissa() < 0),
        ),
    }
}

/// `a + b` exactly, or `None` if the exact result does not fit.
///
/// The result has the larger of the two scales when it fits (`0.1 + 0.20 = 0.30`); otherwise the
/// largest scale at which the exact sum fits.
pub fn exact_add(a: Decimal, b: Decimal) -> Option<Decimal> {
    if a.scale() == b.scale() {
        // Two mantissas below 2^96: the sum cannot overflow an i128.
        return fit(a.mantissa().checked_add(b.mantissa())?, a.scale());
    }
    let scale = a.scale().max(b.scale());
    let at = |d: Decimal| {
        d.mantissa()
            .checked_mul(10i128.checked_pow(scale - d.scale())?)
    };
    match at(a).and_then(|ma| ma.checked_add(at(b)?)) {
        Some(m) => fit(m, scale),
        None => exact_add_rescaled(a, b, scale),
    }
}

/// [`exact_add`] when bringing both mantissas to the larger scale overflows an i128: a large
/// value with a scale padded by trailing zeros (`17000000000` plus a discount written
/// `0.0000000000000000000000000000`).
///
/// Without their trailing zeros, the two values need rescaling only to the larger of their
/// *minimal* scales. If that still overflows, the sum cannot fit: the value with the smaller
/// minimal scale is then at least 2^127 at the larger one, the other below 2^96, and the last
/// digit of the other (not zero) is the sum's last digit, so every scale at which the sum is
/// whole gives a mantissa above 2^96.
fn exact_add_rescaled(a: Decimal, b: Decimal, preferred: u32) -> Option<Decimal> {
    let (ma, sa) = strip(a.mantissa(), a.scale());
    let (mb, sb) = strip(b.mantissa(), b.scale());
    let scale = sa.max(sb);
    let ma = ma.checked_mul(10i128.checked_pow(scale - sa)?)?;
    let mb = mb.checked_mul(10i128.checked_pow(scale - sb)?)?;
    Some(raise_scale(fit(ma.checked_add(mb)?, scale)?, preferred))
}

/// `a - b` exactly, or `None` if the exact result does not fit.
pub fn exact_sub(a: Decimal, b: Decimal) -> Option<Decimal> {
    exact_add(a, -b)
}

/// The exact sum of `values`, whatever their order, at the largest of their scales when it fits
/// (else the largest scale at which it fits); `None` if it does not fit.
///
/// Summing one by one can fail on an intermediate sum that does not fit although the total does
/// (`5000000000000000000000000000.5 + 5000000000000000000000000000 + 0.5`): so integer parts
/// (each below 2^96) and fractions (each below 1, at scale 28) are added apart, in i128s that
/// hold the sum of 2^31 values (far beyond any item limit; more values may give `None`).
pub fn exact_sum(values: &[Decimal]) -> Option<Decimal> {
    const ONE: i128 = 10i128.pow(28);
    let mut int: i128 = 0;
    let mut frac: i128 = 0;
    let mut preferred = 0;
    for d in values {
        let unit = 10i128.pow(d.scale());
        let m = d.mantissa();
        int = int.checked_add(m / unit)?;
        frac = frac.checked_add((m % unit) * 10i128.pow(28 - d.scale()))?;
        preferred = preferred.max(d.scale());
    }
    // Sum = int + frac / 10^28, |frac| < 10^28 after the carry; the two may differ in sign.
    int = int.checked_add(frac / ONE)?;
    // The sum's own scale: that of the fraction without its trailing zeros.
    let (frac, scale) = strip(frac % ONE, 28);
    let m = int.checked_mul(10i128.pow(scale))?.checked_add(frac)?;
    Some(raise_scale(fit(m, scale)?, preferred))
}

/// Appends the exact text of a decimal, the same as its `Display` (`318.90`, `0.0`, `-1.5`),
/// without going through `fmt`.
pub(crate) fn push_decimal(out: &mut Vec<u8>, d: Decimal) {
    let m = d.mantissa();
    let scale = d.scale() as usize;
    let mut buf = [b'0'; 40];
    let mut i = buf.len();
    let mut u = m.unsigned_abs();
    // 64-bit division is much cheaper than 128-bit: peel off 19 digits at a time.
    loop {
        let (mut low, rest) = if u > u128::from(u64::MAX) {
            (
                (u % 10_000_000_000_000_000_000) as u64,
                u / 10_000_000_000_000_000_000,
            )
        } else {
            (u as u64, 0)
        };
        let mut written = 0;
        loop {
            i -= 1;
            buf[i] = b'0' + (low % 10) as u8;
            low /= 10;
            written += 1;
            if low == 0 && (rest == 0 || written == 19) {
                break;
            }
        }
        if rest == 0 {
            break;
        }
        u = rest;
    }
    let digits = &buf[i..];
    if m < 0 {
        out.push(b'-');
    }
    // Byte pushes: these runs are short, where a `memcpy` call costs more than the copy.
    if digits.len() <= scale {
        out.push(b'0');
        out.push(b'.');
        for _ in digits.len()..scale {
            out.push(b'0');
        }
        for &b in digits {
            out.push(b);
        }
    } else {
        let (int, frac) = digits.split_at(digits.len() - scale);
        for &b in int {
            out.push(b);
        }
        if !frac.is_empty() {
            out.push(b'.');
            for &b in frac {
                out.push(b);
            }
        }
    }
}

/// Invoice totals: one line total per item, their sum (gross) and gross minus discount (net).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Totals {
    /// `Value x Quantity` for each item, in item order.
    pub lines: Vec<Decimal>,
    /// Sum of the line totals.
    pub gross: Decimal,
    /// `gross - discount` (negative when the discount is above gross).
    pub net: Decimal,
}

/// Which total did not fit an exact decimal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TotalsError {
    /// The line total of the item at this index.
    #[error("line total of item {0} does not fit an exact decimal")]
    Line(usize),
    /// The gross total.
    #[error("gross total does not fit an exact decimal")]
    Gross,
    /// The net total.
    #[error("net total does not fit an exact decimal")]
    Net,
}

impl Totals {
    /// Computes the totals exactly from `(unit value, quantity)` pairs and the discount.
    pub fn compute(
        items: impl IntoIterator<Item = (Decimal, Decimal)>,
        discount: Decimal,
    ) -> Result<Totals, TotalsError> {
        let items = items.into_iter();
        let mut lines = Vec::with_capacity(items.size_hint().0);
        // A running sum is the fast way; it can fail on an intermediate sum although the total
        // fits, so a failure is only final after `exact_sum`.
        let mut running = Some(Decimal::ZERO);
        let mut scale = 0;
        for (i, (value, quantity)) in items.enumerate() {
            let line = exact_mul(value, quantity).ok_or(TotalsError::Line(i))?;
            running = running.and_then(|g| exact_add(g, line));
            scale = scale.max(line.scale());
            lines.push(line);
        }
        let gross = match running {
            // An intermediate sum may have dropped trailing zeros the total has room for.
            Some(g) if g.scale() < scale => raise_scale(g, scale),
            Some(g) => g,
            None => exact_sum(&lines).ok_or(TotalsError::Gross)?,
        };
        let net = exact_sub(gross, discount).ok_or(TotalsError::Net)?;
        Ok(Totals { lines, gross, net })
    }
}

/// Serde helpers: a decimal as its exact string form (`"318.90"`).
pub(crate) mod decimal_string {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(d)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Decimal::from_str_exact(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn decimals_keep_written_scale_and_exact_value() {
        for (text, want) in [
            ("9.00", "9.00"),
            ("35.55", "35.55"),
            ("0.0", "0.0"),
            ("-0", "0"),
            ("2", "2"),
            ("1.5e2", "150"),
            ("1550e-2", "15.50"),
            ("12.5E-1", "1.25"),
            (
                "100.000000000000000000000000000000000",
                "100.00000000000000000000000000",
            ),
            (
                "79228162514264337593543950335",
                "79228162514264337593543950335",
            ),
        ] {
            let d = parse_decimal(text, 4).unwrap();
            assert_eq!(d.to_string(), want, "{text}");
        }
    }

    #[test]
    fn fast_and_exponent_paths_agree() {
        for (plain, exp) in [
            ("123.450", "12345.0e-2"),
            ("-0.0001", "-1e-4"),
            ("9.00", "900E-2"),
            ("1234567890123456789", "1234567890123456789e0"),
        ] {
            let a = parse_decimal(plain, 4).unwrap();
            let b = parse_decimal(exp, 4).unwrap();
            assert_eq!(a, b);
            assert_eq!(a.to_string(), b.to_string(), "{plain} vs {exp}");
        }
    }

    #[test]
    fn decimals_out_of_range_or_too_precise_are_errors() {
        assert!(matches!(
            parse_decimal("79228162514264337593543950336", 4),
            Err(NumberError::OutOfRange(_))
        ));
        assert!(matches!(
            parse_decimal("1e29", 4),
            Err(NumberError::OutOfRange(_))
        ));
        assert!(matches!(
            parse_decimal("1e999999999999999999999", 4),
            Err(NumberError::OutOfRange(_))
        ));
        assert_eq!(
            parse_decimal("0.12345", 4),
            Err(NumberError::TooPrecise { digits: 5, max: 4 })
        );
        assert!(parse_decimal("0.12340", 4).is_ok());
        assert_eq!(parse_decimal("0e-99999", 4).unwrap(), Decimal::ZERO);
    }

    #[test]
    fn ids_are_non_negative_int64() {
        assert_eq!(parse_id("0"), Ok(0));
        assert_eq!(parse_id("-0"), Ok(0));
        assert_eq!(parse_id("9223372036854775807"), Ok(i64::MAX));
        assert!(matches!(
            parse_id("9223372036854775808"),
            Err(NumberError::OutOfRange(_))
        ));
        assert!(matches!(parse_id("-1"), Err(NumberError::OutOfRange(_))));
        assert!(matches!(parse_id("1.0"), Err(NumberError::NotAnInteger(_))));
        assert!(matches!(parse_id("1e3"), Err(NumberError::NotAnInteger(_))));
        assert!(matches!(parse_id("abc"), Err(NumberError::Syntax(_))));
        assert!(matches!(
            parse_decimal("1.", 4),
            Err(NumberError::Syntax(_))
        ));
        assert!(matches!(parse_decimal("", 4), Err(NumberError::Syntax(_))));
    }

    #[test]
    fn arithmetic_is_exact_or_fails() {
        assert_eq!(
            exact_mul(dec("9.00"), dec("6")).unwrap().to_string(),
            "54.00"
        );
        assert_eq!(
            exact_add(dec("0.1"), dec("0.20")).unwrap().to_string(),
            "0.30"
        );
        assert_eq!(
            exact_sub(dec("1"), dec("0.01")).unwrap().to_string(),
            "0.99"
        );
        let max = Decimal::MAX;
        assert!(exact_add(max, dec("1")).is_none());
        assert!(exact_mul(max, dec("1.1")).is_none());
        // Exact result that needs dropping trailing zeros still fits.
        assert_eq!(
            exact_mul(dec("7922816251426433759354395033.5"), dec("2")).unwrap(),
            dec("15845632502852867518708790067")
        );
        // A result that would need rounding does not.
        assert!(exact_mul(dec("0.0000000000000000000000000001"), dec("0.1")).is_none());
    }

    #[test]
    fn twenty_digits_do_not_wrap() {
        // 2^64 and 2 x 10^19 once wrapped to 0 and 1553255926290448384 in a u64.
        for text in [
            "18446744073709551616",
            "20000000000000000000",
            "18446744073709551615",
            "99999999999999999999",
            "-18446744073709551616",
        ] {
            assert_eq!(parse_decimal(text, 4).unwrap().to_string(), text);
        }
        // 19 digits with a sign or a point still take the fast path and stay exact.
        for text in [
            "9999999999999999999",
            "-9999999999999999999",
            "999999999999999999.9",
            "-99999999999999999.99",
            "0.000000000000000001",
        ] {
            assert_eq!(parse_decimal(text, 28).unwrap().to_string(), text);
        }
        assert_eq!(
            parse_decimal("1844674407370955161.6", 4)
                .unwrap()
                .to_string(),
            "1844674407370955161.6"
        );
        assert_eq!(
            parse_decimal("18446744073709551616.00", 4)
                .unwrap()
                .to_string(),
            "18446744073709551616.00"
        );
    }

    #[test]
    fn products_beyond_i128_fit_when_only_zeros_are_dropped() {
        let one = dec("1.0000000000000000000000000000");
        assert_eq!(
            exact_mul(one, one).unwrap().to_string(),
            "1.0000000000000000000000000000"
        );
        // 2^90 x 10^-28 times 5^40 x 10^-28 = 2^50 x 10^-16, with 40 zeros to drop.
        let a = Decimal::from_i128_with_scale(1 << 90, 28);
        let b = Decimal::from_i128_with_scale(5i128.pow(40), 28);
        assert_eq!(
            exact_mul(a, b).unwrap().to_string(),
            "0.1125899906842624000000000000"
        );
        assert_eq!(
            exact_mul(-a, b).unwrap().to_string(),
            "-0.1125899906842624000000000000"
        );
        // Beyond i128 with a significant last digit: no exact result.
        let c = Decimal::from_i128_with_scale((1 << 90) + 1, 28);
        assert!(exact_mul(c, b).is_none());
        assert!(exact_mul(Decimal::MAX, Decimal::MAX).is_none());
        assert!(exact_mul(Decimal::MAX, dec("1.0000000000000000000000000000")).is_some());
    }

    #[test]
    fn sums_beyond_i128_rescaling_are_exact() {
        // 17 billion plus a zero written with 28 decimals: 1.7e10 x 10^28 overflows an i128.
        let zero = dec("0.0000000000000000000000000000");
        let big = dec("17000000000");
        assert_eq!(
            exact_add(big, zero).unwrap().to_string(),
            "17000000000.000000000000000000"
        );
        assert_eq!(
            exact_sub(big, zero).unwrap().to_string(),
            "17000000000.000000000000000000"
        );
        let max = Decimal::MAX;
        assert_eq!(exact_add(max, zero).unwrap(), max);
        assert_eq!(
            exact_add(max, dec("-1.0000000000")).unwrap().to_string(),
            "79228162514264337593543950334"
        );
        // A fraction the large value has no room for.
        assert!(exact_add(max, dec("-0.5")).is_none());
        assert!(exact_add(
            dec("17000000000000000000"),
            dec("0.0000000000000000000000000001")
        )
        .is_none());
    }

    #[test]
    fn sums_do_not_depend_on_order() {
        let a = dec("5000000000000000000000000000.5");
        let b = dec("5000000000000000000000000000");
        let c = dec("0.5");
        // a + b alone does not fit (10000000000000000000000000000.5 needs 30 digits).
        assert!(exact_add(a, b).is_none());
        for values in [[a, b, c], [c, a, b], [b, c, a]] {
            assert_eq!(
                exact_sum(&values).unwrap().to_string(),
                "10000000000000000000000000001"
            );
            let t = Totals::compute(values.map(|v| (v, dec("1"))), dec("0.00")).unwrap();
            assert_eq!(t.gross.to_string(), "10000000000000000000000000001");
            assert_eq!(t.net.to_string(), "10000000000000000000000000001");
        }
        assert_eq!(
            exact_sum(&[dec("0.10"), dec("-0.3"), dec("2")])
                .unwrap()
                .to_string(),
            "1.80"
        );
        assert_eq!(exact_sum(&[]).unwrap().to_string(), "0");
        assert!(exact_sum(&[Decimal::MAX, dec("1")]).is_none());
        assert!(exact_sum(&[dec("7922816251426433759354395033.5"), dec("0.00")]).is_some());
        assert!(exact_sum(&[dec("7922816251426433759354395033.5"), dec("0.01")]).is_none());
    }

    #[test]
    fn gross_keeps_the_scale_an_intermediate_sum_dropped() {
        // 4e27 + 4e27 at scale 1 would need a mantissa of 8e28 > 2^96: the running sum drops to
        // scale 0. After -4e27 the total fits at scale 1 again, the largest of the lines'.
        let v = dec("4000000000000000000000000000.0");
        let t = Totals::compute([(v, dec("1")), (v, dec("1"))], dec("0")).unwrap();
        assert_eq!(t.gross.to_string(), "8000000000000000000000000000");
        let back = dec("-4000000000000000000000000000");
        let t =
            Totals::compute([(v, dec("1")), (v, dec("1")), (back, dec("1"))], dec("0")).unwrap();
        assert_eq!(t.gross.to_string(), "4000000000000000000000000000.0");
        assert_eq!(t.net.to_string(), "4000000000000000000000000000.0");
    }

    #[test]
    fn push_decimal_matches_display() {
        for text in [
            "0",
            "0.0",
            "0.05",
            "-0.05",
            "318.90",
            "-1.5",
            "7",
            "100",
            "0.0000000000000000000000000001",
            "79228162514264337593543950335",
            "-7922816251426433759354395.0335",
        ] {
            let d = dec(text);
            let mut out = Vec::new();
            push_decimal(&mut out, d);
            assert_eq!(String::from_utf8(out).unwrap(), d.to_string(), "{text}");
        }
    }

    #[test]
    fn totals_of_the_reference_invoices() {
        let t = Totals::compute(
            [
                (dec("35.55"), dec("2")),
                (dec("11.55"), dec("5")),
                (dec("27.15"), dec("7")),
            ],
            dec("0.0"),
        )
        .unwrap();
        assert_eq!(t.gross.to_string(), "318.90");
        assert_eq!(t.net.to_string(), "318.90");
    }
}
