//! "Did you mean" hints: [`closest`] ranks candidate words by edit distance to a misspelling.
//! Used for tag keys, presets and LoRA names (case-insensitive).

/// Edit distance over chars where swapping two neighbours counts as one edit (optimal string
/// alignment), because `unte` for `unet` is the typical typo.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        d[i * w] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(w) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1)
                .min(d[i * w + j - 1] + 1)
                .min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

/// Up to `max` candidates close enough to `word` to be a plausible typo, best first.
/// "Close enough" grows with length so that short keys (`te`) still match `tee` but not `dyn`.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    max: usize,
) -> Vec<&'a str> {
    let w = word.to_lowercase();
    let limit = (w.chars().count() / 3).max(1) + usize::from(w.chars().count() > 8);
    let mut scored: Vec<(usize, &str)> = candidates
        .into_iter()
        .map(|c| (distance(&w, &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .collect();
    scored.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(max).map(|(_, c)| c).collect()
}

/// `did you mean `a`?` / `did you mean `a` or `b`?`, or None when nothing is close.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let found = closest(word, candidates, 3);
    match found.as_slice() {
        [] => None,
        [one] => Some(format!("did you mean `{one}`?")),
        many => {
            let quoted: Vec<String> = many.iter().map(|c| format!("`{c}`")).collect();
            Some(format!("did you mean {}?", quoted.join(" or ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("tee", "te"), 1);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("épée", "epee"), 2);
        assert_eq!(distance("unte", "unet"), 1);
    }

    #[test]
    fn suggestions_are_plausible_typos_only() {
        let keys = ["te", "unet", "in", "mid", "out", "dyn", "lbw"];
        assert_eq!(
            did_you_mean("tee", keys).as_deref(),
            Some("did you mean `te`?")
        );
        assert_eq!(closest("unte", keys, 3), vec!["unet"]);
        assert_eq!(closest("UNET", keys, 3), vec!["unet"]);
        assert!(closest("strength", keys, 3).is_empty());
    }
}
