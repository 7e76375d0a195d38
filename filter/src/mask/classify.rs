//! Byte classes, 16 bytes at a time, as bitmasks (bit `k` stands for byte
//! `k` of the block): the JSON lexer and the detectors look at these masks
//! to skip clean spans instead of testing byte by byte.
//!
//! Three interchangeable backends compute the same masks: WebAssembly SIMD
//! (`simd128`, enabled for the module in `.cargo/config.toml`; V8 and
//! wasmtime run it), SSE2 on x86-64 (native tests and benchmarks), and a
//! plain loop elsewhere. The unit tests at the end compare the active
//! backend with a byte-by-byte definition on every byte value.

/// Which bytes anchor an enabled built-in detector (see `detectors::scan`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Anchors {
    /// `@` and `;` (email; `;` ends an HTML character reference for `@`).
    pub at: bool,
    /// ASCII digits (cards, SSNs, phones, IBANs, IPv4) and `%` (a value
    /// right after a URL percent-escape such as `%20`).
    pub digit: bool,
    /// `:` (IPv6).
    pub colon: bool,
    /// `I` (`AKIA`/`ASIA` access key ids).
    pub upper_i: bool,
    /// `J` (`eyJ`: JWTs).
    pub upper_j: bool,
    /// `_` (GitHub tokens).
    pub uscore: bool,
    /// `-` (`sk-`, `xoxb-`, PEM armor).
    pub dash: bool,
    /// `%` (a URL percent-escape: the text is scanned again decoded).
    pub percent: bool,
}

impl Anchors {
    /// Whether byte `b` is an anchor (the definition the masks follow).
    #[cfg(test)]
    pub(crate) fn is_anchor(&self, b: u8) -> bool {
        (self.at && (b == b'@' || b == b';'))
            || (self.digit && b.is_ascii_digit())
            || (self.percent && b == b'%')
            || (self.colon && b == b':')
            || (self.upper_i && b == b'I')
            || (self.upper_j && b == b'J')
            || (self.uscore && b == b'_')
            || (self.dash && b == b'-')
    }
}

/// Masks of one 16-byte block for the JSON string lexer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StringMasks {
    /// `"`, `\` or a control byte (< 0x20): where a JSON string body stops.
    pub stop: u16,
    /// Anchor bytes.
    pub trig: u16,
}

/// Masks of one 16-byte block for the detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScanMasks {
    /// Anchor bytes.
    pub trig: u16,
    /// ASCII digits.
    pub dig: u16,
    /// ASCII lowercase letters.
    pub low: u16,
    /// `-` or `.`.
    pub join: u16,
    /// `_`.
    pub us: u16,
    /// `\\` (a JSON or C escape starts: `\n4111…` is a break, not a word).
    pub bs: u16,
}

/// The 16 bytes of `s` at `i` (zero-padded past the end) and how many of
/// them are real (0..=16).
#[inline(always)]
pub(crate) fn block(s: &[u8], i: usize) -> ([u8; 16], usize) {
    if let Some(b) = s.get(i..i.saturating_add(16)).and_then(|w| <[u8; 16]>::try_from(w).ok()) {
        return (b, 16);
    }
    let mut b = [0u8; 16];
    let rest = s.get(i..).unwrap_or(&[]);
    let n = rest.len().min(16);
    if let (Some(d), Some(r)) = (b.get_mut(..n), rest.get(..n)) {
        d.copy_from_slice(r);
    }
    (b, n)
}

