//! From a request's BYTES tensor to the encoder's integer inputs: strings are
//! decoded (UTF-8), tokenized with the model's `tokenizer.json` (truncated to
//! `max_length`), and right-padded to the batch's longest row with an attention
//! mask that is 1 on real tokens and 0 on padding.

use crate::options::DEFAULT_MAX_LENGTH;
use flotilla_core::tensor::split_bytes_elements;
use flotilla_core::{DataType, Error, Result, Tensor};
use std::path::Path;
use tokenizers::Tokenizer;

/// A tokenized, padded batch; each field is `[rows, len]` row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    pub rows: usize,
    pub len: usize,
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub type_ids: Vec<i64>,
}

/// A model's tokenizer with the truncation it was configured with and padding off
/// (rows are padded per batch here, to the longest row rather than a fixed length).
pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: i64,
    max_length: usize,
}

/// The strings of a text input: one per row, shape `[N, 1]` (batched) or `[N]`.
pub fn decode_strings(input: &Tensor) -> Result<Vec<&str>> {
    let what = format!("input '{}'", input.name);
    if input.datatype != DataType::Bytes {
        return Err(Error::invalid(format!(
            "{what}: datatype {} is not BYTES; send one string per row",
            input.datatype
        )));
    }
    let rows = match input.shape.as_slice() {
        [n] | [n, 1] => *n,
        other => {
            return Err(Error::invalid(format!("{what}: shape {other:?} must be [N, 1] or [N]: one string per row")))
        }
    };
    if rows < 1 {
        return Err(Error::invalid(format!("{what}: the batch is empty; send at least one string")));
    }
    let elements = split_bytes_elements(&input.data, &what)?;
    if elements.len() as i64 != rows {
        return Err(Error::invalid(format!(
            "{what}: shape {:?} needs {rows} strings, got {}",
            input.shape,
            elements.len()
        )));
    }
    elements
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| {
            std::str::from_utf8(bytes).map_err(|e| {
                Error::invalid(format!(
                    "{what}: element {i} is not valid UTF-8 (bad byte at offset {})",
                    e.valid_up_to()
                ))
            })
        })
        .collect()
}

// === impl TextTokenizer ===

