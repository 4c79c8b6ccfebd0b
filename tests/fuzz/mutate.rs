//! Mutations of valid encodings: bit flips, byte sets, writes of interesting values into
//! known length and offset fields, truncation, extension, splicing, deleting and
//! duplicating ranges, and now and then pure random bytes.

use rand::rngs::StdRng;
use rand::Rng;

/// A field of a known format at `at`, `width` bytes wide (1, 2, 4 or 8), little-endian.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub at: usize,
    pub width: usize,
}

impl Field {
    pub fn new(at: usize, width: usize) -> Field {
        Field { at, width }
    }
}

/// Values that break length and offset arithmetic: zero, one, the maxima of each width
/// and their neighbours, page and block boundaries.
fn interesting(rng: &mut StdRng, width: usize, current: u64, data_len: usize) -> u64 {
    let max = if width >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * width)) - 1
    };
    let v = match rng.gen_range(0..14) {
        0 => 0,
        1 => 1,
        2 => max,
        3 => max - 1,
        4 => max / 2,
        5 => max / 2 + 1,
        6 => current.wrapping_add(rng.gen_range(1..=16)),
        7 => current.wrapping_sub(rng.gen_range(1..=16)),
        8 => [4095, 4096, 4097, 8192, 1024, 1025, 2048, 16, 32, 255, 256][rng.gen_range(0..11)],
        9 => data_len as u64,
        10 => (data_len as u64).wrapping_add(rng.gen_range(0..4)),
        11 => rng.gen_range(0..=data_len as u64 / 512 + 1),
        12 => current ^ (1u64 << rng.gen_range(0..8 * width as u32)),
        _ => rng.gen(),
    };
    v & max
}

fn read_le(data: &[u8], f: Field) -> u64 {
    let mut le = [0u8; 8];
    le[..f.width].copy_from_slice(&data[f.at..f.at + f.width]);
    u64::from_le_bytes(le)
}

fn write_le(data: &mut [u8], f: Field, v: u64) {
    data[f.at..f.at + f.width].copy_from_slice(&v.to_le_bytes()[..f.width]);
}

/// A position biased toward the start of a field, else uniform.
fn position(rng: &mut StdRng, len: usize, fields: &[Field]) -> usize {
    if !fields.is_empty() && rng.gen_bool(0.5) {
        let f = fields[rng.gen_range(0..fields.len())];
        (f.at + rng.gen_range(0..f.width)).min(len - 1)
    } else {
        rng.gen_range(0..len)
    }
}

/// A length for truncation or extension: a block multiple, near one, or any.
fn cut_point(rng: &mut StdRng, len: usize) -> usize {
    match rng.gen_range(0..3) {
        0 => (rng.gen_range(0..=len) / 4096) * 4096,
        1 => ((rng.gen_range(0..=len) / 4096) * 4096 + rng.gen_range(0..64)).min(len),
        _ => rng.gen_range(0..=len),
    }
}

/// Applies one to several mutations to `data`. `fields` are format fields found in the
/// original (they may be stale after a length change; positions are clamped); `donors`
/// are other valid encodings to splice from.
pub fn mutate(rng: &mut StdRng, data: &mut Vec<u8>, fields: &[Field], donors: &[&[u8]]) {
    let rounds = 1 + (rng.gen_range(0u32..64)).trailing_zeros().min(6) as usize;
    for _ in 0..rounds {
        mutate_once(rng, data, fields, donors);
    }
}

fn mutate_once(rng: &mut StdRng, data: &mut Vec<u8>, fields: &[Field], donors: &[&[u8]]) {
    if data.is_empty() {
        let n = rng.gen_range(0..64);
        data.extend((0..n).map(|_| rng.gen::<u8>()));
        return;
    }
    let len = data.len();
    match rng.gen_range(0..100) {
        // A bit flip.
        0..=19 => {
            let at = position(rng, len, fields);
            data[at] ^= 1 << rng.gen_range(0..8);
        }
        // A byte set.
        20..=29 => {
            let at = position(rng, len, fields);
            data[at] = [0, 0xff, 0x7f, 0x80, 1, rng.gen()][rng.gen_range(0..6)];
        }
        // An interesting value in a known field.
        30..=54 => {
            let usable: Vec<Field> = fields
                .iter()
                .copied()
                .filter(|f| f.at + f.width <= len)
                .collect();
            if usable.is_empty() {
                return;
            }
            let f = usable[rng.gen_range(0..usable.len())];
            let v = interesting(rng, f.width, read_le(data, f), len);
            write_le(data, f, v);
        }
        // Truncation.
        55..=64 => data.truncate(cut_point(rng, len)),
        // Extension: zeros, random bytes, or a copy of a range.
        65..=72 => {
            let n = rng.gen_range(1..=4096);
            match rng.gen_range(0..3) {
                0 => data.resize(len + n, 0),
                1 => data.extend((0..n).map(|_| rng.gen::<u8>())),
                _ => {
                    let from = rng.gen_range(0..len);
                    let to = (from + n).min(len);
                    let chunk = data[from..to].to_vec();
                    data.extend_from_slice(&chunk);
                }
            }
        }
        // Splice: a range of a donor over or into this input.
        73..=82 => {
            let donor: &[u8] = if donors.is_empty() || rng.gen_bool(0.3) {
                &data.clone()
            } else {
                donors[rng.gen_range(0..donors.len())]
            };
            if donor.is_empty() {
                return;
            }
            let from = if rng.gen_bool(0.5) {
                (rng.gen_range(0..donor.len()) / 4096) * 4096
            } else {
                rng.gen_range(0..donor.len())
            };
            let n = rng.gen_range(1..=(donor.len() - from).min(8192));
            let chunk = donor[from..from + n].to_vec();
            let at = if rng.gen_bool(0.5) {
                (rng.gen_range(0..len) / 4096) * 4096
            } else {
                rng.gen_range(0..len)
            };
            if rng.gen_bool(0.7) {
                let end = (at + n).min(len);
                data[at..end].copy_from_slice(&chunk[..end - at]);
            } else {
                data.splice(at..at, chunk);
            }
        }
        // Delete a range.
        83..=88 => {
            let from = rng.gen_range(0..len);
            let to = (from + rng.gen_range(1..=256)).min(len);
            data.drain(from..to);
        }
        // Duplicate a range in place.
        89..=93 => {
            let from = rng.gen_range(0..len);
            let to = (from + rng.gen_range(1..=256)).min(len);
            let chunk = data[from..to].to_vec();
            data.splice(from..from, chunk);
        }
        // A run of random bytes.
        94..=97 => {
            let at = rng.gen_range(0..len);
            let to = (at + rng.gen_range(1..=64)).min(len);
            rng.fill(&mut data[at..to]);
        }
        // Pure random bytes.
        _ => {
            let n = rng.gen_range(0..=len.min(1 << 16));
            data.clear();
            data.extend((0..n).map(|_| rng.gen::<u8>()));
        }
    }
}
