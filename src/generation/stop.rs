//! Stop strings, matched as transformers' `StopStringCriteria` matches them: generation stops
//! once a stop string appears in the text and overlaps the last token, so a match that spans
//! several tokens, or ends inside the last one, counts; one wholly in earlier text does not.
//! <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/generation/stopping_criteria.py#L245>

use crate::error::Result;
use crate::tokenizer::Tokenizer;

#[derive(Debug)]
pub(crate) struct StopStrings<'a> {
    tokenizer: &'a Tokenizer,
    strings: Vec<String>,
    /// Tokens of context to decode: enough for the longest stop string plus the last token.
    window: usize,
}

impl<'a> StopStrings<'a> {
    pub fn new(tokenizer: &'a Tokenizer, strings: &[String]) -> Self {
        let longest = strings.iter().map(String::len).max().unwrap_or(0);
        Self {
            tokenizer,
            strings: strings.to_vec(),
            // Every token decodes to at least one byte, so `longest` tokens cover the string.
            window: longest + 1,
        }
    }

    /// Whether `ids` (the whole sequence so far) ends in a stop string overlapping its last token.
    pub fn matches(&self, ids: &[u32]) -> Result<bool> {
        if self.strings.is_empty() || ids.is_empty() {
            return Ok(false);
        }
        let start = ids.len().saturating_sub(self.window);
        let before = self.tokenizer.decode(&ids[start..ids.len() - 1], false)?;
        let text = self.tokenizer.decode(&ids[start..], false)?;
        // A match must end after the text that precedes the last token.
        let last_token_start = common_prefix_len(&before, &text);
        // Occurrences may overlap ("aa" in "aaa"), so try every start, not only disjoint matches.
        Ok(self.strings.iter().any(|stop| {
            text.char_indices().any(|(at, _)| {
                text[at..].starts_with(stop.as_str()) && at + stop.len() > last_token_start
            })
        }))
    }
}

fn common_prefix_len(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}