impl TextTokenizer {
    /// Reads `tokenizer.json`; see [`TextTokenizer::new`] for `max_length`.
    pub fn from_file(path: &Path, max_length: Option<usize>) -> Result<Self> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| Error::invalid(format!("{}: cannot read tokenizer: {e}", path.display())))?;
        Self::new(inner, max_length).map_err(|e| Error::invalid(format!("{}: {}", path.display(), e.message)))
    }

    /// Truncates rows to `max_length` tokens (special tokens included): the given value, else
    /// the tokenizer's own truncation length, else [`DEFAULT_MAX_LENGTH`]. The tokenizer's
    /// truncation strategy and direction are kept; its padding is replaced by per-batch padding.
    pub fn new(mut inner: Tokenizer, max_length: Option<usize>) -> Result<Self> {
        let pad_id = match inner.get_padding() {
            Some(p) => p.pad_id,
            None => ["[PAD]", "<pad>"].iter().find_map(|t| inner.token_to_id(t)).unwrap_or(0),
        };
        let mut truncation = inner.get_truncation().cloned().unwrap_or_default();
        truncation.max_length =
            max_length.or(inner.get_truncation().map(|t| t.max_length)).unwrap_or(DEFAULT_MAX_LENGTH);
        truncation.stride = 0;
        let max_length = truncation.max_length;
        inner
            .with_truncation(Some(truncation))
            .map_err(|e| Error::invalid(format!("truncation to {max_length} tokens: {e}")))?;
        inner.with_padding(None);
        Ok(Self { inner, pad_id: i64::from(pad_id), max_length })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Token ids per string with the model's special tokens, truncated, unpadded.
    pub fn tokenize(&self, text: &str) -> Result<(Vec<u32>, Vec<u32>, Vec<u32>)> {
        let e = self.inner.encode(text, true).map_err(|e| Error::invalid(format!("cannot tokenize: {e}")))?;
        Ok((e.get_ids().to_vec(), e.get_attention_mask().to_vec(), e.get_type_ids().to_vec()))
    }

    /// Tokenizes every string and pads the rows to the longest.
    pub fn encode(&self, texts: &[&str]) -> Result<TokenBatch> {
        let rows: Vec<_> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| self.tokenize(t).map_err(|e| Error::invalid(format!("element {i}: {}", e.message))))
            .collect::<Result<_>>()?;
        let len = rows.iter().map(|(ids, _, _)| ids.len()).max().unwrap_or(0).max(1);
        let mut batch = TokenBatch {
            rows: rows.len(),
            len,
            ids: vec![self.pad_id; rows.len() * len],
            mask: vec![0; rows.len() * len],
            type_ids: vec![0; rows.len() * len],
        };
        for (r, (ids, mask, types)) in rows.iter().enumerate() {
            let at = r * len;
            for (j, ((id, m), t)) in ids.iter().zip(mask).zip(types).enumerate() {
                batch.ids[at + j] = i64::from(*id);
                batch.mask[at + j] = i64::from(*m);
                batch.type_ids[at + j] = i64::from(*t);
            }
        }
        Ok(batch)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flotilla_core::tensor::join_bytes_elements;

    /// A BERT-style tokenizer.json with a ten-word vocabulary (uncased, WordPiece).
    pub(crate) const TINY_TOKENIZER: &str = r###"{
      "version": "1.0",
      "truncation": {"direction": "Right", "max_length": 6, "strategy": "LongestFirst", "stride": 0},
      "padding": {"strategy": {"Fixed": 16}, "direction": "Right", "pad_to_multiple_of": null,
                  "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
      "added_tokens": [
        {"id": 0, "special": true, "content": "[PAD]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false},
        {"id": 1, "special": true, "content": "[UNK]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false},
        {"id": 2, "special": true, "content": "[CLS]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false},
        {"id": 3, "special": true, "content": "[SEP]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false}
      ],
      "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
      "pre_tokenizer": {"type": "BertPreTokenizer"},
      "post_processor": {"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
        "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]}, "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
      "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
      "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
        "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "hello": 4, "world": 5, "##s": 6, "a": 7, "cafe": 8, ",": 9}}
    }"###;

    pub(crate) fn tiny(max_length: Option<usize>) -> TextTokenizer {
        let t: Tokenizer = TINY_TOKENIZER.parse().unwrap();
        TextTokenizer::new(t, max_length).unwrap()
    }

    fn strings(shape: Vec<i64>, items: &[&[u8]]) -> Tensor {
        Tensor::new("TEXT", DataType::Bytes, shape, join_bytes_elements(items.iter().copied()))
    }

    #[test]
    fn tokenizes_pads_and_masks() {
        let t = tiny(None);
        assert_eq!(t.max_length(), 6, "from tokenizer.json");
        let b = t.encode(&["Hello, worlds", "", "hello"]).unwrap();
        assert_eq!((b.rows, b.len), (3, 6));
        #[rustfmt::skip]
        assert_eq!(b.ids, vec![
            2, 4, 9, 5, 6, 3, // [CLS] hello , world ##s [SEP]
            2, 3, 0, 0, 0, 0, // the empty string is [CLS] [SEP]
            2, 4, 3, 0, 0, 0,
        ]);
        #[rustfmt::skip]
        assert_eq!(b.mask, vec![
            1, 1, 1, 1, 1, 1,
            1, 1, 0, 0, 0, 0,
            1, 1, 1, 0, 0, 0,
        ]);
        assert!(b.type_ids.iter().all(|t| *t == 0));
    }

    #[test]
    fn pads_to_the_longest_row_not_the_files_fixed_length() {
        let b = tiny(None).encode(&["hello"]).unwrap();
        assert_eq!(b.len, 3);
        assert_eq!(b.ids, vec![2, 4, 3]);
    }

    #[test]
    fn truncates_with_special_tokens_kept() {
        let t = tiny(Some(4));
        let b = t.encode(&["hello world hello world hello"]).unwrap();
        assert_eq!(b.ids, vec![2, 4, 5, 3]);
        let long = tiny(Some(64)).encode(&["hello world hello world hello"]).unwrap();
        assert_eq!(long.len, 7);
    }

    #[test]
    fn unicode_is_normalised_and_unknown_words_map_to_unk() {
        let b = tiny(None).encode(&["CAFÉ 東"]).unwrap();
        assert_eq!(b.ids, vec![2, 8, 1, 3]);
    }

    #[test]
    fn decodes_both_shapes() {
        let t = strings(vec![2, 1], &[b"a", "é".as_bytes()]);
        assert_eq!(decode_strings(&t).unwrap(), vec!["a", "é"]);
        let t = strings(vec![2], &[b"a", b""]);
        assert_eq!(decode_strings(&t).unwrap(), vec!["a", ""]);
    }

    #[test]
    fn decoding_errors_are_client_errors() {
        let cases: Vec<(Tensor, &str)> = vec![
            (strings(vec![2, 1], &[b"ok", b"\xff\xfe"]), "element 1 is not valid UTF-8"),
            (strings(vec![0, 1], &[]), "empty"),
            (strings(vec![1, 2], &[b"a", b"b"]), "one string per row"),
            (strings(vec![1, 1, 1], &[b"a"]), "one string per row"),
            (strings(vec![], &[b"a"]), "one string per row"),
            (strings(vec![3], &[b"a"]), "needs 3 strings"),
            (Tensor::new("TEXT", DataType::Bytes, vec![1], vec![9, 0, 0, 0, b'a']), "remain"),
            (Tensor::new("TEXT", DataType::U8, vec![1], vec![1]), "not BYTES"),
        ];
        for (t, want) in cases {
            let e = decode_strings(&t).unwrap_err();
            assert_eq!(e.kind, flotilla_core::ErrorKind::InvalidArgument);
            assert!(e.message.contains(want), "{} does not say {want}", e.message);
        }
    }
}
