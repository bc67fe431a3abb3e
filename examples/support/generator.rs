//! A small word-level language model for `ml_api`'s `/v1/generate`: a trigram model (with
//! bigram and word-frequency fallbacks) trained at start-up on the project's own README.
//! It writes one token at a time and stops at the end of a sentence or at `max_tokens`, so,
//! as with a real language model, how many tokens a request uses is known only when it ends.

#![allow(dead_code)] // each example uses a part

use std::collections::HashMap;

/// The text the model learns from: the README, its prose (code blocks and tables left out).
const CORPUS: &str = include_str!("../../README.md");

/// A token: a word, or one punctuation mark.
pub type Token = String;

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// At the end of a sentence.
    Stop,
    /// At `max_tokens`.
    Length,
}

impl Finish {
    /// `"stop"` or `"length"`, as the large-model APIs say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// Trigram, bigram and word counts of the corpus.
pub struct Generator {
    trigrams: HashMap<(u32, u32), Vec<(u32, u32)>>,
    bigrams: HashMap<u32, Vec<(u32, u32)>>,
    starts: Vec<(u32, u32)>,
    words: Vec<String>,
    ids: HashMap<String, u32>,
}

/// The tokens of `text`: words (letters, digits, `'`, `-`, `_`), and `.`, `,`, `!`, `?`, `;`
/// and `:` each a token of its own; anything else separates them.
pub fn tokenize(text: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() || matches!(c, '\'' | '-' | '_') {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            tokens.push(std::mem::take(&mut word));
        }
        if matches!(c, '.' | ',' | '!' | '?' | ';' | ':') {
            tokens.push(c.to_string());
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    tokens
}

fn ends_sentence(token: &str) -> bool {
    matches!(token, "." | "!" | "?")
}

/// The README's prose: fenced code and table rows left out.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || line.trim_start().starts_with('|') || line.starts_with('#') {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

impl Generator {
    /// Trained on the README.
    pub fn train() -> Generator {
        Generator::train_on(&prose(CORPUS))
    }

    /// Trained on `text`.
    pub fn train_on(text: &str) -> Generator {
        let mut generator = Generator {
            trigrams: HashMap::new(),
            bigrams: HashMap::new(),
            starts: Vec::new(),
            words: Vec::new(),
            ids: HashMap::new(),
        };
        let ids: Vec<u32> = tokenize(text)
            .into_iter()
            .map(|t| generator.id(&t.to_lowercase()))
            .collect();
        let mut starts: HashMap<u32, u32> = HashMap::new();
        let mut sentence_start = true;
        for (i, &id) in ids.iter().enumerate() {
            if sentence_start && !ends_sentence(&generator.words[id as usize]) {
                *starts.entry(id).or_default() += 1;
            }
            sentence_start = ends_sentence(&generator.words[id as usize]);
            if let Some(&next) = ids.get(i + 1) {
                add(generator.bigrams.entry(id).or_default(), next);
                if let Some(&after) = ids.get(i + 2) {
                    add(generator.trigrams.entry((id, next)).or_default(), after);
                }
            }
        }
        generator.starts = starts.into_iter().collect();
        generator.starts.sort_unstable();
        for counts in generator.bigrams.values_mut() {
            counts.sort_unstable();
        }
        for counts in generator.trigrams.values_mut() {
            counts.sort_unstable();
        }
        generator
    }

    fn id(&mut self, word: &str) -> u32 {
        if let Some(&id) = self.ids.get(word) {
            return id;
        }
        let id = u32::try_from(self.words.len()).expect("fewer than 2^32 words");
        self.words.push(word.to_owned());
        self.ids.insert(word.to_owned(), id);
        id
    }

    /// How many distinct tokens the model knows.
    pub fn vocabulary(&self) -> usize {
        self.words.len()
    }

    /// The continuation of `prompt`: at most `max_tokens` tokens, one at a time, stopping
    /// after the end of a sentence. The same prompt and seed give the same text.
    pub fn generate(&self, prompt: &str, max_tokens: u64, seed: u64) -> Generation<'_> {
        let context: Vec<u32> = tokenize(prompt)
            .iter()
            .filter_map(|t| self.ids.get(&t.to_lowercase()).copied())
            .collect();
        let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
        for byte in prompt.bytes() {
            state = (state ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
        Generation {
            generator: self,
            previous: context.len().checked_sub(2).map(|i| context[i]),
            last: context.last().copied(),
            left: max_tokens,
            random: state | 1,
            finished: None,
        }
    }

    fn pick(&self, counts: &[(u32, u32)], random: &mut u64) -> Option<u32> {
        let total: u64 = counts.iter().map(|&(_, n)| u64::from(n)).sum();
        if total == 0 {
            return None;
        }
        // xorshift64*
        *random ^= *random >> 12;
        *random ^= *random << 25;
        *random ^= *random >> 27;
        let mut at = random.wrapping_mul(0x2545_f491_4f6c_dd1d) % total;
        for &(id, n) in counts {
            if at < u64::from(n) {
                return Some(id);
            }
            at -= u64::from(n);
        }
        None
    }
}

fn add(counts: &mut Vec<(u32, u32)>, id: u32) {
    match counts.iter_mut().find(|(known, _)| *known == id) {
        Some((_, n)) => *n += 1,
        None => counts.push((id, 1)),
    }
}

/// A generation in progress: an iterator of tokens, which knows why it stopped.
pub struct Generation<'g> {
    generator: &'g Generator,
    previous: Option<u32>,
    last: Option<u32>,
    left: u64,
    random: u64,
    finished: Option<Finish>,
}

impl Generation<'_> {
    /// Why it stopped, once it has.
    pub fn finish(&self) -> Option<Finish> {
        self.finished
    }
}

impl Iterator for Generation<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        if self.finished.is_some() {
            return None;
        }
        if self.left == 0 {
            self.finished = Some(Finish::Length);
            return None;
        }
        let g = self.generator;
        let next = match (self.previous, self.last) {
            (Some(a), Some(b)) if g.trigrams.contains_key(&(a, b)) => {
                g.pick(&g.trigrams[&(a, b)], &mut self.random)
            }
            (_, Some(b)) if g.bigrams.contains_key(&b) && !ends_sentence(&g.words[b as usize]) => {
                g.pick(&g.bigrams[&b], &mut self.random)
            }
            _ => g.pick(&g.starts, &mut self.random),
        };
        let Some(next) = next else {
            self.finished = Some(Finish::Stop);
            return None;
        };
        self.left -= 1;
        self.previous = self.last;
        self.last = Some(next);
        let word = &g.words[next as usize];
        if ends_sentence(word) {
            self.finished = Some(Finish::Stop);
        }
        Some(word.clone())
    }
}

/// Tokens as text: words separated by spaces, punctuation against the word before it.
pub fn detokenize<'t>(tokens: impl IntoIterator<Item = &'t str>) -> String {
    let mut text = String::new();
    for token in tokens {
        let punctuation = token.len() == 1 && ".,!?;:".contains(token);
        if !text.is_empty() && !punctuation {
            text.push(' ');
        }
        text.push_str(token);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_at_a_sentence_end_or_at_max_tokens() {
        let g = Generator::train_on("the model answers. the model waits! a client asks.");
        let mut generation = g.generate("the", 64, 1);
        let tokens: Vec<Token> = generation.by_ref().collect();
        assert!(ends_sentence(tokens.last().unwrap()), "{tokens:?}");
        assert_eq!(generation.finish(), Some(Finish::Stop));
        let mut generation = g.generate("the", 1, 1);
        assert_eq!(generation.by_ref().count(), 1);
        assert_eq!(generation.finish(), Some(Finish::Length));
    }
}
