//! Keyword matching: which scenario an inbound text starts. Case- and
//! accent-insensitive, on whole words or phrases: both sides are folded
//! (compatibility decomposition, combining marks dropped, lower case) and
//! cut into words at every character that is not a letter or a digit, so
//! punctuation and apostrophes separate words ("l'ETE ?" is `l`, `ete`).
//! A keyword matches when its words appear in the text consecutively.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

/// `s` as lower-case words without accents.
pub fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in s.nfkd() {
        if is_combining_mark(c) {
            continue;
        }
        if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// `s` folded and its words joined by single spaces: the form keywords
/// are compared and stored in ("Été !" is `ete`).
pub fn fold(s: &str) -> String {
    words(s).join(" ")
}

/// A text cut into words once, matched against many keywords.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    words: Vec<String>,
}

impl Text {
    pub fn new(s: &str) -> Self {
        Self { words: words(s) }
    }

    /// Whether the keyword's words appear in the text, consecutively. A
    /// keyword without any letter or digit matches nothing.
    pub fn contains(&self, keyword: &str) -> bool {
        let k = words(keyword);
        !k.is_empty() && self.words.windows(k.len()).any(|w| w == k.as_slice())
    }

    /// Whether the whole text is the keyword (exit keywords: "Stop !" is
    /// `stop`, "stop the music" is not).
    pub fn is(&self, keyword: &str) -> bool {
        let k = words(keyword);
        !k.is_empty() && self.words == k
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }
}

/// Whether `text` matches `keyword` (see the module doc).
pub fn matches(text: &str, keyword: &str) -> bool {
    Text::new(text).contains(keyword)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accents_case_and_apostrophes() {
        assert!(matches("Des offres pour l'ETE ?", "été"));
        assert!(matches("Des offres pour l’été", "ETE"));
        assert!(matches("Bonjour !", "bonjour"));
        assert!(matches("BONJOUR", "Bonjour"));
        assert!(matches("ça va ?", "ca va"));
        assert!(matches("Crème brûlée", "creme brulee"));
        assert!(
            matches("ｈｅｌｌｏ", "hello"),
            "full-width letters fold too"
        );
    }

    #[test]
    fn whole_words_only() {
        assert!(!matches("bonjourno", "bonjour"));
        assert!(!matches("summertime", "summer"));
        assert!(!matches("prix", "pr"));
        assert!(matches("le prix, svp", "prix"));
        assert!(matches("prix123 et prix", "prix"));
        assert!(!matches("prix123", "prix"));
    }

    #[test]
    fn phrases_match_only_as_phrases() {
        assert!(matches(
            "je voudrais les horaires d'ouverture",
            "horaires d'ouverture"
        ));
        assert!(matches("Horaires, d'ouverture ?", "horaires d ouverture"));
        assert!(!matches("ouverture des horaires", "horaires ouverture"));
        assert!(!matches(
            "les horaires de la boutique",
            "horaires ouverture"
        ));
        assert!(!matches("horaires", "horaires ouverture"));
    }

    #[test]
    fn empty_keywords_match_nothing() {
        assert!(!matches("anything", ""));
        assert!(!matches("anything", " ?! "));
        assert!(!matches("", "x"));
    }

    #[test]
    fn whole_text_for_exit_keywords() {
        assert!(Text::new("Stop !").is("stop"));
        assert!(Text::new("  MENU ").is("menu"));
        assert!(!Text::new("stop the music").is("stop"));
        assert_eq!(fold("  Été, l'ÉTÉ! "), "ete l ete");
    }
}