/// Bits `0..n` set (`n` ≤ 16).
#[inline(always)]
pub(crate) fn first(n: usize) -> u16 {
    if n >= 16 {
        u16::MAX
    } else {
        (1u16 << n) - 1
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod v {
    use core::arch::wasm32::*;
    pub type V = v128;
    #[inline(always)]
    pub fn load(b: &[u8; 16]) -> V {
        // SAFETY: `b` is 16 readable bytes; v128.load has no alignment requirement.
        unsafe { v128_load(b.as_ptr().cast()) }
    }
    #[inline(always)]
    pub fn eq(v: V, c: u8) -> V {
        u8x16_eq(v, u8x16_splat(c))
    }
    /// Bytes `< n` (unsigned).
    #[inline(always)]
    pub fn below(v: V, n: u8) -> V {
        u8x16_lt(v, u8x16_splat(n))
    }
    /// Bytes in `lo..lo + n`.
    #[inline(always)]
    pub fn within(v: V, lo: u8, n: u8) -> V {
        u8x16_lt(u8x16_sub(v, u8x16_splat(lo)), u8x16_splat(n))
    }
    #[inline(always)]
    pub fn or(a: V, b: V) -> V {
        v128_or(a, b)
    }
    #[inline(always)]
    pub fn none() -> V {
        u8x16_splat(0)
    }
    #[inline(always)]
    pub fn bits(v: V) -> u16 {
        u8x16_bitmask(v)
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "sse2", not(all(target_arch = "wasm32", target_feature = "simd128"))))]
mod v {
    use core::arch::x86_64::*;
    pub type V = __m128i;
    #[inline(always)]
    pub fn load(b: &[u8; 16]) -> V {
        // SAFETY: `b` is 16 readable bytes; movdqu has no alignment requirement.
        unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
    }
    #[inline(always)]
    pub fn eq(v: V, c: u8) -> V {
        // SAFETY (every block in this module): SSE2 is enabled (cfg above).
        unsafe { _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8)) }
    }
    /// Bytes `< n` (unsigned; `n` ≥ 1): `min(x, n - 1) == x`.
    #[inline(always)]
    pub fn below(v: V, n: u8) -> V {
        unsafe { _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(n.wrapping_sub(1) as i8)), v) }
    }
    /// Bytes in `lo..lo + n`.
    #[inline(always)]
    pub fn within(v: V, lo: u8, n: u8) -> V {
        below(unsafe { _mm_sub_epi8(v, _mm_set1_epi8(lo as i8)) }, n)
    }
    #[inline(always)]
    pub fn or(a: V, b: V) -> V {
        unsafe { _mm_or_si128(a, b) }
    }
    #[inline(always)]
    pub fn none() -> V {
        unsafe { _mm_setzero_si128() }
    }
    #[inline(always)]
    pub fn bits(v: V) -> u16 {
        // 16 mask bits in the low half of the i32
        (unsafe { _mm_movemask_epi8(v) } & 0xffff) as u16
    }
}

#[cfg(not(any(all(target_arch = "wasm32", target_feature = "simd128"), all(target_arch = "x86_64", target_feature = "sse2"))))]
mod v {
    /// One flag byte (0 or 0xff) per input byte.
    pub type V = [u8; 16];
    #[inline(always)]
    fn map(v: V, f: impl Fn(u8) -> bool) -> V {
        v.map(|b| if f(b) { 0xff } else { 0 })
    }
    #[inline(always)]
    pub fn load(b: &[u8; 16]) -> V {
        *b
    }
    #[inline(always)]
    pub fn eq(v: V, c: u8) -> V {
        map(v, |b| b == c)
    }
    #[inline(always)]
    pub fn below(v: V, n: u8) -> V {
        map(v, |b| b < n)
    }
    #[inline(always)]
    pub fn within(v: V, lo: u8, n: u8) -> V {
        map(v, |b| b.wrapping_sub(lo) < n)
    }
    #[inline(always)]
    pub fn or(a: V, b: V) -> V {
        let mut o = a;
        for (x, y) in o.iter_mut().zip(b) {
            *x |= y;
        }
        o
    }
    #[inline(always)]
    pub fn none() -> V {
        [0; 16]
    }
    #[inline(always)]
    pub fn bits(v: V) -> u16 {
        v.iter().enumerate().fold(0u16, |m, (k, b)| m | (u16::from(*b >> 7) << k))
    }
}

#[inline(always)]
fn trig(x: v::V, a: &Anchors) -> v::V {
    let mut t = v::none();
    if a.digit {
        t = v::or(t, v::within(x, b'0', 10));
    }
    if a.percent {
        t = v::or(t, v::eq(x, b'%'));
    }
    if a.at {
        t = v::or(t, v::or(v::eq(x, b'@'), v::eq(x, b';')));
    }
    if a.dash {
        t = v::or(t, v::eq(x, b'-'));
    }
    if a.uscore {
        t = v::or(t, v::eq(x, b'_'));
    }
    if a.upper_i {
        t = v::or(t, v::eq(x, b'I'));
    }
    if a.upper_j {
        t = v::or(t, v::eq(x, b'J'));
    }
    if a.colon {
        t = v::or(t, v::eq(x, b':'));
    }
    t
}

