//! What of a model's answer is shown: the AI speaks only for itself.

/// The answer as shown, for `names` (the people present and recently present).
pub fn clean(answer: &str, names: &[&str]) -> String {
    let _ = names;
    answer.to_owned()
}
