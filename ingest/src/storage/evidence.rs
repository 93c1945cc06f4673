//! Report bodies kept compactly: zstd, with a dictionary trained on the fleet's own reports once
//! there are enough of them. A fleet's reports share almost all their structure (the same
//! SMART attribute tables, the same keys), which a dictionary turns into a few hundred bytes
//! per report instead of a couple of kilobytes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use zstd::bulk::{Compressor, Decompressor};
use zstd::dict::DecoderDictionary;
use zstd::zstd_safe::CParameter;

/// zstd level for report bodies, with the parameters of [`tune`]. Measured on 4,000 of the load
/// generator's bodies with a dictionary trained on 2,000 others (python-zstandard, the same C
/// library): level 3 (zstd's default) 342 bytes a body, level 5 326, level 6 310. In the ingest
/// under keep-alive load, level 5's compression is 6.5–7 % of this 2-core machine (perf; 40–50
/// µs a report with the caches shared with everything else; in a loop on its own level 3 took a
/// third to a half of level 5's time): 16 bytes of every report kept for 400 days, for a few
/// percent of peak throughput (docs/benchmarks.md).
const LEVEL: i32 = 5;

/// Level 5's search (greedy, 8 attempts) as zstd chooses it for inputs of unknown size, with
/// hash and chain tables of 64 Ki entries. For a 5 KB input zstd would pick the tables and search
/// it tunes for 16 KB inputs, which miss most of a 64 KB dictionary: the same level then gave
/// 360 bytes instead of 326. Its own tables for unknown sizes (2^19 and 2^18 entries, 3 MB a
/// thread) compressed no better than these (327.2 against 327.1 bytes).
fn tune(c: &mut Compressor<'static>) -> std::io::Result<()> {
    for p in [
        CParameter::WindowLog(21),
        CParameter::ChainLog(16),
        CParameter::HashLog(16),
        CParameter::SearchLog(3),
        CParameter::MinMatch(5),
        CParameter::TargetLength(2),
        CParameter::Strategy(zstd::zstd_safe::Strategy::ZSTD_greedy),
    ] {
        c.set_parameter(p)?;
    }
    Ok(())
}

/// Largest dictionary trained; zstd's own guidance is ~100 KB, and our reports are small.
pub const MAX_DICTIONARY_BYTES: usize = 64 * 1024;

/// Compresses and decompresses report bodies; shared by every writer and reader.
#[derive(Default)]
pub struct Codec {
    inner: RwLock<Dictionaries>,
}

#[derive(Default)]
struct Dictionaries {
    /// (id, generation, bytes) of the dictionary new bodies are compressed with.
    newest: Option<(i16, u64, Arc<Vec<u8>>)>,
    decoders: HashMap<i16, Arc<DecoderDictionary<'static>>>,
}

/// Tells apart every dictionary this process ever loaded, in any `Codec`: ids repeat across
/// databases (every test database has a dictionary 1), generations do not. 0 is plain zstd.
static GENERATION: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// A compression context per thread, kept with the dictionary loaded: creating one per
    /// report cost more CPU than compressing with it (`ZSTD_createCCtx` in the profile).
    static COMPRESSOR: RefCell<Option<(u64, Compressor<'static>)>> = const { RefCell::new(None) };
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<i16> = self
            .inner
            .read()
            .map(|d| d.decoders.keys().copied().collect())
            .unwrap_or_default();
        f.debug_struct("Codec").field("dictionaries", &ids).finish()
    }
}

/// A body that cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("report body names dictionary {0}, which this database does not hold")]
    UnknownDictionary(i16),
    #[error("report body cannot be decompressed: {0}")]
    Corrupt(#[from] std::io::Error),
    #[error("report body is not UTF-8 after decompression")]
    NotText,
}

impl Codec {
    /// The id of the dictionary new bodies are compressed with, if any.
    pub fn newest(&self) -> Option<i16> {
        self.inner
            .read()
            .ok()
            .and_then(|d| d.newest.as_ref().map(|(id, _, _)| *id))
    }

    /// Whether `id` is loaded.
    pub fn knows(&self, id: i16) -> bool {
        self.inner
            .read()
            .map(|d| d.decoders.contains_key(&id))
            .unwrap_or(false)
    }

    /// Makes dictionary `id` available for reading, and for writing when it is the newest.
    pub fn add(&self, id: i16, dict: &[u8]) {
        let decoder = Arc::new(DecoderDictionary::copy(dict));
        if let Ok(mut d) = self.inner.write() {
            d.decoders.insert(id, decoder);
            if d.newest.as_ref().is_none_or(|(newest, _, _)| *newest < id) {
                let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
                d.newest = Some((id, generation, Arc::new(dict.to_vec())));
            }
        }
    }

    /// Compresses a report body with the newest dictionary, or plain zstd before there is one.
    pub fn compress(&self, json: &[u8]) -> std::io::Result<(Vec<u8>, Option<i16>)> {
        let newest = self.inner.read().ok().and_then(|d| d.newest.clone());
        let generation = newest.as_ref().map_or(0, |(_, g, _)| *g);
        COMPRESSOR.with(|cell| {
            let mut cell = cell.borrow_mut();
            let compressor = match cell.take() {
                Some((g, c)) if g == generation => c,
                _ => {
                    match &newest {
                        Some((_, _, dict)) => {
                            let mut c = Compressor::with_dictionary(LEVEL, dict)?;
                            tune(&mut c)?;
                            // The row names its dictionary (`body_dictionary`); the frame's own
                            // copy of the id is 4 bytes a report that nothing reads.
                            c.set_parameter(CParameter::DictIdFlag(false))?;
                            c
                        }
                        None => Compressor::new(LEVEL)?,
                    }
                }
            };
            let (_, c) = cell.insert((generation, compressor));
            Ok((c.compress(json)?, newest.as_ref().map(|(id, _, _)| *id)))
        })
    }