/// `"`, `\\` or a control byte.
#[inline(always)]
fn stops(x: v::V) -> u16 {
    v::bits(v::or(v::or(v::eq(x, b'"'), v::eq(x, b'\\')), v::below(x, 0x20)))
}

/// The detector masks of a loaded block.
#[inline(always)]
fn scan(x: v::V, a: &Anchors) -> ScanMasks {
    ScanMasks {
        trig: v::bits(trig(x, a)),
        dig: v::bits(v::within(x, b'0', 10)),
        low: v::bits(v::within(x, b'a', 26)),
        join: v::bits(v::or(v::eq(x, b'-'), v::eq(x, b'.'))),
        us: v::bits(v::eq(x, b'_')),
        bs: v::bits(v::eq(x, b'\\')),
    }
}

/// Lexer masks of a block (see [`StringMasks`]).
#[inline(always)]
pub(crate) fn string_masks(b: &[u8; 16], a: &Anchors) -> StringMasks {
    let x = v::load(b);
    StringMasks { stop: stops(x), trig: v::bits(trig(x, a)) }
}

/// Detector masks of a block (see [`ScanMasks`]).
#[inline(always)]
pub(crate) fn scan_masks(b: &[u8; 16], a: &Anchors) -> ScanMasks {
    scan(v::load(b), a)
}

/// Lexer stops and detector masks of a block from one load (the one-pass
/// scan of a JSON string value): `(stop, masks, wide)`, as in
/// [`string_masks`] and [`scan_masks`]; `wide`: bytes ≥ 0x80 (not ASCII).
#[inline(always)]
pub(crate) fn value_masks(b: &[u8; 16], a: &Anchors) -> (u16, ScanMasks, u16) {
    let x = v::load(b);
    (stops(x), scan(x, a), v::bits(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(b: &[u8; 16], a: &Anchors) -> (StringMasks, ScanMasks) {
        let m = |f: &dyn Fn(u8) -> bool| b.iter().enumerate().fold(0u16, |m, (k, x)| m | (u16::from(f(*x)) << k));
        (
            StringMasks { stop: m(&|x| x == b'"' || x == b'\\' || x < 0x20), trig: m(&|x| a.is_anchor(x)) },
            ScanMasks {
                trig: m(&|x| a.is_anchor(x)),
                dig: m(&|x| x.is_ascii_digit()),
                low: m(&|x| x.is_ascii_lowercase()),
                join: m(&|x| x == b'-' || x == b'.'),
                us: m(&|x| x == b'_'),
                bs: m(&|x| x == b'\\'),
            },
        )
    }

    #[test]
    fn every_byte_value_in_every_lane() {
        let all = Anchors { at: true, digit: true, colon: true, upper_i: true, upper_j: true, uscore: true, dash: true, percent: true };
        let some = Anchors { at: true, dash: true, ..Anchors::default() };
        for a in [all, some, Anchors::default()] {
            for base in 0..=255u8 {
                // lane k holds base + 7k: every value reaches every lane over the loop
                let b: [u8; 16] = std::array::from_fn(|k| base.wrapping_add((k as u8).wrapping_mul(7)));
                let (s, c) = reference(&b, &a);
                assert_eq!(string_masks(&b, &a), s, "{b:?}");
                assert_eq!(scan_masks(&b, &a), c, "{b:?}");
                let wide = b.iter().enumerate().fold(0u16, |m, (k, x)| m | (u16::from(*x >= 0x80) << k));
                assert_eq!(value_masks(&b, &a), (s.stop, c, wide), "{b:?}");
            }
        }
    }

    #[test]
    fn blocks_pad_with_zeros() {
        let s = b"0123456789abcdefXYZ";
        assert_eq!(block(s, 0), (*b"0123456789abcdef", 16));
        let (b, n) = block(s, 16);
        assert_eq!(n, 3);
        assert_eq!(&b[..4], b"XYZ\0");
        assert_eq!(block(s, 40).1, 0);
        assert_eq!(first(3), 0b111);
        assert_eq!(first(16), u16::MAX);
        assert_eq!(first(0), 0);
    }
}
