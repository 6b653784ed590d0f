//! Byte-level mutations, stacked several per case: bit flips, interesting bytes and
//! little-/big-endian integer fields, truncation, insertion, deletion and duplication of
//! ranges, dictionary tokens, and splicing with another seed. Positions favour the start and
//! the end of the input, where the headers of our formats live (the safetensors JSON header,
//! `data.pkl` first and the zip directory last in `torch.save` files, image and IDX headers).

use crate::rng::SplitMix64;

/// Most bytes a mutated input may grow to (keeps a case's work bounded).
pub const MAX_LEN: usize = 1 << 20;

const INTERESTING_U8: [u8; 6] = [0, 1, 0x7f, 0x80, 0xff, b'0'];

fn interesting_u64(len: usize) -> [u64; 12] {
    let n = len as u64;
    [
        0,
        1,
        2,
        0x7f,
        0xff,
        0x7fff_ffff,
        0xffff_ffff,
        0x8000_0000,
        u64::MAX,
        i64::MAX as u64,
        n.saturating_sub(1),
        n + 1,
    ]
}

/// A position in `0..len` (`len > 0`): 40% anywhere, 40% in the first 8 KiB, 20% in the
/// last 1 KiB.
fn position(rng: &mut SplitMix64, len: usize) -> usize {
    match rng.below(10) {
        0..=3 => rng.below(len),
        4..=7 => rng.below(len.min(8192)),
        _ => len - 1 - rng.below(len.min(1024)),
    }
}

/// A short length: mostly small, sometimes up to 4 KiB.
fn span(rng: &mut SplitMix64) -> usize {
    if rng.chance(3, 4) {
        1 + rng.below(16)
    } else {
        1 + rng.below(4096)
    }
}

fn overwrite_int(rng: &mut SplitMix64, data: &mut [u8]) {
    let width = *rng.pick(&[2usize, 4, 8]);
    if data.len() < width {
        return;
    }
    let at = position(rng, data.len() - width + 1);
    let mut value = *rng.pick(&interesting_u64(data.len()));
    if rng.chance(1, 4) {
        // Near the value already there: off-by-one sizes and offsets.
        let mut old = [0u8; 8];
        old[..width].copy_from_slice(&data[at..at + width]);
        value = u64::from_le_bytes(old).wrapping_add(rng.below(33) as u64).wrapping_sub(16);
    }
    let bytes = if rng.chance(1, 4) { value.to_be_bytes() } else { value.to_le_bytes() };
    let field = if rng.chance(1, 4) { &bytes[8 - width..] } else { &bytes[..width] };
    data[at..at + width].copy_from_slice(field);
}

fn insert_or_duplicate(rng: &mut SplitMix64, data: &mut Vec<u8>) {
    let at = if data.is_empty() { 0 } else { position(rng, data.len() + 1).min(data.len()) };
    let n = span(rng);
    let chunk: Vec<u8> = if !data.is_empty() && rng.chance(1, 2) {
        let from = position(rng, data.len());
        data[from..(from + n).min(data.len())].to_vec()
    } else {
        let byte = *rng.pick(&INTERESTING_U8);
        vec![byte; n]
    };
    data.splice(at..at, chunk);
}

fn splice(rng: &mut SplitMix64, data: &mut Vec<u8>, other: &[u8]) {
    if other.is_empty() || data.is_empty() {
        return;
    }
    let cut = position(rng, data.len());
    let from = position(rng, other.len());
    data.truncate(cut);
    data.extend_from_slice(&other[from..]);
}

fn insert_token(rng: &mut SplitMix64, data: &mut Vec<u8>, dict: &[&[u8]]) {
    if dict.is_empty() {
        return;
    }
    let token = *rng.pick(dict);
    let at = if data.is_empty() { 0 } else { position(rng, data.len()) };
    if rng.chance(1, 2) {
        data.splice(at..at, token.iter().copied());
    } else {
        let end = (at + token.len()).min(data.len());
        data.splice(at..end, token.iter().copied());
    }
}

/// Applies one mutation, chosen at random, to `data`. `others` are the target's seeds (for
/// splicing) and `dict` its tokens.
pub fn mutate_once(rng: &mut SplitMix64, data: &mut Vec<u8>, others: &[&[u8]], dict: &[&[u8]]) {
    let len = data.len();
    match rng.below(11) {
        0 | 1 if len > 0 => {
            let at = position(rng, len);
            data[at] ^= 1 << rng.below(8);
        }
        2 if len > 0 => {
            let at = position(rng, len);
            data[at] = *rng.pick(&INTERESTING_U8);
        }
        3 if len > 0 => {
            let at = position(rng, len);
            data[at] = rng.next_u64() as u8;
        }
        4 | 5 => overwrite_int(rng, data),
        6 if len > 0 => data.truncate(rng.below(len)),
        7 => insert_or_duplicate(rng, data),
        8 if len > 0 => {
            let at = position(rng, len);
            let end = (at + span(rng)).min(len);
            data.drain(at..end);
        }
        9 => insert_token(rng, data, dict),
        10 if !others.is_empty() => {
            let other = others[rng.below(others.len())];
            splice(rng, data, other);
        }
        _ => data.push(rng.next_u64() as u8),
    }
    data.truncate(MAX_LEN);
}

/// A mutated copy of `seed`: 1 to 8 stacked mutations (mostly few).
pub fn mutate(rng: &mut SplitMix64, seed: &[u8], others: &[&[u8]], dict: &[&[u8]]) -> Vec<u8> {
    let mut data = seed.to_vec();
    let most = rng.below(8) + 1;
    let count = 1 + rng.below(most);
    for _ in 0..count {
        mutate_once(rng, &mut data, others, dict);
    }
    data
}