    /// The JSON text of a stored body.
    pub fn decompress(
        &self,
        body: &[u8],
        dictionary: Option<i16>,
    ) -> Result<String, EvidenceError> {
        let dict = match dictionary {
            None => None,
            Some(id) => Some(
                self.inner
                    .read()
                    .ok()
                    .and_then(|d| d.decoders.get(&id).cloned())
                    .ok_or(EvidenceError::UnknownDictionary(id))?,
            ),
        };
        // Every frame `compress` writes states its size: decoded in one shot into a buffer of
        // that size, a body costs a context and no more. The streaming decoder's window and
        // input buffers (hundreds of KB allocated per body) cost more than decoding a 5 KB
        // report, and the charts decode hundreds of bodies a request.
        let size = zstd::zstd_safe::get_frame_content_size(body)
            .ok()
            .flatten()
            .filter(|s| *s <= ONE_SHOT_MAX_BYTES)
            .and_then(|s| usize::try_from(s).ok());
        let out = match (size, &dict) {
            (Some(size), Some(dict)) => {
                Decompressor::with_prepared_dictionary(dict)?.decompress(body, size)?
            }
            (Some(size), None) => Decompressor::new()?.decompress(body, size)?,
            (None, Some(dict)) => {
                let mut out = Vec::with_capacity(body.len().saturating_mul(8));
                zstd::stream::read::Decoder::with_prepared_dictionary(body, dict)?
                    .read_to_end(&mut out)?;
                out
            }
            (None, None) => {
                let mut out = Vec::with_capacity(body.len().saturating_mul(8));
                zstd::stream::read::Decoder::new(body)?.read_to_end(&mut out)?;
                out
            }
        };
        String::from_utf8(out).map_err(|_| EvidenceError::NotText)
    }
}

/// Bodies whose frame says they are larger than this are decoded as a stream (a body passed the
/// ingest's `max_body_bytes` when it arrived; this only keeps a lying frame from making us
/// allocate what it claims).
const ONE_SHOT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Trains a dictionary from sample bodies (JSON text). `None` when zstd finds too little in
/// common, or there are too few samples to be worth it.
pub fn train(samples: &[Vec<u8>]) -> Option<Vec<u8>> {
    let total: usize = samples.iter().map(Vec::len).sum();
    // zstd wants roughly 100 times the dictionary size in samples; with less the dictionary
    // learns the samples rather than the fleet.
    let size = (total / 100).clamp(4 * 1024, MAX_DICTIONARY_BYTES);
    if samples.len() < 8 {
        return None;
    }
    zstd::dict::from_samples(samples, size).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../schema/examples/report.json");

    fn variant(i: usize) -> Vec<u8> {
        EXAMPLE
            .replace("\"report_id\": \"", &format!("\"report_id\": \"{i:08}"))
            .replace("3d1219c7", &format!("{i:08x}"))
            .into_bytes()
    }

    #[test]
    fn bodies_round_trip_with_and_without_a_dictionary() {
        let codec = Codec::default();
        let json = variant(1);
        let (plain, none) = codec.compress(&json).unwrap();
        assert_eq!(none, None);
        assert_eq!(codec.decompress(&plain, None).unwrap().as_bytes(), json);

        let samples: Vec<Vec<u8>> = (0..200).map(variant).collect();
        let dict = train(&samples).expect("a dictionary from 200 similar reports");
        codec.add(1, &dict);
        let (small, id) = codec.compress(&variant(999)).unwrap();
        assert_eq!(id, Some(1));
        assert!(
            small.len() * 2 < plain.len(),
            "dictionary: {} bytes, plain: {} bytes",
            small.len(),
            plain.len()
        );
        assert_eq!(
            codec.decompress(&small, Some(1)).unwrap().as_bytes(),
            variant(999)
        );
        // Bodies written before the dictionary still read.
        assert_eq!(codec.decompress(&plain, None).unwrap().as_bytes(), json);
        assert!(matches!(
            codec.decompress(&small, Some(2)),
            Err(EvidenceError::UnknownDictionary(2))
        ));
    }

    #[test]
    fn two_databases_with_a_dictionary_1_each_never_share_a_compressor() {
        // Same id, different dictionaries (two databases, two trainings), one thread: each
        // body must read back with its own codec.
        let a = Codec::default();
        let b = Codec::default();
        a.add(
            1,
            &train(&(0..50).map(variant).collect::<Vec<_>>()).unwrap(),
        );
        b.add(
            1,
            &train(&(0..50).map(|i| variant(i + 7_000)).collect::<Vec<_>>()).unwrap(),
        );
        for i in 0..3 {
            let json = variant(900 + i);
            let (from_a, _) = a.compress(&json).unwrap();
            let (from_b, _) = b.compress(&json).unwrap();
            assert_eq!(a.decompress(&from_a, Some(1)).unwrap().as_bytes(), json);
            assert_eq!(b.decompress(&from_b, Some(1)).unwrap().as_bytes(), json);
        }
    }

    #[test]
    fn the_newest_dictionary_wins_whatever_the_load_order() {
        let samples: Vec<Vec<u8>> = (0..50).map(variant).collect();
        let dict = train(&samples).unwrap();
        let codec = Codec::default();
        codec.add(3, &dict);
        codec.add(2, &dict);
        assert_eq!(codec.newest(), Some(3));
        assert!(codec.knows(2));
    }
}
